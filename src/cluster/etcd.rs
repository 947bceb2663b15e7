//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/*`, `/v3/watch`): JSON bodies whose keys and
//! values are base64 and whose 64-bit integers are strings. No gRPC, no
//! generated code; everything HTTP stays in this file and every failure is
//! an [`EtcdError`].
//!
//! Each call has a deadline (5 s unless [`Etcd::with_timeout`] says
//! otherwise); connections are pooled and kept alive with TCP keep-alives,
//! so a watch on a peer that vanished without a reset ends too.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// How long one call may take unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The URL is not `http://HOST:PORT`.
    #[error("not an etcd URL {0:?}: expected http://HOST:PORT")]
    InvalidUrl(String),
    /// A request this client will not send (a TTL below 1 s, an empty key).
    #[error("invalid etcd request: {0}")]
    Invalid(String),
    /// No answer: connection refused or lost, deadline passed, no leader.
    #[error("etcd at {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// The lease does not exist (expired or revoked).
    #[error("etcd lease {0:x} is gone")]
    LeaseGone(i64),
    /// A watch asked for history etcd has compacted away: list again and
    /// watch from the listing's revision.
    #[error("etcd compacted its history up to revision {compact_revision}")]
    Compacted { compact_revision: i64 },
    /// etcd refused the request (its gRPC status code and message).
    #[error("etcd refused the request: {message} (code {code})")]
    Rejected { code: i64, message: String },
    /// An answer that is not what the gateway sends.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
}

pub type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// One key and its value with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the key's creation (0 for a key that does not exist).
    pub create_revision: i64,
    /// Revision of its last change.
    pub mod_revision: i64,
    /// Changes since its creation (1 after the first put).
    pub version: i64,
    /// The lease the key is bound to.
    pub lease: Option<i64>,
}

/// How a [`Compare`] relates the stored field to its operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// The field of a key a [`Compare`] looks at, with its operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmpTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One condition of a transaction. A key that does not exist has version,
/// create and mod revisions 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CmpOp,
    pub target: CmpTarget,
}

impl Compare {
    pub fn new(key: &str, op: CmpOp, target: CmpTarget) -> Compare {
        Compare {
            key: key.to_owned(),
            op,
            target,
        }
    }
    /// The key does not exist (create-if-absent).
    pub fn absent(key: &str) -> Compare {
        Compare::new(key, CmpOp::Equal, CmpTarget::CreateRevision(0))
    }
    /// The key was last changed at `rev` (compare-and-swap).
    pub fn mod_revision(key: &str, rev: i64) -> Compare {
        Compare::new(key, CmpOp::Equal, CmpTarget::ModRevision(rev))
    }
    /// The key holds exactly `value`.
    pub fn value(key: &str, value: &[u8]) -> Compare {
        Compare::new(key, CmpOp::Equal, CmpTarget::Value(value.to_vec()))
    }

    fn to_json(&self) -> Value {
        let result = match self.op {
            CmpOp::Equal => "EQUAL",
            CmpOp::NotEqual => "NOT_EQUAL",
            CmpOp::Greater => "GREATER",
            CmpOp::Less => "LESS",
        };
        let mut v = json!({ "key": b64(&self.key), "result": result });
        let (target, field, operand) = match &self.target {
            CmpTarget::Version(n) => ("VERSION", "version", json!(n.to_string())),
            CmpTarget::CreateRevision(n) => ("CREATE", "create_revision", json!(n.to_string())),
            CmpTarget::ModRevision(n) => ("MOD", "mod_revision", json!(n.to_string())),
            CmpTarget::Value(b) => ("VALUE", "value", json!(B64.encode(b))),
            CmpTarget::Lease(n) => ("LEASE", "lease", json!(n.to_string())),
        };
        v["target"] = json!(target);
        v[field] = operand;
        v
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    Get(String),
    Delete(String),
}

impl TxnOp {
    pub fn put(key: &str, value: impl Into<Vec<u8>>, lease: Option<i64>) -> TxnOp {
        TxnOp::Put {
            key: key.to_owned(),
            value: value.into(),
            lease,
        }
    }
    pub fn get(key: &str) -> TxnOp {
        TxnOp::Get(key.to_owned())
    }
    pub fn delete(key: &str) -> TxnOp {
        TxnOp::Delete(key.to_owned())
    }

