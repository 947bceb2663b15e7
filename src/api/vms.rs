//! `/api/v1/vms`: the VM API and its power actions.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, JsonObjectOrArray, OptionalBody, Path, Query};
use super::respond::{accepted, answer_with, track, wants_async};
use super::Caller;
use crate::engine::vm::{Action, ActionDone, Deleted, ListQuery, Outcome, SortField, Updated};
use crate::engine::Agent;
use crate::model::{
    Accepted, ActionRequest, ActionResponse, Applies, BulkDeleteVms, CreateVmRequest, CreatedVm,
    DeleteResponse, PatchVmRequest, Performance, Resources, StatusResponse, UpdateCpuRequest,
    UpdateDiskRequest, UpdateMemoryRequest, UpdateResponse, Vm, VmConfig, VmList, VmStatus,
};

/// The filters and the sort of a VM list query (an aggregator's too).
pub(crate) fn parse_list_query(q: &HashMap<String, String>) -> ApiResult<(ListQuery, &str, bool)> {
    let mut out = ListQuery::default();
    let sort_str = q.get("sort").map(String::as_str).unwrap_or("created_at");
    let (field, descending) = match sort_str {
        "created_at" => (SortField::CreatedAt, false),
        "-created_at" => (SortField::CreatedAt, true),
        "name" => (SortField::Name, false),
        "-name" => (SortField::Name, true),
        _ => {
            return Err(ApiError::invalid(format!(
                "Invalid sort {sort_str:?}: use name, -name, created_at or -created_at."
            )))
        }
    };
    out.sort = field;
    if let Some(s) = q.get("status") {
        out.status = Some(
            VmStatus::parse(s)
                .ok_or_else(|| ApiError::invalid(format!("Invalid status filter {s:?}.")))?,
        );
    }
    out.name = q.get("name").cloned();
    out.tag = q.get("tag").cloned();
    out.template = q.get("template").cloned();
    out.node = q.get("node").cloned();
    Ok((out, sort_str, descending))
}

/// List VMs.
///
/// The VMs of this agent, with filters `status`, `name`, `tag`, `template` and `node`, sorted
/// by `sort` and paged with `limit` and `page_token`.
#[utoipa::path(get, path = "/api/v1/vms", tag = "vms",
    params(
        ("limit" = Option<usize>, Query, description = "Page size, 1 to 200 (default 50)"),
        ("page_token" = Option<String>, Query, description = "Cursor from the previous page"),
        ("status" = Option<String>, Query), ("name" = Option<String>, Query), ("tag" = Option<String>, Query),
        ("template" = Option<String>, Query), ("node" = Option<String>, Query),
        ("sort" = Option<String>, Query, description = "name, -name, created_at, -created_at"),
    ),
    responses((status = 200, body = VmList), (status = 400, body = crate::model::ErrorBody)))]
pub async fn list(
    State(agent): State<Agent>,
    Extension(json): Extension<std::sync::Arc<super::render::VmJson>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::render::RenderedVmList>> {
    let (query, sort, descending) = parse_list_query(&q)?;
    let req = super::page::request(&q, sort, descending)?;
    let (entries, next_page_token, total_count) =
        super::page::render(agent.vms.list(&query, &req), sort);
    // The same shape as `VmList`, each VM's JSON reused while it is unchanged.
    Ok(Json(super::render::RenderedVmList {
        vms: json.render(&agent.vms, &entries),
        next_page_token,
        total_count,
    }))
}

/// Create a VM (or many).
///
/// One VM: clones the base image (or the template's), grows it, persists it; 201 with the VM,
/// or 202 with the job under `Prefer: respond-async`. An array body makes many: one job, one
/// task each, 202. 404 when the template or base image does not exist; 409 when the name is
/// taken or the host lacks the capacity.
#[utoipa::path(post, path = "/api/v1/vms", tag = "vms", request_body = CreateVmRequest,
    params(("Prefer" = Option<String>, Header, description = "respond-async for a 202 with the job"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry safely for 24 h")),
    responses((status = 201, body = CreatedVm), (status = 202, body = Accepted), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody),
              (status = 500, body = crate::model::ErrorBody)))]
pub async fn create(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonObjectOrArray(body): JsonObjectOrArray,
) -> ApiResult<Response> {
    if body.is_array() {
        let items: Vec<CreateVmRequest> = serde_json::from_value(body)
            .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))?;
        let job = agent.bulk.create_vms(items, &caller.requester())?;
        return Ok(accepted(job, None));
    }
    let req: CreateVmRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))?;
    let sub = agent.vms.create(req, &caller.requester()).await?;
    answer_created_vm(sub, &headers, "VM successfully created and storage cloned.").await
}

