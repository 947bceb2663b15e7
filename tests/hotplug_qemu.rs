//! Extra disks in a real QEMU with the fixture guest (TCG): given at start,
//! hot-plugged, throttled and hot-unplugged, each seen (or no longer seen)
//! from inside the guest. QEMU is started here with libgo's own argv and
//! driven with its own monitor; no daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture_cmdline, fixtures, guest_slot, BOOT, READY};
use libgo::qemu::argv::{self, Accelerator, KernelBoot, LaunchSpec};
use libgo::qemu::disks::{self, DiskError, ExtraDisk};
use libgo::qemu::monitor::{BlockInfo, ImageFormat, IoThrottle, Monitor};
use libgo::qemu::qmp::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Deadline of one guest command.
const STEP: Duration = Duration::from_secs(30);
/// Deadline of an unplug the guest is expected to answer.
const UNPLUG: Duration = Duration::from_secs(30);

/// One QEMU with the fixture guest, started by this test.
struct Vm {
    dir: tempfile::TempDir,
    child: Child,
    mon: Monitor,
    /// QEMU's event stream, as the VM's watcher gets it.
    events: mpsc::Receiver<Event>,
    console: Console,
}

impl Vm {
    /// Starts the fixture guest with `extra` disks given at start (and a
    /// cloud-init drive if `seed`), sets their limits while paused,
    /// continues and waits for the guest's READY.
    async fn boot(extra: Vec<ExtraDisk>, seed: Option<PathBuf>) -> Vm {
        let dir = tempfile::Builder::new()
            .prefix("hp")
            .tempdir_in("/tmp")
            .unwrap();
        let fx = fixtures();
        let root = dir.path().join("root.qcow2");
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            &fx.join("base.qcow2").to_string_lossy(),
            "-F",
            "qcow2",
            &root.to_string_lossy(),
        ]);
        let spec = LaunchSpec {
            id: uuid::Uuid::new_v4(),
            name: "hotplug".into(),
            vcpus: 1,
            memory_mib: 128,
            accel: Accelerator::Tcg,
            disk: root,
            disk_format: "qcow2".into(),
            disk_cache: "none",
            mac: "52:54:00:12:34:56".into(),
            tap_fd: None,
            boot: Some(KernelBoot {
                kernel: fx.join("vmlinuz"),
                initrd: Some(fx.join("initrd.img")),
                cmdline: Some(fixture_cmdline()),
            }),
            seed,
            pidfile: dir.path().join("qemu.pid"),
            qmp_socket: dir.path().join("qmp.sock"),
            console_socket: dir.path().join("console.sock"),
            console_log: dir.path().join("console.log"),
            vnc_socket: None,
            throttle: None,
            extra_disks: extra.clone(),
            incoming: false,
        };
        let mut child = Command::new("qemu-system-x86_64")
            .args(argv::build(&spec))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.log")).unwrap())
            .spawn()
            .expect("qemu-system-x86_64");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mon, events) = loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "QEMU exited at start ({st}): {}",
                    std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default()
                );
            }
            if spec.qmp_socket.exists() {
                if let Ok(pair) = Monitor::connect(&spec.qmp_socket, Duration::from_secs(10)).await
                {
                    break pair;
                }
            }
            assert!(Instant::now() < deadline, "no QMP socket");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        disks::apply_limits(&mon, &extra).await.unwrap();
        mon.cont().await.unwrap();
        let log = spec.console_log.clone();
        let t = Instant::now();
        wait_for(BOOT, || console_text(&log).lines().any(|l| l == READY)).await;
        eprintln!("guest ready {:.2} s after cont", t.elapsed().as_secs_f64());
        let console = Console::connect(&spec.console_socket).await;
        Vm {
            dir,
            child,
            mon,
            events,
            console,
        }
    }

    /// The qdev ids of the `DEVICE_DELETED` events received so far.
    fn deleted_devices(&mut self) -> Vec<String> {
        let mut ids = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            if let (true, Some(id)) = (ev.name == "DEVICE_DELETED", ev.data["device"].as_str()) {
                ids.push(id.to_owned());
            }
        }
        ids
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a command in the guest; its exit status and output.
    async fn sh(&mut self, cmd: &str) -> (i32, String) {
        self.console.run(cmd, STEP).await
    }

    /// The guest's virtio disks: (name, 512-byte sectors, serial, read-only).
    async fn guest_disks(&mut self) -> Vec<(String, u64, String, bool)> {
        let (rc, out) = self
            .sh("for b in /sys/block/vd*; do echo $(basename $b) $(cat $b/size) $(cat $b/ro) S$(cat $b/serial 2>/dev/null); done")
            .await;
        assert_eq!(rc, 0, "{out}");
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4).then(|| {
                    (
                        f[0].to_owned(),
                        f[1].parse().unwrap(),
                        f[3][1..].to_owned(),
                        f[2] == "1",
                    )
                })
            })
            .collect()
    }

    /// The guest's disk with this serial, if any.
    async fn by_serial(&mut self, serial: &str) -> Option<(String, u64, bool)> {
        self.guest_disks()
            .await
            .into_iter()
            .find(|d| d.2 == serial)
            .map(|d| (d.0, d.1, d.3))
    }

    async fn block(&self, disk_id: &str) -> Option<BlockInfo> {
        let path = disks::backend_path(disk_id);
        self.mon
            .query_block()
            .await
            .unwrap()
            .into_iter()
            .find(|b| b.is_named(&path))
    }

    /// Whether QEMU holds `file` open (/proc/<pid>/fd).
    fn qemu_has_open(&self, file: &Path) -> bool {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == file))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to the guest's serial command loop, kept open (QEMU drops
