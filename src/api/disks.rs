//! `/api/v1/vms/{id}/disks`: a VM's extra disks.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};

use super::error::ApiResult;
use super::extract::JsonBody;
use super::respond::answer;
use super::Caller;
use crate::engine::Agent;
use crate::model::{AttachDiskRequest, Disk, DiskList, ErrorBody};

/// List a VM's disks.
///
/// The VM's extra disks, in the order the guest finds them.
#[utoipa::path(get, path = "/api/v1/vms/{id}/disks", tag = "vms", operation_id = "disks_list",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = DiskList), (status = 404, body = ErrorBody)))]
pub async fn list(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<DiskList>> {
    let entry = agent.vms.find(&id)?;
    Ok(Json(DiskList {
        disks: agent.vms.disks(&entry).await,
    }))
}

/// Attach a disk to a VM.
///
/// Attaches a new volume (`size`, in GiB) or an existing one (`volume`, `pool/name`): for the
/// next start of a stopped VM, hot-plugged into a running one. 409 when the name is taken or
/// the volume is in use.
#[utoipa::path(post, path = "/api/v1/vms/{id}/disks", tag = "vms", operation_id = "disks_attach",
    request_body = AttachDiskRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 201, body = Disk), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<AttachDiskRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .vms
        .attach_disk(&entry, req, &caller.requester())
        .await?;
    let made = std::sync::Mutex::new(None);
    let vm = entry.id;
    let mut resp = super::respond::answer_with(sub, &headers, StatusCode::CREATED, |d: Disk| {
        *crate::sync::lock(&made) = Some(format!("/api/v1/vms/{vm}/disks/{}", d.name));
        d
    })
    .await?;
    if let Some(l) = crate::sync::lock(&made).take() {
        if let Ok(v) = HeaderValue::from_str(&l) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
    Ok(resp)
}

/// Get a VM's disk.
///
/// One extra disk of the VM, with its volume and size.
#[utoipa::path(get, path = "/api/v1/vms/{id}/disks/{disk}", tag = "vms", operation_id = "disks_get",
    params(("id" = String, Path, description = "VM id (UUID) or name"), ("disk" = String, Path)),
    responses((status = 200, body = Disk), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(agent): State<Agent>,
    Path((id, disk)): Path<(String, String)>,
) -> ApiResult<Json<Disk>> {
    let entry = agent.vms.find(&id)?;
    Ok(Json(agent.vms.disk(&entry, &disk).await?))
}

/// Delete a VM's disk.
///
/// Detaches the disk and removes the volume made for it (an existing volume that was attached
/// stays in its pool).
#[utoipa::path(delete, path = "/api/v1/vms/{id}/disks/{disk}", tag = "vms", operation_id = "disks_delete",
    params(("id" = String, Path, description = "VM id (UUID) or name"), ("disk" = String, Path)),
    responses((status = 200, body = Disk), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((id, disk)): Path<(String, String)>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .vms
        .detach_disk(&entry, &disk, true, &caller.requester())?;
    answer(sub, &headers, StatusCode::OK).await
}

/// Detach a VM's disk.
///
/// Detaches the disk; its volume stays in its pool.
#[utoipa::path(post, path = "/api/v1/vms/{id}/disks/{disk}/detach", tag = "vms", operation_id = "disks_detach",
    params(("id" = String, Path, description = "VM id (UUID) or name"), ("disk" = String, Path)),
    responses((status = 200, body = Disk), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((id, disk)): Path<(String, String)>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .vms
        .detach_disk(&entry, &disk, false, &caller.requester())?;
    answer(sub, &headers, StatusCode::OK).await
}
