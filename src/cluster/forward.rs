//! Passing a request on to the node that owns what it names, and its answer
//! back unchanged (status, headers, body streamed).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Method, Response};
use bytes::Bytes;

use super::registry::NodeHandle;
use super::ClusterError;

/// Request headers a node needs to answer as it would a direct call (the
/// length is the body's own: hyper sets it from the body passed on).
const PASSED_ON: [&str; 5] = [
    "content-type",
    "prefer",
    "idempotency-key",
    "accept",
    "if-match",
];

/// Response headers that belong to one hop only.
const HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Sends `method path_and_query` with `body` (streamed) to `node` and
/// answers its response as it came. A node that cannot be reached is
/// `Unavailable`.
pub async fn to_node(
    node: &NodeHandle,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response<Body>, ClusterError> {
    use http_body_util::BodyExt;
    let id = crate::api::error::current_request_id();
    let mut pass: Vec<(&str, &str)> = PASSED_ON
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (*name, v))
        })
        .collect();
    with_request_id(&mut pass, &id);
    let body = body.map_err(std::io::Error::other).boxed_unsync();
    let resp = node
        .guard(node.client.send_stream(method, path_and_query, body, &pass))
        .await
        .map_err(|e| ClusterError::unreachable(&node.name, e))?;
    let (parts, incoming) = resp.into_parts();
    let mut out = Response::new(node.guard_body(incoming));
    *out.status_mut() = parts.status;
    for (k, v) in parts.headers.iter() {
        if !HOP.contains(&k.as_str()) {
            out.headers_mut().append(HeaderName::from(k), v.clone());
        }
    }
    if let Ok(v) = node.name.parse() {
        out.headers_mut().insert("x-libgo-node", v);
    }
    Ok(out)
}

/// Sends a small request and reads the whole answer: status and body.
pub async fn call(
    node: &NodeHandle,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes), ClusterError> {
    use http_body_util::BodyExt;
    let id = crate::api::error::current_request_id();
    let mut headers = headers.to_vec();
    with_request_id(&mut headers, &id);
    let resp = node
        .guard(node.client.send(method, path_and_query, body, &headers))
        .await
        .map_err(|e| ClusterError::unreachable(&node.name, e))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            ClusterError::unreachable(
                &node.name,
                crate::client::ClientError::Transport(e.to_string()),
            )
        })?
        .to_bytes();
    Ok((status, bytes))
}

/// The call carries on the id of the request it serves, so the node's audit
/// trail and logs meet the aggregator's (which names the caller) by it.
fn with_request_id<'a>(headers: &mut Vec<(&'a str, &'a str)>, id: &'a str) {
    if !id.is_empty() {
        headers.push(("x-request-id", id));
    }
}

/// `path?query` with the `node` parameter taken out (a node does not
/// filter on its own name when asked through the aggregator).
pub fn without_node_param(path: &str, query: Option<&str>) -> String {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("node=") && *kv != "node")
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_parameter_is_dropped() {
        assert_eq!(without_node_param("/a", None), "/a");
        assert_eq!(without_node_param("/a", Some("node=n1")), "/a");
        assert_eq!(
            without_node_param("/a", Some("x=1&node=n1&y=2")),
            "/a?x=1&y=2"
        );
        assert_eq!(without_node_param("/a", Some("nodes=1")), "/a?nodes=1");
    }
}
