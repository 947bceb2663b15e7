//! Hostile input against a real daemon over its Unix socket: deep or huge
//! JSON, NUL and control characters, `..` and encoded slashes, symlinks,
//! absurd numbers, bulk over the cap, header floods, unknown methods,
//! HTTP/1.0 and pipelining. Every one is a clean 4xx with the API's error
//! body (or, for a request head the HTTP layer cannot read, a bare 400/431
//! and a closed connection), the daemon stays healthy, and nothing changed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the agent holds: VMs, templates and jobs (a refused request leaves
/// no job either).
async fn snapshot(d: &Daemon) -> Value {
    let (_, vms) = d.req("GET", "/api/v1/vms?limit=200", None).await;
    let (_, templates) = d.req("GET", "/api/v1/templates?limit=200", None).await;
    let (_, jobs) = d.req("GET", "/api/v1/jobs?limit=200", None).await;
    let ids = |v: &Value, list: &str| -> Vec<Value> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                json!([
                    i["id"],
                    i["name"],
                    i["vcpus"],
                    i["memory"],
                    i["disk_size"],
                    i["tags"]
                ])
            })
            .collect()
    };
    json!({"vms": ids(&vms, "vms"), "templates": ids(&templates, "templates"),
           "jobs": jobs["total_count"]})
}

/// A 4xx with the API's error body whose code repeats the status.
fn assert_clean_4xx(what: &str, code: u16, body: &[u8]) -> Value {
    assert!((400..500).contains(&code), "{what}: {code} {}", lossy(body));
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: {code} body is not JSON ({e}): {}", lossy(body)));
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
    assert!(v["error"]["status"].as_str().is_some(), "{what}: {v}");
    assert!(v["error"]["request_id"].as_str().is_some(), "{what}: {v}");
    v
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(400)]).into_owned()
}

async fn send(d: &Daemon, method: &str, path: &str, body: Option<String>) -> (u16, Vec<u8>) {
    let (code, _, bytes) = d
        .raw(method, path, body, &[])
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (code, bytes)
}

async fn healthy(d: &Daemon) {
    let (code, h) = d.req("GET", "/health", None).await;
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");
}

/// Bytes written as they are on a fresh connection; everything the server
/// answers until it closes (or `quiet` passes without a byte).
async fn exchange(socket: &Path, bytes: &[u8], quiet: Duration) -> Vec<u8> {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    // The server may close before it has read everything: not an error here.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// One HTTP response: status, headers (lowercase names), body.
type RawResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// The HTTP responses in `raw`, in order (bodies by Content-Length).
fn responses(raw: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let code: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = end + 4;
        let body = rest[body_start..(body_start + len).min(rest.len())].to_vec();
        out.push((code, headers, body));
        rest = &rest[(body_start + len).min(rest.len())..];
    }
    out
}

