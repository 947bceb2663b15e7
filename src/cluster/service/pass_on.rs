//! Every other route of the agent: the call goes to the node that has what
//! it names, a WebSocket is relayed, a list of a whole collection is merged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use uuid::Uuid;

use crate::api::access::{self};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::Query;
use crate::cluster::forward;
use crate::cluster::registry::NodeHandle;
use crate::cluster::ClusterError;
use crate::model::Vm;
use crate::sync::lock;

use super::Aggregator;

/// Finds the node a call is about and passes the call on.
pub(super) async fn pass_on(
    State(agg): State<Arc<Aggregator>>,
    matched: MatchedPath,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Response> {
    let (mut parts, body) = req.into_parts();
    let template = matched.as_str().to_owned();
    let path = forward::without_node_param(parts.uri.path(), parts.uri.query());
    let node = match q.get("node") {
        Some(n) => Some(agg.node(n)?),
        None => owner(&agg, &template, parts.uri.path(), &parts.method).await?,
    };
    let Some(node) = node else {
        return merged_list(&agg, parts.uri.path(), &q).await;
    };
    // A WebSocket (a console, an interactive exec): one to the node, and
    // messages relayed both ways until either side closes.
    let upgrade = parts
        .headers
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        use axum::extract::FromRequestParts;
        let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::invalid(format!("a WebSocket upgrade: {e}")))?;
        let upstream = node
            .guard(node.client.websocket(&path))
            .await
            .map_err(|e| ClusterError::from_client(&node.name, e))?;
        return Ok(ws.on_upgrade(move |socket| relay_ws(socket, upstream)));
    }
    // The name of a VM about to be deleted, to free it cluster-wide.
    let deleting = (parts.method == Method::DELETE && template == "/api/v1/vms/{id}")
        .then(|| {
            parts
                .uri
                .path()
                .rsplit('/')
                .next()
                .and_then(|id| node.vm_name(id))
        })
        .flatten();
    let resp = forward::to_node(&node, parts.method.clone(), &path, &parts.headers, body).await?;
    if let (true, Some(name)) = (resp.status().is_success(), &deleting) {
        agg.release_name(name).await;
    }
    if access::is_mutating(&parts.method) && resp.status().is_success() {
        node.refresh_resources(agg.cfg.poll_timeout).await;
    }
    if parts.method == Method::DELETE
        && resp.status().is_success()
        && template == "/api/v1/vms/{id}"
    {
        if let Some(id) = parts.uri.path().rsplit('/').next() {
            node.forget_vm(id);
        }
    }
    Ok(learn(&agg, &node, resp).await)
}

