//! Request extractors whose failures are the API's JSON error body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
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
        let value = parse(text)?;
        serde_json::from_value(value)
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
        parse(&bytes).map(JsonObjectOrArray)
    }
}

/// A raw upload (an image tarball), up to the route's own limit; over it,
/// the API's 413 error body.
pub struct UploadBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for UploadBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if declared_over(&req, super::MAX_UPLOAD) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Upload is larger than 4 GiB.",
            ));
        }
        Bytes::from_request(req, state)
            .await
            .map(UploadBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Upload is larger than 4 GiB.",
                    )
                } else {
                    ApiError::invalid(format!("Cannot read the request body: {e}"))
                }
            })
    }
}

/// JSON text as a value, whose integral numbers written with a fraction
/// (`2.0`, `1e3`) are integers: JSON Schema's `integer` counts them as
/// integers, so an integer field takes them.
fn parse(text: &[u8]) -> Result<serde_json::Value, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))?;
    integral_floats_as_integers(&mut value);
    Ok(value)
}

fn integral_floats_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) else {
                return;
            };
            // 2^64 and -2^63 are exact in f64: the bounds of u64 and i64.
            if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                *v = Value::from(f as u64);
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Path segments (`{id}`, `{action}`); one that does not decode (invalid
/// UTF-8 once percent-decoded, a number out of range) is the API's 400.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::invalid(format!("Invalid path: {}", e.body_text())))
    }
}

/// The query string; one that does not decode is the API's 400.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::invalid(format!("Invalid query string: {}", e.body_text())))
    }
}

/// The first byte that is not JSON whitespace.
fn first_byte(text: &[u8]) -> Option<u8> {
    text.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Whether the request declares a body longer than `limit`: refused before
/// a byte of it is read.
fn declared_over(req: &Request, limit: usize) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if declared_over(&req, super::MAX_BODY) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body is larger than 1 MiB.",
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_floats_are_integers_and_others_stay() {
        let v = parse(br#"{"a": 2.0, "b": [1e3, -4.0, 2.5], "c": {"d": 1e308, "e": 7}}"#).unwrap();
        assert_eq!(v["a"], serde_json::json!(2));
        assert!(v["a"].is_u64());
        assert_eq!(v["b"], serde_json::json!([1000, -4, 2.5]));
        assert!(v["c"]["d"].is_f64(), "{v}");
        assert!(v["c"]["e"].is_u64());
        #[derive(serde::Deserialize)]
        struct T {
            vcpus: u32,
        }
        let t: T = serde_json::from_value(parse(br#"{"vcpus": 4.0}"#).unwrap()).unwrap();
        assert_eq!(t.vcpus, 4);
        assert!(serde_json::from_value::<T>(parse(br#"{"vcpus": 4.5}"#).unwrap()).is_err());
        assert!(serde_json::from_value::<T>(parse(br#"{"vcpus": 1e19}"#).unwrap()).is_err());
    }
}
