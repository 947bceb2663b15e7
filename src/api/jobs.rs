//! `/api/v1/jobs`: the record of every mutating call.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use crate::engine::Agent;
use crate::model::Job;

/// A job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID)")),
    responses((status = 200, body = Job), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn get(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::invalid("Invalid UUID format."))?;
    Ok(Json(agent.job(id)?))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// The newest jobs first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    params(("limit" = Option<usize>, Query, description = "1 to 200 (default 50)")),
    responses((status = 200, body = JobList)))]
pub async fn list(
    State(agent): State<Agent>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<JobList>> {
    let limit = match q.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=200).contains(l))
            .ok_or_else(|| ApiError::invalid(format!("Invalid limit {l:?}: use 1 to 200.")))?,
    };
    Ok(Json(JobList {
        jobs: agent.jobs(limit)?,
    }))
}
