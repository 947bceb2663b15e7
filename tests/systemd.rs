//! libgod under a service manager, without one: the test plays systemd's
//! part. It listens on a notification socket (`NOTIFY_SOCKET`) and on a
//! journal socket, starts a real daemon, and checks what arrives: READY=1
//! only once the API answers and running guests are re-adopted, WATCHDOG=1
//! at half of `WATCHDOG_USEC` while the daemon lives, STOPPING=1 on SIGTERM,
//! and log entries whose fields say which VM, job and request they are about.
//! The unit file itself is checked with `systemd-analyze verify`.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, BOOT, READY};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One blocking `GET` over a Unix socket: status and body.
fn get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A notification as the listener saw it, with what the daemon answered at
/// that very moment when it was READY=1.
#[derive(Debug)]
struct Note {
    at: Instant,
    text: String,
    /// On READY=1: GET /api/v1/vms/<watched> at once, and the daemon's log then.
    probe: Option<(std::io::Result<(u16, String)>, String)>,
}

/// What the listener asks the daemon about when READY=1 arrives.
struct Watch {
    api: PathBuf,
    log: PathBuf,
    vm: String,
}

/// Receives notifications on an abstract socket in a thread of its own; on
/// READY=1 it asks the daemon about the watched VM before reading further,
/// so the answer shows the daemon's state when it declared itself ready.
fn listen(name: &str, watch: Arc<Mutex<Option<Watch>>>) -> mpsc::Receiver<Note> {
    use std::os::linux::net::SocketAddrExt;
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name).unwrap()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let at = Instant::now();
            let probe = match &*watch.lock().unwrap() {
                Some(w) if text.lines().any(|l| l == "READY=1") => Some((
                    get(&w.api, &format!("/api/v1/vms/{}", w.vm)),
                    std::fs::read_to_string(&w.log).unwrap_or_default(),
                )),
                _ => None,
            };
            if tx.send(Note { at, text, probe }).is_err() {
                return;
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<Note>, timeout: Duration, what: &str, d: &Daemon) -> Note {
    rx.recv_timeout(timeout)
        .unwrap_or_else(|e| panic!("no {what} within {timeout:?} ({e}):\n{}", d.log()))
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_watchdog_and_stop_follow_the_daemon() {
    let _slot = common::guest_slot().await;
    let name = format!("libgo-test-notify-{}", std::process::id());
    // Bound before the daemon starts, as systemd's is.
    let watch = Arc::new(Mutex::new(None));
    let rx = listen(&name, watch.clone());
    let mut d = Daemon::start_with_env(
        &[],
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "3000000"),
        ],
    )
    .await;
    let id = d.create_fixture_vm("notified", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first daemon is ready too, before any guest runs.
    let first_ready = next(&rx, Duration::from_secs(5), "READY=1", &d);
    assert!(first_ready.text.contains("READY=1"), "{first_ready:?}");
    *watch.lock().unwrap() = Some(Watch {
        api: d.socket.clone(),
        log: d.root.path().join("libgod.log"),
        vm: id.clone(),
    });
    let (code, v) = d
        .req("POST", &format!("/api/v1/vms/{id}/start"), None)
        .await;
    assert_eq!(code, 200, "{v}");
    let (_, v) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    let qemu = v["pid"].as_u64().expect("a running VM has a pid") as u32;
    d.wait_marker(&id, READY, 1, BOOT).await;
    // QEMU never inherits the daemon's line to the service manager.
    let environ = std::fs::read(format!("/proc/{qemu}/environ")).unwrap();
    assert!(
        !environ.windows(13).any(|w| w == b"NOTIFY_SOCKET"),
        "QEMU inherited NOTIFY_SOCKET"
    );

    // Restart with the guest running: READY=1 comes once it is re-adopted
    // and the socket answers.
    let first = d.pid();
    let status = d.kill(Signal::SIGTERM);
    assert!(status.success(), "{status}\n{}", d.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stopping = false;
    while !stopping && Instant::now() < deadline {
        let n = next(&rx, Duration::from_secs(5), "STOPPING=1", &d);
        stopping = n.text.lines().any(|l| l == "STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1 on SIGTERM");
    assert!(common::pid_alive(qemu), "the guest died with the daemon");
    // Forget what the first daemon sent.
    while rx.try_recv().is_ok() {}

    d.spawn().await;
    let second = d.pid();
    assert_ne!(first, second);
    let ready = loop {
        let n = next(&rx, Duration::from_secs(30), "READY=1", &d);
        if n.probe.is_some() {
            break n;
        }
        assert!(
            !n.text.contains("WATCHDOG=1"),
            "a watchdog ping before READY=1: {n:?}"
        );
    };
    assert!(
        ready.text.lines().any(|l| l == format!("MAINPID={second}")),
        "{ready:?}"
    );
    assert!(ready.text.contains("STATUS="), "{ready:?}");
    let (answer, log) = ready.probe.unwrap();
    let (code, body) =
        answer.unwrap_or_else(|e| panic!("the socket did not answer at READY=1: {e}"));
    assert_eq!(code, 200, "{body}");
    let vm: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(vm["status"], "running", "{vm}");
    assert_eq!(vm["pid"].as_u64(), Some(qemu as u64), "{vm}");
    let adopted = log
        .lines()
        .skip_while(|l| !l.contains("stopping; guests keep running"))
        .any(|l| l.contains("re-adopted") && l.contains(&id));
    assert!(adopted, "READY=1 before the guest was re-adopted:\n{log}");

    // WATCHDOG=1 every 1.5 s (half of 3 s), and only while the daemon runs.
    let mut pings = Vec::new();
    let watch_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < watch_until {
        if let Ok(n) = rx.recv_timeout(Duration::from_millis(100)) {
            if n.text.lines().any(|l| l == "WATCHDOG=1") {
                pings.push(n.at);
            }
        }
    }
    assert!(pings.len() >= 4, "{} pings in 7 s", pings.len());
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(1000) && gap < Duration::from_millis(2700),
            "pings {gap:?} apart (period 1.5 s, timeout 3 s)"
        );
    }
    // A frozen daemon stops pinging; thawed, it pings again.
    let pid = Pid::from_raw(second as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    while rx.try_recv().is_ok() {}
    let frozen = rx.recv_timeout(Duration::from_millis(3500));
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(frozen.is_err(), "a stopped daemon pinged: {frozen:?}");
    let n = next(&rx, Duration::from_secs(4), "WATCHDOG=1 after SIGCONT", &d);
    assert!(n.text.contains("WATCHDOG=1"), "{n:?}");

    let status = d.kill(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stopping = false;
    while !stopping && Instant::now() < deadline {
        let n = next(&rx, Duration::from_secs(5), "STOPPING=1", &d);
        stopping = n.text.lines().any(|l| l == "STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1 on the second SIGTERM");
    assert!(common::pid_alive(qemu), "the guest died with the daemon");
    // Dropping `d` kills the guest.
}

/// Parses journald's native protocol: `KEY=value` lines, or `KEY`, a
/// little-endian u64 length, the value and a newline.
fn journal_entry(mut b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').expect("a field ends");
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            b = &b[nl + 1..];
        } else {
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &b[nl + 9..nl + 9 + len];
            assert_eq!(b[nl + 9 + len], b'\n', "a binary field ends in a newline");
            out.push((
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
            b = &b[nl + 10 + len..];
        }
    }
    out
}

/// The daemon as systemd would start it, logging to "the journal": a
/// socket of the test's, mounted over /run/systemd in a mount namespace of
/// the daemon's own (the journald layer only knows the standard path).
#[tokio::test(flavor = "multi_thread")]
async fn journal_entries_carry_vm_job_and_request_ids() {
    let root = tempfile::Builder::new()
        .prefix("lgj")
        .tempdir_in("/tmp")
        .unwrap();
    let fake_run_systemd = root.path().join("systemd");
    std::fs::create_dir_all(fake_run_systemd.join("journal")).unwrap();
    // Read as journald does, at once: a datagram socket queues only a few
    // entries and the daemon's next log line would block behind them.
    let journal = UnixDatagram::bind(fake_run_systemd.join("journal/socket")).unwrap();
    let (entries_tx, entries_rx) = mpsc::channel::<HashMap<String, String>>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = journal.recv(&mut buf) {
            // An empty datagram is the layer's probe of the socket.
            if n > 0
                && entries_tx
                    .send(journal_entry(&buf[..n]).into_iter().collect())
                    .is_err()
            {
                return;
            }
        }
    });
    let images = root.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for f in ["vmlinuz", "initrd.img", "base.qcow2"] {
        std::fs::copy(common::fixtures().join(f), images.join(f)).unwrap();
    }
    let socket = root.path().join("libgo.sock");
    let stderr = std::fs::File::create(root.path().join("stderr")).unwrap();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /run/systemd && exec "$@""#)
        .arg(&fake_run_systemd)
        .arg(env!("CARGO_BIN_EXE_libgod"))
        .arg("--socket")
        .arg(&socket)
        .arg("--readonly-socket")
        .arg(root.path().join("ro.sock"))
        .arg("--state-dir")
        .arg(root.path().join("state"))
        .arg("--run-dir")
        .arg(root.path().join("run"))
        .arg("--image-dir")
        .arg(&images)
        .args(["--node-name", "journal-test", "--accel", "tcg"])
        // What systemd sets for a service whose output goes to the journal.
        .env("JOURNAL_STREAM", "8:12345")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("unshare");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(std::mem::replace(
        &mut child,
        Command::new("true").spawn().unwrap(),
    ));
    let stderr_of = || std::fs::read_to_string(root.path().join("stderr")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(get(&socket, "/health"), Ok((200, _))) {
        if let Ok(Some(s)) = child.0.try_wait() {
            panic!("libgod exited ({s}):\n{}", stderr_of());
        }
        assert!(Instant::now() < deadline, "no answer:\n{}", stderr_of());
        std::thread::sleep(Duration::from_millis(20));
    }

    let cmdline = common::fixture_cmdline();
    let (code, _, body) = common::raw_request(
        &socket,
        "POST",
        "/api/v1/vms",
        Some(
            serde_json::json!({
                "name": "journaled", "vcpus": 1, "memory": 128, "disk_size": 1,
                "base_image": "base.qcow2",
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
            })
            .to_string(),
        ),
        &[("X-Request-Id", "journal-test-create")],
    )
    .await
    .unwrap();
    let vm: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let (code, _, body) = common::raw_request(
        &socket,
        "DELETE",
        &format!("/api/v1/vms/{id}"),
        None,
        &[("X-Request-Id", "journal-test-delete")],
    )
    .await
    .unwrap();
    assert!(
        code == 200 || code == 202 || code == 204,
        "{code} {}",
        String::from_utf8_lossy(&body)
    );

    // Read until the delete's job has finished in the journal.
    let mut entries: Vec<HashMap<String, String>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = |e: &HashMap<String, String>| {
        e.get("MESSAGE").map(String::as_str) == Some("job finished")
            && e.get("KIND").is_some_and(|k| k.contains("delete"))
    };
    while !entries.iter().any(finished) {
        assert!(
            Instant::now() < deadline,
            "no finished delete job in the journal: {entries:#?}\n{}",
            stderr_of()
        );
        if let Ok(e) = entries_rx.recv_timeout(Duration::from_millis(200)) {
            entries.push(e);
        }
    }
    assert!(
        stderr_of().is_empty(),
        "logs went to stderr, not the journal:\n{}",
        stderr_of()
    );
    for e in &entries {
        assert_eq!(
            e.get("SYSLOG_IDENTIFIER").map(String::as_str),
            Some("libgod")
        );
        assert!(e.contains_key("PRIORITY"), "{e:?}");
        assert!(
            !e.keys().any(|k| k.starts_with("F_")),
            "prefixed fields: {e:?}"
        );
    }
    // The request, by the id the client gave: its audit line, and what the
    // handler logged on its way (the VM's first status).
    let request: Vec<_> = entries
        .iter()
        .filter(|e| e.get("REQUEST_ID").map(String::as_str) == Some("journal-test-create"))
        .collect();
    assert!(
        request
            .iter()
            .any(|e| e.get("METHOD").map(String::as_str) == Some("POST")
                && e.get("STATUS").map(String::as_str) == Some("201")),
        "no audit entry with REQUEST_ID: {entries:#?}"
    );
    assert!(
        request
            .iter()
            .any(|e| e.get("SPAN_NAME").map(String::as_str) == Some("request")),
        "nothing logged inside the request's span: {entries:#?}"
    );
    // The VM's own history, by VM_ID; each job's lines by JOB_ID.
    let about_vm: Vec<_> = entries
        .iter()
        .filter(|e| e.get("VM_ID") == Some(&id))
        .collect();
    assert!(
        about_vm
            .iter()
            .any(|e| e.get("MESSAGE").map(String::as_str) == Some("status")),
        "no status change with VM_ID: {entries:#?}"
    );
    let jobs: Vec<_> = about_vm
        .iter()
        .filter(|e| e.get("MESSAGE").map(String::as_str) == Some("job started"))
        .collect();
    assert!(jobs.len() >= 2, "create and delete jobs: {about_vm:#?}");
    for started in jobs {
        let job = started.get("JOB_ID").expect("a job line has JOB_ID");
        assert!(
            entries.iter().any(|e| e.get("JOB_ID") == Some(job)
                && e.get("MESSAGE").map(String::as_str) == Some("job finished")),
            "job {job} has no finished entry"
        );
    }
    // Lines logged inside a job (its span) carry the job's id too, and the
    // VM's.
    assert!(
        entries.iter().any(|e| e.get("JOB_ID").is_some()
            && e.get("VM_ID") == Some(&id)
            && e.get("SPAN_NAME").map(String::as_str) == Some("job")),
        "no line logged inside a job span: {entries:#?}"
    );
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// The unit as shipped passes `systemd-analyze verify` (pointed at the
/// binary this build made, since nothing is installed under /usr/bin here).
#[test]
fn the_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/libgod.service"
    ))
    .unwrap();
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillMode", "process"),
        ("RuntimeDirectory", "libgo"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("StateDirectory", "libgo"),
    ] {
        assert!(
            unit.lines().any(|l| l == format!("{key}={want}")),
            "{key}={want} missing"
        );
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    // cgroups are written for every VM: ProtectControlGroups would break it.
    assert!(!unit.contains("ProtectControlGroups=yes"));
    let dir = tempfile::tempdir().unwrap();
    let exec = env!("CARGO_BIN_EXE_libgod");
    let copy = unit.replace("ExecStart=/usr/bin/libgod", &format!("ExecStart={exec}"));
    assert_ne!(copy, unit, "ExecStart names /usr/bin/libgod");
    let path = dir.path().join("libgod.service");
    std::fs::write(&path, copy).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze (apt install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Without systemd as PID 1 verify still parses the unit; it may only
    // complain about the units it is ordered after being absent here.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("network-online.target") && !l.contains("docker.service"))
        .filter(|l| !l.contains("openvswitch-switch.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// A daemon that cannot start tells the manager why (`systemctl status`
/// shows it) and never claims to be ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_start_says_why_and_is_never_ready() {
    let d = Daemon::start().await;
    let dir = tempfile::Builder::new()
        .prefix("lgn")
        .tempdir_in("/tmp")
        .unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A second daemon on the first one's socket.
    let out = Command::new(env!("CARGO_BIN_EXE_libgod"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--readonly-socket")
        .arg(dir.path().join("ro.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args(["--accel", "tcg"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second daemon started on one socket"
    );
    let mut buf = [0u8; 1024];
    let n = notify.recv(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("STATUS=failed: ") && text.contains("another libgod"),
        "{text}"
    );
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(notify.recv(&mut buf).is_err(), "more than the failure");
    // The first daemon still serves.
    assert_eq!(d.req("GET", "/health", None).await.0, 200);
}
