//! What remote access costs per request, and how a flood of idle
//! connections is held off. Release `libgod`s on loopback:
//!
//! - the latency of one `GET /api/v1/whoami` on a kept-alive connection:
//!   the admin socket (no credential, no limit), TCP with an API token, TCP
//!   with a login session (JWT), the same with rate limiting on, and TLS;
//!   then a fresh TLS connection per request (handshake included);
//! - the in-process cost of checking a JWT, an API token and a rate limit;
//! - 20,000 idle TCP connections against the default cap of 1024: how long
//!   the admin socket and a fresh TCP client take meanwhile.
//!
//! `cargo bench --bench access`. Sizes: LIBGO_ACCESS_N (requests per case,
//! 2000), LIBGO_ACCESS_FLOOD (idle connections, 20000). Writes
//! `benches/results/access.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Daemon, Remote};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A kept-alive HTTP/1.1 connection.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    auth: Option<String>,
}

impl Conn {
    async fn open<IO>(io: IO, auth: Option<String>) -> Conn
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender, auth }
    }

    async fn get(&mut self, path: &str) -> u16 {
        let mut req =
            hyper::Request::get(format!("http://localhost{path}")).header("host", "localhost");
        if let Some(a) = &self.auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        self.sender.ready().await.unwrap();
        let resp = self
            .sender
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }
}

/// Median and 99th percentile of `n` timed calls, in microseconds.
async fn time_n(n: usize, mut f: impl AsyncFnMut() -> u16) -> (f64, f64) {
    for _ in 0..n / 10 {
        assert_eq!(f().await, 200);
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(f().await, 200);
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[n / 2], v[(n * 99 / 100).min(n - 1)])
}

async fn release_daemon(extra: &[&str], config: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("libgod.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Daemon::start_with(&args).await, dir)
}

async fn token(d: &Daemon) -> String {
    let (code, t) = d
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "bench", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    t["secret"].as_str().unwrap().to_owned()
}

async fn session(d: &Daemon, r: &Remote) -> String {
    let (code, _) = d
        .req(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "bench", "password": "bench-password", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, 201);
    let (code, s) = r
        .req(
            "POST",
            "/api/v1/login",
            Some(json!({"username": "bench", "password": "bench-password"})),
        )
        .await;
    assert_eq!(code, 200, "{s}");
    s["token"].as_str().unwrap().to_owned()
}

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env("LIBGO_ACCESS_N", 2000);
    let flood = env("LIBGO_ACCESS_FLOOD", 20_000);
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    const HUGE: &str = "[rate_limits]\ntcp_read = 1000000000\ntcp_write = 1000000000\n";
    const OFF: &str = "[rate_limits]\ntcp_read = 0\ntcp_write = 0\n";

    // Plain TCP without rate limits: transport and credential costs.
    let p_off = free_port();
    let (off, _c1) = release_daemon(
        &["--listen", &format!("127.0.0.1:{p_off}"), "--plaintext"],
        OFF,
    )
    .await;
    let api_token = token(&off).await;
    let jwt = session(&off, &Remote::plain(addr(p_off))).await;
    let mut unix = Conn::open(
        tokio::net::UnixStream::connect(&off.socket).await.unwrap(),
        None,
    )
    .await;
    rows.push(row(
        "admin socket, no credential, no limit",
        time_n(n, async || unix.get("/api/v1/whoami").await).await,
    ));
    let mut tcp_tok = Conn::open(
        tokio::net::TcpStream::connect(addr(p_off)).await.unwrap(),
        Some(api_token.clone()),
    )
    .await;
    rows.push(row(
        "TCP, API token, no limit",
        time_n(n, async || tcp_tok.get("/api/v1/whoami").await).await,
    ));
    let mut tcp_jwt = Conn::open(
        tokio::net::TcpStream::connect(addr(p_off)).await.unwrap(),
        Some(jwt.clone()),
    )
    .await;
    rows.push(row(
        "TCP, login session (JWT), no limit",
        time_n(n, async || tcp_jwt.get("/api/v1/whoami").await).await,
    ));
    let mut tcp_health = Conn::open(
        tokio::net::TcpStream::connect(addr(p_off)).await.unwrap(),
        None,
    )
    .await;
    rows.push(row(
        "TCP, GET /health (open, no credential)",
        time_n(n, async || tcp_health.get("/health").await).await,
    ));
    drop(off);

    // The same with rate limiting on (a budget never reached).
    let p_on = free_port();
    let (on, _c2) = release_daemon(
        &["--listen", &format!("127.0.0.1:{p_on}"), "--plaintext"],
        HUGE,
    )
    .await;
    let api_token = token(&on).await;
    let mut tcp_lim = Conn::open(
        tokio::net::TcpStream::connect(addr(p_on)).await.unwrap(),
        Some(api_token),
    )
    .await;
    rows.push(row(
        "TCP, API token, rate limited",
        time_n(n, async || tcp_lim.get("/api/v1/whoami").await).await,
    ));
    drop(on);

    // TLS (self-signed, pinned), rate limited.
    let p_tls = free_port();
    let (tls, _c3) = release_daemon(&["--listen", &format!("127.0.0.1:{p_tls}")], HUGE).await;
    let api_token = token(&tls).await;
    let remote = Remote::tls(addr(p_tls), &tls.state_dir().join("tls/cert.pem"));
    let connector = remote.tls.clone().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector
        .connect(
            name.clone(),
            tokio::net::TcpStream::connect(addr(p_tls)).await.unwrap(),
        )
        .await
        .unwrap();
    let mut tls_conn = Conn::open(stream, Some(api_token.clone())).await;
    rows.push(row(
        "TLS, API token, rate limited",
        time_n(n, async || tls_conn.get("/api/v1/whoami").await).await,
    ));
    let fresh = remote.with_token(&api_token);
    rows.push(row(
        "TLS, new connection per request (handshake + request)",
        time_n(n / 4, || async {
            fresh
                .raw("GET", "/api/v1/whoami", None, &[])
                .await
                .unwrap()
                .0
        })
        .await,
    ));
    drop(tls);

    // In-process costs of the checks themselves.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(libgo::store::Store::open(&dir.path().join("db")).unwrap());
    let auth = libgo::auth::Auth::open(store, &dir.path().join("key"), 3600).unwrap();
    auth.create_user("bench", "bench-password", libgo::auth::Role::Viewer)
        .unwrap();
    let jwt = auth.login("bench", "bench-password").unwrap().token;
    let (_, secret) = auth
        .create_token(
            "uid:0",
            libgo::auth::Role::Admin,
            "b",
            libgo::auth::Role::Viewer,
            None,
            false,
        )
        .unwrap();
    let limiter = libgo::auth::RateLimiter::default();
    let micro = |f: &dyn Fn()| {
        let reps = 20_000;
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / reps as f64
    };
    let jwt_us = micro(&|| {
        auth.authenticate(&jwt).unwrap();
    });
    let tok_us = micro(&|| {
        auth.authenticate(&secret).unwrap();
    });
    let lim_us = micro(&|| {
        limiter.check("user:bench:read", 1_000_000_000, Instant::now());
    });
    let t = Instant::now();
    auth.login("bench", "bench-password").unwrap();
    let login_ms = t.elapsed().as_secs_f64() * 1e3;

    // A flood of idle connections against the default cap.
    let flood_text = flood_run(flood).await;

    let mut out = String::from("| one GET /api/v1/whoami on a kept-alive connection | median µs | p99 µs |\n| --- | ---: | ---: |\n");
    for (name, med, p99) in &rows {
        out.push_str(&format!("| {name} | {med:.0} | {p99:.0} |\n"));
    }
    out.push_str(&format!(
        "\n| check, in process | µs |\n| --- | ---: |\n| JWT verification (HS256) and user look-up | {jwt_us:.1} |\n| API token (SHA-256, constant-time compare) | {tok_us:.1} |\n| rate limit (token bucket) | {lim_us:.2} |\n| login (argon2id verify + JWT) | {:.0} |\n",
        login_ms * 1e3
    ));
    out.push_str(&flood_text);
    println!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/access.md");
    std::fs::write(
        &path,
        format!(
            "# Access costs ({} requests per case; `cargo bench --bench access`)\n\n{out}",
            n
        ),
    )
    .unwrap();
}

