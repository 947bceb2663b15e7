//! The serial console hub: one connection to a VM's console shared by any
//! number of clients.
//!
//! QEMU's socket chardev serves one client at a time, so each VM with at
//! least one console client has one hub: one connection to `console.sock`,
//! held while a client is attached and dropped when the last one leaves
//! (so other users of the socket get it back), whose output goes to every
//! client and whose input comes from all of them. The hub always reads
//! the socket at once: a client that does not keep up is dropped with a
//! reason, never waited for, so it cannot stall the guest or the others.
//! Nothing here knows HTTP.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::engine::error::{EngineError, Result};
use crate::sync::lock;

/// Output a client may have queued and not yet taken before it is dropped.
pub const CLIENT_QUEUE_BYTES: usize = 1 << 20;
/// Input lines (frames) from all clients waiting for the guest.
const INPUT_QUEUE: usize = 256;

/// The hubs of the VMs that have console clients now.
#[derive(Default)]
pub struct Consoles {
    hubs: Mutex<HashMap<Uuid, Arc<Hub>>>,
}

/// One VM's serial console connection and its clients.
struct Hub {
    vm: Uuid,
    state: Mutex<HubState>,
    input: mpsc::Sender<Bytes>,
    /// Ends the connection when the last client leaves.
    stop: tokio::sync::Notify,
}

struct HubState {
    history: VecDeque<u8>,
    limit: usize,
    clients: HashMap<u64, Client>,
    next: u64,
}

struct Client {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    reason: Arc<Mutex<Option<String>>>,
}

/// A client attached to a VM's serial console: the recent output (up to
/// `console_history_bytes`), then everything the guest prints; what is
/// sent on `input` goes to the guest. Dropping it detaches.
pub struct ConsoleSession {
    pub history: Bytes,
    pub input: mpsc::Sender<Bytes>,
    output: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    reason: Arc<Mutex<Option<String>>>,
    hub: Arc<Hub>,
    id: u64,
    consoles: Arc<Consoles>,
}

impl ConsoleSession {
    /// The next output of the guest, with whatever else is already queued
    /// behind it (up to `max` bytes in all); None when the session ended
    /// (see [`ConsoleSession::end_reason`]).
    pub async fn recv(&mut self, max: usize) -> Option<Bytes> {
        let first = self.output.recv().await?;
        let mut taken = first.len();
        if taken >= max {
            self.queued.fetch_sub(taken, Ordering::AcqRel);
            return Some(first);
        }
        let mut buf = first.to_vec();
        while buf.len() < max {
            match self.output.try_recv() {
                Ok(more) => {
                    taken += more.len();
                    buf.extend_from_slice(&more);
                }
                Err(_) => break,
            }
        }
        self.queued.fetch_sub(taken, Ordering::AcqRel);
        Some(Bytes::from(buf))
    }

    /// Why the session ended: the client fell behind, or the console
    /// closed (the VM stopped).
    pub fn end_reason(&self) -> String {
        lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "the console closed".to_owned())
    }
}

impl Drop for ConsoleSession {
    fn drop(&mut self) {
        self.consoles.leave(&self.hub, self.id);
    }
}

impl Consoles {
    /// Attaches a client to the hub of VM `vm`, making the hub (and its
    /// connection to `socket`) when it is the first.
    pub(super) async fn attach(
        self: &Arc<Self>,
        vm: Uuid,
        socket: PathBuf,
        log: PathBuf,
        limit: usize,
    ) -> Result<ConsoleSession> {
        loop {
            let hub = self.hub(vm, &socket, &log, limit).await?;
            if let Some(session) = self.join(vm, hub) {
                return Ok(session);
            }
            // The hub's last client left meanwhile: it is gone, make another.
        }
    }

