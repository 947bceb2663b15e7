//! The nodes an aggregator fronts and what it last saw of each: one poller
//! per node asks for its health, capacity and VMs at every interval, each
//! poll bounded by a deadline. A node whose poll fails is `unreachable` at
//! once (so within two intervals of its last answer) and keeps its last VM
//! list, shown `stale`; the next poll that answers brings it back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::client::{Client, ListQuery};
use crate::model::{Node, NodeResources, NodeStatus, Vm};
use crate::sync::{lock, read, write};

use super::config::NodeEntry;

/// How a node came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The aggregator's configuration file.
    Static,
    /// Registered in etcd (with a lease).
    Etcd,
}

/// What the last polls said.
#[derive(Debug, Default)]
struct Seen {
    /// The last poll answered.
    online: bool,
    /// When a poll last answered (RFC 3339).
    last_seen: Option<String>,
    last_ok: Option<Instant>,
    version: String,
    accel: String,
    error: Option<String>,
    resources: Option<NodeResources>,
    /// The node's VMs as last listed.
    vms: Vec<Vm>,
    /// How long the last successful poll took.
    poll_time: Duration,
}

/// One node: how to reach it and what was seen of it.
pub struct NodeHandle {
    pub name: String,
    pub url: String,
    pub fingerprint: Option<String>,
    pub token: Option<String>,
    pub source: Source,
    pub client: Client,
    seen: Mutex<Seen>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// True while the node does not answer: calls in flight give up.
    down: tokio::sync::watch::Sender<bool>,
    /// Other tasks bound to the node (its event relay).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl NodeHandle {
    pub fn new(
        entry: &NodeEntry,
        source: Source,
    ) -> Result<NodeHandle, crate::client::ClientError> {
        let mut client = Client::from_url(&entry.url, entry.fingerprint.as_deref())?
            .with_connect_timeout(Duration::from_secs(2));
        if let Some(t) = &entry.token {
            client = client.with_token(t.clone());
        }
        Ok(NodeHandle {
            name: entry.name.clone(),
            url: entry.url.clone(),
            fingerprint: entry.fingerprint.clone(),
            token: entry.token.clone(),
            source,
            client,
            seen: Mutex::new(Seen::default()),
            poller: Mutex::new(None),
            down: tokio::sync::watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        })
    }

    pub fn online(&self) -> bool {
        lock(&self.seen).online
    }

    /// The node as `/api/v1/nodes` shows it.
    pub fn view(&self) -> Node {
        let s = lock(&self.seen);
        Node {
            name: self.name.clone(),
            status: if s.online {
                NodeStatus::Online
            } else {
                NodeStatus::Unreachable
            },
            last_seen: s.last_seen.clone().unwrap_or_default(),
            url: Some(self.url.clone()),
            version: s.version.clone(),
            accel: s.accel.clone(),
            vms: s.vms.len(),
            error: s.error.clone(),
            resources: s.resources.clone(),
        }
    }

    pub fn resources(&self) -> Option<NodeResources> {
        lock(&self.seen).resources.clone()
    }

    /// The VMs as last listed, `stale` when the node no longer answers.
    pub fn cached_vms(&self) -> Vec<Vm> {
        let s = lock(&self.seen);
        let stale = !s.online;
        s.vms
            .iter()
            .cloned()
            .map(|mut v| {
                v.stale = stale;
                v
            })
            .collect()
    }

    /// Whether the last list had this VM (by id or name).
    pub fn has_vm(&self, id_or_name: &str) -> bool {
        let id = Uuid::parse_str(id_or_name).ok();
        lock(&self.seen)
            .vms
            .iter()
            .any(|v| Some(v.id) == id || v.name == id_or_name)
    }

