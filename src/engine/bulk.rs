//! Bulk operations: one job, one task per item, bounded parallelism; one
//! failing item never stops the others, and the job reports each outcome.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{Agent, EngineError, JobCtx, Result};
use crate::jobs::TaskSpec;
use crate::model::{CreateVmRequest, Job};

/// At most this many items per bulk request.
pub const MAX_ITEMS: usize = 100;

impl Agent {
    fn parallelism(&self) -> usize {
        match self.inner.cfg.bulk_parallelism {
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
        caller: &str,
        items: Vec<(String, I)>,
        work: F,
    ) -> Result<Job>
    where
        I: Send + 'static,
        F: Fn(Agent, I, JobCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<String>>> + Send + 'static,
    {
        let n = items.len();
        let tasks = items
            .iter()
            .map(|(d, _)| TaskSpec {
                description: d.clone(),
                target: None,
            })
            .collect();
        let handle = self
            .inner
            .jobs
            .start(Uuid::new_v4(), kind, None, caller, tasks)?;
        let sem = Arc::new(Semaphore::new(self.parallelism()));
        let agent = self.clone();
        let h = handle.clone();
        let work = Arc::new(work);
        let sub = self.spawn_job(handle, async move {
            let runs = items.into_iter().enumerate().map(|(i, (_, item))| {
                let (agent, sem, work) = (agent.clone(), sem.clone(), work.clone());
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
                    let outcome = work(agent, item, ctx.clone()).await;
                    if let Ok(Some(target)) = &outcome {
                        ctx.handle.task_target(i, target.clone());
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
                _ => Err(EngineError::Internal(format!(
                    "{failed} of {n} tasks failed"
                ))),
            }
        });
        Ok(sub.job)
    }

    /// `POST /vms` with an array.
    pub fn bulk_create(&self, items: Vec<CreateVmRequest>, caller: &str) -> Result<Job> {
        Self::check_count(items.len())?;
        let items = items
            .into_iter()
            .enumerate()
            .map(|(i, r)| (super::create::describe(&r, i), r))
            .collect();
        self.run_bulk(
            "vm.bulk_create",
            caller,
            items,
            |agent, req, ctx| async move {
                let plan = agent.prepare_create(req).await?;
                ctx.handle
                    .task_target(ctx.task, format!("/api/v1/vms/{}", plan.rec.id));
                let vm = agent.create_run(plan, &ctx).await?;
                Ok(Some(format!("/api/v1/vms/{}", vm.id)))
            },
        )
    }

    /// `DELETE /vms` with `vm_ids`.
    pub fn bulk_delete(&self, keys: Vec<String>, caller: &str) -> Result<Job> {
        Self::check_count(keys.len())?;
        let items = keys.into_iter().map(|k| (k.clone(), k)).collect();
        self.run_bulk(
            "vm.bulk_delete",
            caller,
            items,
            |agent, key, ctx| async move {
                let entry = agent.find(&key)?;
                let _guard = agent.claim(&entry, ctx.handle.id(), "vm.bulk_delete")?;
                ctx.check()?;
                agent.delete_steps(&entry).await?;
                Ok(Some(format!("/api/v1/vms/{}", entry.id)))
            },
        )
    }

    /// `DELETE /templates` with `template_ids`.
    pub fn bulk_delete_templates(&self, keys: Vec<String>, caller: &str) -> Result<Job> {
        Self::check_count(keys.len())?;
        let items = keys.into_iter().map(|k| (k.clone(), k)).collect();
        self.run_bulk(
            "template.bulk_delete",
            caller,
            items,
            |agent, key, _ctx| async move {
                let t = agent.delete_template(&key)?;
                Ok(Some(format!("/api/v1/templates/{}", t.id)))
            },
        )
    }

    /// `DELETE /jobs` with `job_ids`: cancels each.
    pub fn bulk_cancel(&self, ids: Vec<Uuid>, caller: &str) -> Result<Job> {
        Self::check_count(ids.len())?;
        let items = ids.into_iter().map(|id| (id.to_string(), id)).collect();
        self.run_bulk(
            "job.bulk_cancel",
            caller,
            items,
            |agent, id, _ctx| async move {
                agent.inner.jobs.cancel(id)?;
                Ok(Some(format!("/api/v1/jobs/{id}")))
            },
        )
    }

    /// `DELETE /jobs/{id}`: asks a running job to stop and waits briefly
    /// for it to settle (its undo included).
    pub async fn cancel_job(&self, id: Uuid) -> Result<Job> {
        self.inner.jobs.cancel(id)?;
        let waited = self
            .inner
            .jobs
            .wait(id, std::time::Duration::from_secs(30))
            .await?;
        waited.ok_or_else(|| EngineError::NotFound(format!("Job not found: {id}.")))
    }
}
