//! libgo side by side with its peers on this machine, in one run: raw QEMU,
//! libvirt (Python binding, one connection), LXD (REST on its socket) and the
//! Docker engine (REST on its socket). Prints a Markdown table of medians and
//! ratios (libgo / peer) and writes it to `benches/results/latest.md`.
//!
//! The raw-QEMU floor of create + start is the product's own work done by
//! hand: the same `qemu-img create` and the QEMU command line libgod builds
//! (`libgo::qemu::argv::build`), checked against `/proc/<pid>/cmdline` of a
//! VM libgod starts in the same run, alternating with libgo's runs.
//!
//! Run it with `bash benches/run.sh`, which installs and starts the peers;
//! `cargo bench --bench compare` alone runs whichever peers answer on their
//! sockets (libvirt, LXD and Docker are each skipped when theirs is missing).
//! Sizes: LIBGO_CMP_RUNS (10), LIBGO_CMP_DEFINED (500), LIBGO_CMP_RUNNING (100),
//! LIBGO_CMP_RESTART (50).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{median, raw_request, Daemon};
use libgo::host::qemu_img::QemuImg;
use libgo::qemu::argv::{self, Accelerator, KernelBoot, LaunchSpec};
use serde::de::IgnoredAny;
use serde_json::{json, Value};

const DOCKER: &str = "/var/run/docker.sock";
const LXD: &str = "/var/lib/lxd/unix.socket";
const LIBVIRT: &str = "/var/run/libvirt/libvirt-sock";
const GIB: u64 = 1 << 30;

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

/// Where VMs' files live, laid out as libgod lays them out: the disk and
/// console log under `<state>/vms/<id>/`, sockets and pidfile under
/// `<run>/vms/<id>/`, kernel and initrd in the image pool.
struct VmDirs {
    state: PathBuf,
    run: PathBuf,
    images: PathBuf,
}

/// The launch spec libgod fills for the compare VM (1 vCPU, 128 MiB, a
/// linked clone, user networking, direct kernel boot, no cloud-init);
/// mirrors `launch_spec` in src/engine/runtime.rs, and `cross_check`
/// proves it against a QEMU libgod really started.
fn launch_spec(
    id: uuid::Uuid,
    name: String,
    mac: String,
    accel: Accelerator,
    disk_cache: &'static str,
    dirs: &VmDirs,
    cmdline: &str,
) -> LaunchSpec {
    let state = dirs.state.join("vms").join(id.to_string());
    let run = dirs.run.join("vms").join(id.to_string());
    LaunchSpec {
        id,
        name,
        vcpus: 1,
        memory_mib: 128,
        accel,
        disk: state.join("root.qcow2"),
        disk_format: "qcow2".into(),
        disk_cache,
        mac,
        tap_fd: None,
        boot: Some(KernelBoot {
            kernel: dirs.images.join("vmlinuz"),
            initrd: Some(dirs.images.join("initrd.img")),
            cmdline: Some(cmdline.to_owned()),
        }),
        seed: None,
        pidfile: run.join("qemu.pid"),
        qmp_socket: run.join("qmp.sock"),
        console_socket: run.join("console.sock"),
        console_log: state.join("console.log"),
        vnc_socket: None,
        throttle: None,
        extra_disks: Vec::new(),
        incoming: false,
    }
}