    /// The id of the VM named `name` in the last list.
    pub fn vm_named(&self, name: &str) -> Option<Uuid> {
        lock(&self.seen)
            .vms
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.id)
    }

    /// The name of the VM `id_or_name` in the last list.
    pub fn vm_name(&self, id_or_name: &str) -> Option<String> {
        let id = Uuid::parse_str(id_or_name).ok();
        lock(&self.seen)
            .vms
            .iter()
            .find(|v| Some(v.id) == id || v.name == id_or_name)
            .map(|v| v.name.clone())
    }

    /// Records a VM this aggregator just made or changed there, so the view
    /// has it before the next poll.
    pub fn note_vm(&self, vm: Vm) {
        let mut s = lock(&self.seen);
        match s.vms.iter_mut().find(|v| v.id == vm.id) {
            Some(v) => *v = vm,
            None => s.vms.push(vm),
        }
    }

    /// Takes a VM out of the view (deleted or moved away through here).
    pub fn forget_vm(&self, id_or_name: &str) {
        let id = Uuid::parse_str(id_or_name).ok();
        lock(&self.seen)
            .vms
            .retain(|v| Some(v.id) != id && v.name != id_or_name);
    }

    /// Reads the node's capacity again now (after a write through the
    /// aggregator changed it), so the next placement sees it.
    pub async fn refresh_resources(&self, deadline: Duration) {
        if let Ok(Ok(r)) = tokio::time::timeout(deadline, self.client.node_resources()).await {
            lock(&self.seen).resources = Some(r);
        }
    }

    /// Polls once: health, capacity and the whole VM list, within `deadline`.
    pub async fn poll(&self, deadline: Duration) {
        let started = Instant::now();
        let answer = tokio::time::timeout(deadline, async {
            let (health, resources, vms) = tokio::join!(
                self.client.health(),
                self.client.node_resources(),
                all_vms(&self.client)
            );
            Ok::<_, crate::client::ClientError>((health?, resources?, vms?))
        })
        .await;
        let mut s = lock(&self.seen);
        match answer {
            Ok(Ok((health, resources, vms))) => {
                if !s.online && s.last_ok.is_some() {
                    tracing::info!(node = %self.name, "node answers again");
                }
                s.online = true;
                s.last_ok = Some(Instant::now());
                s.last_seen = Some(crate::clock::now());
                s.version = health.version;
                s.accel = health.accel;
                s.error = None;
                s.resources = Some(resources);
                s.vms = vms;
                s.poll_time = started.elapsed();
                self.down.send_replace(false);
            }
            Ok(Err(e)) => self.mark_down(&mut s, e.to_string()),
            Err(_) => self.mark_down(&mut s, format!("no answer within {deadline:?}")),
        }
    }

    fn mark_down(&self, s: &mut Seen, error: String) {
        if s.online {
            tracing::warn!(node = %self.name, %error, "node unreachable");
        }
        s.online = false;
        s.error = Some(error);
        // Calls waiting on it give up; kept-alive connections to it are
        // not trusted again.
        self.down.send_replace(true);
        self.client.drop_idle();
    }

    /// Resolves once the node is marked unreachable.
    pub async fn gone(&self) {
        let mut down = self.down.subscribe();
        let _ = down.wait_for(|d| *d).await;
    }

    /// Runs a call to the node, given up as soon as the node is marked
    /// unreachable (a kept-alive connection to a dead host would otherwise
    /// wait for TCP to give up, many minutes).
    pub async fn guard<T>(
        &self,
        call: impl std::future::Future<Output = crate::client::Result<T>>,
    ) -> crate::client::Result<T> {
        let mut down = self.down.subscribe();
        let name = self.name.clone();
        tokio::select! {
            r = call => r,
            _ = down.wait_for(|d| *d) => Err(crate::client::ClientError::Transport(format!(
                "node {name} stopped answering"
            ))),
        }
    }

    /// A body streamed from the node, cut with an error as soon as the node
    /// is marked unreachable (a download from a node that died midway would
    /// otherwise wait on TCP too).
    pub fn guard_body<B>(&self, body: B) -> axum::body::Body
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        use futures::StreamExt;
        let down = self.down.subscribe();
        let name = self.name.clone();
        let frames = http_body_util::BodyStream::new(body);
        let stream = futures::stream::unfold(Some((frames, down)), move |state| {
            let name = name.clone();
            async move {
                let (mut frames, mut down) = state?;
                // None: the node went down first.
                let next = tokio::select! {
                    f = frames.next() => Some(f),
                    _ = down.wait_for(|d| *d) => None,
                };
                match next {
                    Some(f) => {
                        let f = f?.map_err(|e| std::io::Error::other(e.to_string()));
                        Some((f, Some((frames, down))))
                    }
                    None => Some((
                        Err(std::io::Error::other(format!(
                            "node {name} stopped answering"
                        ))),
                        None,
                    )),
                }
            }
        });
        axum::body::Body::new(http_body_util::StreamBody::new(stream))
    }
}

