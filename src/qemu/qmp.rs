//! A small QMP client: greeting, capabilities, replies matched to commands by
//! id, events passed through (known or not), a deadline on every command.
//!
//! One reader task owns the read half. Commands register a oneshot under a
//! fresh id and write one line. When QEMU closes the socket, every pending
//! command fails with `Disconnected` and the event stream ends: that end is
//! how the VM's watcher learns that QEMU is going away.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec};

/// QMP lines longer than this are a protocol error (query results are small).
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, Clone)]
pub enum QmpError {
    #[error("cannot connect to QMP socket: {0}")]
    Connect(String),
    #[error("QMP handshake failed: {0}")]
    Handshake(String),
    #[error("QMP command {command} timed out after {secs} s")]
    Timeout { command: String, secs: u64 },
    #[error("QMP connection closed")]
    Disconnected,
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP I/O error: {0}")]
    Io(String),
    /// QEMU answered, but not in the shape the command documents.
    #[error("QMP command {command} gave an unexpected answer: {detail}")]
    BadReply { command: String, detail: String },
}

/// An asynchronous event from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A connected QMP monitor. Cheap to clone; all clones share one socket.
#[derive(Clone)]
pub struct Qmp {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    /// Returns the client and the stream of events; the stream ends on EOF.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::Receiver<Event>), QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Connect(format!("{}: timed out", path.display())))?
            .map_err(|e| QmpError::Connect(format!("{}: {e}", path.display())))?;
        let (read, write) = stream.into_split();
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));

        let greeting = tokio::time::timeout(timeout, lines.next())
            .await
            .map_err(|_| QmpError::Handshake("no greeting".into()))?
            .ok_or_else(|| QmpError::Handshake("closed before greeting".into()))?
            .map_err(|e| QmpError::Handshake(e.to_string()))?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|e| QmpError::Handshake(e.to_string()))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Handshake(format!(
                "unexpected greeting {greeting}"
            )));
        }

        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (events_tx, events_rx) = mpsc::channel(256);
        tokio::spawn(read_loop(lines, pending.clone(), events_tx));

        let qmp = Qmp {
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            timeout,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok((qmp, events_rx))
    }

    /// Runs one command with the client's default deadline.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, args, self.timeout).await
    }

    pub async fn execute_with_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = args {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');

        let result = tokio::time::timeout(timeout, async {
            {
                let mut w = self.writer.lock().await;
                w.write_all(line.as_bytes())
                    .await
                    .map_err(|e| QmpError::Io(e.to_string()))?;
            }
            rx.await.map_err(|_| QmpError::Disconnected)
        })
        .await;
        match result {
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(QmpError::Timeout {
                    command: command.to_owned(),
                    secs: timeout.as_secs(),
                })
            }
            Ok(Err(e)) => {
                lock(&self.pending).remove(&id);
                Err(e)
            }
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
        }
    }
}

use crate::sync::lock;

async fn read_loop(
    mut lines: FramedRead<tokio::net::unix::OwnedReadHalf, LinesCodec>,
    pending: Pending,
    events: mpsc::Sender<Event>,
) {
    while let Some(Ok(line)) = lines.next().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(%line, "QMP: ignoring a line that is not JSON");
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let ev = Event {
                name: name.to_owned(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            };
            // A receiver that went away only means nobody watches events.
            let _ = events.send(ev).await;
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::warn!(%line, "QMP: reply without an id of ours");
            continue;
        };
        let Some(tx) = lock(&pending).remove(&id) else {
            continue; // the caller timed out and left
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else {
            let err = msg.get("error").cloned().unwrap_or(Value::Null);
            Err((
                err.get("class")
                    .and_then(Value::as_str)
                    .unwrap_or("GenericError")
                    .to_owned(),
                err.get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_owned(),
            ))
        };
        let _ = tx.send(reply);
    }
    // EOF or a broken line: fail everything still waiting.
    lock(&pending).clear();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    /// A fake QEMU monitor for protocol edge cases: greets, then answers each
    /// command through `respond` (no lines = never answer, `CLOSE` = hang up).
    pub(crate) async fn fake_qmp(
        respond: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                for out in respond(&v) {
                    if out == "CLOSE" {
                        return;
                    }
                    w.write_all(out.as_bytes()).await.unwrap();
                    w.write_all(b"\n").await.unwrap();
                }
            }
        });
        (dir, path)
    }

    pub(crate) fn ret(v: &Value, ret: Value) -> String {
        json!({"return": ret, "id": v["id"]}).to_string()
    }

    #[tokio::test]
    async fn replies_are_matched_by_id_and_events_pass_through() {
        let (_d, path) = fake_qmp(|v| match v["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ret(v, json!({}))],
            // An unknown event and a reply to someone else come first.
            "query-status" => vec![
                json!({"event": "SOME_FUTURE_EVENT", "data": {"x": 1}}).to_string(),
                json!({"return": "stale", "id": 999}).to_string(),
                ret(v, json!({"status": "running"})),
            ],
            _ => vec![
                json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": v["id"]})
                    .to_string(),
            ],
        })
        .await;
        let (qmp, mut events) = Qmp::connect(&path, Duration::from_secs(2)).await.unwrap();
        let st = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(st["status"], "running");
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.name, "SOME_FUTURE_EVENT");
        let err = qmp.execute("bogus", None).await.unwrap_err();
        assert!(matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"));
    }

    #[tokio::test]
    async fn a_silent_monitor_times_out_and_eof_fails_pending_calls() {
        let (_d, path) = fake_qmp(|v| match v["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ret(v, json!({}))],
            "hang" => vec![],
            _ => vec!["CLOSE".into()],
        })
        .await;
        let (qmp, mut events) = Qmp::connect(&path, Duration::from_millis(300))
            .await
            .unwrap();
        let t = std::time::Instant::now();
        let err = qmp.execute("hang", None).await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }));
        assert!(t.elapsed() < Duration::from_secs(2));
        let err = qmp.execute("close", None).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Disconnected | QmpError::Timeout { .. }),
            "{err:?}"
        );
        // The event stream ends at EOF.
        assert!(events.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qmp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"hello\": 1}\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let err = Qmp::connect(&path, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Handshake(_)));
    }
}
