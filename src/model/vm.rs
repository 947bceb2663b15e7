//! VMs: status, create/patch/update bodies and their answers, config,
//! performance and resources. The pinning, I/O limit, boot, network and clone
//! settings defined here are reused by templates (and pinning and I/O limits
//! by containers).

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
    /// Host CPU cores. With as many cores as vCPUs, vCPU i runs only on
    /// cores[i]; with another count, every vCPU may run on the whole set.
    pub cores: Vec<u32>,
    /// Host cores for QEMU's other threads (I/O, main loop); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulator_cores: Option<Vec<u32>>,
}

/// How the VM's NIC reaches the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// QEMU's user-mode NAT (no host setup; no per-NIC counters on the host).
    #[default]
    User,
    /// A host tap device (`lg` + the VM id), up, attached to nothing; its
    /// counters feed the performance figures.
    Tap,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default)]
    pub mode: NetworkMode,
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
    /// No copy: the VM runs on the volume itself (an iSCSI LUN, shared
    /// storage, or a dir-pool volume no other VM uses), which is its
    /// alone while it exists and stays in its pool when it is deleted.
    Direct,
}

/// What a VM is made of. Every field is optional: a create request takes
/// what it leaves out from its template, and a template holds any subset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct VmSpec {
    /// Number of virtual CPUs (required in the create request or its template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory in MiB (required in the create request or its template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Root disk size in GiB (required in the create request or its template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<u64>,
    /// Image name in a storage pool, or a path inside one (required in the
    /// create request or its template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneMode>,
    /// cloud-init user data, served to the guest on a NoCloud `cidata` drive:
    /// the short form of `cloud_init.user_data` (which wins when both are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// cloud-init: `user_data`, `meta_data`, `network_config`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::common::object"
    )]
    pub cloud_init: Option<super::CloudInit>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::common::object"
    )]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::common::object"
    )]
    pub io_limits: Option<IoLimits>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::common::object"
    )]
    pub boot: Option<BootSpec>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::common::object"
    )]
    pub network: Option<NetworkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// A display (VGA, served over VNC on a Unix socket): a graphical
    /// console and screenshots. Default false (headless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<bool>,
}

impl VmSpec {
    /// The cloud-init configuration, the short form `user_data` folded in.
    pub fn cloud_init(&self) -> Option<super::CloudInit> {
        match (&self.cloud_init, &self.user_data) {
            (None, None) => None,
            (c, u) => {
                let mut c = c.clone().unwrap_or_default();
                if c.user_data.is_none() {
                    c.user_data = u.clone();
                }
                Some(c)
            }
        }
    }

    /// This spec with its gaps filled from `base` (this spec's fields win).
    pub fn or(self, base: &VmSpec) -> VmSpec {
        // The short form stays as given until a `cloud_init` object is
        // involved; then both sides are merged per file.
        let (cloud_init, user_data) = if self.cloud_init.is_none() && base.cloud_init.is_none() {
            (
                None,
                self.user_data.clone().or_else(|| base.user_data.clone()),
            )
        } else {
            let merged = match (self.cloud_init(), base.cloud_init()) {
                (Some(mine), Some(theirs)) => Some(mine.or(&theirs)),
                (mine, theirs) => mine.or(theirs),
            };
            (merged, None)
        };
        VmSpec {
            vcpus: self.vcpus.or(base.vcpus),
            memory: self.memory.or(base.memory),
            disk_size: self.disk_size.or(base.disk_size),
            base_image: self.base_image.or_else(|| base.base_image.clone()),
            clone: self.clone.or(base.clone),
            cloud_init,
            user_data,
            cpu_pinning: self.cpu_pinning.or_else(|| base.cpu_pinning.clone()),
            io_limits: self.io_limits.or_else(|| base.io_limits.clone()),
            boot: self.boot.or_else(|| base.boot.clone()),
            network: self.network.or_else(|| base.network.clone()),
            tags: self.tags.or_else(|| base.tags.clone()),
            display: self.display.or(base.display),
        }
    }
}

/// `POST /api/v1/vms` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// DNS label; generated from the base image name when omitted.
    #[serde(default)]
    pub name: Option<String>,
    /// A template whose values fill the fields this request leaves out.
    #[serde(default)]
    pub template: Option<String>,
    /// The node to create it on. An agent takes only its own name (or
    /// `self`); the aggregator places a VM without one by filters and scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How an aggregator chooses the node when `node` is absent (an agent,
    /// a cluster of one, has nothing to choose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<super::PlacementPolicy>,
    #[serde(flatten)]
    #[schema(inline)]
    pub spec: VmSpec,
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
    pub network: NetworkSpec,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Whether the VM has cloud-init user data (served on a `cidata` drive).
    #[serde(default)]
    pub cloud_init: bool,
    /// Whether the VM has a display (graphical console, screenshots).
    #[serde(default)]
    pub display: bool,
    /// `/api/v1/vms/{id}/screenshot` when the VM has a display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<String>,
    /// Set by the aggregator on the VMs of a node that stopped answering:
    /// what is shown is that node's last answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
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

/// Answer of `DELETE /vms/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteResponse {
    pub vm_id: Uuid,
    pub status: String,
    pub message: String,
    pub disk_file: String,
    pub job_id: Uuid,
}

