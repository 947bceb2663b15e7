//! What the agent does, independent of HTTP.
//!
//! Request flow for a VM operation:
//! 1. the API resolves `{id}` with [`Agent::find`] (UUID or name);
//! 2. everything that can be refused at once is checked: input, then
//!    [`Agent::claim`] takes the VM's operation slot (a second operation gets
//!    409 naming the running job), then [`vm::plan`] against the status;
//! 3. a job is recorded and the work runs in its own task ([`Submitted`]), so
//!    a client that hangs up never leaves a VM half-done; the work persists
//!    each status change before going on and stops at safe points when the
//!    job is cancelled (a [`crate::rollback::Rollback`] undoes what it did);
//! 4. the API awaits the task (synchronous call) or answers 202 with the job
//!    (`Prefer: respond-async`); dropping the [`OpGuard`] frees the slot.
//!
//! Each running VM has one QMP connection and one watcher task that turns
//! QEMU's events and its exit into status changes. List and get calls only
//! read in-memory records and never wait on a monitor.

pub mod bulk;
pub mod containers;
pub mod create;
pub mod docker_objects;
pub mod error;
pub mod resources;
pub mod runtime;
pub mod templates;
pub mod vm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use uuid::Uuid;

pub use error::{EngineError, ErrorKind, Result};
use runtime::Runtime;
use vm::{Action, Plan, VmRecord};

use crate::config::{Accel, Config};
use crate::events::EventBus;
use crate::host::pool::PoolError;
use crate::host::qemu_img::QemuImg;
use crate::jobs::{JobHandle, Jobs, TaskSpec};
use crate::model::{ActionResponse, DeleteResponse, Job, Vm, VmStatus};
use crate::qemu::argv::Accelerator;
use crate::store::Store;

const GIB: u64 = 1 << 30;
/// How long an `Idempotency-Key` is remembered (seconds).
pub const IDEMPOTENCY_TTL: i64 = 24 * 3600;

/// One VM known to the agent.
pub struct VmEntry {
    pub id: Uuid,
    rec: Mutex<VmRecord>,
    /// The operation holding this VM: (job id, job type).
    op: Mutex<Option<(Uuid, String)>>,
    rt: Mutex<Option<Arc<Runtime>>>,
}

pub(crate) use crate::sync::lock;

impl VmEntry {
    fn new(rec: VmRecord) -> Arc<VmEntry> {
        Arc::new(VmEntry {
            id: rec.id,
            rec: Mutex::new(rec),
            op: Mutex::new(None),
            rt: Mutex::new(None),
        })
    }

    pub fn record(&self) -> VmRecord {
        lock(&self.rec).clone()
    }

    pub fn status(&self) -> VmStatus {
        lock(&self.rec).status
    }

    pub(crate) fn runtime(&self) -> Option<Arc<Runtime>> {
        lock(&self.rt).clone()
    }

    fn busy_op(&self) -> Option<(Uuid, String)> {
        lock(&self.op).clone()
    }
}

pub(crate) struct Inner {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub jobs: Jobs,
    pub events: EventBus,
    pub img: QemuImg,
    pub accel: Accelerator,
    pub node: String,
    disk_cache: &'static str,
    /// The io/blkio cgroup hierarchy, where the host has one and the
    /// configuration enforces limits there.
    cgroups: Option<crate::host::cgroup::Cgroups>,
    vms: RwLock<HashMap<Uuid, Arc<VmEntry>>>,
    docker: crate::docker::DockerBackend,
    containers: Mutex<containers::ContainerState>,
}

/// The agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

/// Holds a VM's operation slot; frees it when dropped.
pub struct OpGuard {
    entry: Arc<VmEntry>,
}

/// A job that was started: its record at the start, and the task doing the
/// work (await it for the outcome, or let it run).
pub struct Submitted<T> {
    pub job: Job,
    /// The VM the job acts on, as it was when the job started (for 202s).
    pub vm: Option<Vm>,
    pub result: tokio::task::JoinHandle<Result<T>>,
}