    fn to_json(&self) -> Value {
        match self {
            TxnOp::Put { key, value, lease } => {
                json!({ "request_put": put_body(key, value, *lease) })
            }
            TxnOp::Get(key) => json!({ "request_range": { "key": b64(key) } }),
            TxnOp::Delete(key) => json!({ "request_delete_range": { "key": b64(key) } }),
        }
    }
}

/// What one [`TxnOp`] answered, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResponse {
    Put,
    Get(Option<Kv>),
    Delete { deleted: i64 },
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Every compare held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    pub responses: Vec<TxnResponse>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv` has the key and its
/// `mod_revision` (the deletion's revision) only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: Kv,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// A client of one etcd endpoint. Cheap to clone (the connection pool is
/// shared).
#[derive(Clone)]
pub struct Etcd {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("url", &self.base).finish()
    }
}

/// Checks an etcd URL: `http://HOST:PORT` (a trailing `/` allowed), and
/// answers it without the slash.
pub fn parse_url(url: &str) -> Result<String> {
    let bad = || EtcdError::InvalidUrl(url.to_owned());
    let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") {
        return Err(bad());
    }
    let auth = uri.authority().ok_or_else(bad)?;
    if auth.port_u16().is_none() || auth.host().is_empty() || auth.as_str().contains('@') {
        return Err(bad());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad());
    }
    Ok(format!("http://{auth}"))
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd's "\0" range end.
    vec![0]
}

fn put_body(key: &str, value: &[u8], lease: Option<i64>) -> Value {
    let mut v = json!({ "key": b64(key), "value": B64.encode(value) });
    if let Some(l) = lease {
        v["lease"] = json!(l.to_string());
    }
    v
}

/// etcd's 64-bit integers come as JSON strings (absent when zero).
fn int<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        S(String),
        N(i64),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    version: i64,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
}

impl RawKv {
    fn decode(self) -> Result<Kv> {
        let key = B64
            .decode(&self.key)
            .map_err(|e| EtcdError::Protocol(format!("key is not base64: {e}")))?;
        let key = String::from_utf8(key)
            .map_err(|_| EtcdError::Protocol("a key that is not UTF-8".into()))?;
        let value = B64
            .decode(&self.value)
            .map_err(|e| EtcdError::Protocol(format!("value of {key} is not base64: {e}")))?;
        Ok(Kv {
            key,
            value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: (self.lease != 0).then_some(self.lease),
        })
    }
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Debug, Deserialize)]
struct PutResponse {
    #[serde(default)]
    header: Header,
}

#[derive(Debug, Deserialize)]
struct DeleteResponse {
    #[serde(default, deserialize_with = "int")]
    deleted: i64,
}

#[derive(Debug, Deserialize)]
struct TxnRaw {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnRawResponse>,
}

