//! A typed client of the libgo REST API, built on the server's own wire
//! types (`crate::model`).
//!
//! One [`Client`] talks to one agent: over its Unix socket (the default,
//! `unix:///run/libgo.sock`), over TLS (`https://host:port`, the server's
//! certificate pinned by its SHA-256 fingerprint, with a bearer token), or
//! over plain HTTP on a loopback address (`http://127.0.0.1:port`). Every
//! call goes through one generic core ([`Client::request`]); the typed
//! methods in `api.rs` are thin wrappers naming a route and its types.
//! Failed calls come back as [`ClientError::Api`] carrying the server's
//! JSON error body.
//!
//! ```no_run
//! # async fn demo() -> libgo::client::Result<()> {
//! use libgo::client::{Client, ListQuery};
//! let node = Client::from_url("https://node1:8443", Some("AB:CD:…"))?.with_token("lgo_…");
//! for vm in node.vms(&ListQuery::default()).await?.vms {
//!     println!("{} {}", vm.name, vm.status.as_str());
//! }
//! let accepted = node.vm_action_async("web1", "start", None).await?;
//! let job = node.follow_job(accepted.job.id, |p| eprintln!("{p}%")).await?;
//! # let _ = job; Ok(()) }
//! ```

mod api;
mod endpoint;
mod jobs;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::model::{ErrorBody, ErrorDetail};

pub use api::{ListQuery, Page};
pub use endpoint::Endpoint;
pub use jobs::EventStream;
pub use jobs::Socket;
pub use tls::{fingerprint, normalize_fingerprint, probe_fingerprint};

/// The default endpoint: the admin socket of the local agent.
pub const DEFAULT_SOCKET: &str = "/run/libgo.sock";