impl<T> Submitted<T> {
    /// Waits for the outcome (a panic of the task is an internal error).
    pub async fn outcome(self) -> Result<T> {
        self.result
            .await
            .unwrap_or_else(|e| Err(EngineError::Internal(format!("job task failed: {e}"))))
    }
}

/// A job's context as the work sees it: progress, log lines, cancellation.
#[derive(Clone)]
pub struct JobCtx {
    pub handle: Arc<JobHandle>,
    pub task: usize,
}

impl JobCtx {
    /// A safe point: stop here if the job was cancelled.
    pub fn check(&self) -> Result<()> {
        if self.handle.is_cancelled() {
            Err(EngineError::Cancelled(format!(
                "job {} was cancelled",
                self.handle.id()
            )))
        } else {
            Ok(())
        }
    }
    pub fn progress(&self, pct: u8) {
        self.handle.task_progress(self.task, pct);
    }
    pub fn log(&self, line: impl Into<String>) {
        self.handle.task_log(self.task, line);
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        *lock(&self.entry.op) = None;
    }
}

/// What `/metrics` shows of one VM.
pub struct VmMetrics {
    pub id: Uuid,
    pub name: String,
    pub status: VmStatus,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub sample: Option<runtime::Sample>,
}

/// Query of `GET /vms`.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub status: Option<VmStatus>,
    pub name: Option<String>,
    pub tag: Option<String>,
    pub template: Option<String>,
    pub node: Option<String>,
    pub limit: usize,
    /// After this (sort key, id) — decoded from the page token by the API.
    pub after: Option<(String, Uuid)>,
    pub sort: SortKey,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    CreatedAt,
    CreatedAtDesc,
    Name,
    NameDesc,
}

impl SortKey {
    pub fn parse(s: &str) -> Option<SortKey> {
        Some(match s {
            "created_at" => SortKey::CreatedAt,
            "-created_at" => SortKey::CreatedAtDesc,
            "name" => SortKey::Name,
            "-name" => SortKey::NameDesc,
            _ => return None,
        })
    }
    fn key(self, v: &VmRecord) -> String {
        match self {
            SortKey::CreatedAt | SortKey::CreatedAtDesc => v.created_at.clone(),
            SortKey::Name | SortKey::NameDesc => v.name.clone(),
        }
    }
    fn descending(self) -> bool {
        matches!(self, SortKey::CreatedAtDesc | SortKey::NameDesc)
    }
}

/// One page of VMs and the cursor of the next.
pub struct Page {
    pub vms: Vec<Vm>,
    pub next: Option<(String, Uuid)>,
    pub total: usize,
}

fn pool_err(e: PoolError) -> EngineError {
    match e {
        PoolError::NotFound { what, given } => {
            let what = if what == "base image" {
                "Base image"
            } else {
                what
            };
            EngineError::NotFound(format!("{what} not found: {given}."))
        }
        other => EngineError::Invalid(other.to_string()),
    }
}

