//! `/api/v1/groups`: named sets of VMs, started and stopped as one job.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, OptionalBody, Path, Query};
use super::respond::{accepted, track, wants_async};
use super::Caller;
use crate::engine::vm::Action;
use crate::engine::Agent;
use crate::model::{
    Accepted, ActionRequest, CreateGroupRequest, CreateVmRequest, CreatedVm, Group, GroupList,
    GroupMembers, Job, UpdateGroupRequest,
};

/// List groups.
///
/// The groups, by name; filter `tag`.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    params(("limit" = Option<usize>, Query), ("page_token" = Option<String>, Query), ("tag" = Option<String>, Query)),
    responses((status = 200, body = GroupList), (status = 400, body = crate::model::ErrorBody)))]
pub async fn list(
    State(agent): State<Agent>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<GroupList>> {
    let all: Vec<Group> = agent
        .groups
        .list()?
        .into_iter()
        .filter(|g| q.get("tag").is_none_or(|t| g.tags.contains(t)))
        .collect();
    let (groups, next_page_token, total_count) =
        super::page::paginate(all, |g: &Group| g.name.clone(), "name", false, &q)?;
    Ok(Json(GroupList {
        groups,
        next_page_token,
        total_count,
    }))
}

/// Create a group.
///
/// Creates a group: a name, a description, tags and members (VM ids or names; 404 when one does
/// not exist). 409 when the name is taken.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = CreateGroupRequest,
    responses((status = 201, body = Group), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn create(
    State(agent): State<Agent>,
    JsonBody(req): JsonBody<CreateGroupRequest>,
) -> ApiResult<Response> {
    let g = agent.groups.create(req)?;
    let location = format!("/api/v1/groups/{}", g.name);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(g)).into_response())
}

/// Get a group.
///
/// A group with its members.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = Group), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn get(State(agent): State<Agent>, Path(name): Path<String>) -> ApiResult<Json<Group>> {
    Ok(Json(agent.groups.get(&name)?))
}

/// Change a group.
///
/// Changes a group's properties: the fields given replace its own (`vms` is the whole member
/// list). Never touches the VMs themselves.
#[utoipa::path(put, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    request_body = UpdateGroupRequest,
    responses((status = 200, body = Group), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn put(
    State(agent): State<Agent>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UpdateGroupRequest>,
) -> ApiResult<Json<Group>> {
    Ok(Json(agent.groups.update(&name, req)?))
}

/// Delete a group.
///
/// Deletes a group; its VMs stay unless `delete_vms=true` (then 202 with a job deleting them,
/// one task each).
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path), ("delete_vms" = Option<bool>, Query)),
    responses((status = 200, body = Group), (status = 202, body = Accepted),
              (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn delete(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let delete_vms = match q.get("delete_vms").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid delete_vms {other:?}: true or false."
            )))
        }
    };
    let (group, job) = agent
        .groups
        .delete(&name, delete_vms, &caller.requester())?;
    Ok(match job {
        Some(job) => accepted(job, None),
        None => Json(group).into_response(),
    })
}

/// List a group's VMs.
///
/// The group's VMs, summarized, with a link to each.
#[utoipa::path(get, path = "/api/v1/groups/{name}/vms", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = GroupMembers), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn members(
    State(agent): State<Agent>,
    Path(name): Path<String>,
) -> ApiResult<Json<GroupMembers>> {
    Ok(Json(GroupMembers {
        vms: agent.groups.members(&name)?,
    }))
}

/// Create a VM in a group.
///
/// The body of `POST /vms` (one object): makes the VM and adds it to the group; answered as
/// `POST /vms` answers.
#[utoipa::path(post, path = "/api/v1/groups/{name}/vms", tag = "groups", params(("name" = String, Path)),
    request_body = CreateVmRequest,
    responses((status = 201, body = CreatedVm), (status = 202, body = Accepted), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody),
              (status = 500, body = crate::model::ErrorBody)))]
pub async fn create_vm(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<CreateVmRequest>,
) -> ApiResult<Response> {
    let sub = agent
        .groups
        .create_vm(&name, req, &caller.requester())
        .await?;
    super::vms::answer_created_vm(sub, &headers, "VM successfully created in the group.").await
}

/// One job, one task per member; synchronous: 200 with the finished job
/// (a member that failed is a failed task, the job `failed`).
async fn power(
    agent: Agent,
    caller: Caller,
    headers: HeaderMap,
    name: String,
    action: Action,
    req: ActionRequest,
) -> ApiResult<Response> {
    super::vms::check_timeout(&req)?;
    let sub = agent
        .groups
        .power(&name, action, req.timeout, &caller.requester())?;
    if wants_async(&headers) {
        return Ok(accepted(sub.job, None));
    }
    track(&sub.job);
    let id = sub.job.id;
    let _ = sub.outcome().await;
    let job: Job = agent.job(id)?;
    Ok(Json(job).into_response())
}

/// Start a group's VMs.
///
/// Starts every VM of the group as one job, one task each.
#[utoipa::path(post, path = "/api/v1/groups/{name}/start", tag = "groups", params(("name" = String, Path)),
    request_body(content = Option<ActionRequest>),
    responses((status = 200, body = Job), (status = 202, body = Accepted), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn start(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(req): OptionalBody<ActionRequest>,
) -> ApiResult<Response> {
    power(agent, caller, headers, name, Action::Start, req).await
}

/// Stop a group's VMs.
///
/// Stops every VM of the group as one job, one task each (power button, forced off after
/// `timeout`).
#[utoipa::path(post, path = "/api/v1/groups/{name}/stop", tag = "groups", params(("name" = String, Path)),
    request_body(content = Option<ActionRequest>),
    responses((status = 200, body = Job), (status = 202, body = Accepted), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn stop(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(req): OptionalBody<ActionRequest>,
) -> ApiResult<Response> {
    power(agent, caller, headers, name, Action::Stop, req).await
}
