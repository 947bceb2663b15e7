//! Where an agent answers: `unix:///path`, `https://host:port`, or
//! `http://host:port` on a loopback address only.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::ClientError;

/// The port of `https://host` when the URL gives none.
pub const DEFAULT_TLS_PORT: u16 = 8443;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// TLS over TCP.
    Https { host: String, port: u16 },
    /// Plain HTTP over TCP, on a loopback address only.
    Http { host: String, port: u16 },
}

impl Endpoint {
    /// The `Host` header of requests.
    pub fn host_header(&self) -> String {
        match self {
            Endpoint::Unix(_) => "localhost".into(),
            Endpoint::Https { host, port } | Endpoint::Http { host, port } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Endpoint::Https { .. })
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host[:port]`, with `[v6]` brackets.
fn host_port(rest: &str, default: Option<u16>, url: &str) -> Result<(String, u16), ClientError> {
    let bad = |why: &str| ClientError::Invalid(format!("invalid URL {url:?}: {why}"));
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') || rest.contains('@') {
        return Err(bad("only scheme://host:port is taken"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("bad port"))?,
        None => default.ok_or_else(|| bad("a port is needed"))?,
    };
    Ok((host, port))
}

impl FromStr for Endpoint {
    type Err = ClientError;

    fn from_str(url: &str) -> Result<Endpoint, ClientError> {
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(ClientError::Invalid(format!(
                    "invalid URL {url:?}: a socket path is absolute (unix:///run/libgo.sock)"
                )));
            }
            return Ok(Endpoint::Unix(path.into()));
        }
        if url.starts_with('/') {
            return Ok(Endpoint::Unix(url.into()));
        }
        if let Some(rest) = url.strip_prefix("https://") {
            let (host, port) = host_port(rest, Some(DEFAULT_TLS_PORT), url)?;
            return Ok(Endpoint::Https { host, port });
        }
        if let Some(rest) = url.strip_prefix("http://") {
            let (host, port) = host_port(rest, None, url)?;
            if !is_loopback(&host) {
                return Err(ClientError::Invalid(format!(
                    "plain http is only for a loopback address, not {host}: use https://"
                )));
            }
            return Ok(Endpoint::Http { host, port });
        }
        Err(ClientError::Invalid(format!(
            "invalid URL {url:?}: unix:///path, https://host:port or http://127.0.0.1:port"
        )))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Https { .. } => write!(f, "https://{}", self.host_header()),
            Endpoint::Http { .. } => write!(f, "http://{}", self.host_header()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Endpoint, String> {
        s.parse::<Endpoint>().map_err(|e| e.to_string())
    }

    #[test]
    fn urls_parse_into_endpoints_and_back() {
        assert_eq!(
            p("unix:///run/libgo.sock").unwrap(),
            Endpoint::Unix("/run/libgo.sock".into())
        );
        assert_eq!(
            p("/tmp/x.sock").unwrap(),
            Endpoint::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            p("https://node1:9443").unwrap(),
            Endpoint::Https {
                host: "node1".into(),
                port: 9443
            }
        );
        assert_eq!(
            p("https://node1/").unwrap(),
            Endpoint::Https {
                host: "node1".into(),
                port: DEFAULT_TLS_PORT
            }
        );
        let v6 = p("https://[fd00::1]:8443").unwrap();
        assert_eq!(
            v6,
            Endpoint::Https {
                host: "fd00::1".into(),
                port: 8443
            }
        );
        assert_eq!(v6.to_string(), "https://[fd00::1]:8443");
        assert_eq!(
            p("http://127.0.0.1:8080").unwrap(),
            Endpoint::Http {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert!(p("http://localhost:80").is_ok());
        assert!(p("http://[::1]:80").is_ok());
        for s in [
            "unix:///run/libgo.sock",
            "https://node1:9443",
            "http://127.0.0.1:8080",
        ] {
            assert_eq!(p(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_urls_and_remote_plaintext_are_refused() {
        for (url, why) in [
            ("http://10.0.0.1:80", "loopback"),
            ("http://node1:80", "loopback"),
            ("http://127.0.0.1", "port"),
            ("https://node1:0", "port"),
            ("https://node1:99999", "port"),
            ("https://node1:1/api", "host:port"),
            ("https://user@node1:1", "host:port"),
            ("https://:1", "no host"),
            ("unix://run/libgo.sock", "absolute"),
            ("ftp://x", "unix:///path"),
            ("node1:8443", "unix:///path"),
        ] {
            let e = p(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
