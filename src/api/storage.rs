//! `/api/v1/storage-pools`: pools, their volumes and the volumes' content.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::ApiResult;
use super::extract::JsonBody;
use super::respond::answer_with;
use super::Caller;
use crate::engine::Agent;
use crate::model::{
    CreatePoolRequest, CreateStorageVolumeRequest, ErrorBody, ExportVmRequest, IscsiTargetList,
    StoragePool, StoragePoolList, StorageServer, StorageServerList, StorageVolume,
    StorageVolumeList,
};

/// List storage pools.
///
/// Every storage pool with its figures (capacity, allocation, free space).
#[utoipa::path(get, path = "/api/v1/storage-pools", tag = "storage", operation_id = "pools_list",
    responses((status = 200, body = StoragePoolList)))]
pub async fn list(State(agent): State<Agent>) -> Json<StoragePoolList> {
    Json(StoragePoolList {
        pools: agent.storage.pools().await,
    })
}

/// Create a storage pool.
///
/// Defines a pool: a directory (`dir`, with its `path`) or an iSCSI target (`iscsi`, with
/// `host` and `target`). 409 when the name is taken.
#[utoipa::path(post, path = "/api/v1/storage-pools", tag = "storage", operation_id = "pools_create",
    request_body = CreatePoolRequest,
    responses((status = 201, body = StoragePool), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(
    State(agent): State<Agent>,
    JsonBody(req): JsonBody<CreatePoolRequest>,
) -> ApiResult<Response> {
    let pool = agent.storage.create_pool(req).await?;
    let location = format!("/api/v1/storage-pools/{}", pool.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(pool),
    )
        .into_response())
}

/// Get a storage pool.
///
/// One storage pool with its figures and state.
#[utoipa::path(get, path = "/api/v1/storage-pools/{name}", tag = "storage", operation_id = "pools_get",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = StoragePool), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn get(
    State(agent): State<Agent>,
    Path(name): Path<String>,
) -> ApiResult<Json<StoragePool>> {
    Ok(Json(agent.storage.pool(&name).await?))
}

/// Delete a storage pool.
///
/// Forgets a pool made through the API (not one from the configuration file); refused (409)
/// while it holds volumes or a VM uses it.
#[utoipa::path(delete, path = "/api/v1/storage-pools/{name}", tag = "storage", operation_id = "pools_delete",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = StoragePool), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(agent): State<Agent>,
    Path(name): Path<String>,
) -> ApiResult<Json<StoragePool>> {
    Ok(Json(agent.storage.delete_pool(&name).await?))
}

/// Activate a storage pool.
///
/// Puts a pool into use: checks its directory, or logs in to its iSCSI target.
#[utoipa::path(post, path = "/api/v1/storage-pools/{name}/activate", tag = "storage", operation_id = "pools_activate",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = StoragePool), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn activate(
    State(agent): State<Agent>,
    Path(name): Path<String>,
) -> ApiResult<Json<StoragePool>> {
    Ok(Json(agent.storage.activate(&name).await?))
}

/// Deactivate a storage pool.
///
/// Takes a pool out of use; refused (409) while a VM or a job uses a volume.
#[utoipa::path(post, path = "/api/v1/storage-pools/{name}/deactivate", tag = "storage", operation_id = "pools_deactivate",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = StoragePool), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn deactivate(
    State(agent): State<Agent>,
    Path(name): Path<String>,
) -> ApiResult<Json<StoragePool>> {
    Ok(Json(agent.storage.deactivate(&name).await?))
}

/// List a pool's volumes.
///
/// The volumes of an active pool.
#[utoipa::path(get, path = "/api/v1/storage-pools/{pool}/volumes", tag = "storage", operation_id = "volumes_list",
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 200, body = StorageVolumeList), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn volumes(
    State(agent): State<Agent>,
    Path(pool): Path<String>,
) -> ApiResult<Json<StorageVolumeList>> {
    Ok(Json(StorageVolumeList {
        volumes: agent.storage.volumes(&pool).await?,
    }))
}

/// Create a volume in a pool.
///
/// Makes a volume as a job: empty (`capacity`, in GiB, with its `format`), a copy (`source`) or
/// a qcow2 imported from a qcow2, raw, vmdk, vdi or OVA volume (`import`). 409 when the name is
/// taken.
#[utoipa::path(post, path = "/api/v1/storage-pools/{pool}/volumes", tag = "storage", operation_id = "volumes_create",
    request_body = CreateStorageVolumeRequest,
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 201, body = StorageVolume), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_volume(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(pool): Path<String>,
    JsonBody(req): JsonBody<CreateStorageVolumeRequest>,
) -> ApiResult<Response> {
    let sub = agent
        .storage
        .create_volume(&pool, req, &caller.requester())
        .await?;
    answer_volume(sub, &headers).await
}

