//! Admission control on a real daemon: starts, live changes, creates and
//! containers that would take the host past its limits are refused with
//! 409 INSUFFICIENT_CAPACITY and their figures, and leave nothing behind;
//! the figures are at `/api/v1/nodes/{node}/resources`.

mod common;

use std::io::Write;
use std::path::Path;

use common::{guest_slot, processes_carrying, Daemon, BOOT, READY};
use serde_json::{json, Value};

/// `MemTotal` of this host, MiB.
fn host_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024
}

fn host_cpus() -> u64 {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    online
        .trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// A config file whose only keys are `[capacity]` ones.
fn capacity_config(body: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("lgcap")
        .suffix(".toml")
        .tempfile_in("/tmp")
        .unwrap();
    writeln!(f, "[capacity]\n{body}").unwrap();
    f
}

/// The one `details` entry of a 409 INSUFFICIENT_CAPACITY.
fn shortfall(code: u16, body: &Value) -> Value {
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["status"], "INSUFFICIENT_CAPACITY", "{body}");
    let details = body["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{body}");
    details[0].clone()
}

async fn start(d: &Daemon, id: &str) -> (u16, Value) {
    d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
        .await
}

async fn status(d: &Daemon, id: &str) -> String {
    let (code, vm) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{vm}");
    vm["status"].as_str().unwrap().to_owned()
}

/// A refused start left the VM stopped, with no QEMU and no run files.
async fn nothing_left(d: &Daemon, id: &str) {
    assert_eq!(status(d, id).await, "stopped");
    let run = d.run_dir().join("vms").join(id);
    for f in ["qmp.sock", "console.sock", "qemu.pid"] {
        assert!(!run.join(f).exists(), "{f} left behind");
    }
    assert!(processes_carrying(id).is_empty(), "a QEMU runs for {id}");
}

