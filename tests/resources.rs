//! Resource control on real guests: vCPU pinning read back from /proc, IOPS
//! limits measured inside the guest for each enforcement path, balloon and
//! disk growth seen by the guest, performance figures and /metrics.

mod common;

use std::time::{Duration, Instant};

use common::{guest_slot, Daemon, BOOT, READY};
use serde_json::{json, Value};

const CMD: Duration = Duration::from_secs(60);

async fn get(d: &Daemon, path: &str) -> Value {
    let (code, v) = d.req("GET", path, None).await;
    assert_eq!(code, 200, "{path}: {v}");
    v
}

fn allowed(pid: u64, tid: u64) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// vCPU thread ids from the config's in-force view, checked against /proc.
async fn vcpu_affinity(d: &Daemon, id: &str) -> Vec<String> {
    let cfg = get(d, &format!("/api/v1/vms/{id}/config")).await;
    let pid = get(d, &format!("/api/v1/vms/{id}")).await["pid"]
        .as_u64()
        .unwrap();
    let vcpus = cfg["cpu_pinning_in_force"]["vcpus"]
        .as_array()
        .unwrap()
        .clone();
    vcpus
        .iter()
        .map(|v| {
            let tid = v["thread_id"].as_u64().unwrap();
            // The thread is a vCPU thread of this QEMU (named "CPU n/TCG|KVM").
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
            assert!(comm.starts_with("CPU "), "{comm}");
            let real = allowed(pid, tid);
            assert_eq!(
                v["cpus_allowed_list"], real,
                "config reads what the kernel has"
            );
            real
        })
        .collect()
}

fn all_cores() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcpu_pinning_at_start_live_and_after_restart() {
    let _slot = guest_slot().await;
    let mut d = Daemon::start().await;
    let online = all_cores();
    let last: u32 = online.rsplit(['-', ',']).next().unwrap().parse().unwrap();
    let cmdline = common::fixture_cmdline();
    let (code, vm) = d
        .req("POST", "/api/v1/vms", Some(json!({
            "name": "pinned", "vcpus": 2, "memory": 128, "disk_size": 1, "base_image": "base.qcow2",
            "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
            "cpu_pinning": {"cores": [last, 0], "emulator_cores": [0]},
        })))
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    // vCPU i on cores[i], from before the guest's first instruction.
    assert_eq!(
        vcpu_affinity(&d, &id).await,
        vec![last.to_string(), "0".to_owned()]
    );
    let cfg = get(&d, &format!("/api/v1/vms/{id}/config")).await;
    assert_eq!(cfg["cpu_pinning_in_force"]["emulator"], "0");
    assert_eq!(cfg["cpu_pinning"]["cores"], json!([last, 0]));
    d.wait_marker(&id, READY, 1, BOOT).await;

    // Live: one core for both vCPUs (a count other than vcpus: the whole set).
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/cpu"),
            Some(json!({"cpu_pinning": {"cores": [0]}})),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["applies"], "live");
    assert_eq!(vcpu_affinity(&d, &id).await, vec!["0", "0"]);
    // Cores the host lacks are 400; nothing changes.
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/cpu"),
            Some(json!({"cpu_pinning": {"cores": [4096]}})),
        )
        .await;
    assert_eq!(code, 400, "{r}");
    assert_eq!(vcpu_affinity(&d, &id).await, vec!["0", "0"]);
    // vCPU count: stored for the next start.
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/cpu"),
            Some(json!({"vcpus": 1})),
        )
        .await;
    assert_eq!(
        (code, r["applies"].as_str()),
        (200, Some("next_start")),
        "{r}"
    );
    assert_eq!(
        vcpu_affinity(&d, &id).await.len(),
        2,
        "still 2 vCPUs until restart"
    );

    // Daemon killed; someone widens the threads meanwhile; the restarted
    // daemon re-applies the pinning when it re-adopts the guest.
    d.kill(nix::sys::signal::Signal::SIGKILL);
    let pid = std::fs::read_to_string(d.run_dir().join("vms").join(&id).join("qemu.pid")).unwrap();
    for tid in std::fs::read_dir(format!("/proc/{}/task", pid.trim()))
        .unwrap()
        .flatten()
    {
        let tid: i32 = tid.file_name().to_str().unwrap().parse().unwrap();
        let mut all = nix::sched::CpuSet::new();
        for c in 0..=last {
            all.set(c as usize).unwrap();
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &all).unwrap();
    }
    d.spawn().await;
    assert_eq!(vcpu_affinity(&d, &id).await, vec!["0", "0"]);

    // Removing the pinning lets every vCPU run anywhere, live.
    let (code, _) = d
        .req(
            "PATCH",
            &format!("/api/v1/vms/{id}"),
            Some(json!({"cpu_pinning": null})),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        vcpu_affinity(&d, &id).await,
        vec![online.clone(), online.clone()]
    );
    // Next start: 1 vCPU.
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    assert_eq!(vcpu_affinity(&d, &id).await.len(), 1);
}

