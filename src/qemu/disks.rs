//! Extra disks of a VM, at the QEMU level: the disks given at start, and
//! hot-plug and hot-unplug while the guest runs.
//!
//! The machine has [`HOTPLUG_PORTS`] PCIe root ports (`hp0`, `hp1`, ...,
//! see `argv`), each taking one virtio-blk disk. Every extra disk, given at
//! start or hot-plugged, is opened the same way (`-blockdev` on the command
//! line is `blockdev-add`'s JSON) and attached the same way (`-device` is
//! `device_add`'s JSON), so the same QMP commands (`block_set_io_throttle`
//! on its backend, `device_del`, `blockdev-del`) work on both.
//!
//! QEMU names, derived from the disk's id: the device `disk-<id>`, the
//! image's node `img-<id>`. In the guest, the serial is the reliable handle
//! (`/sys/block/vdX/serial`): `vdX` names are given in probe order (at boot:
//! the root disk, the cloud-init drive, then the extra disks in port order;
//! later: the first free letter).

use std::path::PathBuf;
use std::time::Duration;

use super::monitor::{ImageFormat, ImageNode, IoThrottle, Monitor, Unplug, VirtioBlk};
use super::qmp::QmpError;

/// Root ports for extra disks on every machine (`hp0` ..): the most extra
/// disks a VM can have at once.
pub const HOTPLUG_PORTS: usize = 8;
/// Longest disk id: QEMU's node names have at most 31 characters.
pub const MAX_ID_LEN: usize = 24;
/// Longest serial: what virtio-blk passes to the guest (it cuts the rest).
pub const MAX_SERIAL_LEN: usize = 20;
/// How long an undo of a half-done hot-plug waits for the guest.
const UNDO_DEADLINE: Duration = Duration::from_secs(10);

/// A disk besides the root disk and the cloud-init drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDisk {
    /// Short and safe: `[a-z0-9-]`, at most [`MAX_ID_LEN`] characters;
    /// unique within the VM.
    pub id: String,
    pub path: PathBuf,
    pub format: ImageFormat,
    pub read_only: bool,
    /// What the guest reads in `/sys/block/vdX/serial`: `[A-Za-z0-9._-]`,
    /// at most [`MAX_SERIAL_LEN`]; none when empty.
    pub serial: String,
    /// QEMU's I/O limits on the disk's backend (all 0: none). Not on the
    /// command line: [`apply_limits`] sets those of the disks given at
    /// start while the VM is still paused.
    pub io: IoThrottle,
    /// O_DIRECT, like the root disk's `cache=none`: where the image's file
    /// system has it (`host::supports_o_direct`).
    pub direct: bool,
}

impl ExtraDisk {
    /// qdev id of its virtio-blk device.
    pub fn device_id(&self) -> String {
        device_id(&self.id)
    }

    /// Node name of its image.
    pub fn node_name(&self) -> String {
        node_name(&self.id)
    }

    /// The image node, named `node` (the disk's [`node_name`]).
    pub fn image<'a>(&'a self, node: &'a str) -> ImageNode<'a> {
        ImageNode {
            node,
            path: &self.path,
            format: self.format,
            read_only: self.read_only,
            direct: self.direct,
        }
    }

    /// Its device on `port`, with the given qdev id and node name.
    pub fn device<'a>(&'a self, id: &'a str, node: &'a str, port: &'a str) -> VirtioBlk<'a> {
        VirtioBlk {
            id,
            node,
            port,
            serial: &self.serial,
        }
    }

    /// Whether its id and serial are of the allowed shape.
    pub fn check(&self) -> Result<(), DiskError> {
        let id_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN || !self.id.chars().all(id_ok) {
            return Err(DiskError::Invalid(format!(
                "disk id {:?}: 1 to {MAX_ID_LEN} of a-z, 0-9 and -",
                self.id
            )));
        }
        let serial_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.serial.len() > MAX_SERIAL_LEN || !self.serial.chars().all(serial_ok) {
            return Err(DiskError::Invalid(format!(
                "serial {:?} of disk {}: at most {MAX_SERIAL_LEN} of A-Z, a-z, 0-9, ., _ and -",
                self.serial, self.id
            )));
        }
        Ok(())
    }
}

/// qdev id of the device of disk `id`.
pub fn device_id(id: &str) -> String {
    format!("disk-{id}")
}

/// Node name of the image of disk `id`.
pub fn node_name(id: &str) -> String {
    format!("img-{id}")
}

/// QOM path of the block backend of disk `id`: what
/// [`Monitor::set_io_throttle`] takes, and `query-block`'s `qdev`.
pub fn backend_path(id: &str) -> String {
    format!("/machine/peripheral/{}/virtio-backend", device_id(id))
}

/// qdev id of hot-plug port `n`.
pub fn port_id(n: usize) -> String {
    format!("hp{n}")
}

