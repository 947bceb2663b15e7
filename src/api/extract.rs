//! Request extractors whose failures are the API's JSON error body.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON object body. Anything but an object (an array, a string, `null`),
/// malformed JSON, wrong types and unknown fields are 400; a body over the
/// limit is 413. With `ALLOW_EMPTY`, an empty body is `{}`.
pub struct JsonBody<T, const ALLOW_EMPTY: bool = false>(pub T);

/// A JSON body that may be an object or an array (`POST /vms` takes both).
pub struct JsonObjectOrArray(pub serde_json::Value);

/// A body that may be empty (power actions).
pub type OptionalBody<T> = JsonBody<T, true>;

impl<S, T, const ALLOW_EMPTY: bool> FromRequest<S> for JsonBody<T, ALLOW_EMPTY>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        let text: &[u8] = if ALLOW_EMPTY && bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        if first_byte(text) != Some(b'{') {
            return Err(ApiError::invalid(
                "Invalid request body: expected a JSON object.",
            ));
        }
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonObjectOrArray {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        if !matches!(first_byte(&bytes), Some(b'{' | b'[')) {
            return Err(ApiError::invalid(
                "Invalid request body: expected a JSON object or an array of objects.",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonObjectOrArray)
            .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))
    }
}

/// The first byte that is not JSON whitespace.
fn first_byte(text: &[u8]) -> Option<u8> {
    text.iter().copied().find(|b| !b.is_ascii_whitespace())
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body is larger than 1 MiB.",
            )
        } else {
            ApiError::invalid(format!("Cannot read the request body: {e}"))
        }
    })
}
