//! Moving VMs between two real agents on this machine, each with its own
//! TLS listener: cold (a stopped VM's disk), live (a running guest keeps
//! counting through the move), and a live move cancelled half-way.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// An agent with a TLS listener on loopback, an operator token of it and
/// its certificate's fingerprint.
struct Node {
    d: Daemon,
    port: u16,
    token: String,
    fingerprint: String,
}

impl Node {
    async fn start() -> Node {
        let port = free_port();
        let d = Daemon::start_with(&["--listen", &format!("127.0.0.1:{port}")]).await;
        let (code, t) = d
            .req(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": "mover", "role": "operator"})),
            )
            .await;
        assert_eq!(code, 201, "{t}");
        let fingerprint = libgo::client::probe_fingerprint("127.0.0.1", port)
            .await
            .unwrap();
        Node {
            d,
            port,
            token: t["secret"].as_str().unwrap().to_owned(),
            fingerprint,
        }
    }

    /// The `target` of a move to this node.
    fn target(&self) -> Value {
        json!({
            "url": format!("https://127.0.0.1:{}", self.port),
            "token": self.token,
            "fingerprint": self.fingerprint,
        })
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.d.state_dir().join("vms").join(id)
    }

    /// The processes launched by this agent for VM `id` (its QEMU carries
    /// its run directory's path; the other agent's does not).
    fn processes_of(&self, id: &str) -> Vec<u32> {
        let run = self.d.run_dir().join("vms").join(id);
        processes_carrying(&run.to_string_lossy())
    }

