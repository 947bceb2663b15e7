//! A VM's configuration turned into QEMU's command line. Pure: no I/O.

use std::path::PathBuf;

use super::disks::{self, ExtraDisk};

/// The accelerator QEMU will run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// Direct kernel boot, with paths already resolved inside a storage pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
}

/// Everything needed to build the command line of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub id: uuid::Uuid,
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub accel: Accelerator,
    pub disk: PathBuf,
    /// `qcow2` or `raw`.
    pub disk_format: String,
    /// `none` (O_DIRECT) where the filesystem supports it.
    pub disk_cache: &'static str,
    pub mac: String,
    /// The descriptor (inherited by QEMU) of a host tap device for the
    /// NIC; user-mode networking when None.
    pub tap_fd: Option<i32>,
    pub boot: Option<KernelBoot>,
    /// A read-only cloud-init NoCloud seed drive.
    pub seed: Option<PathBuf>,
    pub pidfile: PathBuf,
    pub qmp_socket: PathBuf,
    pub console_socket: PathBuf,
    pub console_log: PathBuf,
    /// A display: a standard VGA device whose screen is served over VNC on
    /// this Unix socket (never a TCP port). None: headless.
    pub vnc_socket: Option<PathBuf>,
    /// I/O limits of the root disk, set on the command line so the guest
    /// never runs a moment without them (none: unthrottled).
    pub throttle: Option<DriveThrottle>,
    /// Disks besides the root disk and the seed, each on its own hot-plug
    /// port in this order (`hp0` first). Their I/O limits are not on the
    /// command line: see `disks::apply_limits`.
    pub extra_disks: Vec<ExtraDisk>,
    /// Receive the guest from another host: `-incoming defer` (the address
    /// is given later with `migrate-incoming`).
    pub incoming: bool,
}

/// QEMU's per-drive I/O throttling (0 = no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriveThrottle {
    pub iops_total: u64,
    pub iops_read: u64,
    pub iops_write: u64,
    pub bps_read: u64,
    pub bps_write: u64,
}

impl DriveThrottle {
    /// The `-drive` options, e.g. `,throttling.iops-read=50`.
    fn options(&self) -> String {
        [
            ("iops-total", self.iops_total),
            ("iops-read", self.iops_read),
            ("iops-write", self.iops_write),
            ("bps-read", self.bps_read),
            ("bps-write", self.bps_write),
        ]
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!(",throttling.{k}={v}"))
        .collect()
    }
}

/// Id of the root disk's virtio-blk device (`/machine/peripheral/vd0/virtio-backend`).
pub const DISK_DEVICE_ID: &str = "vd0";
/// Id of the root disk's block backend (`-drive id=`).
pub const DISK_DRIVE_ID: &str = "disk0";

/// The `-sandbox` options every guest runs with.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Escapes a value for QEMU's comma-separated option syntax.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

fn path(p: &std::path::Path) -> String {
    opt(&p.to_string_lossy())
}