impl Agent {
    /// Opens the state, chooses the accelerator and re-adopts running guests.
    pub async fn open(cfg: Config) -> anyhow::Result<Agent> {
        use anyhow::Context;
        cfg.validate()?;
        for dir in [&cfg.state_dir, &cfg.run_dir, &cfg.image_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::create_dir_all(cfg.state_dir.join("vms"))?;
        std::fs::create_dir_all(cfg.run_dir.join("vms"))?;
        let store = Arc::new(Store::open(&cfg.db_path()).context("opening the state database")?);
        let events = EventBus::default();
        let jobs = Jobs::new(store.clone(), events.clone());
        let accel = match cfg.accel {
            Accel::Kvm => Accelerator::Kvm,
            Accel::Tcg => Accelerator::Tcg,
            Accel::Auto if crate::host::accel::hardware_kvm(Path::new("/")) => Accelerator::Kvm,
            Accel::Auto => Accelerator::Tcg,
        };
        let disk_cache = if crate::host::supports_o_direct(&cfg.state_dir.join("vms")) {
            "none"
        } else {
            tracing::warn!(dir = %cfg.state_dir.display(), "no O_DIRECT here (tmpfs?): disks use cache=writeback");
            "writeback"
        };
        let node = if cfg.node_name.is_empty() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        } else {
            cfg.node_name.clone()
        };
        let img = QemuImg::new(cfg.qemu_img_binary.clone());
        let docker_socket = cfg.docker_socket.clone();
        let cgroups = if cfg.io_throttle.contains(&crate::config::IoLayer::Cgroup) {
            match crate::host::cgroup::Cgroups::detect(&cfg.cgroup_root, &cfg.cgroup_parent) {
                Ok(cg) => {
                    tracing::info!(version = ?cg.version(), "I/O limits enforced in cgroups");
                    Some(cg)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no cgroup I/O enforcement");
                    None
                }
            }
        } else {
            None
        };
        let inner = Arc::new(Inner {
            cfg,
            store,
            jobs,
            events,
            img,
            accel,
            node,
            disk_cache,
            cgroups,
            vms: RwLock::new(HashMap::new()),
            docker: crate::docker::DockerBackend::new(docker_socket),
            containers: Mutex::new(containers::ContainerState::default()),
        });
        let agent = Agent { inner };
        agent.recover().await?;
        agent.prune();
        tokio::spawn(agent.clone().watch_engine());
        let weak = Arc::downgrade(&agent.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                match weak.upgrade() {
                    Some(inner) => Agent { inner }.prune(),
                    None => return,
                }
            }
        });
        Ok(agent)
    }

    /// Forgets finished jobs past their retention and idempotency keys past 24 h.
    fn prune(&self) {
        let cutoff = crate::clock::ago(self.inner.cfg.job_retention_hours * 3600);
        match self.inner.store.prune_jobs(&cutoff) {
            Ok(n) if n > 0 => tracing::info!(jobs = n, "pruned finished jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning jobs"),
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = self.inner.store.prune_idempotency(now - IDEMPOTENCY_TTL) {
            tracing::warn!(error = %e, "pruning idempotency keys");
        }
    }

    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    pub fn jobs_registry(&self) -> &Jobs {
        &self.inner.jobs
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    pub fn accel(&self) -> Accelerator {
        self.inner.accel
    }
    pub fn node(&self) -> &str {
        &self.inner.node
    }
    pub fn vm_count(&self) -> usize {
        self.inner.vms.read().map(|m| m.len()).unwrap_or(0)
    }

    pub(crate) fn vm_state_dir(&self, id: Uuid) -> PathBuf {
        self.inner.cfg.state_dir.join("vms").join(id.to_string())
    }
    pub(crate) fn vm_run_dir(&self, id: Uuid) -> PathBuf {
        self.inner.cfg.run_dir.join("vms").join(id.to_string())
    }

    /// Finds a VM by UUID or name. Neither form: 400; unknown: 404.
    pub fn find(&self, key: &str) -> Result<Arc<VmEntry>> {
        let map = self.inner.vms.read().unwrap_or_else(|p| p.into_inner());
        if let Ok(id) = Uuid::parse_str(key) {
            return map
                .get(&id)
                .cloned()
                .ok_or_else(|| EngineError::NotFound(format!("VM not found: {key}.")));
        }
        if !vm::is_dns_label(key) {
            return Err(EngineError::Invalid(
                "Invalid UUID format: expected a VM id or name.".into(),
            ));
        }
        map.values()
            .find(|e| lock(&e.rec).name == key)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("VM not found: {key}.")))
    }

    fn pid_of(&self, entry: &VmEntry) -> Option<u32> {
        entry.runtime().map(|rt| rt.pid)
    }

    pub fn to_api(&self, entry: &VmEntry) -> Vm {
        lock(&entry.rec).to_api(&self.inner.node, self.pid_of(entry))
    }

    /// Every VM with its latest sample, from memory.
    pub fn vm_metrics(&self) -> Vec<VmMetrics> {
        let entries: Vec<Arc<VmEntry>> = {
            let map = self.inner.vms.read().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        entries
            .iter()
            .map(|e| {
                let (name, status, vcpus, memory_mib) = {
                    let r = lock(&e.rec);
                    (r.name.clone(), r.status, r.vcpus, r.memory)
                };
                VmMetrics {
                    id: e.id,
                    name,
                    status,
                    vcpus,
                    memory_mib,
                    sample: e.runtime().and_then(|rt| lock(&rt.samples).latest.clone()),
                }
            })
            .collect()
    }

    /// Lists VMs with filters and keyset pagination (stable under inserts
    /// and deletes: the cursor is the last (sort key, id) returned).
    pub fn list(&self, q: &ListQuery) -> Page {
        let entries: Vec<Arc<VmEntry>> = {
            let map = self.inner.vms.read().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        let mut rows: Vec<(VmRecord, Option<u32>)> = entries
            .iter()
            .map(|e| (e.record(), self.pid_of(e)))
            .filter(|(r, _)| {
                q.status.is_none_or(|s| r.status == s)
                    && q.name.as_ref().is_none_or(|n| &r.name == n)
                    && q.tag.as_ref().is_none_or(|t| r.tags.contains(t))
                    && q.template
                        .as_ref()
                        .is_none_or(|t| r.template.as_ref() == Some(t))
                    && q.node.as_ref().is_none_or(|n| n == &self.inner.node)
            })
            .collect();
        let total = rows.len();
        let sort = q.sort;
        rows.sort_by(|(a, _), (b, _)| {
            let ord = sort.key(a).cmp(&sort.key(b)).then(a.id.cmp(&b.id));
            if sort.descending() {
                ord.reverse()
            } else {
                ord
            }
        });
        let start = match &q.after {
            None => 0,
            Some((key, id)) => rows
                .iter()
                .position(|(r, _)| {
                    let ord = (sort.key(r).as_str(), r.id).cmp(&(key.as_str(), *id));
                    if sort.descending() {
                        ord.is_lt()
                    } else {
                        ord.is_gt()
                    }
                })
                .unwrap_or(rows.len()),
        };
        let end = (start + q.limit).min(rows.len());
        let page = &rows[start..end];
        let next = if end < rows.len() {
            page.last().map(|(r, _)| (sort.key(r), r.id))
        } else {
            None
        };
        Page {
            vms: page
                .iter()
                .map(|(r, pid)| r.to_api(&self.inner.node, *pid))
                .collect(),
            next,
            total,
        }
    }

    pub fn job(&self, id: Uuid) -> Result<Job> {
        self.inner
            .jobs
            .get(id)?
            .ok_or_else(|| EngineError::NotFound(format!("Job not found: {id}.")))
    }

    /// Takes the VM's operation slot for job `job_id` of type `kind`.
    pub fn claim(&self, entry: &Arc<VmEntry>, job_id: Uuid, kind: &str) -> Result<OpGuard> {
        let mut op = lock(&entry.op);
        if let Some((job_id, job_type)) = op.clone() {
            return Err(EngineError::Busy {
                what: format!("VM {}", entry.id),
                job_id,
                job_type,
            });
        }
        let present = self
            .inner
            .vms
            .read()
            .map(|m| m.contains_key(&entry.id))
            .unwrap_or(false);
        if !present {
            return Err(EngineError::NotFound(format!(
                "VM not found: {}.",
                entry.id
            )));
        }
        *op = Some((job_id, kind.to_owned()));
        Ok(OpGuard {
            entry: entry.clone(),
        })
    }

    /// Records a one-task job on a VM.
    pub(crate) fn vm_job(
        &self,
        job_id: Uuid,
        kind: &str,
        entry: &VmEntry,
        caller: &str,
    ) -> Result<Arc<JobHandle>> {
        let target = format!("/api/v1/vms/{}", entry.id);
        let name = lock(&entry.rec).name.clone();
        Ok(self.inner.jobs.start(
            job_id,
            kind,
            Some(target.clone()),
            caller,
            vec![TaskSpec {
                description: name,
                target: Some(target),
            }],
        )?)
    }

    /// Runs `work` as job `handle` in its own task and records its outcome.
    pub(crate) fn spawn_job<T, F>(&self, handle: Arc<JobHandle>, work: F) -> Submitted<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let job = handle.snapshot();
        let vm = job
            .target
            .as_deref()
            .and_then(|t| t.strip_prefix("/api/v1/vms/"))
            .and_then(|id| self.find(id).ok())
            .map(|e| self.to_api(&e));
        let agent = self.clone();
        let result = tokio::spawn(async move {
            let r = work.await;
            agent
                .inner
                .jobs
                .finish(&handle, r.as_ref().err().map(|e| e.to_string()));
            r
        });
        Submitted { job, vm, result }
    }

    /// Records a job that was refused before doing anything.
    fn refused<T>(&self, handle: Arc<JobHandle>, err: EngineError) -> Result<T> {
        self.inner.jobs.finish(&handle, Some(err.to_string()));
        Err(err)
    }

    /// Sets and persists a VM's status, and publishes the change.
    pub(crate) fn set_status(&self, entry: &VmEntry, status: VmStatus, reason: Option<String>) {
        let (old, name) = {
            let mut rec = lock(&entry.rec);
            if rec.status == status && rec.status_reason == reason {
                return;
            }
            let old = rec.status;
            rec.status = status;
            rec.status_reason = reason;
            rec.updated_at = crate::clock::now();
            if let Err(e) = self.inner.store.update_vm(rec.id, status.as_str(), &*rec) {
                tracing::error!(vm = %rec.id, error = %e, "cannot persist VM status");
            }
            tracing::info!(vm = %rec.id, name = %rec.name, status = status.as_str(), "status");
            (old, rec.name.clone())
        };
        let kind = match (old, status) {
            (_, VmStatus::Starting) => "vm.starting",
            (VmStatus::Paused, VmStatus::Running) => "vm.resumed",
            (VmStatus::Rebooting, VmStatus::Running) => "vm.rebooted",
            (_, VmStatus::Running) => "vm.started",
            (_, VmStatus::Stopping) => "vm.stopping",
            (_, VmStatus::Stopped) => "vm.stopped",
            (_, VmStatus::Paused) => "vm.paused",
            (_, VmStatus::Rebooting) => "vm.rebooting",
            (_, VmStatus::Crashed) => "vm.crashed",
            (_, VmStatus::Error) => "vm.error",
            (_, VmStatus::Deleting) => "vm.deleting",
            (_, VmStatus::Creating) => return,
        };
        self.vm_event(kind, entry.id, name, status);
    }

    pub(crate) fn vm_event(&self, kind: &str, id: Uuid, name: String, status: VmStatus) {
        self.inner.events.emit(
            kind,
            format!("/api/v1/vms/{id}"),
            id,
            Some(name),
            Some(status.as_str().into()),
        );
    }

    pub(crate) fn unique_mac(&self) -> String {
        let map = self.inner.vms.read().unwrap_or_else(|p| p.into_inner());
        loop {
            let mac = vm::generate_mac();
            if !map.values().any(|e| lock(&e.rec).mac_address == mac) {
                return mac;
            }
        }
    }

    // ---- actions ------------------------------------------------------

    /// Starts a power action. `timeout` applies to stop, shutdown and reboot.
    pub fn action(
        &self,
        entry: &Arc<VmEntry>,
        action: Action,
        timeout: Option<u64>,
        caller: &str,
    ) -> Result<Submitted<ActionResponse>> {
        let kind = format!("vm.{}", action.as_str());
        let job_id = Uuid::new_v4();
        let guard = self.claim(entry, job_id, &kind)?;
        let handle = self.vm_job(job_id, &kind, entry, caller)?;
        let plan = vm::plan(action, entry.status());
        if let Plan::Refuse(msg) = plan {
            drop(guard);
            return self.refused(handle, EngineError::Conflict(msg));
        }
        let timeout = Duration::from_secs(timeout.unwrap_or(self.inner.cfg.stop_timeout_secs));
        let agent = self.clone();
        let entry = entry.clone();
        let ctx = JobCtx {
            handle: handle.clone(),
            task: 0,
        };
        Ok(self.spawn_job(handle, async move {
            let _guard = guard;
            let message = match plan {
                Plan::AlreadyThere(msg) => msg.to_owned(),
                _ => agent.run_action(&entry, action, timeout, &ctx).await?,
            };
            Ok(ActionResponse {
                id: entry.id,
                status: entry.status().as_str().to_owned(),
                message,
                job_id: ctx.handle.id(),
            })
        }))
    }

    pub(crate) async fn run_action(
        &self,
        entry: &Arc<VmEntry>,
        action: Action,
        timeout: Duration,
        ctx: &JobCtx,
    ) -> Result<String> {
        match action {
            Action::Start => self
                .start(entry, ctx)
                .await
                .map(|_| "VM successfully started.".into()),
            Action::Stop => self.stop(entry, timeout, true, ctx).await,
            Action::Shutdown => self.stop(entry, timeout, false, ctx).await,
            Action::Poweroff => self.poweroff(entry).await.map(|_| "VM powered off.".into()),
            Action::Reboot => self.reboot(entry, timeout).await,
            Action::Reset => {
                self.qmp_of(entry)?
                    .qmp
                    .execute("system_reset", None)
                    .await
                    .map_err(qmp_err("reset"))?;
                Ok("VM reset.".into())
            }
            Action::Pause => {
                self.qmp_of(entry)?
                    .qmp
                    .execute("stop", None)
                    .await
                    .map_err(qmp_err("pause"))?;
                self.set_status(entry, VmStatus::Paused, None);
                Ok("VM paused.".into())
            }
            Action::Resume => {
                self.qmp_of(entry)?
                    .qmp
                    .execute("cont", None)
                    .await
                    .map_err(qmp_err("resume"))?;
                self.set_status(entry, VmStatus::Running, None);
                Ok("VM resumed.".into())
            }
            Action::Delete => unreachable_delete(),
        }
    }

    pub(crate) fn qmp_of(&self, entry: &VmEntry) -> Result<Arc<Runtime>> {
        entry.runtime().ok_or_else(|| {
            EngineError::Conflict(format!("VM {} has no running QEMU process.", entry.id))
        })
    }

    /// Deletes a VM: forces it off if needed, removes every file and the row.
    pub fn delete(&self, entry: &Arc<VmEntry>, caller: &str) -> Result<Submitted<DeleteResponse>> {
        let job_id = Uuid::new_v4();
        let guard = self.claim(entry, job_id, "vm.delete")?;
        let handle = self.vm_job(job_id, "vm.delete", entry, caller)?;
        if let Plan::Refuse(msg) = vm::plan(Action::Delete, entry.status()) {
            drop(guard);
            return self.refused(handle, EngineError::Conflict(msg));
        }
        let agent = self.clone();
        let entry = entry.clone();
        Ok(self.spawn_job(handle, async move {
            let _guard = guard;
            let disk_file = entry.record().disk_file.display().to_string();
            agent.delete_steps(&entry).await?;
            Ok(DeleteResponse {
                vm_id: entry.id,
                status: "deleted".into(),
                message: "VM successfully deleted.".into(),
                disk_file,
                job_id,
            })
        }))
    }

    pub(crate) async fn delete_steps(&self, entry: &Arc<VmEntry>) -> Result<()> {
        if entry.runtime().is_some() {
            self.poweroff(entry).await?;
        }
        self.set_status(entry, VmStatus::Deleting, None);
        self.remove_files(entry.id)?;
        self.inner.store.delete_vm(entry.id)?;
        self.inner
            .vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&entry.id);
        self.vm_event(
            "vm.deleted",
            entry.id,
            entry.record().name,
            VmStatus::Deleting,
        );
        Ok(())
    }

    fn remove_files(&self, id: Uuid) -> Result<()> {
        for dir in [self.vm_state_dir(id), self.vm_run_dir(id)] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(EngineError::internal(
                        &format!("removing {}", dir.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

fn unreachable_delete() -> Result<String> {
    Err(EngineError::Internal("delete is not a power action".into()))
}

pub(crate) fn qmp_err(step: &'static str) -> impl Fn(crate::qemu::qmp::QmpError) -> EngineError {
    move |e| EngineError::Internal(format!("QEMU {step} failed: {e}"))
}
