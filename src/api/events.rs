//! `GET /api/v1/events`: a WebSocket of JSON events (VM lifecycle, jobs,
//! templates), filtered by `types` (comma-separated prefixes: `vm.`,
//! `job.finished`) and `resource` (an id or a name). A client that falls more
//! than the ring's capacity behind, or does not take a message within 5 s, is
//! closed with a reason instead of slowing the agent or growing its memory.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;

use super::extract::Query;
use axum::response::Response;
use tokio::sync::broadcast::error::RecvError;

use super::error::{ApiError, ApiResult};
use crate::events::matches;
use crate::model::EventMessage;

/// Close code for a subscriber dropped for being too slow (policy violation).
const TOO_SLOW: u16 = 1008;

/// Stream events (WebSocket).
///
/// Upgrades to a WebSocket on which the agent sends its events (VM, container and job changes)
/// as they happen.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(("types" = Option<String>, Query, description = "comma-separated type prefixes, e.g. vm.started,job."),
           ("resource" = Option<String>, Query, description = "a resource id or name"),
           ("since" = Option<u64>, Query, description = "resume after this seq: the kept events with a greater seq (that pass the filters) are sent first, then live ones, none twice; if some after it are no longer kept, an `events.lost` message comes first")),
    responses((status = 101, description = "WebSocket of EventMessage JSON texts", body = EventMessage),
              (status = 400, body = crate::model::ErrorBody)))]
pub async fn stream(
    State(bus): State<crate::events::EventBus>,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let types: Vec<String> = q
        .get("types")
        .or_else(|| q.get("type"))
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let resource = q.get("resource").cloned();
    let since = q
        .get("since")
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                ApiError::invalid(format!(
                    "since: {s:?} is not a seq (a non-negative integer)"
                ))
            })
        })
        .transpose()?;
    let ws = ws.map_err(|e| {
        ApiError::invalid(format!(
            "GET /api/v1/events expects a WebSocket upgrade: {e}"
        ))
    })?;
    // Subscribe before taking the history: nothing falls between the two,
    // and what is in both is skipped by seq.
    let rx = bus.subscribe();
    let mut first = Vec::new();
    let mut last_sent = 0;
    if let Some(since) = since {
        let replay = bus.replay(since);
        // Live events up to the newest one issued are in the replay (or
        // filtered out of it, or at most `since`).
        last_sent = replay.upto.max(since);
        if replay.lost {
            first.push(bus.lost_message(since));
        }
        first.extend(
            replay
                .events
                .into_iter()
                .filter(|ev| matches(ev, &types, resource.as_deref())),
        );
    }
    Ok(ws.on_upgrade(move |socket| pump(socket, rx, first, last_sent, types, resource)))
}

/// Sends one event; false when the stream is over (closed, or closed here
/// for being too slow).
async fn send(socket: &mut WebSocket, ev: &EventMessage) -> bool {
    let Ok(text) = serde_json::to_string(ev) else {
        return true;
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        socket.send(Message::Text(text.into())),
    )
    .await
    {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            close(socket, "client too slow: a message waited 5 s").await;
            false
        }
    }
}

async fn pump(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<EventMessage>,
    first: Vec<EventMessage>,
    last_sent: u64,
    types: Vec<String>,
    resource: Option<String>,
) {
    for ev in &first {
        if !send(&mut socket, ev).await {
            return;
        }
    }
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if ev.seq <= last_sent || !matches(&ev, &types, resource.as_deref()) {
                        continue;
                    }
                    if !send(&mut socket, &ev).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    close(&mut socket, &format!("client too slow: {n} events dropped")).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Sends the close frame after what is queued: a client that reads again
/// within 30 s learns why it was dropped; one that never does is cut then.
async fn close(socket: &mut WebSocket, reason: &str) {
    let frame = CloseFrame {
        code: TOO_SLOW,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}
