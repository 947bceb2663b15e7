//! The broadcast of lifecycle and job events behind `GET /api/v1/events`.
//! A bounded ring: a subscriber that falls behind loses its place and is
//! told so (the API then closes its stream), the agent never waits for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::{EventMessage, Target};

/// Events kept for subscribers that are momentarily behind.
pub const CAPACITY: usize = 1024;

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<EventMessage>,
    seq: Arc<AtomicU64>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(CAPACITY)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity);
        EventBus {
            tx,
            seq: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventMessage> {
        self.tx.subscribe()
    }

    /// Publishes an event (a no-op when nobody listens).
    pub fn emit(&self, kind: &str, resource: Target, name: Option<String>, status: Option<String>) {
        self.emit_progress(kind, resource, name, status, None);
    }

    pub fn emit_progress(
        &self,
        kind: &str,
        resource: Target,
        name: Option<String>,
        status: Option<String>,
        progress_percent: Option<u8>,
    ) {
        let ev = EventMessage {
            kind: kind.to_owned(),
            resource,
            id: resource.id(),
            name,
            status,
            progress_percent,
            at: crate::clock::now(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            node: None,
        };
        let _ = self.tx.send(ev);
    }
}

/// Whether an event passes a subscriber's filters: `types` are prefixes
/// (`vm.` matches every VM event), `resource` an id or a name.
pub fn matches(ev: &EventMessage, types: &[String], resource: Option<&str>) -> bool {
    let type_ok = types.is_empty() || types.iter().any(|t| ev.kind.starts_with(t.as_str()));
    let res_ok = resource.is_none_or(|r| {
        ev.id.to_string() == r || ev.name.as_deref() == Some(r) || ev.resource.to_string() == r
    });
    type_ok && res_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[tokio::test]
    async fn subscribers_get_events_in_order_and_a_slow_one_lags() {
        let bus = EventBus::new(4);
        let mut rx = bus.subscribe();
        let id = Uuid::new_v4();
        for kind in ["vm.starting", "vm.started"] {
            bus.emit(kind, Target::Vm(id), Some("a".into()), None);
        }
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!(
            (a.kind.as_str(), b.kind.as_str()),
            ("vm.starting", "vm.started")
        );
        assert!(b.seq > a.seq);
        for _ in 0..10 {
            bus.emit("vm.updated", Target::Vm(id), None, None);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[test]
    fn filters() {
        let id = Uuid::new_v4();
        let ev = EventMessage {
            kind: "vm.started".into(),
            resource: Target::Vm(id),
            id,
            name: Some("web".into()),
            status: None,
            progress_percent: None,
            at: String::new(),
            seq: 1,
            node: None,
        };
        assert!(matches(&ev, &[], None));
        assert!(matches(&ev, &["vm.".into()], Some("web")));
        assert!(matches(
            &ev,
            &["job.".into(), "vm.started".into()],
            Some(&id.to_string())
        ));
        assert!(!matches(&ev, &["job.".into()], None));
        assert!(!matches(&ev, &[], Some("other")));
    }
}
