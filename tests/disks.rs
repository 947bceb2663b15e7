//! Extra disks on the fixture guest: one attached to the stopped VM (seen
//! at boot), one hot-plugged into the running guest with an I/O limit the
//! guest feels, then detached (the guest loses it; the volume stays) and
//! deleted (the volume made for it goes). Prints the hot-plug time until
//! the guest sees the disk (`cargo test --test disks -- --nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::{guest_slot, Daemon, BOOT, READY};
use serde_json::json;

const CMD: Duration = Duration::from_secs(60);

/// `serial size-in-bytes` of each virtio disk the guest has, by name.
async fn guest_disks(d: &Daemon, id: &str) -> Vec<(String, String, u64)> {
    let (rc, out) = d
        .guest_cmd(
            id,
            "for b in /sys/block/vd*; do echo $(basename $b) $(cat $b/serial) $(cat $b/size); done",
            CMD,
        )
        .await;
    assert_eq!(rc, 0, "{out}");
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| {
                (
                    f[0].to_owned(),
                    f[1].to_owned(),
                    f[2].parse::<u64>().unwrap() * 512,
                )
            })
        })
        .collect()
}

/// Seconds the guest takes to read `n` 4 KiB blocks of `dev` with O_DIRECT.
async fn read_secs(d: &Daemon, id: &str, dev: &str, n: u32) -> f64 {
    let cmd = format!(
        "a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/{dev} of=/dev/null bs=4k count={n} iflag=direct 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b"
    );
    let (rc, out) = d.guest_cmd(id, &cmd, CMD).await;
    assert_eq!(rc, 0, "{out}");
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    v[1] - v[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_are_attached_hot_plugged_throttled_and_detached() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let vm = d.create_fixture_vm("disky", "").await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let disks = format!("/api/v1/vms/{id}/disks");

    // Stopped: a new 1 GiB volume, seen by the guest at boot.
    let (code, data) = d
        .req("POST", &disks, Some(json!({"name": "data", "size": 1})))
        .await;
    assert_eq!(code, 201, "{data}");
    assert_eq!(
        (
            data["device"].as_str(),
            data["serial"].as_str(),
            data["owned"].as_bool(),
            data["attached"].as_bool()
        ),
        (Some("vdb"), Some("lg-data"), Some(true), Some(false))
    );
    assert_eq!(data["capacity"], 1u64 << 30);
    let vol = "/api/v1/storage-pools/default/volumes/disky-data.qcow2";
    let (_, v) = d.req("GET", vol, None).await;
    assert_eq!(
        (v["state"].as_str(), v["used_by"][0]["as"].as_str()),
        (Some("mapped"), Some("disk")),
        "{v}"
    );
    assert_eq!(
        d.req("POST", &disks, Some(json!({"name": "data", "size": 1})))
            .await
            .0,
        409
    );
    for bad in [
        json!({"size": 1, "volume": "base.qcow2"}),
        json!({}),
        json!({"name": "Bad", "size": 1}),
        json!({"size": 0}),
        json!({"volume": "../images/base.qcow2"}),
    ] {
        assert_eq!(
            d.req("POST", &disks, Some(bad.clone())).await.0,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        d.req("POST", &disks, Some(json!({"volume": "nope.qcow2"})))
            .await
            .0,
        404
    );
    // The VM's base image is in use: not a disk.
    assert_eq!(
        d.req("POST", &disks, Some(json!({"volume": "base.qcow2"})))
            .await
            .0,
        409
    );
    assert_eq!(d.req("DELETE", vol, None).await.0, 409);

    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;
    let seen = guest_disks(&d, &id).await;
    assert!(
        seen.contains(&("vdb".into(), "lg-data".into(), 1 << 30)),
        "{seen:?}"
    );

    // Running: an existing raw volume hot-plugged, limited to 20 reads/s.
    let (code, v) = d
        .req(
            "POST",
            "/api/v1/storage-pools/default/volumes",
            Some(json!({"name": "slow.raw", "capacity": 2, "format": "raw"})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let t = Instant::now();
    let (code, slow) = d
        .req(
            "POST",
            &disks,
            Some(json!({"name": "slow", "volume": "slow.raw", "io_limits": {"read_iops": 20}})),
        )
        .await;
    assert_eq!(code, 201, "{slow}");
    let api = t.elapsed();
    assert_eq!(
        (
            slow["device"].as_str(),
            slow["attached"].as_bool(),
            slow["owned"].as_bool()
        ),
        (Some("vdc"), Some(true), Some(false))
    );
    let dev = loop {
        if let Some((dev, _, size)) = guest_disks(&d, &id)
            .await
            .into_iter()
            .find(|(_, s, _)| s == "lg-slow")
        {
            assert_eq!(size, 2 << 30);
            break dev;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the guest never saw the hot-plugged disk"
        );
    };
    eprintln!(
        "hot-plug: API answered in {:.0} ms, the guest saw {dev} after {:.0} ms",
        api.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(dev, "vdc");
    let (_, listed) = d.req("GET", &disks, None).await;
    assert_eq!(listed["disks"].as_array().unwrap().len(), 2, "{listed}");
    // The limit is felt: 60 direct reads take about 2 s throttled, a
    // fraction of that on the unlimited disk.
    let slow_secs = read_secs(&d, &id, &dev, 60).await;
    let fast_secs = read_secs(&d, &id, "vdb", 60).await;
    eprintln!("60 direct reads: {slow_secs:.2} s at read_iops=20, {fast_secs:.2} s unlimited");
    assert!(slow_secs >= 1.5, "read_iops=20 not enforced: {slow_secs} s");
    assert!(fast_secs < slow_secs / 2.0, "{fast_secs} vs {slow_secs}");

    // Detached: the guest loses it, the volume stays, unmapped.
    let t = Instant::now();
    let (code, out) = d.req("POST", &format!("{disks}/slow/detach"), None).await;
    assert_eq!(code, 200, "{out}");
    eprintln!("hot-unplug: {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    assert!(!guest_disks(&d, &id)
        .await
        .iter()
        .any(|(_, s, _)| s == "lg-slow"));
    let (_, v) = d
        .req(
            "GET",
            "/api/v1/storage-pools/default/volumes/slow.raw",
            None,
        )
        .await;
    assert_eq!(v["state"], "unmapped", "{v}");
    assert_eq!(d.req("GET", &format!("{disks}/slow"), None).await.0, 404);

    // Deleted: detached, and the volume made for it goes.
    let (code, out) = d.req("DELETE", &format!("{disks}/data"), None).await;
    assert_eq!(code, 200, "{out}");
    assert!(!guest_disks(&d, &id)
        .await
        .iter()
        .any(|(_, s, _)| s == "lg-data"));
    assert_eq!(d.req("GET", vol, None).await.0, 404);
    let (_, listed) = d.req("GET", &disks, None).await;
    assert_eq!(listed["disks"], json!([]));

    // A disk attached to a running VM is there at its next boot; a VM
    // deleted takes the volume made for it.
    let (code, _) = d
        .req("POST", &disks, Some(json!({"name": "keep", "size": 1})))
        .await;
    assert_eq!(code, 201);
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/reboot"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, READY, 2, BOOT).await;
    assert!(guest_disks(&d, &id)
        .await
        .iter()
        .any(|(n, s, _)| s == "lg-keep" && n == "vdb"));
    assert_eq!(
        d.req("DELETE", &format!("/api/v1/vms/{id}"), None).await.0,
        200
    );
    assert!(!d.image_dir().join("disky-keep.qcow2").exists());
    assert!(d.image_dir().join("slow.raw").exists());
}

/// The daemon dies right after QEMU got a hot-plugged disk, before the
/// definition says it is attached; after a restart the attach is undone:
/// the guest loses the disk, the definition has none, the volume made for
/// it is gone. And one dies after a snapshot is in the image, before the
/// tree has it: after a restart the image holds no such snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_or_a_snapshot_cut_by_a_crash_is_undone() {
    let _slot = guest_slot().await;
    let mut d = Daemon::start_with_env(
        &[],
        &[(
            "LIBGO_TEST_FAIL_STEP",
            "crashy=crash-after-hotplug,snappy=crash-after-snapshot",
        )],
    )
    .await;
    let vm = d.create_fixture_vm("crashy", "").await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let disks = format!("/api/v1/vms/{id}/disks");
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/start"), None)
            .await
            .0,
        200
    );
    d.wait_marker(&id, READY, 1, BOOT).await;
    let r = d
        .try_req("POST", &disks, Some(json!({"name": "lost", "size": 1})))
        .await;
    assert!(r.is_err(), "the daemon answered: {r:?}");
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.spawn().await;
    let (_, listed) = d.req("GET", &disks, None).await;
    assert_eq!(listed["disks"], json!([]), "{listed}");
    assert!(!guest_disks(&d, &id)
        .await
        .iter()
        .any(|(_, s, _)| s == "lg-lost"));
    assert!(!d.image_dir().join("crashy-lost.qcow2").exists());
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await
            .0,
        200
    );

    let snap = d.create_fixture_vm("snappy", "").await;
    let sid = snap["id"].as_str().unwrap().to_owned();
    let r = d
        .try_req(
            "POST",
            &format!("/api/v1/vms/{sid}/snapshots"),
            Some(json!({"name": "half"})),
        )
        .await;
    assert!(r.is_err(), "the daemon answered: {r:?}");
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.spawn().await;
    let (_, snaps) = d
        .req("GET", &format!("/api/v1/vms/{sid}/snapshots"), None)
        .await;
    assert_eq!(snaps["snapshots"], json!([]), "{snaps}");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(snap["disk_file"].as_str().unwrap())
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        info["snapshots"].as_array().is_none_or(|a| a.is_empty()),
        "{info}"
    );
}