/// `DELETE /vms` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDeleteVms {
    /// VM ids or names (at most 100).
    #[serde(alias = "vmIds")]
    pub vm_ids: Vec<String>,
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
    pub network: NetworkSpec,
    /// The accelerator QEMU uses for this VM (`kvm` or `tcg`).
    pub accel: String,
    /// Affinity of each vCPU thread as the kernel reports it
    /// (`/proc/<pid>/task/<tid>/status`), while QEMU runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pinning_in_force: Option<PinningInForce>,
    /// Where the I/O limits are enforced and what each layer has in force.
    pub io_enforcement: IoEnforcement,
    /// Memory the guest has now (balloon), while QEMU runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_in_force: Option<u64>,
    /// Memory QEMU was started with (the balloon's ceiling), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_memory: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VcpuAffinity {
    pub vcpu: u32,
    pub thread_id: u32,
    pub cpus_allowed_list: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PinningInForce {
    pub vcpus: Vec<VcpuAffinity>,
    /// Affinity of QEMU's main thread (other threads follow it).
    pub emulator: String,
}

/// I/O limit enforcement of one VM.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct IoEnforcement {
    /// The host cgroup path (`io.max` on v2, `blkio.throttle.*` on v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupEnforcement>,
    /// QEMU's own throttle (`block_set_io_throttle`), read back from QEMU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<IoLimits>,
    /// Why a layer is not active, if one is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CgroupEnforcement {
    /// `v1` or `v2`.
    pub version: String,
    pub group: String,
    /// The whole disk holding the VM's image, `MAJ:MIN`.
    pub device: String,
    /// Per-direction limits the kernel has (a total `iops` applies to each direction).
    pub in_force: IoLimits,
}

/// `PUT /vms/{id}/cpu`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCpuRequest {
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// `null` removes the pinning.
    #[serde(default, deserialize_with = "super::common::double_object")]
    #[schema(value_type = Option<CpuPinning>)]
    pub cpu_pinning: Option<Option<CpuPinning>>,
}

/// `PUT /vms/{id}/memory`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemoryRequest {
    /// MiB.
    pub memory: u64,
}

/// `PUT /vms/{id}/disk`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDiskRequest {
    /// GiB; disks only grow.
    #[serde(default)]
    pub disk_size: Option<u64>,
    /// `null` removes every limit.
    #[serde(default, deserialize_with = "super::common::double_object")]
    #[schema(value_type = Option<IoLimits>)]
    pub io_limits: Option<Option<IoLimits>>,
}

/// `PATCH /vms/{id}`: any subset of the changeable fields, and a desired status.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchVmRequest {
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub disk_size: Option<u64>,
    #[serde(default, deserialize_with = "super::common::double_object")]
    #[schema(value_type = Option<CpuPinning>)]
    pub cpu_pinning: Option<Option<CpuPinning>>,
    #[serde(default, deserialize_with = "super::common::double_object")]
    #[schema(value_type = Option<IoLimits>)]
    pub io_limits: Option<Option<IoLimits>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Replaces the cloud-init configuration and rewrites the seed (`null`
    /// removes it); the guest reads it at its next start.
    #[serde(default, deserialize_with = "super::common::double_object")]
    #[schema(value_type = Option<super::CloudInit>)]
    pub cloud_init: Option<Option<super::CloudInit>>,
    /// `running`, `stopped` or `paused`.
    #[serde(default)]
    pub status: Option<VmStatus>,
}

/// When a change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Applies {
    Live,
    NextStart,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FieldChange {
    pub field: String,
    pub applies: Applies,
}

/// Answer of the resource updates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateResponse {
    pub id: Uuid,
    /// `updated`.
    pub status: String,
    pub message: String,
    /// `live` when everything changed took effect now, else `next_start`.
    pub applies: Applies,
    pub changes: Vec<FieldChange>,
    pub vcpus: u32,
    pub memory: u64,
    pub disk_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limits: Option<IoLimits>,
    pub vm_status: VmStatus,
    pub job_id: Uuid,
}

/// `GET /vms/{id}/performance`, from the background sampler.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Performance {
    pub id: Uuid,
    /// Percent of one host core (100 = one core busy; up to 100 x vCPUs).
    pub cpu_usage: f64,
    /// QEMU's resident memory, MiB.
    pub memory_usage: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub disk_read_iops: f64,
    pub disk_write_iops: f64,
    pub disk_read_bytes_per_sec: f64,
    pub disk_write_bytes_per_sec: f64,
    /// Bytes and packets the guest received/sent; null with user-mode
    /// networking, whose traffic never crosses a host interface.
    pub network_in_bytes: Option<u64>,
    pub network_out_bytes: Option<u64>,
    pub network_in_packets: Option<u64>,
    pub network_out_packets: Option<u64>,
    /// When the sample was taken, and over how many seconds rates are.
    pub sampled_at: String,
    pub interval_secs: f64,
}

/// `GET /vms/{id}/resources`: configured next to used.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    pub id: Uuid,
    pub status: VmStatus,
    pub cpu: CpuResources,
    pub memory: MemoryResources,
    pub disk: DiskResources,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CpuResources {
    pub vcpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemoryResources {
    pub configured_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_mib: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiskResources {
    pub size_gib: u64,
    /// Bytes the VM's own image file takes on the host (a linked clone shares the rest).
    pub allocated_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_fills_its_gaps_from_its_template_and_refuses_strangers() {
        let req: CreateVmRequest =
            serde_json::from_str(r#"{"name":"a","vcpus":2,"tags":["x"]}"#).unwrap();
        let template = VmSpec {
            vcpus: Some(1),
            memory: Some(256),
            tags: Some(vec!["t".into()]),
            ..VmSpec::default()
        };
        let spec = req.spec.or(&template);
        assert_eq!(
            (spec.vcpus, spec.memory, spec.tags),
            (Some(2), Some(256), Some(vec!["x".to_string()]))
        );
        assert!(serde_json::from_str::<CreateVmRequest>(r#"{"vcpu":2}"#).is_err());
        assert!(serde_json::from_str::<CreateVmRequest>(r#"[2, 128]"#).is_err());
    }
}