    /// The VM's hub, made (with its connection to `socket`) when there is
    /// none.
    async fn hub(
        self: &Arc<Self>,
        vm: Uuid,
        socket: &std::path::Path,
        log: &std::path::Path,
        limit: usize,
    ) -> Result<Arc<Hub>> {
        if let Some(hub) = lock(&self.hubs).get(&vm).cloned() {
            return Ok(hub);
        }
        // The output of the time nobody was attached is in the log (exact
        // while no client is connected): its tail seeds the history. What
        // the guest prints between this read and the connection is in the
        // log only.
        let history = tail(log, limit).await;
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| EngineError::internal("connecting to the VM's serial console", e))?;
        let (hub, rx) = {
            let mut hubs = lock(&self.hubs);
            if let Some(hub) = hubs.get(&vm) {
                // Another client made one meanwhile: use it, and let this
                // connection go.
                return Ok(hub.clone());
            }
            let (input, rx) = mpsc::channel(INPUT_QUEUE);
            let hub = Arc::new(Hub {
                vm,
                state: Mutex::new(HubState {
                    history: history.into(),
                    limit,
                    clients: HashMap::new(),
                    next: 0,
                }),
                input,
                stop: tokio::sync::Notify::new(),
            });
            hubs.insert(vm, hub.clone());
            (hub, rx)
        };
        tokio::spawn(run(self.clone(), hub.clone(), stream, rx));
        Ok(hub)
    }

    /// Adds a client to `hub` if it is still the VM's hub. Under the
    /// registry's lock, so a hub whose last client is leaving is either
    /// still there for this one or already gone.
    fn join(self: &Arc<Self>, vm: Uuid, hub: Arc<Hub>) -> Option<ConsoleSession> {
        let hubs = lock(&self.hubs);
        if !hubs.get(&vm).is_some_and(|h| Arc::ptr_eq(h, &hub)) {
            return None;
        }
        let (tx, output) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let reason = Arc::new(Mutex::new(None));
        let mut st = lock(&hub.state);
        let id = st.next;
        st.next += 1;
        let history = Bytes::from(st.history.iter().copied().collect::<Vec<u8>>());
        st.clients.insert(
            id,
            Client {
                tx,
                queued: queued.clone(),
                reason: reason.clone(),
            },
        );
        drop(st);
        drop(hubs);
        Some(ConsoleSession {
            history,
            input: hub.input.clone(),
            output,
            queued,
            reason,
            hub,
            id,
            consoles: self.clone(),
        })
    }

    /// A client leaves; the last one ends the hub's connection.
    fn leave(&self, hub: &Arc<Hub>, id: u64) {
        let mut hubs = lock(&self.hubs);
        let mut st = lock(&hub.state);
        st.clients.remove(&id);
        if st.clients.is_empty() && hubs.get(&hub.vm).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&hub.vm);
            hub.stop.notify_one();
        }
    }

    /// Forgets a hub whose connection ended, telling its clients why.
    fn ended(&self, hub: &Arc<Hub>, why: &str) {
        let mut hubs = lock(&self.hubs);
        if hubs.get(&hub.vm).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&hub.vm);
        }
        let mut st = lock(&hub.state);
        for (_, c) in st.clients.drain() {
            lock(&c.reason).get_or_insert_with(|| why.to_owned());
        }
    }

    /// Number of VMs with a console hub now.
    pub fn active(&self) -> usize {
        lock(&self.hubs).len()
    }
}

