//! Aggregators for tests: node agents reachable over TLS with a token, and
//! a `libgo-aggregator` in front of them on a private socket.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{raw_request, Daemon};

/// How an aggregator reaches one node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub url: String,
    pub token: String,
    pub fingerprint: String,
}

impl NodeInfo {
    /// The node's `[[node]]` entry of an aggregator's file.
    pub fn toml(&self) -> String {
        format!(
            "[[node]]\nname = \"{}\"\nurl = \"{}\"\ntoken = \"{}\"\nfingerprint = \"{}\"\n",
            self.name, self.url, self.token, self.fingerprint
        )
    }
}

impl From<&super::netns::NetAgent> for NodeInfo {
    fn from(n: &super::netns::NetAgent) -> NodeInfo {
        NodeInfo {
            name: n.name.clone(),
            url: n.url.clone(),
            token: n.token.clone(),
            fingerprint: n.fingerprint.clone(),
        }
    }
}

/// An admin token made on `d` (over its socket) and the fingerprint of its
/// TLS listener at `host:port`.
pub async fn node_info(d: &Daemon, host: &str, port: u16) -> NodeInfo {
    let (code, t) = d
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "aggregator", "role": "admin", "unlimited": true})),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let fingerprint = libgo::client::probe_fingerprint(host, port)
        .await
        .expect("the node's certificate");
    NodeInfo {
        name: d.node.clone(),
        url: format!("https://{host}:{port}"),
        token: t["secret"].as_str().unwrap().to_owned(),
        fingerprint,
    }
}

/// A running `libgo-aggregator`.
pub struct Aggregator {
    pub root: tempfile::TempDir,
    pub socket: PathBuf,
    pub name: String,
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Aggregator {
    /// An aggregator named `name` over `nodes`, polling every `poll`, with
    /// `extra` flags (`--etcd URL`, `--listen ADDR`).
    pub async fn start(name: &str, nodes: &[NodeInfo], poll: &str, extra: &[&str]) -> Aggregator {
        let root = tempfile::Builder::new()
            .prefix("lga")
            .tempdir_in("/tmp")
            .unwrap();
        let mut file = format!("name = \"{name}\"\npoll_interval = \"{poll}\"\n");
        for n in nodes {
            file.push_str(&n.toml());
        }
        std::fs::write(root.path().join("aggregator.toml"), file).unwrap();
        let mut a = Aggregator {
            socket: root.path().join("agg.sock"),
            root,
            name: name.to_owned(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        a.spawn().await;
        a
    }

    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("aggregator.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_libgo-aggregator"))
            .arg("--config")
            .arg(self.root.path().join("aggregator.toml"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.root.path().join("state"))
            .args(&self.args)
            .env("RUST_LOG", "info,libgo=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn libgo-aggregator");
        self.child = Some(child);
        let log = self.root.path().join("aggregator.log");
        super::wait_healthy(&self.socket, &mut self.child, "libgo-aggregator", &log).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("aggregator.log")).unwrap_or_default()
    }

    pub fn kill(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
        raw_request(&self.socket, method, path, body, headers).await
    }

    pub async fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.req_with(method, path, body, &[]).await
    }

    pub async fn req_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (code, _, bytes) = self
            .raw(method, path, body.map(|b| b.to_string()), headers)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()));
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&bytes))
            })
        };
        (code, v)
    }

    /// Waits until `ok` holds for `GET path` (polling every 50 ms).
    pub async fn wait_for(
        &self,
        path: &str,
        within: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (code, v) = self.req("GET", path, None).await;
            if code == 200 && ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never passed: {v}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.kill(nix::sys::signal::Signal::SIGKILL);
    }
}
