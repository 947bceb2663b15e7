//! Export and import on the fixture guest: a running VM exported in every
//! format (from a snapshot taken for the purpose, dropped after), the OVA a
//! real OVF package, imported back and booted: the new guest finds the
//! file written before the export. Prints the time and size per format
//! (`cargo test --test export -- --nocapture`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{guest_slot, Daemon, BOOT, READY};
use serde_json::{json, Value};

const CMD: Duration = Duration::from_secs(120);

fn hidden_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

fn image_snapshots(disk: &Path) -> Vec<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn export(d: &Daemon, id: &str, body: Value) -> (u16, Value, f64) {
    let t = Instant::now();
    let (code, v) = d
        .req("POST", &format!("/api/v1/vms/{id}/export"), Some(body))
        .await;
    (code, v, t.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_exported_as_ova_boots_again_from_its_import() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let vm = d.create_fixture_vm("source", "").await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let disk = vm["disk_file"].as_str().unwrap().to_owned();
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;
    let (rc, out) = d
        .guest_cmd(&id, "echo written-before-export > /mnt/marker && sync", CMD)
        .await;
    assert_eq!(rc, 0, "{out}");

    // Every format of the running VM; the export's snapshot never stays.
    let mut sizes = Vec::new();
    for (format, compress) in [
        ("qcow2", false),
        ("qcow2", true),
        ("raw", false),
        ("vmdk", false),
        ("vmdk", true),
        ("vdi", false),
        ("ova", false),
    ] {
        let name = format!(
            "source-{format}{}.{format}",
            if compress { "-z" } else { "" }
        );
        let (code, v, secs) = export(
            &d,
            &id,
            json!({"format": format, "compress": compress, "name": name}),
        )
        .await;
        assert_eq!(code, 201, "{format}: {v}");
        assert_eq!(v["name"], name);
        assert_eq!(
            v["format"],
            if format == "raw" { "raw" } else { format },
            "{v}"
        );
        sizes.push(format!(
            "{format}{}: {:.2} s, {} bytes",
            if compress { " (compressed)" } else { "" },
            secs,
            v["allocation"]
        ));
        assert_eq!(image_snapshots(Path::new(&disk)), Vec::<String>::new());
    }
    eprintln!("export of the running fixture guest (1 GiB disk, 64 MiB used):");
    for s in &sizes {
        eprintln!("  {s}");
    }
    let (code, status) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!((code, status["status"].as_str()), (200, Some("running")));
    let (code, _, _) = export(&d, &id, json!({"format": "raw", "compress": true})).await;
    assert_eq!(code, 400);
    let (code, _, _) = export(
        &d,
        &id,
        json!({"format": "qcow2", "name": "source-qcow2.qcow2"}),
    )
    .await;
    assert_eq!(code, 409, "the name is taken");

    // The OVA: descriptor first, the disk, the manifest; digests right.
    let ova = d.image_dir().join("source-ova.ova");
    let listing = Command::new("tar").arg("tf").arg(&ova).output().unwrap();
    let members: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        members,
        ["source.ovf", "source-disk1.vmdk", "source.mf"],
        "{members:?}"
    );
    let unpacked = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("xf")
        .arg(&ova)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap()
        .success());
    let ovf = std::fs::read_to_string(unpacked.path().join("source.ovf")).unwrap();
    for needle in [
        "http://schemas.dmtf.org/ovf/envelope/1",
        "<References>",
        "<DiskSection>",
        "<NetworkSection>",
        "<VirtualHardwareSection>",
        "streamOptimized",
    ] {
        assert!(
            ovf.contains(needle),
            "{needle} missing from the descriptor:\n{ovf}"
        );
    }
    let mf = std::fs::read_to_string(unpacked.path().join("source.mf")).unwrap();
    for line in mf.lines() {
        let (file, digest) = line
            .strip_prefix("SHA256(")
            .and_then(|l| l.split_once(")= "))
            .unwrap_or_else(|| panic!("manifest line {line:?}"));
        let sum = Command::new("sha256sum")
            .arg(unpacked.path().join(file))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&sum.stdout).starts_with(digest),
            "{file}"
        );
    }
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(unpacked.path().join("source-disk1.vmdk"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("streamOptimized"));

    // Imported back: a qcow2 base image that knows the machine's size.
    let (code, v) = d
        .req(
            "POST",
            "/api/v1/storage-pools/default/volumes",
            Some(json!({"name": "imported.qcow2", "import": {"volume": "source-ova.ova"}})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["hardware"], json!({"vcpus": 1, "memory": 128}));
    drop(
        d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await,
    );

    let cmdline = common::fixture_cmdline();
    let (code, copy) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "copy", "vcpus": 1, "memory": 128, "disk_size": 1,
                        "base_image": "imported.qcow2",
                        "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline}}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{copy}");
    let copy_id = copy["id"].as_str().unwrap().to_owned();
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{copy_id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&copy_id, "LIBGO-ROOTFS fixture-ok", 1, BOOT)
        .await;
    d.wait_marker(&copy_id, READY, 1, BOOT).await;
    let (rc, out) = d.guest_cmd(&copy_id, "cat /mnt/marker", CMD).await;
    assert_eq!((rc, out.trim()), (0, "written-before-export"));
    // The imported volume is now a base image in use.
    let (code, _) = d
        .req(
            "DELETE",
            "/api/v1/storage-pools/default/volumes/imported.qcow2",
            None,
        )
        .await;
    assert_eq!(code, 409);
}