/// Reads `count` 4 KiB blocks of allocated data with O_DIRECT in the guest;
/// returns the IOPS the guest saw (timed by the guest's own clock).
async fn guest_iops(d: &Daemon, id: &str, count: u32) -> f64 {
    let cmd = format!(
        "a=$(cut -d' ' -f1 /proc/uptime); dd if=/mnt/data.bin of=/dev/null bs=4k count={count} iflag=direct 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo ELAPSED $a $b"
    );
    let (rc, out) = d.guest_cmd(id, &cmd, CMD).await;
    assert_eq!(rc, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("ELAPSED"))
        .unwrap_or_else(|| panic!("{out}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    count as f64 / (f[1] - f[0]).max(0.01)
}

async fn iops_limit_holds_on(layer: &str) {
    let _slot = guest_slot().await;
    let d = Daemon::start_with(&["--io-throttle", layer]).await;
    let cmdline = common::fixture_cmdline();
    let (code, vm) = d
        .req("POST", "/api/v1/vms", Some(json!({
            "name": "throttled", "vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "base.qcow2",
            "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
            "io_limits": {"iops": 50},
        })))
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;

    let cfg = get(&d, &format!("/api/v1/vms/{id}/config")).await;
    let enf = &cfg["io_enforcement"];
    match layer {
        "cgroup" => {
            assert_eq!(enf["cgroup"]["in_force"]["read_iops"], 50, "{enf}");
            assert!(enf.get("qemu").is_none(), "{enf}");
        }
        _ => {
            assert_eq!(enf["qemu"]["iops"], 50, "{enf}");
            assert!(enf.get("cgroup").is_none(), "{enf}");
        }
    }

    let limited = guest_iops(&d, &id, 150).await;
    println!("{layer}: {limited:.1} IOPS with a limit of 50");
    assert!(
        (37.5..=62.5).contains(&limited),
        "{layer}: {limited} IOPS, limit 50"
    );

    // Removed live: several times faster.
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/disk"),
            Some(json!({"io_limits": null})),
        )
        .await;
    assert_eq!((code, r["applies"].as_str()), (200, Some("live")), "{r}");
    let cfg = get(&d, &format!("/api/v1/vms/{id}/config")).await;
    assert!(cfg.get("io_limits").is_none(), "{cfg}");
    let free = guest_iops(&d, &id, 600).await;
    println!("{layer}: {free:.1} IOPS without a limit");
    assert!(
        free > 3.0 * 50.0,
        "{layer}: only {free} IOPS without the limit"
    );

    // And set again live.
    let (code, _) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/disk"),
            Some(json!({"io_limits": {"read_iops": 40}})),
        )
        .await;
    assert_eq!(code, 200);
    let again = guest_iops(&d, &id, 120).await;
    println!("{layer}: {again:.1} IOPS with a live limit of 40");
    assert!(
        (30.0..=50.0).contains(&again),
        "{layer}: {again} IOPS, limit 40"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iops_limit_in_the_cgroup() {
    iops_limit_holds_on("cgroup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iops_limit_in_qemu() {
    iops_limit_holds_on("qemu").await;
}

async fn guest_number(d: &Daemon, id: &str, cmd: &str) -> u64 {
    let (rc, out) = d.guest_cmd(id, cmd, CMD).await;
    assert_eq!(rc, 0, "{out}");
    out.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no number in {out:?}"))
}

async fn perf(d: &Daemon, id: &str) -> Value {
    get(d, &format!("/api/v1/vms/{id}/performance")).await
}

async fn wait_perf(d: &Daemon, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = perf(d, id).await;
        if ok(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balloon_disk_growth_performance_and_metrics() {
    let _slot = guest_slot().await;
    let d = Daemon::start_with(&["--sample-interval-ms", "500"]).await;
    let cmdline = common::fixture_cmdline();
    let (code, vm) = d
        .req("POST", "/api/v1/vms", Some(json!({
            "name": "elastic", "vcpus": 1, "memory": 256, "disk_size": 1, "base_image": "base.qcow2",
            "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
            "network": {"mode": "tap"},
        })))
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let (code, r) = d
        .req("GET", &format!("/api/v1/vms/{id}/performance"), None)
        .await;
    assert_eq!(code, 409, "a stopped VM has no performance: {r}");
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;

    // Memory: balloon down live, back up to the boot size; more is next start.
    let total = || guest_number(&d, &id, "grep MemTotal /proc/meminfo | tr -dc 0-9; echo");
    let before = total().await;
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/memory"),
            Some(json!({"memory": 128})),
        )
        .await;
    assert_eq!((code, r["applies"].as_str()), (200, Some("live")), "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = total().await;
    while now > before - 100 * 1024 {
        assert!(
            Instant::now() < deadline,
            "guest MemTotal stayed at {now} kB (was {before})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        now = total().await;
    }
    println!("MemTotal {before} kB -> {now} kB after ballooning to 128 MiB");
    // The balloon may still be taking its last pages (QEMU's `actual`).
    let mut cfg = get(&d, &format!("/api/v1/vms/{id}/config")).await;
    while cfg["memory_in_force"].as_u64() != Some(128) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cfg = get(&d, &format!("/api/v1/vms/{id}/config")).await;
    }
    assert_eq!(
        (cfg["memory_in_force"].as_u64(), cfg["boot_memory"].as_u64()),
        (Some(128), Some(256)),
        "{cfg}"
    );
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/memory"),
            Some(json!({"memory": 256})),
        )
        .await;
    assert_eq!((code, r["applies"].as_str()), (200, Some("live")), "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while total().await < before - 8 * 1024 {
        assert!(Instant::now() < deadline, "guest memory did not come back");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/memory"),
            Some(json!({"memory": 512})),
        )
        .await;
    assert_eq!(
        (code, r["applies"].as_str(), r["memory"].as_u64()),
        (200, Some("next_start"), Some(512)),
        "{r}"
    );

    // Disk: grows live, never shrinks.
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/disk"),
            Some(json!({"disk_size": 3})),
        )
        .await;
    assert_eq!((code, r["applies"].as_str()), (200, Some("live")), "{r}");
    let sectors = guest_number(&d, &id, "cat /sys/block/vda/size").await;
    assert_eq!(sectors * 512, 3 << 30);
    let (code, r) = d
        .req(
            "PUT",
            &format!("/api/v1/vms/{id}/disk"),
            Some(json!({"disk_size": 2})),
        )
        .await;
    assert_eq!(code, 409, "{r}");

    // CPU: busy loop up, idle down.
    let (rc, _) = d.guest_cmd(&id, "(yes > /dev/null &) ; true", CMD).await;
    assert_eq!(rc, 0);
    let busy = wait_perf(&d, &id, "cpu_usage > 50", |p| {
        p["cpu_usage"].as_f64().unwrap() > 50.0
    })
    .await;
    println!("busy: {}", busy["cpu_usage"]);
    let (rc, _) = d.guest_cmd(&id, "killall yes", CMD).await;
    assert_eq!(rc, 0);
    let idle = wait_perf(&d, &id, "cpu_usage < 10", |p| {
        p["cpu_usage"].as_f64().unwrap() < 10.0
    })
    .await;
    println!("idle: {}", idle["cpu_usage"]);
    assert!(idle["memory_usage"].as_u64().unwrap() > 10, "{idle}");

    // Disk counters rise by at least what the guest read (4 MiB, direct).
    let before = perf(&d, &id).await["disk_read_bytes"].as_u64().unwrap();
    let (rc, _) = d
        .guest_cmd(
            &id,
            "dd if=/mnt/data.bin of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null",
            CMD,
        )
        .await;
    assert_eq!(rc, 0);
    wait_perf(&d, &id, "disk_read_bytes +4 MiB", |p| {
        p["disk_read_bytes"].as_u64().unwrap() >= before + (4 << 20)
    })
    .await;

    // Network (tap): the guest's link-local chatter is counted.
    let (rc, out) = d.guest_cmd(&id, "ip link set eth0 up", CMD).await;
    assert_eq!(rc, 0, "{out}");
    let p = wait_perf(&d, &id, "network_out_packets > 0", |p| {
        p["network_out_packets"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(p["network_out_bytes"].as_u64().unwrap() > 0, "{p}");

    // Resources: configured next to used.
    let res = get(&d, &format!("/api/v1/vms/{id}/resources")).await;
    assert_eq!(res["memory"]["configured_mib"], 512);
    assert!(res["memory"]["used_mib"].as_u64().unwrap() > 0);
    assert!(res["disk"]["allocated_bytes"].as_u64().unwrap() > 0);
    assert_eq!(res["disk"]["size_gib"], 3);

    // /metrics parses as Prometheus text and carries the series.
    let (code, headers, body) = d.raw("GET", "/metrics", None, &[]).await.unwrap();
    assert_eq!(code, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let find = |name: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .collect::<Vec<_>>()
    };
    let vm_value = |name: &str| -> f64 {
        let s = find(name);
        let s = s
            .iter()
            .find(|s| s.labels.get("id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("{name} for {id} missing"));
        assert_eq!(s.labels.get("name"), Some("elastic"));
        match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    assert!(vm_value("libgo_vm_cpu_seconds_total") > 1.0);
    assert!(vm_value("libgo_vm_memory_resident_bytes") > 1e7);
    assert!(vm_value("libgo_vm_disk_read_bytes_total") >= (4 << 20) as f64);
    assert!(vm_value("libgo_vm_network_transmit_packets_total") > 0.0);
    assert_eq!(vm_value("libgo_vm_running"), 1.0);
    assert!(find("libgo_vm_info")
        .iter()
        .any(|s| s.labels.get("status") == Some("running")));
    assert!(find("libgo_http_requests_total")
        .iter()
        .any(|s| s.labels.get("route") == Some("/api/v1/vms/:id/performance")));
    assert!(!find("libgo_http_request_duration_seconds").is_empty());
    assert!(find("libgo_jobs")
        .iter()
        .any(|s| s.labels.get("type") == Some("vm.create")));
    assert!(!find("process_resident_memory_bytes").is_empty());

    // Stopped: performance is 409 again, metrics say not running.
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        d.req("GET", &format!("/api/v1/vms/{id}/performance"), None)
            .await
            .0,
        409
    );
    assert!(!d.state_dir().join("x").exists());
    // The VM's cgroup is gone with its QEMU.
    let cg = std::path::Path::new("/sys/fs/cgroup/blkio/libgo").join(&id);
    assert!(!cg.exists(), "{} left behind", cg.display());
}
