//! The API's contract without booting guests: bad input gets the right 4xx
//! and the conventions' error body, create/delete on real qemu-img, lists,
//! access control, OpenAPI, rollback of a failed create.

mod common;

use common::Daemon;
use serde_json::{json, Value};

fn assert_error(code: u16, body: &Value, want: u16, status: &str) {
    assert_eq!(code, want, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], want, "{body}");
    assert_eq!(e["status"], status, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["details"].is_array(), "{body}");
    assert!(
        e["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
}

fn vm_body() -> Value {
    json!({"vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "base.qcow2"})
}

fn with(field: &str, v: Value) -> Value {
    let mut b = vm_body();
    b[field] = v;
    b
}

#[tokio::test]
async fn bad_requests_get_exact_4xx_with_the_error_body() {
    let d = Daemon::start().await;
    let outside = d.root.path().join("outside.qcow2");
    std::fs::copy(d.image_dir().join("base.qcow2"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, d.image_dir().join("escape.qcow2")).unwrap();
    std::fs::create_dir(d.image_dir().join("subdir")).unwrap();
    let (_, existing) = d
        .req("POST", "/api/v1/vms", Some(with("name", json!("taken"))))
        .await;
    let existing_id = existing["id"].as_str().unwrap().to_owned();

    let mut no_vcpus = vm_body();
    no_vcpus.as_object_mut().unwrap().remove("vcpus");
    let raw_cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/vms",
            Some("{not json".into()),
            400,
            "INVALID_INPUT",
        ),
        ("POST", "/api/v1/vms", Some("".into()), 400, "INVALID_INPUT"),
        (
            "POST",
            "/api/v1/vms",
            Some("[]".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(no_vcpus.to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("vcpus", json!("two")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("vcpus", json!(0)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("vcpus", json!(-1)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("vcpus", json!(100000)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("memory", json!(0)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("memory", json!(1u64 << 40)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("memory", json!(1.5)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("disk_size", json!(0)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("disk_size", json!(-5)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("disk_size", json!(1u64 << 50)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("disk_sise", json!(1)).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("name", json!("Not_A_Label")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("name", json!("-bad")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("name", json!("a".repeat(64))).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("name", json!("taken")).to_string()),
            409,
            "RESOURCE_CONFLICT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("cpu_pinning", json!({"cores": [4096]})).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("io_limits", json!({"iopz": 5})).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("clone", json!("deep")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!("missing.qcow2")).to_string()),
            404,
            "NOT_FOUND",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!("../outside.qcow2")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!("escape.qcow2")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!("/etc/passwd")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!(outside.to_str().unwrap())).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!("subdir")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!(".")).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("boot", json!({"kernel": "nope"})).to_string()),
            404,
            "NOT_FOUND",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("boot", json!({"kernel": "/etc/hostname"})).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some("x".repeat(2 << 20)),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        ("GET", "/api/v1/vms/not_a_uuid!", None, 400, "INVALID_INPUT"),
        (
            "GET",
            "/api/v1/vms/123e4567-e89b-12d3-a456-426614174000",
            None,
            404,
            "NOT_FOUND",
        ),
        ("GET", "/api/v1/vms/no-such-vm", None, 404, "NOT_FOUND"),
        (
            "GET",
            "/api/v1/vms/no-such-vm/config",
            None,
            404,
            "NOT_FOUND",
        ),
        ("GET", "/api/v1/vms/NOPE/status", None, 400, "INVALID_INPUT"),
        (
            "POST",
            "/api/v1/vms/no-such-vm/start",
            None,
            404,
            "NOT_FOUND",
        ),
        ("POST", "/api/v1/vms/taken/explode", None, 404, "NOT_FOUND"),
        (
            "POST",
            "/api/v1/vms/taken/stop",
            Some("{\"timeout\": \"soon\"}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms/taken/stop",
            Some("{\"timeout\": 99999}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms/taken/stop",
            Some("{\"force\": true}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms/taken/reboot",
            None,
            409,
            "RESOURCE_CONFLICT",
        ),
        (
            "POST",
            "/api/v1/vms/taken/reset",
            None,
            409,
            "RESOURCE_CONFLICT",
        ),
        (
            "POST",
            "/api/v1/vms/taken/pause",
            None,
            409,
            "RESOURCE_CONFLICT",
        ),
        (
            "POST",
            "/api/v1/vms/taken/resume",
            None,
            409,
            "RESOURCE_CONFLICT",
        ),
        ("DELETE", "/api/v1/vms/bad!id", None, 400, "INVALID_INPUT"),
        (
            "PUT",
            "/api/v1/vms/taken/cpu",
            Some("{\"vcpus\": 0}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/cpu",
            Some("{\"cpu_pinning\": {\"cores\": []}}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/cpu",
            Some("{\"cpu_pinning\": {\"cores\": [0], \"emulator_cores\": [9999]}}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/cpu",
            Some("{\"cpus\": 2}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/memory",
            Some("{}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/memory",
            Some("{\"memory\": 0}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/memory",
            Some("{\"memory\": -128}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/disk",
            Some("{\"disk_size\": 0}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/disk",
            Some("{\"io_limits\": {\"iops\": 1}}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PUT",
            "/api/v1/vms/taken/disk",
            Some("{\"io_limits\": {\"read_iops\": 99999999999}}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PATCH",
            "/api/v1/vms/taken",
            Some("{\"status\": \"crashed\"}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PATCH",
            "/api/v1/vms/taken",
            Some("{\"status\": \"flying\"}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PATCH",
            "/api/v1/vms/taken",
            Some("{\"id\": \"x\"}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PATCH",
            "/api/v1/vms/taken",
            Some("{\"tags\": [\"a,b\"]}".into()),
            400,
            "INVALID_INPUT",
        ),
        (
            "PATCH",
            "/api/v1/vms/nope-x",
            Some("{}".into()),
            404,
            "NOT_FOUND",
        ),
        (
            "GET",
            "/api/v1/vms/taken/performance",
            None,
            409,
            "RESOURCE_CONFLICT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("io_limits", json!({"write_bps": 1})).to_string()),
            400,
            "INVALID_INPUT",
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(with("network", json!({"mode": "bridge"})).to_string()),
            400,
            "INVALID_INPUT",
        ),
        ("GET", "/api/v1/vms?limit=0", None, 400, "INVALID_INPUT"),
        ("GET", "/api/v1/vms?limit=201", None, 400, "INVALID_INPUT"),
        ("GET", "/api/v1/vms?limit=abc", None, 400, "INVALID_INPUT"),
        (
            "GET",
            "/api/v1/vms?status=sleeping",
            None,
            400,
            "INVALID_INPUT",
        ),
        (
            "GET",
            "/api/v1/vms?page_token=%%%",
            None,
            400,
            "INVALID_INPUT",
        ),
        ("GET", "/api/v1/vms?sort=size", None, 400, "INVALID_INPUT"),
        ("GET", "/api/v1/jobs/not-a-uuid", None, 400, "INVALID_INPUT"),
        (
            "GET",
            "/api/v1/jobs/123e4567-e89b-12d3-a456-426614174000",
            None,
            404,
            "NOT_FOUND",
        ),
        ("GET", "/api/v1/nothing-here", None, 404, "NOT_FOUND"),
        ("PUT", "/api/v1/vms", None, 405, "METHOD_NOT_ALLOWED"),
    ];
    for (method, path, body, want, status) in raw_cases {
        let (code, _, bytes) = d.raw(method, path, body.clone(), &[]).await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        println!("{method} {path} -> {code} {}", v["error"]["message"]);
        assert_error(code, &v, want, status);
    }
    // Nothing half-created: only the one good VM exists, and only its disk.
    let (_, list) = d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 1, "{list}");
    let dirs: Vec<_> = std::fs::read_dir(d.state_dir().join("vms"))
        .unwrap()
        .collect();
    assert_eq!(dirs.len(), 1);
    assert!(d
        .state_dir()
        .join("vms")
        .join(&existing_id)
        .join("root.qcow2")
        .exists());
    // The daemon survived all of it.
    assert_eq!(d.req("GET", "/health", None).await.0, 200);
}

#[tokio::test]
async fn create_clones_and_resizes_and_delete_removes_everything() {
    let d = Daemon::start().await;
    // Linked clone: backed by the base image, grown to 3 GiB.
    let (code, vm) = d
        .req("POST", "/api/v1/vms", Some(json!({
            "vcpus": 2, "memory": 256, "disk_size": 3, "base_image": "base.qcow2", "tags": ["dev"],
            "cpu_pinning": {"cores": [0]}, "io_limits": {"iops": 100}
        })))
        .await;
    assert_eq!(code, 201, "{vm}");
    assert_eq!(vm["status"], "stopped");
    assert_eq!(vm["vcpus"], 2);
    assert_eq!(vm["memory"], 256);
    assert_eq!(vm["disk_size"], 3);
    assert!(vm["name"].as_str().unwrap().starts_with("base-"), "{vm}");
    assert!(uuid::Uuid::parse_str(vm["id"].as_str().unwrap()).is_ok());
    assert!(uuid::Uuid::parse_str(vm["job_id"].as_str().unwrap()).is_ok());
    let mac = vm["mac_address"].as_str().unwrap();
    assert!(mac.starts_with("52:54:00:") && mac.len() == 17, "{mac}");
    let disk = std::path::PathBuf::from(vm["disk_file"].as_str().unwrap());
    let info = qemu_img_info(&disk);
    assert_eq!(info["virtual-size"], 3u64 << 30);
    assert_eq!(info["format"], "qcow2");
    assert!(
        info["backing-filename"]
            .as_str()
            .unwrap()
            .ends_with("base.qcow2"),
        "{info}"
    );

    // Full copy: no backing file.
    let (code, full) = d
        .req("POST", "/api/v1/vms", Some(json!({
            "name": "full", "vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "base.qcow2", "clone": "full"
        })))
        .await;
    assert_eq!(code, 201, "{full}");
    let info = qemu_img_info(std::path::Path::new(full["disk_file"].as_str().unwrap()));
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_eq!(info["virtual-size"], 1u64 << 30);

    // Smaller than the base is refused (the fixture base is 64 MiB, so make
    // a 2 GiB base to test against).
    let big = d.image_dir().join("big.qcow2");
    assert!(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&big)
        .arg("2G")
        .status()
        .unwrap()
        .success());
    let (code, body) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(with("base_image", json!("big.qcow2"))),
        )
        .await;
    assert_error(code, &body, 400, "INVALID_INPUT");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("smaller"),
        "{body}"
    );

    // A stopped VM's disk grows with qemu-img; it never shrinks.
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{}/disk", full["id"].as_str().unwrap()),
            Some(json!({"disk_size": 2})),
        )
        .await;
    assert_eq!((code, r["applies"].as_str()), (200, Some("live")), "{r}");
    let info = qemu_img_info(std::path::Path::new(full["disk_file"].as_str().unwrap()));
    assert_eq!(info["virtual-size"], 2u64 << 30);
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{}/disk", full["id"].as_str().unwrap()),
            Some(json!({"disk_size": 1})),
        )
        .await;
    // A valid size that the disk's current size rules out: a conflict.
    assert_error(code, &r, 409, "RESOURCE_CONFLICT");
    // Changes to a stopped VM wait for its next start, and say so.
    let (code, r) = d
        .req(
            "PATCH",
            "/api/v1/vms/full",
            Some(json!({"vcpus": 2, "memory": 256, "tags": ["x"], "io_limits": {"iops": 10}})),
        )
        .await;
    assert_eq!(
        (code, r["applies"].as_str()),
        (200, Some("next_start")),
        "{r}"
    );
    assert_eq!(
        (r["vcpus"].as_u64(), r["memory"].as_u64()),
        (Some(2), Some(256))
    );
    let (_, again) = d.req("GET", "/api/v1/vms/full", None).await;
    assert_eq!(again["tags"], json!(["x"]));
    assert_eq!(again["io_limits"]["iops"], 10);
    let (_, res) = d.req("GET", "/api/v1/vms/full/resources", None).await;
    assert_eq!(res["disk"]["size_gib"], 2);
    assert!(res["cpu"].get("usage_percent").is_none());

    // Config, status, get by id and by name.
    let id = vm["id"].as_str().unwrap();
    let name = vm["name"].as_str().unwrap();
    let (code, cfg) = d
        .req("GET", &format!("/api/v1/vms/{name}/config"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(cfg["cpu_pinning"]["cores"], json!([0]));
    assert_eq!(cfg["io_limits"]["iops"], 100);
    let (code, st) = d
        .req("GET", &format!("/api/v1/vms/{id}/status"), None)
        .await;
    assert_eq!((code, st["status"].as_str()), (200, Some("stopped")));
    let (_, by_name) = d.req("GET", &format!("/api/v1/vms/{name}"), None).await;
    assert_eq!(by_name["id"], vm["id"]);

    // Every mutating call is a job.
    let (code, job) = d
        .req(
            "GET",
            &format!("/api/v1/jobs/{}", vm["job_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(job["type"], "vm.create");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["target"], format!("/api/v1/vms/{id}"));

    // Delete: 200 with the disk file, then 404; nothing left on disk.
    let (code, del) = d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{del}");
    assert_eq!(del["status"], "deleted");
    assert_eq!(del["disk_file"], vm["disk_file"]);
    assert!(!disk.exists());
    assert!(!d.state_dir().join("vms").join(id).exists());
    let (code, body) = d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await;
    assert_error(code, &body, 404, "NOT_FOUND");
    // The base image is untouched.
    assert!(d.image_dir().join("base.qcow2").exists());
}

fn qemu_img_info(path: &std::path::Path) -> Value {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn lists_filter_and_page_with_stable_cursors() {
    let d = Daemon::start().await;
    let mut names = Vec::new();
    for i in 0..7 {
        let name = format!("vm-{i}");
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!([])
        };
        let mut body = with("name", json!(name));
        body["tags"] = tags;
        assert_eq!(d.req("POST", "/api/v1/vms", Some(body)).await.0, 201);
        names.push(name);
    }
    // Walk pages of 3 by name, deleting an already-seen VM and creating a
    // new one mid-walk: every VM that existed throughout appears exactly once.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/vms?limit=3&sort=name&page_token={t}"),
            None => "/api/v1/vms?limit=3&sort=name".to_owned(),
        };
        let (code, page) = d.req("GET", &path, None).await;
        assert_eq!(code, 200, "{page}");
        for vm in page["vms"].as_array().unwrap() {
            seen.push(vm["name"].as_str().unwrap().to_owned());
        }
        pages += 1;
        if pages == 1 {
            assert_eq!(d.req("DELETE", "/api/v1/vms/vm-0", None).await.0, 200);
            assert_eq!(
                d.req("POST", "/api/v1/vms", Some(with("name", json!("aaa-new"))))
                    .await
                    .0,
                201
            );
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    for n in &names[1..] {
        assert_eq!(
            seen.iter().filter(|s| *s == n).count(),
            1,
            "{n} in {seen:?}"
        );
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);

    let (_, even) = d.req("GET", "/api/v1/vms?tag=even", None).await;
    assert_eq!(even["total_count"], 3, "{even}"); // vm-2, vm-4, vm-6
    let (_, one) = d.req("GET", "/api/v1/vms?name=vm-3", None).await;
    assert_eq!(one["vms"][0]["name"], "vm-3");
    let (_, stopped) = d
        .req("GET", "/api/v1/vms?status=stopped&limit=200", None)
        .await;
    assert_eq!(stopped["total_count"], 7);
    let (_, running) = d.req("GET", "/api/v1/vms?status=running", None).await;
    assert_eq!(running["total_count"], 0);
    let (_, desc) = d.req("GET", "/api/v1/vms?sort=-name&limit=1", None).await;
    assert_eq!(desc["vms"][0]["name"], "vm-6");
}

#[tokio::test]
async fn a_failed_create_leaves_no_file_no_row() {
    // qemu-img that works except for `resize`: the clone is made, then the
    // resize fails, and the rollback must remove the clone and the row.
    let (_d0, wrapper) = qemu_img_wrapper("echo 'injected resize failure' >&2; exit 1");
    let d = Daemon::start_with(&["--qemu-img", wrapper.to_str().unwrap()]).await;
    let (code, body) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some({
                let mut b = with("name", json!("doomed"));
                b["clone"] = json!("full");
                b
            }),
        )
        .await;
    assert_error(code, &body, 500, "INTERNAL_SERVER_ERROR");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resize"),
        "{body}"
    );
    let (_, list) = d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 0);
    assert_eq!(
        std::fs::read_dir(d.state_dir().join("vms"))
            .unwrap()
            .count(),
        0
    );
    // The name is free again, and the failure was recorded as a failed job.
    let (_, jobs) = d.req("GET", "/api/v1/jobs", None).await;
    assert_eq!(jobs["jobs"][0]["state"], "failed", "{jobs}");
    assert_eq!(jobs["jobs"][0]["type"], "vm.create");
}

#[tokio::test]
async fn only_root_and_the_libgo_group_may_use_the_socket() {
    // A world-writable socket, so that an unprivileged peer can connect at
    // all: the refusal must then come from the peer-credential check.
    let d = Daemon::start_with(&["--socket-mode", "0666"]).await;
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         s.sendall(b'GET /api/v1/vms HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         print(s.recv(4096).decode().split('\\r\\n')[0])\n",
        d.socket.to_str().unwrap()
    );
    let mode = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o666
    );
    // The temp dir must be traversable by nobody.
    std::fs::set_permissions(
        d.root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("403"),
        "nobody got: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Root is an admin; health needs no auth at all.
    assert_eq!(d.req("GET", "/api/v1/vms", None).await.0, 200);
    let health_script = script.replace("/api/v1/vms", "/health");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&health_script)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("200"));
}

#[tokio::test]
async fn request_ids_audit_log_and_openapi() {
    let d = Daemon::start().await;
    let (code, headers, body) = d
        .raw(
            "GET",
            "/api/v1/vms/nope",
            None,
            &[("x-request-id", "my-req-1")],
        )
        .await
        .unwrap();
    assert_eq!(code, 404);
    assert_eq!(headers["x-request-id"], "my-req-1");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["request_id"], "my-req-1");

    let (code, _) = d
        .req("POST", "/api/v1/vms", Some(with("name", json!("audited"))))
        .await;
    assert_eq!(code, 201);
    let _ = d.req("POST", "/api/v1/vms/audited/reboot", None).await;
    // The audit log is in the database: read it with the library.
    let store = libgo::store::Store::open(&d.state_dir().join("libgo.db")).unwrap();
    let tail = store.audit_tail(10).unwrap();
    assert_eq!(tail[0].path, "/api/v1/vms/audited/reboot");
    assert_eq!(tail[0].status, 409);
    assert_eq!(tail[1].method, "POST");
    assert_eq!(tail[1].status, 201);
    assert_eq!(tail[1].caller, "uid:0");

    let (code, doc) = d.req("GET", "/openapi.json", None).await;
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/vms",
        "/api/v1/vms/{id}",
        "/api/v1/vms/{id}/{action}",
        "/api/v1/vms/{id}/config",
        "/api/v1/vms/{id}/status",
        "/api/v1/jobs/{id}",
        "/health",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from OpenAPI");
    }
    assert!(
        doc["components"]["schemas"]["CreateVmRequest"]["properties"]
            .get("disk_size")
            .is_some()
    );
    let (code, h) = d.req("GET", "/health", None).await;
    assert_eq!(code, 200);
    assert_eq!(h["status"], "ok");
}

#[tokio::test]
async fn sigkill_during_create_leaves_nothing_behind_after_restart() {
    // qemu-img whose resize hangs, so the daemon can be killed mid-create,
    // after the clone exists and the row is written.
    let (_d0, wrapper) = qemu_img_wrapper("sleep 60");
    let mut d = Daemon::start_with(&["--qemu-img", wrapper.to_str().unwrap()]).await;
    // The restart below uses the real qemu-img.
    d.extra_args.clear();
    let sock = d.socket.clone();
    let pending = tokio::spawn(async move {
        let mut body = with("name", json!("half"));
        body["clone"] = json!("full");
        // Talk to the socket directly: the request never gets an answer.
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post("http://x/api/v1/vms")
            .header("host", "x")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let _ = tx.send_request(req).await;
    });
    let vms = d.state_dir().join("vms");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let clone_exists = std::fs::read_dir(&vms)
            .unwrap()
            .flatten()
            .any(|e| e.path().join("root.qcow2").exists());
        if clone_exists {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "clone never appeared");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    d.kill(nix::sys::signal::Signal::SIGKILL);
    pending.abort();
    d.spawn().await;
    let (_, list) = d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 0, "{list}");
    assert_eq!(
        std::fs::read_dir(&vms).unwrap().count(),
        0,
        "no orphan disk"
    );
    let (_, jobs) = d.req("GET", "/api/v1/jobs", None).await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["type"], "vm.create");
    assert_eq!(job["state"], "failed", "{jobs}");
    assert!(job["error"].as_str().unwrap().contains("interrupted"));
    // The name is free again.
    assert_eq!(
        d.req("POST", "/api/v1/vms", Some(with("name", json!("half"))))
            .await
            .0,
        201
    );
}

/// A qemu-img that runs `on_resize` (shell) before a `resize`, else the real one.
fn qemu_img_wrapper(on_resize: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("qemu-img");
    let script =
        format!("#!/bin/sh\nif [ \"$1\" = resize ]; then {on_resize}; fi\nexec qemu-img \"$@\"\n");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (dir, wrapper)
}

/// A list reuses each VM's rendering only while the VM is unchanged: every
/// change (configuration, status, process) shows in the next list.
#[tokio::test]
async fn lists_show_every_change_at_once() {
    let d = Daemon::start().await;
    let mut body = vm_body();
    body["name"] = json!("fresh");
    let (code, vm) = d.req("POST", "/api/v1/vms", Some(body)).await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let listed = |list: &Value| {
        list["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id.as_str())
            .cloned()
            .unwrap()
    };
    let (_, list) = d.req("GET", "/api/v1/vms?limit=200", None).await;
    let (_, one) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(listed(&list), one);
    let (code, r) = d
        .req(
            "PATCH",
            &format!("/api/v1/vms/{id}"),
            Some(json!({"tags": ["changed"], "memory": 192})),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let (_, list) = d.req("GET", "/api/v1/vms?limit=200", None).await;
    let v = listed(&list);
    assert_eq!(
        (v["tags"][0].as_str(), v["memory"].as_u64()),
        (Some("changed"), Some(192)),
        "{v}"
    );
    let (_, one) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(v, one);
    for (action, status) in [("start", "running"), ("poweroff", "stopped")] {
        let (code, r) = d
            .req("POST", &format!("/api/v1/vms/{id}/{action}"), None)
            .await;
        assert_eq!(code, 200, "{r}");
        let (_, list) = d.req("GET", "/api/v1/vms?limit=200", None).await;
        let v = listed(&list);
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["pid"].is_u64(), status == "running", "{v}");
        let (_, one) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
        assert_eq!(v, one);
    }
}

/// Request bodies are JSON objects: arrays and other values are refused
/// before anything changes; a huge method name is not echoed back whole.
#[tokio::test]
async fn bodies_must_be_objects_and_echoes_are_bounded() {
    let d = Daemon::start().await;
    let mut body = vm_body();
    body["name"] = json!("shape");
    let (code, vm) = d.req("POST", "/api/v1/vms", Some(body)).await;
    assert_eq!(code, 201, "{vm}");
    let cases: [(&str, &str, &str); 6] = [
        ("PATCH", "/api/v1/vms/shape", "[4, 256]"),
        ("PUT", "/api/v1/vms/shape/cpu", "[4]"),
        ("POST", "/api/v1/templates", r#"["t", "base.qcow2"]"#),
        ("POST", "/api/v1/vms/shape/start", "null"),
        ("POST", "/api/v1/vms", "\"shape\""),
        ("POST", "/api/v1/vms", "[[1, 128, 1, \"base.qcow2\"]]"),
    ];
    for (method, path, text) in cases {
        let (code, _, bytes) = d
            .raw(
                method,
                path,
                Some(text.to_owned()),
                &[("content-type", "application/json")],
            )
            .await
            .unwrap();
        let err: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(code, 400, "{method} {path} {text}: {err}");
        assert_eq!(err["error"]["status"], "INVALID_INPUT", "{err}");
    }
    let (_, v) = d.req("GET", "/api/v1/vms/shape", None).await;
    assert_eq!(
        (v["vcpus"].as_u64(), v["memory"].as_u64()),
        (Some(1), Some(128)),
        "{v}"
    );
    let (_, t) = d.req("GET", "/api/v1/templates", None).await;
    assert_eq!(t["total_count"], 0, "{t}");

    let method = "X".repeat(64 * 1024);
    let (code, _, bytes) = d.raw(&method, "/api/v1/vms", None, &[]).await.unwrap();
    assert!(code == 405 || code == 400, "{code}");
    assert!(bytes.len() < 2048, "{} bytes echoed", bytes.len());
}