/// The answer to a VM create: 202 with the job under `Prefer:
/// respond-async`, else 201 with the VM, its `Location` and `message`.
pub(crate) async fn answer_created_vm(
    sub: crate::engine::Submitted<crate::model::Vm>,
    headers: &HeaderMap,
    message: &str,
) -> ApiResult<Response> {
    if wants_async(headers) {
        return Ok(accepted(sub.job, sub.vm));
    }
    track(&sub.job);
    let job_id = sub.job.id;
    let vm = sub.outcome().await?;
    let location = format!("/api/v1/vms/{}", vm.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(CreatedVm {
            vm,
            message: message.into(),
            job_id,
        }),
    )
        .into_response())
}

/// Delete many VMs.
///
/// `{"vm_ids": [...]}` (ids or names, 1 to 100); 202 with the job, one task each.
#[utoipa::path(delete, path = "/api/v1/vms", tag = "vms", request_body = BulkDeleteVms,
    responses((status = 202, body = Accepted), (status = 400, body = crate::model::ErrorBody)))]
pub async fn bulk_delete(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<BulkDeleteVms>,
) -> ApiResult<Response> {
    let job = agent.bulk.delete_vms(req.vm_ids, &caller.requester())?;
    Ok(accepted(job, None))
}

/// Get a VM.
///
/// A VM by id or name, with its configuration and status.
#[utoipa::path(get, path = "/api/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = Vm), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn get(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<Vm>> {
    let entry = agent.vms.find(&id)?;
    Ok(Json(agent.vms.to_api(&entry)))
}

/// Get a VM's configuration.
///
/// The VM's configuration: vCPUs, memory, disk, boot, network, pinning and I/O limits.
#[utoipa::path(get, path = "/api/v1/vms/{id}/config", tag = "vms",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = VmConfig), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn config(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<VmConfig>> {
    let entry = agent.vms.find(&id)?;
    Ok(Json(agent.vms.vm_config(&entry).await))
}

/// Get a VM's status.
///
/// The VM's status and, when it runs, its process and uptime.
#[utoipa::path(get, path = "/api/v1/vms/{id}/status", tag = "vms",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = StatusResponse), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn status(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    let entry = agent.vms.find(&id)?;
    let rec = entry.record();
    let message = match (&rec.status_reason, rec.status) {
        (Some(reason), s) => format!("VM is {}: {reason}", s.as_str()),
        (None, s) => format!("VM is {}", s.as_str()),
    };
    Ok(Json(StatusResponse {
        id: rec.id,
        name: rec.name,
        status: rec.status,
        message,
    }))
}

/// Run a power action on a VM.
///
/// `stop` presses the ACPI power button (retried) and forces the VM off after `timeout` seconds
/// (default 60); `shutdown` only asks, and answers 409 if the guest is still running after
/// `timeout`; `poweroff` forces at once; `reboot`, `reset`, `pause` and `resume` do what they
/// say. `start`, `stop`, `pause`, `resume` answer 200 when already there; `reboot` on a VM that
/// is not running is 409. 503 when the agent cannot run QEMU.
#[utoipa::path(post, path = "/api/v1/vms/{id}/{action}", tag = "vms",
    params(("id" = String, Path, description = "VM id (UUID) or name"),
           ("action" = String, Path, description = "start | stop | shutdown | poweroff | reboot | reset | pause | resume")),
    request_body(content = Option<ActionRequest>),
    responses((status = 200, body = ActionResponse), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody),
              (status = 500, body = crate::model::ErrorBody)))]
pub async fn action(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    JsonBody(req): OptionalBody<ActionRequest>,
) -> ApiResult<Response> {
    let action = Action::parse(&action)
        .ok_or_else(|| ApiError::not_found(format!("No such VM action: {action}.")))?;
    check_timeout(&req)?;
    let entry = agent.vms.find(&id)?;
    let sub = agent
        .vms
        .action(&entry, action, req.timeout, &caller.requester())?;
    answer_with(sub, &headers, StatusCode::OK, action_response).await
}

/// An action's `timeout`: 0 to 3600 s, for VMs and containers alike.
pub(super) fn check_timeout(req: &ActionRequest) -> ApiResult<()> {
    match req.timeout {
        Some(t) if t > 3600 => Err(ApiError::invalid(
            "Invalid parameter: timeout must be at most 3600 s.",
        )),
        _ => Ok(()),
    }
}

/// A resource update's answer, phrased for people.
fn update_response(u: Updated) -> UpdateResponse {
    let message = match (u.changes.is_empty(), u.applies) {
        (true, _) => "Nothing to change.",
        (false, Applies::Live) => "Configuration updated and applied live.",
        (false, Applies::NextStart) => {
            "Configuration updated; some changes take effect at the next start."
        }
    };
    UpdateResponse {
        id: u.vm.id,
        status: "updated".into(),
        message: message.into(),
        applies: u.applies,
        changes: u.changes,
        vcpus: u.vm.vcpus,
        memory: u.vm.memory,
        disk_size: u.vm.disk_size,
        cpu_pinning: u.vm.cpu_pinning,
        io_limits: u.vm.io_limits,
        vm_status: u.vm.status,
        job_id: u.job_id,
    }
}

