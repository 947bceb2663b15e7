//! What the agent does, independent of HTTP.
//!
//! Request flow for a VM operation:
//! 1. the API resolves `{id}` with [`Agent::find`] (UUID or name);
//! 2. [`Agent::begin`] takes the VM's operation slot (a second operation gets
//!    409 naming the running job) and records a job;
//! 3. the operation checks [`vm::plan`] against the VM's status, does the
//!    work over QMP / qemu-img, persists each status change before going on;
//! 4. dropping the [`OpGuard`] frees the slot; the job is finished with the
//!    outcome.
//!
//! Each running VM has one QMP connection and one watcher task that turns
//! QEMU's events and its exit into status changes. List and get calls only
//! read in-memory records and never wait on a monitor.

pub mod error;
pub mod resources;
pub mod runtime;
pub mod vm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use uuid::Uuid;

pub use error::{EngineError, ErrorKind, Result};
use runtime::Runtime;
use vm::{Action, Plan, ResolvedBoot, VmRecord};

use crate::config::{Accel, Config};
use crate::host::pool::{self, PoolError};
use crate::host::qemu_img::QemuImg;
use crate::jobs;
use crate::model::{ActionResponse, CloneMode, CreateVmRequest, DeleteResponse, Job, Vm, VmStatus};
use crate::qemu::argv::Accelerator;
use crate::rollback::Rollback;
use crate::store::Store;

const GIB: u64 = 1 << 30;

/// One VM known to the agent.
pub struct VmEntry {
    pub id: Uuid,
    rec: Mutex<VmRecord>,
    /// The operation holding this VM: (job id, job type).
    op: Mutex<Option<(Uuid, String)>>,
    rt: Mutex<Option<Arc<Runtime>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
    pub store: Store,
    pub img: QemuImg,
    pub accel: Accelerator,
    pub node: String,
    disk_cache: &'static str,
    /// The io/blkio cgroup hierarchy, where the host has one and the
    /// configuration enforces limits there.
    cgroups: Option<crate::host::cgroup::Cgroups>,
    vms: RwLock<HashMap<Uuid, Arc<VmEntry>>>,
}

/// The agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