#[derive(Debug, Deserialize)]
struct TxnRawResponse {
    response_range: Option<RangeResponse>,
    response_put: Option<Value>,
    response_delete_range: Option<DeleteResponse>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct LeaseGrant {
    #[serde(default, deserialize_with = "int")]
    id: i64,
    #[serde(default, deserialize_with = "int")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

/// A streamed answer: `{"result": ...}` or `{"error": {...}}`.
#[derive(Debug, Deserialize)]
struct Streamed<T> {
    result: Option<T>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct KeepAlive {
    #[serde(default, deserialize_with = "int")]
    ttl: i64,
}

#[derive(Debug, Deserialize)]
struct WatchResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(default, rename = "type")]
    kind: String,
    kv: RawKv,
}

/// An error answer of the gateway: `{"error", "message", "code"}` (or, in
/// a stream, `{"grpc_code", "http_code", "message"}`).
fn rejected(v: &Value) -> EtcdError {
    let code = v
        .get("code")
        .or_else(|| v.get("grpc_code"))
        .and_then(Value::as_i64)
        .unwrap_or(2);
    let message = v
        .get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    EtcdError::Rejected { code, message }
}

impl Etcd {
    /// A client of the etcd at `url` (`http://HOST:PORT`). Connects lazily.
    pub fn new(url: &str) -> Result<Etcd> {
        let base = parse_url(url)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(DEFAULT_TIMEOUT));
        connector.set_keepalive(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Etcd {
            base,
            client,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The deadline of each call (and of establishing a watch).
    pub fn with_timeout(mut self, timeout: Duration) -> Etcd {
        self.timeout = timeout;
        self
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> EtcdError {
        EtcdError::Unavailable {
            url: self.base.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends `body` to `path` and answers the response with its body unread.
    async fn send(&self, path: &str, body: &Value) -> Result<hyper::Response<Incoming>> {
        let req = hyper::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EtcdError::Invalid(e.to_string()))?;
        self.client
            .request(req)
            .await
            .map_err(|e| self.unavailable(error_chain(&e)))
    }

    /// One call: the error statuses mapped, the body decoded as `T`.
    async fn call<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        let fut = async {
            let resp = self.send(path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unavailable(e))?
                .to_bytes();
            self.decode_answer(status, &bytes)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| self.unavailable(format!("no answer within {:?}", self.timeout)))?
    }

    fn decode_answer<T: DeserializeOwned>(&self, status: StatusCode, bytes: &[u8]) -> Result<T> {
        if !status.is_success() {
            let err = match serde_json::from_slice::<Value>(bytes) {
                Ok(v) => rejected(&v),
                Err(_) => EtcdError::Protocol(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )),
            };
            return Err(match err {
                // UNAVAILABLE, DEADLINE_EXCEEDED: no leader, an election.
                EtcdError::Rejected {
                    code: 14 | 4,
                    message,
                } => self.unavailable(message),
                _ if status == StatusCode::SERVICE_UNAVAILABLE => self.unavailable(status),
                e => e,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| {
            EtcdError::Protocol(format!(
                "{e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }

    /// The key, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let r: RangeResponse = self
            .call("/v3/kv/range", &json!({ "key": b64(key) }))
            .await?;
        r.kvs.into_iter().next().map(RawKv::decode).transpose()
    }

    /// Every key starting with `prefix` (in key order) and the store's
    /// revision they were read at: watch from the revision after it to
    /// miss nothing.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64)> {
        let r: RangeResponse = self
            .call(
                "/v3/kv/range",
                &json!({ "key": b64(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
            )
            .await?;
        let kvs = r
            .kvs
            .into_iter()
            .map(RawKv::decode)
            .collect::<Result<_>>()?;
        Ok((kvs, r.header.revision))
    }

    /// Sets a key, bound to `lease` if given; answers the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64> {
        let r: Result<PutResponse> = self.call("/v3/kv/put", &put_body(key, value, lease)).await;
        match (r, lease) {
            (Err(e), Some(l)) if lease_not_found(&e) => Err(EtcdError::LeaseGone(l)),
            (r, _) => Ok(r?.header.revision),
        }
    }

    /// Removes a key; answers whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let r: DeleteResponse = self
            .call("/v3/kv/deleterange", &json!({ "key": b64(key) }))
            .await?;
        Ok(r.deleted > 0)
    }

    /// Runs `success` if every compare holds, `failure` otherwise, at once.
    pub async fn txn(
        &self,
        compares: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> Result<TxnResult> {
        let body = json!({
            "compare": compares.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": success.iter().map(TxnOp::to_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(TxnOp::to_json).collect::<Vec<_>>(),
        });
        let raw: TxnRaw = match self.call("/v3/kv/txn", &body).await {
            Err(e) if lease_not_found(&e) => {
                let lease = success
                    .iter()
                    .chain(failure)
                    .find_map(|op| match op {
                        TxnOp::Put { lease, .. } => *lease,
                        _ => None,
                    })
                    .unwrap_or(0);
                return Err(EtcdError::LeaseGone(lease));
            }
            r => r?,
        };
        let mut responses = Vec::with_capacity(raw.responses.len());
        for r in raw.responses {
            responses.push(if let Some(range) = r.response_range {
                TxnResponse::Get(
                    range
                        .kvs
                        .into_iter()
                        .next()
                        .map(RawKv::decode)
                        .transpose()?,
                )
            } else if let Some(d) = r.response_delete_range {
                TxnResponse::Delete { deleted: d.deleted }
            } else if r.response_put.is_some() {
                TxnResponse::Put
            } else {
                return Err(EtcdError::Protocol(
                    "a txn response of no known kind".into(),
                ));
            });
        }
        Ok(TxnResult {
            succeeded: raw.succeeded,
            revision: raw.header.revision,
            responses,
        })
    }

    /// A new lease of `ttl_secs` seconds; answers its id.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<i64> {
        if ttl_secs < 1 {
            return Err(EtcdError::Invalid(format!(
                "a lease lives at least 1 s, not {ttl_secs}"
            )));
        }
        let g: LeaseGrant = self
            .call("/v3/lease/grant", &json!({ "TTL": ttl_secs.to_string() }))
            .await?;
        if !g.error.is_empty() || g.id == 0 || g.ttl == 0 {
            return Err(EtcdError::Protocol(format!(
                "lease grant refused: {:?}",
                g.error
            )));
        }
        Ok(g.id)
    }

    /// Renews a lease once; answers its TTL again, or `LeaseGone`.
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64> {
        // The gateway streams one answer per request it reads: one request
        // in, one answer out, then the stream ends.
        let s: Streamed<KeepAlive> = self
            .call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await?;
        if let Some(e) = s.error {
            return Err(rejected(&e));
        }
        match s.result {
            Some(k) if k.ttl > 0 => Ok(k.ttl),
            Some(_) => Err(EtcdError::LeaseGone(id)),
            None => Err(EtcdError::Protocol("a keep-alive without result".into())),
        }
    }

    /// Revokes a lease, deleting every key bound to it. A lease already
    /// gone is no error.
    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        match self
            .call::<Value>("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await
        {
            Err(e) if lease_not_found(&e) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Keeps lease `id` (granted with `ttl_secs`) alive from a background
    /// task, renewing it every third of its TTL; see [`Lease`].
    pub fn keep_alive(&self, id: i64, ttl_secs: i64) -> Lease {
        let (tx, rx) = watch::channel(true);
        let etcd = self.clone();
        let task = tokio::spawn(heartbeat(etcd, id, ttl_secs, tx));
        Lease {
            id,
            ttl_secs,
            alive: rx,
            task,
            etcd: self.clone(),
        }
    }

    /// Grants a lease of `ttl_secs` and keeps it alive.
    pub async fn lease(&self, ttl_secs: i64) -> Result<Lease> {
        let id = self.lease_grant(ttl_secs).await?;
        Ok(self.keep_alive(id, ttl_secs))
    }

    /// Watches every key starting with `prefix`, from `start_revision`
    /// (0: from now on). Answers once etcd has created the watch, so any
    /// change made after this returns is seen. When the stream breaks,
    /// [`Watch::next`] answers an error once and then `None`; watch again
    /// from [`Watch::resume_revision`] to miss nothing and see nothing twice.
    pub async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<Watch> {
        let mut req = json!({
            "key": b64(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        });
        if start_revision > 0 {
            req["start_revision"] = json!(start_revision.to_string());
        }
        let body = json!({ "create_request": req });
        let deadline = tokio::time::Instant::now() + self.timeout;
        let established = async {
            let resp = self.send("/v3/watch", &body).await?;
            if !resp.status().is_success() {
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| self.unavailable(e))?
                    .to_bytes();
                return Err(self
                    .decode_answer::<Value>(status, &bytes)
                    .err()
                    .unwrap_or_else(|| EtcdError::Protocol(format!("HTTP {status}"))));
            }
            let mut stream = JsonStream::new(resp.into_body());
            let first = stream
                .next::<Streamed<WatchResponse>>()
                .await
                .map_err(|e| self.map_stream_error(e))?
                .ok_or_else(|| self.unavailable("the watch stream ended at once"))?;
            let created = check_watch(&self.base, first)?;
            if !created.created {
                return Err(EtcdError::Protocol(
                    "the first watch answer is not its creation".into(),
                ));
            }
            Ok((stream, created.header.revision))
        };
        let (stream, revision) = tokio::time::timeout_at(deadline, established)
            .await
            .map_err(|_| self.unavailable(format!("no watch within {:?}", self.timeout)))??;
        let resume = if start_revision > 0 {
            start_revision
        } else {
            revision + 1
        };
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(pump(self.clone(), stream, tx));
        Ok(Watch {
            rx,
            resume,
            task,
            done: false,
        })
    }

    fn map_stream_error(&self, e: StreamError) -> EtcdError {
        match e {
            StreamError::Transport(t) => self.unavailable(t),
            StreamError::Json(j) => EtcdError::Protocol(j),
        }
    }
}

/// The message of an error and of its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn lease_not_found(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Rejected { message, .. } if message.contains("lease not found"))
}

/// A watch answer that is an error or a cancellation, as an error.
fn check_watch(url: &str, s: Streamed<WatchResponse>) -> Result<WatchResponse> {
    if let Some(e) = s.error {
        return Err(match rejected(&e) {
            EtcdError::Rejected {
                code: 14 | 4,
                message,
            } => EtcdError::Unavailable {
                url: url.to_owned(),
                reason: message,
            },
            e => e,
        });
    }
    let r = s
        .result
        .ok_or_else(|| EtcdError::Protocol("a watch answer without result".into()))?;
    if r.compact_revision > 0 {
        return Err(EtcdError::Compacted {
            compact_revision: r.compact_revision,
        });
    }
    if r.canceled {
        return Err(EtcdError::Rejected {
            code: 1,
            message: format!("watch canceled: {}", r.cancel_reason),
        });
    }
    Ok(r)
}

/// Feeds a watch's events to its receiver until the stream ends, the
/// receiver is dropped, or an error (sent once).
async fn pump(etcd: Etcd, mut stream: JsonStream, tx: mpsc::Sender<Result<WatchEvent>>) {
    loop {
        let msg = match stream.next::<Streamed<WatchResponse>>().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let _ = tx
                    .send(Err(etcd.unavailable("the watch stream ended")))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(etcd.map_stream_error(e))).await;
                return;
            }
        };
        let r = match check_watch(&etcd.base, msg) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        for ev in r.events {
            let kind = match ev.kind.as_str() {
                "" | "PUT" => EventKind::Put,
                "DELETE" => EventKind::Delete,
                other => {
                    let _ = tx
                        .send(Err(EtcdError::Protocol(format!("watch event {other:?}"))))
                        .await;
                    return;
                }
            };
            let item = ev.kv.decode().map(|kv| WatchEvent { kind, kv });
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    }
}

/// Changes under a prefix, in revision order. Dropping it ends the watch.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchEvent>>,
    resume: i64,
    task: tokio::task::JoinHandle<()>,
    done: bool,
}

impl Watch {
    /// The next change; an error ends the watch (the next call is `None`).
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        if self.done {
            return None;
        }
        let item = self.rx.recv().await;
        match &item {
            Some(Ok(ev)) => self.resume = self.resume.max(ev.revision() + 1),
            Some(Err(_)) | None => self.done = true,
        }
        item
    }

    /// The revision to watch from again to continue after the last change
    /// [`Watch::next`] answered.
    pub fn resume_revision(&self) -> i64 {
        self.resume
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lease kept alive by a background task. Dropping the handle stops the
/// heartbeat without revoking (the lease then expires after its TTL);
/// [`Lease::revoke`] ends it at once.
#[derive(Debug)]
pub struct Lease {
    id: i64,
    ttl_secs: i64,
    alive: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    etcd: Etcd,
}

impl Lease {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// False once the lease is known gone: etcd said so, or no renewal got
    /// through for a whole TTL (then etcd has expired it, or will before
    /// this side could tell otherwise).
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// Resolves when the lease is lost (at once if it already is).
    pub async fn lost(&self) {
        let mut rx = self.alive.clone();
        // An error means the heartbeat task is gone: the lease is no longer
        // kept either way.
        let _ = rx.wait_for(|alive| !alive).await;
    }

    /// Stops the heartbeat and revokes the lease (its keys go at once).
    pub async fn revoke(self) -> Result<()> {
        self.task.abort();
        self.etcd.lease_revoke(self.id).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews lease `id` every third of its TTL. Gives up, saying the lease
/// is lost, when etcd answers that it is gone or when no renewal has
/// succeeded for a whole TTL since the last good one was sent.
async fn heartbeat(etcd: Etcd, id: i64, ttl_secs: i64, alive: watch::Sender<bool>) {
    let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
    let period = (ttl / 3).max(Duration::from_millis(300));
    let mut expires = Instant::now() + ttl;
    let mut wait = period;
    loop {
        tokio::time::sleep(wait).await;
        let sent = Instant::now();
        if sent >= expires {
            break;
        }
        let r = tokio::time::timeout(expires - sent, etcd.lease_keepalive(id)).await;
        match r {
            Ok(Ok(t)) => {
                expires = sent + Duration::from_secs(t.max(1) as u64);
                wait = period;
            }
            Ok(Err(EtcdError::LeaseGone(_))) => break,
            Ok(Err(e)) => {
                tracing::warn!(lease = format!("{id:x}"), error = %e, "lease renewal failed");
                wait = period.min(Duration::from_millis(500));
            }
            Err(_) => break,
        }
    }
    tracing::warn!(lease = format!("{id:x}"), "lease lost");
    let _ = alive.send(false);
}

#[derive(Debug)]
enum StreamError {
    Transport(String),
    Json(String),
}

/// Successive JSON values out of a streamed body.
struct JsonStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl JsonStream {
    fn new(body: Incoming) -> JsonStream {
        JsonStream {
            body,
            buf: Vec::new(),
        }
    }

    async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        loop {
            if let Some(v) = take_json(&mut self.buf)? {
                return Ok(Some(v));
            }
            match self.body.frame().await {
                None => {
                    return if self.buf.iter().all(u8::is_ascii_whitespace) {
                        Ok(None)
                    } else {
                        Err(StreamError::Json(
                            "the stream ended within a message".into(),
                        ))
                    };
                }
                Some(Err(e)) => return Err(StreamError::Transport(error_chain(&e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// The first complete JSON value in `buf`, removed from it; `None` when
/// `buf` holds only part of one.
fn take_json<T: DeserializeOwned>(buf: &mut Vec<u8>) -> Result<Option<T>, StreamError> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<T>();
    match it.next() {
        None => {
            buf.clear();
            Ok(None)
        }
        Some(Ok(v)) => {
            let used = it.byte_offset();
            buf.drain(..used);
            Ok(Some(v))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(StreamError::Json(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_host_port_only() {
        assert_eq!(
            parse_url("http://127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_url("http://etcd.lan:2379/").unwrap(),
            "http://etcd.lan:2379"
        );
        assert_eq!(parse_url("http://[::1]:2379").unwrap(), "http://[::1]:2379");
        for bad in [
            "",
            "127.0.0.1:2379",
            "https://h:2379",
            "http://h",
            "http://h:2379/v3",
            "http://u@h:2379",
            "http://h:2379?x=1",
            "unix:///run/etcd.sock",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end("/libgo/nodes/"), b"/libgo/nodes0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn compares_and_ops_have_the_gateways_shape() {
        let c = Compare::absent("k").to_json();
        assert_eq!(
            c,
            json!({"key": "aw==", "result": "EQUAL", "target": "CREATE", "create_revision": "0"})
        );
        let c = Compare::mod_revision("k", 42).to_json();
        assert_eq!(c["target"], "MOD");
        assert_eq!(c["mod_revision"], "42");
        let c = Compare::value("k", b"v").to_json();
        assert_eq!(
            (c["target"].as_str(), c["value"].as_str()),
            (Some("VALUE"), Some("dg=="))
        );
        let op = TxnOp::put("k", b"v".to_vec(), Some(7)).to_json();
        assert_eq!(
            op,
            json!({"request_put": {"key": "aw==", "value": "dg==", "lease": "7"}})
        );
        assert_eq!(
            TxnOp::delete("k").to_json(),
            json!({"request_delete_range": {"key": "aw=="}})
        );
    }

    #[test]
    fn answers_decode_with_string_integers_and_absent_zeros() {
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"revision":"9"},"kvs":[{"key":"Zm9v","create_revision":"2",
            "mod_revision":"5","version":"3","value":"YmFy","lease":"12"}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!(r.header.revision, 9);
        let kv = r.kvs.into_iter().next().unwrap().decode().unwrap();
        assert_eq!(
            kv,
            Kv {
                key: "foo".into(),
                value: b"bar".to_vec(),
                create_revision: 2,
                mod_revision: 5,
                version: 3,
                lease: Some(12),
            }
        );
        let t: TxnRaw = serde_json::from_str(
            r#"{"header":{"revision":"3"},"responses":[{"response_range":{"header":{}}}]}"#,
        )
        .unwrap();
        assert!(!t.succeeded);
        let ka: Streamed<KeepAlive> =
            serde_json::from_str(r#"{"result":{"header":{},"ID":"5"}}"#).unwrap();
        assert_eq!(ka.result.unwrap().ttl, 0);
    }

    #[test]
    fn json_values_are_taken_one_by_one_from_a_stream() {
        let mut buf = b"{\"a\":1}\n{\"a\":2}\n{\"a\"".to_vec();
        let v: Value = take_json(&mut buf).unwrap().unwrap();
        assert_eq!(v["a"], 1);
        let v: Value = take_json(&mut buf).unwrap().unwrap();
        assert_eq!(v["a"], 2);
        assert!(take_json::<Value>(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b":3}\n");
        let v: Value = take_json(&mut buf).unwrap().unwrap();
        assert_eq!(v["a"], 3);
        assert!(take_json::<Value>(&mut buf).unwrap().is_none());
        let mut bad = b"}{".to_vec();
        assert!(take_json::<Value>(&mut bad).is_err());
    }

    #[test]
    fn watch_cancellations_are_errors() {
        let s: Streamed<WatchResponse> = serde_json::from_str(
            r#"{"result":{"header":{"revision":"9"},"canceled":true,"compact_revision":"5"}}"#,
        )
        .unwrap();
        assert!(matches!(
            check_watch("http://h:1", s),
            Err(EtcdError::Compacted {
                compact_revision: 5
            })
        ));
        let s: Streamed<WatchResponse> = serde_json::from_str(
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"no leader"}}"#,
        )
        .unwrap();
        assert!(matches!(
            check_watch("http://h:1", s),
            Err(EtcdError::Unavailable { .. })
        ));
    }
}