/// the unread input of a client that leaves) and always read.
struct Console {
    s: tokio::net::UnixStream,
    buf: Vec<u8>,
    n: u32,
}

impl Console {
    async fn connect(path: &Path) -> Console {
        Console {
            s: tokio::net::UnixStream::connect(path).await.unwrap(),
            buf: Vec::new(),
            n: 0,
        }
    }

    async fn run(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        self.n += 1;
        let tag = format!("hp{}", self.n);
        self.s
            .write_all(format!("{tag} {cmd}\n").as_bytes())
            .await
            .unwrap();
        let done = format!("LIBGO-DONE {tag} ");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.buf).replace('\r', "");
            if let Some(pos) = text.find(&done) {
                if let Some(end) = text[pos..].find('\n') {
                    let rc = text[pos + done.len()..pos + end].trim().parse().unwrap();
                    let out = text[..pos].trim().to_owned();
                    self.buf = text.as_bytes()[pos + end + 1..].to_vec();
                    return (rc, out);
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => panic!("console closed before {done}: {text}"),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no {done} within {timeout:?} for {cmd:?}: {text}"),
            }
        }
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn console_text(log: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).replace('\r', "")
}

async fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn disk(id: &str, path: PathBuf, format: ImageFormat, serial: &str) -> ExtraDisk {
    ExtraDisk {
        id: id.into(),
        path,
        format,
        read_only: false,
        serial: serial.into(),
        io: IoThrottle::default(),
        direct: true,
    }
}

