//! What every resource shares: the power-action body and answer, the 202
//! answer of an asynchronous call, health, and the error body.

use serde::de::{DeserializeOwned, Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize};
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

/// A nested object field (`"io_limits": {...}`): an object or `null`. Serde
/// would also take a struct as an array of its fields (`[2, 10]`); a client
/// never means that.
pub(crate) fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => {
            T::deserialize(v).map(Some).map_err(D::Error::custom)
        }
        Some(other) => Err(D::Error::invalid_type(unexpected(&other), &"an object")),
    }
}

/// An array of objects (`"ports": [{...}]`), each refused in array form.
pub(crate) fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Vec::<serde_json::Value>::deserialize(d)?
        .into_iter()
        .map(|v| match v {
            serde_json::Value::Object(_) => T::deserialize(v).map_err(D::Error::custom),
            other => Err(D::Error::invalid_type(unexpected(&other), &"an object")),
        })
        .collect()
}

/// Distinguishes an absent field (None) from an explicit `null`
/// (Some(None)); a present value must be an object.
pub(crate) fn double_object<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    object(d).map(Some)
}

fn unexpected(v: &serde_json::Value) -> Unexpected<'_> {
    match v {
        serde_json::Value::Null => Unexpected::Unit,
        serde_json::Value::Bool(b) => Unexpected::Bool(*b),
        serde_json::Value::Number(_) => Unexpected::Other("a number"),
        serde_json::Value::String(s) => Unexpected::Str(s),
        serde_json::Value::Array(_) => Unexpected::Seq,
        serde_json::Value::Object(_) => Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{CreateContainerRequest, CreateVmRequest, PatchVmRequest};

    #[test]
    fn nested_objects_are_never_taken_as_arrays() {
        let bad = [
            r#"{"io_limits": [null, null]}"#,
            r#"{"cpu_pinning": [[0]]}"#,
            r#"{"io_limits": 3}"#,
        ];
        for text in bad {
            assert!(
                serde_json::from_str::<PatchVmRequest>(text).is_err(),
                "{text}"
            );
        }
        let ok: PatchVmRequest = serde_json::from_str(r#"{"io_limits": null}"#).unwrap();
        assert_eq!(ok.io_limits, Some(None));
        let ok: PatchVmRequest = serde_json::from_str(r#"{"io_limits": {"iops": 5}}"#).unwrap();
        assert_eq!(ok.io_limits.unwrap().unwrap().iops, Some(5));
        // Through a flattened part too.
        assert!(serde_json::from_str::<CreateVmRequest>(r#"{"boot": ["k"]}"#).is_err());
        assert!(serde_json::from_str::<CreateVmRequest>(r#"{"network": {"mode": "tap"}}"#).is_ok());
        let c = |t: &str| serde_json::from_str::<CreateContainerRequest>(t);
        assert!(c(r#"{"image": "a", "ports": [[80]]}"#).is_err());
        assert!(c(r#"{"image": "a", "ports": [{"container_port": 80}]}"#).is_ok());
    }
}
