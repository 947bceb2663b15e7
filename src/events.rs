//! The broadcast of lifecycle and job events behind `GET /api/v1/events`.
//! A bounded ring: a subscriber that falls behind loses its place and is
//! told so (the API then closes its stream), the agent never waits for it.
//! The last [`CAPACITY`] events are also kept in a history, so a client that
//! reconnects with the last `seq` it saw gets what it missed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::model::{EventMessage, Target};

/// Events kept for subscribers that are momentarily behind.
pub const CAPACITY: usize = 1024;

/// The type of the message a resumed stream gets first when events after
/// its resume point are no longer kept.
pub const LOST: &str = "events.lost";

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<EventMessage>,
    inner: Arc<Mutex<History>>,
    node: Option<String>,
}

/// The next sequence number and the last events, under one lock so the
/// history and the broadcast see events in `seq` order.
struct History {
    next: u64,
    capacity: usize,
    ring: VecDeque<EventMessage>,
}

/// What a stream resuming after some `seq` starts with.
pub struct Replay {
    /// Kept events after the resume point, oldest first.
    pub events: Vec<EventMessage>,
    /// Events after the resume point were dropped from the history (or sent
    /// by an earlier run of the agent): the client must re-read the state.
    pub lost: bool,
    /// The newest `seq` issued when the history was read: live events up
    /// to it are in `events` (or were before `since`).
    pub upto: u64,
}

/// The first `seq` of a run: the time in microseconds since the epoch, so it
/// is above every `seq` an earlier run issued (one event per microsecond
/// sustained would be needed to overtake the clock).
fn first_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        .max(1)
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(CAPACITY)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> EventBus {
        EventBus::with_start(capacity, first_seq(), None)
    }

    /// The bus of an agent: its events carry `node`.
    pub fn for_node(node: String) -> EventBus {
        EventBus::with_start(CAPACITY, first_seq(), Some(node))
    }

    fn with_start(capacity: usize, start: u64, node: Option<String>) -> EventBus {
        let (tx, _) = broadcast::channel(capacity);
        EventBus {
            tx,
            inner: Arc::new(Mutex::new(History {
                next: start,
                capacity,
                ring: VecDeque::with_capacity(capacity),
            })),
            node,
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventMessage> {
        self.tx.subscribe()
    }

    /// The `seq` the next event will carry.
    pub fn next_seq(&self) -> u64 {
        self.history().next
    }

    /// The kept events with `seq > since`, and whether some after `since`
    /// are no longer kept. Take it after [`subscribe`](Self::subscribe):
    /// the live stream then starts at or before the end of the replay, and
    /// the caller skips what it already sent.
    pub fn replay(&self, since: u64) -> Replay {
        let h = self.history();
        let first_kept = h.ring.front().map_or(h.next, |e| e.seq);
        Replay {
            events: h.ring.iter().filter(|e| e.seq > since).cloned().collect(),
            lost: since.saturating_add(1) < first_kept,
            upto: h.next - 1,
        }
    }

    /// The message telling a resumed stream that events were lost.
    pub fn lost_message(&self, since: u64) -> EventMessage {
        EventMessage {
            kind: LOST.to_owned(),
            resource: Target::Events,
            id: Target::Events.id(),
            name: None,
            status: Some(format!(
                "events after seq {since} are no longer kept: re-read the state"
            )),
            progress_percent: None,
            at: crate::clock::now(),
            seq: since,
            node: self.node.clone(),
        }
    }

    /// Publishes an event (a no-op when nobody listens).
    pub fn emit(&self, kind: &str, resource: Target, name: Option<String>, status: Option<String>) {
        self.emit_progress(kind, resource, name, status, None);
    }

    /// Publishes an event another bus issued (a node's, on an aggregator):
    /// it keeps its `node` and everything else but takes this bus's `seq`,
    /// so one stream resumes across all the buses it merges.
    pub fn relay(&self, mut ev: EventMessage) {
        let mut h = self.history();
        ev.seq = h.next;
        h.next += 1;
        if h.ring.len() == h.capacity {
            h.ring.pop_front();
        }
        h.ring.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    pub fn emit_progress(
        &self,
        kind: &str,
        resource: Target,
        name: Option<String>,
        status: Option<String>,
        progress_percent: Option<u8>,
    ) {
        let mut h = self.history();
        let ev = EventMessage {
            kind: kind.to_owned(),
            resource,
            id: resource.id(),
            name,
            status,
            progress_percent,
            at: crate::clock::now(),
            seq: h.next,
            node: self.node.clone(),
        };
        h.next += 1;
        if h.ring.len() == h.capacity {
            h.ring.pop_front();
        }
        h.ring.push_back(ev.clone());
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
    fn the_history_is_bounded_and_replays_after_a_seq() {
        let bus = EventBus::new(4);
        let id = Uuid::new_v4();
        let first = bus.next_seq();
        let r = bus.replay(first - 1);
        assert!(r.events.is_empty() && !r.lost, "nothing sent, nothing lost");
        for _ in 0..3 {
            bus.emit("vm.updated", Target::Vm(id), None, None);
        }
        let r = bus.replay(first);
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [first + 1, first + 2]);
        assert!(!r.lost);
        assert!(bus.replay(first + 2).events.is_empty());
        assert!(bus.replay(first + 100).events.is_empty());
        for _ in 0..7 {
            bus.emit("vm.updated", Target::Vm(id), None, None);
        }
        // 10 sent, the last 4 kept: first+6 ..= first+9.
        let r = bus.replay(0);
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [first + 6, first + 7, first + 8, first + 9]);
        assert!(r.lost);
        assert!(!bus.replay(first + 5).lost, "first+6 on are all kept");
        assert!(bus.replay(first + 4).lost, "first+5 is gone");
        let lost = bus.lost_message(first + 4);
        assert_eq!(lost.kind, LOST);
        assert_eq!(
            serde_json::to_value(&lost).unwrap()["resource"],
            "/api/v1/events"
        );
    }

    #[test]
    fn seq_starts_above_an_earlier_run_and_events_carry_the_node() {
        let before = EventBus::for_node("n1".into());
        let id = Uuid::new_v4();
        let mut last = 0;
        for _ in 0..1000 {
            before.emit("vm.updated", Target::Vm(id), None, None);
        }
        for e in before.replay(0).events {
            assert!(e.seq > last);
            assert_eq!(e.node.as_deref(), Some("n1"));
            last = e.seq;
        }
        // The agent restarts.
        let after = EventBus::for_node("n1".into());
        after.emit("vm.updated", Target::Vm(id), None, None);
        let first = after.replay(0).events[0].seq;
        assert!(first > last, "{first} after a run that ended at {last}");
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
