//! What every resource shares: the power-action body and answer, the 202
//! answer of an asynchronous call, health, and the error body.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Job, Vm};

/// Optional body of power actions.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Seconds to wait for the guest before forcing (`stop`, `reboot`) or giving up (`shutdown`).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// Answer of a power action or a delete.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionResponse {
    pub id: Uuid,
    pub status: String,
    pub message: String,
    pub job_id: Uuid,
}

/// The 202 answer of an asynchronous call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub job: Job,
    /// The VM as it is now, for calls on one VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub node: String,
    pub accel: String,
    pub vms: usize,
}

/// The error body of every failed call (AIP-193 shape).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason: `INVALID_INPUT`, `NOT_FOUND`, ...
    pub status: String,
    pub message: String,
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<serde_json::Value>,
    pub request_id: String,
}