/// What can go wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and its error body.
    #[error("{} ({} {})", body.error.message, status, body.error.status)]
    Api { status: u16, body: ErrorBody },
    /// The endpoint could not be reached, or the connection failed.
    #[error("{0}")]
    Transport(String),
    /// The server's certificate is not the one pinned.
    #[error("{0}")]
    Tls(String),
    /// An answer that is not what the route promises.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    /// A URL, fingerprint or argument the client cannot use.
    #[error("{0}")]
    Invalid(String),
    /// A job the client followed ended other than `succeeded`.
    #[error("job {id} {state}: {message}")]
    JobFailed {
        id: uuid::Uuid,
        state: String,
        message: String,
        job: Box<crate::model::Job>,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An API error from a status and a body that may not be the JSON
    /// error body (a proxy, a bare 400 from the HTTP layer).
    pub fn from_answer(status: u16, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(body) => ClientError::Api { status, body },
            Err(_) => {
                let text = String::from_utf8_lossy(body).trim().to_owned();
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error");
                ClientError::Api {
                    status,
                    body: ErrorBody {
                        error: ErrorDetail {
                            code: status,
                            status: reason.to_ascii_uppercase().replace(' ', "_"),
                            message: if text.is_empty() {
                                format!("HTTP {status} {reason}")
                            } else {
                                text
                            },
                            details: Vec::new(),
                            request_id: String::new(),
                        },
                    },
                }
            }
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One HTTP/1 connection's request side.
type Sender = hyper::client::conn::http1::SendRequest<UnsyncBoxBody<Bytes, std::io::Error>>;

/// Idle connections kept per client.
const MAX_IDLE: usize = 16;

/// A byte stream to the server: a Unix socket, TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A client of one agent. Cheap to clone; calls reuse idle kept-alive
/// connections (up to 16), opening new ones when none is free.
#[derive(Clone)]
pub struct Client {
    /// Kept-alive connections, idle (shared by clones).
    pool: Arc<std::sync::Mutex<Vec<Sender>>>,
    endpoint: Endpoint,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint.to_string())
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

impl Client {
    /// A client of `endpoint`. An `https` endpoint needs the fingerprint
    /// of the server's certificate (`AB:CD:…` as the agent logs it, or
    /// `sha256:abcd…`); anything else is refused, there is no fallback
    /// to trusting whatever answers.
    pub fn new(endpoint: Endpoint, fingerprint: Option<&str>) -> Result<Client> {
        let tls = match &endpoint {
            Endpoint::Https { .. } => {
                let fp = fingerprint.ok_or_else(|| {
                    ClientError::Invalid(format!(
                        "no certificate fingerprint pinned for {endpoint}: \
                         add the remote with `libgo remote add` or give the fingerprint"
                    ))
                })?;
                Some(tls::pinned_config(Some(normalize_fingerprint(fp)?)))
            }
            _ => None,
        };
        Ok(Client {
            pool: Arc::default(),
            endpoint,
            token: None,
            tls,
            timeout: Duration::from_secs(30),
        })
    }

    /// A client of `url` (`unix:///path`, `https://host:port`,
    /// `http://127.0.0.1:port`), `fingerprint` pinning an https server.
    pub fn from_url(url: &str, fingerprint: Option<&str>) -> Result<Client> {
        Client::new(url.parse()?, fingerprint)
    }

    /// The local agent's admin socket.
    pub fn local() -> Client {
        Client::new(Endpoint::Unix(DEFAULT_SOCKET.into()), None).expect("a socket needs no pin")
    }

    /// Sends `Authorization: Bearer <token>` with every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// How long to wait for a connection (default 30 s). Calls themselves
    /// are not bounded: a synchronous job call lasts as long as its job.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A connection to the server.
    pub async fn connect(&self) -> Result<Box<dyn Io>> {
        let fut = async {
            match &self.endpoint {
                Endpoint::Unix(path) => tokio::net::UnixStream::connect(path)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Io>)
                    .map_err(|e| {
                        ClientError::Transport(format!("cannot connect to {}: {e}", path.display()))
                    }),
                Endpoint::Http { host, port } => {
                    tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .map(|s| Box::new(s) as Box<dyn Io>)
                        .map_err(|e| {
                            ClientError::Transport(format!("cannot connect to {host}:{port}: {e}"))
                        })
                }
                Endpoint::Https { host, port } => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| {
                            ClientError::Transport(format!("cannot connect to {host}:{port}: {e}"))
                        })?;
                    let config = self.tls.clone().expect("https has a TLS configuration");
                    let stream = tls::handshake(config, host, tcp).await?;
                    Ok(Box::new(stream) as Box<dyn Io>)
                }
            }
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| {
            ClientError::Transport(format!(
                "no connection to {} within {:?}",
                self.endpoint, self.timeout
            ))
        })?
    }

    /// Sends one request and answers the response with its body unread
    /// (for streams: logs, downloads). Error statuses are answers too.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>> {
        let json = body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        let mut all = headers.to_vec();
        if json {
            all.push(("content-type", "application/json"));
        }
        let full = Full::new(Bytes::from(body.unwrap_or_default()))
            .map_err(|never| match never {})
            .boxed_unsync();
        self.send_body(method, path, full, &all).await
    }

    /// Sends one request whose body is streamed from `file` (uploads of
    /// disk images: never held in memory whole).
    pub async fn send_file(
        &self,
        method: Method,
        path: &str,
        file: tokio::fs::File,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>> {
        let len = file
            .metadata()
            .await
            .map_err(|e| ClientError::Invalid(format!("reading the file to send: {e}")))?
            .len()
            .to_string();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map_ok(Frame::data);
        let mut all = headers.to_vec();
        all.push(("content-length", &len));
        self.send_body(method, path, StreamBody::new(stream).boxed_unsync(), &all)
            .await
    }

    /// Sends one request whose body is streamed as it comes (a proxy
    /// passing a caller's body on).
    pub async fn send_stream(
        &self,
        method: Method,
        path: &str,
        body: UnsyncBoxBody<Bytes, std::io::Error>,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>> {
        self.send_body(method, path, body, headers).await
    }

    async fn send_body(
        &self,
        method: Method,
        path: &str,
        body: UnsyncBoxBody<Bytes, std::io::Error>,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.endpoint.host_header())
            .header(
                "user-agent",
                concat!("libgo-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req
            .body(body)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        // A kept-alive connection first; one the server closed meanwhile
        // gives the request back unsent, and it goes on a new one.
        while let Some(mut sender) = self.idle() {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.keep(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(ClientError::Transport(e.into_error().to_string())),
                },
            }
        }
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        self.keep(sender);
        Ok(resp)
    }

    /// Closes the idle kept-alive connections (their peer stopped
    /// answering: the next call opens a fresh one).
    pub fn drop_idle(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// An idle kept-alive connection, if one is still open.
    fn idle(&self) -> Option<Sender> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = pool.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Puts a connection back once its answer has been read whole (a body
    /// dropped unread closes it instead).
    fn keep(&self, mut sender: Sender) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < MAX_IDLE {
                    pool.push(sender);
                }
            }
        });
    }

    /// The body of an answer, or `Err(Api)` for an error status.
    pub async fn read(resp: Response<Incoming>) -> Result<(StatusCode, Bytes)> {
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        if status.is_client_error() || status.is_server_error() {
            return Err(ClientError::from_answer(status.as_u16(), &bytes));
        }
        Ok((status, bytes))
    }

    /// One call: status and body bytes; an error status is `Err(Api)`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes)> {
        Client::read(self.send(method, path, body, headers).await?).await
    }

    /// The core of every typed method: `method path` with an optional JSON
    /// body, the answer decoded as `T` (an empty answer decodes as `null`,
    /// so `()` and `Option<_>` take a `204`).
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T> {
        self.request_with(method, path, body, &[]).await
    }

    /// [`Client::request`] with extra headers (`prefer`, `idempotency-key`).
    pub async fn request_with_headers<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        headers: &[(&str, &str)],
    ) -> Result<T> {
        self.request_with(method, path, body, headers).await
    }

    async fn request_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        headers: &[(&str, &str)],
    ) -> Result<T> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let (_, bytes) = self.call(method, path, body, headers).await?;
        decode(&bytes)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let bytes: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(bytes);
        let clipped: String = text.chars().take(200).collect();
        ClientError::Decode(format!("{e}: {clipped}"))
    })
}

