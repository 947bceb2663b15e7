//! `/api/v1/templates`: reusable VM defaults.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path, Query};
use super::respond::accepted;
use super::Caller;
use crate::engine::Agent;
use crate::model::{Accepted, BulkDeleteTemplates, Template, TemplateList, TemplateRequest};

/// List templates.
///
/// Templates by name (or `sort=-name`, `created_at`, `-created_at`); filters `name` and `tag`.
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates",
    params(("limit" = Option<usize>, Query), ("page_token" = Option<String>, Query), ("sort" = Option<String>, Query),
           ("name" = Option<String>, Query), ("tag" = Option<String>, Query)),
    responses((status = 200, body = TemplateList), (status = 400, body = crate::model::ErrorBody)))]
pub async fn list(
    State(agent): State<Agent>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<TemplateList>> {
    let sort = q.get("sort").map(String::as_str).unwrap_or("name");
    let (by_name, desc) = match sort {
        "name" => (true, false),
        "-name" => (true, true),
        "created_at" => (false, false),
        "-created_at" => (false, true),
        other => return Err(ApiError::invalid(format!("Invalid sort {other:?}."))),
    };
    let key = |t: &Template| {
        (
            if by_name {
                t.name.clone()
            } else {
                t.created_at.clone()
            },
            t.id,
        )
    };
    let mut all: Vec<Template> = agent
        .vms
        .templates()?
        .into_iter()
        .filter(|t| q.get("name").is_none_or(|n| &t.name == n))
        .filter(|t| {
            q.get("tag")
                .is_none_or(|g| t.spec.tags.as_ref().is_some_and(|tags| tags.contains(g)))
        })
        .collect();
    all.sort_by_key(key);
    if desc {
        all.reverse();
    }
    let (templates, next_page_token, total) = super::page::paginate(all, key, sort, desc, &q)?;
    Ok(Json(TemplateList {
        templates,
        next_page_token,
        total_count: total,
    }))
}

/// Create a template.
///
/// Creates a template: a name and any VM fields, used as the defaults of a VM made from it. 409
/// when the name is taken.
#[utoipa::path(post, path = "/api/v1/templates", tag = "templates", request_body = TemplateRequest,
    responses((status = 201, body = Template), (status = 400, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn create(
    State(agent): State<Agent>,
    JsonBody(req): JsonBody<TemplateRequest>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    Ok((StatusCode::CREATED, Json(agent.vms.create_template(req)?)))
}

/// Get a template.
///
/// A template by id or name.
#[utoipa::path(get, path = "/api/v1/templates/{id}", tag = "templates", params(("id" = String, Path)),
    responses((status = 200, body = Template), (status = 404, body = crate::model::ErrorBody)))]
pub async fn get(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<Template>> {
    Ok(Json(agent.vms.find_template(&id)?))
}

/// Change a template.
///
/// Changes any subset of a template's fields.
#[utoipa::path(patch, path = "/api/v1/templates/{id}", tag = "templates", params(("id" = String, Path)), request_body = TemplateRequest,
    responses((status = 200, body = Template), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn patch(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<TemplateRequest>,
) -> ApiResult<Json<Template>> {
    Ok(Json(agent.vms.update_template(&id, req)?))
}

/// Delete a template.
///
/// Deletes a template (VMs made from it keep their configuration).
#[utoipa::path(delete, path = "/api/v1/templates/{id}", tag = "templates", params(("id" = String, Path)),
    responses((status = 200, body = Template), (status = 404, body = crate::model::ErrorBody)))]
pub async fn delete(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<Template>> {
    Ok(Json(agent.vms.delete_template(&id)?))
}

/// Delete many templates.
///
/// `{"template_ids": [...]}` (ids or names, 1 to 100); 202 with the job, one task each.
#[utoipa::path(delete, path = "/api/v1/templates", tag = "templates", request_body = BulkDeleteTemplates,
    responses((status = 202, body = Accepted), (status = 400, body = crate::model::ErrorBody)))]
pub async fn bulk_delete(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<BulkDeleteTemplates>,
) -> ApiResult<Response> {
    Ok(accepted(
        agent
            .bulk
            .delete_templates(req.template_ids, &caller.requester())?,
        None,
    ))
}
