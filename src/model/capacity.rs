//! `GET /nodes/{node}/resources`: what the host has, what admission control
//! allows, what running guests hold and what is left.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The host's figures, limits, commitments and what is available.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeResources {
    pub node: String,
    pub host: HostResources,
    pub limits: CapacityLimits,
    pub committed: CommittedResources,
    pub available: AvailableResources,
    /// The node's storage pools (active ones), with the base images each holds.
    #[serde(default)]
    pub pools: Vec<super::PoolCapacity>,
    /// Why a figure may be incomplete (the Docker engine did not answer).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostResources {
    /// `MemTotal` of `/proc/meminfo`, MiB.
    pub memory_mib: u64,
    /// Online host cores.
    pub cpus: u32,
    /// Where VM disks are made.
    pub storage_path: String,
    pub storage_total_bytes: u64,
    /// Free for libgod (`statvfs` `f_bavail`).
    pub storage_free_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CapacityLimits {
    /// (host memory − reserved) × memory_overcommit, MiB.
    pub memory_mib: u64,
    /// Host cores × vcpu_overcommit.
    pub vcpus: u64,
    pub memory_overcommit: f64,
    pub vcpu_overcommit: f64,
    pub reserved_memory_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommittedResources {
    /// Memory of VMs with a QEMU process (or starting) and memory limits
    /// of running containers, MiB.
    pub memory_mib: u64,
    /// vCPUs of VMs with a QEMU process (or starting).
    pub vcpus: u64,
    /// VMs counted.
    pub vms: usize,
    /// Containers counted (running or paused, with a memory limit).
    pub containers: usize,
    /// Starts and creates admitted and still under way, counted above.
    pub pending: usize,
    /// Disk space promised to creates under way, bytes.
    pub pending_disk_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AvailableResources {
    pub memory_mib: u64,
    pub vcpus: u64,
    /// The largest disk a create may ask for now, bytes.
    pub disk_bytes: u64,
}