/// Holds a VM's operation slot and its job; frees the slot when dropped.
pub struct OpGuard {
    entry: Arc<VmEntry>,
    pub job: Job,
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
        let store = Store::open(&cfg.db_path()).context("opening the state database")?;
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
        let node = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let img = QemuImg::new(cfg.qemu_img_binary.clone());
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
            img,
            accel,
            node,
            disk_cache,
            cgroups,
            vms: RwLock::new(HashMap::new()),
        });
        let agent = Agent { inner };
        agent.recover().await?;
        Ok(agent)
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
            .store
            .get_job(id)?
            .ok_or_else(|| EngineError::NotFound(format!("Job not found: {id}.")))
    }

    pub fn jobs(&self, limit: usize) -> Result<Vec<Job>> {
        Ok(self.inner.store.list_jobs(limit)?)
    }

    /// Takes the VM's operation slot and records a job for `kind`.
    pub fn begin(&self, entry: &Arc<VmEntry>, kind: &str, caller: &str) -> Result<OpGuard> {
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
        let job = jobs::start(
            &self.inner.store,
            kind,
            Some(format!("/api/v1/vms/{}", entry.id)),
            caller,
        )?;
        *op = Some((job.id, kind.to_owned()));
        Ok(OpGuard {
            entry: entry.clone(),
            job,
        })
    }

    /// Records the job's outcome and passes the result through.
    pub(crate) fn end<T>(&self, mut guard: OpGuard, result: Result<T>) -> Result<(T, Job)> {
        let err = result.as_ref().err().map(|e| e.to_string());
        if let Err(e) = jobs::finish(&self.inner.store, &mut guard.job, err) {
            tracing::error!(error = %e, "cannot record job outcome");
        }
        let job = guard.job.clone();
        drop(guard);
        result.map(|v| (v, job))
    }

    /// Sets and persists a VM's status.
    pub(crate) fn set_status(&self, entry: &VmEntry, status: VmStatus, reason: Option<String>) {
        let mut rec = lock(&entry.rec);
        if rec.status == status && rec.status_reason == reason {
            return;
        }
        rec.status = status;
        rec.status_reason = reason;
        rec.updated_at = jobs::now();
        if let Err(e) = self.inner.store.update_vm(rec.id, status.as_str(), &*rec) {
            tracing::error!(vm = %rec.id, error = %e, "cannot persist VM status");
        }
        tracing::info!(vm = %rec.id, name = %rec.name, status = status.as_str(), "status");
    }

    // ---- create -------------------------------------------------------

    /// Creates a VM: clone + resize its disk, persist it, stopped.
    pub async fn create(&self, req: CreateVmRequest, caller: &str) -> Result<(Vm, Job)> {
        let cfg = &self.inner.cfg;
        vm::validate_create(
            &req,
            &vm::Bounds {
                max_vcpus: cfg.max_vcpus,
                max_memory_mib: cfg.max_memory_mib,
                max_disk_gib: cfg.max_disk_gib,
            },
        )?;
        if let Some(pin) = &req.cpu_pinning {
            resources::check_pinning(pin)?;
        }
        let pools = cfg.pools();
        let base_path = pool::resolve(&pools, &req.base_image, "base image").map_err(pool_err)?;
        let boot_paths = match &req.boot {
            None => None,
            Some(b) => Some(ResolvedBoot {
                kernel: pool::resolve(&pools, &b.kernel, "boot.kernel").map_err(pool_err)?,
                initrd: b
                    .initrd
                    .as_deref()
                    .map(|i| pool::resolve(&pools, i, "boot.initrd").map_err(pool_err))
                    .transpose()?,
            }),
        };
        let info = self.inner.img.info(&base_path).await.map_err(|e| {
            EngineError::Invalid(format!(
                "base image {} is not a disk image: {e}",
                req.base_image
            ))
        })?;
        if req.disk_size.saturating_mul(GIB) < info.virtual_size {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: disk_size {} GiB is smaller than the base image ({} bytes, {:.2} GiB); disks only grow.",
                req.disk_size,
                info.virtual_size,
                info.virtual_size as f64 / GIB as f64
            )));
        }

        let id = Uuid::new_v4();
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| vm::generate_name(&req.base_image));
        let mac = self.unique_mac();
        let dir = self.vm_state_dir(id);
        let now = jobs::now();
        let mut rec = VmRecord {
            id,
            name: name.clone(),
            status: VmStatus::Creating,
            status_reason: None,
            vcpus: req.vcpus,
            memory: req.memory,
            disk_size: req.disk_size,
            base_image: req.base_image.clone(),
            base_path: base_path.clone(),
            clone: req.clone,
            disk_file: dir.join("root.qcow2"),
            mac_address: mac,
            cpu_pinning: req.cpu_pinning.clone(),
            io_limits: req.io_limits.clone(),
            boot: req.boot.clone(),
            boot_paths,
            network: req.network.clone().unwrap_or_default(),
            tags: req.tags.clone(),
            template: None,
            created_at: now.clone(),
            updated_at: now.clone(),
        };

        let mut job = jobs::start(
            &self.inner.store,
            "vm.create",
            Some(format!("/api/v1/vms/{id}")),
            caller,
        )?;
        let result = self.create_steps(&mut rec, &info.format).await;
        let err = result.as_ref().err().map(|e| e.to_string());
        if let Err(e) = jobs::finish(&self.inner.store, &mut job, err) {
            tracing::error!(error = %e, "cannot record job outcome");
        }
        result?;
        let entry = VmEntry::new(rec);
        let vm = self.to_api(&entry);
        self.inner
            .vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry);
        Ok((vm, job))
    }

    async fn create_steps(&self, rec: &mut VmRecord, base_format: &str) -> Result<()> {
        let store = &self.inner.store;
        let mut rb = Rollback::new();
        // The row first (status creating): a crash from here on is undone at
        // the next start, and the name is reserved atomically.
        store.insert_vm(
            rec.id,
            &rec.name,
            rec.status.as_str(),
            &rec.created_at,
            &*rec,
        )?;
        {
            let inner = self.inner.clone();
            let id = rec.id;
            rb.push("row", move || {
                let _ = inner.store.delete_vm(id);
            });
        }
        let dir = rec
            .disk_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the VM directory", e))?;
        {
            let dir = dir.clone();
            rb.push("dir", move || {
                let _ = std::fs::remove_dir_all(&dir);
            });
        }
        let img = &self.inner.img;
        match rec.clone {
            CloneMode::Linked => img
                .create_linked(&rec.base_path, base_format, &rec.disk_file)
                .await
                .map_err(|e| {
                    EngineError::internal(
                        &format!("Failed to clone base image {}", rec.base_image),
                        e,
                    )
                })?,
            CloneMode::Full => img
                .copy_full(&rec.base_path, &rec.disk_file)
                .await
                .map_err(|e| {
                    EngineError::internal(
                        &format!("Failed to copy base image {}", rec.base_image),
                        e,
                    )
                })?,
        }
        img.resize(&rec.disk_file, rec.disk_size * GIB)
            .await
            .map_err(|e| EngineError::internal("Failed to resize the disk", e))?;
        rec.status = VmStatus::Stopped;
        rec.updated_at = jobs::now();
        store.update_vm(rec.id, rec.status.as_str(), &*rec)?;
        rb.disarm();
        Ok(())
    }

    fn unique_mac(&self) -> String {
        let map = self.inner.vms.read().unwrap_or_else(|p| p.into_inner());
        loop {
            let mac = vm::generate_mac();
            if !map.values().any(|e| lock(&e.rec).mac_address == mac) {
                return mac;
            }
        }
    }

    // ---- actions ------------------------------------------------------

    /// Runs a power action. `timeout` applies to stop, shutdown and reboot.
    pub async fn action(
        &self,
        entry: &Arc<VmEntry>,
        action: Action,
        timeout: Option<u64>,
        caller: &str,
    ) -> Result<ActionResponse> {
        let guard = self.begin(entry, &format!("vm.{}", action.as_str()), caller)?;
        let timeout = Duration::from_secs(timeout.unwrap_or(self.inner.cfg.stop_timeout_secs));
        let result = match vm::plan(action, entry.status()) {
            Plan::Refuse(msg) => Err(EngineError::Conflict(msg)),
            Plan::AlreadyThere(msg) => Ok(msg.to_owned()),
            Plan::Proceed => self.run_action(entry, action, timeout).await,
        };
        let (message, job) = self.end(guard, result)?;
        Ok(ActionResponse {
            id: entry.id,
            status: entry.status().as_str().to_owned(),
            message,
            job_id: job.id,
        })
    }

    pub(crate) async fn run_action(
        &self,
        entry: &Arc<VmEntry>,
        action: Action,
        timeout: Duration,
    ) -> Result<String> {
        match action {
            Action::Start => self
                .start(entry)
                .await
                .map(|_| "VM successfully started.".into()),
            Action::Stop => self.stop(entry, timeout, true).await,
            Action::Shutdown => self.stop(entry, timeout, false).await,
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
    pub async fn delete(&self, entry: &Arc<VmEntry>, caller: &str) -> Result<DeleteResponse> {
        let guard = self.begin(entry, "vm.delete", caller)?;
        let result = match vm::plan(Action::Delete, entry.status()) {
            Plan::Refuse(msg) => Err(EngineError::Conflict(msg)),
            _ => self.delete_steps(entry).await,
        };
        let disk_file = entry.record().disk_file.display().to_string();
        let (_, job) = self.end(guard, result)?;
        Ok(DeleteResponse {
            vm_id: entry.id,
            status: "deleted".into(),
            message: "VM successfully deleted.".into(),
            disk_file,
            job_id: job.id,
        })
    }

    async fn delete_steps(&self, entry: &Arc<VmEntry>) -> Result<()> {
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
