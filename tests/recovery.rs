//! A daemon killed in the middle of an operation: at the next start every
//! VM comes back in the status the lifecycle's recovery rules give, never
//! `crashed` for a guest that was being stopped on purpose.

mod common;

use std::time::{Duration, Instant};

use common::{guest_slot, Daemon};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

async fn vm(d: &Daemon, id: &str) -> Value {
    let (code, v) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Starts an action as a job and returns once the VM shows `status`.
async fn begin(d: &Daemon, id: &str, action: &str, status: &str) {
    let (code, _, body) = d
        .raw(
            "POST",
            &format!("/api/v1/vms/{id}/{action}"),
            Some(json!({"timeout": 120}).to_string()),
            &[
                ("prefer", "respond-async"),
                ("content-type", "application/json"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&body));
    let deadline = Instant::now() + Duration::from_secs(30);
    while vm(d, id).await["status"] != status {
        assert!(
            Instant::now() < deadline,
            "never {status}: {}",
            vm(d, id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_operation_recovers_by_the_rules() {
    let _slot = guest_slot().await;
    let mut d = Daemon::start().await;
    let stopping = d.create_fixture_vm("stopping", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rebooting = d.create_fixture_vm("rebooting", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut pids = Vec::new();
    for id in [&stopping, &rebooting] {
        let (code, v) = d
            .req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await;
        assert_eq!(code, 200, "{v}");
        let pid = vm(&d, id).await["pid"].as_u64().unwrap() as u32;
        // A frozen QEMU never answers the power button: the operation
        // stays in flight until the daemon is killed.
        signal(pid, Signal::SIGSTOP);
        pids.push(pid);
    }
    begin(&d, &stopping, "stop", "stopping").await;
    begin(&d, &rebooting, "reboot", "rebooting").await;
    d.kill(Signal::SIGKILL);

    // The stop went through meanwhile (QEMU is gone); the reboot's QEMU lives on.
    signal(pids[0], Signal::SIGKILL);
    common::wait_gone(pids[0]).await;
    signal(pids[1], Signal::SIGCONT);

    d.spawn().await;
    let v = vm(&d, &stopping).await;
    assert_eq!(v["status"], "stopped", "a stop in flight is a stop: {v}");
    let v = vm(&d, &rebooting).await;
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["pid"].as_u64(), Some(pids[1] as u64), "{v}");
    // Both jobs were interrupted and say so.
    let (_, jobs) = d.req("GET", "/api/v1/jobs?state=failed", None).await;
    let interrupted = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["error"].as_str().unwrap_or("").contains("interrupted"))
        .count();
    assert_eq!(interrupted, 2, "{jobs}");
    let (code, v) = d
        .req("POST", &format!("/api/v1/vms/{rebooting}/poweroff"), None)
        .await;
    assert_eq!(code, 200, "{v}");
}