fn row(name: &str, (med, p99): (f64, f64)) -> (String, f64, f64) {
    eprintln!("{name}: median {med:.0} µs, p99 {p99:.0} µs");
    (name.to_owned(), med, p99)
}

/// Opens `count` idle TCP connections and times what still works.
async fn flood_run(count: usize) -> String {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // The client holds every connection: it needs the descriptors too.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (count as u64 + 4096).max(hard);
    let limit = if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        want
    } else {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        hard
    };
    // Without CAP_SYS_RESOURCE the client cannot go past its hard limit.
    let count = count.min(limit.saturating_sub(512) as usize);
    let port = free_port();
    let (d, _c) = release_daemon(
        &["--listen", &format!("127.0.0.1:{port}"), "--plaintext"],
        "[connections]\nidle_timeout_secs = 5\n",
    )
    .await;
    let a = addr(port);
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(count);
    let mut failed = 0;
    for _ in 0..count {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    let opened = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    assert_eq!(d.req("GET", "/health", None).await.0, 200);
    assert_eq!(d.req("GET", "/api/v1/vms", None).await.0, 200);
    let admin_ms = t.elapsed().as_secs_f64() * 1e3;
    let fd_count = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|r| r.count())
        .unwrap_or(0);
    // A new TCP client: refused while the listener is full, served once the
    // idle timeout has freed it.
    let t = Instant::now();
    let mut served_after = None;
    while t.elapsed() < Duration::from_secs(15) {
        if let Ok((200, _, _)) = Remote::plain(a).raw("GET", "/health", None, &[]).await {
            served_after = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    format!(
        "\n| {count} idle TCP connections, cap 1024, idle timeout 5 s | |\n| --- | ---: |\n| opened by the client (connect failures) | {:.1} s ({failed}) |\n| daemon descriptors while flooded | {fd_count} |\n| admin socket: GET /health + GET /api/v1/vms meanwhile | {admin_ms:.1} ms |\n| a new TCP client is served after | {} |\n",
        opened.as_secs_f64(),
        served_after
            .map(|t| format!("{:.1} s", t.as_secs_f64()))
            .unwrap_or_else(|| "never (15 s)".into())
    )
}