async fn resources(d: &Daemon) -> Value {
    let (code, r) = d.req("GET", "/api/v1/nodes/self/resources", None).await;
    assert_eq!(code, 200, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_larger_than_the_host_is_refused_at_start_and_a_disk_larger_than_the_storage_at_create(
) {
    let d = Daemon::start().await;
    let cmdline = common::fixture_cmdline();
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "huge", "vcpus": 1, "memory": 900000, "disk_size": 1,
                "base_image": "base.qcow2",
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
            })),
        )
        .await;
    assert_eq!(code, 201, "a stopped VM holds no memory: {vm}");
    let id = vm["id"].as_str().unwrap().to_owned();

    let (code, r) = start(&d, &id).await;
    let s = shortfall(code, &r);
    let limit = host_memory_mib() - 1024;
    assert_eq!(
        s,
        json!({"reason": "INSUFFICIENT_CAPACITY", "resource": "memory", "unit": "MiB",
               "limit": limit, "requested": 900000, "available": limit}),
        "{r}"
    );
    nothing_left(&d, &id).await;
    // The job says why, too.
    let (code, jobs) = d.req("GET", "/api/v1/jobs?type=vm.start", None).await;
    assert_eq!(code, 200, "{jobs}");
    assert!(jobs.to_string().contains("Insufficient capacity"), "{jobs}");

    // The figures: this node by name or as `self`; another node is 404.
    let r = resources(&d).await;
    assert_eq!(r["node"], d.node.as_str());
    assert_eq!(r["host"]["memory_mib"], host_memory_mib());
    assert_eq!(r["host"]["cpus"], host_cpus());
    assert_eq!(r["limits"]["memory_mib"], limit);
    assert_eq!(r["limits"]["vcpus"], host_cpus() * 4);
    assert_eq!(r["limits"]["reserved_memory_mib"], 1024);
    assert_eq!(
        (
            r["committed"]["memory_mib"].as_u64(),
            r["committed"]["vms"].as_u64()
        ),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["available"]["memory_mib"], limit);
    assert!(r["available"]["disk_bytes"].as_u64().unwrap() > 0, "{r}");
    let (code, by_name) = d
        .req("GET", &format!("/api/v1/nodes/{}/resources", d.node), None)
        .await;
    assert_eq!((code, &by_name["node"]), (200, &r["node"]));
    let (code, e) = d
        .req("GET", "/api/v1/nodes/elsewhere/resources", None)
        .await;
    assert_eq!(
        (code, e["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let (code, doc) = d.req("GET", "/openapi.json", None).await;
    assert_eq!(code, 200);
    let op = &doc["paths"]["/api/v1/nodes/{node}/resources"]["get"];
    assert!(op["responses"]["200"].is_object(), "{op}");
    assert!(doc["components"]["schemas"]["NodeResources"].is_object());

    // A disk the storage cannot hold at its full size is refused at create,
    // before anything is made.
    let free = r["available"]["disk_bytes"].as_u64().unwrap();
    let gib = free / (1 << 30) + 10;
    let (code, body) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({"name": "vast", "vcpus": 1, "memory": 64, "disk_size": gib, "base_image": "base.qcow2"})),
        )
        .await;
    let s = shortfall(code, &body);
    assert_eq!(
        (
            s["resource"].as_str(),
            s["unit"].as_str(),
            s["requested"].as_u64()
        ),
        (Some("disk"), Some("bytes"), Some(gib << 30)),
        "{body}"
    );
    let (_, list) = d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 1, "only `huge`: {list}");
    let dirs = std::fs::read_dir(d.state_dir().join("vms"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1, "no directory made for the refused create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_starts_past_the_limit_one_passes_and_live_growth_is_checked() {
    let _slot = guest_slot().await;
    // Room for 200 MiB and 1 vCPU of guests.
    let room = 200;
    let cfg = capacity_config(&format!(
        "reserved_memory_mib = {}\nvcpu_overcommit = {}",
        host_memory_mib() - room,
        1.5 / host_cpus() as f64
    ));
    let d = Daemon::start_with(&["--config", cfg.path().to_str().unwrap()]).await;
    let r = resources(&d).await;
    assert_eq!(
        (
            r["limits"]["memory_mib"].as_u64(),
            r["limits"]["vcpus"].as_u64()
        ),
        (Some(room), Some(1)),
        "{r}"
    );
    let a = d.create_fixture_vm("cap-a", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = d.create_fixture_vm("cap-b", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two vCPUs do not fit in one, whatever the memory.
    let cmdline = common::fixture_cmdline();
    let (code, wide) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "wide", "vcpus": 2, "memory": 64, "disk_size": 1, "base_image": "base.qcow2",
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
            })),
        )
        .await;
    assert_eq!(code, 201, "{wide}");
    let wide = wide["id"].as_str().unwrap().to_owned();
    let (code, body) = start(&d, &wide).await;
    let s = shortfall(code, &body);
    assert_eq!(
        s,
        json!({"reason": "INSUFFICIENT_CAPACITY", "resource": "vcpus", "unit": "vcpus",
               "limit": 1, "requested": 2, "available": 1})
    );
    nothing_left(&d, &wide).await;

    // 128 + 128 MiB > 200: of two starts sent at once, exactly one passes.
    let (ra, rb) = tokio::join!(start(&d, &a), start(&d, &b));
    let (won, lost, refused) = match (ra.0, rb.0) {
        (200, 409) => (&a, &b, rb.1),
        (409, 200) => (&b, &a, ra.1),
        other => panic!(
            "expected one 200 and one 409, got {other:?}: {} {}",
            ra.1, rb.1
        ),
    };
    let s = shortfall(409, &refused);
    assert_eq!(
        (
            s["resource"].as_str(),
            s["requested"].as_u64(),
            s["available"].as_u64(),
            s["limit"].as_u64()
        ),
        (Some("memory"), Some(128), Some(room - 128), Some(room)),
        "{refused}"
    );
    nothing_left(&d, lost).await;
    d.wait_marker(won, READY, 1, BOOT).await;
    let r = resources(&d).await;
    assert_eq!(
        (
            r["committed"]["memory_mib"].as_u64(),
            r["committed"]["vcpus"].as_u64(),
            r["committed"]["vms"].as_u64()
        ),
        (Some(128), Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["available"]["memory_mib"], room - 128);

    // A running VM may not grow past the room; shrinking is always fine.
    let (code, body) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{won}/memory"),
            Some(json!({"memory": 256})),
        )
        .await;
    let s = shortfall(code, &body);
    assert_eq!(
        (s["resource"].as_str(), s["requested"].as_u64()),
        (Some("memory"), Some(256))
    );
    let (code, body) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{won}/memory"),
            Some(json!({"memory": 96})),
        )
        .await;
    assert_eq!(
        (code, body["applies"].as_str()),
        (200, Some("live")),
        "{body}"
    );

    // Once the first stops, the other fits.
    let (code, body) = d
        .req("POST", &format!("/api/v1/vms/{won}/poweroff"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = start(&d, lost).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(resources(&d).await["committed"]["memory_mib"], 128);
    let (code, _) = d
        .req("POST", &format!("/api/v1/vms/{lost}/poweroff"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(resources(&d).await["committed"]["memory_mib"], 0);
}

/// A POST of a tarball.
async fn raw_bytes(d: &Daemon, path: &str, body: Vec<u8>) -> (u16, Value) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method("POST")
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

/// Needs dockerd on /var/run/docker.sock, like tests/containers.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_with_a_memory_limit_past_the_host_is_refused() {
    assert!(
        Path::new("/var/run/docker.sock").exists(),
        "dockerd must run (scripts/test.sh starts one)"
    );
    let d = Daemon::start().await;
    let image = "libgo-test/capacity:1";
    let tar = common::busybox_rootfs_tar(&["sh", "sleep"]);
    let (code, body) = raw_bytes(&d, &format!("/api/v1/images/import?image={image}"), tar).await;
    assert_eq!(code, 201, "{body}");
    let name = format!("cap-{}", std::process::id());
    let create = |memory: u64, name: String| json!({"name": name, "image": image, "command": ["sleep", "300"], "memory": memory, "start": true});
    let (code, body) = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(create(900000, name.clone())),
        )
        .await;
    let s = shortfall(code, &body);
    let limit = host_memory_mib() - 1024;
    assert_eq!(
        (
            s["resource"].as_str(),
            s["requested"].as_u64(),
            s["limit"].as_u64()
        ),
        (Some("memory"), Some(900000), Some(limit)),
        "{body}"
    );
    let (code, _) = d
        .req("GET", &format!("/api/v1/containers/{name}"), None)
        .await;
    assert_eq!(code, 404, "nothing was made");

    // One that fits runs, and counts.
    let before = resources(&d).await["committed"]["memory_mib"]
        .as_u64()
        .unwrap();
    let (code, body) = d
        .req("POST", "/api/v1/containers", Some(create(64, name.clone())))
        .await;
    assert_eq!(code, 201, "{body}");
    let r = resources(&d).await;
    assert_eq!(
        r["committed"]["memory_mib"].as_u64(),
        Some(before + 64),
        "{r}"
    );
    // Raising its limit past the host's is refused too.
    let (code, body) = d
        .req(
            "PUT",
            &format!("/api/v1/containers/{name}/resources"),
            Some(json!({"memory": 900000})),
        )
        .await;
    assert_eq!(shortfall(code, &body)["resource"], "memory");
    let (code, body) = d
        .req(
            "DELETE",
            &format!("/api/v1/containers/{name}?force=true"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let _ = d
        .req("DELETE", &format!("/api/v1/images/{image}"), None)
        .await;
}
