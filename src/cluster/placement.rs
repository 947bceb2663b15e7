//! Choosing a node for a create: filters (enough free memory, vCPUs under
//! the node's overcommit limit, a pool holding the base image, the pinned
//! cores present and free), then a score (most free memory, or fewest VMs
//! sharing a tag). Every node's outcome is kept with its reasons, for the
//! job. The node's own admission control stays the final word: a refusal
//! sends the create to the next candidate.

use std::collections::BTreeSet;

use crate::model::{
    NodeResources, PlacementCandidate, PlacementDecision, PlacementPolicy, PlacementStrategy, Vm,
};

/// What the VM to place needs.
#[derive(Debug, Clone, Default)]
pub struct Want {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub base_image: Option<String>,
    pub pinned_cores: Vec<u32>,
    pub tags: Vec<String>,
    pub policy: PlacementPolicy,
}

/// A node as placement sees it.
pub struct Candidate<'a> {
    pub name: &'a str,
    pub online: bool,
    pub resources: Option<&'a NodeResources>,
    pub vms: &'a [Vm],
}

/// Every node judged, eligible ones first, best score first.
pub fn rank(want: &Want, nodes: &[Candidate<'_>]) -> PlacementDecision {
    let mut out: Vec<PlacementCandidate> = nodes.iter().map(|n| judge(want, n)).collect();
    out.sort_by(|a, b| {
        b.eligible
            .cmp(&a.eligible)
            .then(
                b.score
                    .unwrap_or(f64::MIN)
                    .total_cmp(&a.score.unwrap_or(f64::MIN)),
            )
            .then(a.node.cmp(&b.node))
    });
    PlacementDecision {
        strategy: want.policy.strategy,
        node: None,
        candidates: out,
    }
}

fn judge(want: &Want, n: &Candidate<'_>) -> PlacementCandidate {
    let mut reasons = Vec::new();
    let refuse = |reasons: Vec<String>| PlacementCandidate {
        node: n.name.to_owned(),
        eligible: false,
        score: None,
        reasons,
    };
    if !n.online {
        return refuse(vec!["unreachable".into()]);
    }
    let Some(r) = n.resources else {
        return refuse(vec!["capacity not known yet".into()]);
    };
    if r.available.memory_mib < want.memory_mib {
        reasons.push(format!(
            "memory: {} MiB free, {} MiB asked",
            r.available.memory_mib, want.memory_mib
        ));
    }
    if r.available.vcpus < u64::from(want.vcpus) {
        reasons.push(format!(
            "vcpus: {} under the overcommit limit, {} asked",
            r.available.vcpus, want.vcpus
        ));
    }
    if let Some(image) = &want.base_image {
        if !r.pools.iter().any(|p| p.images.iter().any(|i| i == image)) {
            reasons.push(format!("no pool holds the base image {image}"));
        }
    }
    if !want.pinned_cores.is_empty() {
        let taken: BTreeSet<u32> = n
            .vms
            .iter()
            .filter_map(|v| v.cpu_pinning.as_ref())
            .flat_map(|p| p.cores.iter().copied())
            .collect();
        for c in &want.pinned_cores {
            if *c >= r.host.cpus {
                reasons.push(format!("core {c}: the host has {} cores", r.host.cpus));
            } else if taken.contains(c) {
                reasons.push(format!("core {c} is pinned by another VM"));
            }
        }
    }
    if !reasons.is_empty() {
        return refuse(reasons);
    }
    let free_after = r.available.memory_mib - want.memory_mib;
    let (score, why) = match want.policy.strategy {
        PlacementStrategy::Memory => (
            free_after as f64,
            format!("{free_after} MiB free after placing"),
        ),
        PlacementStrategy::Spread => {
            let by: Vec<&String> = match &want.policy.tag {
                Some(t) => vec![t],
                None => want.tags.iter().collect(),
            };
            let sharing = n
                .vms
                .iter()
                .filter(|v| v.tags.iter().any(|t| by.contains(&t)))
                .count();
            // Fewer sharing VMs first; free memory breaks ties (below 1).
            let total = r.host.memory_mib.max(1) as f64;
            (
                -(sharing as f64) + free_after as f64 / (total + 1.0),
                format!("{sharing} VMs share its tags; {free_after} MiB free after placing"),
            )
        }
    };
    PlacementCandidate {
        node: n.name.to_owned(),
        eligible: true,
        score: Some(score),
        reasons: vec![why],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PoolCapacity;

    fn res(free_mib: u64, vcpus: u64, images: &[&str]) -> NodeResources {
        serde_json::from_value(serde_json::json!({
            "node": "n",
            "host": {"memory_mib": 8192, "cpus": 4, "storage_path": "/", "storage_total_bytes": 1, "storage_free_bytes": 1},
            "limits": {"memory_mib": 8192, "vcpus": 16, "memory_overcommit": 1.0, "vcpu_overcommit": 4.0, "reserved_memory_mib": 0},
            "committed": {"memory_mib": 0, "vcpus": 0, "vms": 0, "containers": 0, "pending": 0, "pending_disk_bytes": 0},
            "available": {"memory_mib": free_mib, "vcpus": vcpus, "disk_bytes": 1},
            "pools": [PoolCapacity { name: "vms".into(), images: images.iter().map(|s| s.to_string()).collect(), ..Default::default() }],
            "notes": []
        }))
        .unwrap()
    }

    fn want(mem: u64) -> Want {
        Want {
            vcpus: 1,
            memory_mib: mem,
            base_image: Some("base.qcow2".into()),
            ..Want::default()
        }
    }

    #[test]
    fn most_free_memory_wins_and_filters_say_why() {
        let (a, b, c) = (
            res(1000, 8, &["base.qcow2"]),
            res(3000, 8, &["base.qcow2"]),
            res(9000, 8, &[]),
        );
        let nodes = [
            Candidate {
                name: "a",
                online: true,
                resources: Some(&a),
                vms: &[],
            },
            Candidate {
                name: "b",
                online: true,
                resources: Some(&b),
                vms: &[],
            },
            Candidate {
                name: "c",
                online: true,
                resources: Some(&c),
                vms: &[],
            },
            Candidate {
                name: "d",
                online: false,
                resources: Some(&c),
                vms: &[],
            },
        ];
        let d = rank(&want(512), &nodes);
        let order: Vec<_> = d
            .candidates
            .iter()
            .map(|c| (c.node.as_str(), c.eligible))
            .collect();
        assert_eq!(
            order,
            [("b", true), ("a", true), ("c", false), ("d", false)]
        );
        assert!(d.candidates[2].reasons[0].contains("base image"));
        assert_eq!(d.candidates[3].reasons, ["unreachable"]);
        let d = rank(&want(2000), &nodes);
        assert!(
            !d.candidates
                .iter()
                .find(|c| c.node == "a")
                .unwrap()
                .eligible
        );
    }

    #[test]
    fn pinned_cores_must_exist_and_be_free() {
        let a = res(4000, 8, &["base.qcow2"]);
        let mut pinned: Vm = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::new_v4(), "name": "p", "status": "running", "node": "a",
            "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "b", "clone": "linked",
            "disk_file": "f", "mac_address": "52:54:00:00:00:01", "network": {"mode": "user"},
            "tags": ["web"], "created_at": "t", "updated_at": "t"
        }))
        .unwrap();
        pinned.cpu_pinning = Some(crate::model::CpuPinning {
            cores: vec![1],
            emulator_cores: None,
        });
        let vms = [pinned];
        let nodes = [Candidate {
            name: "a",
            online: true,
            resources: Some(&a),
            vms: &vms,
        }];
        let mut w = want(64);
        w.pinned_cores = vec![1];
        assert!(!rank(&w, &nodes).candidates[0].eligible);
        w.pinned_cores = vec![7];
        assert!(rank(&w, &nodes).candidates[0].reasons[0].contains("4 cores"));
        w.pinned_cores = vec![2];
        assert!(rank(&w, &nodes).candidates[0].eligible);

        // Spread: the node without a `web` VM wins despite less memory.
        let b = res(1000, 8, &["base.qcow2"]);
        let nodes = [
            Candidate {
                name: "a",
                online: true,
                resources: Some(&a),
                vms: &vms,
            },
            Candidate {
                name: "b",
                online: true,
                resources: Some(&b),
                vms: &[],
            },
        ];
        let mut w = want(64);
        w.tags = vec!["web".into()];
        w.policy.strategy = PlacementStrategy::Spread;
        assert_eq!(rank(&w, &nodes).candidates[0].node, "b");
        w.policy.strategy = PlacementStrategy::Memory;
        assert_eq!(rank(&w, &nodes).candidates[0].node, "a");
    }
}
