//! Bulk operations: one job, one task per item, bounded parallelism; one
//! failing item never stops the others, and the job reports each outcome.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use uuid::Uuid;

use super::core::{Core, JobCtx, JobTarget, Requester, Submitted};
use super::error::{EngineError, Result};
use super::vm::VmEngine;
use crate::jobs::TaskSpec;
use crate::model::{CreateVmRequest, Job, Target};

/// Bulk operations over the VM engine and the job registry. Cheap to clone.
#[derive(Clone)]
pub struct Bulk {
    core: Arc<Core>,
    vms: VmEngine,
}

/// At most this many items per bulk request.
pub const MAX_ITEMS: usize = 100;

impl Bulk {
    /// The VM engine the tasks act on.
    pub(crate) fn vms(&self) -> &VmEngine {
        &self.vms
    }

    pub(crate) fn new(core: Arc<Core>, vms: VmEngine) -> Bulk {
        Bulk { core, vms }
    }

    fn parallelism(&self) -> usize {
        match self.core.cfg.bulk_parallelism {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        }
    }

    fn check_count(n: usize) -> Result<()> {
        if n == 0 || n > MAX_ITEMS {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: a bulk request takes 1 to {MAX_ITEMS} items (got {n})."
            )));
        }
        Ok(())
    }

    /// Runs `work(i, item, ctx)` for every item as task i of a new job.
    fn run_bulk<I, F, Fut>(
        &self,
        kind: &str,
        requester: &Requester,
        items: Vec<(String, I)>,
        work: F,
    ) -> Result<Job>
    where
        I: Send + 'static,
        F: Fn(Bulk, I, JobCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Target>>> + Send + 'static,
    {
        self.run_tasks(kind, requester, items, work).map(|s| s.job)
    }

    /// `run_bulk`, answering the job's work too, for a caller that waits.
    pub(crate) fn run_tasks<I, F, Fut>(
        &self,
        kind: &str,
        requester: &Requester,
        items: Vec<(String, I)>,
        work: F,
    ) -> Result<Submitted<()>>
    where
        I: Send + 'static,
        F: Fn(Bulk, I, JobCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Target>>> + Send + 'static,
    {
        let n = items.len();
        let tasks = items
            .iter()
            .map(|(d, _)| TaskSpec {
                description: d.clone(),
                target: None,
            })
            .collect();
        let handle =
            self.core
                .start_job(Uuid::new_v4(), kind, JobTarget::Bulk, requester, tasks)?;
        let sem = Arc::new(Semaphore::new(self.parallelism()));
        let bulk = self.clone();
        let h = handle.clone();
        let work = Arc::new(work);
        let sub = self.core.spawn_job(handle, None, async move {
            let runs = items.into_iter().enumerate().map(|(i, (_, item))| {
                let (bulk, sem, work) = (bulk.clone(), sem.clone(), work.clone());
                let ctx = JobCtx {
                    handle: h.clone(),
                    task: i,
                };
                tokio::spawn(async move {
                    let _permit = sem.acquire().await;
                    if ctx.handle.is_cancelled() {
                        ctx.handle
                            .task_done(i, Err("cancelled before it started".into()));
                        return false;
                    }
                    ctx.handle.task_running(i);
                    let outcome = work(bulk, item, ctx.clone()).await;
                    if let Ok(Some(target)) = &outcome {
                        ctx.handle.task_target(i, *target);
                    }
                    let ok = outcome.is_ok();
                    ctx.handle
                        .task_done(i, outcome.map(|_| ()).map_err(|e| e.to_string()));
                    ok
                })
            });
            let results = futures::future::join_all(runs).await;
            let failed = results.iter().filter(|r| !matches!(r, Ok(true))).count();
            match failed {
                0 => Ok(()),
                _ if h.is_cancelled() => Err(EngineError::Cancelled(format!(
                    "cancelled; {failed} of {n} tasks did not complete"
                ))),
                _ => Err(EngineError::failed(format!("{failed} of {n} tasks failed"))),
            }
        });
        Ok(sub)
    }

    /// Creates every VM of `items`.
    pub fn create_vms(&self, items: Vec<CreateVmRequest>, requester: &Requester) -> Result<Job> {
        Self::check_count(items.len())?;
        let items = items
            .into_iter()
            .enumerate()
            .map(|(i, r)| (super::vm::create::describe(&r, i), r))
            .collect();
        self.run_bulk(
            "vm.bulk_create",
            requester,
            items,
            |bulk, req, ctx| async move {
                let plan = bulk.vms.prepare_create(req).await?;
                ctx.handle.task_target(ctx.task, Target::Vm(plan.rec.id));
                let vm = bulk.vms.create_run(plan, &ctx).await?;
                Ok(Some(Target::Vm(vm.id)))
            },
        )
    }

    /// Deletes every VM of `keys` (ids or names).
    pub fn delete_vms(&self, keys: Vec<String>, requester: &Requester) -> Result<Job> {
        Self::check_count(keys.len())?;
        let items = keys.into_iter().map(|k| (k.clone(), k)).collect();
        self.run_bulk(
            "vm.bulk_delete",
            requester,
            items,
            |bulk, key, ctx| async move {
                let entry = bulk.vms.find(&key)?;
                let _guard = bulk.vms.claim(&entry, ctx.handle.id(), "vm.bulk_delete")?;
                ctx.check()?;
                bulk.vms.delete_steps(&entry).await?;
                Ok(Some(Target::Vm(entry.id)))
            },
        )
    }

    /// Deletes every template of `keys` (ids or names).
    pub fn delete_templates(&self, keys: Vec<String>, requester: &Requester) -> Result<Job> {
        Self::check_count(keys.len())?;
        let items = keys.into_iter().map(|k| (k.clone(), k)).collect();
        self.run_bulk(
            "template.bulk_delete",
            requester,
            items,
            |bulk, key, _ctx| async move {
                let t = bulk.vms.delete_template(&key)?;
                Ok(Some(Target::Template(t.id)))
            },
        )
    }

    /// Cancels every job of `ids`.
    pub fn cancel_jobs(&self, ids: Vec<Uuid>, requester: &Requester) -> Result<Job> {
        Self::check_count(ids.len())?;
        let items = ids.into_iter().map(|id| (id.to_string(), id)).collect();
        self.run_bulk(
            "job.bulk_cancel",
            requester,
            items,
            |bulk, id, _ctx| async move {
                bulk.core.jobs.cancel(id)?;
                Ok(Some(Target::Job(id)))
            },
        )
    }
}