/// The argv (without the binary) of a VM started paused (`-S`).
pub fn build(spec: &LaunchSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    push(&[
        "-name",
        &format!("guest={},debug-threads=on", opt(&spec.name)),
    ]);
    push(&["-uuid", &spec.id.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-S"]);
    // QEMU's seccomp filter: no obsolete calls, no change of credentials,
    // no new processes, no scheduling changes (vCPU pinning is done by
    // libgod from outside).
    push(&["-sandbox", SANDBOX]);
    push(&["-machine", "q35"]);
    match spec.accel {
        Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accelerator::Tcg => push(&["-accel", "tcg,tb-size=64"]),
    }
    push(&["-smp", &spec.vcpus.to_string()]);
    push(&["-m", &format!("{}M", spec.memory_mib)]);
    push(&["-display", "none", "-vga", "none"]);
    push(&["-pidfile", &spec.pidfile.to_string_lossy()]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path(&spec.qmp_socket)),
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            path(&spec.console_socket),
            path(&spec.console_log)
        ),
    ]);
    push(&["-serial", "chardev:serial0"]);
    push(&[
        "-drive",
        &format!(
            "file={},if=none,id={DISK_DRIVE_ID},format={},cache={},aio=threads,discard=unmap{}",
            path(&spec.disk),
            spec.disk_format,
            spec.disk_cache,
            spec.throttle.map(|t| t.options()).unwrap_or_default()
        ),
    ]);
    push(&[
        "-device",
        &format!("virtio-blk-pci,drive={DISK_DRIVE_ID},id={DISK_DEVICE_ID},bootindex=1"),
    ]);
    if let Some(seed) = &spec.seed {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=cidata,format=raw,readonly=on",
                path(seed)
            ),
        ]);
        push(&["-device", "virtio-blk-pci,drive=cidata,id=vd1"]);
    }
    match spec.tap_fd {
        None => push(&["-netdev", "user,id=net0"]),
        Some(fd) => push(&["-netdev", &format!("tap,id=net0,fd={fd}")]),
    }
    push(&[
        "-device",
        &format!("virtio-net-pci,netdev=net0,id=nic0,mac={}", spec.mac),
    ]);
    push(&["-device", "virtio-balloon-pci,id=balloon0"]);
    // Hot-plug ports, and the extra disks given at start in the first ones.
    // The ports take functions of slots 0x1c.. (as a real chipset's root
    // ports do), out of the way of the devices above, whose addresses
    // QEMU assigns in order and which therefore stay where they were.
    // ACPI hot-plug (QEMU 7.2's default for q35, set here so a newer
    // default cannot change it): the guest releases a disk at once, where
    // native PCIe hot-plug waits 5 s for a second press of the attention
    // button; and an unplug the guest missed (asked before its ACPI was
    // up) completes at the next reset, where with native hot-plug it never
    // does.
    push(&[
        "-global",
        "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on",
    ]);
    for n in 0..disks::HOTPLUG_PORTS.max(spec.extra_disks.len()) {
        let (slot, function) = (0x1c + n / 8, n % 8);
        let multifunction = if function == 0 {
            ",multifunction=on"
        } else {
            ""
        };
        push(&[
            "-device",
            &format!(
                "pcie-root-port,id={},bus=pcie.0,addr={slot:#x}.{function}{multifunction},chassis={},slot={}",
                disks::port_id(n),
                n + 1,
                n + 1
            ),
        ]);
    }
    // `blockdev-add`'s and `device_add`'s own JSON: opened and attached
    // exactly as a hot-plugged disk is.
    for (n, disk) in spec.extra_disks.iter().enumerate() {
        let (dev, node, port) = (disk.device_id(), disk.node_name(), disks::port_id(n));
        push(&["-blockdev", &disk.image(&node).options().to_string()]);
        push(&[
            "-device",
            &disk.device(&dev, &node, &port).options().to_string(),
        ]);
    }
    // Added last, so the devices above keep the addresses a headless
    // guest sees. VNC only on the VM's own socket, never a TCP port.
    if let Some(vnc) = &spec.vnc_socket {
        push(&["-device", "VGA,id=video0"]);
        push(&["-vnc", &format!("unix:{}", path(vnc))]);
    }
    if let Some(boot) = &spec.boot {
        push(&["-kernel", &boot.kernel.to_string_lossy()]);
        if let Some(initrd) = &boot.initrd {
            push(&["-initrd", &initrd.to_string_lossy()]);
        }
        if let Some(cmdline) = &boot.cmdline {
            push(&["-append", cmdline]);
        }
    }
    if spec.incoming {
        push(&["-incoming", "defer"]);
    }
    push(&["-msg", "timestamp=on"]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            id: uuid::Uuid::nil(),
            name: "web-1".into(),
            vcpus: 2,
            memory_mib: 512,
            accel: Accelerator::Tcg,
            disk: "/var/lib/libgo/vms/x/root.qcow2".into(),
            disk_format: "qcow2".into(),
            disk_cache: "none",
            mac: "52:54:00:aa:bb:cc".into(),
            tap_fd: None,
            boot: None,
            seed: None,
            pidfile: "/run/libgo/vms/x/qemu.pid".into(),
            qmp_socket: "/run/libgo/vms/x/qmp.sock".into(),
            console_socket: "/run/libgo/vms/x/console.sock".into(),
            console_log: "/var/lib/libgo/vms/x/console.log".into(),
            vnc_socket: None,
            throttle: None,
            extra_disks: Vec::new(),
            incoming: false,
        }
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn starts_paused_with_uuid_and_named_threads() {
        let argv = build(&spec());
        assert!(argv.contains(&"-S".to_string()));
        assert_eq!(
            after(&argv, "-uuid"),
            vec!["00000000-0000-0000-0000-000000000000"]
        );
        assert_eq!(after(&argv, "-name"), vec!["guest=web-1,debug-threads=on"]);
        assert_eq!(after(&argv, "-smp"), vec!["2"]);
        assert_eq!(after(&argv, "-m"), vec!["512M"]);
        assert_eq!(after(&argv, "-accel"), vec!["tcg,tb-size=64"]);
        assert!(after(&argv, "-cpu").is_empty());
        assert_eq!(
            after(&argv, "-sandbox"),
            vec!["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
    }

    #[test]
    fn disk_nic_console_and_monitor() {
        let argv = build(&spec());
        let drive = after(&argv, "-drive")[0];
        assert!(drive.starts_with("file=/var/lib/libgo/vms/x/root.qcow2,"));
        assert!(drive.contains("cache=none"));
        let devices = after(&argv, "-device");
        assert!(devices.contains(&"virtio-blk-pci,drive=disk0,id=vd0,bootindex=1"));
        assert!(devices.contains(&"virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:aa:bb:cc"));
        assert_eq!(
            after(&argv, "-qmp"),
            vec!["unix:/run/libgo/vms/x/qmp.sock,server=on,wait=off"]
        );
        assert!(after(&argv, "-chardev")[0].contains("logfile=/var/lib/libgo/vms/x/console.log"));
        assert!(after(&argv, "-kernel").is_empty());
        assert_eq!(after(&argv, "-netdev"), vec!["user,id=net0"]);
    }

    #[test]
    fn a_display_is_a_vga_device_served_on_a_unix_socket_only() {
        let headless = build(&spec());
        assert!(after(&headless, "-vnc").is_empty());
        assert_eq!(after(&headless, "-vga"), vec!["none"]);
        let mut s = spec();
        s.vnc_socket = Some("/run/libgo/vms/x/vnc.sock".into());
        let argv = build(&s);
        assert_eq!(after(&argv, "-vnc"), vec!["unix:/run/libgo/vms/x/vnc.sock"]);
        assert!(after(&argv, "-device").contains(&"VGA,id=video0"));
        // The headless guest's devices keep their order (and addresses):
        // the display is four arguments added after them.
        let at = argv.iter().position(|a| a == "VGA,id=video0").unwrap() - 1;
        let mut rest = argv.clone();
        let added: Vec<String> = rest.drain(at..at + 4).collect();
        assert_eq!(added[2], "-vnc");
        assert_eq!(rest, headless);
    }

    #[test]
    fn a_cloud_init_seed_is_a_second_read_only_disk() {
        let mut s = spec();
        s.seed = Some("/var/lib/libgo/vms/x/cidata.iso".into());
        let argv = build(&s);
        assert!(after(&argv, "-drive").contains(
            &"file=/var/lib/libgo/vms/x/cidata.iso,if=none,id=cidata,format=raw,readonly=on"
        ));
        assert!(after(&argv, "-device").contains(&"virtio-blk-pci,drive=cidata,id=vd1"));
    }

    #[test]
    fn tap_networking() {
        let mut s = spec();
        s.tap_fd = Some(7);
        assert_eq!(after(&build(&s), "-netdev"), vec!["tap,id=net0,fd=7"]);
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_kernel_boot_is_direct() {
        let mut s = spec();
        s.accel = Accelerator::Kvm;
        s.boot = Some(KernelBoot {
            kernel: "/img/vmlinuz".into(),
            initrd: Some("/img/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
        });
        let argv = build(&s);
        assert_eq!(after(&argv, "-accel"), vec!["kvm"]);
        assert_eq!(after(&argv, "-cpu"), vec!["host"]);
        assert_eq!(after(&argv, "-kernel"), vec!["/img/vmlinuz"]);
        assert_eq!(after(&argv, "-initrd"), vec!["/img/initrd.img"]);
        assert_eq!(after(&argv, "-append"), vec!["console=ttyS0 quiet"]);
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut s = spec();
        s.disk = "/data/a,b.qcow2".into();
        let argv = build(&s);
        assert!(after(&argv, "-drive")[0].starts_with("file=/data/a,,b.qcow2,if=none"));
    }

    #[test]
    fn io_limits_go_on_the_drive() {
        let mut s = spec();
        s.throttle = Some(DriveThrottle {
            iops_read: 50,
            bps_write: 1000,
            ..Default::default()
        });
        let argv = build(&s);
        let drive = after(&argv, "-drive")[0];
        assert!(
            drive.ends_with(",throttling.iops-read=50,throttling.bps-write=1000"),
            "{drive}"
        );
        assert!(!after(&build(&spec()), "-drive")[0].contains("throttling"));
    }

    fn extra(id: &str, format: crate::qemu::monitor::ImageFormat, read_only: bool) -> ExtraDisk {
        ExtraDisk {
            id: id.into(),
            path: format!("/pool/{id},x.img").into(),
            format,
            read_only,
            serial: format!("ser-{id}"),
            io: Default::default(),
            direct: true,
        }
    }

    fn json_after(argv: &[String], flag: &str) -> Vec<serde_json::Value> {
        after(argv, flag)
            .into_iter()
            .filter(|a| a.starts_with('{'))
            .map(|a| serde_json::from_str(a).unwrap())
            .collect()
    }

    #[test]
    fn spare_hot_plug_ports_on_their_own_slots_with_acpi_hot_plug() {
        let argv = build(&spec());
        let ports: Vec<&str> = after(&argv, "-device")
            .into_iter()
            .filter(|d| d.starts_with("pcie-root-port,"))
            .collect();
        assert_eq!(ports.len(), disks::HOTPLUG_PORTS);
        assert_eq!(
            ports[0],
            "pcie-root-port,id=hp0,bus=pcie.0,addr=0x1c.0,multifunction=on,chassis=1,slot=1"
        );
        assert_eq!(
            ports[7],
            "pcie-root-port,id=hp7,bus=pcie.0,addr=0x1c.7,chassis=8,slot=8"
        );
        assert_eq!(
            after(&argv, "-global"),
            vec!["ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on"]
        );
        // Nothing else moved: no extra disk, no -blockdev.
        assert!(after(&argv, "-blockdev").is_empty());
        let first_port = argv
            .iter()
            .position(|a| a.starts_with("pcie-root-port"))
            .unwrap();
        let balloon = argv
            .iter()
            .position(|a| a == "virtio-balloon-pci,id=balloon0")
            .unwrap();
        assert!(
            first_port > balloon,
            "ports come after the auto-addressed devices"
        );
    }

    #[test]
    fn extra_disks_are_blockdev_nodes_on_their_own_ports() {
        use crate::qemu::monitor::ImageFormat;
        let mut s = spec();
        s.extra_disks = vec![
            extra("data", ImageFormat::Qcow2, false),
            extra("iso", ImageFormat::Raw, true),
        ];
        s.extra_disks[1].direct = false;
        let argv = build(&s);
        let nodes = json_after(&argv, "-blockdev");
        assert_eq!(
            nodes[0],
            serde_json::json!({
                "driver": "qcow2", "node-name": "img-data", "read-only": false,
                "discard": "unmap", "cache": {"direct": true, "no-flush": false},
                "file": {"driver": "file", "filename": "/pool/data,x.img", "aio": "threads",
                         "read-only": false, "discard": "unmap",
                         "cache": {"direct": true, "no-flush": false}},
            })
        );
        assert_eq!(nodes[1]["driver"], "raw");
        assert_eq!(nodes[1]["read-only"], true);
        assert_eq!(nodes[1]["file"]["read-only"], true);
        assert_eq!(nodes[1]["cache"]["direct"], false);
        let devices = json_after(&argv, "-device");
        assert_eq!(
            devices,
            vec![
                serde_json::json!({"driver": "virtio-blk-pci", "id": "disk-data", "drive": "img-data",
                                   "bus": "hp0", "addr": "0", "serial": "ser-data"}),
                serde_json::json!({"driver": "virtio-blk-pci", "id": "disk-iso", "drive": "img-iso",
                                   "bus": "hp1", "addr": "0", "serial": "ser-iso"}),
            ]
        );
        // Each device after its node and after the ports.
        let pos = |needle: &str| argv.iter().position(|a| a.contains(needle)).unwrap();
        assert!(pos("\"node-name\":\"img-data\"") < pos("\"id\":\"disk-data\""));
        assert!(pos("id=hp7,") < pos("\"id\":\"disk-data\""));
        // Still 8 ports: 6 spare.
        assert_eq!(
            after(&argv, "-device")
                .iter()
                .filter(|d| d.starts_with("pcie-root-port"))
                .count(),
            8
        );
    }

    #[test]
    fn more_disks_than_spare_ports_get_ports_on_the_next_slot() {
        use crate::qemu::monitor::ImageFormat;
        let mut s = spec();
        s.extra_disks = (0..9)
            .map(|i| extra(&format!("d{i}"), ImageFormat::Raw, false))
            .collect();
        let argv = build(&s);
        let ports: Vec<&str> = after(&argv, "-device")
            .into_iter()
            .filter(|d| d.starts_with("pcie-root-port,"))
            .collect();
        assert_eq!(ports.len(), 9);
        assert_eq!(
            ports[8],
            "pcie-root-port,id=hp8,bus=pcie.0,addr=0x1d.0,multifunction=on,chassis=9,slot=9"
        );
        assert_eq!(json_after(&argv, "-device")[8]["bus"], "hp8");
    }
}
