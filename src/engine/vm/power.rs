//! Power actions and delete, each a job: refused at once where the
//! lifecycle rules say so, otherwise run in its own task.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::lifecycle::{plan, Action, Outcome, Plan, VmEvent};
use super::live::{qmp_err, Runtime};
use super::registry::{VmEngine, VmEntry};
use crate::engine::core::{JobCtx, JobTarget, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::model::VmStatus;

/// What a power action answers.
#[derive(Debug, Clone)]
pub struct ActionDone {
    pub id: Uuid,
    pub status: VmStatus,
    pub outcome: Outcome,
    pub job_id: Uuid,
}

/// What a delete answers.
#[derive(Debug, Clone)]
pub struct Deleted {
    pub id: Uuid,
    pub disk_file: String,
    pub job_id: Uuid,
}

impl VmEngine {
    /// Records a one-task job on a VM.
    pub(crate) fn vm_job(
        &self,
        job_id: Uuid,
        kind: &str,
        entry: &VmEntry,
        requester: &Requester,
    ) -> Result<(Arc<crate::jobs::JobHandle>, JobCtx)> {
        let name = entry.record().name;
        self.core()
            .start_single(job_id, kind, JobTarget::Vm(entry.id), name, requester)
    }

    /// Starts a power action. `timeout` applies to stop, shutdown and reboot.
    pub fn action(
        &self,
        entry: &Arc<VmEntry>,
        action: Action,
        timeout: Option<u64>,
        requester: &Requester,
    ) -> Result<Submitted<ActionDone>> {
        let kind = format!("vm.{}", action.as_str());
        let job_id = Uuid::new_v4();
        let guard = self.claim(entry, job_id, &kind)?;
        let (handle, ctx) = self.vm_job(job_id, &kind, entry, requester)?;
        let plan = plan(action, entry.status());
        if let Plan::Refuse(msg) = plan {
            drop(guard);
            return self.core().refused(handle, EngineError::Conflict(msg));
        }
        let timeout = Duration::from_secs(timeout.unwrap_or(self.core().cfg.stop_timeout_secs));
        let engine = self.clone();
        let entry = entry.clone();
        let preview = Some(self.to_api(&entry));
        Ok(self.inner.core.spawn_job(handle, preview, async move {
            let _guard = guard;
            let outcome = match plan {
                Plan::Skip(outcome) => outcome,
                _ => engine.run_action(&entry, action, timeout, &ctx).await?,
            };
            Ok(ActionDone {
                id: entry.id,
                status: entry.status(),
                outcome,
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
    ) -> Result<Outcome> {
        match action {
            Action::Start => self.start(entry, ctx).await.map(|_| Outcome::Done(action)),
            Action::Stop => self.stop(entry, timeout, true, ctx).await,
            Action::Shutdown => self.stop(entry, timeout, false, ctx).await,
            Action::Poweroff => self.poweroff(entry).await.map(|_| Outcome::Done(action)),
            Action::Reboot => self.reboot(entry, timeout).await,
            Action::Reset => {
                self.monitor_of(entry)?
                    .monitor
                    .system_reset()
                    .await
                    .map_err(qmp_err("reset"))?;
                Ok(Outcome::Done(action))
            }
            Action::Pause => {
                self.monitor_of(entry)?
                    .monitor
                    .stop()
                    .await
                    .map_err(qmp_err("pause"))?;
                self.transition(entry, VmEvent::Pause, None)?;
                Ok(Outcome::Done(action))
            }
            Action::Resume => {
                self.monitor_of(entry)?
                    .monitor
                    .cont()
                    .await
                    .map_err(qmp_err("resume"))?;
                self.transition(entry, VmEvent::Run, None)?;
                Ok(Outcome::Done(action))
            }
            Action::Delete => Err(EngineError::failed("delete is not a power action")),
        }
    }

    pub(crate) fn monitor_of(&self, entry: &VmEntry) -> Result<Arc<Runtime>> {
        entry.runtime().ok_or_else(|| {
            EngineError::Conflict(format!("VM {} has no running QEMU process.", entry.id))
        })
    }

    /// Deletes a VM: forces it off if needed, removes every file and the row.
    pub fn delete(
        &self,
        entry: &Arc<VmEntry>,
        requester: &Requester,
    ) -> Result<Submitted<Deleted>> {
        let job_id = Uuid::new_v4();
        let guard = self.claim(entry, job_id, "vm.delete")?;
        let (handle, _ctx) = self.vm_job(job_id, "vm.delete", entry, requester)?;
        if let Plan::Refuse(msg) = plan(Action::Delete, entry.status()) {
            drop(guard);
            return self.core().refused(handle, EngineError::Conflict(msg));
        }
        let engine = self.clone();
        let entry = entry.clone();
        let preview = Some(self.to_api(&entry));
        Ok(self.inner.core.spawn_job(handle, preview, async move {
            let _guard = guard;
            let disk_file = entry.record().disk_file.display().to_string();
            engine.delete_steps(&entry).await?;
            Ok(Deleted {
                id: entry.id,
                disk_file,
                job_id,
            })
        }))
    }

    /// Deletes a VM whose operation slot the caller holds. `deleting` is
    /// persisted first, before QEMU is forced off: a daemon killed at any
    /// point of a delete finishes it at its next start (`recover`), where a
    /// `stopping` VM with its QEMU still alive would be re-adopted and the
    /// delete forgotten.
    pub(crate) async fn delete_steps(&self, entry: &Arc<VmEntry>) -> Result<()> {
        if let Plan::Refuse(msg) = plan(Action::Delete, entry.status()) {
            return Err(EngineError::Conflict(msg));
        }
        self.transition(entry, VmEvent::Delete, None)?;
        match entry.runtime() {
            Some(rt) => self.kill(&rt).await?,
            None => self.kill_unattached(entry.id).await?,
        }
        self.remove_files(entry.id)?;
        remove_owned_volumes(&entry.record());
        // The snapshots lived in the disk just removed.
        self.core().store.delete_snapshots(entry.id)?;
        self.core().store.delete_vm(entry.id)?;
        self.forget(entry.id);
        self.publish(
            "vm.deleted",
            entry.id,
            entry.record().name,
            VmStatus::Deleting,
        );
        Ok(())
    }

    pub(crate) fn remove_files(&self, id: Uuid) -> Result<()> {
        for dir in [self.state_dir(id), self.run_dir(id)] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(EngineError::internal(
                        format!("removing {}", dir.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Volumes made for a VM's disks go with it (attached existing volumes
/// stay in their pools).
pub(crate) fn remove_owned_volumes(rec: &super::record::VmRecord) {
    for path in VmEngine::owned_volumes(rec) {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "volume of a deleted VM left")
            }
        }
    }
}
