//! Lists over many nodes: each node is asked for one page after the cursor
//! (with the caller's filters and sort), the pages are merged in key order
//! and cut to the page size. The cursor is the last key returned — the
//! sort field and the VM's id, unique across the cluster — so a page never
//! repeats or skips a VM that stayed, whichever nodes come and go. A node
//! that does not answer is shown from its last poll, its VMs `stale`.

use std::time::Duration;

use uuid::Uuid;

use super::registry::{NodeHandle, Registry};
use crate::client::ListQuery;
use crate::model::Vm;
use crate::page::{Page, PageRequest};

/// What a VM list is sorted by: the agent's own choice of field.
pub use crate::engine::vm::SortField;

/// A merged VM list query.
#[derive(Debug, Clone)]
pub struct VmQuery {
    /// The sort as the API names it (`name`, `-created_at`, …).
    pub sort: String,
    pub field: SortField,
    /// Exact filters passed to nodes: `status`, `name`, `tag`, `template`.
    pub filters: Vec<(String, String)>,
    /// Only this node's VMs.
    pub node: Option<String>,
    pub page: PageRequest<(String, Uuid)>,
}

pub type Key = (String, Uuid);

pub fn key(field: SortField, vm: &Vm) -> Key {
    match field {
        SortField::CreatedAt => (vm.created_at.clone(), vm.id),
        SortField::Name => (vm.name.clone(), vm.id),
    }
}

/// Whether a VM passes the exact filters (for nodes answered from cache).
fn passes(vm: &Vm, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(k, v)| match k.as_str() {
        "status" => {
            serde_json::to_value(vm.status)
                .ok()
                .as_ref()
                .and_then(|s| s.as_str())
                == Some(v)
        }
        "name" => &vm.name == v,
        "tag" => vm.tags.contains(v),
        "template" => vm.template.as_ref() == Some(v),
        _ => true,
    })
}

/// One node's part of a page.
struct Part {
    vms: Vec<Vm>,
    total: usize,
    more: bool,
}

async fn ask(
    node: &NodeHandle,
    q: &VmQuery,
    token: &(dyn Fn(&Key) -> String + Sync),
    deadline: Duration,
) -> Part {
    if node.online() {
        let lq = ListQuery {
            limit: Some(q.page.limit as u32),
            page_token: q.page.after.as_ref().map(token),
            sort: Some(q.sort.clone()),
            filters: q.filters.clone(),
        };
        if let Ok(Ok(list)) = tokio::time::timeout(deadline, node.client.vms(&lq)).await {
            return Part {
                more: list.next_page_token.is_some(),
                total: list.total_count,
                vms: list.vms,
            };
        }
    }
    // From the last poll: filtered, sorted and cut here as the node would.
    let mut vms: Vec<Vm> = node
        .cached_vms()
        .into_iter()
        .filter(|v| passes(v, &q.filters))
        .map(|mut v| {
            v.stale = true;
            v
        })
        .collect();
    vms.sort_by_key(|v| key(q.field, v));
    if q.page.descending {
        vms.reverse();
    }
    let p = crate::page::paginate(vms, |v| key(q.field, v), &q.page);
    Part {
        more: p.next.is_some(),
        total: p.total,
        vms: p.items,
    }
}

/// One merged page of VMs. `token` makes a node's page token from a key.
pub async fn vms(
    reg: &Registry,
    q: &VmQuery,
    token: &(dyn Fn(&Key) -> String + Sync),
) -> Page<Vm, Key> {
    let nodes: Vec<_> = reg
        .all()
        .into_iter()
        .filter(|n| q.node.as_ref().is_none_or(|want| &n.name == want))
        .collect();
    let parts =
        futures::future::join_all(nodes.iter().map(|n| ask(n, q, token, reg.timeout))).await;
    merge(parts, q)
}

fn merge(parts: Vec<Part>, q: &VmQuery) -> Page<Vm, Key> {
    let total = parts.iter().map(|p| p.total).sum();
    let some_node_has_more = parts.iter().any(|p| p.more);
    let mut all: Vec<Vm> = parts.into_iter().flat_map(|p| p.vms).collect();
    all.sort_by_key(|v| key(q.field, v));
    if q.page.descending {
        all.reverse();
    }
    let more = some_node_has_more || all.len() > q.page.limit;
    all.truncate(q.page.limit);
    let next = if more {
        all.last().map(|v| key(q.field, v))
    } else {
        None
    };
    Page {
        items: all,
        next,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, created: &str, node: &str) -> Vm {
        let mut v: Vm = serde_json::from_value(serde_json::json!({
            "id": Uuid::new_v4(), "name": name, "status": "stopped", "node": node,
            "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "b", "clone": "linked",
            "disk_file": "f", "mac_address": "52:54:00:00:00:01",
            "network": {"mode": "user"}, "tags": ["web"], "created_at": created, "updated_at": created
        }))
        .unwrap();
        v.stale = false;
        v
    }

    fn query(limit: usize, after: Option<Key>) -> VmQuery {
        VmQuery {
            sort: "name".into(),
            field: SortField::Name,
            filters: Vec::new(),
            node: None,
            page: PageRequest {
                limit,
                after,
                descending: false,
            },
        }
    }

    /// Pages of the merge of three sorted node lists, as nodes would
    /// answer them (each its part after the cursor).
    fn walk(nodes: &[Vec<Vm>], limit: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let q = query(limit, after.clone());
            let parts = nodes
                .iter()
                .map(|vms| {
                    let p = crate::page::paginate(vms.clone(), |v| key(q.field, v), &q.page);
                    Part {
                        more: p.next.is_some(),
                        total: p.total,
                        vms: p.items,
                    }
                })
                .collect();
            let page = merge(parts, &q);
            assert_eq!(page.total, nodes.iter().map(Vec::len).sum::<usize>());
            seen.extend(page.items.iter().map(|v| v.name.clone()));
            match page.next {
                Some(k) => after = Some(k),
                None => return seen,
            }
        }
    }

    #[test]
    fn pages_of_a_merge_cover_every_vm_once_in_order() {
        let mk = |node: &str, names: &[&str]| {
            let mut v: Vec<Vm> = names.iter().map(|n| vm(n, "t", node)).collect();
            v.sort_by_key(|v| key(SortField::Name, v));
            v
        };
        let nodes = vec![
            mk("n1", &["a", "d", "g", "j"]),
            mk("n2", &["b", "e", "h"]),
            mk("n3", &["c", "f", "i", "k", "l"]),
        ];
        for limit in [1, 2, 3, 5, 50] {
            assert_eq!(
                walk(&nodes, limit),
                ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"],
                "limit {limit}"
            );
        }
    }

    #[test]
    fn cached_lists_are_filtered_like_a_node_would() {
        let v = vm("a", "t", "n1");
        assert!(passes(&v, &[("status".into(), "stopped".into())]));
        assert!(!passes(&v, &[("status".into(), "running".into())]));
        assert!(passes(&v, &[("tag".into(), "web".into())]));
        assert!(!passes(&v, &[("name".into(), "b".into())]));
    }
}