/// One path segment, percent-encoded (an image `libgo/app:1` is
/// `libgo%2Fapp:1`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_is_decoded_and_a_bare_one_is_wrapped() {
        let body = br#"{"error": {"code": 409, "status": "RESOURCE_CONFLICT",
            "message": "VM web is busy", "details": [{"reason": "OPERATION_IN_PROGRESS"}],
            "request_id": "req-1"}}"#;
        match ClientError::from_answer(409, body) {
            ClientError::Api { status, body } => {
                assert_eq!(status, 409);
                assert_eq!(body.error.status, "RESOURCE_CONFLICT");
                assert_eq!(body.error.message, "VM web is busy");
                assert_eq!(body.error.details[0]["reason"], "OPERATION_IN_PROGRESS");
                assert_eq!(body.error.request_id, "req-1");
            }
            other => panic!("{other:?}"),
        }
        let e = ClientError::from_answer(431, b"");
        assert_eq!(e.status(), Some(431));
        assert!(e.to_string().contains("431"), "{e}");
        let e = ClientError::from_answer(502, b"bad gateway\n");
        assert!(e.to_string().starts_with("bad gateway"), "{e}");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("libgo/app:1"), "libgo%2Fapp:1");
        assert_eq!(segment("web-1"), "web-1");
        assert_eq!(segment("a b?c#"), "a%20b%3Fc%23");
    }

    #[test]
    fn an_empty_answer_decodes_as_null() {
        let unit: () = decode(b"").unwrap();
        assert_eq!(unit, ());
        assert!(decode::<crate::model::Vm>(b"{}").is_err());
    }
}
