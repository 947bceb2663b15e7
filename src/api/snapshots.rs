//! `/api/v1/vms/{id}/snapshots`: the snapshot tree of a VM.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};

use super::error::ApiResult;
use super::extract::JsonBody;
use super::respond::answer;
use super::Caller;
use crate::engine::Agent;
use crate::model::{CreateSnapshotRequest, ErrorBody, Snapshot, SnapshotList};

/// List a VM's snapshots.
///
/// A VM's snapshots, oldest first, and the one its disk came from.
#[utoipa::path(get, path = "/api/v1/vms/{id}/snapshots", tag = "vms", operation_id = "snapshots_list",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = SnapshotList), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotList>> {
    let entry = agent.vms.find(&id)?;
    let (snapshots, current) = agent.vms.snapshots(&entry).await?;
    Ok(Json(SnapshotList { snapshots, current }))
}

/// Take a snapshot.
///
/// Takes a snapshot: the disk of a stopped VM, or of a running one with its memory when
/// `memory` is true. 409 when the name is taken or the VM's state does not allow it.
#[utoipa::path(post, path = "/api/v1/vms/{id}/snapshots", tag = "vms", operation_id = "snapshots_create", request_body = CreateSnapshotRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 201, body = Snapshot), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateSnapshotRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .vms
        .create_snapshot(&entry, req, &caller.requester())?;
    answer(sub, &headers, StatusCode::CREATED).await
}

/// Get a snapshot.
///
/// One snapshot of the VM, with its parent and size.
#[utoipa::path(get, path = "/api/v1/vms/{id}/snapshots/{name}", tag = "vms", operation_id = "snapshots_get",
    params(("id" = String, Path, description = "VM id (UUID) or name"), ("name" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(agent): State<Agent>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<Snapshot>> {
    let entry = agent.vms.find(&id)?;
    Ok(Json(agent.vms.snapshot(&entry, &name).await?))
}

/// Delete a snapshot.
///
/// Drops a snapshot; its children take its parent.
#[utoipa::path(delete, path = "/api/v1/vms/{id}/snapshots/{name}", tag = "vms", operation_id = "snapshots_delete",
    params(("id" = String, Path, description = "VM id (UUID) or name"), ("name" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .vms
        .delete_snapshot(&entry, &name, &caller.requester())?;
    answer(sub, &headers, StatusCode::OK).await
}

/// Revert a VM to a snapshot.
///
/// Puts the VM back to a snapshot: a disk-only one when stopped, one with memory when running
/// (the guest runs on from that instant). 409 when the snapshot does not fit the VM's state.
#[utoipa::path(post, path = "/api/v1/vms/{id}/snapshots/{name}/revert", tag = "vms", operation_id = "snapshots_revert",
    params(("id" = String, Path, description = "VM id (UUID) or name"), ("name" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revert(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .vms
        .revert_snapshot(&entry, &name, &caller.requester())?;
    answer(sub, &headers, StatusCode::OK).await
}