/// The floor of "create + start": the disk libgod's create makes (one
/// `qemu-img create`, a linked clone at its final size, through the same
/// `QemuImg::create_linked`), then QEMU with libgod's argv spawned the way
/// libgod spawns it (`process::spawn`: own session, output to a log), until
/// `qmp_capabilities` and `cont` are answered, polling for the monitor
/// every millisecond. Returns the total and the qemu-img part (ms).
async fn floor_create_start(
    img: &QemuImg,
    spec: &LaunchSpec,
    base: &Path,
) -> (f64, f64, tokio::process::Child) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let t = Instant::now();
    let state = spec.disk.parent().unwrap();
    std::fs::create_dir_all(state).unwrap();
    std::fs::create_dir_all(spec.pidfile.parent().unwrap()).unwrap();
    img.create_linked(base, "qcow2", &spec.disk, GIB)
        .await
        .unwrap();
    let img_ms = ms(t);
    let log = state.join("qemu.log");
    let mut child = libgo::qemu::process::spawn(
        Path::new("qemu-system-x86_64"),
        &argv::build(spec),
        &log,
        None,
        &[],
        None,
    )
    .unwrap();
    let stream = loop {
        if let Ok(s) = tokio::net::UnixStream::connect(&spec.qmp_socket).await {
            break s;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "floor QEMU exited ({st}): {}",
                libgo::qemu::process::log_tail(&log, 600)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = lines.next_line().await.unwrap().unwrap();
    assert!(greeting.contains("\"QMP\""), "{greeting}");
    for cmd in ["qmp_capabilities", "cont"] {
        w.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
            .await
            .unwrap();
        // Events (RESUME) may come before the answer.
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.contains("\"return\"") {
                break;
            }
            assert!(!line.contains("\"error\""), "{cmd}: {line}");
        }
    }
    (ms(t), img_ms, child)
}

/// Kills a floor QEMU and removes its files (not timed).
async fn floor_remove(mut child: tokio::process::Child, spec: &LaunchSpec) {
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(spec.disk.parent().unwrap());
    let _ = std::fs::remove_dir_all(spec.pidfile.parent().unwrap());
}

/// The argv of the QEMU libgod runs for `vm` (from `/proc/<pid>/cmdline`)
/// must be exactly what `launch_spec` builds with libgod's directories, and
/// the floor's argv must differ from it only in ids, names and directories:
/// otherwise the floor measures another VM than the product runs.
fn cross_check(
    vm: &Value,
    accel: Accelerator,
    disk_cache: &'static str,
    daemon: &VmDirs,
    floor: &VmDirs,
    cmdline: &str,
) {
    let pid = vm["pid"].as_u64().expect("a running VM has a pid");
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let mut real: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if real.last().is_some_and(|a| a.is_empty()) {
        real.pop();
    }
    assert_eq!(real[0], "qemu-system-x86_64");
    let id: uuid::Uuid = vm["id"].as_str().unwrap().parse().unwrap();
    let (name, mac) = (
        vm["name"].as_str().unwrap(),
        vm["mac_address"].as_str().unwrap(),
    );
    let expected = argv::build(&launch_spec(
        id,
        name.into(),
        mac.into(),
        accel,
        disk_cache,
        daemon,
        cmdline,
    ));
    assert_eq!(
        real[1..],
        expected[..],
        "libgod ran another QEMU command line than the floor builds"
    );
    let normalize = |argv: &[String], dirs: &VmDirs, id: &str, name: &str, mac: &str| {
        argv.iter()
            .map(|a| {
                a.replace(&*dirs.state.to_string_lossy(), "<state>")
                    .replace(&*dirs.run.to_string_lossy(), "<run>")
                    .replace(&*dirs.images.to_string_lossy(), "<images>")
                    .replace(id, "<id>")
                    .replace(mac, "<mac>")
                    .replace(name, "<name>")
            })
            .collect::<Vec<_>>()
    };
    let floor_id = uuid::Uuid::new_v4();
    let floor_argv = argv::build(&launch_spec(
        floor_id,
        "raw-x".into(),
        "52:54:00:ff:00:00".into(),
        accel,
        disk_cache,
        floor,
        cmdline,
    ));
    assert_eq!(
        normalize(&real[1..], daemon, &id.to_string(), name, mac),
        normalize(
            &floor_argv,
            floor,
            &floor_id.to_string(),
            "raw-x",
            "52:54:00:ff:00:00"
        ),
        "the floor's argv differs from libgod's beyond ids and paths"
    );
}

