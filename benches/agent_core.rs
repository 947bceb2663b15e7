//! Agent-core figures on real QEMU: create+start latency and re-adoption
//! after a daemon restart. `cargo bench --bench agent_core`
//! (`LIBGO_BENCH_RUNS`, `LIBGO_BENCH_GUESTS` to change the sizes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{Daemon, BOOT, READY};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env("LIBGO_BENCH_RUNS", 10);
    let guests = env("LIBGO_BENCH_GUESTS", 10);
    let mut d = Daemon::start().await;
    let cmdline = common::fixture_cmdline();

    let (mut create, mut start, mut ready, mut delete) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let t = Instant::now();
        let (code, vm) = d
            .req(
                "POST",
                "/api/v1/vms",
                Some(json!({
                    "name": format!("bench-{i}"), "vcpus": 1, "memory": 128, "disk_size": 1,
                    "base_image": "base.qcow2",
                    "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
                })),
            )
            .await;
        assert_eq!(code, 201, "{vm}");
        create.push(t.elapsed().as_secs_f64() * 1e3);
        let id = vm["id"].as_str().unwrap().to_owned();
        let t = Instant::now();
        assert_eq!(
            d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
                .await
                .0,
            200
        );
        start.push(t.elapsed().as_secs_f64() * 1e3);
        d.wait_marker(&id, READY, 1, BOOT).await;
        ready.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        assert_eq!(
            d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
            200
        );
        delete.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // Many running guests (paused after boot so TCG does not eat the host),
    // then SIGKILL the daemon and time until it answers with all re-adopted.
    let mut ids = Vec::new();
    for i in 0..guests {
        let (_, vm) = d
            .req(
                "POST",
                "/api/v1/vms",
                Some(json!({
                    "name": format!("keep-{i}"), "vcpus": 1, "memory": 64, "disk_size": 1,
                    "base_image": "base.qcow2",
                    "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
                })),
            )
            .await;
        let id = vm["id"].as_str().unwrap().to_owned();
        assert_eq!(
            d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
                .await
                .0,
            200
        );
        assert_eq!(
            d.req("POST", &format!("/api/v1/vms/{id}/pause"), None)
                .await
                .0,
            200
        );
        ids.push(id);
    }
    let mut readopt = Vec::new();
    for _ in 0..5 {
        d.kill(nix::sys::signal::Signal::SIGKILL);
        let t = Instant::now();
        d.spawn().await;
        let (_, list) = d
            .req("GET", "/api/v1/vms?status=paused&limit=200", None)
            .await;
        readopt.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(list["total_count"], guests, "{list}");
    }
    let t = Instant::now();
    for _ in 0..100 {
        d.req("GET", "/api/v1/vms?limit=200", None).await;
    }
    let list_ms = t.elapsed().as_secs_f64() * 1e3 / 100.0;

    println!("| figure (median of {runs}) | ms |");
    println!("| --- | --- |");
    println!(
        "| POST /vms (linked clone + resize) | {:.1} |",
        median(create)
    );
    println!(
        "| POST /vms/{{id}}/start (QEMU up, QMP, cont) | {:.1} |",
        median(start)
    );
    let accel = d.req("GET", "/health", None).await.1["accel"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    println!(
        "| start to guest LIBGO-READY ({accel}) | {:.0} |",
        median(ready)
    );
    println!("| DELETE running VM | {:.1} |", median(delete));
    println!(
        "| restart to {guests} guests re-adopted and listed | {:.1} |",
        median(readopt)
    );
    println!("| GET /vms with {guests} VMs | {:.2} |", list_ms);
}
