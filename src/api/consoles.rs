//! `/api/v1/vms/{id}/console` and `/screenshot`: a VM's serial console and
//! display over WebSockets, and a PNG of its screen. The engine's console
//! hub does the sharing; this only carries bytes between it and the socket.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{ApiError, ApiResult};
use super::extract::Query;
use crate::engine::vm::console::ConsoleSession;
use crate::engine::Agent;
use crate::model::ErrorBody;

/// Close code for a client dropped for being too slow (policy violation).
const TOO_SLOW: u16 = 1008;
/// Output sent in one frame at most.
const FRAME: usize = 64 * 1024;
/// A frame the client does not take within this is the client too slow.
const SEND_DEADLINE: Duration = Duration::from_secs(5);

/// Open a VM's console (WebSocket).
///
/// Upgrades to a WebSocket carrying the VM's console. `type=serial` (the default): the serial
/// port, shared by every client (the recent output first, then everything the guest prints, as
/// binary frames; frames in are typed into the guest). `type=vnc`: the display's RFB stream,
/// both ways, with the `binary` subprotocol (noVNC's). 409 before the upgrade when the VM does
/// not run, or has no display for `vnc`.
#[utoipa::path(get, path = "/api/v1/vms/{id}/console", tag = "vms", operation_id = "vms_console",
    params(("id" = String, Path, description = "VM id (UUID) or name"),
           ("type" = Option<String>, Query, description = "`serial` (default) or `vnc`")),
    responses((status = 101, description = "WebSocket: serial console bytes or RFB, both ways"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn console(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let vnc = match q.get("type").map(String::as_str) {
        None | Some("serial") => false,
        Some("vnc") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid type {:?}: serial or vnc.",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    let ws = ws.map_err(|e| {
        ApiError::invalid(format!("this endpoint expects a WebSocket upgrade: {e}"))
    })?;
    if vnc {
        let stream = agent.vms.vnc(&id).await?;
        Ok(ws
            .protocols(["binary"])
            .on_upgrade(move |socket| relay_vnc(socket, stream)))
    } else {
        let session = agent.vms.console(&id).await?;
        Ok(ws.on_upgrade(move |socket| pump_serial(socket, session)))
    }
}

async fn send(socket: &mut WebSocket, bytes: Bytes) -> Result<(), &'static str> {
    match tokio::time::timeout(SEND_DEADLINE, socket.send(Message::Binary(bytes))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(""),
        Err(_) => Err("client too slow: a frame waited 5 s"),
    }
}

async fn pump_serial(mut socket: WebSocket, mut session: ConsoleSession) {
    if !session.history.is_empty() {
        let history = session.history.clone();
        if let Err(why) = send(&mut socket, history).await {
            return close(&mut socket, TOO_SLOW, why).await;
        }
    }
    loop {
        tokio::select! {
            out = session.recv(FRAME) => match out {
                Some(bytes) => {
                    if let Err(why) = send(&mut socket, bytes).await {
                        return close(&mut socket, TOO_SLOW, why).await;
                    }
                }
                None => {
                    let why = session.end_reason();
                    let code = if why.contains("too slow") { TOO_SLOW } else { 1000 };
                    return close(&mut socket, code, &why).await;
                }
            },
            msg = socket.recv() => {
                let input = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => return,
                };
                if session.input.send(input).await.is_err() {
                    let why = session.end_reason();
                    return close(&mut socket, 1000, &why).await;
                }
            }
        }
    }
}

async fn relay_vnc(mut socket: WebSocket, stream: tokio::net::UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; FRAME];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => return close(&mut socket, 1000, "the display closed").await,
                Ok(n) => {
                    if let Err(why) = send(&mut socket, Bytes::copy_from_slice(&buf[..n])).await {
                        return close(&mut socket, TOO_SLOW, why).await;
                    }
                }
            },
            msg = socket.recv() => {
                let input = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => return,
                };
                if wr.write_all(&input).await.is_err() {
                    return close(&mut socket, 1000, "the display closed").await;
                }
            }
        }
    }
}

/// Sends the close frame after what is queued: a client that reads again
/// within 30 s learns why it was dropped; one that never does is cut then.
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    if reason.is_empty() {
        return;
    }
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Take a screenshot of a VM's display.
///
/// A PNG of the VM's display as it is now (QEMU's `screendump`). 409 when the VM has no display
/// or does not run.
#[utoipa::path(get, path = "/api/v1/vms/{id}/screenshot", tag = "vms", operation_id = "vms_screenshot",
    params(("id" = String, Path, description = "VM id (UUID) or name")),
    responses((status = 200, description = "The screen as a PNG", content_type = "image/png"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn screenshot(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Response> {
    let png = agent.vms.screenshot(&id).await?;
    let mut resp = png.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