/// Get a volume of a pool.
///
/// One volume with its format, capacity and allocation.
#[utoipa::path(get, path = "/api/v1/storage-pools/{pool}/volumes/{name}", tag = "storage", operation_id = "volumes_get",
    params(("pool" = String, Path, description = "Pool name"), ("name" = String, Path, description = "Volume name")),
    responses((status = 200, body = StorageVolume), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn volume(
    State(agent): State<Agent>,
    Path((pool, name)): Path<(String, String)>,
) -> ApiResult<Json<StorageVolume>> {
    Ok(Json(agent.storage.volume(&pool, &name).await?))
}

/// Delete a volume of a pool.
///
/// Removes a volume no VM uses (409 while one does).
#[utoipa::path(delete, path = "/api/v1/storage-pools/{pool}/volumes/{name}", tag = "storage", operation_id = "volumes_delete",
    params(("pool" = String, Path, description = "Pool name"), ("name" = String, Path, description = "Volume name")),
    responses((status = 200, body = StorageVolume), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_volume(
    State(agent): State<Agent>,
    Path((pool, name)): Path<(String, String)>,
) -> ApiResult<Json<StorageVolume>> {
    Ok(Json(agent.storage.delete_volume(&pool, &name).await?))
}

/// Upload a volume's content.
///
/// Streams the body into the volume (made, or replacing an unused one). 409 while a VM uses it.
#[utoipa::path(put, path = "/api/v1/storage-pools/{pool}/volumes/{name}/content", tag = "storage", operation_id = "volumes_upload",
    params(("pool" = String, Path, description = "Pool name"), ("name" = String, Path, description = "Volume name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = StorageVolume, description = "Replaced"), (status = 201, body = StorageVolume, description = "Made"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn upload(
    State(agent): State<Agent>,
    Path((pool, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let (volume, made) = agent
        .storage
        .upload(&pool, &name, body.into_data_stream())
        .await?;
    if made {
        let location = format!("/api/v1/storage-pools/{pool}/volumes/{name}");
        Ok((
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(volume),
        )
            .into_response())
    } else {
        Ok(Json(volume).into_response())
    }
}

/// Download a volume's content.
///
/// The volume's bytes as they are in the pool.
#[utoipa::path(get, path = "/api/v1/storage-pools/{pool}/volumes/{name}/content", tag = "storage", operation_id = "volumes_download",
    params(("pool" = String, Path, description = "Pool name"), ("name" = String, Path, description = "Volume name")),
    responses((status = 200, description = "The volume's bytes", content_type = "application/octet-stream"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn download(
    State(agent): State<Agent>,
    Path((pool, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let d = agent.storage.download(&pool, &name).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(d.file, 256 << 10);
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", d.volume.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Export a VM's disk.
///
/// Exports the VM's disk (or a snapshot of it) as a volume: qcow2, raw, vmdk, vdi or an OVF 1.0
/// package (`ova`). A running VM is read from a snapshot taken for the purpose. A job with
/// qemu-img's progress.
#[utoipa::path(post, path = "/api/v1/vms/{id}/export", tag = "vms", operation_id = "vms_export",
    request_body = ExportVmRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 201, body = StorageVolume), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn export(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExportVmRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .storage
        .export_vm(&entry, req, &caller.requester())
        .await?;
    answer_volume(sub, &headers).await
}

/// Waits for (or hands back) a job that makes a volume; a 201 names the
/// volume in `Location`.
async fn answer_volume(
    sub: crate::engine::Submitted<StorageVolume>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let made = std::sync::Mutex::new(None);
    let mut resp = answer_with(sub, headers, StatusCode::CREATED, |v: StorageVolume| {
        *crate::sync::lock(&made) = Some(format!(
            "/api/v1/storage-pools/{}/volumes/{}",
            v.pool, v.name
        ));
        v
    })
    .await?;
    if let Some(l) = crate::sync::lock(&made).take() {
        if let Ok(v) = HeaderValue::from_str(&l) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
    Ok(resp)
}

/// List storage servers.
///
/// The storage servers iSCSI pools use, each asked whether it answers.
#[utoipa::path(get, path = "/api/v1/storage-servers", tag = "storage", operation_id = "servers_list",
    responses((status = 200, body = StorageServerList)))]
pub async fn servers(State(agent): State<Agent>) -> Json<StorageServerList> {
    Json(StorageServerList {
        servers: agent.storage.servers().await,
    })
}

/// Get a storage server.
///
/// One storage server, asked whether it answers.
#[utoipa::path(get, path = "/api/v1/storage-servers/{host}", tag = "storage", operation_id = "servers_get",
    params(("host" = String, Path, description = "`host:port`, or `host` for port 3260")),
    responses((status = 200, body = StorageServer), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn server(
    State(agent): State<Agent>,
    Path(host): Path<String>,
) -> ApiResult<Json<StorageServer>> {
    Ok(Json(agent.storage.server(&host).await?))
}

/// List a storage server's targets.
///
/// The targets a storage server offers, with their LUNs.
#[utoipa::path(get, path = "/api/v1/storage-servers/{host}/targets", tag = "storage", operation_id = "servers_targets",
    params(("host" = String, Path, description = "`host:port`, or `host` for port 3260")),
    responses((status = 200, body = IscsiTargetList), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn targets(
    State(agent): State<Agent>,
    Path(host): Path<String>,
) -> ApiResult<Json<IscsiTargetList>> {
    Ok(Json(IscsiTargetList {
        targets: agent.storage.server_targets(&host).await?,
    }))
}
