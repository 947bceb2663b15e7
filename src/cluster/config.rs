//! The aggregator's configuration: its TOML file, flags over it, and the
//! embedded defaults (one aggregator, a static node list, no etcd).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// What can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One node of the static list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    /// `https://host:port` (or `unix:///path`, `http://127.0.0.1:port`).
    pub url: String,
    /// An API token made on that node.
    #[serde(default)]
    pub token: Option<String>,
    /// Pins the node's certificate (`sha256:…` or `AB:CD:…`); required for https.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// The configuration file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    poll_interval: Option<String>,
    poll_timeout: Option<String>,
    socket: Option<PathBuf>,
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    etcd: Option<String>,
    etcd_prefix: Option<String>,
    #[serde(default)]
    node: Vec<NodeEntry>,
}

/// The aggregator's settings.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// This aggregator's name (its id in etcd).
    pub name: String,
    /// How often each node is polled.
    pub poll_interval: Duration,
    /// How long one poll of one node may take (default: three quarters of
    /// the interval, so a node that stops answering is marked before two
    /// intervals have passed since its last answer).
    pub poll_timeout: Duration,
    pub socket: PathBuf,
    /// `ADDR:PORT` of the TLS listener; empty: none.
    pub listen: String,
    /// Users, tokens, sessions and the audit trail of the aggregator.
    pub state_dir: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `http://host:port` of etcd; empty: a static node list only.
    pub etcd: String,
    pub etcd_prefix: String,
    pub nodes: Vec<NodeEntry>,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            name: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "aggregator".into()),
            poll_interval: Duration::from_secs(2),
            poll_timeout: Duration::from_millis(1500),
            socket: "/run/libgo-aggregator.sock".into(),
            listen: String::new(),
            state_dir: "/var/lib/libgo-aggregator".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            etcd: String::new(),
            etcd_prefix: "/libgo/".into(),
            nodes: Vec::new(),
        }
    }
}

/// A DNS label: what node and aggregator names are.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `2s`, `500ms`, `1m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let bad = || ConfigError::Invalid(format!("{s:?}: expected a duration such as 2s or 500ms"));
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 3600.0 {
        return Err(ConfigError::Invalid(format!(
            "{s:?}: a duration must be above 0 and at most 1h"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl AggregatorConfig {
    /// The defaults with `path`'s keys over them.
    pub fn load(path: Option<&Path>) -> Result<AggregatorConfig, ConfigError> {
        let mut c = AggregatorConfig::default();
        let Some(path) = path else {
            return Ok(c);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        c.apply_toml(&text)?;
        Ok(c)
    }

    fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(v) = f.name {
            self.name = v;
        }
        if let Some(v) = f.poll_interval {
            self.poll_interval = parse_duration(&v)?;
            self.poll_timeout = self.poll_interval * 3 / 4;
        }
        if let Some(v) = f.poll_timeout {
            self.poll_timeout = parse_duration(&v)?;
        }
        if let Some(v) = f.socket {
            self.socket = v;
        }
        if let Some(v) = f.listen {
            self.listen = v;
        }
        if let Some(v) = f.state_dir {
            self.state_dir = v;
        }
        if let Some(v) = f.tls_cert {
            self.tls_cert = v;
        }
        if let Some(v) = f.tls_key {
            self.tls_key = v;
        }
        if let Some(v) = f.etcd {
            self.etcd = v;
        }
        if let Some(v) = f.etcd_prefix {
            self.etcd_prefix = v;
        }
        self.nodes = f.node;
        Ok(())
    }

    /// Checks what the aggregator cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_label(&self.name) {
            return Err(ConfigError::Invalid(format!(
                "name {:?}: expected a DNS label",
                self.name
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if !is_label(&n.name) {
                return Err(ConfigError::Invalid(format!(
                    "node name {:?}: expected a DNS label",
                    n.name
                )));
            }
            if !seen.insert(n.name.as_str()) {
                return Err(ConfigError::Invalid(format!("node {:?} twice", n.name)));
            }
            crate::client::Client::from_url(&n.url, n.fingerprint.as_deref())
                .map_err(|e| ConfigError::Invalid(format!("node {}: {e}", n.name)))?;
        }
        if self.nodes.is_empty() && self.etcd.is_empty() {
            return Err(ConfigError::Invalid(
                "no nodes: list them as [[node]] entries or give etcd to discover them".into(),
            ));
        }
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "listen {:?}: expected ADDR:PORT",
                self.listen
            )));
        }
        if !self.etcd.is_empty() && !self.etcd.starts_with("http://") {
            return Err(ConfigError::Invalid(format!(
                "etcd {:?}: expected http://host:port",
                self.etcd
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        for bad in ["", "0s", "-1s", "2h", "abc", "2x", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_issue_file_parses() {
        let mut c = AggregatorConfig::default();
        c.apply_toml(
            r#"
poll_interval = "2s"
[[node]]
name = "n1"
url = "https://node1.example.net:8443"
token = "abc"
fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
"#,
        )
        .unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].token.as_deref(), Some("abc"));
        c.validate().unwrap();
    }

    #[test]
    fn bad_files_are_refused() {
        let mut c = AggregatorConfig::default();
        assert!(c.apply_toml("nodes = 1").is_err());
        let mut c = AggregatorConfig::default();
        c.apply_toml("[[node]]\nname = \"n1\"\nurl = \"https://h:1\"\n")
            .unwrap();
        assert!(c.validate().is_err(), "https without a fingerprint");
        let mut c = AggregatorConfig::default();
        c.apply_toml(
            "[[node]]\nname = \"n1\"\nurl = \"unix:///a\"\n[[node]]\nname = \"n1\"\nurl = \"unix:///b\"\n",
        )
        .unwrap();
        assert!(c.validate().is_err(), "twice");
        assert!(AggregatorConfig::default().validate().is_err(), "no nodes");
    }
}