/// Relays messages between a caller's WebSocket and a node's.
async fn relay_ws(caller: axum::extract::ws::WebSocket, node: crate::client::Socket) {
    use axum::extract::ws::Message as A;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as T;
    let (mut to_caller, mut from_caller) = caller.split();
    let (mut to_node, mut from_node) = node.split();
    let up = async {
        while let Some(Ok(m)) = from_caller.next().await {
            let m = match m {
                A::Text(t) => T::text(t.as_str()),
                A::Binary(b) => T::binary(b),
                A::Ping(b) => T::Ping(b),
                A::Pong(b) => T::Pong(b),
                A::Close(_) => break,
            };
            if to_node.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_node.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = from_node.next().await {
            let m = match m {
                T::Text(t) => A::Text(t.as_str().into()),
                T::Binary(b) => A::Binary(b),
                T::Ping(b) => A::Ping(b),
                T::Pong(b) => A::Pong(b),
                T::Close(f) => {
                    let frame = f.map(|f| axum::extract::ws::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = to_caller.send(A::Close(frame)).await;
                    break;
                }
                T::Frame(_) => continue,
            };
            if to_caller.send(m).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Notes what a forwarded answer tells: a job's node, a VM's node.
pub(super) async fn learn(agg: &Aggregator, node: &NodeHandle, resp: Response) -> Response {
    // Only small JSON answers say anything worth noting; streams (logs,
    // downloads, event streams) pass untouched.
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let small = resp
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= 1 << 20);
    if !resp.status().is_success() || !json || !small {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        if let Some(id) = v
            .pointer("/job/id")
            .or_else(|| v.get("job_id"))
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            lock(&agg.job_nodes).insert(id, node.name.clone());
        }
        let vm = v.get("vm").cloned().unwrap_or(v.clone());
        if let Ok(vm) = serde_json::from_value::<Vm>(vm) {
            node.note_vm(vm);
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The node a call names; none for a list of a whole collection (merged).
pub(super) async fn owner(
    agg: &Aggregator,
    template: &str,
    path: &str,
    method: &Method,
) -> Result<Option<Arc<NodeHandle>>, ClusterError> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let tsegs: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    // `/api/v1/{collection}`: a list is merged; anything else goes to the
    // only node, or must name one.
    if tsegs.len() <= 3 || !tsegs[3].starts_with('{') {
        if tsegs.len() <= 3 && *method == Method::GET {
            return Ok(None);
        }
        let nodes = agg.registry.all();
        return match nodes.as_slice() {
            [one] => Ok(Some(one.clone())),
            _ => Err(ClusterError::Invalid(format!(
                "{method} {path} acts on one node: name it with ?node= (nodes: {}).",
                nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        };
    }
    let (coll, id) = (segs[2], segs[3]);
    if coll == "vms" {
        let known = agg.registry.owner_of(id);
        if known.len() == 1 {
            return Ok(known.into_iter().next());
        }
    }
    // Ask every node that answers whether it has it.
    let probe = format!("/api/v1/{coll}/{id}");
    let nodes = agg.registry.online();
    let found = futures::future::join_all(nodes.iter().map(|n| {
        let probe = probe.clone();
        async move {
            matches!(
                forward::call(n, Method::GET, &probe, &[], None).await,
                Ok((200, _))
            )
        }
    }))
    .await;
    let have: Vec<Arc<NodeHandle>> = nodes
        .into_iter()
        .zip(found)
        .filter_map(|(n, f)| f.then_some(n))
        .collect();
    match have.len() {
        1 => Ok(have.into_iter().next()),
        0 => {
            let down: Vec<String> = agg
                .registry
                .all()
                .iter()
                .filter(|n| !n.online())
                .map(|n| n.name.clone())
                .collect();
            if coll == "vms" && agg.registry.owner_of(id).iter().any(|n| !n.online()) {
                return Err(ClusterError::Unavailable(format!(
                    "{id} is on a node that does not answer ({}).",
                    down.join(", ")
                )));
            }
            Err(ClusterError::NotFound(format!(
                "No {} named {id:?} on any node{}.",
                coll.trim_end_matches('s'),
                if down.is_empty() {
                    String::new()
                } else {
                    format!(" that answers (unreachable: {})", down.join(", "))
                }
            )))
        }
        _ => Err(ClusterError::Conflict(format!(
            "{id:?} exists on several nodes ({}): name one with ?node=.",
            have.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A list of a collection other than VMs and jobs: every node's whole list
/// (each item with its `node`), paged here by (node, id or name).
async fn merged_list(
    agg: &Aggregator,
    path: &str,
    q: &HashMap<String, String>,
) -> ApiResult<Response> {
    let passed: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "node" | "limit" | "page_token" | "pageToken"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let nodes = agg.registry.online();
    let answers = futures::future::join_all(nodes.iter().map(|n| {
        let passed = passed.clone();
        async move { whole_list(n, path, passed).await }
    }))
    .await;
    let mut field: Option<String> = None;
    let mut items: Vec<Value> = Vec::new();
    for (n, a) in nodes.iter().zip(answers) {
        let (f, list) = a?;
        field = field.or(f);
        for mut it in list {
            if let Some(o) = it.as_object_mut() {
                o.entry("node")
                    .or_insert_with(|| Value::from(n.name.clone()));
            }
            items.push(it);
        }
    }
    let key = |v: &Value| -> (String, String) {
        let node = v
            .get("node")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let id = ["id", "name"]
            .iter()
            .find_map(|k| {
                v.get(*k)
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            })
            .unwrap_or_default();
        (node, id)
    };
    items.sort_by_key(key);
    let (page, next, total) = crate::api::page::paginate(items, key, "node", false, q)?;
    let mut out = serde_json::Map::new();
    out.insert(field.unwrap_or_else(|| "items".into()), Value::from(page));
    if let Some(t) = next {
        out.insert("next_page_token".into(), Value::from(t));
    }
    out.insert("total_count".into(), Value::from(total));
    Ok(Json(Value::Object(out)).into_response())
}

/// A node's whole list at `path`: the name of its items' field and the
/// items, page after page.
async fn whole_list(
    node: &NodeHandle,
    path: &str,
    passed: Vec<(String, String)>,
) -> Result<(Option<String>, Vec<Value>), ApiError> {
    let mut items = Vec::new();
    let mut field = None;
    let mut token: Option<String> = None;
    for _ in 0..50 {
        let mut lq = crate::client::ListQuery {
            limit: Some(200),
            filters: passed.clone(),
            ..Default::default()
        };
        lq.page_token = token.take();
        let url = format!("{path}{}", lq.to_query());
        let (status, bytes) = forward::call(node, Method::GET, &url, &[], None).await?;
        if status != 200 {
            let e = crate::client::ClientError::from_answer(status, &bytes);
            return Err(ClusterError::from_client(&node.name, e).into());
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let Some(obj) = v.as_object() else {
            return Ok((field, items));
        };
        if let Some((k, arr)) = obj.iter().find(|(_, v)| v.is_array()) {
            field = Some(k.clone());
            items.extend(arr.as_array().cloned().unwrap_or_default());
        }
        match obj.get("next_page_token").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok((field, items)),
        }
    }
    Ok((field, items))
}
