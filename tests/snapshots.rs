//! Snapshots on the fixture guest: with memory while it runs (a revert
//! brings back the instant: a file written after is gone, uptime goes
//! back), disk-only while it is stopped (a revert drops what was written
//! after), the tree with its branches, and the refusals.

mod common;

use std::time::Duration;

use common::{guest_slot, Daemon, BOOT, READY};
use serde_json::{json, Value};

const CMD: Duration = Duration::from_secs(60);

async fn uptime(d: &Daemon, id: &str) -> f64 {
    let (rc, out) = d.guest_cmd(id, "cat /proc/uptime", CMD).await;
    assert_eq!(rc, 0, "{out}");
    out.split_whitespace().next().unwrap().parse().unwrap()
}

async fn post(d: &Daemon, path: &str, body: Option<Value>) -> (u16, Value) {
    d.req("POST", path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_disk_snapshots_revert_what_the_guest_sees() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    // HPET counts QEMU's virtual clock, which a snapshot saves; the TSC of
    // an emulated CPU follows the host's clock and would not go back.
    let vm = d.create_fixture_vm("snappy", "clocksource=hpet").await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let snaps = format!("/api/v1/vms/{id}/snapshots");

    // Stopped: memory cannot be saved; a disk-only snapshot can.
    let (code, e) = post(&d, &snaps, Some(json!({"name": "m0", "memory": true}))).await;
    assert_eq!(code, 409, "{e}");
    let (code, d0) = post(
        &d,
        &snaps,
        Some(json!({"name": "d0", "description": "fresh"})),
    )
    .await;
    assert_eq!(code, 201, "{d0}");
    assert_eq!(
        (d0["vm_state"].as_bool(), d0["parent"].as_str()),
        (Some(false), Some(""))
    );
    assert_eq!(post(&d, &snaps, Some(json!({"name": "d0"}))).await.0, 409);
    assert_eq!(
        post(&d, &snaps, Some(json!({"name": "Bad_Name"}))).await.0,
        400
    );

    // Running: a snapshot with memory.
    assert_eq!(
        post(&d, &format!("/api/v1/vms/{id}/start"), None).await.0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;
    let before = uptime(&d, &id).await;
    let (code, m1) = post(&d, &snaps, Some(json!({"name": "m1", "memory": true}))).await;
    assert_eq!(code, 201, "{m1}");
    assert_eq!(
        (m1["vm_state"].as_bool(), m1["parent"].as_str()),
        (Some(true), Some("d0"))
    );
    assert!(m1["size"].as_u64().unwrap() > 1 << 20, "{m1}");
    let (rc, out) = d
        .guest_cmd(
            &id,
            "echo after > /mnt/after-m1 && sync && cat /mnt/after-m1",
            CMD,
        )
        .await;
    assert_eq!((rc, out.trim()), (0, "after"));
    // Let the guest's clock run well past the snapshot.
    let mut later = uptime(&d, &id).await;
    while later < before + 20.0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        later = uptime(&d, &id).await;
    }
    // A disk-only snapshot cannot be reverted to while running.
    let (code, e) = post(&d, &format!("{snaps}/d0/revert"), None).await;
    assert_eq!(code, 409, "{e}");
    // Back to m1: the file is gone and the guest's clock went back.
    let (code, r) = post(&d, &format!("{snaps}/m1/revert"), None).await;
    assert_eq!(code, 200, "{r}");
    let (_, v) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(v["status"], "running");
    let (rc, _) = d.guest_cmd(&id, "test -e /mnt/after-m1", CMD).await;
    assert_ne!(rc, 0, "the file written after m1 survived the revert");
    let reverted = uptime(&d, &id).await;
    assert!(
        reverted < later - 10.0,
        "uptime {reverted} did not go back from {later} (snapshot near {before})"
    );

    // Stopped again: back to d0 on the disk; the guest boots without m1's
    // world and a new snapshot branches off d0.
    assert_eq!(
        post(&d, &format!("/api/v1/vms/{id}/stop"), None).await.0,
        200
    );
    let (code, e) = post(&d, &format!("{snaps}/m1/revert"), None).await;
    assert_eq!(code, 409, "{e}");
    let (code, r) = post(&d, &format!("{snaps}/d0/revert"), None).await;
    assert_eq!(code, 200, "{r}");
    let (code, d2) = post(&d, &snaps, Some(json!({"name": "d2"}))).await;
    assert_eq!(code, 201, "{d2}");
    assert_eq!(d2["parent"], "d0");
    let (_, list) = d.req("GET", &snaps, None).await;
    let names: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["d0", "m1", "d2"]);
    assert_eq!(list["current"], "d2");

    // Deleting the middle of the tree re-parents; unknown names are 404.
    let (code, _) = d.req("DELETE", &format!("{snaps}/d0"), None).await;
    assert_eq!(code, 200);
    let (_, m1) = d.req("GET", &format!("{snaps}/m1"), None).await;
    assert_eq!(m1["parent"], "");
    assert_eq!(d.req("GET", &format!("{snaps}/d0"), None).await.0, 404);
    assert_eq!(post(&d, &format!("{snaps}/nope/revert"), None).await.0, 404);

    // A deleted VM takes its snapshots with it.
    assert_eq!(
        d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
        200
    );
    let store = libgo::store::Store::open(&d.state_dir().join("libgo.db")).unwrap();
    assert!(store.snapshots(id.parse().unwrap()).unwrap().is_empty());
}

/// The figures of a running 256 MiB guest: snapshot and revert with memory,
/// a disk-only snapshot while it runs and its revert once stopped. Printed
/// (`cargo test --test snapshots timings -- --nocapture`); each is a job
/// waited for through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timings_of_a_256_mib_guest() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let cmdline = format!("{} clocksource=hpet", common::fixture_cmdline());
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "timed", "vcpus": 1, "memory": 256, "disk_size": 1,
                        "base_image": "base.qcow2",
                        "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline}}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let snaps = format!("/api/v1/vms/{id}/snapshots");
    assert_eq!(
        post(&d, &format!("/api/v1/vms/{id}/start"), None).await.0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;
    let timed = |code: u16, t: std::time::Instant, what: &str| {
        assert!(code == 200 || code == 201, "{what}: {code}");
        eprintln!(
            "256 MiB guest, {what}: {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    };
    let t = std::time::Instant::now();
    let (code, _) = post(&d, &snaps, Some(json!({"name": "mem", "memory": true}))).await;
    timed(code, t, "snapshot with memory (running)");
    let t = std::time::Instant::now();
    let (code, _) = post(&d, &snaps, Some(json!({"name": "disk"}))).await;
    timed(code, t, "disk-only snapshot (running)");
    let t = std::time::Instant::now();
    let (code, _) = post(&d, &format!("{snaps}/mem/revert"), None).await;
    timed(code, t, "revert with memory (running)");
    assert!(uptime(&d, &id).await > 0.0);
    assert_eq!(
        post(&d, &format!("/api/v1/vms/{id}/poweroff"), None)
            .await
            .0,
        200
    );
    let t = std::time::Instant::now();
    let (code, _) = post(&d, &format!("{snaps}/disk/revert"), None).await;
    timed(code, t, "disk-only revert (stopped)");
}
