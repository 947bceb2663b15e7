//! WebSockets (the event stream, the serial console) and following a job
//! to its end.

use std::time::Duration;

use futures::StreamExt;
use hyper::Method;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::{segment, Client, ClientError, Io, Result};
use crate::model::{EventMessage, Job, JobState};

/// A WebSocket to the agent.
pub type Socket = WebSocketStream<Box<dyn Io>>;

/// The events of `GET /api/v1/events`, one message at a time.
pub struct EventStream {
    ws: Socket,
}

impl EventStream {
    /// The events of an open `GET /api/v1/events` WebSocket.
    pub fn from_socket(ws: Socket) -> EventStream {
        EventStream { ws }
    }

    /// The next event; `None` when the server closed the stream (a close
    /// with a reason, such as a client too slow, is an error).
    pub async fn next(&mut self) -> Option<Result<EventMessage>> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    return Some(
                        serde_json::from_str(&t).map_err(|e| ClientError::Decode(e.to_string())),
                    )
                }
                Ok(Message::Close(Some(f))) if f.code != 1000.into() => {
                    return Some(Err(ClientError::Transport(format!(
                        "the event stream was closed: {}",
                        f.reason
                    ))))
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => return Some(Err(ClientError::Transport(e.to_string()))),
            }
        }
    }
}

impl Client {
    /// Opens a WebSocket on `path` (with its query).
    pub async fn websocket(&self, path: &str) -> Result<Socket> {
        let io = self.connect().await?;
        let scheme = if self.endpoint().is_tls() {
            "wss"
        } else {
            "ws"
        };
        let mut req = format!("{scheme}://{}{path}", self.endpoint().host_header())
            .into_client_request()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        if let Some(t) = &self.token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Invalid("a token with odd characters".into()))?,
            );
        }
        match tokio_tungstenite::client_async(req, io).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                Err(ClientError::from_answer(status, &body))
            }
            Err(e) => Err(ClientError::Transport(e.to_string())),
        }
    }

    /// The event stream, filtered by type prefixes (`vm.`, `job.finished`)
    /// and a resource (an id, a name or a path); empty: everything.
    pub async fn events(&self, types: &[&str], resource: Option<&str>) -> Result<EventStream> {
        let mut q = Vec::new();
        if !types.is_empty() {
            q.push(format!("types={}", segment(&types.join(","))));
        }
        if let Some(r) = resource {
            q.push(format!("resource={}", segment(r)));
        }
        let path = if q.is_empty() {
            "/api/v1/events".to_owned()
        } else {
            format!("/api/v1/events?{}", q.join("&"))
        };
        Ok(EventStream {
            ws: self.websocket(&path).await?,
        })
    }

    /// The serial console of a VM: binary frames of the guest's output;
    /// frames sent are typed into the guest.
    pub async fn console(&self, vm: &str) -> Result<Socket> {
        self.websocket(&format!("/api/v1/vms/{}/console?type=serial", segment(vm)))
            .await
    }

    /// Waits for a job to end, calling `progress` with its percentage as
    /// it changes (from the event stream; when the stream is not to be
    /// had, by asking for the job). Answers the finished job, whatever its
    /// outcome; see [`Client::follow_job`] for one that must succeed.
    pub async fn wait_job(&self, id: Uuid, mut progress: impl FnMut(u8)) -> Result<Job> {
        // Subscribe first, then read the job: an end between the two is
        // seen either way.
        let mut events = self.events(&["job."], Some(&id.to_string())).await.ok();
        let mut last = None;
        loop {
            let job: Job = self
                .request(Method::GET, &format!("/api/v1/jobs/{id}"), None::<&()>)
                .await?;
            if last != Some(job.progress_percent) {
                last = Some(job.progress_percent);
                progress(job.progress_percent);
            }
            if !matches!(job.state, JobState::Running | JobState::Queued) {
                return Ok(job);
            }
            match events.as_mut() {
                Some(stream) => loop {
                    // A quiet stream is checked against the job now and
                    // then, so a missed event costs seconds, not forever.
                    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                        Ok(Some(Ok(ev))) if ev.kind == "job.finished" => break,
                        Ok(Some(Ok(ev))) => {
                            if let Some(p) = ev.progress_percent {
                                if last != Some(p) {
                                    last = Some(p);
                                    progress(p);
                                }
                            }
                        }
                        Ok(None) | Ok(Some(Err(_))) => {
                            events = None;
                            break;
                        }
                        Err(_) => break,
                    }
                },
                None => {
                    // No stream: the server waits for us.
                    let _: Job = self
                        .request(
                            Method::GET,
                            &format!("/api/v1/jobs/{id}?wait=5"),
                            None::<&()>,
                        )
                        .await?;
                }
            }
        }
    }

    /// [`Client::wait_job`], and an error when the job did not succeed.
    pub async fn follow_job(&self, id: Uuid, progress: impl FnMut(u8)) -> Result<Job> {
        let job = self.wait_job(id, progress).await?;
        if job.state == JobState::Succeeded {
            return Ok(job);
        }
        let state = serde_json::to_value(job.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Err(ClientError::JobFailed {
            id,
            state,
            message: job
                .error
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
            job: Box::new(job),
        })
    }
}
