//! Extra disks of a VM: volumes of a pool attached besides the root disk,
//! hot-plugged into a running guest or given at its next start.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::IoLimits;

/// One extra disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Disk {
    pub name: String,
    pub pool: String,
    pub volume: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// The name the guest gives it at boot (`vdb`, `vdc`, ...: after the
    /// root disk and the cloud-init drive, in attach order). `serial` is
    /// the stable handle: `/dev/disk/by-id/virtio-<serial>`.
    pub device: String,
    /// What the guest reads in `/sys/block/<device>/serial`.
    pub serial: String,
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limits: Option<IoLimits>,
    /// The volume was made for this disk (it goes with the disk or the VM).
    pub owned: bool,
    /// Plugged into the running QEMU now.
    pub attached: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiskList {
    pub disks: Vec<Disk>,
}

/// `POST /api/v1/vms/{id}/disks`: a new volume (`size`) or an existing one
/// (`volume`), in `pool` (default `default`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDiskRequest {
    /// A DNS label of at most 24 characters (default `disk1`, `disk2`, ...).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$", max_length = 24)]
    pub name: Option<String>,
    /// GiB of a new qcow2 volume `<vm>-<disk>.qcow2`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65536)]
    pub size: Option<u64>,
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub pool: Option<String>,
    /// An existing qcow2 or raw volume of `pool` no VM uses.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$", max_length = 255)]
    pub volume: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub io_limits: Option<IoLimits>,
}