/// Medians' inputs from libgod's "guest continued" log lines: QEMU spawned
/// -> QMP connected, and spawned -> `cont` answered, in ms.
fn start_breakdown(log: &str) -> (Vec<f64>, Vec<f64>) {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let field = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(&format!(" {key}="))? + key.len() + 2..];
        let v: String = rest.chars().take_while(char::is_ascii_digit).collect();
        v.parse::<f64>().ok().map(|us| us / 1e3)
    };
    let (mut up, mut total) = (Vec::new(), Vec::new());
    for line in plain.lines().filter(|l| l.contains("guest continued")) {
        if let (Some(u), Some(t)) = (field(line, "qmp_up_us"), field(line, "total_us")) {
            up.push(u);
            total.push(t);
        }
    }
    (up, total)
}

/// One page of `GET /api/v1/vms`, read without building the objects.
#[derive(serde::Deserialize)]
struct VmPage {
    vms: Vec<IgnoredAny>,
    next_page_token: Option<String>,
}

/// Walks every page of `GET /api/v1/vms?limit=200`, timed at the client
/// (a connection per request, as every figure here); returns ms and VMs seen.
async fn walk_vms(sock: &Path) -> (f64, usize) {
    let t = Instant::now();
    let mut token: Option<String> = None;
    let mut seen = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/vms?limit=200&page_token={t}"),
            None => "/api/v1/vms?limit=200".to_owned(),
        };
        let (code, _, bytes) = raw_request(sock, "GET", &path, None, &[]).await.unwrap();
        assert_eq!(code, 200, "{path}");
        let page: VmPage = serde_json::from_slice(&bytes).unwrap();
        seen += page.vms.len();
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    (ms(t), seen)
}

