//! The audit trail: every mutating call is written to the database (before
//! its answer leaves) and to the log as structured fields; admins read it
//! at `GET /api/v1/audit`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::access::{is_mutating, Caller};
use super::error::{current_request_id, ApiError, ApiResult};
use super::users::AuditActor;
use crate::model::{AuditEvent, AuditPage, ErrorBody};
use crate::store::{AuditEntry, AuditQuery, Store};

/// The object a path acts on: the collection and the id after `/api/v1/`
/// (`/api/v1/vms/web1/start` -> `vms/web1`).
pub fn target(path: &str) -> String {
    let rest = path
        .strip_prefix("/api/v1/")
        .unwrap_or(path.trim_start_matches('/'));
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(c), Some(id)) if !id.is_empty() => format!("{c}/{id}"),
        (Some(c), _) => c.to_owned(),
        _ => String::new(),
    }
}

pub fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 | 429 => "denied",
        s if s < 400 => "succeeded",
        _ => "failed",
    }
}

/// Records every mutating call: who, over what, what, on which object, the
/// outcome and how long it took.
pub async fn middleware(State(store): State<Arc<Store>>, req: Request, next: Next) -> Response {
    if !is_mutating(req.method()) {
        return next.run(req).await;
    }
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let mut resp = next.run(req).await;
    let caller = resp.extensions().get::<Caller>();
    let actor = match resp.extensions().get::<AuditActor>() {
        Some(a) => a.0.clone(),
        None => caller.map_or_else(|| "unknown".into(), |c| c.label.clone()),
    };
    let entry = AuditEntry {
        at: crate::clock::now(),
        request_id: current_request_id(),
        actor,
        role: caller
            .and_then(|c| c.role)
            .map_or("", |r| r.as_str())
            .to_owned(),
        transport: caller.map_or("", |c| c.transport.as_str()).to_owned(),
        // A create names what it made (its Location), not the collection.
        target: target(
            resp.headers()
                .get(axum::http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .filter(|_| resp.status() == StatusCode::CREATED)
                .unwrap_or(&path),
        ),
        // An id or name may be long: the path is kept whole, within reason.
        path: path.chars().take(1024).collect(),
        method: method.chars().take(32).collect(),
        status: resp.status().as_u16(),
        outcome: outcome(resp.status()).to_owned(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        target: "audit",
        actor = %entry.actor,
        role = %entry.role,
        transport = %entry.transport,
        method = %entry.method,
        path = %entry.path,
        target_object = %entry.target,
        status = entry.status,
        outcome = %entry.outcome,
        duration_ms = entry.duration_ms,
        request_id = %entry.request_id,
    );
    let store_entry = entry.clone();
    let written = tokio::task::spawn_blocking(move || store.audit(&store_entry)).await;
    if !matches!(written, Ok(Ok(_))) {
        // The call happened but cannot be accounted for: say so rather than
        // answer as if all were well.
        tracing::error!(method = %entry.method, path = %entry.path, "cannot write the audit trail");
        if resp.status().is_success() {
            resp = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The call was carried out but could not be written to the audit trail.",
            )
            .into_response();
        }
    }
    resp
}

/// List the audit trail.
///
/// The audit trail, newest first: every mutating call and every refused one, with its actor,
/// target, outcome and request id. Filters: `actor`, `target` (that object and everything under
/// it), `since` (seconds since the epoch) and `outcome`; paged with `limit` and `page_token`.
#[utoipa::path(get, path = "/api/v1/audit", tag = "access",
    params(
        ("actor" = Option<String>, Query, description = "uid:0, user:alice, token:<id>, anonymous"),
        ("target" = Option<String>, Query, description = "e.g. vms/web1 (with what is under it) or vms"),
        ("since" = Option<u64>, Query, description = "Seconds since the epoch: entries at or after it"),
        ("outcome" = Option<String>, Query, description = "succeeded, failed or denied"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)"),
        ("page_token" = Option<String>, Query, description = "Cursor from the previous page")),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(store): State<Arc<Store>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<AuditPage>> {
    let req = super::page::request::<i64>(&q, "seq", true)?;
    if let Some(o) = q.get("outcome") {
        if !matches!(o.as_str(), "succeeded" | "failed" | "denied") {
            return Err(ApiError::invalid(format!(
                "Invalid outcome {o:?}: succeeded, failed or denied."
            )));
        }
    }
    let since = match q.get("since") {
        None => None,
        Some(s) => Some(
            s.parse::<u32>()
                .ok()
                .filter(|t| *t <= i32::MAX as u32)
                .map(|t| crate::clock::from_unix(t.into()))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Invalid since {s:?}: seconds since the epoch, 0 to 2147483647."
                    ))
                })?,
        ),
    };
    let query = AuditQuery {
        actor: q.get("actor").cloned(),
        target: q.get("target").map(|t| t.trim_matches('/').to_owned()),
        since,
        outcome: q.get("outcome").cloned(),
        before_seq: req.after,
        limit: req.limit,
    };
    let (rows, more) = tokio::task::spawn_blocking(move || store.audit_page(&query))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let next_page_token = more
        .then(|| rows.last().map(|r| super::page::token("seq", &r.seq)))
        .flatten();
    let events = rows
        .into_iter()
        .map(|r| AuditEvent {
            seq: r.seq,
            at: r.entry.at,
            request_id: r.entry.request_id,
            actor: r.entry.actor,
            role: r.entry.role,
            transport: r.entry.transport,
            method: r.entry.method,
            path: r.entry.path,
            target: r.entry.target,
            status: r.entry.status,
            outcome: r.entry.outcome,
            duration_ms: r.entry.duration_ms,
        })
        .collect();
    Ok(Json(AuditPage {
        events,
        next_page_token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_outcomes() {
        assert_eq!(target("/api/v1/vms/web1/start"), "vms/web1");
        assert_eq!(target("/api/v1/vms"), "vms");
        assert_eq!(target("/api/v1/vms/"), "vms");
        assert_eq!(target("/api/v1/login"), "login");
        assert_eq!(target("/api/v1/users/alice"), "users/alice");
        assert_eq!(outcome(StatusCode::CREATED), "succeeded");
        assert_eq!(outcome(StatusCode::TOO_MANY_REQUESTS), "denied");
        assert_eq!(outcome(StatusCode::CONFLICT), "failed");
    }
}