/// A snapshot being exported cannot be deleted meanwhile (the export holds
/// the VM), and a stopped VM's export is its disk, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_being_exported_is_busy_and_a_stopped_export_is_the_disk() {
    let _slot = guest_slot().await;
    let mut d = Daemon::start().await;
    let vm = d.create_fixture_vm("busy", "").await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let disk = vm["disk_file"].as_str().unwrap().to_owned();
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;
    // Random data compresses slowly: the export below takes a while.
    let (rc, out) = d
        .guest_cmd(
            &id,
            "dd if=/dev/urandom of=/mnt/fill bs=1M count=30 2>&1 && sync",
            CMD,
        )
        .await;
    assert_eq!(rc, 0, "{out}");
    let (code, s) = d
        .req(
            "POST",
            &format!("/api/v1/vms/{id}/snapshots"),
            Some(json!({"name": "s1"})),
        )
        .await;
    assert_eq!(code, 201, "{s}");

    let (code, _, body) = d
        .raw(
            "POST",
            &format!("/api/v1/vms/{id}/export"),
            Some(
                json!({"format": "qcow2", "compress": true, "snapshot": "s1", "name": "s1.qcow2"})
                    .to_string(),
            ),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&body));
    let job: Value = serde_json::from_slice(&body).unwrap();
    let job_id = job["job"]["id"].as_str().unwrap().to_owned();
    let (code, e) = d
        .req("DELETE", &format!("/api/v1/vms/{id}/snapshots/s1"), None)
        .await;
    assert_eq!(code, 409, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains(&job_id),
        "{e}"
    );
    let (_, j) = d
        .req("GET", &format!("/api/v1/jobs/{job_id}?wait=120"), None)
        .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(
        d.req("DELETE", &format!("/api/v1/vms/{id}/snapshots/s1"), None)
            .await
            .0,
        200
    );

    // The daemon killed in the middle of a live export: after a restart
    // nothing hidden is left in the pool, the export's snapshot is gone
    // from the disk, the guest still runs and the job failed.
    let (code, _, body) = d
        .raw(
            "POST",
            &format!("/api/v1/vms/{id}/export"),
            Some(json!({"format": "qcow2", "compress": true, "name": "cut.qcow2"}).to_string()),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    assert_eq!(code, 202);
    let cut: Value = serde_json::from_slice(&body).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hidden_in(&d.image_dir()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the export never started writing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.spawn().await;
    assert_eq!(hidden_in(&d.image_dir()), Vec::<String>::new());
    // Finished just before the kill, it is whole; otherwise it is not there.
    let finished = d.image_dir().join("cut.qcow2").exists();
    if finished {
        let check = Command::new("qemu-img")
            .arg("check")
            .arg(d.image_dir().join("cut.qcow2"))
            .status();
        assert!(check.unwrap().success());
    }
    assert_eq!(image_snapshots(Path::new(&disk)), Vec::<String>::new());
    let (_, j) = d
        .req(
            "GET",
            &format!("/api/v1/jobs/{}", cut["job"]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        j["state"],
        if finished { "succeeded" } else { "failed" },
        "{j}"
    );
    let (_, now) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(now["status"], "running", "{now}");

    // Stopped: the export is the disk as it is.
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await
            .0,
        200
    );
    let (code, v, _) = export(&d, &id, json!({"format": "raw", "name": "busy.raw"})).await;
    assert_eq!(code, 201, "{v}");
    let same = Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(&disk)
        .arg(d.image_dir().join("busy.raw"))
        .status()
        .unwrap()
        .success();
    assert!(same, "the raw export differs from the disk");
    assert_eq!(
        export(&d, &id, json!({"format": "qcow2", "snapshot": "nope"}))
            .await
            .0,
        404
    );
    assert_eq!(
        export(&d, &id, json!({"format": "qcow2", "pool": "nope"}))
            .await
            .0,
        404
    );
}
