//! Bulk and list figures: a bulk create of 100 VMs (linked clones, left
//! stopped) as one job, then listing 1,000 VMs through the API: one page of
//! 200 full objects, and the walk through every page.
//! `cargo bench --bench bulk` (`LIBGO_BENCH_VMS` changes the 1,000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{median, Daemon};
use serde_json::{json, Value};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn bulk(d: &Daemon, from: usize, n: usize) -> f64 {
    let items: Vec<Value> = (from..from + n)
        .map(|i| json!({"name": format!("vm-{i:05}"), "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}))
        .collect();
    let t = Instant::now();
    let (code, acc) = d
        .req("POST", "/api/v1/vms", Some(Value::Array(items)))
        .await;
    assert_eq!(code, 202, "{acc}");
    let id = acc["job"]["id"].as_str().unwrap();
    let (_, job) = d
        .req("GET", &format!("/api/v1/jobs/{id}?wait=300"), None)
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    ms(t)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: usize = std::env::var("LIBGO_BENCH_VMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let d = Daemon::start().await;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);

    let mut batches = Vec::new();
    let mut made = 0;
    while made < total {
        let n = (total - made).min(100);
        batches.push((n, bulk(&d, made, n).await));
        made += n;
    }
    let first = batches[0].1;
    let per_vm: Vec<f64> = batches.iter().map(|(n, t)| t / *n as f64).collect();

    let mut page = Vec::new();
    let mut bytes = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let (code, _, body) = d
            .raw("GET", "/api/v1/vms?limit=200", None, &[])
            .await
            .unwrap();
        page.push(ms(t));
        assert_eq!(code, 200);
        bytes = body.len();
    }
    let mut walks = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let mut token: Option<String> = None;
        let mut seen = 0;
        loop {
            let path = match &token {
                Some(t) => format!("/api/v1/vms?limit=200&page_token={t}"),
                None => "/api/v1/vms?limit=200".to_owned(),
            };
            let (_, p) = d.req("GET", &path, None).await;
            seen += p["vms"].as_array().unwrap().len();
            match p["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, total);
        walks.push(ms(t));
    }
    let mut filtered = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let (_, p) = d
            .req("GET", "/api/v1/vms?name=vm-00500&limit=200", None)
            .await;
        filtered.push(ms(t));
        assert!(p["total_count"].as_u64().unwrap() <= 1);
    }

    println!("libgo bulk and list figures ({cores} cores, bulk parallelism = cores)\n");
    println!("| figure | ms |");
    println!("| --- | --- |");
    println!("| bulk create of 100 VMs (one job, linked clones) | {first:.0} |");
    println!(
        "| per VM within a bulk create (median of {} batches) | {:.1} |",
        batches.len(),
        median(per_vm)
    );
    println!(
        "| GET /vms?limit=200 with {total} VMs (full objects, {bytes} bytes) | {:.1} |",
        median(page)
    );
    println!(
        "| walk all {} pages of {total} VMs | {:.1} |",
        total.div_ceil(200),
        median(walks)
    );
    println!(
        "| GET /vms?name=... (filter) with {total} VMs | {:.2} |",
        median(filtered)
    );
}