fn vm(name: &str) -> Value {
    json!({"name": name, "vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "base.qcow2"})
}

#[tokio::test]
async fn hostile_bodies_are_refused_and_change_nothing() {
    let d = Daemon::start().await;
    let (code, _) = d.req("POST", "/api/v1/vms", Some(vm("keep"))).await;
    assert_eq!(code, 201);
    let (code, _) = d
        .req(
            "POST",
            "/api/v1/templates",
            Some(json!({"name": "tpl", "vcpus": 1})),
        )
        .await;
    assert_eq!(code, 201);
    let before = snapshot(&d).await;

    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(50_000);
    let huge = format!(
        "{{\"name\": \"big\", \"user_data\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    let mut cases: Vec<(&str, String, String, u16)> = vec![
        ("POST", "/api/v1/vms".into(), deep_array.clone(), 400),
        ("POST", "/api/v1/vms".into(), deep_object.clone(), 400),
        ("PATCH", "/api/v1/vms/keep".into(), deep_object.clone(), 400),
        ("POST", "/api/v1/templates".into(), deep_array, 400),
        ("POST", "/api/v1/vms/keep/stop".into(), deep_object, 400),
        ("POST", "/api/v1/vms".into(), huge.clone(), 413),
        ("PATCH", "/api/v1/templates/tpl".into(), huge.clone(), 413),
        ("POST", "/api/v1/vms".into(), "\u{0}".into(), 400),
        (
            "POST",
            "/api/v1/vms".into(),
            "{\"name\": \"a\u{0}b\"".into(),
            400,
        ),
        // A nested object is never taken in its array form.
        (
            "PUT",
            "/api/v1/vms/keep/disk".into(),
            r#"{"io_limits": [2, 2]}"#.into(),
            400,
        ),
        (
            "PATCH",
            "/api/v1/vms/keep".into(),
            r#"{"cpu_pinning": [[0]]}"#.into(),
            400,
        ),
    ];
    // Names, tags and strings with NUL and control characters.
    for (field, value) in [
        ("name", json!("a\u{0}b")),
        ("name", json!("a\u{7}b")),
        ("name", json!("a\nb")),
        ("name", json!("../etc")),
        ("name", json!("a/b")),
        ("tags", json!(["a\u{0}"])),
        ("tags", json!(["a\u{1b}[31m"])),
        ("tags", json!(["a\u{85}"])),
        ("base_image", json!("base.qcow2\u{0}")),
        ("base_image", json!("../outside.qcow2")),
        ("base_image", json!("/etc/passwd")),
        ("base_image", json!("escape.qcow2")),
        ("base_image", json!("dir-link")),
        ("template", json!("a\u{0}")),
    ] {
        let mut b = vm("hostile");
        b[field] = value;
        cases.push(("POST", "/api/v1/vms".into(), b.to_string(), 400));
    }
    let mut b = vm("hostile");
    b["boot"] = json!({"kernel": "kernel-link", "cmdline": "console=ttyS0\u{0}"});
    cases.push(("POST", "/api/v1/vms".into(), b.to_string(), 400));
    let mut b = vm("hostile");
    b["boot"] = json!({"kernel": "kernel-link"});
    cases.push(("POST", "/api/v1/vms".into(), b.to_string(), 400));
    // Absurd numbers, as JSON text (some are not representable in a Value).
    for field in ["vcpus", "memory", "disk_size"] {
        for n in [
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "0",
            "1.5",
            "1e308",
            "-1e308",
            "\"1\"",
            "true",
        ] {
            let num = |f: &str, dflt: &str| {
                if f == field {
                    n.to_owned()
                } else {
                    dflt.to_owned()
                }
            };
            let text = format!(
                r#"{{"name": "hostile", "vcpus": {}, "memory": {}, "disk_size": {}, "base_image": "base.qcow2"}}"#,
                num("vcpus", "1"),
                num("memory", "128"),
                num("disk_size", "1")
            );
            cases.push(("POST", "/api/v1/vms".into(), text.clone(), 400));
            cases.push((
                "PATCH",
                "/api/v1/vms/keep".into(),
                format!("{{\"{field}\": {n}}}"),
                400,
            ));
            cases.push((
                "PATCH",
                "/api/v1/templates/tpl".into(),
                format!("{{\"{field}\": {n}}}"),
                400,
            ));
        }
    }
    for n in ["1", "18446744073709551615", "-2", "2.5", "1e308"] {
        cases.push((
            "PUT",
            "/api/v1/vms/keep/disk".into(),
            format!("{{\"io_limits\": {{\"iops\": {n}}}}}"),
            400,
        ));
        cases.push((
            "POST",
            "/api/v1/vms/keep/stop".into(),
            format!("{{\"timeout\": {}}}", if n == "1" { "3601" } else { n }),
            400,
        ));
    }
    cases.push((
        "PUT",
        "/api/v1/vms/keep/cpu".into(),
        r#"{"cpu_pinning": {"cores": [4294967295]}}"#.into(),
        400,
    ));
    // Bulk over the cap.
    let many: Vec<Value> = (0..101).map(|i| vm(&format!("bulk-{i}"))).collect();
    cases.push((
        "POST",
        "/api/v1/vms".into(),
        Value::Array(many).to_string(),
        400,
    ));
    cases.push(("POST", "/api/v1/vms".into(), "[]".into(), 400));
    let ids: Vec<String> = (0..101).map(|i| format!("vm-{i}")).collect();
    cases.push((
        "DELETE",
        "/api/v1/vms".into(),
        json!({ "vm_ids": ids }).to_string(),
        400,
    ));
    cases.push((
        "DELETE",
        "/api/v1/templates".into(),
        json!({ "template_ids": ids }).to_string(),
        400,
    ));
    let jobs: Vec<String> = (0..101).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    cases.push((
        "DELETE",
        "/api/v1/jobs".into(),
        json!({ "job_ids": jobs }).to_string(),
        400,
    ));

    // Symlinks in the pool: one leaves it, one is a directory, one names a
    // file outside.
    let outside = d.root.path().join("outside.qcow2");
    std::fs::copy(d.image_dir().join("base.qcow2"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, d.image_dir().join("escape.qcow2")).unwrap();
    std::os::unix::fs::symlink("/tmp", d.image_dir().join("dir-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.image_dir().join("kernel-link")).unwrap();

    for (method, path, body, want) in cases {
        let what = format!("{method} {path} {}", lossy(body.as_bytes()));
        let (code, bytes) = send(&d, method, &path, Some(body)).await;
        assert_eq!(code, want, "{what}: {}", lossy(&bytes));
        assert_clean_4xx(&what, code, &bytes);
    }
    // An upload route takes 4 GiB, but with an Idempotency-Key the body is
    // kept, so 1 MiB.
    let (code, _, bytes) = d
        .raw(
            "POST",
            "/api/v1/images/load",
            Some("x".repeat(2 << 20)),
            &[("idempotency-key", "upload-1")],
        )
        .await
        .unwrap();
    assert_eq!(code, 413, "{}", lossy(&bytes));
    assert_clean_4xx("upload with a key", code, &bytes);
    // A body declared far over the limit is refused before it is sent.
    let raw = exchange(
        &d.socket,
        b"POST /api/v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10737418240\r\n\r\n{",
        Duration::from_secs(2),
    )
    .await;
    let r = responses(&raw);
    assert_eq!(r.len(), 1, "{}", lossy(&raw));
    assert_eq!(r[0].0, 413);
    assert_clean_4xx("declared 10 GiB", r[0].0, &r[0].2);

    healthy(&d).await;
    assert_eq!(snapshot(&d).await, before);
}

#[tokio::test]
async fn hostile_paths_and_queries_are_refused_and_change_nothing() {
    let d = Daemon::start().await;
    let (code, _) = d.req("POST", "/api/v1/vms", Some(vm("keep"))).await;
    assert_eq!(code, 201);
    let before = snapshot(&d).await;

    let mut cases: Vec<(&str, String, u16)> = Vec::new();
    // `..`, encoded slashes and dots, NUL and control characters in every
    // kind of id.
    for prefix in [
        "/api/v1/vms/",
        "/api/v1/templates/",
        "/api/v1/jobs/",
        "/api/v1/containers/",
        "/api/v1/images/",
        "/api/v1/networks/",
        "/api/v1/volumes/",
    ] {
        for id in [
            "..",
            "%2e%2e",
            "..%2f..%2fetc",
            "a%2fb",
            "%2f",
            "a%00b",
            "%00",
            "a%01b",
            "a%0ab",
            "a%7fb",
            "%ff%fe",
            "a%20b",
        ] {
            if prefix == "/api/v1/images/" && id == "a%2fb" {
                continue; // `a/b` is an image reference (`libgo/app`).
            }
            cases.push(("GET", format!("{prefix}{id}"), 400));
            cases.push(("DELETE", format!("{prefix}{id}"), 400));
        }
    }
    for path in [
        "/api/v1/vms/..%2fkeep/start",
        "/api/v1/vms/keep%00/stop",
        "/api/v1/instances/..%2fkeep/start",
        "/api/v1/containers/..%2f..%2fcontainers%2fx/stop",
        "/api/v1/images/..%2fcontainers%2fx/tag",
        "/api/v1/networks/..%2fx/connect",
        "/api/v1/jobs/00000000-0000-0000-0000-000000000000/tasks/99999999999",
        "/api/v1/jobs/00000000-0000-0000-0000-000000000000/tasks/-1",
    ] {
        let method = if path.ends_with("99") || path.ends_with("-1") {
            "GET"
        } else {
            "POST"
        };
        cases.push((method, path.to_owned(), 400));
    }
    // Query strings: bad values of checked parameters.
    for q in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=1e3",
        "limit=18446744073709551616",
        "limit=%00",
        "sort=%00",
        "sort=..",
        "status=%00",
        "status=running%00",
        "page_token=%00",
        "page_token=..%2f..",
    ] {
        cases.push(("GET", format!("/api/v1/vms?{q}"), 400));
    }
    for q in ["wait=-1", "wait=301", "wait=1e308", "wait=%00"] {
        cases.push((
            "GET",
            format!("/api/v1/jobs/00000000-0000-0000-0000-000000000000?{q}"),
            400,
        ));
    }
    cases.push(("GET", "/api/v1/jobs?state=%00".into(), 400));
    cases.push(("GET", "/api/v1/instances?backend=..".into(), 400));
    cases.push(("GET", "/api/v1/containers/x/logs?since=-1".into(), 400));
    cases.push(("GET", "/api/v1/containers/x/logs?tail=%00".into(), 400));
    // Idempotency keys with control characters or too long.
    for (method, path, want) in cases {
        let (code, bytes) = send(&d, method, &path, None).await;
        assert_eq!(code, want, "{method} {path}: {}", lossy(&bytes));
        assert_clean_4xx(&format!("{method} {path}"), code, &bytes);
    }
    for key in [&"k".repeat(256), " ", "a\tb", "é"] {
        let (code, _, bytes) = d
            .raw(
                "POST",
                "/api/v1/vms",
                Some(vm("idem").to_string()),
                &[("idempotency-key", key)],
            )
            .await
            .unwrap();
        assert_eq!(code, 400, "{key:?}: {}", lossy(&bytes));
        assert_clean_4xx("idempotency key", code, &bytes);
    }
    let body = vm("idem").to_string();
    let raw = exchange(
        &d.socket,
        format!(
            "POST /api/v1/vms HTTP/1.1\r\nhost: x\r\nidempotency-key: a\x7fb\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    let r = responses(&raw);
    assert_eq!(r.len(), 1, "{}", lossy(&raw));
    // A DEL in a header value: the HTTP layer refuses the head itself.
    assert_eq!(r[0].0, 400, "{}", lossy(&raw));
    assert!(r[0].2.is_empty(), "{}", lossy(&raw));
    // Free-text filters take anything and match nothing.
    for q in ["name=%00", "tag=a%01b", "node=..%2f", "template=%ff"] {
        let (code, v) = d.req("GET", &format!("/api/v1/vms?{q}"), None).await;
        assert_eq!(
            (code, v["total_count"].as_u64()),
            (200, Some(0)),
            "{q}: {v}"
        );
    }
    // Raw control characters and a NUL in the request line: the HTTP layer
    // refuses the request head (a bare 400) and closes.
    for line in [
        &b"GET /api/v1/vms/a\x00b HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"GET /api/v1/vms/a\x01b HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /api/v1/vms?name=a\x7fb HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /api/v1/vms HTTP/1.1\r\nhost: x\r\nx-bad: a\x00b\r\n\r\n",
    ] {
        let raw = exchange(&d.socket, line, Duration::from_secs(2)).await;
        let r = responses(&raw);
        assert!(
            r.is_empty() || (r.len() == 1 && (400..500).contains(&r[0].0)),
            "{:?}: {}",
            lossy(line),
            lossy(&raw)
        );
        if let Some((code, _, body)) = r.first() {
            if !body.is_empty() {
                assert_clean_4xx("control character", *code, body);
            }
        }
    }
    healthy(&d).await;
    assert_eq!(snapshot(&d).await, before);
}

#[tokio::test]
async fn header_floods_methods_http10_and_pipelining() {
    let d = Daemon::start().await;
    let (code, _) = d.req("POST", "/api/v1/vms", Some(vm("keep"))).await;
    assert_eq!(code, 201);
    let before = snapshot(&d).await;

    // Many headers, one huge header: 431 from the HTTP layer, or a close.
    let mut many = String::from("GET /api/v1/vms HTTP/1.1\r\nhost: x\r\n");
    for i in 0..2000 {
        many.push_str(&format!("x-flood-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let huge = format!(
        "GET /api/v1/vms HTTP/1.1\r\nhost: x\r\nx-huge: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let long_path = format!(
        "GET /api/v1/vms/{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(1 << 20)
    );
    for flood in [many, huge, long_path] {
        let raw = exchange(&d.socket, flood.as_bytes(), Duration::from_secs(3)).await;
        let r = responses(&raw);
        assert!(
            r.is_empty() || (r.len() == 1 && [400, 414, 431].contains(&r[0].0)),
            "flood: {}",
            lossy(&raw)
        );
        healthy(&d).await;
    }

    // Unknown and unexpected methods: 405 (or 404 off a route) with the
    // error body, never a change.
    for (method, path, want) in [
        ("FOO", "/api/v1/vms", 405),
        ("BREW", "/api/v1/vms/keep", 405),
        ("PUT", "/api/v1/vms", 405),
        ("PATCH", "/api/v1/vms/keep/start", 405),
        ("TRACE", "/api/v1/vms/keep", 405),
        ("DELETE", "/health", 405),
        ("POST", "/openapi.json", 405),
        ("FOO", "/nowhere", 404),
    ] {
        let (code, headers, bytes) = d
            .raw(method, path, None, &[("idempotency-key", "same-key")])
            .await
            .unwrap();
        assert_eq!(code, want, "{method} {path}: {}", lossy(&bytes));
        assert_clean_4xx(&format!("{method} {path}"), code, &bytes);
        if code == 405 {
            assert!(headers.get("allow").is_some(), "{method} {path}: no Allow");
        }
    }

    // HTTP/1.0: answered in kind, then closed.
    let raw = exchange(
        &d.socket,
        b"GET /api/v1/vms/nope HTTP/1.0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let r = responses(&raw);
    assert_eq!(r.len(), 1, "{}", lossy(&raw));
    assert!(lossy(&raw).starts_with("HTTP/1.0 404"), "{}", lossy(&raw));
    assert_clean_4xx("HTTP/1.0", r[0].0, &r[0].2);
    let raw = exchange(
        &d.socket,
        b"POST /api/v1/vms HTTP/1.0\r\ncontent-length: 5\r\n\r\n{bad}",
        Duration::from_secs(3),
    )
    .await;
    let r = responses(&raw);
    assert_eq!(r.len(), 1, "{}", lossy(&raw));
    assert_clean_4xx("HTTP/1.0 POST", r[0].0, &r[0].2);

    // Pipelining: several requests written at once on one connection are
    // answered in order, a bad one in the middle included.
    let bad_body = "{\"vcpus\": -1}";
    let pipeline = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\n\r\n\
         PATCH /api/v1/vms/keep HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{bad_body}\
         GET /api/v1/vms/nope HTTP/1.1\r\nhost: x\r\n\r\n\
         BREW /api/v1/vms HTTP/1.1\r\nhost: x\r\n\r\n\
         GET /api/v1/vms/keep HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        bad_body.len()
    );
    let raw = exchange(&d.socket, pipeline.as_bytes(), Duration::from_secs(5)).await;
    let r = responses(&raw);
    let codes: Vec<u16> = r.iter().map(|(c, _, _)| *c).collect();
    assert_eq!(codes, vec![200, 400, 404, 405, 200], "{}", lossy(&raw));
    for (code, _, body) in &r[1..4] {
        assert_clean_4xx("pipelined", *code, body);
    }
    let last: Value = serde_json::from_slice(&r[4].2).unwrap();
    assert_eq!(last["name"], "keep");
    assert_eq!(last["vcpus"], 1);

    healthy(&d).await;
    assert_eq!(snapshot(&d).await, before);
}