    /// The VM directories of this agent.
    fn vm_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.d.state_dir().join("vms"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn create_vm(d: &Daemon, name: &str, memory: u64) -> Value {
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": name, "vcpus": 1, "memory": memory, "disk_size": 1,
                "base_image": "base.qcow2",
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": fixture_cmdline()},
            })),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    vm
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_job(d: &Daemon, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (code, j) = d
            .req("GET", &format!("/api/v1/jobs/{job}?wait=10"), None)
            .await;
        assert_eq!(code, 200, "{j}");
        if !matches!(j["state"].as_str(), Some("running" | "queued")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {job} still running: {j}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_vm_moves_cold_with_its_disk() {
    let (a, b) = tokio::join!(Node::start(), Node::start());
    let vm = create_vm(&a.d, "traveller", 128).await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let disk = a.vm_dir(&id).join("root.qcow2");
    // Something distinctive where the guest's filesystem does not reach.
    run(
        "qemu-io",
        &["-c", "write -P 0x5a 700M 1M", disk.to_str().unwrap()],
    );
    let before = a.d.root.path().join("before.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            disk.to_str().unwrap(),
            before.to_str().unwrap(),
        ],
    );

    // Refusals first: no target, this node itself, a live move of a stopped VM.
    let (code, e) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": b.d.node})),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("target"),
        "{e}"
    );
    let (code, e) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": a.d.node, "target": b.target()})),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    let (code, e) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": b.d.node, "live": true, "target": b.target()})),
        )
        .await;
    assert_eq!(code, 409, "{e}");
    // The target refuses a name it already has, and the URL must be the node named.
    let other = create_vm(&b.d, "traveller", 128).await;
    let (code, e) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": b.d.node, "target": b.target()})),
        )
        .await;
    assert_eq!(code, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("name already in use"),
        "{e}"
    );
    let (code, e) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": "elsewhere", "target": b.target()})),
        )
        .await;
    assert_eq!(code, 409, "{e}");
    let (code, _) =
        b.d.req(
            "DELETE",
            &format!("/api/v1/vms/{}", other["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 200);
    // Nothing was left by the refusals, and the VM is still whole on A.
    assert_eq!(b.vm_dirs().len(), 0, "{:?}", b.vm_dirs());
    assert_eq!(
        a.d.req("GET", &format!("/api/v1/vms/{id}"), None).await.0,
        200
    );

    let (code, r) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": b.d.node, "target": b.target()})),
        )
        .await;
    assert_eq!(code, 200, "{r}\nA:\n{}\nB:\n{}", a.d.log(), b.d.log());
    assert_eq!(r["mode"], "cold", "{r}");
    assert_eq!(r["node"], b.d.node.as_str());
    assert!(r["bytes_sent"].as_u64().unwrap() > 0, "{r}");
    assert!(r.get("downtime_ms").is_none(), "{r}");
    println!("cold move: {} ms, {} bytes", r["total_ms"], r["bytes_sent"]);
    let (_, job) =
        a.d.req(
            "GET",
            &format!("/api/v1/jobs/{}", r["job_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(job["type"], "vm.migrate");
    assert_eq!(job["result"]["mode"], "cold", "{job}");

    // Gone from A: the API and the files.
    assert_eq!(
        a.d.req("GET", &format!("/api/v1/vms/{id}"), None).await.0,
        404
    );
    assert!(!a.vm_dir(&id).exists());
    // On B, the same VM, an ordinary stopped VM with the same content.
    let (code, moved) = b.d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{moved}");
    for f in ["id", "name", "vcpus", "memory", "disk_size", "mac_address"] {
        assert_eq!(moved[f], vm[f], "{f}: {moved}");
    }
    assert_eq!(moved["status"], "stopped");
    let (_, list) = b.d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 1, "{list}");
    let after = b.vm_dir(&id).join("root.qcow2");
    let info = run("qemu-img", &["info", after.to_str().unwrap()]);
    assert!(!info.contains("backing file"), "{info}");
    run(
        "qemu-img",
        &["compare", before.to_str().unwrap(), after.to_str().unwrap()],
    );
    // It boots there.
    let _slot = guest_slot().await;
    let (code, s) =
        b.d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await;
    assert_eq!(code, 200, "{s}");
    b.d.wait_marker(&id, READY, 1, BOOT).await;
    b.d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_moves_live_and_keeps_counting() {
    let (a, b) = tokio::join!(Node::start(), Node::start());
    let _slot = guest_slot().await;
    let vm = create_vm(&a.d, "runner", 256).await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let (code, s) =
        a.d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await;
    assert_eq!(code, 200, "{s}");
    a.d.wait_marker(&id, READY, 1, BOOT).await;
    a.d.start_ticking(&id).await;
    let seen_on_a = *ticks(&a.d.console_text(&id)).last().unwrap();

    let (code, r) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": b.d.node, "target": b.target()})),
        )
        .await;
    assert_eq!(code, 200, "{r}\nA:\n{}\nB:\n{}", a.d.log(), b.d.log());
    assert_eq!(r["mode"], "live", "{r}");
    let downtime = r["downtime_ms"].as_u64().expect("downtime_ms");
    let total = r["total_ms"].as_u64().unwrap();
    let bytes = r["bytes_sent"].as_u64().unwrap();
    // At least the guest's memory in use went over.
    assert!(bytes > 16 << 20, "{r}");
    println!("live move of a 256 MiB guest: downtime {downtime} ms, total {total} ms, {bytes} bytes sent");
    let (_, job) =
        a.d.req(
            "GET",
            &format!("/api/v1/jobs/{}", r["job_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(job["result"]["downtime_ms"], downtime, "{job}");

    // Nothing left on A.
    assert_eq!(
        a.d.req("GET", &format!("/api/v1/vms/{id}"), None).await.0,
        404
    );
    assert!(!a.vm_dir(&id).exists());
    assert!(a.processes_of(&id).is_empty());
    // Running on B, counting on from where it was.
    let (code, moved) = b.d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{moved}");
    assert_eq!(moved["status"], "running", "{moved}");
    assert_eq!(moved["name"], "runner");
    assert_eq!(moved["memory"], 256);
    assert_eq!(b.processes_of(&id).len(), 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let on_b = loop {
        let t = ticks(&b.d.console_text(&id));
        if t.len() >= 5 {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no ticks on B: {}\nB:\n{}",
            b.d.console_text(&id),
            b.d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        on_b[0] > seen_on_a,
        "B starts at {} after {seen_on_a} on A",
        on_b[0]
    );
    assert!(
        on_b.windows(2).all(|w| w[1] == w[0] + 1),
        "ticks on B: {on_b:?}"
    );
    // The guest answers on B.
    let (rc, out) =
        b.d.guest_cmd(&id, "echo still-here", Duration::from_secs(30))
            .await;
    assert_eq!(rc, 0);
    assert!(out.contains("still-here"), "{out}");
    b.d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_move_cancelled_while_the_disk_is_mirrored_leaves_the_guest_at_home() {
    cancelled_at("mirroring").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_move_cancelled_while_memory_moves_leaves_the_guest_at_home() {
    cancelled_at("migrating memory").await;
}

/// A live move cancelled once the job's log shows `phase`: the guest runs
/// on at home, nothing is left on the target, and it can move afterwards.
async fn cancelled_at(phase: &str) {
    let (a, b) = tokio::join!(Node::start(), Node::start());
    let _slot = guest_slot().await;
    let vm = create_vm(&a.d, "homebody", 128).await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let (code, s) =
        a.d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await;
    assert_eq!(code, 200, "{s}");
    a.d.wait_marker(&id, READY, 1, BOOT).await;
    a.d.start_ticking(&id).await;

    // Slowed down so that there is time to cancel: 1 MiB/s in the mirror
    // (the 1 GiB disk, zero ranges included, would take minutes); 16 MiB/s
    // to reach the memory (the disk in about a minute, the memory in
    // several seconds).
    let bandwidth: u64 = if phase == "mirroring" {
        1 << 20
    } else {
        16 << 20
    };
    let (code, _, body) =
        a.d.raw(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(
                json!({"node": b.d.node, "target": b.target(), "max_bandwidth": bandwidth})
                    .to_string(),
            ),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    let acc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 202, "{acc}");
    let job = acc["job"]["id"].as_str().unwrap().to_owned();
    // A second move meanwhile: the VM is busy.
    let (code, e) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": b.d.node, "target": b.target()})),
        )
        .await;
    assert_eq!(code, 409, "{e}");
    // Cancelled once the target is prepared and the phase runs.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, j) = a.d.req("GET", &format!("/api/v1/jobs/{job}"), None).await;
        let log = j["tasks"][0]["log"].to_string();
        if log.contains(phase) {
            break;
        }
        assert_eq!(j["state"], "running", "{j}\nB:\n{}", b.d.log());
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!b.vm_dirs().is_empty(), "the target prepared nothing");
    // The arriving VM is not one of B's VMs yet.
    let (_, list) = b.d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 0, "{list}");
    assert_eq!(
        b.d.req("GET", &format!("/api/v1/vms/{id}"), None).await.0,
        404
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, c) =
        a.d.req("DELETE", &format!("/api/v1/jobs/{job}"), None)
            .await;
    assert!(code == 200 || code == 202, "{c}");
    let j = wait_job(&a.d, &job).await;
    assert_eq!(j["state"], "cancelled", "{j}");
    // Cancelled in that phase, not after it.
    let log = j["tasks"][0]["log"].to_string();
    let next = if phase == "mirroring" {
        "disk mirrored"
    } else {
        "memory migrated"
    };
    assert!(log.contains(phase) && !log.contains(next), "{log}");

    // Whole and running on A, still counting.
    let (code, home) = a.d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200, "{home}");
    assert_eq!(home["status"], "running", "{home}");
    let n = ticks(&a.d.console_text(&id)).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(&a.d.console_text(&id)).len() < n + 3 {
        assert!(Instant::now() < deadline, "the guest stopped counting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rc, _) = a.d.guest_cmd(&id, "true", Duration::from_secs(30)).await;
    assert_eq!(rc, 0);
    // Nothing on B: no VM, no process, no files.
    let (_, list) = b.d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 0, "{list}");
    assert!(b.processes_of(&id).is_empty());
    assert!(b.vm_dirs().is_empty(), "{:?}", b.vm_dirs());
    // And it can still move afterwards.
    let (code, r) =
        a.d.req(
            "POST",
            &format!("/api/v1/vms/{id}/migrate"),
            Some(json!({"node": b.d.node, "target": b.target()})),
        )
        .await;
    assert_eq!(code, 200, "{r}\nA:\n{}\nB:\n{}", a.d.log(), b.d.log());
    let (code, _) = b.d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(code, 200);
    b.d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
        .await;
}

/// What a source sends to prepare a move.
fn incoming(id: &str, name: &str, live: bool, mac: &str) -> Value {
    json!({
        "id": id, "name": name, "mac_address": mac, "live": live,
        "spec": {"vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "base.qcow2",
                 "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": fixture_cmdline()}},
        "disks": [{"name": "root", "virtual_size": 1u64 << 30}],
    })
}

/// The target side alone: prepared moves are hidden, an abort leaves
/// nothing, bad definitions are refused, and a restart of the target
/// removes what it had prepared (qemu-nbd and QEMU included).
#[tokio::test(flavor = "multi_thread")]
async fn the_target_hides_aborts_and_forgets_unfinished_moves() {
    let mut b = Node::start().await;
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    // Refusals: a second disk, an unknown kernel, a bad MAC, unknown fields.
    let mut bad = incoming(&ids[0], "arriving", false, "52:54:00:aa:bb:01");
    bad["disks"] =
        json!([{"name": "root", "virtual_size": 1}, {"name": "data", "virtual_size": 1}]);
    assert_eq!(
        b.d.req("POST", "/api/v1/migrations", Some(bad)).await.0,
        400
    );
    let mut bad = incoming(&ids[0], "arriving", false, "52:54:00:aa:bb:01");
    bad["spec"]["boot"]["kernel"] = json!("nope");
    assert_eq!(
        b.d.req("POST", "/api/v1/migrations", Some(bad)).await.0,
        404
    );
    let bad = incoming(&ids[0], "arriving", false, "52:54:00:AA:bb:01");
    assert_eq!(
        b.d.req("POST", "/api/v1/migrations", Some(bad)).await.0,
        400
    );
    let mut bad = incoming(&ids[0], "arriving", false, "52:54:00:aa:bb:01");
    bad["extra"] = json!(1);
    assert_eq!(
        b.d.req("POST", "/api/v1/migrations", Some(bad)).await.0,
        400
    );
    assert!(b.vm_dirs().is_empty());

    // Cold and live preparations, hidden from lists and lookups.
    for (i, live) in [(0, false), (1, true), (2, false)] {
        let (code, p) =
            b.d.req(
                "POST",
                "/api/v1/migrations",
                Some(incoming(
                    &ids[i],
                    &format!("arriving-{i}"),
                    live,
                    &format!("52:54:00:aa:bb:0{i}"),
                )),
            )
            .await;
        assert_eq!(code, 201, "{p}\n{}", b.d.log());
        assert_eq!(p["exports"][0]["export"], "root");
        assert_eq!(p["host"], "127.0.0.1");
        assert_eq!(p["migration_port"].is_u64(), live, "{p}");
        assert_eq!(b.processes_of_move(&ids[i]).len(), 1, "{p}");
    }
    let (code, e) =
        b.d.req(
            "POST",
            "/api/v1/migrations",
            Some(incoming(&ids[0], "arriving-x", false, "52:54:00:aa:bb:09")),
        )
        .await;
    assert_eq!(code, 409, "{e}");
    let (_, list) = b.d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 0, "{list}");
    assert_eq!(
        b.d.req("GET", &format!("/api/v1/vms/{}", ids[0]), None)
            .await
            .0,
        404
    );
    assert_eq!(b.vm_dirs().len(), 3);
    // An abort: nothing left of it.
    let (code, _) =
        b.d.req("DELETE", &format!("/api/v1/migrations/{}", ids[2]), None)
            .await;
    assert_eq!(code, 204);
    assert!(b.processes_of_move(&ids[2]).is_empty());
    assert_eq!(b.vm_dirs().len(), 2);
    assert_eq!(
        b.d.req("DELETE", &format!("/api/v1/migrations/{}", ids[2]), None)
            .await
            .0,
        404
    );
    // Completing: a bad id, a move nobody prepared.
    let unknown = uuid::Uuid::new_v4();
    assert_eq!(
        b.d.req(
            "POST",
            &format!("/api/v1/migrations/{unknown}/complete"),
            None
        )
        .await
        .0,
        404
    );
    let (code, e) =
        b.d.req(
            "POST",
            &format!("/api/v1/migrations/{}/complete", "not-a-uuid"),
            None,
        )
        .await;
    assert_eq!(code, 400, "{e}");

    // A restart of the target removes the unfinished ones, processes too.
    b.d.kill(nix::sys::signal::Signal::SIGKILL);
    b.d.spawn().await;
    for id in &ids {
        assert!(b.processes_of_move(id).is_empty(), "{id}");
    }
    assert!(b.vm_dirs().is_empty(), "{:?}", b.vm_dirs());
    let (_, list) = b.d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(list["total_count"], 0, "{list}");
}

impl Node {
    /// The processes a target runs for an arriving VM: its QEMU or qemu-nbd
    /// (both carry the VM's id).
    fn processes_of_move(&self, id: &str) -> Vec<u32> {
        processes_carrying(id)
    }
}