/// The hub's connection: output to every client, input from all of them,
/// until the socket closes or the last client leaves.
async fn run(
    consoles: Arc<Consoles>,
    hub: Arc<Hub>,
    stream: UnixStream,
    mut input: mpsc::Receiver<Bytes>,
) {
    let (mut rd, mut wr) = stream.into_split();
    // Input is written apart from the reading, so a guest slow to take it
    // never holds up its output.
    let writer = tokio::spawn(async move {
        while let Some(line) = input.recv().await {
            if wr.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    let why = loop {
        tokio::select! {
            _ = hub.stop.notified() => break "detached",
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break "the console closed: the VM stopped",
                Ok(n) => broadcast(&hub, Bytes::copy_from_slice(&buf[..n])),
            },
        }
    };
    writer.abort();
    consoles.ended(&hub, why);
}

/// Appends a chunk of output to the history and queues it for every client;
/// a client with too much queued is dropped (its session ends with a reason).
fn broadcast(hub: &Hub, chunk: Bytes) {
    let mut st = lock(&hub.state);
    let st = &mut *st;
    st.history.extend(chunk.iter().copied());
    let excess = st.history.len().saturating_sub(st.limit);
    st.history.drain(..excess);
    st.clients.retain(|_, c| {
        let queued = c.queued.fetch_add(chunk.len(), Ordering::AcqRel) + chunk.len();
        if queued > CLIENT_QUEUE_BYTES {
            *lock(&c.reason) = Some(format!(
                "client too slow: over {CLIENT_QUEUE_BYTES} bytes of console output not taken"
            ));
            return false;
        }
        c.tx.send(chunk.clone()).is_ok()
    });
}

/// The last `limit` bytes of a file (empty when it cannot be read).
async fn tail(path: &std::path::Path, limit: usize) -> Vec<u8> {
    use tokio::io::AsyncSeekExt;
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(limit as u64);
    if f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity((len - start) as usize);
    let _ = f.take(limit as u64).read_to_end(&mut out).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake console socket: accepts one connection, sends what it is
    /// given, and hands back what it receives.
    async fn fake_console(
        dir: &std::path::Path,
    ) -> (
        PathBuf,
        mpsc::UnboundedSender<Bytes>,
        mpsc::UnboundedReceiver<Bytes>,
    ) {
        let path = dir.join("console.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 || in_tx.send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
            });
            while let Some(b) = out_rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        (path, out_tx, in_rx)
    }

    #[tokio::test]
    async fn clients_share_one_connection_with_history_and_input() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"0123456789boot").unwrap();
        let (sock, guest_out, mut guest_in) = fake_console(dir.path()).await;
        let consoles = Arc::new(Consoles::default());
        let mut a = consoles
            .attach(Uuid::nil(), sock.clone(), log.clone(), 8)
            .await
            .unwrap();
        assert_eq!(&a.history[..], b"6789boot");
        guest_out.send(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(&a.recv(1024).await.unwrap()[..], b"hello");
        let mut b = consoles
            .attach(Uuid::nil(), sock.clone(), log.clone(), 8)
            .await
            .unwrap();
        assert_eq!(&b.history[..], b"oothello");
        assert_eq!(consoles.active(), 1);
        guest_out.send(Bytes::from_static(b"!")).unwrap();
        assert_eq!(&a.recv(1024).await.unwrap()[..], b"!");
        assert_eq!(&b.recv(1024).await.unwrap()[..], b"!");
        a.input.send(Bytes::from_static(b"1 ls\n")).await.unwrap();
        b.input.send(Bytes::from_static(b"2 ls\n")).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 10 {
            got.extend_from_slice(&guest_in.recv().await.unwrap());
        }
        assert_eq!(&got[..], b"1 ls\n2 ls\n");
        drop(a);
        assert_eq!(consoles.active(), 1);
        drop(b);
        assert_eq!(consoles.active(), 0);
        // The connection is let go: the fake console sees it close.
        assert!(guest_in.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_dropped_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (sock, guest_out, _guest_in) = fake_console(dir.path()).await;
        let consoles = Arc::new(Consoles::default());
        let mut slow = consoles
            .attach(Uuid::nil(), sock.clone(), log.clone(), 1024)
            .await
            .unwrap();
        let mut fast = consoles.attach(Uuid::nil(), sock, log, 1024).await.unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let rounds = CLIENT_QUEUE_BYTES / chunk.len() + 2;
        for _ in 0..rounds {
            guest_out.send(chunk.clone()).unwrap();
        }
        let mut seen = 0;
        while seen < rounds * chunk.len() {
            seen += fast.recv(usize::MAX).await.unwrap().len();
        }
        let mut drained = 0;
        while let Some(b) = slow.recv(usize::MAX).await {
            drained += b.len();
        }
        assert!(drained <= CLIENT_QUEUE_BYTES, "{drained}");
        assert!(
            slow.end_reason().contains("too slow"),
            "{}",
            slow.end_reason()
        );
    }

    #[tokio::test]
    async fn a_closed_console_ends_every_session() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (sock, guest_out, _guest_in) = fake_console(dir.path()).await;
        let consoles = Arc::new(Consoles::default());
        let mut a = consoles.attach(Uuid::nil(), sock, log, 1024).await.unwrap();
        drop(guest_out);
        assert!(a.recv(1024).await.is_none());
        assert!(a.end_reason().contains("VM stopped"), "{}", a.end_reason());
        assert_eq!(consoles.active(), 0);
    }
}
