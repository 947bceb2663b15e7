//! Containers through a real Docker engine: lifecycle, logs, exec, stats,
//! resource limits (in the engine and in effect), images, networks, volumes,
//! the unified instance list, ownership, and the engine going away.
//! Needs dockerd on /var/run/docker.sock (scripts/test.sh starts one).

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

const IMAGE: &str = "libgo-test/busybox:1";

/// A busybox-static root filesystem as a tarball (no registry here).
fn busybox_tar() -> Vec<u8> {
    common::busybox_rootfs_tar(&[
        "sh", "ls", "cat", "echo", "sleep", "yes", "true", "grep", "wc", "env", "touch", "killall",
    ])
}

async fn import_busybox(d: &Daemon, image: &str) {
    let (code, _, body) = d
        .raw(
            "POST",
            &format!("/api/v1/images/import?image={image}"),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        code,
        400,
        "an empty tarball is refused: {}",
        String::from_utf8_lossy(&body)
    );
    let tar = busybox_tar();
    let (code, body) = raw_bytes(
        d,
        "POST",
        &format!("/api/v1/images/import?image={image}"),
        tar,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert!(
        body["tags"].as_array().unwrap().iter().any(|t| t == image),
        "{body}"
    );
}

/// Removes containers a previous, interrupted run may have left.
fn leftovers(names: &[&str]) {
    for n in names {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", n])
            .output();
    }
}

async fn raw_bytes(d: &Daemon, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://x{path}"))
        .header("host", "x")
        .header("content-type", "application/x-tar")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn docker_inspect(id: &str) -> Value {
    let out = std::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
}

async fn wait_stats(d: &Daemon, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, p) = d
            .req("GET", &format!("/api/v1/containers/{id}/stats"), None)
            .await;
        if code == 200 && ok(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: {code} {p}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_logs_exec_stats_and_limits() {
    leftovers(&["life", "life-bad"]);
    let _engine = engine_lock(false);
    let d = Daemon::start().await;
    import_busybox(&d, IMAGE).await;

    // A program that is not in the image: the engine makes the container, but
    // neither a start nor a restart can run it; that is a 409, never a 500.
    let (code, bad) = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(json!({"name": "life-bad", "image": IMAGE, "command": ["/no-such-program"]})),
        )
        .await;
    assert_eq!(code, 201, "{bad}");
    for action in ["start", "restart"] {
        let (code, e) = d
            .req(
                "POST",
                &format!("/api/v1/containers/life-bad/{action}"),
                None,
            )
            .await;
        assert_eq!(code, 409, "{action}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no-such-program"),
            "{e}"
        );
    }
    let (code, e) = d.req("DELETE", "/api/v1/containers/life-bad", None).await;
    assert!(code == 200 || code == 204, "{code} {e}");
    let (code, c) = d
        .req("POST", "/api/v1/containers", Some(json!({
            "name": "life", "image": IMAGE,
            "command": ["sh", "-c", "echo started; while true; do echo tick; sleep 1; done"],
            "env": {"GREETING": "hi"}, "labels": {"team": "infra"}, "restart_policy": "unless-stopped",
            "vcpus": 1, "memory": 64, "cpu_pinning": {"cores": [0]}, "io_limits": {"read_iops": 200, "write_bps": 1048576},
            "tags": ["web"], "start": true
        })))
        .await;
    assert_eq!(code, 201, "{c}");
    assert_eq!(c["status"], "running");
    assert_eq!(c["managed"], true);
    let id = c["id"].as_str().unwrap().to_owned();
    let engine_id = c["engine_id"].as_str().unwrap().to_owned();

    // The engine has the limits.
    let doc = docker_inspect(&engine_id);
    let hc = &doc["HostConfig"];
    assert_eq!(hc["NanoCpus"], 1_000_000_000i64);
    assert_eq!(hc["Memory"], 64 << 20);
    assert_eq!(hc["CpusetCpus"], "0");
    assert_eq!(hc["BlkioDeviceReadIOps"][0]["Rate"], 200);
    assert_eq!(hc["BlkioDeviceWriteBps"][0]["Rate"], 1048576);
    assert_eq!(doc["Config"]["Labels"]["io.libgo.id"], id.as_str());
    assert_eq!(doc["Config"]["Labels"]["team"], "infra");

    // Exec with exit codes and both streams; env reaches the container.
    let (code, r) = d
        .req(
            "POST",
            &format!("/api/v1/containers/{id}/exec"),
            Some(json!({"command": ["sh", "-c", "echo $GREETING; echo oops >&2; exit 7"]})),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (
            r["exit_code"].as_i64(),
            r["stdout"].as_str(),
            r["stderr"].as_str()
        ),
        (Some(7), Some("hi\n"), Some("oops\n"))
    );
    let (_, r) = d
        .req(
            "POST",
            "/api/v1/containers/life/exec",
            Some(json!({"command": ["true"]})),
        )
        .await;
    assert_eq!(r["exit_code"], 0);

    // Interactive exec over a WebSocket: stdin in, output out, exit code last.
    {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let url = format!("ws://localhost/api/v1/containers/{id}/exec?command=sh");
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        ws.send(Message::Binary(
            "echo interactive-$GREETING\nexit 5\n"
                .as_bytes()
                .to_vec()
                .into(),
        ))
        .await
        .unwrap();
        let mut out = Vec::new();
        let reason = loop {
            match tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("exec output")
            {
                Some(Ok(Message::Binary(b))) => out.extend_from_slice(&b),
                Some(Ok(Message::Close(f))) => {
                    break f.map(|f| f.reason.to_string()).unwrap_or_default()
                }
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(String::from_utf8_lossy(&out), "interactive-hi\n");
        assert_eq!(reason, "exit 5");
    }

    // Logs: tail, and follow streams new lines.
    let (code, _, body) = d
        .raw("GET", "/api/v1/containers/life/logs?tail=all", None, &[])
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).starts_with("started\n"));
    {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(
            "http://x/api/v1/containers/life/logs?follow=true&tail=0&timestamps=true",
        )
        .header("host", "x")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
        let mut body = tx.send_request(req).await.unwrap().into_body();
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a followed line")
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
        assert!(text.contains("tick") && text.contains('T'), "{text}");
    }

    // Stats rise while the container burns CPU, pinned to core 0.
    let (_, r) = d
        .req(
            "POST",
            &format!("/api/v1/containers/{id}/exec"),
            Some(json!({"command": ["sh", "-c", "yes > /dev/null & echo $!"]})),
        )
        .await;
    let busy = wait_stats(&d, &id, "cpu_usage > 50", |p| {
        p["cpu_usage"].as_f64().unwrap_or(0.0) > 50.0
    })
    .await;
    println!("container busy: {}", busy["cpu_usage"]);
    assert!(
        busy["cpu_usage"].as_f64().unwrap() <= 110.0,
        "a 1-vCPU quota: {busy}"
    );
    let pids = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/cpuset/docker/{engine_id}/cgroup.procs"
    ))
    .unwrap_or_default();
    let mut pinned = 0;
    for pid in pids.lines() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("Name:") && l.contains("yes"))
        {
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_owned();
            assert_eq!(list, "0", "the busy process runs only on core 0");
            pinned += 1;
        }
    }
    assert_eq!(pinned, 1, "found the busy process ({r})");
    d.req(
        "POST",
        &format!("/api/v1/containers/{id}/exec"),
        Some(json!({"command": ["killall", "yes"]})),
    )
    .await;

    // Live update of resources.
    let (code, u) = d
        .req(
            "PATCH",
            &format!("/api/v1/containers/{id}"),
            Some(json!({"memory": 128, "vcpus": 2})),
        )
        .await;
    assert_eq!(code, 200, "{u}");
    assert_eq!(
        docker_inspect(&engine_id)["HostConfig"]["Memory"],
        128 << 20
    );

    // Pause / unpause, idempotently; stop, restart, kill; delete needs force while running.
    for (action, want) in [
        ("pause", "paused"),
        ("pause", "paused"),
        ("unpause", "running"),
        ("stop", "stopped"),
        ("stop", "stopped"),
        ("start", "running"),
        ("restart", "running"),
        ("kill", "stopped"),
    ] {
        let (code, r) = d
            .req(
                "POST",
                &format!("/api/v1/containers/{id}/{action}"),
                Some(json!({"timeout": 2})),
            )
            .await;
        assert_eq!(
            (code, r["status"].as_str()),
            (200, Some(want)),
            "{action}: {r}"
        );
    }
    let (code, r) = d
        .req("GET", &format!("/api/v1/containers/{id}/stats"), None)
        .await;
    assert_eq!(code, 409, "{r}");
    assert_eq!(
        d.req("POST", &format!("/api/v1/containers/{id}/start"), None)
            .await
            .0,
        200
    );
    let (code, r) = d
        .req("DELETE", &format!("/api/v1/containers/{id}"), None)
        .await;
    assert_eq!(code, 409, "{r}");
    let (code, _) = d
        .req(
            "DELETE",
            &format!("/api/v1/containers/{id}?force=true"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        d.req("GET", &format!("/api/v1/containers/{id}"), None)
            .await
            .0,
        404
    );
    // Bad input is 400, never 500.
    for body in [
        json!({"image": ""}),
        json!({"image": IMAGE, "name": "Bad_Name"}),
        json!({"image": IMAGE, "name": "x"}),
        json!({"image": IMAGE, "restart_policy": "sometimes"}),
        json!({"image": IMAGE, "labels": {"io.libgo.id": "x"}}),
        json!({"image": IMAGE, "cpu_pinning": {"cores": [999]}}),
        json!({"image": IMAGE, "vcpus": 0}),
        json!({"image": IMAGE, "memory": 1}),
        json!({"image": IMAGE, "colour": "red"}),
    ] {
        let (code, r) = d
            .req("POST", "/api/v1/containers", Some(body.clone()))
            .await;
        assert_eq!(code, 400, "{body}: {r}");
    }
    let (code, r) = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(json!({"image": "no-such/image:1", "start": true})),
        )
        .await;
    assert_eq!(code, 404, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_networks_and_volumes() {
    leftovers(&["built", "writer", "reader"]);
    let _engine = engine_lock(false);
    let d = Daemon::start().await;
    let image = "libgo-test/busybox:imgs";
    import_busybox(&d, image).await;
    // Build from a context with a Dockerfile.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {image}\nCOPY hello.txt /hello.txt\nRUN echo built > /built\nCMD [\"cat\", \"/hello.txt\"]\n")).unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "from the context\n").unwrap();
    let tar = ctx.path().join("ctx.tar");
    assert!(std::process::Command::new("tar")
        .arg("-C")
        .arg(ctx.path())
        .arg("-cf")
        .arg(&tar)
        .args(["Dockerfile", "hello.txt"])
        .status()
        .unwrap()
        .success());
    let (code, built) = raw_bytes(
        &d,
        "POST",
        "/api/v1/images/build?tag=libgo-test/built:1",
        std::fs::read(&tar).unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{built}");
    let (code, c) = d
        .req("POST", "/api/v1/containers", Some(json!({"name": "built", "image": "libgo-test/built:1", "command": ["sleep", "300"], "start": true})))
        .await;
    assert_eq!(code, 201, "{c}");
    let (_, r) = d
        .req(
            "POST",
            "/api/v1/containers/built/exec",
            Some(json!({"command": ["cat", "/built", "/hello.txt"]})),
        )
        .await;
    assert_eq!(r["stdout"], "built\nfrom the context\n");
    // A broken Dockerfile fails clearly.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM libgo-test/busybox:imgs\nRUN exit 3\n",
    )
    .unwrap();
    assert!(std::process::Command::new("tar")
        .arg("-C")
        .arg(ctx.path())
        .arg("-cf")
        .arg(&tar)
        .arg("Dockerfile")
        .status()
        .unwrap()
        .success());
    let (code, e) = raw_bytes(
        &d,
        "POST",
        "/api/v1/images/build?tag=libgo-test/broken:1",
        std::fs::read(&tar).unwrap(),
    )
    .await;
    assert_eq!(code, 400, "{e}");

    // Load: a `docker save` tarball comes back as the same image.
    let saved = tempfile::NamedTempFile::new().unwrap();
    assert!(std::process::Command::new("docker")
        .args(["save", "-o"])
        .arg(saved.path())
        .arg("libgo-test/built:1")
        .status()
        .unwrap()
        .success());
    assert!(std::process::Command::new("docker")
        .args(["tag", "libgo-test/built:1", "libgo-test/saved:1"])
        .status()
        .unwrap()
        .success());
    assert!(std::process::Command::new("docker")
        .args(["rmi", "libgo-test/saved:1"])
        .status()
        .unwrap()
        .success());
    let (code, loaded) = raw_bytes(
        &d,
        "POST",
        "/api/v1/images/load",
        std::fs::read(saved.path()).unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{loaded}");
    assert!(loaded["images"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "libgo-test/built:1")));

    // List, inspect, tag, remove.
    let (_, list) = d.req("GET", "/api/v1/images", None).await;
    assert!(list["images"].as_array().unwrap().iter().any(|i| i["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "libgo-test/built:1")));
    let (code, doc) = d
        .req("GET", "/api/v1/images/libgo-test%2Fbuilt:1", None)
        .await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["Config"]["Cmd"], json!(["cat", "/hello.txt"]));
    let (code, t) = d
        .req(
            "POST",
            "/api/v1/images/libgo-test%2Fbuilt:1/tag",
            Some(json!({"image": "libgo-test/retagged:2"})),
        )
        .await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(
        d.req("DELETE", "/api/v1/images/libgo-test%2Fretagged:2", None)
            .await
            .0,
        204
    );
    assert_eq!(
        d.req("GET", "/api/v1/images/libgo-test%2Fretagged:2", None)
            .await
            .0,
        404
    );

    // Pull and push with no registry reachable (a closed port on loopback:
    // nothing leaves this machine): a clear error, in bounded time.
    let t0 = Instant::now();
    let (code, e) = d
        .req(
            "POST",
            "/api/v1/images/pull",
            Some(json!({"image": "127.0.0.1:1/libgo-test/none:1"})),
        )
        .await;
    assert_eq!(
        (code, e["error"]["status"].as_str()),
        (503, Some("BACKEND_UNAVAILABLE")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{e}"
    );
    let (code, _) = d
        .req(
            "POST",
            "/api/v1/images/libgo-test%2Fbuilt:1/tag",
            Some(json!({"image": "127.0.0.1:1/libgo-test/built:1"})),
        )
        .await;
    assert_eq!(code, 200);
    let (code, e) = d
        .req(
            "POST",
            "/api/v1/images/127.0.0.1:1%2Flibgo-test%2Fbuilt:1/push",
            None,
        )
        .await;
    assert_eq!(
        (code, e["error"]["status"].as_str()),
        (503, Some("BACKEND_UNAVAILABLE")),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(120));
    assert_eq!(
        d.req(
            "DELETE",
            "/api/v1/images/127.0.0.1:1%2Flibgo-test%2Fbuilt:1",
            None
        )
        .await
        .0,
        204
    );

    let _ = std::process::Command::new("docker")
        .args(["network", "rm", "libgo-test-net"])
        .output();
    let _ = std::process::Command::new("docker")
        .args(["volume", "rm", "-f", "libgo-test-vol"])
        .output();
    // The engine's predefined networks are its own: 409, not a failure.
    let (code, e) = d
        .req("POST", "/api/v1/networks", Some(json!({"name": "default"})))
        .await;
    assert_eq!(code, 409, "{e}");
    // Networks: create, connect, disconnect, remove.
    let (code, n) = d
        .req(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "libgo-test-net", "internal": true})),
        )
        .await;
    assert_eq!(code, 201, "{n}");
    let (code, n) = d
        .req(
            "POST",
            "/api/v1/networks/libgo-test-net/connect",
            Some(json!({"container": "built"})),
        )
        .await;
    assert_eq!(code, 200, "{n}");
    assert_eq!(n["containers"].as_array().unwrap().len(), 1);
    let (_, c) = d.req("GET", "/api/v1/containers/built", None).await;
    assert!(c["networks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "libgo-test-net"));
    let (code, n) = d
        .req(
            "POST",
            "/api/v1/networks/libgo-test-net/disconnect",
            Some(json!({"container": "built"})),
        )
        .await;
    assert_eq!((code, n["containers"].as_array().unwrap().len()), (200, 0));
    assert_eq!(
        d.req("DELETE", "/api/v1/networks/libgo-test-net", None)
            .await
            .0,
        204
    );
    assert_eq!(
        d.req("GET", "/api/v1/networks/libgo-test-net", None)
            .await
            .0,
        404
    );

    // Volumes: data outlives the container that wrote it.
    let (code, v) = d
        .req(
            "POST",
            "/api/v1/volumes",
            Some(json!({"name": "libgo-test-vol", "labels": {"a": "b"}})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let (code, w) = d
        .req("POST", "/api/v1/containers", Some(json!({"name": "writer", "image": image, "command": ["sh", "-c", "echo kept > /data/f; sleep 300"],
            "mounts": [{"source": "libgo-test-vol", "target": "/data"}], "start": true})))
        .await;
    assert_eq!(code, 201, "{w}");
    assert_eq!(w["mounts"][0]["source"], "libgo-test-vol");
    assert_eq!(
        d.req("DELETE", "/api/v1/containers/writer?force=true", None)
            .await
            .0,
        200
    );
    let (code, r) = d
        .req("POST", "/api/v1/containers", Some(json!({"name": "reader", "image": image, "command": ["sleep", "300"],
            "mounts": [{"source": "libgo-test-vol", "target": "/data", "read_only": true}], "start": true})))
        .await;
    assert_eq!(code, 201, "{r}");
    let (_, out) = d
        .req(
            "POST",
            "/api/v1/containers/reader/exec",
            Some(json!({"command": ["cat", "/data/f"]})),
        )
        .await;
    assert_eq!(out["stdout"], "kept\n");
    let (_, out) = d
        .req(
            "POST",
            "/api/v1/containers/reader/exec",
            Some(json!({"command": ["touch", "/data/g"]})),
        )
        .await;
    assert_ne!(out["exit_code"], 0, "read-only mount");
    assert_eq!(
        d.req("DELETE", "/api/v1/volumes/libgo-test-vol", None)
            .await
            .0,
        409,
        "in use"
    );
    for c in ["reader", "built"] {
        assert_eq!(
            d.req(
                "DELETE",
                &format!("/api/v1/containers/{c}?force=true"),
                None
            )
            .await
            .0,
            200
        );
    }
    let (_, vols) = d.req("GET", "/api/v1/volumes", None).await;
    assert!(vols["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "libgo-test-vol"));
    assert_eq!(
        d.req("DELETE", "/api/v1/volumes/libgo-test-vol", None)
            .await
            .0,
        204
    );
    assert_eq!(
        d.req(
            "DELETE",
            "/api/v1/images/libgo-test%2Fbuilt:1?force=true",
            None
        )
        .await
        .0,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_ownership() {
    leftovers(&["inst-ctr"]);
    let _engine = engine_lock(false);
    let _slot = common::guest_slot().await;
    let mut d = Daemon::start().await;
    let image = "libgo-test/busybox:inst";
    import_busybox(&d, image).await;
    let vm = d.create_fixture_vm("inst-vm", "").await;
    let (code, c) = d
        .req("POST", "/api/v1/instances", Some(json!({"backend": "container", "name": "inst-ctr", "image": image, "command": ["sleep", "300"], "tags": ["mix"]})))
        .await;
    assert_eq!(code, 201, "{c}");
    let (_, all) = d.req("GET", "/api/v1/instances", None).await;
    let kinds: Vec<(&str, &str)> = all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["backend"].as_str().unwrap()))
        .collect();
    assert!(
        kinds.contains(&("inst-vm", "vm")) && kinds.contains(&("inst-ctr", "container")),
        "{kinds:?}"
    );
    let (_, only) = d
        .req("GET", "/api/v1/instances?backend=container", None)
        .await;
    assert_eq!(only["total_count"], 1);
    assert_eq!(
        only["instances"][0]["link"],
        format!("/api/v1/containers/{}", c["id"].as_str().unwrap())
    );
    assert_eq!(
        d.req("GET", "/api/v1/instances?backend=lxc", None).await.0,
        400
    );
    // Power actions on either kind.
    for id in [vm["id"].as_str().unwrap(), c["id"].as_str().unwrap()] {
        let (code, r) = d
            .req("POST", &format!("/api/v1/instances/{id}/start"), None)
            .await;
        assert_eq!((code, r["status"].as_str()), (200, Some("running")), "{r}");
        let (code, r) = d
            .req("POST", &format!("/api/v1/instances/{id}/pause"), None)
            .await;
        assert_eq!((code, r["status"].as_str()), (200, Some("paused")), "{r}");
        let (code, r) = d
            .req("POST", &format!("/api/v1/instances/{id}/kill"), None)
            .await;
        assert_eq!((code, r["status"].as_str()), (200, Some("stopped")), "{r}");
    }
    let (_, stopped) = d.req("GET", "/api/v1/instances?status=stopped", None).await;
    assert_eq!(stopped["total_count"], 2);

    // A container made behind libgo's back: hidden, read-only, adoptable.
    let name = format!("foreign-{}", std::process::id());
    let out = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &name, image, "sleep", "300"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (_, mine) = d.req("GET", "/api/v1/containers", None).await;
    assert!(!mine["containers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == name.as_str()));
    let (_, every) = d.req("GET", "/api/v1/containers?all=true", None).await;
    let foreign = every["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap()
        .clone();
    assert_eq!(foreign["managed"], false);
    let (code, e) = d
        .req("POST", &format!("/api/v1/containers/{name}/stop"), None)
        .await;
    assert_eq!(
        (code, e["error"]["status"].as_str()),
        (403, Some("FORBIDDEN")),
        "{e}"
    );
    let (code, a) = d
        .req("POST", &format!("/api/v1/containers/{name}/adopt"), None)
        .await;
    assert_eq!((code, a["managed"].as_bool()), (200, Some(true)), "{a}");
    assert_eq!(a["id"], foreign["id"], "the id stays");
    // The agent restarts: its containers and adoptions are found again.
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.spawn().await;
    let (_, mine) = d.req("GET", "/api/v1/containers", None).await;
    let names: Vec<&str> = mine["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"inst-ctr") && names.contains(&name.as_str()),
        "{names:?}"
    );
    let (code, r) = d
        .req("POST", &format!("/api/v1/containers/{name}/kill"), None)
        .await;
    assert_eq!((code, r["status"].as_str()), (200, Some("stopped")), "{r}");
    for c in [name.as_str(), "inst-ctr"] {
        assert_eq!(
            d.req(
                "DELETE",
                &format!("/api/v1/containers/{c}?force=true"),
                None
            )
            .await
            .0,
            200
        );
    }
}

/// Tests that use the shared engine hold this lock shared; the test that
/// stops and starts the engine holds it exclusively.
fn engine_lock(exclusive: bool) -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/libgo-test-docker.lock")
        .unwrap();
    let arg = if exclusive {
        nix::fcntl::FlockArg::LockExclusive
    } else {
        nix::fcntl::FlockArg::LockShared
    };
    nix::fcntl::Flock::lock(f, arg).map_err(|(_, e)| e).unwrap()
}

const ENGINE_SOCKET: &str = "/var/run/docker.sock";

fn engine_answers() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn stop_engine() {
    let pid: i32 = std::fs::read_to_string("/var/run/docker.pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        || std::path::Path::new(ENGINE_SOCKET).exists()
    {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// The engine outlives this test on purpose (the suite stops it at the end).
#[allow(clippy::zombie_processes)]
fn start_engine() {
    let log = std::fs::File::create("/tmp/libgo-test-dockerd.log").unwrap();
    std::process::Command::new("setsid")
        .arg("dockerd")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("dockerd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine_answers() {
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_going_away_is_503_for_containers_only() {
    leftovers(&["survivor"]);
    let _engine = engine_lock(true);
    let d = Daemon::start().await;
    let image = "libgo-test/busybox:gone";
    import_busybox(&d, image).await;
    let (code, c) = d
        .req("POST", "/api/v1/containers", Some(json!({"name": "survivor", "image": image, "command": ["sleep", "300"], "start": true})))
        .await;
    assert_eq!(code, 201, "{c}");
    assert_eq!(d.req("POST", "/api/v1/vms", Some(json!({"name": "still-here", "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}))).await.0, 201);

    stop_engine();
    for path in [
        "/api/v1/containers",
        "/api/v1/containers/survivor",
        "/api/v1/images",
        "/api/v1/networks",
        "/api/v1/volumes",
    ] {
        let (code, e) = d.req("GET", path, None).await;
        assert_eq!(
            (code, e["error"]["status"].as_str()),
            (503, Some("BACKEND_UNAVAILABLE")),
            "{path}: {e}"
        );
    }
    let (code, e) = d
        .req("POST", "/api/v1/containers", Some(json!({"image": image})))
        .await;
    assert_eq!(code, 503, "{e}");
    // VMs do not care; the instance list says why containers are missing.
    assert_eq!(d.req("GET", "/api/v1/vms/still-here", None).await.0, 200);
    let (code, inst) = d.req("GET", "/api/v1/instances", None).await;
    assert_eq!(code, 200);
    assert_eq!(inst["total_count"], 1);
    assert!(
        inst["containers_error"]
            .as_str()
            .unwrap()
            .contains("not available"),
        "{inst}"
    );

    // Back again: found, with its current state, without restarting libgod.
    start_engine();
    let (code, c) = d.req("GET", "/api/v1/containers/survivor", None).await;
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["status"], "stopped", "dockerd's restart stopped it: {c}");
    let (code, r) = d
        .req("POST", "/api/v1/containers/survivor/start", None)
        .await;
    assert_eq!((code, r["status"].as_str()), (200, Some("running")), "{r}");
    assert_eq!(
        d.req("DELETE", "/api/v1/containers/survivor?force=true", None)
            .await
            .0,
        200
    );
}

/// Ids that would leave their path in the engine's API (`..`, encoded
/// slashes, `?`) are refused before anything reaches the engine: a foreign
/// container stays untouched, and none of it is a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_cannot_escape_their_engine_path() {
    leftovers(&["escape-victim"]);
    let _engine = engine_lock(false);
    let d = Daemon::start().await;
    let image = "libgo-test/busybox:escape";
    import_busybox(&d, image).await;
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            "escape-victim",
            image,
            "sleep",
            "300",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attempts: [(&str, &str, Option<Value>); 9] = [
        (
            "DELETE",
            "/api/v1/volumes/..%2fcontainers%2fescape-victim?force=true",
            None,
        ),
        ("GET", "/api/v1/volumes/..%2f..%2fcontainers%2fjson", None),
        (
            "DELETE",
            "/api/v1/networks/..%2fcontainers%2fescape-victim",
            None,
        ),
        (
            "GET",
            "/api/v1/networks/..%2fcontainers%2fescape-victim%2fjson",
            None,
        ),
        (
            "POST",
            "/api/v1/images/..%2fcontainers%2fescape-victim%2fkill%3F/tag",
            Some(json!({"image": "x:y"})),
        ),
        (
            "DELETE",
            "/api/v1/images/..%2fcontainers%2fescape-victim?force=true",
            None,
        ),
        (
            "GET",
            "/api/v1/images/a%2f..%2f..%2fcontainers%2fjson",
            None,
        ),
        (
            "POST",
            "/api/v1/images/pull",
            Some(json!({"image": "../containers/escape-victim/kill?"})),
        ),
        ("POST", "/api/v1/containers/..%2fescape-victim/stop", None),
    ];
    for (method, path, body) in attempts {
        let (code, v) = d.req(method, path, body).await;
        assert!(code == 400 || code == 404, "{method} {path}: {code} {v}");
        assert!(v["error"]["message"].is_string(), "{method} {path}: {v}");
    }
    let state = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", "escape-victim"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "true");
    leftovers(&["escape-victim"]);
}
