//! Guests' QEMU confined: each runs as the unprivileged `libgo-qemu` with
//! a group of its own VM and QEMU's seccomp sandbox, owns only its VM's
//! files, cannot open another VM's disk (nor reach another QEMU through
//! /proc), and still boots, is re-adopted after a daemon restart and stops.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{guest_slot, pid_alive, Daemon, BOOT, READY};
use libgo::qemu::monitor::Monitor;
use nix::sys::signal::Signal;
use serde_json::Value;

async fn get(d: &Daemon, id: &str) -> Value {
    let (code, vm) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{vm}");
    vm
}

async fn act(d: &Daemon, id: &str, action: &str) -> Value {
    let (code, r) = d
        .req("POST", &format!("/api/v1/vms/{id}/{action}"), None)
        .await;
    assert_eq!(code, 200, "{action}: {r}\n{}", d.log());
    r
}

/// The values of a `/proc/<pid>/status` line (`Uid:`, `Gid:`, ...).
fn status(pid: u32, key: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// (mode bits, owner, group) of a path.
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guest_runs_unprivileged_in_its_own_group_and_cannot_open_another_s_disk() {
    let _slot = guest_slot().await;
    let mut d = Daemon::start().await;
    let a = d.create_fixture_vm("conf-a", "").await;
    let b = d.create_fixture_vm("conf-b", "").await;
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    let state = d.state_dir();
    let disk_of = |id: &str| state.join("vms").join(id).join("root.qcow2");

    // B runs (paused: its QEMU is all this test needs of it); A boots.
    act(&d, &b, "start").await;
    act(&d, &b, "pause").await;
    act(&d, &a, "start").await;
    d.wait_marker(&a, READY, 1, BOOT).await;
    let pid_a = get(&d, &a).await["pid"].as_u64().unwrap() as u32;
    let pid_b = get(&d, &b).await["pid"].as_u64().unwrap() as u32;

    // Credentials: libgo-qemu, the VM's own group, kvm at most; seccomp.
    let user = nix::unistd::User::from_name("libgo-qemu")
        .unwrap()
        .expect("the daemon made the user libgo-qemu");
    assert_ne!(user.uid.as_raw(), 0);
    let kvm: Vec<u32> = nix::unistd::Group::from_name("kvm")
        .unwrap()
        .map(|g| g.gid.as_raw())
        .into_iter()
        .collect();
    let mut gids = Vec::new();
    for (id, pid) in [(&a, pid_a), (&b, pid_b)] {
        assert_eq!(status(pid, "Uid:"), vec![user.uid.as_raw(); 4], "{id}");
        let gid = status(pid, "Gid:");
        assert!(gid.iter().all(|g| *g == gid[0]), "{gid:?}");
        assert_ne!(gid[0], 0);
        assert_eq!(status(pid, "Groups:"), kvm, "only kvm besides its own");
        assert_eq!(status(pid, "Seccomp:"), vec![2], "QEMU's sandbox is on");
        // libgod's own filter (signals to itself only) under QEMU's.
        assert!(status(pid, "Seccomp_filters:")[0] >= 2);
        assert_eq!(status(pid, "NoNewPrivs:"), vec![1]);
        // The VM's files are root's and its group's; others get nothing.
        let vm_dir = d.state_dir().join("vms").join(id);
        let run_dir = d.run_dir().join("vms").join(id);
        assert_eq!(owner_mode(&vm_dir), (0o750, 0, gid[0]));
        assert_eq!(owner_mode(&disk_of(id)), (0o660, 0, gid[0]));
        assert_eq!(owner_mode(&vm_dir.join("console.log")), (0o660, 0, gid[0]));
        assert_eq!(owner_mode(&run_dir), (0o770, 0, gid[0]));
        gids.push(gid[0]);
    }
    assert_ne!(gids[0], gids[1], "each VM has a group of its own");

    // The kernel's ptrace check compares groups too: with A's credentials,
    // B's QEMU is out of reach through /proc (its memory, its open disk),
    // while with B's own it is not.
    let as_qemu_of = |gid: u32, file: String| {
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid.as_raw()))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "cat", &file])
            .output()
            .expect("setpriv (util-linux)")
    };
    let environ = format!("/proc/{pid_b}/environ");
    let out = as_qemu_of(gids[0], environ.clone());
    assert!(
        !out.status.success(),
        "A's credentials read B's QEMU's environment"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(as_qemu_of(gids[1], environ).status.success());

    // With the daemon gone, its QMP connection is free: ask A's QEMU to
    // open files itself.
    d.kill(Signal::SIGTERM);
    assert!(
        pid_alive(pid_a) && pid_alive(pid_b),
        "guests outlive the daemon"
    );
    let qmp = d.run_dir().join("vms").join(&a).join("qmp.sock");
    {
        let (mon, _events) = Monitor::connect(&qmp, Duration::from_secs(10))
            .await
            .unwrap();
        let err = mon
            .blockdev_add_file("other-disk", &disk_of(&b))
            .await
            .expect_err("A's QEMU must not open B's disk");
        assert!(
            err.to_string().contains("Permission denied"),
            "refused by the kernel, not for another reason: {err}"
        );
        // B's disk exists and the same request works on A's own disk.
        assert!(disk_of(&b).exists());
        mon.blockdev_add_file("own-disk", &disk_of(&a))
            .await
            .expect("A's QEMU opens its own disk");
        mon.blockdev_del("own-disk").await.unwrap();
    }

    // The restarted daemon re-adopts both; the guest still answers.
    d.spawn().await;
    let vm = get(&d, &a).await;
    assert_eq!(
        (vm["status"].as_str(), vm["pid"].as_u64()),
        (Some("running"), Some(pid_a as u64)),
        "{vm}"
    );
    assert_eq!(get(&d, &b).await["status"], "paused");
    let (rc, out) = d.guest_cmd(&a, "echo adopted", BOOT).await;
    assert_eq!((rc, out.contains("adopted")), (0, true), "{out}");

    // Stops, and starts again with the same group.
    let r = act(&d, &a, "stop").await;
    assert_eq!(r["status"], "stopped", "{r}");
    common::wait_gone(pid_a).await;
    act(&d, &b, "poweroff").await;
    common::wait_gone(pid_b).await;
    act(&d, &a, "start").await;
    d.wait_marker(&a, READY, 2, BOOT).await;
    let pid = get(&d, &a).await["pid"].as_u64().unwrap() as u32;
    assert_eq!(status(pid, "Gid:")[0], gids[0]);
    act(&d, &a, "poweroff").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_image_qemu_cannot_read_is_refused_at_create() {
    let d = Daemon::start().await;
    // A copy of a fixture file only its owner (root) may read; a create
    // naming it is a 409 that names the field.
    let refused =
        |copy: &'static str, of: &'static str, body: serde_json::Value, field: &'static str| {
            let d = &d;
            async move {
                let private = d.image_dir().join(copy);
                std::fs::copy(d.image_dir().join(of), &private).unwrap();
                std::fs::set_permissions(
                    &private,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                let (code, r) = d.req("POST", "/api/v1/vms", Some(body)).await;
                assert_eq!(code, 409, "{r}");
                let msg = r["error"]["message"].as_str().unwrap();
                assert!(msg.contains(field) && msg.contains("read it"), "{msg}");
            }
        };
    refused(
        "private.qcow2",
        "base.qcow2",
        serde_json::json!({
            "name": "private", "vcpus": 1, "memory": 128, "disk_size": 1,
            "base_image": "private.qcow2",
        }),
        "base_image",
    )
    .await;
    // The same for a direct boot's kernel (a move onto this node checks the
    // same way).
    refused(
        "private-vmlinuz",
        "vmlinuz",
        serde_json::json!({
            "name": "private-boot", "vcpus": 1, "memory": 128, "disk_size": 1,
            "base_image": "base.qcow2",
            "boot": {"kernel": "private-vmlinuz", "initrd": "initrd.img"},
        }),
        "boot.kernel",
    )
    .await;
    let (code, list) = d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(code, 200);
    assert_eq!(list["total_count"], 0, "{list}");
}
