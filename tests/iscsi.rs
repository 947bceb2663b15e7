//! iSCSI pools against a real `tgtd` on loopback: the pool's volumes are
//! the target's LUNs, its server is listed with its targets, a VM boots
//! with its root disk on a LUN through QEMU's own initiator, and a stopped
//! target makes pool calls 503 with the reason, quickly.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::tgt::{Backing, Tgt};
use common::{guest_slot, Daemon, BOOT, READY};
use serde_json::json;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_from_a_lun_and_a_stopped_target_is_503() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    // LUN 1 holds the fixture guest's root filesystem; LUN 2 is blank.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(d.image_dir().join("base.qcow2"))
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tgt = Tgt::start(&[Backing::File(root.clone()), Backing::Size(32 * MIB)]);
    let host = tgt.portal().to_string();
    let iqn = tgt.iqn().to_owned();

    // Refused: a target the server does not offer; a server not there.
    let (code, e) = d
        .req("POST", "/api/v1/storage-pools", Some(json!({"name": "x", "type": "iscsi", "host": host, "target": "iqn.2026-12.test.libgo:nope"})))
        .await;
    assert_eq!(code, 404, "{e}");
    let dead = format!("127.0.0.1:{}", common::free_port());
    let t = Instant::now();
    let (code, e) = d
        .req(
            "POST",
            "/api/v1/storage-pools",
            Some(json!({"name": "x", "type": "iscsi", "host": dead, "target": iqn})),
        )
        .await;
    assert_eq!(code, 503, "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(e["error"]["status"], "BACKEND_UNAVAILABLE");
    let (code, _) = d
        .req(
            "POST",
            "/api/v1/storage-pools",
            Some(json!({"name": "x", "type": "iscsi", "host": host, "target": "not/an iqn"})),
        )
        .await;
    assert_eq!(code, 400);

    let (code, pool) = d
        .req(
            "POST",
            "/api/v1/storage-pools",
            Some(json!({"name": "san", "type": "iscsi", "host": host, "target": iqn})),
        )
        .await;
    assert_eq!(code, 201, "{pool}");
    let lun1 = std::fs::metadata(&root).unwrap().len();
    assert_eq!(pool["capacity"], lun1 + 32 * MIB, "{pool}");
    assert_eq!(pool["volumes"], 2);
    assert_eq!(pool["path"], format!("iscsi://{host}/{iqn}"));
    let (_, vols) = d
        .req("GET", "/api/v1/storage-pools/san/volumes", None)
        .await;
    let names: Vec<&str> = vols["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lun-1", "lun-2"], "{vols}");
    assert_eq!(vols["volumes"][1]["capacity"], 32 * MIB);
    assert_eq!(
        vols["volumes"][0]["path"],
        format!("iscsi://{host}/{iqn}/1")
    );

    // The storage server, its targets and their LUNs.
    let (_, servers) = d.req("GET", "/api/v1/storage-servers", None).await;
    assert_eq!(servers["servers"][0]["host"], host);
    assert_eq!(servers["servers"][0]["reachable"], true);
    assert_eq!(servers["servers"][0]["pools"], json!(["san"]));
    let (code, targets) = d
        .req(
            "GET",
            &format!("/api/v1/storage-servers/{host}/targets"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{targets}");
    assert_eq!(targets["targets"][0]["iqn"], iqn);
    assert_eq!(targets["targets"][0]["luns"][1]["size"], 32 * MIB);
    assert_eq!(
        d.req("GET", "/api/v1/storage-servers/127.0.0.9:1", None)
            .await
            .0,
        404
    );

    // A VM whose root disk is LUN 1: it needs clone "direct".
    let cmdline = common::fixture_cmdline();
    let body = |clone: &str| {
        json!({"name": "on-san", "vcpus": 1, "memory": 128, "disk_size": 1, "clone": clone,
               "base_image": "san/lun-1",
               "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline}})
    };
    assert_eq!(
        d.req("POST", "/api/v1/vms", Some(body("linked"))).await.0,
        400
    );
    let (code, vm) = d.req("POST", "/api/v1/vms", Some(body("direct"))).await;
    assert_eq!(code, 201, "{vm}");
    assert_eq!(vm["disk_file"], format!("iscsi://{host}/{iqn}/1"));
    let id = vm["id"].as_str().unwrap().to_owned();
    let (_, v) = d
        .req("GET", "/api/v1/storage-pools/san/volumes/lun-1", None)
        .await;
    assert_eq!(
        (v["state"].as_str(), v["used_by"][0]["name"].as_str()),
        (Some("mapped"), Some("on-san"))
    );
    assert_eq!(
        d.req("POST", "/api/v1/storage-pools/san/deactivate", None)
            .await
            .0,
        409
    );
    // A LUN holds no internal snapshots.
    assert_eq!(
        d.req(
            "POST",
            &format!("/api/v1/vms/{id}/snapshots"),
            Some(json!({"name": "s"}))
        )
        .await
        .0,
        409
    );
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, "LIBGO-ROOTFS fixture-ok", 1, BOOT).await;
    d.wait_marker(&id, READY, 1, BOOT).await;
    let (rc, out) = d
        .guest_cmd(
            &id,
            "echo on-the-lun > /mnt/san && sync && cat /mnt/san",
            Duration::from_secs(60),
        )
        .await;
    assert_eq!((rc, out.trim()), (0, "on-the-lun"));
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await
            .0,
        200
    );

    // The target stops: the pool's calls are 503 with the reason, at once.
    tgt.stop();
    for path in [
        "/api/v1/storage-pools/san",
        "/api/v1/storage-pools/san/volumes",
        &format!("/api/v1/storage-servers/{host}/targets"),
    ] {
        let t = Instant::now();
        let (code, e) = d.req("GET", path, None).await;
        assert_eq!(code, 503, "{path}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("refused"),
            "{e}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "{path} took {:?}",
            t.elapsed()
        );
    }
    let (code, list) = d.req("GET", "/api/v1/storage-pools", None).await;
    assert_eq!(code, 200);
    let san = list["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "san")
        .unwrap()
        .clone();
    assert!(san["error"].is_string(), "{san}");
    let (_, servers) = d.req("GET", "/api/v1/storage-servers", None).await;
    assert_eq!(servers["servers"][0]["reachable"], false);

    // Deleting the VM leaves the LUN's data where it is.
    assert_eq!(
        d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
        200
    );
    assert_eq!(
        d.req("DELETE", "/api/v1/storage-pools/san", None).await.0,
        200
    );
}
