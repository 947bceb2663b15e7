//! VMs booting for real under QEMU (TCG here, KVM where it really works),
//! driven through the API: the whole lifecycle, forced stops, crashes,
//! one operation at a time, and daemon restarts that never touch guests.

mod common;

use std::time::{Duration, Instant};

use common::{guest_slot, pid_alive, Daemon, BOOT, READY};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

async fn status(d: &Daemon, id: &str) -> Value {
    let (code, vm) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{vm}");
    vm
}

async fn action(d: &Daemon, id: &str, action: &str, body: Option<Value>) -> (u16, Value) {
    d.req("POST", &format!("/api/v1/vms/{id}/{action}"), body)
        .await
}

async fn wait_status(d: &Daemon, id: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let vm = status(d, id).await;
        if vm["status"] == want {
            return vm;
        }
        assert!(
            Instant::now() < deadline,
            "VM never reached {want}: {vm}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_a_real_guest() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let vm = d.create_fixture_vm("life", "").await;
    let id = vm["id"].as_str().unwrap().to_owned();

    // Start: QEMU runs, the guest boots and sees the resized 1 GiB disk.
    let t = Instant::now();
    let (code, r) = action(&d, &id, "start", None).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["status"], "running");
    let start_ms = t.elapsed().as_millis();
    d.wait_marker(&id, READY, 1, BOOT).await;
    println!(
        "start answered in {start_ms} ms; guest ready after {} ms",
        t.elapsed().as_millis()
    );
    let disk = d.wait_marker(&id, "LIBGO-DISK", 1, BOOT).await;
    assert_eq!(disk, format!("LIBGO-DISK vda {}", 1u64 << 30));
    assert_eq!(
        d.wait_marker(&id, "LIBGO-ROOTFS", 1, BOOT).await,
        "LIBGO-ROOTFS fixture-ok"
    );
    let pid = status(&d, &id).await["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(pid));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&id),
        "QEMU's argv carries the VM id"
    );
    // QEMU is in its own session, not the daemon's.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(sid.as_raw(), pid as i32);

    // Idempotent start.
    let (code, r) = action(&d, &id, "start", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("running")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("already"));

    // The guest runs commands sent on its serial line.
    let (rc, _) = d
        .guest_cmd(&id, "cat /sys/block/vda/size", Duration::from_secs(30))
        .await;
    assert_eq!(rc, 0);

    // Pause / resume, idempotent both ways.
    let (code, r) = action(&d, &id, "pause", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("paused")), "{r}");
    let (code, r) = action(&d, &id, "pause", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("paused")), "{r}");
    let (code, r) = action(&d, &id, "start", None).await;
    assert_eq!(code, 409, "start on a paused VM: {r}");
    let (code, r) = action(&d, &id, "resume", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("running")), "{r}");
    let (code, _) = action(&d, &id, "resume", None).await;
    assert_eq!(code, 200);

    // Graceful reboot: the guest powers down, QEMU resets it, it boots again.
    let (code, r) = action(&d, &id, "reboot", Some(json!({"timeout": 60}))).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("running")), "{r}");
    assert_eq!(r["message"], "VM successfully rebooted.", "{r}");
    d.wait_marker(&id, "LIBGO-POWERDOWN", 1, BOOT).await;
    d.wait_marker(&id, READY, 2, BOOT).await;
    assert_eq!(
        status(&d, &id).await["pid"].as_u64().unwrap() as u32,
        pid,
        "same QEMU after reboot"
    );

    // Reset: a hard reset, the guest boots a third time.
    let (code, _) = action(&d, &id, "reset", None).await;
    assert_eq!(code, 200);
    d.wait_marker(&id, READY, 3, BOOT).await;

    // Graceful stop: the guest sees the power button and QEMU exits 0.
    let (code, r) = action(&d, &id, "stop", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("stopped")), "{r}");
    assert_eq!(r["message"], "VM successfully stopped.");
    d.wait_marker(&id, "LIBGO-POWERDOWN", 2, BOOT).await;
    assert!(!pid_alive(pid));
    assert!(d.log().contains("exit status: 0") || !d.log().contains("exited unexpectedly"));
    let vm = status(&d, &id).await;
    assert!(vm.get("pid").is_none(), "{vm}");
    assert!(vm.get("status_reason").is_none(), "{vm}");
    // Idempotent stop; reboot of a stopped VM is 409.
    let (code, r) = action(&d, &id, "stop", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("stopped")), "{r}");
    let (code, r) = action(&d, &id, "reboot", None).await;
    assert_eq!(code, 409, "{r}");
    assert_eq!(r["error"]["message"], "VM is not running, cannot reboot.");

    // Start again; make the guest ignore the power button.
    let (code, _) = action(&d, &id, "start", None).await;
    assert_eq!(code, 200);
    d.wait_marker(&id, READY, 4, BOOT).await;
    let (rc, _) = d
        .guest_cmd(&id, "touch /run/ignore-acpi", Duration::from_secs(30))
        .await;
    assert_eq!(rc, 0);
    // Shutdown only asks: it gives up with 409, the VM keeps running.
    let (code, r) = action(&d, &id, "shutdown", Some(json!({"timeout": 2}))).await;
    assert_eq!(code, 409, "{r}");
    d.wait_marker(&id, "LIBGO-POWERDOWN-IGNORED", 1, BOOT).await;
    assert_eq!(status(&d, &id).await["status"], "running");
    // Stop forces it off after the timeout.
    let t = Instant::now();
    let (code, r) = action(&d, &id, "stop", Some(json!({"timeout": 3}))).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("stopped")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("forced"), "{r}");
    assert!(t.elapsed() >= Duration::from_secs(3));
    assert!(t.elapsed() < Duration::from_secs(20));

    // Poweroff: immediate.
    let (code, _) = action(&d, &id, "start", None).await;
    assert_eq!(code, 200);
    let pid = status(&d, &id).await["pid"].as_u64().unwrap() as u32;
    let (code, r) = action(&d, &id, "poweroff", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("stopped")), "{r}");
    assert!(!pid_alive(pid));

    // Delete a running VM: stopped, then everything is gone.
    let (code, _) = action(&d, &id, "start", None).await;
    assert_eq!(code, 200);
    let pid = status(&d, &id).await["pid"].as_u64().unwrap() as u32;
    let (code, r) = d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{r}");
    assert!(!pid_alive(pid));
    assert!(!d.state_dir().join("vms").join(&id).exists());
    assert!(!d.run_dir().join("vms").join(&id).exists());
    assert_eq!(
        d.req("GET", &format!("/api/v1/vms/{id}"), None).await.0,
        404
    );
    assert_eq!(
        d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_poweroff_is_stopped_and_a_killed_qemu_is_crashed() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let vm = d.create_fixture_vm("crashy", "").await;
    let id = vm["id"].as_str().unwrap().to_owned();

    // The guest powers itself off: stopped, not crashed.
    assert_eq!(action(&d, &id, "start", None).await.0, 200);
    d.wait_marker(&id, READY, 1, BOOT).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = d.run_dir().join("vms").join(&id).join("console.sock");
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"1 poweroff -f\n").await.unwrap();
        // The command never reports back: the console closes with QEMU.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink)).await;
    }
    let vm = wait_status(&d, &id, "stopped", Duration::from_secs(30)).await;
    assert!(vm.get("status_reason").is_none(), "{vm}");

    // SIGKILL QEMU: crashed, with the reason.
    assert_eq!(action(&d, &id, "start", None).await.0, 200);
    d.wait_marker(&id, READY, 2, BOOT).await;
    let pid = status(&d, &id).await["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let vm = wait_status(&d, &id, "crashed", Duration::from_secs(30)).await;
    let reason = vm["status_reason"].as_str().unwrap();
    assert!(
        reason.contains("QEMU exited unexpectedly") && reason.contains("SIGKILL"),
        "{reason}"
    );
    let (_, st) = d
        .req("GET", &format!("/api/v1/vms/{id}/status"), None)
        .await;
    assert!(
        st["message"].as_str().unwrap().contains("unexpectedly"),
        "{st}"
    );
    // A crashed VM starts again.
    assert_eq!(action(&d, &id, "start", None).await.0, 200);
    d.wait_marker(&id, READY, 3, BOOT).await;
    assert_eq!(status(&d, &id).await["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operation_per_vm_and_lists_never_wait() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let vm = d.create_fixture_vm("busy", "libgo.ignore_acpi=1").await;
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(action(&d, &id, "start", None).await.0, 200);
    d.wait_marker(&id, READY, 1, BOOT).await;

    // A stop that will wait 6 s for a guest that ignores the button.
    let d = std::sync::Arc::new(d);
    let stopper = {
        let d = d.clone();
        let id = id.clone();
        tokio::spawn(async move { action(&d, &id, "stop", Some(json!({"timeout": 6}))).await })
    };
    wait_status(&d, &id, "stopping", Duration::from_secs(10)).await;
    let (code, r) = action(&d, &id, "pause", None).await;
    assert_eq!(code, 409, "{r}");
    assert_eq!(r["error"]["status"], "RESOURCE_CONFLICT");
    assert_eq!(r["error"]["details"][0]["job_type"], "vm.stop", "{r}");
    let job_id = r["error"]["details"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(r["error"]["message"].as_str().unwrap().contains(&job_id));
    // The running job is visible; list and get answer at once meanwhile.
    let (code, job) = d.req("GET", &format!("/api/v1/jobs/{job_id}"), None).await;
    assert_eq!(
        (code, job["state"].as_str()),
        (200, Some("running")),
        "{job}"
    );
    let t = Instant::now();
    let (code, _) = d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(code, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "list took {:?}",
        t.elapsed()
    );
    assert_eq!(
        d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
        409
    );

    let (code, r) = stopper.await.unwrap();
    assert_eq!((code, r["status"].as_str()), (200, Some("stopped")), "{r}");
    let (_, job) = d.req("GET", &format!("/api/v1/jobs/{job_id}"), None).await;
    assert_eq!(job["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restarts_never_touch_guests() {
    let _slot = guest_slot().await;
    let mut d = Daemon::start().await;
    let a = d.create_fixture_vm("keeper", "").await;
    let b = d.create_fixture_vm("victim", "").await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    let b_id = b["id"].as_str().unwrap().to_owned();
    for id in [&a_id, &b_id] {
        assert_eq!(action(&d, id, "start", None).await.0, 200);
    }
    d.wait_marker(&a_id, READY, 1, BOOT).await;
    d.wait_marker(&b_id, READY, 1, BOOT).await;
    assert_eq!(action(&d, &b_id, "pause", None).await.0, 200);
    let a_pid = status(&d, &a_id).await["pid"].as_u64().unwrap() as u32;
    let b_pid = status(&d, &b_id).await["pid"].as_u64().unwrap() as u32;

    // SIGKILL the daemon: both guests keep running.
    d.kill(Signal::SIGKILL);
    assert!(pid_alive(a_pid) && pid_alive(b_pid));
    let (rc, _) = d.guest_cmd(&a_id, "true", Duration::from_secs(30)).await;
    assert_eq!(rc, 0, "the guest still runs while libgod is down");

    // Restart: re-adopted, same pids, same states, controllable.
    let t = Instant::now();
    d.spawn().await;
    let readopt = t.elapsed();
    println!(
        "daemon answered again, guests re-adopted, after {} ms",
        readopt.as_millis()
    );
    assert!(
        readopt < Duration::from_secs(5),
        "re-adoption took {readopt:?}"
    );
    let va = status(&d, &a_id).await;
    let vb = status(&d, &b_id).await;
    assert_eq!(
        (va["status"].as_str(), va["pid"].as_u64()),
        (Some("running"), Some(a_pid as u64)),
        "{va}"
    );
    assert_eq!(
        (vb["status"].as_str(), vb["pid"].as_u64()),
        (Some("paused"), Some(b_pid as u64)),
        "{vb}"
    );
    let (code, _) = action(&d, &b_id, "resume", None).await;
    assert_eq!(code, 200);
    let (rc, _) = d.guest_cmd(&b_id, "true", Duration::from_secs(30)).await;
    assert_eq!(rc, 0);

    // SIGTERM: the same, and a guest that dies while the daemon is down is
    // reported crashed at the next start.
    d.kill(Signal::SIGTERM);
    assert!(pid_alive(a_pid) && pid_alive(b_pid));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b_pid as i32), Signal::SIGKILL).unwrap();
    common::wait_gone(b_pid).await;
    d.spawn().await;
    let vb = status(&d, &b_id).await;
    assert_eq!(vb["status"], "crashed", "{vb}");
    assert!(
        vb["status_reason"]
            .as_str()
            .unwrap()
            .contains("not running"),
        "{vb}"
    );
    assert_eq!(status(&d, &a_id).await["status"], "running");

    // The re-adopted guest still stops gracefully, and its exit is seen
    // without being our child.
    let (code, r) = action(&d, &a_id, "stop", None).await;
    assert_eq!(
        (code, r["message"].as_str()),
        (200, Some("VM successfully stopped.")),
        "{r}"
    );
    assert!(!pid_alive(a_pid));
    // And a re-adopted guest killed later is crashed, not stopped.
    assert_eq!(action(&d, &a_id, "start", None).await.0, 200);
    d.wait_marker(&a_id, READY, 2, BOOT).await;
    let a_pid = status(&d, &a_id).await["pid"].as_u64().unwrap() as u32;
    d.kill(Signal::SIGKILL);
    d.spawn().await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a_pid as i32), Signal::SIGKILL).unwrap();
    wait_status(&d, &a_id, "crashed", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_from_its_disk_through_the_firmware() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    // No `boot`: SeaBIOS boots SYSLINUX from the cloned, grown disk.
    let (code, vm) = d
        .req("POST", "/api/v1/vms", Some(json!({
            "name": "firmware", "vcpus": 1, "memory": 128, "disk_size": 2, "base_image": "bootable.qcow2"
        })))
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(action(&d, &id, "start", None).await.0, 200);
    d.wait_marker(&id, READY, 1, BOOT).await;
    assert!(
        d.console_text(&id).contains("SYSLINUX"),
        "booted through the firmware and SYSLINUX"
    );
    assert_eq!(
        d.wait_marker(&id, "LIBGO-DISK", 1, BOOT).await,
        format!("LIBGO-DISK vda {}", 2u64 << 30)
    );
    let (rc, out) = d
        .guest_cmd(&id, "cat /proc/cmdline", Duration::from_secs(30))
        .await;
    assert_eq!(rc, 0);
    assert!(out.contains("console=ttyS0"), "{out}");
    let (code, r) = action(&d, &id, "stop", None).await;
    assert_eq!(
        (code, r["message"].as_str()),
        (200, Some("VM successfully stopped.")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_monitor_blocks_neither_lists_nor_other_vms() {
    let _slot = guest_slot().await;
    let d = Daemon::start_with(&["--qmp-timeout", "2"]).await;
    let a = d.create_fixture_vm("frozen", "").await;
    let b = d.create_fixture_vm("healthy", "").await;
    let (a_id, b_id) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(action(&d, &a_id, "start", None).await.0, 200);
    assert_eq!(action(&d, &b_id, "start", None).await.0, 200);
    let a_pid = status(&d, &a_id).await["pid"].as_u64().unwrap() as i32;
    // Freeze QEMU: its monitor stops answering.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a_pid), Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let (code, r) = action(&d, &a_id, "pause", None).await;
    let waited = t.elapsed();
    assert_eq!(code, 500, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{r}"
    );
    assert!(
        waited < Duration::from_secs(6),
        "the QMP deadline held: {waited:?}"
    );
    // Meanwhile lists, gets and the other VM answer at once.
    let t = Instant::now();
    assert_eq!(d.req("GET", "/api/v1/vms", None).await.0, 200);
    assert_eq!(
        d.req("GET", &format!("/api/v1/vms/{a_id}"), None).await.0,
        200
    );
    assert!(t.elapsed() < Duration::from_millis(500));
    let (code, _) = action(&d, &b_id, "pause", None).await;
    assert_eq!(code, 200);
    // Thawed, the VM is controllable again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a_pid), Signal::SIGCONT).unwrap();
    let (code, r) = action(&d, &a_id, "pause", None).await;
    assert_eq!((code, r["status"].as_str()), (200, Some("paused")), "{r}");
    assert_eq!(action(&d, &a_id, "poweroff", None).await.0, 200);
}
