//! `Idempotency-Key` on POST, PATCH and DELETE: the same key with the same
//! request within 24 h gets the first answer again and does nothing new (a
//! retry while the first still runs gets its job); the same key with another
//! request is 422. Keys are per caller and survive restarts (SQLite).
//! An agent and an aggregator both keep them, each in its own database.

use std::future::Future;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::job_sink::{JobSink, JOB_SINK};
use super::respond::accepted;
use super::{Caller, MAX_BODY};
use crate::engine::{Agent, IDEMPOTENCY_TTL};
use crate::model::Job;
use crate::store::{IdemRequest, IdemState, Store};

/// What serves the API: where it keeps the keys, how it finds the job a
/// first request started, and what key (if any) the request carries on.
pub trait IdemHost: Clone + Send + Sync + 'static {
    fn idem_store(&self) -> Arc<Store>;
    fn idem_job(&self, id: uuid::Uuid) -> impl Future<Output = Result<Job, ApiError>> + Send;
    /// The key the request carries on once this layer has taken it: the
    /// caller's own (an agent), or one per caller and key (an aggregator,
    /// whose nodes see all its callers as one).
    fn onward_key(&self, caller: &str, key: &str) -> Option<String>;
}

impl IdemHost for Agent {
    fn idem_store(&self) -> Arc<Store> {
        self.store_arc()
    }
    fn idem_job(&self, id: uuid::Uuid) -> impl Future<Output = Result<Job, ApiError>> + Send {
        let job = self.job(id).map_err(ApiError::from);
        async move { job }
    }
    fn onward_key(&self, _caller: &str, key: &str) -> Option<String> {
        Some(key.to_owned())
    }
}

/// A key standing for `caller`'s `key` (visible ASCII, 68 characters).
pub fn derived_key(caller: &str, key: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{caller}\0{key}").as_bytes(),
    );
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("via-{hex}")
}

fn replayed(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

pub async fn middleware<H: IdemHost>(State(host): State<H>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::PATCH | Method::DELETE) {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get("idempotency-key").cloned() else {
        return next.run(req).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => {
            return ApiError::invalid("Idempotency-Key must be 1 to 255 visible ASCII characters.")
                .into_response()
        }
    };
    let caller = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.label.clone())
        .unwrap_or_else(|| "unknown".into());
    let (mut parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body is larger than 1 MiB.",
            )
            .into_response()
        }
    };
    let method = parts.method.to_string();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let store = host.idem_store();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let lookup = store.idem_begin(
        &IdemRequest {
            caller: &caller,
            key: &key,
            method: &method,
            path: &path,
            body: &bytes,
        },
        now,
        IDEMPOTENCY_TTL,
    );
    let state = match lookup {
        Ok(s) => s,
        Err(e) => return ApiError::from(crate::engine::EngineError::from(e)).into_response(),
    };
    match state {
        IdemState::Mismatch => {
            let mut e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Idempotency-Key {key:?} was already used with a different request."),
            );
            e.reason = "IDEMPOTENCY_MISMATCH";
            e.into_response()
        }
        IdemState::Replay {
            status,
            body,
            location,
        } => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                resp.headers_mut().insert(header::LOCATION, l);
            }
            replayed(resp)
        }
        IdemState::InProgress { job_id: Some(id) } => match host.idem_job(id).await {
            Ok(job) => replayed(accepted(job, None)),
            Err(e) => e.into_response(),
        },
        IdemState::InProgress { job_id: None } => ApiError::new(
            StatusCode::CONFLICT,
            format!("A request with Idempotency-Key {key:?} is still being processed."),
        )
        .into_response(),
        IdemState::New => {
            let sink = {
                let store = store.clone();
                let (caller, key) = (caller.clone(), key.clone());
                JobSink::new(move |job| {
                    if let Err(e) = store.idem_job(&caller, &key, job) {
                        tracing::warn!(error = %e, "cannot link an idempotency key to its job");
                    }
                })
            };
            match host
                .onward_key(&caller, &key)
                .and_then(|k| HeaderValue::from_str(&k).ok())
            {
                Some(v) => parts.headers.insert("idempotency-key", v),
                None => parts.headers.remove("idempotency-key"),
            };
            let req = Request::from_parts(parts, Body::from(bytes));
            let resp = JOB_SINK.scope(sink, next.run(req)).await;
            if resp.status().is_server_error() {
                // A failure of the agent: let a retry try again.
                let _ = store.idem_forget(&caller, &key);
                return resp;
            }
            let (parts, body) = resp.into_parts();
            let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
            let location = parts
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Err(e) = store.idem_done(
                &caller,
                &key,
                parts.status.as_u16(),
                &body,
                location.as_deref(),
            ) {
                tracing::warn!(error = %e, "cannot store an idempotent answer");
            }
            Response::from_parts(parts, Body::from(body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::derived_key;

    #[test]
    fn a_derived_key_is_per_caller_stable_and_a_valid_key() {
        let k = derived_key("user:alice", "retry-1");
        assert_eq!(k, derived_key("user:alice", "retry-1"));
        assert_ne!(k, derived_key("user:bob", "retry-1"));
        assert_ne!(k, derived_key("user:alice", "retry-2"));
        // No caller and key pair runs into another by where the split is.
        assert_ne!(derived_key("a", "bc"), derived_key("ab", "c"));
        assert!(
            k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()),
            "{k}"
        );
    }
}
