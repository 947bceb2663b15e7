//! libgo side by side with its peers on this machine, in one run: raw QEMU,
//! libvirt (Python binding, one connection), LXD (REST on its socket) and the
//! Docker engine (REST on its socket). Prints a Markdown table of medians and
//! ratios (libgo / peer) and writes it to `benches/results/latest.md`.
//!
//! Run it with `bash benches/run.sh`, which installs and starts the peers.
//! Sizes: LIBGO_CMP_RUNS (10), LIBGO_CMP_DEFINED (500), LIBGO_CMP_RUNNING (100),
//! LIBGO_CMP_RESTART (50).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{median, raw_request, Daemon};
use serde_json::{json, Value};

const DOCKER: &str = "/var/run/docker.sock";
const LXD: &str = "/var/lib/lxd/unix.socket";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn rss_kib(names: &[&str]) -> u64 {
    let mut total = 0;
    for n in names {
        let out = std::process::Command::new("pidof")
            .arg(n)
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        for pid in String::from_utf8_lossy(&out).split_whitespace() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

async fn call(sock: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (code, _, bytes) = raw_request(
        Path::new(sock),
        method,
        path,
        body.map(|b| b.to_string()),
        &[],
    )
    .await
    .unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn timed(sock: &str, path: &str, reps: usize) -> f64 {
    let mut v = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let (code, _) = call(sock, "GET", path, None).await;
        v.push(ms(t));
        assert!(code < 300, "{path}: {code}");
    }
    median(v)
}

/// Requests per second of GET `path` over `conns` keep-alive connections for `secs`.
async fn throughput(sock: &str, path: &str, conns: usize, secs: u64) -> f64 {
    use http_body_util::{BodyExt, Empty};
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (sock, path) = (sock.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let req = hyper::Request::get(format!("http://x{path}"))
                    .header("host", "x")
                    .body(Empty::<hyper::body::Bytes>::new())
                    .unwrap();
                let resp = tx.send_request(req).await.unwrap();
                assert!(resp.status().is_success());
                let _ = resp.into_body().collect().await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

struct Row {
    figure: String,
    libgo: Option<f64>,
    peers: Vec<(String, Option<f64>)>,
    unit: &'static str,
    higher_is_better: bool,
}

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "n/a".into(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env("LIBGO_CMP_RUNS", 10);
    let defined = env("LIBGO_CMP_DEFINED", 500);
    let running = env("LIBGO_CMP_RUNNING", 100).min(defined);
    let restart_n = env("LIBGO_CMP_RESTART", 50).min(running);
    let mut targets = vec![1, 100.min(defined), defined];
    targets.dedup();
    let fx = common::fixtures();
    let cmdline = common::fixture_cmdline();
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |figure: String,
                   unit: &'static str,
                   libgo: Option<f64>,
                   peers: Vec<(&str, Option<f64>)>,
                   higher: bool| {
        rows.push(Row {
            figure,
            libgo,
            peers: peers.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
            unit,
            higher_is_better: higher,
        });
    };

    // ---- raw QEMU: the floor -------------------------------------------
    let mut raw = Vec::new();
    let work = tempfile::Builder::new()
        .prefix("lgcmp")
        .tempdir_in("/tmp")
        .unwrap();
    for i in 0..runs {
        let disk = work.path().join(format!("raw{i}.qcow2"));
        let qmp = work.path().join(format!("raw{i}.sock"));
        let t = Instant::now();
        assert!(std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b"])
            .arg(fx.join("base.qcow2"))
            .args(["-F", "qcow2"])
            .arg(&disk)
            .arg("1G")
            .status()
            .unwrap()
            .success());
        let mut child = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-S",
                "-nodefaults",
                "-display",
                "none",
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-m",
                "128",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d0,format=qcow2,cache=none",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&qmp) {
                use std::io::{BufRead, BufReader, Write};
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut w = s;
                w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
                    .unwrap();
                line.clear();
                r.read_line(&mut line).unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        raw.push(ms(t));
        let _ = child.kill();
        let _ = child.wait();
    }
    let raw_qemu = median(raw);

    // ---- libvirt (in its own process, one connection) -------------------
    println!("running the libvirt side...");
    let lv_out = std::process::Command::new("/usr/bin/python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/libvirt_bench.py"))
        .arg(fx.join("base.qcow2"))
        .arg(fx.join("vmlinuz"))
        .arg(fx.join("initrd.img"))
        .arg(&cmdline)
        .arg(work.path().join("libvirt"))
        .args([
            runs.to_string(),
            defined.to_string(),
            running.to_string(),
            restart_n.to_string(),
        ])
        .output();
    let lv: Value = match lv_out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
        Ok(o) => {
            eprintln!(
                "libvirt side failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Value::Null
        }
        Err(e) => {
            eprintln!("libvirt side not run: {e}");
            Value::Null
        }
    };
    let lvf = |k: &str| lv[k].as_f64();

    // ---- libgo ----------------------------------------------------------
    println!("running the libgo side...");
    let mut d = Daemon::start().await;
    let rss_fresh = rss_kib(&["libgod"]) as f64;
    let body = |name: String, memory: u64| {
        json!({"name": name, "vcpus": 1, "memory": memory, "disk_size": 1, "base_image": "base.qcow2",
        "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline}})
    };
    let (mut create, mut delete) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let (code, vm) = d
            .req("POST", "/api/v1/vms", Some(body(format!("run-{i}"), 128)))
            .await;
        assert_eq!(code, 201, "{vm}");
        let id = vm["id"].as_str().unwrap().to_owned();
        assert_eq!(
            d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
                .await
                .0,
            200
        );
        create.push(ms(t));
        let t = Instant::now();
        assert_eq!(
            d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
            200
        );
        delete.push(ms(t));
    }
    row(
        "VM create + start (linked clone; to QEMU answering QMP)".into(),
        "ms",
        Some(median(create)),
        vec![
            ("libvirt", lvf("create_start_ms")),
            ("raw QEMU", Some(raw_qemu)),
        ],
        false,
    );
    row(
        "VM stop + delete (running VM, disk removed)".into(),
        "ms",
        Some(median(delete)),
        vec![("libvirt", lvf("stop_delete_ms"))],
        false,
    );

    // Lists with 1, 100 and `defined` VMs; `running` of them running, paused.
    let mut made = 0;
    let mut ids = Vec::new();
    let mut list_ms = Vec::new();
    for &target in &targets {
        while made < target {
            let n = (target - made).min(100);
            let items: Vec<Value> = (made..made + n)
                .map(|i| body(format!("def-{i:04}"), 64))
                .collect();
            let (code, acc) = d
                .req("POST", "/api/v1/vms", Some(Value::Array(items)))
                .await;
            assert_eq!(code, 202);
            let id = acc["job"]["id"].as_str().unwrap();
            let (_, job) = d
                .req("GET", &format!("/api/v1/jobs/{id}?wait=300"), None)
                .await;
            assert_eq!(job["state"], "succeeded", "{job}");
            made += n;
        }
        if target == 100.min(defined) {
            let (_, page) = d.req("GET", "/api/v1/vms?limit=200&sort=name", None).await;
            for vm in page["vms"].as_array().unwrap().iter().take(running) {
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
        }
        let mut v = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let mut token: Option<String> = None;
            loop {
                let path = match &token {
                    Some(t) => format!("/api/v1/vms?limit=200&page_token={t}"),
                    None => "/api/v1/vms?limit=200".to_owned(),
                };
                let (_, page) = d.req("GET", &path, None).await;
                match page["next_page_token"].as_str() {
                    Some(t) => token = Some(t.to_owned()),
                    None => break,
                }
            }
            v.push(ms(t));
        }
        list_ms.push((target, median(v)));
    }
    let rss_defined = rss_kib(&["libgod"]) as f64;
    let perf1 = timed(
        &d.socket.to_string_lossy(),
        &format!("/api/v1/vms/{}/performance", ids[0]),
        50,
    )
    .await;
    let metrics = timed(&d.socket.to_string_lossy(), "/metrics", 20).await;
    let one = format!("/api/v1/vms/{}", ids[0]);
    let sock = d.socket.to_string_lossy().into_owned();
    let tp1 = throughput(&sock, &one, 1, 3).await;
    let tp16 = throughput(&sock, &one, 16, 3).await;

    // Restart with `restart_n` running guests.
    for id in ids.iter().skip(restart_n) {
        assert_eq!(
            d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
                .await
                .0,
            200
        );
    }
    d.kill(nix::sys::signal::Signal::SIGKILL);
    let t = Instant::now();
    d.spawn().await;
    loop {
        let (_, page) = d
            .req("GET", "/api/v1/vms?status=paused&limit=1", None)
            .await;
        if page["total_count"].as_u64() == Some(restart_n as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart = ms(t);
    for id in &ids {
        let _ = d
            .req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await;
    }

    // ---- Docker ---------------------------------------------------------
    println!("running the Docker side...");
    let tar = common::busybox_rootfs_tar(&["sleep"]);
    let image = "libgo-cmp/busybox:1";
    {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(DOCKER).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(
            "http://x/v1.41/images/create?fromSrc=-&repo=libgo-cmp/busybox&tag=1",
        )
        .header("host", "x")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            tar.clone(),
        )))
        .unwrap();
        let _ = tx
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await;
    }
    let rss_docker_fresh = rss_kib(&["dockerd", "containerd"]) as f64;
    let mut dmade = 0;
    let mut dlist = Vec::new();
    let mut first_running = String::new();
    for &target in &targets {
        while dmade < target {
            let (code, c) = call(
                DOCKER,
                "POST",
                &format!("/v1.41/containers/create?name=cmp-{dmade:04}"),
                Some(json!({"Image": image, "Cmd": ["sleep", "3600"]})),
            )
            .await;
            assert_eq!(code, 201, "{c}");
            if dmade < running {
                let id = c["Id"].as_str().unwrap().to_owned();
                call(
                    DOCKER,
                    "POST",
                    &format!("/v1.41/containers/{id}/start"),
                    None,
                )
                .await;
                if first_running.is_empty() {
                    first_running = id;
                }
            }
            dmade += 1;
        }
        dlist.push((
            target,
            timed(DOCKER, "/v1.41/containers/json?all=1", 20).await,
        ));
    }
    let rss_docker = rss_kib(&["dockerd", "containerd", "containerd-shim-runc-v2"]) as f64;
    let dstats1 = timed(
        DOCKER,
        &format!("/v1.41/containers/{first_running}/stats?stream=false"),
        5,
    )
    .await;
    let dtp1 = throughput(
        DOCKER,
        &format!("/v1.41/containers/{first_running}/json"),
        1,
        3,
    )
    .await;
    let dtp16 = throughput(
        DOCKER,
        &format!("/v1.41/containers/{first_running}/json"),
        16,
        3,
    )
    .await;
    let (_, all) = call(
        DOCKER,
        "GET",
        "/v1.41/containers/json?all=1&filters=%7B%22name%22%3A%5B%22cmp-%22%5D%7D",
        None,
    )
    .await;
    for c in all.as_array().cloned().unwrap_or_default() {
        call(
            DOCKER,
            "DELETE",
            &format!("/v1.41/containers/{}?force=1", c["Id"].as_str().unwrap()),
            None,
        )
        .await;
    }

    // Container create+start: libgo against the engine, alternating.
    let (code, _) = {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(format!("http://x/api/v1/images/import?image={image}"))
            .header("host", "x")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(tar)))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let code = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        (code, ())
    };
    assert_eq!(code, 201);
    let (mut cl, mut ce) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let (code, c) = d.req("POST", "/api/v1/containers", Some(json!({"name": format!("cc-l{i}"), "image": image, "command": ["sleep", "600"], "start": true}))).await;
        cl.push(ms(t));
        assert_eq!(code, 201, "{c}");
        let t = Instant::now();
        let (_, c2) = call(
            DOCKER,
            "POST",
            &format!("/v1.41/containers/create?name=cc-d{i}"),
            Some(json!({"Image": image, "Cmd": ["sleep", "600"]})),
        )
        .await;
        let id = c2["Id"].as_str().unwrap().to_owned();
        call(
            DOCKER,
            "POST",
            &format!("/v1.41/containers/{id}/start"),
            None,
        )
        .await;
        ce.push(ms(t));
        d.req(
            "DELETE",
            &format!(
                "/api/v1/containers/{}?force=true",
                c["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
        call(
            DOCKER,
            "DELETE",
            &format!("/v1.41/containers/{id}?force=1"),
            None,
        )
        .await;
    }

    // ---- LXD (containers only here) -------------------------------------
    println!("running the LXD side...");
    let mut lxd_list = Vec::new();
    let mut rss_lxd = None;
    if Path::new(LXD).exists() {
        let mut lmade = 0;
        for &target in &targets {
            while lmade < target {
                let (code, op) = call(LXD, "POST", "/1.0/instances", Some(json!({"name": format!("cmp-{lmade:04}"), "source": {"type": "image", "alias": "libgo-bb"}}))).await;
                assert!(code < 300, "{op}");
                if let Some(op) = op["operation"].as_str() {
                    call(LXD, "GET", &format!("{op}/wait?timeout=60"), None).await;
                }
                lmade += 1;
            }
            lxd_list.push((
                target,
                Some(timed(LXD, "/1.0/instances?recursion=1", 10).await),
            ));
        }
        rss_lxd = Some(rss_kib(&["lxd"]) as f64);
        for i in 0..lmade {
            let (_, op) = call(LXD, "DELETE", &format!("/1.0/instances/cmp-{i:04}"), None).await;
            if let Some(op) = op["operation"].as_str() {
                call(LXD, "GET", &format!("{op}/wait?timeout=60"), None).await;
            }
        }
    }

    // ---- table ------------------------------------------------------------
    for (i, (target, l)) in list_ms.iter().enumerate() {
        let lv_key = format!("list_{target}_ms");
        row(
            format!(
                "list {target} defined (full objects{})",
                if *target >= 100 {
                    format!("; {running} running paused")
                } else {
                    String::new()
                }
            ),
            "ms",
            Some(*l),
            vec![
                ("libvirt list+info", lvf(&lv_key)),
                (
                    "LXD recursion=1 (containers)",
                    lxd_list.get(i).and_then(|x| x.1),
                ),
                ("Docker containers/json", dlist.get(i).map(|x| x.1)),
            ],
            false,
        );
    }
    row(
        "stats of 1 running guest".into(),
        "ms",
        Some(perf1),
        vec![
            ("libvirt domstats", lvf("stats_1_ms")),
            ("Docker stats (one-shot)", Some(dstats1)),
        ],
        false,
    );
    row(
        format!("stats of {running} running guests (/metrics vs getAllDomainStats)"),
        "ms",
        Some(metrics),
        vec![("libvirt domstats", lvf("stats_all_ms"))],
        false,
    );
    row(
        "daemon RSS, fresh".into(),
        "MiB",
        Some(rss_fresh / 1024.0),
        vec![
            (
                "libvirtd+virtlogd",
                lvf("rss_fresh_kib").map(|k| k / 1024.0),
            ),
            ("dockerd+containerd", Some(rss_docker_fresh / 1024.0)),
        ],
        false,
    );
    row(
        format!("daemon RSS, {defined} defined / {running} running"),
        "MiB",
        Some(rss_defined / 1024.0),
        vec![
            (
                "libvirtd+virtlogd",
                lvf("rss_defined_kib").map(|k| k / 1024.0),
            ),
            ("dockerd+containerd(+shims)", Some(rss_docker / 1024.0)),
            ("LXD", rss_lxd.map(|k| k / 1024.0)),
        ],
        false,
    );
    row(
        format!("daemon restart, {restart_n} running guests controllable again"),
        "ms",
        Some(restart),
        vec![("libvirt", lvf("restart_ms"))],
        false,
    );
    row(
        "container create + start".into(),
        "ms",
        Some(median(cl)),
        vec![("Docker engine socket", Some(median(ce)))],
        false,
    );
    row(
        "GET one resource, 1 keep-alive connection".into(),
        "req/s",
        Some(tp1),
        vec![("Docker containers/{id}/json", Some(dtp1))],
        true,
    );
    row(
        "GET one resource, 16 connections".into(),
        "req/s",
        Some(tp16),
        vec![("Docker containers/{id}/json", Some(dtp16))],
        true,
    );

    let mut out = String::new();
    let versions = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    out.push_str(&format!(
        "Run {} on {} cores, accel {}; {}, libvirt {}, {}, LXD {}. Medians; ratio = libgo / peer (below 1 is libgo faster or leaner; for req/s above 1 is libgo faster).\n\n",
        versions("date", &["-u", "+%Y-%m-%d"]),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        d.req("GET", "/health", None).await.1["accel"].as_str().unwrap_or("?"),
        versions("qemu-system-x86_64", &["--version"]),
        lv["version"].as_u64().map(|v| format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)).unwrap_or_else(|| "n/a".into()),
        versions("docker", &["version", "--format", "Docker {{.Server.Version}}"]),
        versions("lxd", &["--version"]),
    ));
    out.push_str("| figure | unit | libgo | peer | peer value | ratio |\n| --- | --- | --- | --- | --- | --- |\n");
    for r in &rows {
        for (name, v) in &r.peers {
            let ratio = match (r.libgo, v) {
                (Some(l), Some(p)) if *p > 0.0 => format!("{:.2}", l / p),
                _ => "n/a".into(),
            };
            let _ = r.higher_is_better;
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.figure,
                r.unit,
                fmt(r.libgo),
                name,
                fmt(*v),
                ratio
            ));
        }
    }
    println!("\n{out}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("latest.md"), &out).unwrap();
}
