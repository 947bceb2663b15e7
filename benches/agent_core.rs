//! Agent-core figures on real QEMU: create/start/delete latency (with and
//! without pinning and I/O limits), then with many running guests: the cost
//! of `/performance`, `/metrics`, a full list, and re-adoption after a daemon
//! restart. `cargo bench --bench agent_core`; sizes: `LIBGO_BENCH_RUNS`
//! (default 10), `LIBGO_BENCH_GUESTS` (default 100, started then paused so
//! TCG does not eat the two cores).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{median, Daemon, BOOT, READY};
use serde_json::{json, Value};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

struct Lifecycle {
    create: Vec<f64>,
    start: Vec<f64>,
    ready: Vec<f64>,
    delete: Vec<f64>,
}

async fn lifecycle(d: &Daemon, runs: usize, extra: Value) -> Lifecycle {
    let cmdline = common::fixture_cmdline();
    let mut l = Lifecycle {
        create: vec![],
        start: vec![],
        ready: vec![],
        delete: vec![],
    };
    for i in 0..runs {
        let mut body = json!({
            "name": format!("bench-{i}"), "vcpus": 1, "memory": 128, "disk_size": 1,
            "base_image": "base.qcow2",
            "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let t = Instant::now();
        let (code, vm) = d.req("POST", "/api/v1/vms", Some(body)).await;
        assert_eq!(code, 201, "{vm}");
        l.create.push(ms(t));
        let id = vm["id"].as_str().unwrap().to_owned();
        let t = Instant::now();
        assert_eq!(
            d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
                .await
                .0,
            200
        );
        l.start.push(ms(t));
        d.wait_marker(&id, READY, 1, BOOT).await;
        l.ready.push(ms(t));
        let t = Instant::now();
        assert_eq!(
            d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
            200
        );
        l.delete.push(ms(t));
    }
    l
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env("LIBGO_BENCH_RUNS", 10);
    let guests = env("LIBGO_BENCH_GUESTS", 100);
    let mut d = Daemon::start().await;
    let cmdline = common::fixture_cmdline();
    let accel = d.req("GET", "/health", None).await.1["accel"]
        .as_str()
        .unwrap_or("?")
        .to_owned();

    let plain = lifecycle(&d, runs, json!({})).await;
    let controlled = lifecycle(
        &d,
        runs,
        json!({"cpu_pinning": {"cores": [0], "emulator_cores": [0]}, "io_limits": {"iops": 500}}),
    )
    .await;

    // Many running guests, paused right after start.
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..guests {
        let (code, vm) = d
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
        assert_eq!(code, 201, "{vm}");
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
    let fleet_ms = ms(t);

    let mut perf = Vec::new();
    for i in 0..(4 * guests).max(100) {
        let id = &ids[i % ids.len()];
        let t = Instant::now();
        let (code, _) = d
            .req("GET", &format!("/api/v1/vms/{id}/performance"), None)
            .await;
        perf.push(ms(t));
        assert_eq!(code, 200);
    }
    let mut scrape = Vec::new();
    let mut scrape_bytes = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let (code, _, body) = d.raw("GET", "/metrics", None, &[]).await.unwrap();
        scrape.push(ms(t));
        assert_eq!(code, 200);
        scrape_bytes = body.len();
    }
    let mut list = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let (code, page) = d.req("GET", "/api/v1/vms?limit=200", None).await;
        list.push(ms(t));
        assert_eq!(code, 200);
        assert_eq!(page["total_count"], guests);
    }
    let mut readopt = Vec::new();
    for _ in 0..5 {
        d.kill(nix::sys::signal::Signal::SIGKILL);
        let t = Instant::now();
        d.spawn().await;
        let (_, page) = d
            .req("GET", "/api/v1/vms?status=paused&limit=200", None)
            .await;
        readopt.push(ms(t));
        assert_eq!(page["total_count"], guests, "every guest re-adopted");
    }
    let rss: u64 = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);

    println!(
        "libgo agent core, {accel}, medians ({runs} runs; {guests} guests for the fleet rows)\n"
    );
    println!("| figure | ms |");
    println!("| --- | --- |");
    println!(
        "| POST /vms (linked clone + resize) | {:.1} |",
        median(plain.create)
    );
    println!(
        "| POST /vms/{{id}}/start (QEMU -S, QMP, cont) | {:.1} |",
        median(plain.start)
    );
    println!(
        "| start with vCPU pinning + I/O limits (cgroup + QEMU) | {:.1} |",
        median(controlled.start)
    );
    println!(
        "| start to guest LIBGO-READY | {:.0} |",
        median(plain.ready)
    );
    println!(
        "| start to LIBGO-READY, pinned + throttled | {:.0} |",
        median(controlled.ready)
    );
    println!("| DELETE running VM | {:.1} |", median(plain.delete));
    println!(
        "| create + start + pause {guests} guests (total) | {:.0} |",
        fleet_ms
    );
    println!(
        "| GET /vms/{{id}}/performance, {guests} running | {:.2} |",
        median(perf)
    );
    println!(
        "| GET /metrics, {guests} running ({scrape_bytes} bytes) | {:.2} |",
        median(scrape)
    );
    println!(
        "| GET /vms?limit=200, {guests} VMs (full objects) | {:.2} |",
        median(list)
    );
    println!(
        "| SIGKILL + restart to {guests} guests re-adopted and listed | {:.0} |",
        median(readopt)
    );
    println!(
        "| libgod RSS with {guests} running guests | {} MiB |",
        rss / 1024
    );
}
