//! Remote access and its defences on a real daemon: TLS with a self-signed
//! certificate, logins, roles, API tokens and their revocation, the
//! read-only socket, rate limits, the audit trail, and the connection
//! limits (slow headers, stalled bodies, idle connections, a full listener).
//! Timings are printed as `FIGURE` lines.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Daemon, Remote};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

async fn tls_daemon() -> (Daemon, Remote) {
    let port = free_port();
    let d = Daemon::start_with(&["--listen", &format!("127.0.0.1:{port}")]).await;
    let cert = d.state_dir().join("tls/cert.pem");
    (d, Remote::tls(addr(port), &cert))
}

/// A daemon with `config` (TOML) and a plain-HTTP listener on loopback.
async fn plain_daemon(config: &str) -> (Daemon, std::net::SocketAddr, tempfile::TempDir) {
    configured_daemon(config, true).await
}

async fn configured_daemon(
    config: &str,
    plaintext: bool,
) -> (Daemon, std::net::SocketAddr, tempfile::TempDir) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("libgod.toml");
    std::fs::write(&cfg, config).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--listen", &listen];
    if plaintext {
        args.push("--plaintext");
    }
    let d = Daemon::start_with(&args).await;
    (d, addr(port), dir)
}

async fn user(d: &Daemon, name: &str, role: &str) {
    let (code, body) = d
        .req(
            "POST",
            "/api/v1/users",
            Some(json!({"username": name, "password": format!("{name}-password"), "role": role})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
}

async fn login(r: &Remote, name: &str) -> String {
    let (code, s) = r
        .req(
            "POST",
            "/api/v1/login",
            Some(json!({"username": name, "password": format!("{name}-password")})),
        )
        .await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["token_type"], "Bearer");
    s["token"].as_str().unwrap().to_owned()
}

fn vm(name: &str) -> Value {
    json!({"name": name, "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"})
}

#[tokio::test]
async fn tls_logins_roles_tokens_and_the_audit_trail() {
    let (d, remote) = tls_daemon().await;
    // The self-signed certificate was made on first start and its
    // fingerprint logged; the key is root's alone.
    let log = d.log();
    assert!(
        log.contains("fingerprint"),
        "no fingerprint in the log:\n{log}"
    );
    let mode = std::fs::metadata(d.state_dir().join("tls/key.pem"))
        .unwrap()
        .permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);

    // Health is open; everything else wants a bearer credential.
    assert_eq!(remote.req("GET", "/health", None).await.0, 200);
    let (code, headers, _) = remote.raw("GET", "/api/v1/vms", None, &[]).await.unwrap();
    assert_eq!(code, 401);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(
        remote
            .with_token("garbage")
            .req("GET", "/api/v1/vms", None)
            .await
            .0,
        401
    );
    // Plain HTTP on the TLS port is not served.
    let plain = Remote::plain(remote.addr);
    assert!(plain
        .raw("GET", "/health", None, &[])
        .await
        .map(|r| r.0 != 200)
        .unwrap_or(true));

    // Users are made by an admin (root on the socket).
    user(&d, "ada", "admin").await;
    user(&d, "otto", "operator").await;
    user(&d, "vic", "viewer").await;
    let (code, _) = remote
        .req(
            "POST",
            "/api/v1/login",
            Some(json!({"username": "vic", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(code, 401);
    let (code, _) = remote
        .req(
            "POST",
            "/api/v1/login",
            Some(json!({"username": "nobody", "password": "whatever-pw"})),
        )
        .await;
    assert_eq!(code, 401);

    let viewer = remote.with_token(&login(&remote, "vic").await);
    let operator = remote.with_token(&login(&remote, "otto").await);
    let admin = remote.with_token(&login(&remote, "ada").await);

    // Viewers read; operators change instances; admins manage users.
    assert_eq!(viewer.req("GET", "/api/v1/vms", None).await.0, 200);
    let (code, body) = viewer.req("POST", "/api/v1/vms", Some(vm("v1"))).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(viewer.req("GET", "/api/v1/users", None).await.0, 403);
    assert_eq!(viewer.req("GET", "/api/v1/audit", None).await.0, 403);
    let (code, body) = operator.req("POST", "/api/v1/vms", Some(vm("o1"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(operator.req("GET", "/api/v1/users", None).await.0, 403);
    assert_eq!(
        operator
            .req(
                "POST",
                "/api/v1/users",
                Some(json!({"username": "eve", "password": "eve-password", "role": "admin"}))
            )
            .await
            .0,
        403
    );
    let (code, me) = operator.req("GET", "/api/v1/whoami", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            me["caller"].as_str(),
            me["role"].as_str(),
            me["transport"].as_str()
        ),
        (Some("user:otto"), Some("operator"), Some("tcp"))
    );
    assert_eq!(admin.req("GET", "/api/v1/users", None).await.0, 200);

    // API tokens: the secret once, stored hashed, revocable.
    let (code, t) = admin
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "aggregator", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let secret = t["secret"].as_str().unwrap().to_owned();
    let machine = remote.with_token(&secret);
    assert_eq!(machine.req("GET", "/api/v1/vms", None).await.0, 200);
    assert_eq!(machine.req("DELETE", "/api/v1/vms/o1", None).await.0, 403);
    let (_, list) = admin.req("GET", "/api/v1/tokens", None).await;
    assert!(list["tokens"][0].get("secret").is_none());
    let db = std::fs::read(d.state_dir().join("libgo.db")).unwrap();
    let raw = secret.rsplit('_').next().unwrap();
    assert!(!db.windows(raw.len()).any(|w| w == raw.as_bytes()));
    let id = t["id"].as_str().unwrap();
    assert_eq!(
        admin
            .req("DELETE", &format!("/api/v1/tokens/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(machine.req("GET", "/api/v1/vms", None).await.0, 401);

    // Logout ends that session; a password change ends all of them; a
    // removed user's sessions and tokens stop at once.
    let second = remote.with_token(&login(&remote, "vic").await);
    assert_eq!(viewer.req("POST", "/api/v1/logout", None).await.0, 204);
    assert_eq!(viewer.req("GET", "/api/v1/vms", None).await.0, 401);
    assert_eq!(second.req("GET", "/api/v1/vms", None).await.0, 200);
    let (code, _) = admin
        .req(
            "PATCH",
            "/api/v1/users/vic",
            Some(json!({"password": "another-password"})),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(second.req("GET", "/api/v1/vms", None).await.0, 401);
    let (_, t2) = admin
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "ada-script", "role": "operator"})),
        )
        .await;
    let ada_token = remote.with_token(t2["secret"].as_str().unwrap());
    assert_eq!(ada_token.req("GET", "/api/v1/vms", None).await.0, 200);
    assert_eq!(d.req("DELETE", "/api/v1/users/ada", None).await.0, 204);
    assert_eq!(admin.req("GET", "/api/v1/vms", None).await.0, 401);
    assert_eq!(ada_token.req("GET", "/api/v1/vms", None).await.0, 401);

    // The audit trail names who did what, over which transport, with what
    // outcome; admins filter it by actor, target and outcome.
    let (code, page) = d
        .req("GET", "/api/v1/audit?actor=user:otto&target=vms", None)
        .await;
    assert_eq!(code, 200, "{page}");
    let ev = &page["events"][0];
    assert_eq!(ev["method"], "POST");
    // A create names what it made.
    let (_, o1) = d.req("GET", "/api/v1/vms/o1", None).await;
    assert_eq!(ev["target"], format!("vms/{}", o1["id"].as_str().unwrap()));
    assert_eq!(ev["transport"], "tcp");
    assert_eq!(ev["role"], "operator");
    assert_eq!(ev["outcome"], "succeeded");
    assert_eq!(ev["status"], 201);
    let (_, denied) = d
        .req("GET", "/api/v1/audit?actor=user:vic&outcome=denied", None)
        .await;
    assert!(denied["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"] == "/api/v1/vms" && e["status"] == 403));
    let (_, logins) = d
        .req("GET", "/api/v1/audit?target=login&outcome=denied", None)
        .await;
    assert!(logins["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["actor"] == "user:vic" && e["status"] == 401));
    // Cursor pages cover the trail without overlap.
    let (_, p1) = d.req("GET", "/api/v1/audit?limit=2", None).await;
    let tok = p1["next_page_token"].as_str().unwrap();
    let (_, p2) = d
        .req(
            "GET",
            &format!("/api/v1/audit?limit=2&page_token={tok}"),
            None,
        )
        .await;
    assert!(p2["events"][0]["seq"].as_i64() < p1["events"][1]["seq"].as_i64());
    assert_eq!(
        d.req("GET", "/api/v1/audit?outcome=maybe", None).await.0,
        400
    );
    // `since` is seconds since the epoch.
    let (_, future) = d.req("GET", "/api/v1/audit?since=2000000000", None).await;
    assert_eq!(future["events"], json!([]));
    let (_, recent) = d
        .req(
            "GET",
            &format!("/api/v1/audit?since={}", libgo::clock::unix_now() - 600),
            None,
        )
        .await;
    assert!(!recent["events"].as_array().unwrap().is_empty());
    assert_eq!(
        d.req("GET", "/api/v1/audit?since=yesterday", None).await.0,
        400
    );
    // Only a login session can be logged out.
    assert_eq!(d.req("POST", "/api/v1/logout", None).await.0, 409);
    // Token names and lifetimes are checked.
    for bad in [
        json!({"name": "a\u{7f}b", "role": "viewer"}),
        json!({"name": "", "role": "viewer"}),
        json!({"name": "x", "role": "viewer", "expires_in": 0}),
        json!({"name": "x", "role": "viewer", "expires_in": 3_153_600_001u64}),
        json!({"name": "x", "role": "root"}),
    ] {
        assert_eq!(
            d.req("POST", "/api/v1/tokens", Some(bad.clone())).await.0,
            400,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn plaintext_only_on_loopback_and_the_read_only_socket() {
    // Plain HTTP on a non-loopback address is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_libgod"))
        .args([
            "--listen",
            "0.0.0.0:1",
            "--plaintext",
            "--socket",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));

    let d = Daemon::start().await;
    let ro = common::Client::new(d.readonly_socket());
    let mode = std::fs::metadata(d.readonly_socket())
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o666
    );
    let (code, _, _) = ro.raw("GET", "/api/v1/vms", None, &[]).await.unwrap();
    assert_eq!(code, 200);
    // Even root only reads there.
    let (code, _, body) = ro
        .raw("POST", "/api/v1/vms", Some(vm("ro").to_string()), &[])
        .await
        .unwrap();
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    let (code, _, _) = ro.raw("GET", "/api/v1/users", None, &[]).await.unwrap();
    assert_eq!(code, 403);
    assert_eq!(d.req("GET", "/api/v1/vms/ro", None).await.0, 404);
    // The descriptor limit was raised at start (to 65536 where the kernel
    // lets root raise its hard limit, to the hard limit otherwise).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(v[3], v[4], "{line}");
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(v[3].parse::<u64>().unwrap() >= hard.min(65_536), "{line}");
}

#[tokio::test]
async fn rate_limits_per_caller_with_separate_read_and_write_budgets() {
    let (d, a, _cfg) =
        plain_daemon("[rate_limits]\ntcp_read = 5\ntcp_write = 3\nsocket_write = 0\n").await;
    user(&d, "otto", "operator").await;
    user(&d, "olga", "operator").await;
    let remote = Remote::plain(a);
    // The login itself is a write of the anonymous caller's address.
    let otto = remote.with_token(&login(&remote, "otto").await);
    let olga = remote.with_token(&login(&remote, "olga").await);
    let mut codes = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let (code, headers, _) = otto
            .raw("DELETE", "/api/v1/vms/none", None, &[])
            .await
            .unwrap();
        codes.push(code);
        last = Some(headers);
    }
    assert_eq!(codes, vec![404, 404, 404, 429]);
    let h = last.unwrap();
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(h.contains_key("x-ratelimit-reset"));
    // Reads have their own budget; other callers have their own buckets.
    let (code, h, _) = otto.raw("GET", "/api/v1/vms", None, &[]).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(h["x-ratelimit-limit"], "5");
    assert_eq!(
        olga.raw("DELETE", "/api/v1/vms/none", None, &[])
            .await
            .unwrap()
            .0,
        404
    );
    // A token made `unlimited` (an aggregator's) is not counted.
    let (code, t) = d
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "agg", "role": "admin", "unlimited": true})),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    assert_eq!(t["unlimited"], true, "{t}");
    let agg = remote.with_token(t["secret"].as_str().unwrap());
    for _ in 0..10 {
        let (code, h, _) = agg
            .raw("DELETE", "/api/v1/vms/none", None, &[])
            .await
            .unwrap();
        assert_eq!(code, 404);
        assert!(!h.contains_key("x-ratelimit-limit"));
    }
    // The admin socket is unlimited by default (and carries no headers).
    for _ in 0..10 {
        let (code, h, _) = d
            .raw("DELETE", "/api/v1/vms/none", None, &[])
            .await
            .unwrap();
        assert_eq!(code, 404);
        assert!(!h.contains_key("x-ratelimit-limit"));
    }
    // Refusals are in the audit trail as denied.
    let (_, page) = d
        .req("GET", "/api/v1/audit?actor=user:otto&outcome=denied", None)
        .await;
    assert_eq!(page["events"][0]["status"], 429);
}

/// Reads until the peer closes; how long that took.
async fn time_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_and_a_full_listener_lets_the_admin_in() {
    let (d, a, _cfg) = plain_daemon("[connections]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\nidle_timeout_secs = 2\nmax_per_listener = 20\n").await;

    // A header trickled one byte every 200 ms is cut at the header timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let t0 = Instant::now();
    let trickle = async {
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(8), trickle).await;
    let cut = t0.elapsed();
    assert!(
        cut < Duration::from_millis(2500),
        "slow header held for {cut:?}"
    );
    eprintln!("FIGURE slowloris header (1 byte/200 ms, header timeout 1 s): closed after {cut:?}");

    // A body declared and never sent: 408 after the body timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let t0 = Instant::now();
    s.write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"user")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let stalled = t0.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"REQUEST_TIMEOUT\""), "{text}");
    assert!(stalled < Duration::from_millis(2500), "{stalled:?}");
    eprintln!("FIGURE stalled body (1000 bytes declared, 6 sent, body timeout 1 s): 408 after {stalled:?}");

    // A kept-alive connection is closed after the idle timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = time_to_close(&mut s, Duration::from_secs(6))
        .await
        .expect("an idle connection stays open");
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
    eprintln!("FIGURE idle keep-alive connection (idle timeout 2 s): closed after {idle:?}");

    // A full listener: 20 connections held open, the 21st is closed at once
    // while the admin socket still answers; when some go, new ones get in.
    let mut held = Vec::new();
    for _ in 0..20 {
        let s = tokio::net::TcpStream::connect(a).await.unwrap();
        held.push(s);
    }
    // Let the daemon accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(a).await.unwrap();
    let refused = time_to_close(&mut extra, Duration::from_secs(1))
        .await
        .expect("the 21st connection is closed");
    eprintln!("FIGURE 21st connection on a listener capped at 20: closed after {refused:?}");
    let t0 = Instant::now();
    assert_eq!(d.req("GET", "/health", None).await.0, 200);
    assert_eq!(d.req("GET", "/api/v1/vms", None).await.0, 200);
    eprintln!(
        "FIGURE admin socket while TCP is full: /health and /api/v1/vms in {:?}",
        t0.elapsed()
    );
    // Root gets in on the admin socket beyond its cap as well.
    let mut admin_conns = Vec::new();
    for _ in 0..25 {
        admin_conns.push(tokio::net::UnixStream::connect(&d.socket).await.unwrap());
    }
    assert_eq!(d.req("GET", "/health", None).await.0, 200);
    drop(admin_conns);
    held.truncate(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, _, _) = Remote::plain(a)
        .raw("GET", "/health", None, &[])
        .await
        .unwrap();
    assert_eq!(code, 200);
    // The held connections were idle: the idle timeout frees them too.
    for mut s in held {
        assert!(time_to_close(&mut s, Duration::from_secs(5))
            .await
            .is_some());
    }
}

/// Walks the whole live route table: a viewer (the read-only socket) is
/// refused every route that needs more, and an operator every admin route;
/// nothing a role may call is refused for its role.
#[tokio::test]
async fn every_route_enforces_its_rule_on_the_live_daemon() {
    let (d, a, _cfg) = plain_daemon("").await;
    user(&d, "otto", "operator").await;
    let remote = Remote::plain(a);
    let operator = remote.with_token(&login(&remote, "otto").await);
    let ro = common::Client::new(d.readonly_socket());
    let mut checked = 0;
    for (method, path) in libgo::api::route_table() {
        let Some(libgo::api::access::Rule::Min(needed)) = libgo::api::access::rule(&method, &path)
        else {
            continue;
        };
        // Any id will do: the rule is applied before the handler looks.
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let body = (method != "GET").then(|| "{}".to_owned());
        let (code, _, _) = ro.raw(&method, &concrete, body.clone(), &[]).await.unwrap();
        let viewer_may = needed == libgo::auth::Role::Viewer;
        assert_eq!(
            code == 403,
            !viewer_may,
            "viewer: {method} {path} -> {code}"
        );
        if path == "/api/v1/logout" {
            // It would end the operator's session (tested above).
            continue;
        }
        let (code, _, _) = operator.raw(&method, &concrete, body, &[]).await.unwrap();
        let operator_may = needed <= libgo::auth::Role::Operator;
        assert_eq!(
            code == 403,
            !operator_may,
            "operator: {method} {path} -> {code}"
        );
        checked += 1;
    }
    assert!(checked > 60, "{checked}");
}

/// The event stream over TLS with a bearer token: the upgrade passes the
/// credential check, the WebSocket outlives the idle timeout, and events
/// arrive; without the token the upgrade is refused.
#[tokio::test]
async fn the_event_stream_over_tls_with_a_token() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (d, a, _cfg) = configured_daemon("[connections]\nidle_timeout_secs = 1\n", false).await;
    let remote = Remote::tls(a, &d.state_dir().join("tls/cert.pem"));
    let (_, t) = d
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "watcher", "role": "viewer"})),
        )
        .await;
    let secret = t["secret"].as_str().unwrap().to_owned();
    let connect = || async {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = tokio::net::TcpStream::connect(a).await.unwrap();
        remote
            .tls
            .clone()
            .unwrap()
            .connect(name, tcp)
            .await
            .unwrap()
    };
    // No token: 401, no upgrade.
    let refused =
        tokio_tungstenite::client_async("wss://localhost/api/v1/events", connect().await).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    let mut req = "wss://localhost/api/v1/events?types=vm."
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, connect().await)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    // Quiet for longer than the idle timeout: an upgraded stream stays.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, _) = d.req("POST", "/api/v1/vms", Some(vm("seen"))).await;
    assert_eq!(code, 201);
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .unwrap();
    let ev: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(ev["type"], "vm.created", "{ev}");
}
