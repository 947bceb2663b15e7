//! Moving a VM from one agent to another: what the source is asked
//! (`POST /api/v1/vms/{id}/migrate`), what it asks the target
//! (`POST /api/v1/migrations`), and what the move reports.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::VmSpec;

/// `POST /api/v1/vms/{id}/migrate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The node to move the VM to (never this agent's own).
    #[schema(min_length = 1, max_length = 253)]
    pub node: String,
    /// Move a running VM without stopping it (default: true when it runs).
    /// A stopped VM moves cold; `live: true` on a stopped VM is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// How to reach the target agent. Required on an agent (the aggregator
    /// fills it in from its node registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<MigrationTarget>,
    /// At most this many bytes per second for the disk copy of a live move
    /// and for its memory (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1048576)]
    pub max_bandwidth: Option<u64>,
}

/// The target agent of a move.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationTarget {
    /// `https://host:port` of the target agent's TCP listener.
    #[schema(
        max_length = 2048,
        min_length = 1,
        pattern = r"^https://[A-Za-z0-9][A-Za-z0-9.-]*(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$"
    )]
    pub url: String,
    /// A bearer credential of the target agent (operator or admin).
    #[schema(max_length = 4096, min_length = 1)]
    pub token: String,
    /// SHA-256 fingerprint of the target's certificate (`AB:CD:…` or
    /// `sha256:abcd…`); required for an `https` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 128,
        pattern = r"^\s*(sha256:|SHA256:)?:*([0-9A-Fa-f]:*){64}\s*$"
    )]
    pub fingerprint: Option<String>,
}

/// How a VM moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// A stopped VM: its disks copied, nothing ran.
    Cold,
    /// A running VM: disks mirrored and memory migrated while it ran.
    Live,
}

/// The answer of a move, and the `result` of its `vm.migrate` job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationResult {
    /// The VM (same id and name on the target).
    pub id: Uuid,
    pub name: String,
    /// The node it lives on now.
    pub node: String,
    pub mode: MigrationMode,
    /// Disk bytes copied (mirrored) plus memory bytes transferred.
    pub bytes_sent: u64,
    /// From the start of the job to the VM's deletion here.
    pub total_ms: u64,
    /// How long the guest was paused at the switch-over (live only, as
    /// QEMU measured it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    pub job_id: Uuid,
}

/// One disk of a VM on the move.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationDisk {
    /// `root` (the only disk a move carries).
    #[schema(pattern = "^root$")]
    pub name: String,
    /// Guest-visible size in bytes.
    #[schema(minimum = 1)]
    pub virtual_size: u64,
}

/// `POST /api/v1/migrations` (target side): the VM about to arrive.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncomingMigration {
    /// The VM's id, kept on the target.
    pub id: Uuid,
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub name: String,
    /// The VM's definition as the source stores it (checked as a create
    /// would be; `base_image` is informational: the disk arrives whole).
    pub spec: VmSpec,
    #[schema(pattern = "^([0-9a-f]{2}:){5}[0-9a-f]{2}$")]
    pub mac_address: String,
    /// Receive a running guest (QEMU waits for its memory) rather than
    /// disks only.
    pub live: bool,
    /// The disks to receive, each an NBD export.
    #[schema(min_items = 1, max_items = 1)]
    pub disks: Vec<MigrationDisk>,
}

/// One NBD export a target serves for a disk on the move.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationExport {
    /// The disk (`root`).
    pub disk: String,
    /// The NBD export name.
    pub export: String,
}

/// The answer of `POST /api/v1/migrations`: where to send the VM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PreparedMigration {
    pub id: Uuid,
    pub name: String,
    pub live: bool,
    /// The address the target listens on for the move; null when its
    /// listener is on every address (use the address the target was
    /// reached at).
    #[serde(default)]
    pub host: Option<String>,
    /// The NBD server's port.
    pub nbd_port: u16,
    pub exports: Vec<MigrationExport>,
    /// QEMU's incoming migration port (live only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_port: Option<u16>,
}
