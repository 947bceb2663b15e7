//! Answers for calls that run as jobs: synchronous by default, 202 with the
//! job and `Location` when the client sends `Prefer: respond-async`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiResult;
use super::job_sink::JOB_SINK;
use crate::engine::Submitted;
use crate::model::{Accepted, Job, Vm};

/// Whether the client asked for an asynchronous answer (RFC 7240).
pub fn wants_async(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
            })
            .unwrap_or(false)
    })
}

/// Tells the idempotency layer (when the request carries a key) which job
/// the request started, so that a retry meanwhile is pointed at it.
pub fn track(job: &Job) {
    track_id(job.id);
}

/// The same for a job known by its id.
pub fn track_id(id: uuid::Uuid) {
    let _ = JOB_SINK.try_with(|sink| sink.offer(id));
}

/// 202 with `{job, vm}` and `Location: /api/v1/jobs/{id}`.
pub fn accepted(job: Job, vm: Option<Vm>) -> Response {
    track(&job);
    let location = format!("/api/v1/jobs/{}", job.id);
    let mut resp = (StatusCode::ACCEPTED, Json(Accepted { job, vm })).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Waits for the job (sync) or answers 202 at once (async).
pub async fn answer<T: Serialize>(
    sub: Submitted<T>,
    headers: &HeaderMap,
    ok: StatusCode,
) -> ApiResult<Response> {
    answer_with(sub, headers, ok, |v| v).await
}

/// `answer`, with the engine's result rendered by `render`.
pub async fn answer_with<T, U: Serialize>(
    sub: Submitted<T>,
    headers: &HeaderMap,
    ok: StatusCode,
    render: impl FnOnce(T) -> U,
) -> ApiResult<Response> {
    if wants_async(headers) {
        return Ok(accepted(sub.job, sub.vm));
    }
    track(&sub.job);
    let value = render(sub.outcome().await?);
    Ok((ok, Json(value)).into_response())
}
