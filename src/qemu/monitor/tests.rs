//! Tests of the typed monitor against a fake QEMU that answers on a socket.

use super::*;
use crate::qemu::qmp::tests::{fake_qmp, ret};
use std::sync::{Arc, Mutex};

type Sent = Arc<Mutex<Vec<Value>>>;

/// A monitor connected to a fake QEMU that answers each command with the
/// given `return` value (`"CLOSE"` hangs up; unknown commands get
/// CommandNotFound) and records every command it receives.
async fn monitor(answers: Vec<(&'static str, Value)>) -> (tempfile::TempDir, Monitor, Sent) {
    let sent: Sent = Arc::default();
    let log = sent.clone();
    let (dir, path) = fake_qmp(move |v| {
        let cmd = v["execute"].as_str().unwrap_or_default();
        if cmd == "qmp_capabilities" {
            return vec![ret(v, json!({}))];
        }
        log.lock().unwrap().push(v.clone());
        match answers.iter().find(|(c, _)| *c == cmd) {
            Some((_, a)) if a == "CLOSE" => vec!["CLOSE".into()],
            Some((_, a)) => vec![ret(v, a.clone())],
            None => vec![json!({
                "error": {"class": "CommandNotFound", "desc": format!("The command {cmd} has not been found")},
                "id": v["id"],
            })
            .to_string()],
        }
    })
    .await;
    let (mon, _events) = Monitor::connect(&path, Duration::from_secs(2))
        .await
        .unwrap();
    (dir, mon, sent)
}

/// (command, arguments) of every command sent, `Null` for no arguments.
fn wire(sent: &Sent) -> Vec<(String, Value)> {
    sent.lock()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["execute"].as_str().unwrap().to_owned(),
                v.get("arguments").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn bad_reply_of(e: QmpError) -> String {
    match e {
        QmpError::BadReply { command, .. } => command,
        other => panic!("expected BadReply, got {other:?}"),
    }
}

#[tokio::test]
async fn power_commands_go_out_without_arguments() {
    let answers = [
        "cont",
        "stop",
        "system_powerdown",
        "system_reset",
        "set-action",
    ]
    .into_iter()
    .map(|c| (c, json!({})))
    .collect();
    let (_d, mon, sent) = monitor(answers).await;
    mon.cont().await.unwrap();
    mon.stop().await.unwrap();
    mon.system_powerdown().await.unwrap();
    mon.system_reset().await.unwrap();
    mon.set_shutdown_action(ShutdownAction::Pause)
        .await
        .unwrap();
    mon.set_shutdown_action(ShutdownAction::Poweroff)
        .await
        .unwrap();
    assert_eq!(
        wire(&sent),
        vec![
            ("cont".into(), Value::Null),
            ("stop".into(), Value::Null),
            ("system_powerdown".into(), Value::Null),
            ("system_reset".into(), Value::Null),
            ("set-action".into(), json!({"shutdown": "pause"})),
            ("set-action".into(), json!({"shutdown": "poweroff"})),
        ]
    );
}

#[tokio::test]
async fn quit_succeeds_when_qemu_hangs_up_instead_of_answering() {
    let (_d, mon, sent) = monitor(vec![("quit", json!("CLOSE"))]).await;
    mon.quit().await.unwrap();
    assert_eq!(wire(&sent), vec![("quit".into(), Value::Null)]);

    let (_d, mon, _) = monitor(vec![("quit", json!({}))]).await;
    mon.quit().await.unwrap();
}

#[tokio::test]
async fn a_qmp_error_stays_a_command_error() {
    let (_d, mon, _) = monitor(vec![]).await;
    let e = mon.cont().await.unwrap_err();
    assert!(
        matches!(e, QmpError::Command { ref command, ref class, .. }
            if command == "cont" && class == "CommandNotFound"),
        "{e:?}"
    );
}

#[tokio::test]
async fn query_status_decodes_the_run_state() {
    for (status, running, want) in [
        ("running", true, RunState::Running),
        ("paused", false, RunState::Paused),
        ("prelaunch", false, RunState::Prelaunch),
        ("shutdown", false, RunState::Shutdown),
        ("internal-error", false, RunState::InternalError),
        ("guest-panicked", false, RunState::GuestPanicked),
        (
            "some-future-state",
            false,
            RunState::Other("some-future-state".into()),
        ),
    ] {
        let answer = json!({"status": status, "singlestep": false, "running": running});
        let (_d, mon, sent) = monitor(vec![("query-status", answer)]).await;
        let st = mon.query_status().await.unwrap();
        assert_eq!(st, want);
        assert_eq!(st.as_str(), status);
        assert_eq!(wire(&sent), vec![("query-status".into(), Value::Null)]);
    }
}

#[tokio::test]
async fn a_status_without_a_state_is_a_bad_reply() {
    let (_d, mon, _) = monitor(vec![("query-status", json!({"running": true}))]).await;
    let e = mon.query_status().await.unwrap_err();
    assert_eq!(bad_reply_of(e), "query-status");
}

#[tokio::test]
async fn query_cpus_fast_gives_threads_by_cpu_index() {
    let cpu = |i: u32, tid: u32| {
        json!({
            "thread-id": tid, "props": {"core-id": 0, "thread-id": 0, "socket-id": i},
            "qom-path": format!("/machine/unattached/device[{i}]"),
            "cpu-index": i, "target": "x86_64",
        })
    };
    let answer = json!([cpu(1, 4312), cpu(0, 4311), cpu(2, 4313)]);
    let (_d, mon, sent) = monitor(vec![("query-cpus-fast", answer)]).await;
    let cpus = mon.query_cpus_fast().await.unwrap();
    assert_eq!(
        cpus,
        vec![
            VcpuThread {
                cpu_index: 0,
                thread_id: 4311
            },
            VcpuThread {
                cpu_index: 1,
                thread_id: 4312
            },
            VcpuThread {
                cpu_index: 2,
                thread_id: 4313
            },
        ]
    );
    assert_eq!(wire(&sent), vec![("query-cpus-fast".into(), Value::Null)]);
}

#[tokio::test]
async fn a_cpu_without_a_thread_is_a_bad_reply() {
    let answer = json!([{"cpu-index": 0, "thread-id": "1234"}]);
    let (_d, mon, _) = monitor(vec![("query-cpus-fast", answer)]).await;
    let e = mon.query_cpus_fast().await.unwrap_err();
    assert_eq!(bad_reply_of(e), "query-cpus-fast");
}

#[tokio::test]
async fn memory_size_and_balloon() {
    let (_d, mon, sent) = monitor(vec![
        (
            "query-memory-size-summary",
            json!({"base-memory": 134217728}),
        ),
        ("query-balloon", json!({"actual": 100663296})),
        ("balloon", json!({})),
    ])
    .await;
    let m = mon.query_memory_size_summary().await.unwrap();
    assert_eq!(
        m,
        MemorySizeSummary {
            base_memory: 128 << 20,
            plugged_memory: None
        }
    );
    assert_eq!(mon.query_balloon().await.unwrap(), 96 << 20);
    mon.balloon(64 << 20).await.unwrap();
    assert_eq!(
        wire(&sent),
        vec![
            ("query-memory-size-summary".into(), Value::Null),
            ("query-balloon".into(), Value::Null),
            ("balloon".into(), json!({"value": 67108864})),
        ]
    );
}

#[tokio::test]
async fn malformed_memory_answers_are_bad_replies() {
    let (_d, mon, _) = monitor(vec![
        ("query-memory-size-summary", json!({"base-memory": -1})),
        ("query-balloon", json!([])),
    ])
    .await;
    let e = mon.query_memory_size_summary().await.unwrap_err();
    assert_eq!(bad_reply_of(e), "query-memory-size-summary");
    let e = mon.query_balloon().await.unwrap_err();
    assert_eq!(bad_reply_of(e), "query-balloon");
}

#[tokio::test]
async fn io_throttle_arguments_on_the_wire() {
    let (_d, mon, sent) = monitor(vec![("block_set_io_throttle", json!({}))]).await;
    let qdev = "/machine/peripheral/vd0/virtio-backend";
    let limits = IoThrottle {
        read_iops: 50,
        write_bps: 1_000_000,
        ..IoThrottle::default()
    };
    mon.set_io_throttle(qdev, &limits).await.unwrap();
    mon.set_io_throttle(qdev, &IoThrottle::default())
        .await
        .unwrap();
    assert_eq!(
        wire(&sent),
        vec![
            (
                "block_set_io_throttle".into(),
                json!({"id": qdev, "iops": 0, "iops_rd": 50, "iops_wr": 0,
                       "bps": 0, "bps_rd": 0, "bps_wr": 1000000})
            ),
            (
                "block_set_io_throttle".into(),
                json!({"id": qdev, "iops": 0, "iops_rd": 0, "iops_wr": 0,
                       "bps": 0, "bps_rd": 0, "bps_wr": 0})
            ),
        ]
    );
}

#[tokio::test]
async fn query_block_decodes_backends_and_their_limits() {
    let answer = json!([
        {
            "io-status": "ok", "device": "disk0", "locked": false, "removable": false,
            "qdev": "/machine/peripheral/vd0/virtio-backend", "type": "unknown",
            "inserted": {
                "iops_rd": 50, "detect_zeroes": "off", "iops_wr": 0, "ro": false,
                "node-name": "#block128", "backing_file_depth": 1, "drv": "qcow2",
                "iops": 0, "bps_wr": 1000000, "write_threshold": 0, "encrypted": false,
                "bps": 0, "bps_rd": 0, "file": "/var/lib/libgo/vms/x/disk.qcow2",
                "cache": {"no-flush": false, "direct": true, "writeback": true},
                "image": {"virtual-size": 10737418240u64, "filename": "/var/lib/libgo/vms/x/disk.qcow2", "format": "qcow2"},
            },
        },
        {"device": "", "locked": false, "removable": true, "type": "unknown",
         "qdev": "/machine/peripheral-anon/device[1]", "tray_open": false},
    ]);
    let (_d, mon, sent) = monitor(vec![("query-block", answer)]).await;
    let blocks = mon.query_block().await.unwrap();
    assert_eq!(blocks.len(), 2);
    let disk = blocks
        .iter()
        .find(|b| b.is_named("/machine/peripheral/vd0/virtio-backend"))
        .unwrap();
    assert!(disk.is_named("disk0") && disk.is_named("#block128"));
    let ins = disk.inserted.as_ref().unwrap();
    assert_eq!(ins.file, "/var/lib/libgo/vms/x/disk.qcow2");
    assert!(!ins.ro);
    assert_eq!(
        ins.throttle,
        IoThrottle {
            read_iops: 50,
            write_bps: 1_000_000,
            ..IoThrottle::default()
        }
    );
    assert_eq!(blocks[1].device, None);
    assert_eq!(blocks[1].inserted, None);
    assert!(!blocks[1].is_named(""));
    assert_eq!(wire(&sent), vec![("query-block".into(), Value::Null)]);
}

#[tokio::test]
async fn a_medium_without_its_limits_is_a_bad_reply() {
    let answer = json!([{"device": "disk0", "inserted": {"file": "/d", "ro": false}}]);
    let (_d, mon, _) = monitor(vec![("query-block", answer)]).await;
    let e = mon.query_block().await.unwrap_err();
    assert_eq!(bad_reply_of(e), "query-block");
}

#[tokio::test]
async fn block_resize_by_device_or_node() {
    let (_d, mon, sent) = monitor(vec![("block_resize", json!({}))]).await;
    mon.block_resize(BlockRef::Device("disk0"), 20 << 30)
        .await
        .unwrap();
    mon.block_resize(BlockRef::NodeName("hp1"), 1 << 30)
        .await
        .unwrap();
    assert_eq!(
        wire(&sent),
        vec![
            (
                "block_resize".into(),
                json!({"device": "disk0", "size": 21474836480u64})
            ),
            (
                "block_resize".into(),
                json!({"node-name": "hp1", "size": 1073741824})
            ),
        ]
    );
}

#[tokio::test]
async fn query_blockstats_decodes_the_counters() {
    let stats = |rb: u64, wb: u64, ro: u64, wo: u64| {
        json!({
            "rd_bytes": rb, "wr_bytes": wb, "rd_operations": ro, "wr_operations": wo,
            "flush_operations": 3, "wr_total_time_ns": 0, "rd_total_time_ns": 0,
            "flush_total_time_ns": 0, "rd_merged": 0, "wr_merged": 0,
            "wr_highest_offset": 0, "idle_time_ns": 1234, "failed_rd_operations": 0,
            "failed_wr_operations": 0, "invalid_rd_operations": 0,
            "invalid_wr_operations": 0, "account_invalid": true, "account_failed": true,
            "timed_stats": [], "unmap_operations": 0, "unmap_bytes": 0,
        })
    };
    let answer = json!([
        {"device": "disk0", "node-name": "#block128",
         "qdev": "/machine/peripheral/vd0/virtio-backend",
         "stats": stats(9_437_184, 4096, 300, 1),
         "parent": {"node-name": "#block024", "stats": stats(1, 1, 1, 1)}},
        {"device": "", "node-name": "hp1",
         "qdev": "/machine/peripheral/hp1/virtio-backend",
         "stats": stats(0, 0, 0, 0)},
    ]);
    let (_d, mon, sent) = monitor(vec![("query-blockstats", answer)]).await;
    let all = mon.query_blockstats().await.unwrap();
    let disk = all.iter().find(|s| s.is_named("disk0")).unwrap();
    assert_eq!(
        *disk,
        BlockStats {
            device: Some("disk0".into()),
            qdev: Some("/machine/peripheral/vd0/virtio-backend".into()),
            node_name: Some("#block128".into()),
            rd_bytes: 9_437_184,
            wr_bytes: 4096,
            rd_operations: 300,
            wr_operations: 1,
        }
    );
    let hot = all.iter().find(|s| s.is_named("hp1")).unwrap();
    assert_eq!(hot.device, None);
    assert_eq!(wire(&sent), vec![("query-blockstats".into(), Value::Null)]);
}

#[tokio::test]
async fn blockstats_that_are_not_a_list_are_a_bad_reply() {
    let (_d, mon, _) = monitor(vec![("query-blockstats", json!({"stats": {}}))]).await;
    let e = mon.query_blockstats().await.unwrap_err();
    assert_eq!(bad_reply_of(e), "query-blockstats");
}

#[tokio::test]
async fn a_file_node_is_added_read_only_and_removed_by_name() {
    let (_d, mon, sent) = monitor(vec![
        ("blockdev-add", json!({})),
        ("blockdev-del", json!({})),
    ])
    .await;
    mon.blockdev_add_file("probe", Path::new("/x/root.qcow2"))
        .await
        .unwrap();
    mon.blockdev_del("probe").await.unwrap();
    assert_eq!(
        wire(&sent),
        vec![
            (
                "blockdev-add".into(),
                json!({"driver": "file", "node-name": "probe", "filename": "/x/root.qcow2", "read-only": true, "locking": "off"})
            ),
            ("blockdev-del".into(), json!({"node-name": "probe"})),
        ]
    );
}

#[tokio::test]
async fn snapshot_jobs_name_their_nodes_and_are_read_back() {
    let (_dir, mon, sent) = monitor(vec![
        ("snapshot-save", json!({})),
        ("snapshot-load", json!({})),
        ("snapshot-delete", json!({})),
        ("job-dismiss", json!({})),
        (
            "query-jobs",
            json!([{"id": "snap-1", "type": "snapshot-save", "status": "concluded",
                    "current-progress": 1, "total-progress": 1, "error": "No space left"}]),
        ),
    ])
    .await;
    mon.snapshot_save("snap-1", "s1", "fmt0", &["fmt0"])
        .await
        .unwrap();
    mon.snapshot_load("snap-2", "s1", "fmt0", &["fmt0"])
        .await
        .unwrap();
    mon.snapshot_delete("snap-3", "s1", &["fmt0"])
        .await
        .unwrap();
    let jobs = mon.query_jobs().await.unwrap();
    assert_eq!(
        jobs,
        vec![QemuJob {
            id: "snap-1".into(),
            kind: "snapshot-save".into(),
            status: "concluded".into(),
            current: 1,
            total: 1,
            error: Some("No space left".into()),
        }]
    );
    mon.job_dismiss("snap-1").await.unwrap();
    let w = wire(&sent);
    assert_eq!(
        w[0],
        (
            "snapshot-save".into(),
            json!({"job-id": "snap-1", "tag": "s1", "vmstate": "fmt0", "devices": ["fmt0"]})
        )
    );
    assert_eq!(
        w[2].1,
        json!({"job-id": "snap-3", "tag": "s1", "devices": ["fmt0"]})
    );
    assert_eq!(w[4], ("job-dismiss".into(), json!({"id": "snap-1"})));
}

// ---- Hot-plug ---------------------------------------------------------

/// A fake QEMU whose answer to a command is `script`'s lines (events
/// included), in order; a line `SLEEP <ms>` pauses before the rest. Records
/// `CLOSE` hangs up. Records every command but `qmp_capabilities`. Returns the monitor from
/// [`Monitor::connect`] (with its copy of the events).
pub(crate) async fn scripted(
    script: impl Fn(&Value) -> Vec<String> + Send + 'static,
) -> (tempfile::TempDir, Monitor, Sent) {
    let (dir, path, sent) = scripted_socket(script).await;
    let (mon, _events) = Monitor::connect(&path, Duration::from_secs(2))
        .await
        .unwrap();
    (dir, mon, sent)
}

async fn scripted_socket(
    script: impl Fn(&Value) -> Vec<String> + Send + 'static,
) -> (tempfile::TempDir, std::path::PathBuf, Sent) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let sent: Sent = Arc::default();
    let log = sent.clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut r = BufReader::new(r).lines();
        while let Ok(Some(line)) = r.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["execute"] == "qmp_capabilities" {
                w.write_all(format!("{}\n", ret(&v, json!({}))).as_bytes())
                    .await
                    .unwrap();
                continue;
            }
            log.lock().unwrap().push(v.clone());
            for out in script(&v) {
                if out == "CLOSE" {
                    return;
                }
                if let Some(ms) = out.strip_prefix("SLEEP ") {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                    continue;
                }
                if w.write_all(format!("{out}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (dir, path, sent)
}

pub(crate) fn error(v: &Value, class: &str, desc: &str) -> String {
    json!({"error": {"class": class, "desc": desc}, "id": v["id"]}).to_string()
}

pub(crate) fn device_deleted(device: Option<&str>, path: &str) -> String {
    let mut data = json!({"path": path});
    if let Some(d) = device {
        data["device"] = json!(d);
    }
    json!({"event": "DEVICE_DELETED", "data": data,
           "timestamp": {"seconds": 1, "microseconds": 2}})
    .to_string()
}

/// `qom-list /machine/peripheral` with these devices.
pub(crate) fn peripherals(v: &Value, ids: &[&str]) -> String {
    let mut props = vec![json!({"name": "type", "type": "string"})];
    props.extend(
        ids.iter()
            .map(|id| json!({"name": id, "type": "child<virtio-blk-pci>"})),
    );
    ret(v, json!(props))
}

#[tokio::test]
async fn image_nodes_and_disks_are_added_with_their_options() {
    let (_d, mon, sent) =
        monitor(vec![("blockdev-add", json!({})), ("device_add", json!({}))]).await;
    let path = Path::new("/pool/a,b.qcow2");
    mon.blockdev_add_image(&ImageNode {
        node: "img-a",
        path,
        format: ImageFormat::Qcow2,
        read_only: false,
        direct: true,
    })
    .await
    .unwrap();
    mon.blockdev_add_image(&ImageNode {
        node: "img-b",
        path,
        format: ImageFormat::Raw,
        read_only: true,
        direct: false,
    })
    .await
    .unwrap();
    mon.device_add_virtio_blk(&VirtioBlk {
        id: "disk-a",
        node: "img-a",
        port: "hp3",
        serial: "s-1",
    })
    .await
    .unwrap();
    mon.device_add_virtio_blk(&VirtioBlk {
        id: "disk-b",
        node: "img-b",
        port: "hp4",
        serial: "",
    })
    .await
    .unwrap();
    let w = wire(&sent);
    assert_eq!(
        w[0],
        (
            "blockdev-add".into(),
            json!({
                "driver": "qcow2", "node-name": "img-a", "read-only": false, "discard": "unmap",
                "cache": {"direct": true, "no-flush": false},
                "file": {"driver": "file", "filename": "/pool/a,b.qcow2", "aio": "threads",
                         "read-only": false, "discard": "unmap",
                         "cache": {"direct": true, "no-flush": false}},
            })
        )
    );
    assert_eq!(
        (
            &w[1].1["driver"],
            &w[1].1["read-only"],
            &w[1].1["file"]["read-only"]
        ),
        (&json!("raw"), &json!(true), &json!(true))
    );
    assert_eq!(w[1].1["cache"]["direct"], false);
    assert_eq!(
        w[2],
        (
            "device_add".into(),
            json!({"driver": "virtio-blk-pci", "id": "disk-a", "drive": "img-a",
                   "bus": "hp3", "addr": "0", "serial": "s-1"})
        )
    );
    assert!(w[3].1.get("serial").is_none(), "no serial: none given");
}

#[tokio::test]
async fn device_del_waits_for_the_device_s_own_deleted_event() {
    let (_d, mon, sent) = scripted(|v| match v["execute"].as_str().unwrap() {
        "device_del" => vec![
            ret(v, json!({})),
            // Its part, and another device: not what is awaited.
            device_deleted(None, "/machine/peripheral/disk-a/virtio-backend"),
            device_deleted(Some("disk-b"), "/machine/peripheral/disk-b"),
            "SLEEP 300".into(),
            device_deleted(Some("disk-a"), "/machine/peripheral/disk-a"),
        ],
        _ => vec![error(v, "CommandNotFound", "no")],
    })
    .await;
    let t = std::time::Instant::now();
    let r = mon.device_del("disk-a", Duration::from_secs(5)).await;
    assert_eq!(r.unwrap(), Unplug::Deleted);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        wire(&sent),
        vec![("device_del".into(), json!({"id": "disk-a"}))]
    );
}

#[tokio::test]
async fn a_device_the_guest_keeps_is_pending_at_the_deadline() {
    let (_d, mon, sent) = scripted(|v| match v["execute"].as_str().unwrap() {
        "device_del" => vec![ret(v, json!({}))],
        "qom-list" => vec![peripherals(v, &["hp0", "disk-a"])],
        _ => vec![error(v, "CommandNotFound", "no")],
    })
    .await;
    let t = std::time::Instant::now();
    let r = mon.device_del("disk-a", Duration::from_millis(400)).await;
    assert_eq!(r.unwrap(), Unplug::Pending);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The last look at the device before giving up.
    assert_eq!(
        wire(&sent).last().unwrap(),
        &("qom-list".into(), json!({"path": "/machine/peripheral"}))
    );
}

#[tokio::test]
async fn a_repeated_device_del_waits_for_the_pending_one() {
    let (_d, mon, _) = scripted(|v| match v["execute"].as_str().unwrap() {
        "device_del" => vec![
            error(
                v,
                "GenericError",
                "Device disk-a is already in the process of unplug",
            ),
            "SLEEP 50".into(),
            device_deleted(Some("disk-a"), "/machine/peripheral/disk-a"),
        ],
        _ => vec![error(v, "CommandNotFound", "no")],
    })
    .await;
    let r = mon.device_del("disk-a", Duration::from_secs(5)).await;
    assert_eq!(r.unwrap(), Unplug::Deleted);
}

#[tokio::test]
async fn device_del_of_an_unknown_device_is_qemu_s_error() {
    let (_d, mon, _) =
        scripted(|v| vec![error(v, "DeviceNotFound", "Device 'disk-x' not found")]).await;
    let e = mon
        .device_del("disk-x", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(e, QmpError::Command { ref class, .. } if class == "DeviceNotFound"),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_monitor_without_events_polls_for_the_device() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let looks = Arc::new(AtomicUsize::new(0));
    let n = looks.clone();
    let (_d, path, _) = scripted_socket(move |v| match v["execute"].as_str().unwrap() {
        "device_del" => vec![ret(v, json!({}))],
        // Gone at the third look.
        "qom-list" if n.fetch_add(1, Ordering::SeqCst) < 2 => vec![peripherals(v, &["disk-a"])],
        "qom-list" => vec![peripherals(v, &[])],
        _ => vec![error(v, "CommandNotFound", "no")],
    })
    .await;
    let (qmp, _events) = Qmp::connect(&path, Duration::from_secs(2)).await.unwrap();
    let mon = Monitor::new(qmp);
    let r = mon.device_del("disk-a", Duration::from_secs(5)).await;
    assert_eq!(r.unwrap(), Unplug::Deleted);
    assert_eq!(looks.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_event_stream_still_gets_every_event() {
    let (_d, path, _) = scripted_socket(|v| {
        vec![
            ret(v, json!({})),
            device_deleted(Some("disk-a"), "/machine/peripheral/disk-a"),
        ]
    })
    .await;
    let (mon, mut events) = Monitor::connect(&path, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        mon.device_del("disk-a", Duration::from_secs(5))
            .await
            .unwrap(),
        Unplug::Deleted
    );
    let ev = events.recv().await.unwrap();
    assert_eq!(ev.name, "DEVICE_DELETED");
    assert_eq!(ev.data["device"], "disk-a");
}

#[tokio::test]
async fn a_wait_ends_when_qemu_hangs_up() {
    let (_d, mon, _) =
        scripted(|v| vec![ret(v, json!({})), "SLEEP 100".into(), "CLOSE".into()]).await;
    let t = std::time::Instant::now();
    let r = mon.device_del("disk-a", Duration::from_secs(5)).await;
    assert!(matches!(r, Err(QmpError::Disconnected)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn query_pci_decodes_ports_and_what_is_behind_them() {
    let dev = |slot: u32, function: u32, id: &str| {
        json!({"bus": 0, "slot": slot, "function": function, "qdev_id": id,
               "class_info": {"class": 256}, "id": {"vendor": 6900, "device": 4162,
               "subsystem": 0, "subsystem-vendor": 0}, "regions": []})
    };
    let mut port0 = dev(28, 0, "hp0");
    port0["pci_bridge"] = json!({"bus": {"number": 1, "secondary": 1, "subordinate": 1,
        "io_range": {"base": 0, "limit": 0}, "memory_range": {"base": 0, "limit": 0},
        "prefetchable_range": {"base": 0, "limit": 0}},
        "devices": [dev(0, 0, "disk-a")]});
    let mut port1 = dev(28, 1, "hp1");
    port1["pci_bridge"] = json!({"bus": {"number": 0, "secondary": 0, "subordinate": 0,
        "io_range": {"base": 0, "limit": 0}, "memory_range": {"base": 0, "limit": 0},
        "prefetchable_range": {"base": 0, "limit": 0}}});
    let answer = json!([{"bus": 0, "devices": [dev(0, 0, ""), dev(1, 0, "vd0"), port0, port1]}]);
    let (_d, mon, _) = monitor(vec![("query-pci", answer)]).await;
    let all = mon.query_pci().await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].qdev_id, None);
    assert_eq!(all[1].qdev_id.as_deref(), Some("vd0"));
    assert!(all[1].bridge.is_none());
    let behind = &all[2].bridge.as_ref().unwrap().devices;
    assert_eq!(behind[0].qdev_id.as_deref(), Some("disk-a"));
    assert!(all[3].bridge.as_ref().unwrap().devices.is_empty());
    assert_eq!((all[3].slot, all[3].function), (28, 1));
}

#[tokio::test]
async fn screendump_asks_for_a_png_file() {
    let (_d, mon, sent) = monitor(vec![("screendump", json!({}))]).await;
    mon.screendump_png(Path::new("/run/libgo/vms/x/screen.png"))
        .await
        .unwrap();
    assert_eq!(
        wire(&sent),
        vec![(
            "screendump".to_owned(),
            json!({"filename": "/run/libgo/vms/x/screen.png", "format": "png"})
        )]
    );
}

#[tokio::test]
async fn a_screendump_without_a_display_is_a_command_error() {
    let (_d, mon, _sent) = monitor(vec![]).await;
    let e = mon
        .screendump_png(Path::new("/tmp/none.png"))
        .await
        .unwrap_err();
    assert!(matches!(e, QmpError::Command { .. }), "{e:?}");
}
