//! The one place that maps engine errors to HTTP, and the error body every
//! failed call carries.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::engine::error::chain;
use crate::engine::{EngineError, ErrorKind};
use crate::model::{ErrorBody, ErrorDetail};

tokio::task_local! {
    /// The id of the request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The machine-readable reason (`status` field of the body).
    pub reason: &'static str,
    pub message: String,
    pub details: Vec<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: status_name(status),
            message: message.into(),
            details: Vec::new(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

/// The machine-readable name of a status, as the conventions list them.
pub fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_INPUT",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "REQUEST_TIMEOUT",
        409 => "RESOURCE_CONFLICT",
        413 => "PAYLOAD_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        422 => "IDEMPOTENCY_MISMATCH",
        429 => "RATE_LIMITED",
        503 => "BACKEND_UNAVAILABLE",
        _ => "INTERNAL_SERVER_ERROR",
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let status = match e.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict | ErrorKind::Capacity => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // A failed host step shows its causes too: the client sees why.
        let message = if e.kind() == ErrorKind::Internal {
            chain(&e)
        } else {
            e.to_string()
        };
        let mut err = ApiError::new(status, message);
        if e.kind() == ErrorKind::Capacity {
            err.reason = "INSUFFICIENT_CAPACITY";
        }
        if let EngineError::Capacity {
            shortfall: Some(s), ..
        } = &e
        {
            err.details.push(serde_json::json!({
                "reason": "INSUFFICIENT_CAPACITY",
                "resource": s.resource.as_str(),
                "unit": s.resource.unit(),
                "limit": s.limit,
                "requested": s.requested,
                "available": s.available,
            }));
        }
        if let EngineError::Busy {
            job_id, job_type, ..
        } = &e
        {
            err.details.push(serde_json::json!({
                "reason": "OPERATION_IN_PROGRESS",
                "job_id": job_id,
                "job_type": job_type,
                "job": format!("/api/v1/jobs/{job_id}"),
            }));
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %chain(&e), "request failed");
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.status.as_u16(),
                status: self.reason.to_owned(),
                message: self.message,
                details: self.details,
                request_id: current_request_id(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
