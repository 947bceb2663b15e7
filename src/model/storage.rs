//! Storage pools and their volumes: directories of disk images on this
//! host, and iSCSI targets whose LUNs are volumes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What backs a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolType {
    /// A directory of image files.
    Dir,
    /// The LUNs of one iSCSI target, reached by QEMU's own initiator.
    Iscsi,
}

impl PoolType {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolType::Dir => "dir",
            PoolType::Iscsi => "iscsi",
        }
    }
}

/// Whether a pool's volumes can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    Active,
    Inactive,
}

/// One storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoragePool {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PoolType,
    pub state: PoolState,
    /// The directory (dir pools) or `iscsi://host:port/target` (iSCSI pools).
    pub path: String,
    /// iSCSI pools: the storage server (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// iSCSI pools: the target's IQN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Bytes: the filesystem's size (dir), the LUNs' total (iSCSI).
    pub capacity: u64,
    /// Bytes in use.
    pub allocated: u64,
    /// Bytes free for new volumes.
    pub available: u64,
    /// Volumes in the pool (0 while it is inactive).
    pub volumes: u64,
    /// Defined in the configuration file (cannot be deleted through the API).
    pub configured: bool,
    /// Why the figures could not be read, when they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoragePoolList {
    pub pools: Vec<StoragePool>,
}

/// `POST /api/v1/storage-pools`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoolRequest {
    /// A DNS label.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PoolType,
    /// Dir pools: an absolute directory under one of the agent's
    /// `pool_parents` (default: a directory named after the pool in the
    /// first of them). Created when missing.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub path: Option<String>,
    /// iSCSI pools: the storage server, `host` or `host:port` (3260).
    #[serde(default)]
    #[schema(max_length = 261)]
    pub host: Option<String>,
    /// iSCSI pools: the target's IQN.
    #[serde(default)]
    #[schema(max_length = 223)]
    pub target: Option<String>,
}

/// Whether a volume is attached to (or backs) a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    Mapped,
    Unmapped,
}

/// A VM using a volume, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeUser {
    pub id: Uuid,
    pub name: String,
    /// `base_image` (the backing file of its disk), `disk` (an attached
    /// disk), `kernel` or `initrd`.
    #[serde(rename = "as")]
    pub role: String,
}

/// Hardware an imported OVA described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeHardware {
    pub vcpus: u32,
    /// MiB.
    pub memory: u64,
}

/// One volume of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StorageVolume {
    pub name: String,
    pub pool: String,
    /// `qcow2`, `raw`, `vmdk`, `vdi`, `ova` or what `qemu-img` calls it.
    pub format: String,
    /// Virtual size in bytes (what a guest sees).
    pub capacity: u64,
    /// Bytes it takes in the pool.
    pub allocation: u64,
    /// Its file, or the LUN's `iscsi://` URL.
    pub path: String,
    pub state: VolumeState,
    pub used_by: Vec<VolumeUser>,
    /// What an imported OVA said the machine had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<VolumeHardware>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StorageVolumeList {
    pub volumes: Vec<StorageVolume>,
}

/// Formats a new empty volume can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    #[default]
    Qcow2,
    Raw,
}

impl VolumeFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw => "raw",
        }
    }
}

/// A volume named by its pool and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeRef {
    /// Default: the pool of the request.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub pool: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$", max_length = 255)]
    pub volume: String,
}

/// `POST /api/v1/storage-pools/{pool}/volumes`: exactly one of `capacity`
/// (a new empty volume), `source` (a copy) or `import` (a conversion to
/// qcow2 of a qcow2, raw, vmdk, vdi or ova volume).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStorageVolumeRequest {
    /// A file name: letters, digits, `.`, `_`, `-`; not starting with `.`
    /// or `-`.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$", max_length = 255)]
    pub name: String,
    /// GiB, for a new empty volume.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65536)]
    pub capacity: Option<u64>,
    /// Format of a new empty volume (default qcow2).
    #[serde(default)]
    pub format: Option<VolumeFormat>,
    /// Copy this volume (same format).
    #[serde(default)]
    pub source: Option<VolumeRef>,
    /// Convert this volume to a qcow2 that can be a base image.
    #[serde(default)]
    pub import: Option<VolumeRef>,
}

/// A storage server: a host that serves iSCSI targets to a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StorageServer {
    /// `host:port`.
    pub host: String,
    pub protocol: String,
    /// The pools that use it.
    pub pools: Vec<String>,
    /// Whether it answered just now.
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StorageServerList {
    pub servers: Vec<StorageServer>,
}

/// One LUN of an iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lun {
    pub lun: u32,
    /// Bytes.
    pub size: u64,
    /// `iscsi://host:port/target/lun`.
    pub url: String,
}

/// One target a storage server offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IscsiTarget {
    pub iqn: String,
    pub luns: Vec<Lun>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IscsiTargetList {
    pub targets: Vec<IscsiTarget>,
}

/// Formats a VM can be exported to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vdi,
    /// An OVF 1.0 package: descriptor, streamOptimized VMDK, manifest.
    Ova,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Qcow2 => "qcow2",
            ExportFormat::Raw => "raw",
            ExportFormat::Vmdk => "vmdk",
            ExportFormat::Vdi => "vdi",
            ExportFormat::Ova => "ova",
        }
    }
}

/// `POST /api/v1/vms/{id}/export`: the VM's disk as a volume. A running VM
/// is exported from a snapshot taken for the purpose (never a disk being
/// written).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportVmRequest {
    pub format: ExportFormat,
    /// Compressed clusters (qcow2; vmdk as streamOptimized). An OVA's disk
    /// is always compressed.
    #[serde(default)]
    pub compress: bool,
    /// The pool of the result (default: `default`).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub pool: Option<String>,
    /// The volume's name (default: `<vm>-<UTC time>.<format>`).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$", max_length = 255)]
    pub name: Option<String>,
    /// Export this snapshot of the VM rather than its disk now.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub snapshot: Option<String>,
}
