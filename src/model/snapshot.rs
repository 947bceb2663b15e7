//! Snapshots of a VM: a tree of internal qcow2 snapshots of its disk, with
//! or without its memory.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    pub description: String,
    /// Seconds since the epoch.
    pub created: i64,
    /// RFC 3339.
    pub created_at: String,
    /// The snapshot this one was taken on top of; empty for a root.
    pub parent: String,
    /// Guest memory and device state were saved: a revert resumes the
    /// guest at that instant.
    pub vm_state: bool,
    /// Bytes of saved memory and device state (disk blocks are shared with
    /// the disk and are not counted).
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
    /// The snapshot the VM's disk last came from (taken or reverted to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

/// `POST /api/v1/vms/{id}/snapshots`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// A DNS label.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Save the running guest's memory too (running or paused VMs only).
    #[serde(default)]
    pub memory: bool,
}