/// Checks a VM's extra disks: each one's shape, unique ids, no more than
/// there are ports.
pub fn check_all(disks: &[ExtraDisk]) -> Result<(), DiskError> {
    if disks.len() > HOTPLUG_PORTS {
        return Err(DiskError::Invalid(format!(
            "{} extra disks: at most {HOTPLUG_PORTS}",
            disks.len()
        )));
    }
    for (i, d) in disks.iter().enumerate() {
        d.check()?;
        if disks[..i].iter().any(|o| o.id == d.id) {
            return Err(DiskError::Invalid(format!("disk id {} given twice", d.id)));
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("invalid disk: {0}")]
    Invalid(String),
    #[error("no free hot-plug port (the VM has {HOTPLUG_PORTS}, or none if it was started before they existed)")]
    NoFreePort,
    /// The guest did not release the device: it stays attached, its unplug
    /// pending. A later [`unplug`] waits for the same request again.
    #[error("the guest did not release disk {id} within {secs} s: it stays attached, its unplug pending")]
    NotReleased { id: String, secs: u64 },
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

/// The hot-plug ports with nothing in them, in port order (`hp0` first).
/// A port whose disk's unplug is pending is not free.
pub async fn free_ports(mon: &Monitor) -> Result<Vec<String>, DiskError> {
    let mut free: Vec<(usize, String)> = mon
        .query_pci()
        .await?
        .into_iter()
        .filter(|d| d.bridge.as_ref().is_some_and(|b| b.devices.is_empty()))
        .filter_map(|d| {
            let id = d.qdev_id?;
            let n = id.strip_prefix("hp")?.parse::<usize>().ok()?;
            (port_id(n) == id).then_some((n, id))
        })
        .collect();
    free.sort();
    Ok(free.into_iter().map(|(_, id)| id).collect())
}

/// Sets the I/O limits of the disks given at start (the command line
/// cannot carry them): call it after QEMU answers QMP and before `cont`,
/// so that the guest never runs without them.
pub async fn apply_limits(mon: &Monitor, disks: &[ExtraDisk]) -> Result<(), DiskError> {
    for d in disks.iter().filter(|d| d.io != IoThrottle::default()) {
        mon.set_io_throttle(&backend_path(&d.id), &d.io).await?;
    }
    Ok(())
}

/// Hot-plugs `disk` into the running guest on `port` (see [`free_ports`]):
/// `blockdev-add`, `device_add`, then its I/O limits if it has any. On an
/// error nothing stays attached: a failed `device_add` undoes the
/// `blockdev-add`, failed limits undo both.
pub async fn hotplug(mon: &Monitor, disk: &ExtraDisk, port: &str) -> Result<(), DiskError> {
    disk.check()?;
    let (dev, node) = (disk.device_id(), disk.node_name());
    mon.blockdev_add_image(&disk.image(&node)).await?;
    if let Err(e) = mon
        .device_add_virtio_blk(&disk.device(&dev, &node, port))
        .await
    {
        if let Err(undo) = mon.blockdev_del(&node).await {
            tracing::warn!(node, error = %undo, "undoing blockdev-add after a failed device_add");
        }
        return Err(e.into());
    }
    if disk.io != IoThrottle::default() {
        if let Err(e) = mon.set_io_throttle(&backend_path(&disk.id), &disk.io).await {
            if let Err(undo) = unplug(mon, &disk.id, UNDO_DEADLINE).await {
                tracing::warn!(disk = disk.id, error = %undo, "undoing a hot-plug whose limits failed");
            }
            return Err(e.into());
        }
    }
    Ok(())
}

/// Hot-unplugs disk `id`: `device_del`, the wait for `DEVICE_DELETED` (the
/// guest must release the disk) until `deadline`, then `blockdev-del`, after
/// which QEMU no longer holds the image open.
///
/// A guest that does not release it in time gives [`DiskError::NotReleased`]
/// and the disk stays. A disk already gone (no device, no node) is not an
/// error, so a call that was cut short can be repeated.
pub async fn unplug(mon: &Monitor, id: &str, deadline: Duration) -> Result<(), DiskError> {
    match mon.device_del(&device_id(id), deadline).await {
        Ok(Unplug::Deleted) => {}
        Ok(Unplug::Pending) => {
            return Err(DiskError::NotReleased {
                id: id.to_owned(),
                secs: deadline.as_secs(),
            })
        }
        Err(QmpError::Command { class, .. }) if class == "DeviceNotFound" => {}
        Err(e) => return Err(e.into()),
    }
    match mon.blockdev_del(&node_name(id)).await {
        Err(QmpError::Command { desc, .. }) if desc.starts_with("Failed to find node") => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: &str) -> ExtraDisk {
        ExtraDisk {
            id: id.into(),
            path: "/pool/a.qcow2".into(),
            format: ImageFormat::Qcow2,
            read_only: false,
            serial: "data-1".into(),
            io: IoThrottle::default(),
            direct: true,
        }
    }

    #[test]
    fn names_derive_from_the_id_and_fit_qemu_limits() {
        let long = "a".repeat(MAX_ID_LEN);
        assert!(node_name(&long).len() <= 31);
        assert_eq!(device_id("x1"), "disk-x1");
        assert_eq!(node_name("x1"), "img-x1");
        assert_eq!(
            backend_path("x1"),
            "/machine/peripheral/disk-x1/virtio-backend"
        );
        assert_eq!(port_id(7), "hp7");
    }

    #[test]
    fn ids_and_serials_are_checked() {
        assert!(disk("data-1").check().is_ok());
        for bad in ["", "Data", "a_b", "a,b", "a.b", &"a".repeat(MAX_ID_LEN + 1)] {
            assert!(disk(bad).check().is_err(), "{bad:?}");
        }
        let mut d = disk("x");
        d.serial = String::new();
        assert!(d.check().is_ok(), "no serial is allowed");
        for bad in ["a,b", "a b", &"s".repeat(MAX_SERIAL_LEN + 1)] {
            d.serial = bad.into();
            assert!(d.check().is_err(), "{bad:?}");
        }
        assert!(check_all(&[disk("a"), disk("b")]).is_ok());
        assert!(check_all(&[disk("a"), disk("a")]).is_err());
        let many: Vec<ExtraDisk> = (0..=HOTPLUG_PORTS)
            .map(|i| disk(&format!("d{i}")))
            .collect();
        assert!(check_all(&many).is_err());
        assert!(check_all(&many[..HOTPLUG_PORTS]).is_ok());
    }

    // ---- Against a fake QEMU --------------------------------------------

    use crate::qemu::monitor::tests::{device_deleted, error, peripherals, scripted};
    use crate::qemu::qmp::tests::ret;
    use serde_json::{json, Value};

    fn commands(sent: &std::sync::Mutex<Vec<Value>>) -> Vec<String> {
        sent.lock()
            .unwrap()
            .iter()
            .map(|v| v["execute"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn hotplug_adds_the_node_then_the_device_then_its_limits() {
        let (_d, mon, sent) = scripted(|v| vec![ret(v, json!({}))]).await;
        let mut d = disk("data");
        hotplug(&mon, &d, "hp2").await.unwrap();
        assert_eq!(commands(&sent), ["blockdev-add", "device_add"]);
        let w = sent.lock().unwrap().clone();
        assert_eq!(w[0]["arguments"]["node-name"], "img-data");
        assert_eq!(w[1]["arguments"]["bus"], "hp2");
        assert_eq!(w[1]["arguments"]["drive"], "img-data");
        assert_eq!(w[1]["arguments"]["id"], "disk-data");

        sent.lock().unwrap().clear();
        d.io.read_iops = 40;
        hotplug(&mon, &d, "hp3").await.unwrap();
        assert_eq!(
            commands(&sent),
            ["blockdev-add", "device_add", "block_set_io_throttle"]
        );
        let w = sent.lock().unwrap().clone();
        assert_eq!(
            w[2]["arguments"]["id"],
            "/machine/peripheral/disk-data/virtio-backend"
        );
        assert_eq!(w[2]["arguments"]["iops_rd"], 40);
    }

    #[tokio::test]
    async fn a_failed_device_add_undoes_the_node() {
        let (_d, mon, sent) = scripted(|v| match v["execute"].as_str().unwrap() {
            "device_add" => vec![error(
                v,
                "GenericError",
                "PCI: slot 0 function 0 not available for virtio-blk-pci, in use by virtio-blk-pci,id=disk-x",
            )],
            _ => vec![ret(v, json!({}))],
        })
        .await;
        let e = hotplug(&mon, &disk("data"), "hp0").await.unwrap_err();
        assert!(e.to_string().contains("not available"), "{e}");
        assert_eq!(
            commands(&sent),
            ["blockdev-add", "device_add", "blockdev-del"]
        );
        assert_eq!(
            sent.lock().unwrap()[2]["arguments"],
            json!({"node-name": "img-data"})
        );
    }

    #[tokio::test]
    async fn a_bad_disk_sends_nothing() {
        let (_d, mon, sent) = scripted(|v| vec![ret(v, json!({}))]).await;
        let e = hotplug(&mon, &disk("Bad_Id"), "hp0").await.unwrap_err();
        assert!(matches!(e, DiskError::Invalid(_)), "{e}");
        assert!(commands(&sent).is_empty());
    }

    #[tokio::test]
    async fn failed_limits_undo_the_whole_hotplug() {
        let (_d, mon, sent) = scripted(|v| match v["execute"].as_str().unwrap() {
            "block_set_io_throttle" => vec![error(v, "GenericError", "bad limits")],
            "device_del" => vec![
                ret(v, json!({})),
                device_deleted(Some("disk-data"), "/machine/peripheral/disk-data"),
            ],
            _ => vec![ret(v, json!({}))],
        })
        .await;
        let mut d = disk("data");
        d.io.iops = 10;
        let e = hotplug(&mon, &d, "hp0").await.unwrap_err();
        assert!(e.to_string().contains("bad limits"), "{e}");
        assert_eq!(
            commands(&sent),
            [
                "blockdev-add",
                "device_add",
                "block_set_io_throttle",
                "device_del",
                "blockdev-del"
            ]
        );
    }

    #[tokio::test]
    async fn unplug_waits_for_the_guest_then_frees_the_node() {
        let (_d, mon, sent) = scripted(|v| match v["execute"].as_str().unwrap() {
            "device_del" => vec![
                ret(v, json!({})),
                "SLEEP 100".into(),
                device_deleted(Some("disk-data"), "/machine/peripheral/disk-data"),
            ],
            _ => vec![ret(v, json!({}))],
        })
        .await;
        unplug(&mon, "data", Duration::from_secs(5)).await.unwrap();
        let w = sent.lock().unwrap().clone();
        assert_eq!(commands(&sent), ["device_del", "blockdev-del"]);
        assert_eq!(w[0]["arguments"], json!({"id": "disk-data"}));
        assert_eq!(w[1]["arguments"], json!({"node-name": "img-data"}));
    }

    #[tokio::test]
    async fn a_guest_that_keeps_the_disk_is_a_clear_error_and_the_node_stays() {
        let (_d, mon, sent) = scripted(|v| match v["execute"].as_str().unwrap() {
            "qom-list" => vec![peripherals(v, &["disk-data"])],
            _ => vec![ret(v, json!({}))],
        })
        .await;
        let e = unplug(&mon, "data", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(e, DiskError::NotReleased { ref id, .. } if id == "data"),
            "{e:?}"
        );
        assert!(e.to_string().contains("did not release disk data"), "{e}");
        assert!(!commands(&sent).contains(&"blockdev-del".to_owned()));
    }

    #[tokio::test]
    async fn unplugging_a_disk_already_gone_is_done() {
        let (_d, mon, sent) = scripted(|v| match v["execute"].as_str().unwrap() {
            "device_del" => vec![error(v, "DeviceNotFound", "Device 'disk-data' not found")],
            _ => vec![error(
                v,
                "GenericError",
                "Failed to find node with node-name='img-data'",
            )],
        })
        .await;
        unplug(&mon, "data", Duration::from_secs(1)).await.unwrap();
        assert_eq!(commands(&sent), ["device_del", "blockdev-del"]);
        // Another error of blockdev-del is one.
        let (_d, mon, _) = scripted(|v| match v["execute"].as_str().unwrap() {
            "device_del" => vec![error(v, "DeviceNotFound", "not found")],
            _ => vec![error(v, "GenericError", "Node img-data is in use")],
        })
        .await;
        assert!(unplug(&mon, "data", Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn free_ports_are_the_empty_hp_ports_in_order() {
        let bridge = |id: &str, behind: Vec<Value>| {
            json!({"bus": 0, "slot": 28, "function": 0, "qdev_id": id,
                   "pci_bridge": {"bus": {"number": 0}, "devices": behind}})
        };
        let plain = |id: &str| json!({"bus": 0, "slot": 1, "function": 0, "qdev_id": id});
        let answer = json!([{"bus": 0, "devices": [
            plain("vd0"),
            bridge("hp10", vec![]),
            bridge("hp1", vec![plain("disk-a")]),
            bridge("hp2", vec![]),
            bridge("other", vec![]),
            bridge("hp02", vec![]),
            bridge("hp0", vec![]),
        ]}]);
        let (_d, mon, _) = scripted(move |v| vec![ret(v, answer.clone())]).await;
        assert_eq!(free_ports(&mon).await.unwrap(), ["hp0", "hp2", "hp10"]);
    }

    #[tokio::test]
    async fn limits_of_the_disks_given_at_start_go_to_their_backends() {
        let (_d, mon, sent) = scripted(|v| vec![ret(v, json!({}))]).await;
        let mut a = disk("a");
        a.io.write_bps = 1 << 20;
        apply_limits(&mon, &[disk("none"), a]).await.unwrap();
        let w = sent.lock().unwrap().clone();
        assert_eq!(w.len(), 1, "a disk without limits is left alone");
        assert_eq!(
            w[0]["arguments"]["id"],
            "/machine/peripheral/disk-a/virtio-backend"
        );
        assert_eq!(w[0]["arguments"]["bps_wr"], 1 << 20);
    }
}
