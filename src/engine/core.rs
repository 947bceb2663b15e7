//! What both backends share: configuration, the state database, the job
//! registry and the event bus; and how a job runs (its own task, its
//! outcome recorded, a handle for progress and cancellation).

use std::future::Future;
use std::sync::Arc;

use super::error::{EngineError, Result};
use crate::config::Config;
use crate::events::EventBus;
use crate::jobs::{JobHandle, Jobs, TaskSpec};
use crate::model::{Job, Target, Vm};
use crate::store::Store;

/// Who asked for an operation (`uid:0`); jobs record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester(pub String);

impl Requester {
    pub fn new(label: impl Into<String>) -> Requester {
        Requester(label.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a job acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobTarget {
    Vm(uuid::Uuid),
    Container(uuid::Uuid),
    Template(uuid::Uuid),
    /// An image by reference (it has no id of its own before it exists).
    Image(String),
    /// A volume, `pool/name` (volumes have no id).
    Volume(String),
    /// Many items, one task each.
    Bulk,
}

impl JobTarget {
    /// The resource the job points at, where there is one.
    pub fn resource(&self) -> Option<Target> {
        match self {
            JobTarget::Vm(id) => Some(Target::Vm(*id)),
            JobTarget::Container(id) => Some(Target::Container(*id)),
            JobTarget::Template(id) => Some(Target::Template(*id)),
            JobTarget::Image(_) | JobTarget::Volume(_) | JobTarget::Bulk => None,
        }
    }
}

/// The shared context of the engines.
pub struct Core {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub jobs: Jobs,
    pub events: EventBus,
    /// This agent's node name.
    pub node: String,
    /// Admission control, shared by both backends.
    pub admission: super::capacity::Admission,
    /// The storage pools.
    pub pools: super::pools::Pools,
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
            .unwrap_or_else(|e| Err(EngineError::internal("running the job", e)))
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

impl Core {
    /// Records a running job of `kind` on `target`, one task per spec.
    pub fn start_job(
        &self,
        id: uuid::Uuid,
        kind: &str,
        target: JobTarget,
        requester: &Requester,
        tasks: Vec<TaskSpec>,
    ) -> Result<Arc<JobHandle>> {
        Ok(self
            .jobs
            .start(id, kind, target.resource(), requester.as_str(), tasks)?)
    }

    /// Records a one-task job on one resource.
    pub fn start_single(
        &self,
        id: uuid::Uuid,
        kind: &str,
        target: JobTarget,
        description: String,
        requester: &Requester,
    ) -> Result<(Arc<JobHandle>, JobCtx)> {
        let task = TaskSpec {
            description,
            target: target.resource(),
        };
        let handle = self.start_job(id, kind, target, requester, vec![task])?;
        let ctx = JobCtx {
            handle: handle.clone(),
            task: 0,
        };
        Ok((handle, ctx))
    }

    /// Runs `work` as job `handle` in its own task and records its outcome.
    pub fn spawn_job<T, F>(
        self: &Arc<Self>,
        handle: Arc<JobHandle>,
        preview: Option<Vm>,
        work: F,
    ) -> Submitted<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let job = handle.snapshot();
        let core = self.clone();
        // Whatever the job logs carries its id (journald: JOB_ID), and the
        // VM's when it acts on one (VM_ID).
        let span = tracing::info_span!("job", job_id = %handle.id(), vm_id = tracing::field::Empty);
        if let Some(Target::Vm(id)) = job.target {
            span.record("vm_id", tracing::field::display(id));
        }
        let result = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let r = work.await;
                if let Err(e) = &r {
                    if e.kind() == super::error::ErrorKind::Internal {
                        tracing::error!(job_id = %handle.id(), error = %super::error::chain(e), "job failed");
                    }
                }
                core.jobs
                    .finish(&handle, r.as_ref().err().map(|e| e.to_string()));
                r
            },
            span,
        ));
        Submitted {
            job,
            vm: preview,
            result,
        }
    }

    /// Records a job that was refused before doing anything.
    pub fn refused<T>(&self, handle: Arc<JobHandle>, err: EngineError) -> Result<T> {
        self.jobs.finish(&handle, Some(err.to_string()));
        Err(err)
    }
}
