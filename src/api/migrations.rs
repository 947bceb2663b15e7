//! Moving VMs between agents: `POST /api/v1/vms/{id}/migrate` on the
//! source, `/api/v1/migrations` on the target (what the source calls).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path};
use super::respond::answer;
use super::Caller;
use crate::engine::Agent;
use crate::model::{IncomingMigration, MigrateRequest, MigrationResult, PreparedMigration, Vm};

fn migration_id(s: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::parse_str(s)
        .map_err(|_| ApiError::invalid("Invalid UUID format: expected the VM id of the move."))
}

/// Move a VM to another node.
///
/// Cold for a stopped VM (its disk copied), live for a running one (its disk mirrored and its
/// memory migrated while it runs). A `vm.migrate` job: 200 with the figures of the move once the
/// VM lives on the target (same id and name) and nothing of it is left here, or 202 with the job
/// under `Prefer: respond-async` (the figures are then the job's `result`). Cancelling the job
/// leaves the VM whole here, running if it ran. 400 without `target` or when `node` is this
/// node; 409 when the VM is busy, neither running nor stopped, has extra disks, or the target
/// refuses it; 503 when the target cannot be reached.
#[utoipa::path(post, path = "/api/v1/vms/{id}/migrate", tag = "vms", operation_id = "vms_migrate",
    request_body = MigrateRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name"),
           ("Prefer" = Option<String>, Header, description = "respond-async for a 202 with the job")),
    responses((status = 200, body = MigrationResult), (status = 202, body = crate::model::Accepted),
              (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody),
              (status = 409, body = crate::model::ErrorBody), (status = 500, body = crate::model::ErrorBody),
              (status = 503, body = crate::model::ErrorBody)))]
pub async fn migrate(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<MigrateRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent.vms.migrate(&entry, req, &caller.requester()).await?;
    answer(sub, &headers, StatusCode::OK).await
}

/// Prepare to receive a VM (target side of a move).
///
/// Checks the VM as a create would (409 when its id or name exists here, or the room is not
/// there), makes its disk (a standalone qcow2 of the same virtual size) and serves it over NBD
/// on this agent's listener address; for a live move it also starts the VM's QEMU paused,
/// waiting for the guest (`-incoming`). A `vm.migrate_in` job: 201 with where to send the VM,
/// or 202 under `Prefer: respond-async`. The VM is in no list until the move completes.
#[utoipa::path(post, path = "/api/v1/migrations", tag = "vms", operation_id = "migrations_prepare",
    request_body = IncomingMigration,
    params(("Prefer" = Option<String>, Header, description = "respond-async for a 202 with the job")),
    responses((status = 201, body = PreparedMigration), (status = 202, body = crate::model::Accepted),
              (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody),
              (status = 409, body = crate::model::ErrorBody), (status = 500, body = crate::model::ErrorBody),
              (status = 503, body = crate::model::ErrorBody)))]
pub async fn prepare(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<IncomingMigration>,
) -> ApiResult<Response> {
    let sub = agent.vms.prepare_incoming(req, &caller.requester()).await?;
    answer(sub, &headers, StatusCode::CREATED).await
}

/// Complete a move (target side).
///
/// The NBD service ends; the guest of a live move runs; the VM is an ordinary VM of this node
/// from now on. 404 when no VM is arriving with this id; 409 when the guest has not arrived.
#[utoipa::path(post, path = "/api/v1/migrations/{id}/complete", tag = "vms", operation_id = "migrations_complete",
    params(("id" = String, Path, description = "The arriving VM's id (UUID)")),
    responses((status = 200, body = Vm), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody),
              (status = 500, body = crate::model::ErrorBody)))]
pub async fn complete(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<Vm>> {
    let id = migration_id(&id)?;
    Ok(Json(agent.vms.complete_incoming(id).await?))
}

/// Abort a move (target side).
///
/// The arriving VM's QEMU (or NBD server), files and record go; nothing is left. 404 when no
/// VM is arriving with this id.
#[utoipa::path(delete, path = "/api/v1/migrations/{id}", tag = "vms", operation_id = "migrations_abort",
    params(("id" = String, Path, description = "The arriving VM's id (UUID)")),
    responses((status = 204), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 500, body = crate::model::ErrorBody)))]
pub async fn abort(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = migration_id(&id)?;
    agent.vms.abort_incoming(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
