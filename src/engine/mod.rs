//! What the agent does, independent of HTTP: typed commands in, typed
//! results out. The API layer turns requests into calls on these engines
//! and renders what they answer; nothing here knows URLs, status codes,
//! request ids or how an answer is phrased.
//!
//! Request flow for an operation on one instance:
//! 1. the API resolves `{id}` on the backend's engine (`VmEngine::find`,
//!    `ContainerEngine::find`), by UUID or name;
//! 2. everything that can be refused at once is refused: input, then the
//!    instance's operation slot (a second operation gets `Busy`, naming the
//!    running job), then the backend's lifecycle rules for the status;
//! 3. a job is recorded and the work runs in its own task
//!    (`core::Submitted`), so a client that hangs up never leaves an
//!    instance half-done; every status change goes through the backend's
//!    transition table and is persisted before the work goes on; a
//!    `crate::rollback::Rollback` undoes what a failed or cancelled step
//!    did;
//! 4. the API awaits the task (synchronous call) or answers at once with
//!    the job (asynchronous call).
//!
//! The surface, per backend (inputs and results are types, never text):
//! - `VmEngine`: `create(CreateVmRequest)` → `Vm`; `action(Action)` →
//!   `vm::ActionDone` with a `vm::Outcome`; `update(PatchVmRequest)` →
//!   `vm::Updated`; `delete` → `vm::Deleted`; `find`, `list(ListQuery,
//!   PageRequest)`, `vm_config`, `performance`, `resources`, templates.
//! - `ContainerEngine`: `create`, `action(CAction)` →
//!   `container::ContainerActionDone`, `update`, `delete`, `adopt`,
//!   `exec`, `logs`, `stats`, images, networks, volumes.
//! - `bulk::Bulk`: many creates, deletes or cancels as one job.
//! - `groups::Groups`: named sets of VMs, started and stopped as one job.
//!
//! Every job carries a `JobTarget` and the `Requester` who asked.

pub mod bulk;
/// Admission control: creates and starts checked against the host's limits.
pub mod capacity;
pub mod container;
pub mod core;
pub mod error;
/// A testing aid: failures injected on purpose between the steps of a
/// container create or a VM start.
pub mod faults;
pub mod groups;
/// The registry of storage pools.
pub mod pools;
pub mod sample;
/// Storage pools and volumes: what they hold, and making, copying,
/// importing and removing volumes.
pub mod storage;
pub mod vm;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

pub use self::core::{JobCtx, JobTarget, Requester, Submitted};
pub use container::ContainerEngine;
pub use error::{EngineError, ErrorKind, Result};
pub use vm::VmEngine;

use self::core::Core;
use crate::config::Config;
use crate::events::EventBus;
use crate::jobs::Jobs;
use crate::model::{Instance, Job, Target};
use crate::store::Store;

/// How long an `Idempotency-Key` is remembered (seconds).
pub const IDEMPOTENCY_TTL: i64 = 24 * 3600;

/// The agent: one engine per backend over a shared core. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    core: Arc<Core>,
    pub vms: VmEngine,
    pub containers: ContainerEngine,
    pub storage: storage::StorageEngine,
    pub bulk: bulk::Bulk,
    pub groups: groups::Groups,
}