/// Every VM of a node, page after page.
pub async fn all_vms(client: &Client) -> crate::client::Result<Vec<Vm>> {
    let mut out = Vec::new();
    let mut q = ListQuery {
        limit: Some(200),
        ..ListQuery::default()
    };
    loop {
        let page = client.vms(&q).await?;
        out.extend(page.vms);
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => return Ok(out),
        }
    }
}

/// The nodes, by name.
pub struct Registry {
    nodes: RwLock<BTreeMap<String, Arc<NodeHandle>>>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Registry {
    pub fn new(interval: Duration, timeout: Duration) -> Registry {
        Registry {
            nodes: RwLock::new(BTreeMap::new()),
            interval,
            timeout,
        }
    }

    /// Adds a node (or replaces one of that name) and starts polling it;
    /// the first poll is done before this returns.
    pub async fn add(self: &Arc<Self>, node: NodeHandle) -> Arc<NodeHandle> {
        let node = Arc::new(node);
        node.poll(self.timeout).await;
        let me = Arc::downgrade(self);
        let n = node.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(n.clone_interval(&me));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(reg) = me.upgrade() else { return };
                let timeout = reg.timeout;
                drop(reg);
                n.poll(timeout).await;
            }
        });
        *lock(&node.poller) = Some(task);
        if let Some(old) = write(&self.nodes).insert(node.name.clone(), node.clone()) {
            old.stop();
        }
        node
    }

    /// Forgets a node (it left the cluster).
    pub fn remove(&self, name: &str) -> Option<Arc<NodeHandle>> {
        let n = write(&self.nodes).remove(name)?;
        n.stop();
        Some(n)
    }

    pub fn get(&self, name: &str) -> Option<Arc<NodeHandle>> {
        read(&self.nodes).get(name).cloned()
    }

    /// Every node, by name.
    pub fn all(&self) -> Vec<Arc<NodeHandle>> {
        read(&self.nodes).values().cloned().collect()
    }

    pub fn online(&self) -> Vec<Arc<NodeHandle>> {
        self.all().into_iter().filter(|n| n.online()).collect()
    }

    /// The node whose last list has this VM (by id or name).
    pub fn owner_of(&self, id_or_name: &str) -> Vec<Arc<NodeHandle>> {
        self.all()
            .into_iter()
            .filter(|n| n.has_vm(id_or_name))
            .collect()
    }
}

impl NodeHandle {
    fn clone_interval(&self, reg: &std::sync::Weak<Registry>) -> Duration {
        reg.upgrade().map_or(Duration::from_secs(2), |r| r.interval)
    }

    fn stop(&self) {
        if let Some(t) = lock(&self.poller).take() {
            t.abort();
        }
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Ties a task to the node: it ends when the node is removed.
    pub fn attach(&self, task: tokio::task::JoinHandle<()>) {
        lock(&self.tasks).push(task);
    }

    /// Counts a VM just placed here against the free figures until the
    /// next poll says what the node holds.
    pub fn charge(&self, memory_mib: u64, vcpus: u64) {
        if let Some(r) = lock(&self.seen).resources.as_mut() {
            r.available.memory_mib = r.available.memory_mib.saturating_sub(memory_mib);
            r.available.vcpus = r.available.vcpus.saturating_sub(vcpus);
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
