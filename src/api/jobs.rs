//! `/api/v1/jobs`: every mutating call's job, its tasks, cancellation.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::{Extension, Json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path, Query};
use super::respond::accepted;
use super::Caller;
use crate::engine::Agent;
use crate::model::{Accepted, BulkCancelJobs, Job, JobList, JobState, Task, TaskList};

fn job_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::invalid("Invalid UUID format: expected a job id."))
}

/// Page size from `limit` (default 50, 1 to 200).
/// A `state` filter: a job state (anything else is refused).
fn state_filter(q: &HashMap<String, String>) -> ApiResult<Option<&str>> {
    match q.get("state").map(String::as_str) {
        Some(s)
            if serde_json::from_value::<JobState>(serde_json::Value::String(s.into())).is_err() =>
        {
            Err(ApiError::invalid(format!("Invalid state filter {s:?}.")))
        }
        other => Ok(other),
    }
}

/// List jobs.
///
/// Jobs, newest first; filters `state` and `type`, paged with `limit` and `page_token`.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    params(("limit" = Option<usize>, Query, description = "1 to 200 (default 50)"),
           ("page_token" = Option<String>, Query), ("state" = Option<String>, Query), ("type" = Option<String>, Query)),
    responses((status = 200, body = JobList), (status = 400, body = crate::model::ErrorBody)))]
pub async fn list(
    State(agent): State<Agent>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<JobList>> {
    let state = state_filter(&q)?;
    // Newest first, paged in the store by row id.
    let req = super::page::request::<i64>(&q, "-created_at", true)?;
    let (mut rows, total) = agent
        .store()
        .page_jobs::<Job>(
            state,
            q.get("type").map(String::as_str),
            req.after,
            req.limit + 1,
        )
        .map_err(crate::engine::EngineError::from)?;
    let more = rows.len() > req.limit;
    rows.truncate(req.limit);
    let next_page_token = more
        .then(|| {
            rows.last()
                .map(|(rowid, _)| super::page::token("-created_at", rowid))
        })
        .flatten();
    // Running jobs are current in memory; the store may lag by a moment.
    let jobs = rows
        .into_iter()
        .map(|(_, j)| agent.job(j.id).unwrap_or(j))
        .collect();
    Ok(Json(JobList {
        jobs,
        next_page_token,
        total_count: total,
    }))
}

/// Get a job.
///
/// A job with its state and result; `?wait=N` blocks up to N seconds (at most 300) for it to
/// finish.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID)"), ("wait" = Option<u64>, Query, description = "seconds to wait for the end")),
    responses((status = 200, body = Job), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn get(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Job>> {
    let id = job_id(&id)?;
    if let Some(w) = q.get("wait") {
        let secs: u64 = w.parse().ok().filter(|s| *s <= 300).ok_or_else(|| {
            ApiError::invalid(format!("Invalid wait {w:?}: use 0 to 300 seconds."))
        })?;
        let job = agent
            .jobs_registry()
            .wait(id, Duration::from_secs(secs))
            .await
            .map_err(crate::engine::EngineError::from)?;
        return job
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("Job not found: {id}.")));
    }
    Ok(Json(agent.job(id)?))
}

/// List a job's tasks.
///
/// The tasks of a job, in order.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/tasks", tag = "jobs",
    params(("id" = String, Path), ("limit" = Option<usize>, Query), ("page_token" = Option<String>, Query), ("state" = Option<String>, Query)),
    responses((status = 200, body = TaskList), (status = 404, body = crate::model::ErrorBody)))]
pub async fn tasks(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<TaskList>> {
    let state = state_filter(&q)?;
    let req = super::page::request::<u32>(&q, "id", false)?;
    let job = agent.job(job_id(&id)?)?;
    let all = job
        .tasks
        .into_iter()
        .filter(|t| state.is_none_or(|s| crate::jobs::state_str(t.state) == s));
    let (tasks, next_page_token, total) =
        super::page::render(crate::page::paginate(all, |t| t.id, &req), "id");
    Ok(Json(TaskList {
        tasks,
        next_page_token,
        total_count: total,
    }))
}

/// Get a job's task.
///
/// One task with its log lines and error.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/tasks/{task_id}", tag = "jobs",
    params(("id" = String, Path), ("task_id" = u32, Path)),
    responses((status = 200, body = Task), (status = 404, body = crate::model::ErrorBody)))]
pub async fn task(
    State(agent): State<Agent>,
    Path((id, task_id)): Path<(String, String)>,
) -> ApiResult<Json<Task>> {
    // Both ids are checked before anything is looked up.
    let job_id = job_id(&id)?;
    let n: u32 = task_id.parse().map_err(|_| {
        ApiError::invalid(format!(
            "Invalid task id {task_id:?}: tasks are numbered from 0."
        ))
    })?;
    let job = agent.job(job_id)?;
    job.tasks
        .into_iter()
        .find(|t| t.id == n)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("Task {n} not found in job {id}.")))
}

/// Cancel a job.
///
/// Cancels a queued or running job: it stops at its next safe point and undoes its work;
/// answers the job once it settled. 409 if it had finished.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn cancel(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(agent.cancel_job(job_id(&id)?).await?))
}

/// Cancel many jobs.
///
/// `{"job_ids": [...]}` (1 to 100); 202 with a job that has one task per id.
#[utoipa::path(delete, path = "/api/v1/jobs", tag = "jobs", request_body = BulkCancelJobs,
    responses((status = 202, body = Accepted), (status = 400, body = crate::model::ErrorBody)))]
pub async fn bulk_cancel(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<BulkCancelJobs>,
) -> ApiResult<Response> {
    Ok(accepted(
        agent.bulk.cancel_jobs(req.job_ids, &caller.requester())?,
        None,
    ))
}