impl Agent {
    /// Opens the state, then each backend (the VM engine re-adopts running
    /// guests), and starts the periodic pruning.
    pub async fn open(cfg: Config) -> anyhow::Result<Agent> {
        use anyhow::Context;
        cfg.validate()?;
        for dir in [&cfg.state_dir, &cfg.run_dir, &cfg.image_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let store = Arc::new(Store::open(&cfg.db_path()).context("opening the state database")?);
        let node = if cfg.node_name.is_empty() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        } else {
            cfg.node_name.clone()
        };
        let events = EventBus::for_node(node.clone());
        let jobs = Jobs::new(store.clone(), events.clone());
        let interrupted = jobs.fail_interrupted()?;
        if !interrupted.is_empty() {
            tracing::warn!(
                interrupted = interrupted.len(),
                "jobs interrupted by the last stop marked failed"
            );
        }
        let pools = pools::Pools::load(&cfg, &store).context("loading the storage pools")?;
        let core = Arc::new(Core {
            admission: capacity::Admission::new(cfg.capacity.clone()),
            pools,
            cfg,
            store,
            jobs,
            events,
            node,
        });
        let vms = VmEngine::open(core.clone(), Path::new("/")).await?;
        // A snapshot step cut short may have left the image and the tree
        // apart.
        let cut: Vec<Uuid> = interrupted
            .iter()
            .filter(|j| {
                j.kind.starts_with("vm.snapshot") || j.kind == "vm.export" || j.kind == "vm.revert"
            })
            .filter_map(|j| match j.target {
                Some(Target::Vm(id)) => Some(id),
                _ => None,
            })
            .collect();
        vms.reconcile_snapshots(&cut).await;
        let containers = ContainerEngine::new(core.clone());
        let bulk = bulk::Bulk::new(core.clone(), vms.clone());
        let agent = Agent {
            groups: groups::Groups::new(core.clone(), vms.clone(), bulk.clone()),
            bulk,
            storage: storage::StorageEngine::open(core.clone(), vms.clone()),
            core,
            vms,
            containers,
        };
        agent.prune();
        tokio::spawn(agent.containers.clone().watch_engine());
        let weak = Arc::downgrade(&agent.core);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                match weak.upgrade() {
                    Some(core) => prune(&core),
                    None => return,
                }
            }
        });
        Ok(agent)
    }

    fn prune(&self) {
        prune(&self.core);
    }

    pub fn events(&self) -> &EventBus {
        &self.core.events
    }
    pub fn jobs_registry(&self) -> &Jobs {
        &self.core.jobs
    }
    pub fn config(&self) -> &Config {
        &self.core.cfg
    }
    /// The durable state, shared (the audit trail's writers hold it).
    pub fn store_arc(&self) -> Arc<Store> {
        self.core.store.clone()
    }
    pub fn store(&self) -> &Store {
        &self.core.store
    }
    /// The store, for what lives beside the engine (users and tokens).
    pub fn shared_store(&self) -> Arc<Store> {
        self.core.store.clone()
    }
    pub fn node(&self) -> &str {
        &self.core.node
    }

    /// The host's figures, the admission limits, what guests hold and
    /// what is left (`GET /nodes/{node}/resources`).
    pub async fn node_resources(&self) -> crate::model::NodeResources {
        let disks = self.core.cfg.state_dir.join("vms");
        let mut r = self.core.admission.report(&self.core.node, &disks).await;
        r.pools = self.pool_capacity(&r.host).await;
        r
    }

    /// Each active storage pool's size, what its volumes promise guests
    /// (virtual sizes), what is written, and the images it holds; first
    /// `vms`, the directory of the VMs' own disks.
    async fn pool_capacity(
        &self,
        host: &crate::model::HostResources,
    ) -> Vec<crate::model::PoolCapacity> {
        use crate::model::{PoolCapacity, PoolState};
        let gib = 1u64 << 30;
        let mut out = vec![PoolCapacity {
            name: "vms".into(),
            total_bytes: host.storage_total_bytes,
            allocated_bytes: self.vms.all().iter().map(|v| v.disk_size * gib).sum(),
            used_bytes: host
                .storage_total_bytes
                .saturating_sub(host.storage_free_bytes),
            images: Vec::new(),
        }];
        for pool in self.storage.pools().await {
            if pool.state != PoolState::Active || pool.error.is_some() {
                continue;
            }
            let volumes = self.storage.volumes(&pool.name).await.unwrap_or_default();
            out.push(PoolCapacity {
                allocated_bytes: volumes.iter().map(|v| v.capacity).sum(),
                used_bytes: pool.allocated,
                total_bytes: pool.capacity,
                images: volumes
                    .iter()
                    .filter(|v| matches!(v.format.as_str(), "qcow2" | "raw"))
                    .map(|v| v.name.clone())
                    .collect(),
                name: pool.name,
            });
        }
        out
    }

    pub fn job(&self, id: Uuid) -> Result<Job> {
        self.core
            .jobs
            .get(id)?
            .ok_or_else(|| EngineError::NotFound(format!("Job not found: {id}.")))
    }

    /// Asks a running job to stop and waits briefly for it to settle (its
    /// undo included).
    pub async fn cancel_job(&self, id: Uuid) -> Result<Job> {
        self.core.jobs.cancel(id)?;
        let waited = self.core.jobs.wait(id, Duration::from_secs(30)).await?;
        waited.ok_or_else(|| EngineError::NotFound(format!("Job not found: {id}.")))
    }

    /// VMs and containers in one list (containers only while the engine
    /// answers; the second value says why they are missing otherwise).
    pub async fn instances(&self) -> (Vec<Instance>, Option<String>) {
        let mut out: Vec<Instance> = self
            .vms
            .all()
            .into_iter()
            .map(|v| Instance {
                id: v.id,
                name: v.name,
                backend: "vm".into(),
                status: v.status.as_str().into(),
                vcpus: Some(v.vcpus as f64),
                memory: Some(v.memory),
                node: v.node,
                tags: v.tags,
                created_at: v.created_at,
                link: Target::Vm(v.id),
            })
            .collect();
        let mut err = None;
        match self.containers.list(false).await {
            Ok(cs) => out.extend(cs.into_iter().map(|c| Instance {
                id: c.id,
                name: c.name,
                backend: "container".into(),
                status: c.status.as_str().into(),
                vcpus: c.vcpus,
                memory: c.memory,
                node: c.node,
                tags: c.tags,
                created_at: c.created_at,
                link: Target::Container(c.id),
            })),
            Err(e) => err = Some(e.to_string()),
        }
        out.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
        (out, err)
    }
}

/// Forgets finished jobs and audit entries past their retention and
/// idempotency keys past 24 h.
fn prune(core: &Core) {
    let audit_cutoff = crate::clock::ago(core.cfg.audit_retention_days.saturating_mul(86_400));
    match core.store.prune_audit(&audit_cutoff) {
        Ok(n) if n > 0 => tracing::info!(entries = n, "pruned the audit trail"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning the audit trail"),
    }
    let cutoff = crate::clock::ago(core.cfg.job_retention_hours * 3600);
    match core.store.prune_jobs(&cutoff) {
        Ok(n) if n > 0 => tracing::info!(jobs = n, "pruned finished jobs"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning jobs"),
    }
    if let Err(e) = core
        .store
        .prune_idempotency(crate::clock::unix_now() - IDEMPOTENCY_TTL)
    {
        tracing::warn!(error = %e, "pruning idempotency keys");
    }
}