/// A shell loop for the guest: polls every 10 ms (up to `secs`) until a
/// disk with serial `serial` exists (`want_present`) or none does; prints
/// its name and size, or `gone`.
fn poll_for(serial: &str, want_present: bool, secs: u32) -> String {
    let find = format!(
        "d=; for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = {serial} ] && d=$b; done"
    );
    let done = if want_present {
        "[ -n \"$d\" ] && { echo found $(basename $d) $(cat $d/size); exit 0; }"
    } else {
        "[ -z \"$d\" ] && { echo gone; exit 0; }"
    };
    format!(
        "i=0; while [ $i -lt {} ]; do {find}; {done}; usleep 10000; i=$((i+1)); done; exit 1",
        secs * 100
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_given_at_start_are_seen_by_serial_throttled_and_unpluggable() {
    let _slot = guest_slot().await;
    let images = tempfile::Builder::new()
        .prefix("hpi")
        .tempdir_in("/tmp")
        .unwrap();
    let data = images.path().join("data.qcow2");
    let iso = images.path().join("ro,data.raw");
    qemu_img(&["create", "-f", "qcow2", &data.to_string_lossy(), "32M"]);
    qemu_img(&["create", "-f", "raw", &iso.to_string_lossy(), "16M"]);
    let mut a = disk("data", data.clone(), ImageFormat::Qcow2, "start-data");
    a.io = IoThrottle {
        read_iops: 77,
        write_bps: 3 << 20,
        ..IoThrottle::default()
    };
    let mut b = disk("iso", iso.clone(), ImageFormat::Raw, "start-iso");
    b.read_only = true;
    // A cloud-init drive too (its content does not matter here): it is on
    // the root bus, like the root disk.
    let seed = images.path().join("cidata.raw");
    qemu_img(&["create", "-f", "raw", &seed.to_string_lossy(), "1M"]);
    let mut vm = Vm::boot(vec![a, b], Some(seed)).await;

    // (a) The guest sees both, found by serial, with their sizes and modes.
    let all = vm.guest_disks().await;
    eprintln!("guest disks at start: {all:?}");
    assert_eq!(all[0].0, "vda", "the root disk comes first");
    assert_eq!(
        (all[1].0.as_str(), all[1].1),
        ("vdb", 2048),
        "then the seed"
    );
    let (name_a, size_a, ro_a) = vm.by_serial("start-data").await.expect("start-data");
    let (name_b, size_b, ro_b) = vm.by_serial("start-iso").await.expect("start-iso");
    assert_eq!((size_a, ro_a), (32 << 20 >> 9, false));
    assert_eq!((size_b, ro_b), (16 << 20 >> 9, true));
    eprintln!("start-data is {name_a}, start-iso is {name_b}");
    assert_eq!(
        (name_a.as_str(), name_b.as_str()),
        ("vdc", "vdd"),
        "at boot, extra disks follow the root disk and the seed, in port order"
    );
    let (rc, out) = vm
        .sh(&format!(
            "dd if=/dev/{name_a} of=/dev/null bs=4k count=16 iflag=direct"
        ))
        .await;
    assert_eq!(rc, 0, "{out}");

    // Their limits were set before the guest ran, on their own backends.
    let blk = vm.block("data").await.expect("img-data in query-block");
    let ins = blk.inserted.unwrap();
    assert_eq!(ins.node_name.as_deref(), Some("img-data"));
    assert_eq!(
        (ins.throttle.read_iops, ins.throttle.write_bps),
        (77, 3 << 20)
    );
    assert!(!ins.ro);
    let ins = vm.block("iso").await.unwrap().inserted.unwrap();
    assert!(ins.ro);
    assert_eq!(ins.throttle, IoThrottle::default());

    // Two ports taken, six spare.
    let free = disks::free_ports(&vm.mon).await.unwrap();
    assert_eq!(free, ["hp2", "hp3", "hp4", "hp5", "hp6", "hp7"]);

    // A disk given at start unplugs like a hot-plugged one.
    assert!(vm.qemu_has_open(&data));
    let t = Instant::now();
    disks::unplug(&vm.mon, "data", UNPLUG).await.unwrap();
    eprintln!("unplug of a disk given at start: {:?}", t.elapsed());
    assert_eq!(vm.deleted_devices(), ["disk-data"]);
    assert!(!vm.qemu_has_open(&data), "QEMU still holds the image");
    assert!(vm.qemu_has_open(&iso));
    let (rc, out) = vm.sh(&poll_for("start-data", false, 20)).await;
    assert_eq!((rc, out.as_str()), (0, "gone"));
    assert!(vm.by_serial("start-iso").await.is_some());
    assert!(vm.block("data").await.is_none());
    assert_eq!(disks::free_ports(&vm.mon).await.unwrap()[0], "hp0");
    // Once more: nothing left to do.
    disks::unplug(&vm.mon, "data", UNPLUG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_plugged_disk_appears_is_throttled_and_goes_away() {
    let _slot = guest_slot().await;
    let mut vm = Vm::boot(Vec::new(), None).await;
    assert_eq!(
        disks::free_ports(&vm.mon).await.unwrap().len(),
        disks::HOTPLUG_PORTS
    );
    let image = vm.path("hot.qcow2");
    qemu_img(&["create", "-f", "qcow2", &image.to_string_lossy(), "64M"]);
    let mut hot = disk("hot", image.clone(), ImageFormat::Qcow2, "hot-1");
    hot.io = IoThrottle {
        read_iops: 50,
        ..IoThrottle::default()
    };

    // (b) Hot-plug: from the QMP call to the guest seeing the disk.
    let port = disks::free_ports(&vm.mon).await.unwrap()[0].clone();
    let t = Instant::now();
    disks::hotplug(&vm.mon, &hot, &port).await.unwrap();
    let qmp_done = t.elapsed();
    let (rc, out) = vm.sh(&poll_for("hot-1", true, 20)).await;
    let seen = t.elapsed();
    assert_eq!(rc, 0, "the guest never saw the disk: {out}");
    eprintln!(
        "hot-plug: QMP calls {:.0} ms, guest sees it after {:.0} ms: {out}",
        qmp_done.as_secs_f64() * 1000.0,
        seen.as_secs_f64() * 1000.0
    );
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[2], (64u64 << 20 >> 9).to_string(), "64 MiB: {out}");
    let name = f[1].to_owned();
    assert_eq!(name, "vdb", "the first free name");
    assert!(!disks::free_ports(&vm.mon).await.unwrap().contains(&port));

    // The guest writes to it and reads it back.
    let (rc, out) = vm
        .sh(&format!(
            "echo hotplugged-ok | dd of=/dev/{name} bs=512 conv=sync oflag=direct 2>/dev/null && dd if=/dev/{name} bs=512 count=1 iflag=direct 2>/dev/null | head -c 13"
        ))
        .await;
    assert_eq!((rc, out.as_str()), (0, "hotplugged-ok"));

    // (d) Its limits, set by the hot-plug, show in query-block, and hold
    // in the guest: 100 direct reads at 50 IOPS take over a second.
    let ins = vm.block("hot").await.unwrap().inserted.unwrap();
    assert_eq!(ins.node_name.as_deref(), Some("img-hot"));
    assert_eq!(
        ins.throttle,
        IoThrottle {
            read_iops: 50,
            ..IoThrottle::default()
        }
    );
    let t = Instant::now();
    let (rc, out) = vm
        .sh(&format!(
            "dd if=/dev/{name} of=/dev/null bs=4k count=100 skip=1000 iflag=direct"
        ))
        .await;
    let throttled = t.elapsed();
    assert_eq!(rc, 0, "{out}");
    eprintln!("100 reads at 50 IOPS: {throttled:?}");
    assert!(throttled > Duration::from_millis(1200), "{throttled:?}");
    // Changed through the existing call, on the disk's backend.
    let limits = IoThrottle {
        write_iops: 20,
        read_bps: 8 << 20,
        ..IoThrottle::default()
    };
    vm.mon
        .set_io_throttle(&disks::backend_path("hot"), &limits)
        .await
        .unwrap();
    assert_eq!(
        vm.block("hot").await.unwrap().inserted.unwrap().throttle,
        limits
    );
    vm.mon
        .set_io_throttle(&disks::backend_path("hot"), &IoThrottle::default())
        .await
        .unwrap();
    assert_eq!(
        vm.block("hot").await.unwrap().inserted.unwrap().throttle,
        IoThrottle::default()
    );

    // A second disk on the same port is refused, and leaves nothing behind.
    let other_image = vm.path("other.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        &other_image.to_string_lossy(),
        "8M",
    ]);
    let other = disk("other", other_image.clone(), ImageFormat::Qcow2, "x");
    let e = disks::hotplug(&vm.mon, &other, &port).await.unwrap_err();
    eprintln!("hot-plug on a taken port: {e}");
    assert!(vm.block("other").await.is_none());
    assert!(!vm
        .mon
        .query_block()
        .await
        .unwrap()
        .iter()
        .any(|b| b.is_named("img-other")));
    assert!(
        !vm.qemu_has_open(&other_image),
        "the undone node let go of its image"
    );

    // A guest that does not answer (paused): a clear timeout, the disk stays.
    vm.mon.stop().await.unwrap();
    let t = Instant::now();
    let e = disks::unplug(&vm.mon, "hot", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(e, DiskError::NotReleased { .. }), "{e:?}");
    assert!(t.elapsed() >= Duration::from_secs(2));
    eprintln!("unplug of a paused guest: {e}");
    assert!(vm
        .mon
        .peripheral_exists(&disks::device_id("hot"))
        .await
        .unwrap());
    assert!(vm.block("hot").await.is_some());
    assert!(vm.qemu_has_open(&image));
    assert!(!disks::free_ports(&vm.mon).await.unwrap().contains(&port));
    assert!(vm.deleted_devices().is_empty());
    vm.mon.cont().await.unwrap();

    // (c) Hot-unplug once the guest runs again: the pending request
    // completes, the guest loses the disk, QEMU lets go of the image.
    let t = Instant::now();
    disks::unplug(&vm.mon, "hot", UNPLUG).await.unwrap();
    let unplugged = t.elapsed();
    let (rc, out) = vm.sh(&poll_for("hot-1", false, 20)).await;
    eprintln!(
        "hot-unplug (pending request, guest resumed): DEVICE_DELETED + blockdev-del in {:.0} ms, guest: {out}",
        unplugged.as_secs_f64() * 1000.0
    );
    assert_eq!((rc, out.as_str()), (0, "gone"));
    assert_eq!(vm.deleted_devices(), ["disk-hot"]);
    assert!(!vm.qemu_has_open(&image), "QEMU still holds the image");
    assert!(vm.block("hot").await.is_none());
    assert!(disks::free_ports(&vm.mon).await.unwrap().contains(&port));

    // Plug and unplug again on the same port: timed as a whole.
    let t = Instant::now();
    disks::hotplug(&vm.mon, &hot, &port).await.unwrap();
    let (rc, out) = vm.sh(&poll_for("hot-1", true, 20)).await;
    assert_eq!(rc, 0, "{out}");
    let plug = t.elapsed();
    let t = Instant::now();
    disks::unplug(&vm.mon, "hot", UNPLUG).await.unwrap();
    let unplug = t.elapsed();
    let (rc, out) = vm.sh(&poll_for("hot-1", false, 20)).await;
    assert_eq!((rc, out.as_str()), (0, "gone"));
    eprintln!(
        "again on {port}: seen in the guest after {:.0} ms; unplug (device_del to blockdev-del done) {:.0} ms",
        plug.as_secs_f64() * 1000.0,
        unplug.as_secs_f64() * 1000.0
    );
    assert!(!vm.qemu_has_open(&image));
}
