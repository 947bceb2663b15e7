//! Scale: one release `libgod` holding many defined VMs (linked clones, left
//! stopped), then the figures that must not grow with the fleet: one page of
//! `GET /api/v1/vms?limit=200`, the walk through every page, the daemon's
//! RSS, and a restart (SIGKILL, start again on the same state directory,
//! until `GET /api/v1/vms?limit=1` answers with every VM counted).
//!
//! `cargo bench --bench scale`. Sizes: LIBGO_SCALE_VMS (10,000),
//! LIBGO_SCALE_INFLIGHT (bulk requests of 100 in flight while defining, 2),
//! LIBGO_SCALE_PAGES (repeats of the one-page figure, 50), LIBGO_SCALE_WALKS
//! (repeats of the walk, 5), LIBGO_SCALE_RESTARTS (3). Prints a Markdown
//! table with the targets and writes it to `benches/results/scale.md`.
//! Everything else lives in a temporary directory removed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{median, raw_request, Daemon};
use futures::StreamExt;
use serde::de::IgnoredAny;
use serde_json::{json, Value};

const PAGE_TARGET_MS: f64 = 2.0;
const RSS_TARGET_MIB: f64 = 48.0;
const RESTART_TARGET_MS: f64 = 1000.0;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// One page of `GET /api/v1/vms`, read without building the objects.
#[derive(serde::Deserialize)]
struct VmPage {
    vms: Vec<IgnoredAny>,
    next_page_token: Option<String>,
    total_count: usize,
}

/// One GET of a VM page, timed at the client over the socket (connect,
/// request, whole body, parse); ms, the page and its size in bytes.
async fn get_page(sock: &Path, path: &str) -> Result<(f64, VmPage, usize), String> {
    let t = Instant::now();
    let (code, _, bytes) = raw_request(sock, "GET", path, None, &[]).await?;
    if code != 200 {
        return Err(format!("{path}: {code}"));
    }
    let page: VmPage = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok((ms(t), page, bytes.len()))
}

/// Walks every page of `limit=200`; ms and VMs seen.
async fn walk(sock: &Path) -> (f64, usize) {
    let t = Instant::now();
    let mut token: Option<String> = None;
    let mut seen = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/vms?limit=200&page_token={t}"),
            None => "/api/v1/vms?limit=200".to_owned(),
        };
        let (_, page, _) = get_page(sock, &path).await.unwrap();
        seen += page.vms.len();
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    (ms(t), seen)
}

/// Defines VMs `from..from + n` with one bulk request; waits for its job.
async fn bulk_create(d: &Daemon, from: usize, n: usize, cmdline: &str) {
    let items: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"name": format!("s-{i:05}"), "vcpus": 1, "memory": 64, "disk_size": 1,
                "base_image": "base.qcow2",
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline}})
        })
        .collect();
    let (code, acc) = d
        .req("POST", "/api/v1/vms", Some(Value::Array(items)))
        .await;
    assert_eq!(code, 202, "{acc}");
    let id = acc["job"]["id"].as_str().unwrap().to_owned();
    loop {
        let (_, job) = d
            .req("GET", &format!("/api/v1/jobs/{id}?wait=300"), None)
            .await;
        match job["state"].as_str() {
            Some("succeeded") => return,
            Some("queued") | Some("running") => continue,
            _ => panic!("bulk create {from}..{}: {job}", from + n),
        }
    }
}

/// The daemon's process started by hand, with exactly the arguments
/// `Daemon::spawn` gives it, so the restart can be timed without that
/// helper's 20 ms polling of /health.
fn spawn_libgod(d: &Daemon) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.root.path().join("libgod.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_libgod"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--run-dir")
        .arg(d.run_dir())
        .arg("--image-dir")
        .arg(d.image_dir())
        .arg("--node-name")
        .arg(&d.node)
        .arg("--readonly-socket")
        .arg(d.root.path().join("libgo-ro.sock"))
        .arg("--accel")
        .arg(std::env::var("LIBGO_TEST_ACCEL").unwrap_or_else(|_| "auto".into()))
        .args(&d.extra_args)
        .env("RUST_LOG", "info,libgo=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn libgod")
}

