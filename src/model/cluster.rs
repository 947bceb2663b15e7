//! Nodes and the cluster: what every agent serves about itself (a cluster
//! of one) and what the aggregator serves about many agents, in one shape,
//! so a client never cares which of the two it talks to.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::NodeResources;

/// Whether a node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Answered its last poll (an agent is always online to itself).
    Online,
    /// Did not answer for two poll intervals; its VMs are listed `stale`.
    Unreachable,
}

/// One node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub name: String,
    pub status: NodeStatus,
    /// When the node last answered (RFC 3339).
    pub last_seen: String,
    /// How the aggregator reaches it (none on an agent speaking of itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The agent's version, as its `/health` says.
    #[serde(default)]
    pub version: String,
    /// `kvm` or `tcg`.
    #[serde(default)]
    pub accel: String,
    /// VMs on the node.
    pub vms: usize,
    /// Why the node is unreachable (the last poll's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node's capacity as last seen (none if it never answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<NodeResources>,
}

/// A page of nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

/// Sums over nodes: what they have, allow, hold and have left.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceTotals {
    /// Nodes counted (online ones with known resources).
    pub nodes: usize,
    /// Online host cores.
    pub cpus: u64,
    /// Host memory, MiB.
    pub memory_mib: u64,
    /// What admission control allows.
    pub limit_vcpus: u64,
    pub limit_memory_mib: u64,
    /// What guests hold.
    pub committed_vcpus: u64,
    pub committed_memory_mib: u64,
    /// What is left for creates and starts.
    pub available_vcpus: u64,
    pub available_memory_mib: u64,
    /// Storage pools: capacity, promised to guest disks, and written.
    pub storage_total_bytes: u64,
    pub storage_allocated_bytes: u64,
    pub storage_used_bytes: u64,
    /// VMs counted as committed.
    pub vms: usize,
}

impl ResourceTotals {
    /// Adds one node's figures.
    pub fn add(&mut self, r: &NodeResources) {
        self.nodes += 1;
        self.cpus += u64::from(r.host.cpus);
        self.memory_mib += r.host.memory_mib;
        self.limit_vcpus += r.limits.vcpus;
        self.limit_memory_mib += r.limits.memory_mib;
        self.committed_vcpus += r.committed.vcpus;
        self.committed_memory_mib += r.committed.memory_mib;
        self.available_vcpus += r.available.vcpus;
        self.available_memory_mib += r.available.memory_mib;
        for p in &r.pools {
            self.storage_total_bytes += p.total_bytes;
            self.storage_allocated_bytes += p.allocated_bytes;
            self.storage_used_bytes += p.used_bytes;
        }
        self.vms += r.committed.vms;
    }

    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a NodeResources>) -> ResourceTotals {
        let mut t = ResourceTotals::default();
        for r in nodes {
            t.add(r);
        }
        t
    }
}

/// `GET /api/v1/resources`: the totals and each node's figures.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterResources {
    pub totals: ResourceTotals,
    pub nodes: Vec<NodeResources>,
}

/// `GET /api/v1/cluster`: who answers and what the cluster is made of.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    /// `node` (an agent: a cluster of one) or `aggregator`.
    pub role: String,
    /// The agent's node name, or the aggregator's name.
    pub name: String,
    pub nodes: usize,
    pub online: usize,
    pub unreachable: usize,
    /// How nodes are known: `self`, `static` (the aggregator's file) or `etcd`.
    pub membership: String,
    /// Aggregators registered in etcd (empty without etcd).
    #[serde(default)]
    pub aggregators: Vec<String>,
    /// Seconds between polls of each node (0 on an agent).
    pub poll_interval_secs: f64,
    pub totals: ResourceTotals,
}

/// A storage pool's figures in a node's resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolCapacity {
    pub name: String,
    /// Size of the filesystem or device under the pool.
    pub total_bytes: u64,
    /// Virtual sizes of the guest disks and volumes in the pool.
    pub allocated_bytes: u64,
    /// What is written (total − free).
    pub used_bytes: u64,
    /// Its volumes `qemu-img` reads as qcow2 or raw: what a create may name
    /// as `base_image` (a kernel file reads as raw too).
    #[serde(default)]
    pub images: Vec<String>,
}

/// How an aggregator chooses a node for a create that names none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// The node with the most free memory (the default).
    #[default]
    Memory,
    /// The node with the fewest VMs sharing the new VM's tags (ties: the
    /// most free memory), so a service's VMs land on different hosts.
    Spread,
}

/// `placement` of a create: how to choose its node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementPolicy {
    #[serde(default)]
    pub strategy: PlacementStrategy,
    /// With `spread`: the tag to spread by (default: every tag of the VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64)]
    pub tag: Option<String>,
}

/// How one node fared in a placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacementCandidate {
    pub node: String,
    /// Passed every filter.
    pub eligible: bool,
    /// Higher is better (eligible nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Why it was filtered out, how it scored, or what it answered.
    pub reasons: Vec<String>,
}

/// An aggregator's placement of a create: the node chosen and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacementDecision {
    pub strategy: PlacementStrategy,
    /// The node that took the VM (none: no node could).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Every node considered, best first.
    pub candidates: Vec<PlacementCandidate>,
}
