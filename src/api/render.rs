//! Rendered VMs, reused: a list answers with the JSON of each VM as it was
//! last rendered, as long as the VM has not changed since (its revision),
//! so a page costs copies rather than a rendering of every VM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::engine::vm::{VmEngine, VmEntry};
use crate::sync::lock;

/// The JSON of each VM at a revision.
#[derive(Default)]
pub struct VmJson {
    cache: Mutex<HashMap<Uuid, (u64, Rendered)>>,
}

/// One VM's JSON, shared by the cache and the answers that carry it.
#[derive(Clone)]
pub struct Rendered(Arc<RawValue>);

impl Serialize for Rendered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A page of VMs, the shape of `model::VmList` with each VM pre-rendered.
#[derive(Serialize)]
pub struct RenderedVmList {
    pub vms: Vec<Rendered>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

impl VmJson {
    /// The JSON of each entry, rendered again only where it changed.
    pub fn render(&self, vms: &VmEngine, entries: &[Arc<VmEntry>]) -> Vec<Rendered> {
        let mut out = Vec::with_capacity(entries.len());
        let mut fresh = Vec::new();
        {
            let cache = lock(&self.cache);
            for e in entries {
                // The revision is read before rendering: a change meanwhile
                // leaves a newer revision that renders again next time.
                let rev = e.rev();
                match cache.get(&e.id) {
                    Some((r, json)) if *r == rev => out.push(Some(json.clone())),
                    _ => {
                        out.push(None);
                        fresh.push((out.len() - 1, e, rev));
                    }
                }
            }
        }
        if fresh.is_empty() {
            return out.into_iter().flatten().collect();
        }
        let rendered: Vec<(usize, Uuid, u64, Rendered)> = fresh
            .into_iter()
            .filter_map(|(i, e, rev)| {
                let json = serde_json::value::to_raw_value(&vms.to_api(e)).ok()?;
                Some((i, e.id, rev, Rendered(Arc::from(json))))
            })
            .collect();
        let mut cache = lock(&self.cache);
        for (i, id, rev, json) in rendered {
            out[i] = Some(json.clone());
            cache.insert(id, (rev, json));
        }
        // Forget VMs that are gone once the cache outgrows the registry.
        if cache.len() > 2 * vms.count() + 64 {
            cache.retain(|id, _| vms.find(&id.to_string()).is_ok());
        }
        out.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_list_has_the_shape_of_the_model() {
        let vm = Rendered(Arc::from(
            serde_json::value::to_raw_value(&serde_json::json!({"id": 1})).unwrap(),
        ));
        let raw = RenderedVmList {
            vms: vec![vm],
            next_page_token: None,
            total_count: 1,
        };
        assert_eq!(
            serde_json::to_string(&raw).unwrap(),
            r#"{"vms":[{"id":1}],"total_count":1}"#
        );
    }
}