/// The text of a log without its ANSI colour sequences (ESC [ ... m).
fn strip_ansi(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn verdict(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = env("LIBGO_SCALE_VMS", 10_000).max(1);
    let inflight = env("LIBGO_SCALE_INFLIGHT", 2).max(1);
    let page_runs = env("LIBGO_SCALE_PAGES", 50).max(1);
    let walk_runs = env("LIBGO_SCALE_WALKS", 5).max(1);
    let restarts = env("LIBGO_SCALE_RESTARTS", 3).max(1);
    let cmdline = common::fixture_cmdline();
    let mut d = Daemon::start().await;
    let rss_fresh = rss_mib(d.pid());

    // ---- define N VMs: bulk requests of up to 100, `inflight` at once ----
    println!("defining {total} VMs ({inflight} bulk requests of <= 100 in flight)...");
    let t = Instant::now();
    let batches: Vec<(usize, usize)> = (0..total)
        .step_by(100)
        .map(|from| (from, (total - from).min(100)))
        .collect();
    let mut done = 0;
    let mut creates = futures::stream::iter(batches.iter().copied())
        .map(|(from, n)| {
            let (d, cmdline) = (&d, &cmdline);
            async move {
                bulk_create(d, from, n, cmdline).await;
                n
            }
        })
        .buffer_unordered(inflight);
    while let Some(n) = creates.next().await {
        let before = done;
        done += n;
        if done / 1000 != before / 1000 || done == total {
            let s = t.elapsed().as_secs_f64();
            println!(
                "  {done} defined in {s:.0} s ({:.1} ms per VM)",
                s * 1e3 / done as f64
            );
        }
    }
    drop(creates);
    let define_s = t.elapsed().as_secs_f64();

    // ---- lists -----------------------------------------------------------
    let (mut page, mut bytes) = (Vec::new(), 0);
    for _ in 0..page_runs {
        let (t, p, b) = get_page(&d.socket, "/api/v1/vms?limit=200").await.unwrap();
        assert_eq!((p.vms.len(), p.total_count), (200.min(total), total));
        page.push(t);
        bytes = b;
    }
    let page = median(page);
    let mut walks = Vec::new();
    for _ in 0..walk_runs {
        let (t, seen) = walk(&d.socket).await;
        assert_eq!(seen, total);
        walks.push(t);
    }
    let walk_ms = median(walks);
    let rss = rss_mib(d.pid());

    // ---- restart: SIGKILL, start on the same state, until all are listed --
    d.kill(nix::sys::signal::Signal::SIGKILL);
    let mut restart = Vec::new();
    let mut rss_restarted = 0.0;
    for _ in 0..restarts {
        let t = Instant::now();
        let mut child = spawn_libgod(&d);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((_, p, _)) = get_page(&d.socket, "/api/v1/vms?limit=1").await {
                if p.total_count == total {
                    break;
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("libgod exited during its restart ({st}):\n{}", d.log());
            }
            assert!(Instant::now() < deadline, "no answer:\n{}", d.log());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        restart.push(ms(t));
        rss_restarted = rss_mib(child.id());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
    }
    let restart_ms = median(restart.clone());
    // libgod's own account: `ready_ms` (open the state, recover, before the
    // socket is bound) on its "libgod serving" lines, one per start.
    let ready: Vec<f64> = strip_ansi(&d.log())
        .lines()
        .filter(|l| l.contains("libgod serving") && l.contains(&format!(" vms={total} ")))
        .filter_map(|l| {
            let v = &l[l.find(" ready_ms=")? + 10..];
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect();

    // ---- table -----------------------------------------------------------
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut out = format!(
        "libgo at scale: {total} VMs defined (stopped), {cores} cores. Times at the client over the socket; medians.\n\n"
    );
    out.push_str("| figure | value | target | met |\n| --- | --- | --- | --- |\n");
    out.push_str(&format!(
        "| define {total} VMs (bulk requests of 100, {inflight} in flight, linked clones) | {define_s:.0} s ({:.1} ms per VM) | | |\n",
        define_s * 1e3 / total as f64
    ));
    out.push_str(&format!(
        "| `GET /api/v1/vms?limit=200`, first page ({bytes} bytes; median of {page_runs}) | {page:.2} ms | <= {PAGE_TARGET_MS} ms | {} |\n",
        verdict(page <= PAGE_TARGET_MS)
    ));
    out.push_str(&format!(
        "| walk of all {} pages of 200 (median of {walk_runs}) | {walk_ms:.1} ms | | |\n",
        total.div_ceil(200)
    ));
    out.push_str(&format!(
        "| daemon RSS, fresh (no VM) | {rss_fresh:.1} MiB | | |\n"
    ));
    out.push_str(&format!(
        "| daemon RSS with {total} defined (after the lists) | {rss:.1} MiB | <= {RSS_TARGET_MIB} MiB | {} |\n",
        verdict(rss <= RSS_TARGET_MIB)
    ));
    out.push_str(&format!(
        "| daemon RSS right after a restart | {rss_restarted:.1} MiB | <= {RSS_TARGET_MIB} MiB | {} |\n",
        verdict(rss_restarted <= RSS_TARGET_MIB)
    ));
    out.push_str(&format!(
        "| restart: SIGKILL, start, until `GET /api/v1/vms?limit=1` counts {total} (median of {restarts}: {}) | {restart_ms:.0} ms | <= {RESTART_TARGET_MS} ms | {} |\n",
        restart
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        verdict(restart_ms <= RESTART_TARGET_MS)
    ));
    if !ready.is_empty() {
        out.push_str(&format!(
            "\nOf the restart, libgod's own start-up (opening the state and recovering, before its socket is bound; `ready_ms` in its log) took {} ms.\n",
            ready
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    println!("\n{out}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("scale.md"), &out).unwrap();
    // `d` is dropped here: its temporary directory (state, disks, socket)
    // goes with it; no VM ever ran.
}