/// A power action's answer, phrased for people.
pub fn action_response(d: ActionDone) -> ActionResponse {
    ActionResponse {
        id: d.id,
        status: d.status.as_str().to_owned(),
        message: outcome_message(d.outcome),
        job_id: d.job_id,
    }
}

fn outcome_message(o: Outcome) -> String {
    match o {
        Outcome::Done(a) => match a {
            Action::Start => "VM successfully started.",
            Action::Stop | Action::Shutdown => "VM successfully stopped.",
            Action::Poweroff => "VM powered off.",
            Action::Reboot => "VM successfully rebooted.",
            Action::Reset => "VM reset.",
            Action::Pause => "VM paused.",
            Action::Resume => "VM resumed.",
            Action::Delete => "VM successfully deleted.",
        }
        .into(),
        Outcome::AlreadyThere(s) => format!("VM already {}.", s.as_str()),
        Outcome::Acknowledged => "VM had no running process; marked stopped.".into(),
        Outcome::NoProcess => "VM has no running process.".into(),
        Outcome::Forced {
            action: Action::Reboot,
            after_secs,
        } => format!("The guest did not shut down within {after_secs} s; VM reset."),
        Outcome::Forced { after_secs, .. } => {
            format!("The guest did not shut down within {after_secs} s; VM forced off.")
        }
    }
}

/// Delete a VM.
///
/// Stops the VM if needed, then removes its disk, runtime files and record.
#[utoipa::path(delete, path = "/api/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = DeleteResponse), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn delete(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    answer_with(
        agent.vms.delete(&entry, &caller.requester())?,
        &headers,
        StatusCode::OK,
        |d: Deleted| DeleteResponse {
            vm_id: d.id,
            status: "deleted".into(),
            message: "VM successfully deleted.".into(),
            disk_file: d.disk_file,
            job_id: d.job_id,
        },
    )
    .await
}

/// Change a VM's vCPUs.
///
/// Changes the vCPU count (from the next start) and the CPU pinning (live on a running VM).
#[utoipa::path(put, path = "/api/v1/vms/{id}/cpu", tag = "vms", request_body = UpdateCpuRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = UpdateResponse), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn put_cpu(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateCpuRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let patch = PatchVmRequest {
        vcpus: req.vcpus,
        cpu_pinning: req.cpu_pinning,
        ..PatchVmRequest::default()
    };
    answer_with(
        agent.vms.update(&entry, patch, &caller.requester())?,
        &headers,
        StatusCode::OK,
        update_response,
    )
    .await
}

/// Change a VM's memory.
///
/// Changes the memory: live through the balloon up to the boot size, else from the next start.
#[utoipa::path(put, path = "/api/v1/vms/{id}/memory", tag = "vms", request_body = UpdateMemoryRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = UpdateResponse), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn put_memory(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateMemoryRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let patch = PatchVmRequest {
        memory: Some(req.memory),
        ..PatchVmRequest::default()
    };
    answer_with(
        agent.vms.update(&entry, patch, &caller.requester())?,
        &headers,
        StatusCode::OK,
        update_response,
    )
    .await
}

/// Change a VM's disk.
///
/// Grows the disk (live on a running VM; it never shrinks: 409) and changes its I/O limits
/// (live).
#[utoipa::path(put, path = "/api/v1/vms/{id}/disk", tag = "vms", request_body = UpdateDiskRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = UpdateResponse), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn put_disk(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateDiskRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    let patch = PatchVmRequest {
        disk_size: req.disk_size,
        io_limits: req.io_limits,
        ..PatchVmRequest::default()
    };
    answer_with(
        agent.vms.update(&entry, patch, &caller.requester())?,
        &headers,
        StatusCode::OK,
        update_response,
    )
    .await
}

/// Change a VM.
///
/// Changes any subset of a VM's fields, and/or its desired status (`running`, `stopped`,
/// `paused`).
#[utoipa::path(patch, path = "/api/v1/vms/{id}", tag = "vms", request_body = PatchVmRequest,
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = UpdateResponse), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn patch(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PatchVmRequest>,
) -> ApiResult<Response> {
    let entry = agent.vms.find(&id)?;
    answer_with(
        agent.vms.update(&entry, req, &caller.requester())?,
        &headers,
        StatusCode::OK,
        update_response,
    )
    .await
}

/// Get a VM's live performance.
///
/// Live CPU, memory, disk and network figures from the background sampler. 409 when the VM does
/// not run.
#[utoipa::path(get, path = "/api/v1/vms/{id}/performance", tag = "vms",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = Performance), (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn performance(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<Performance>> {
    let entry = agent.vms.find(&id)?;
    Ok(Json(agent.vms.performance(&entry)?))
}

/// Get a VM's resources.
///
/// The configured vCPUs, memory and disk next to what the guest uses.
#[utoipa::path(get, path = "/api/v1/vms/{id}/resources", tag = "vms",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, body = Resources), (status = 404, body = crate::model::ErrorBody)))]
pub async fn resources(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<Resources>> {
    let entry = agent.vms.find(&id)?;
    Ok(Json(agent.vms.resources(&entry)))
}
