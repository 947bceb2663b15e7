//! Storage pools and volumes on a real agent with real `qemu-img`: dir
//! pools made, used, refused while in use and removed; volumes made empty,
//! copied, uploaded, downloaded and imported (checked with
//! `qemu-img compare`); and a daemon killed in the middle of a copy
//! leaving the whole volume or nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{send_bytes, Daemon};
use serde_json::{json, Value};

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether two images hold the same guest-visible bytes.
fn same_content(a: &Path, b: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

async fn create_pool(d: &Daemon, body: Value) -> (u16, Value) {
    d.req("POST", "/api/v1/storage-pools", Some(body)).await
}

async fn create_volume(d: &Daemon, pool: &str, body: Value) -> (u16, Value) {
    d.req(
        "POST",
        &format!("/api/v1/storage-pools/{pool}/volumes"),
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_pools_are_made_used_refused_while_in_use_and_removed() {
    let d = Daemon::start().await;
    let (code, list) = d.req("GET", "/api/v1/storage-pools", None).await;
    assert_eq!(code, 200, "{list}");
    let default = &list["pools"][0];
    assert_eq!(default["name"], "default");
    assert_eq!(
        (default["type"].as_str(), default["state"].as_str()),
        (Some("dir"), Some("active"))
    );
    assert!(default["capacity"].as_u64().unwrap() > 0);
    assert!(default["available"].as_u64().unwrap() <= default["capacity"].as_u64().unwrap());
    assert_eq!(default["volumes"], 4, "{default}");
    assert_eq!(default["configured"], true);

    // Made below the agent's pool parent; refused elsewhere.
    let (code, pool) = create_pool(&d, json!({"name": "extra", "type": "dir"})).await;
    assert_eq!(code, 201, "{pool}");
    let dir = d.state_dir().join("pools/extra");
    assert_eq!(pool["path"], dir.display().to_string());
    assert!(dir.is_dir());
    assert_eq!(
        create_pool(&d, json!({"name": "extra", "type": "dir"}))
            .await
            .0,
        409
    );
    for bad in [
        json!({"name": "etc", "type": "dir", "path": "/etc/libgo-pool"}),
        json!({"name": "up", "type": "dir", "path": format!("{}/pools/../x", d.state_dir().display())}),
        json!({"name": "rel", "type": "dir", "path": "pools/x"}),
        json!({"name": "Bad_Name", "type": "dir"}),
        json!({"name": "d", "type": "dir", "host": "127.0.0.1"}),
        json!({"name": "inner", "type": "dir", "path": format!("{}/sub", dir.display())}),
    ] {
        let (code, e) = create_pool(&d, bad.clone()).await;
        assert!(matches!(code, 400 | 403 | 409), "{bad}: {code} {e}");
        assert!(e["error"]["message"].is_string(), "{e}");
    }
    assert!(!Path::new("/etc/libgo-pool").exists());

    // An empty qcow2 and an empty raw volume, as jobs.
    let (code, v) = create_volume(&d, "extra", json!({"name": "data.qcow2", "capacity": 2})).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        (v["format"].as_str(), v["capacity"].as_u64()),
        (Some("qcow2"), Some(2 << 30))
    );
    assert_eq!(v["state"], "unmapped");
    let info = qemu_img(&[
        "info",
        "--output=json",
        dir.join("data.qcow2").to_str().unwrap(),
    ]);
    assert!(info.contains("\"virtual-size\": 2147483648"), "{info}");
    let (code, v) = create_volume(
        &d,
        "extra",
        json!({"name": "scratch.raw", "capacity": 1, "format": "raw"}),
    )
    .await;
    assert_eq!((code, v["format"].as_str()), (201, Some("raw")), "{v}");
    assert_eq!(
        create_volume(&d, "extra", json!({"name": "data.qcow2", "capacity": 1}))
            .await
            .0,
        409
    );
    for bad in [
        json!({"name": "x", "capacity": 0}),
        json!({"name": "x"}),
        json!({"name": "x", "capacity": 1, "source": {"volume": "data.qcow2"}}),
        json!({"name": "../x", "capacity": 1}),
        json!({"name": ".x", "capacity": 1}),
        json!({"name": "x", "source": {"pool": "default", "volume": "../../etc/passwd"}}),
        json!({"name": "x", "format": "raw", "source": {"volume": "data.qcow2"}}),
    ] {
        let (code, e) = create_volume(&d, "extra", bad.clone()).await;
        assert_eq!(code, 400, "{bad}: {e}");
    }
    assert_eq!(
        create_volume(
            &d,
            "extra",
            json!({"name": "x", "source": {"volume": "nope.qcow2"}})
        )
        .await
        .0,
        404
    );

    // A copy of the fixture base image, the same bytes.
    let (code, v) = create_volume(
        &d,
        "extra",
        json!({"name": "base-copy.qcow2", "source": {"pool": "default", "volume": "base.qcow2"}}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert!(same_content(
        &d.image_dir().join("base.qcow2"),
        &dir.join("base-copy.qcow2")
    ));
    let (_, jobs) = d.req("GET", "/api/v1/jobs?type=volume.copy", None).await;
    let job = &jobs["jobs"][0];
    assert_eq!(
        (job["state"].as_str(), job["progress_percent"].as_u64()),
        (Some("succeeded"), Some(100)),
        "{job}"
    );

    // A VM on the copy: the volume is mapped and cannot go, nor can the pool.
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "user", "vcpus": 1, "memory": 128, "disk_size": 1,
                        "base_image": "extra/base-copy.qcow2"}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    let (_, v) = d
        .req(
            "GET",
            "/api/v1/storage-pools/extra/volumes/base-copy.qcow2",
            None,
        )
        .await;
    assert_eq!(v["state"], "mapped", "{v}");
    assert_eq!(v["used_by"][0]["name"], "user");
    assert_eq!(v["used_by"][0]["as"], "base_image");
    let vol = "/api/v1/storage-pools/extra/volumes/base-copy.qcow2";
    assert_eq!(d.req("DELETE", vol, None).await.0, 409);
    assert_eq!(
        d.req("POST", "/api/v1/storage-pools/extra/deactivate", None)
            .await
            .0,
        409
    );
    assert_eq!(
        d.req("DELETE", "/api/v1/storage-pools/extra", None).await.0,
        409
    );
    assert_eq!(d.req("DELETE", "/api/v1/vms/user", None).await.0, 200);
    let (_, v) = d.req("GET", vol, None).await;
    assert_eq!(
        (v["state"].as_str(), v["used_by"].as_array().map(Vec::len)),
        (Some("unmapped"), Some(0))
    );

    // Inactive: its volumes are neither listed nor usable.
    let (code, p) = d
        .req("POST", "/api/v1/storage-pools/extra/deactivate", None)
        .await;
    assert_eq!((code, p["state"].as_str()), (200, Some("inactive")), "{p}");
    assert_eq!(
        d.req("GET", "/api/v1/storage-pools/extra/volumes", None)
            .await
            .0,
        409
    );
    let (code, _) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "nope", "vcpus": 1, "memory": 128, "disk_size": 1,
                        "base_image": "extra/base-copy.qcow2"}),
            ),
        )
        .await;
    assert_eq!(code, 409);
    let (code, p) = d
        .req("POST", "/api/v1/storage-pools/extra/activate", None)
        .await;
    assert_eq!(
        (code, p["state"].as_str(), p["volumes"].as_u64()),
        (200, Some("active"), Some(3)),
        "{p}"
    );

    // A pool that holds volumes is not deleted; empty, it goes with its
    // directory. The configured default pool cannot be deleted.
    assert_eq!(
        d.req("DELETE", "/api/v1/storage-pools/extra", None).await.0,
        409
    );
    for name in ["data.qcow2", "scratch.raw", "base-copy.qcow2"] {
        let (code, e) = d
            .req(
                "DELETE",
                &format!("/api/v1/storage-pools/extra/volumes/{name}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{name}: {e}");
    }
    assert_eq!(
        d.req("DELETE", "/api/v1/storage-pools/extra", None).await.0,
        200
    );
    assert!(!dir.exists());
    assert_eq!(
        d.req("DELETE", "/api/v1/storage-pools/default", None)
            .await
            .0,
        409
    );
    assert_eq!(
        d.req("GET", "/api/v1/storage-pools/extra", None).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_uploaded_downloaded_and_imported() {
    let d = Daemon::start().await;
    let work = tempfile::tempdir().unwrap();
    let base = d.image_dir().join("base.qcow2");
    let vmdk = work.path().join("disk.vmdk");
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        base.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    let vdi = work.path().join("disk.vdi");
    qemu_img(&[
        "convert",
        "-O",
        "vdi",
        base.to_str().unwrap(),
        vdi.to_str().unwrap(),
    ]);

    // Upload: made (201), then replaced (200); the same bytes come back.
    let bytes = std::fs::read(&vmdk).unwrap();
    let url = "/api/v1/storage-pools/default/volumes/disk.vmdk";
    let (code, _, body) = send_bytes(&d.socket, "PUT", &format!("{url}/content"), bytes.clone())
        .await
        .unwrap();
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["format"], "vmdk", "{v}");
    let (code, _, _) = send_bytes(&d.socket, "PUT", &format!("{url}/content"), bytes.clone())
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (code, headers, got) = d
        .raw("GET", &format!("{url}/content"), None, &[])
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(headers["content-length"], bytes.len().to_string());
    assert!(got == bytes, "downloaded bytes differ");
    let (code, _, _) = send_bytes(
        &d.socket,
        "PUT",
        "/api/v1/storage-pools/default/volumes/..%2Fescape/content",
        b"x".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(code, 400);
    assert!(!d.root.path().join("escape").exists());

    // Import: vmdk and vdi become qcow2 with the base image's content.
    let (code, _, _) = send_bytes(
        &d.socket,
        "PUT",
        "/api/v1/storage-pools/default/volumes/disk.vdi/content",
        std::fs::read(&vdi).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 201);
    for (src, dest) in [
        ("disk.vmdk", "from-vmdk.qcow2"),
        ("disk.vdi", "from-vdi.qcow2"),
    ] {
        let (code, v) = create_volume(
            &d,
            "default",
            json!({"name": dest, "import": {"volume": src}}),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["format"], "qcow2");
        assert!(same_content(&base, &d.image_dir().join(dest)), "{dest}");
    }
    // What is not a disk image format an import reads is refused.
    let (code, _, _) = send_bytes(
        &d.socket,
        "PUT",
        "/api/v1/storage-pools/default/volumes/notes.txt/content",
        b"just text".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(code, 201);
    let (code, v) = create_volume(
        &d,
        "default",
        json!({"name": "t.qcow2", "import": {"volume": "notes.txt"}}),
    )
    .await;
    // A file of text is a raw image to qemu-img: it imports as such.
    assert_eq!(code, 201, "{v}");
    assert_eq!(hidden_files(&d.image_dir()), Vec::<String>::new());
}

/// The daemon killed while a copy runs: after a restart the volume is
/// there whole, or not at all, and nothing hidden is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_cut_by_a_crash_leaves_all_or_nothing() {
    let mut d = Daemon::start().await;
    // 256 MiB of random data: the copy takes a while.
    let big = d.image_dir().join("big.raw");
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=256", "status=none"])
        .arg(format!("of={}", big.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let (code, job) = {
        let body = json!({"name": "big-copy.raw", "source": {"volume": "big.raw"}}).to_string();
        let (code, _, b) = d
            .raw(
                "POST",
                "/api/v1/storage-pools/default/volumes",
                Some(body),
                &[("prefer", "respond-async")],
            )
            .await
            .unwrap();
        (code, serde_json::from_slice::<Value>(&b).unwrap())
    };
    assert_eq!(code, 202, "{job}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let hidden: PathBuf = loop {
        if let Some(h) = hidden_files(&d.image_dir()).first() {
            break d.image_dir().join(h);
        }
        assert!(Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.spawn().await;
    assert!(!hidden.exists(), "{} left behind", hidden.display());
    assert_eq!(hidden_files(&d.image_dir()), Vec::<String>::new());
    let copy = d.image_dir().join("big-copy.raw");
    if copy.exists() {
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&big).unwrap());
    }
    let id = job["job"]["id"].as_str().unwrap();
    let (_, j) = d.req("GET", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(j["state"], "failed", "{j}");
}
