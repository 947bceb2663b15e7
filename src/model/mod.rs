//! Wire types of the REST API: what clients send and receive.
//!
//! Request types reject unknown fields so a typo never silently does nothing.
//! Shared by the API layer, the engine's inputs and the test clients.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Creating,
    Stopped,
    Starting,
    Running,
    Paused,
    Stopping,
    Rebooting,
    Deleting,
    Crashed,
    Error,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Creating => "creating",
            VmStatus::Stopped => "stopped",
            VmStatus::Starting => "starting",
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Stopping => "stopping",
            VmStatus::Rebooting => "rebooting",
            VmStatus::Deleting => "deleting",
            VmStatus::Crashed => "crashed",
            VmStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<VmStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// Whether a QEMU process is expected to exist in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmStatus::Starting
                | VmStatus::Running
                | VmStatus::Paused
                | VmStatus::Stopping
                | VmStatus::Rebooting
        )
    }
}

/// Host cores the VM's vCPUs are pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CpuPinning {
    /// Host CPU cores; vCPU i runs on cores[i] when the counts match.
    pub cores: Vec<u32>,
}

/// Disk I/O limits (0 or absent means unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IoLimits {
    /// Total I/O operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<u64>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bps: Option<u64>,
}

/// Direct kernel boot: files in a storage pool, resolved like `base_image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// How the VM's disk is made from its base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum CloneMode {
    /// A qcow2 overlay backed by the base image (fast, shares the base).
    #[default]
    Linked,
    /// A full, independent copy.
    Full,
}

/// `POST /api/v1/vms` body (seed 001).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// DNS label; generated from the base image name when omitted.
    #[serde(default)]
    pub name: Option<String>,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory: u64,
    /// Root disk size in GiB.
    pub disk_size: u64,
    /// Image name in a storage pool, or a path inside one.
    pub base_image: String,
    #[serde(default)]
    pub clone: CloneMode,
    #[serde(default)]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default)]
    pub io_limits: Option<IoLimits>,
    #[serde(default)]
    pub boot: Option<BootSpec>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub id: Uuid,
    pub name: String,
    pub status: VmStatus,
    /// Why the VM is in its status (crash reason, last error), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub node: String,
    pub vcpus: u32,
    /// MiB.
    pub memory: u64,
    /// GiB.
    pub disk_size: u64,
    pub base_image: String,
    pub clone: CloneMode,
    pub disk_file: String,
    pub mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limits: Option<IoLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSpec>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Process id of the VM's QEMU while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
}

/// `201` answer of `POST /vms`: the VM plus what was done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedVm {
    #[serde(flatten)]
    pub vm: Vm,
    pub message: String,
    pub job_id: Uuid,
}

/// A page of VMs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    pub vms: Vec<Vm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

/// Optional body of power actions.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Seconds to wait for the guest before forcing (`stop`, `reboot`) or giving up (`shutdown`).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// Answer of a power action or a delete.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionResponse {
    pub id: Uuid,
    pub status: String,
    pub message: String,
    pub job_id: Uuid,
}

/// Answer of `DELETE /vms/{id}` (seed 001).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteResponse {
    pub vm_id: Uuid,
    pub status: String,
    pub message: String,
    pub disk_file: String,
    pub job_id: Uuid,
}

/// `GET /vms/{id}/status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    pub id: Uuid,
    pub name: String,
    pub status: VmStatus,
    pub message: String,
}

/// `GET /vms/{id}/config`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmConfig {
    pub id: Uuid,
    pub name: String,
    pub vcpus: u32,
    pub memory: u64,
    pub disk_size: u64,
    pub base_image: String,
    pub disk_file: String,
    pub mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limits: Option<IoLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSpec>,
    /// The accelerator QEMU uses for this VM (`kvm` or `tcg`).
    pub accel: String,
}

/// State of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// A record of one mutating operation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// What was asked: `vm.create`, `vm.start`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub state: JobState,
    pub progress_percent: u8,
    /// The resource the job acts on (`/api/v1/vms/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Who asked (`uid:0`).
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub node: String,
    pub accel: String,
    pub vms: usize,
}

/// The error body of every failed call (AIP-193 shape).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason: `INVALID_INPUT`, `NOT_FOUND`, ...
    pub status: String,
    pub message: String,
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<serde_json::Value>,
    pub request_id: String,
}