/// `GET /containers/json?all=1` on the engine, read the same way; ms and count.
async fn docker_list() -> (f64, usize) {
    let t = Instant::now();
    let (code, _, bytes) = raw_request(
        Path::new(DOCKER),
        "GET",
        "/v1.41/containers/json?all=1",
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let all: Vec<IgnoredAny> = serde_json::from_slice(&bytes).unwrap();
    (ms(t), all.len())
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

/// POST of a binary body (an image tarball); status and body.
async fn post_bytes(sock: &Path, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://x{path}"))
        .header("host", "x")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (code, body)
}

/// Removes the engine's containers whose names start with one of `prefixes`.
async fn docker_remove_named(prefixes: &[&str]) {
    let (_, all) = call(DOCKER, "GET", "/v1.41/containers/json?all=1", None).await;
    for c in all.as_array().cloned().unwrap_or_default() {
        let ours = c["Names"].as_array().into_iter().flatten().any(|n| {
            let n = n.as_str().unwrap_or("").trim_start_matches('/');
            prefixes.iter().any(|p| n.starts_with(p))
        });
        if ours {
            call(
                DOCKER,
                "DELETE",
                &format!("/v1.41/containers/{}?force=1", c["Id"].as_str().unwrap()),
                None,
            )
            .await;
        }
    }
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

    let work = tempfile::Builder::new()
        .prefix("lgcmp")
        .tempdir_in("/tmp")
        .unwrap();

    // ---- libvirt (in its own process, one connection) -------------------
    // Optional: without a libvirtd socket its column reads n/a.
    let lv: Value = if !Path::new(LIBVIRT).exists() {
        println!("no libvirtd ({LIBVIRT}): libvirt figures skipped");
        Value::Null
    } else {
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
        match lv_out {
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
    // Create + start, paired with the raw-QEMU floor: the same qemu-img
    // create and the same QEMU command line, built by libgod's own
    // `argv::build`, run by hand. The two alternate (and swap order every
    // run) so machine noise lands on both sides alike.
    let accel = match d.req("GET", "/health", None).await.1["accel"].as_str() {
        Some("kvm") => Accelerator::Kvm,
        _ => Accelerator::Tcg,
    };
    let daemon_dirs = VmDirs {
        state: d.state_dir(),
        run: d.run_dir(),
        images: d.image_dir(),
    };
    let floor_dirs = VmDirs {
        state: work.path().join("raw/state"),
        run: work.path().join("raw/run"),
        images: fx.clone(),
    };
    // libgod picks cache=none where O_DIRECT works in its state directory.
    let disk_cache = |dirs: &VmDirs| {
        std::fs::create_dir_all(dirs.state.join("vms")).unwrap();
        if libgo::host::supports_o_direct(&dirs.state.join("vms")) {
            "none"
        } else {
            "writeback"
        }
    };
    let floor_cache = disk_cache(&floor_dirs);
    assert_eq!(
        floor_cache,
        disk_cache(&daemon_dirs),
        "the floor's disks must use the cache mode libgod's do"
    );
    let img = QemuImg::new("qemu-img");
    let (mut create, mut delete) = (Vec::new(), Vec::new());
    let (mut raw, mut raw_img) = (Vec::new(), Vec::new());
    let mut cross_checked = false;
    for i in 0..runs {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                let spec = launch_spec(
                    uuid::Uuid::new_v4(),
                    format!("raw-{i}"),
                    format!("52:54:00:ff:00:{:02x}", i % 256),
                    accel,
                    floor_cache,
                    &floor_dirs,
                    &cmdline,
                );
                let (total, img_ms, child) =
                    floor_create_start(&img, &spec, &fx.join("base.qcow2")).await;
                raw.push(total);
                raw_img.push(img_ms);
                floor_remove(child, &spec).await;
                continue;
            }
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
            if !cross_checked {
                let (_, vm) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
                cross_check(&vm, accel, floor_cache, &daemon_dirs, &floor_dirs, &cmdline);
                cross_checked = true;
            }
            let t = Instant::now();
            assert_eq!(
                d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
                200
            );
            delete.push(ms(t));
        }
    }
    // libgod's own account of its starts ("guest continued" log lines).
    let (qmp_up, started) = start_breakdown(&d.log());
    let raw_floor = median(raw.clone());
    let libgo_create = median(create.clone());
    let mut notes = vec![format!(
        "create + start floor: `qemu-img create` (linked clone at its final size) {:.1} ms + QEMU with libgod's argv until `cont` is answered {:.1} ms (medians); the argv equals `/proc/<pid>/cmdline` of a VM libgod started in this run. libgo / floor = {:.2} (median of the {} paired runs' ratios: {:.2}).",
        median(raw_img.clone()),
        median(raw.iter().zip(&raw_img).map(|(t, i)| t - i).collect()),
        libgo_create / raw_floor,
        runs,
        median(create.iter().zip(&raw).map(|(l, r)| l / r).collect()),
    )];
    if !qmp_up.is_empty() {
        notes.push(format!(
            "libgod's log for these starts: QEMU spawned -> QMP connected {:.1} ms, spawned -> `cont` answered {:.1} ms (medians).",
            median(qmp_up),
            median(started),
        ));
    }
    row(
        "VM create + start (linked clone; until `cont` is answered)".into(),
        "ms",
        Some(libgo_create),
        vec![
            ("libvirt", lvf("create_start_ms")),
            ("raw QEMU, libgod's argv (floor)", Some(raw_floor)),
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

    // ---- Docker preparation: an image, and no leftovers of an earlier run.
    // Optional: without the engine's socket its columns read n/a.
    let have_docker = Path::new(DOCKER).exists();
    let tar = common::busybox_rootfs_tar(&["sleep"]);
    let image = "libgo-cmp/busybox:1";
    let mut rss_docker_fresh = None;
    if have_docker {
        docker_remove_named(&["cmp-", "cc-d"]).await;
        let (code, body) = post_bytes(
            Path::new(DOCKER),
            "/v1.41/images/create?fromSrc=-&repo=libgo-cmp/busybox&tag=1",
            tar.clone(),
        )
        .await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        rss_docker_fresh = Some(rss_kib(&["dockerd", "containerd"]) as f64);
    } else {
        println!("no Docker engine ({DOCKER}): Docker figures skipped");
    }

    // Lists with 1, 100 and `defined` VMs (and as many containers);
    // `running` of them running (VMs paused). libgo's walk of every page and
    // the engine's one list alternate, in the same run.
    let mut made = 0;
    let mut dmade = 0;
    let mut first_running = String::new();
    let mut ids = Vec::new();
    let mut list_ms = Vec::new();
    let mut dlist = Vec::new();
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
        while have_docker && dmade < target {
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
                let (code, c) = call(
                    DOCKER,
                    "POST",
                    &format!("/v1.41/containers/{id}/start"),
                    None,
                )
                .await;
                assert_eq!(code, 204, "{c}");
                if first_running.is_empty() {
                    first_running = id;
                }
            }
            dmade += 1;
        }
        let (mut v, mut dv) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let (t, seen) = walk_vms(&d.socket).await;
            assert_eq!(seen, target);
            v.push(t);
            if have_docker {
                let (t, n) = docker_list().await;
                assert!(n >= target, "{n} containers listed, {target} made");
                dv.push(t);
            }
        }
        list_ms.push((target, median(v)));
        dlist.push((!dv.is_empty()).then(|| median(dv)));
    }
    let rss_defined = rss_kib(&["libgod"]) as f64;
    let rss_docker =
        have_docker.then(|| rss_kib(&["dockerd", "containerd", "containerd-shim-runc-v2"]) as f64);
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

    // ---- Docker: one container's stats and GET, container create+start ----
    let (mut dstats1, mut dtp1, mut dtp16) = (None, None, None);
    let (mut cl, mut ce) = (Vec::new(), Vec::new());
    if have_docker {
        println!("running the Docker side...");
        dstats1 = Some(
            timed(
                DOCKER,
                &format!("/v1.41/containers/{first_running}/stats?stream=false"),
                5,
            )
            .await,
        );
        let one = format!("/v1.41/containers/{first_running}/json");
        dtp1 = Some(throughput(DOCKER, &one, 1, 3).await);
        dtp16 = Some(throughput(DOCKER, &one, 16, 3).await);
        docker_remove_named(&["cmp-"]).await;

        // Container create+start: libgo against the engine, alternating.
        let (code, body) = post_bytes(
            &d.socket,
            &format!("/api/v1/images/import?image={image}"),
            tar,
        )
        .await;
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
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
    }

    // ---- LXD (containers only here) -------------------------------------
    let mut lxd_list = Vec::new();
    let mut rss_lxd = None;
    if !Path::new(LXD).exists() {
        println!("no LXD ({LXD}): LXD figures skipped");
    } else {
        println!("running the LXD side...");
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
        let pages = target.div_ceil(200).max(1);
        row(
            format!(
                "list {target} defined: {} of limit=200 (full objects{})",
                if pages == 1 {
                    "one page".to_owned()
                } else {
                    format!("walk of all {pages} pages")
                },
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
                (
                    "Docker containers/json?all=1",
                    dlist.get(i).copied().flatten(),
                ),
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
            ("Docker stats (one-shot)", dstats1),
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
            ("dockerd+containerd", rss_docker_fresh.map(|k| k / 1024.0)),
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
            ("dockerd+containerd(+shims)", rss_docker.map(|k| k / 1024.0)),
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
        (!cl.is_empty()).then(|| median(cl)),
        vec![("Docker engine socket", (!ce.is_empty()).then(|| median(ce)))],
        false,
    );
    row(
        "GET one resource, 1 keep-alive connection".into(),
        "req/s",
        Some(tp1),
        vec![("Docker containers/{id}/json", dtp1)],
        true,
    );
    row(
        "GET one resource, 16 connections".into(),
        "req/s",
        Some(tp16),
        vec![("Docker containers/{id}/json", dtp16)],
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
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "n/a".into())
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
    // The list walk's targets: at most 3 ms, and 10x faster than the engine.
    if let (Some((n, l)), Some(Some(p))) = (list_ms.last(), dlist.last()) {
        notes.push(format!(
            "list walk with {n} defined: libgo {l:.2} ms (target <= 3 ms: {}), Docker {p:.2} ms, libgo / Docker = {:.3} (target <= 0.1: {}).",
            if *l <= 3.0 { "met" } else { "not met" },
            l / p,
            if l / p <= 0.1 { "met" } else { "not met" },
        ));
    }
    out.push('\n');
    for n in &notes {
        out.push_str(&format!("- {n}\n"));
    }
    println!("\n{out}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("latest.md"), &out).unwrap();
}
