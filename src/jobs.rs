//! Jobs: every mutating operation runs as a job with tasks, progress, log
//! lines and a cancellation token. Running jobs live in memory and are
//! written through to the store on every state change (progress at most
//! every 250 ms); finished jobs are read from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::now;
use crate::events::EventBus;
use crate::model::{Job, JobState, Target, Task};
use crate::store::{Store, StoreError};
use crate::sync::lock;

/// Log lines kept per task.
const MAX_LOG: usize = 100;

pub fn state_str(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// What a task works on: a description and, when known, its resource.
pub struct TaskSpec {
    pub description: String,
    pub target: Option<Target>,
}

/// A running job.
pub struct JobHandle {
    job: Mutex<Job>,
    cancel: CancellationToken,
    done: watch::Sender<bool>,
    store: Arc<Store>,
    events: EventBus,
    last_persist: Mutex<Instant>,
}

impl JobHandle {
    pub fn id(&self) -> Uuid {
        lock(&self.job).id
    }

    pub fn snapshot(&self) -> Job {
        lock(&self.job).clone()
    }

    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn persist(&self, job: &Job) {
        if let Err(e) = self.store.put_job(
            job.id,
            &job.kind,
            state_str(job.state),
            &job.created_at,
            job,
        ) {
            tracing::error!(job_id = %job.id, error = %e, "cannot persist job");
        }
        *lock(&self.last_persist) = Instant::now();
    }

    fn update(&self, force: bool, f: impl FnOnce(&mut Job)) {
        let mut job = lock(&self.job);
        let before = job.progress_percent;
        f(&mut job);
        let n = job.tasks.len().max(1) as u32;
        job.progress_percent = (job
            .tasks
            .iter()
            .map(|t| t.progress_percent as u32)
            .sum::<u32>()
            / n) as u8;
        let due = lock(&self.last_persist).elapsed() >= Duration::from_millis(250);
        if force || due {
            self.persist(&job);
        }
        if job.progress_percent != before {
            self.events.emit_progress(
                "job.progress",
                Target::Job(job.id),
                None,
                Some(state_str(job.state).into()),
                Some(job.progress_percent),
            );
        }
    }

    pub fn task_running(&self, i: usize) {
        self.update(true, |j| {
            if let Some(t) = j.tasks.get_mut(i) {
                t.state = JobState::Running;
                t.started_at = Some(now());
            }
        });
    }

    pub fn task_progress(&self, i: usize, pct: u8) {
        self.update(false, |j| {
            if let Some(t) = j.tasks.get_mut(i) {
                t.progress_percent = pct.min(99);
            }
        });
    }

    pub fn task_log(&self, i: usize, line: impl Into<String>) {
        let line = format!("{} {}", now(), line.into());
        self.update(false, |j| {
            if let Some(t) = j.tasks.get_mut(i) {
                if t.log.len() >= MAX_LOG {
                    t.log.remove(0);
                }
                t.log.push(line);
            }
        });
    }

    /// Records what the job produced (shown once it has finished).
    pub fn set_result(&self, value: serde_json::Value) {
        self.update(true, |j| j.result = Some(value));
    }

    pub fn task_target(&self, i: usize, target: Target) {
        self.update(true, |j| {
            if let Some(t) = j.tasks.get_mut(i) {
                t.target = Some(target);
            }
        });
    }

    /// Ends a task: Ok, an error, or cancelled (when the job was cancelled
    /// and the task failed or never ran).
    pub fn task_done(&self, i: usize, outcome: Result<(), String>) {
        let cancelled = self.is_cancelled();
        self.update(true, |j| {
            if let Some(t) = j.tasks.get_mut(i) {
                t.finished_at = Some(now());
                match outcome {
                    Ok(()) => {
                        t.state = JobState::Succeeded;
                        t.progress_percent = 100;
                    }
                    Err(e) => {
                        t.state = if cancelled {
                            JobState::Cancelled
                        } else {
                            JobState::Failed
                        };
                        t.progress_percent = 100;
                        t.error = Some(e);
                    }
                }
            }
        });
    }
}

/// The job registry.
pub struct Jobs {
    store: Arc<Store>,
    events: EventBus,
    running: Mutex<HashMap<Uuid, Arc<JobHandle>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("Job not found: {0}.")]
    NotFound(Uuid),
    #[error("Job {0} has already finished ({1}); there is nothing to cancel.")]
    Finished(Uuid, &'static str),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl Jobs {
    pub fn new(store: Arc<Store>, events: EventBus) -> Jobs {
        Jobs {
            store,
            events,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Records a new running job with its tasks (one task per item; a
    /// single-resource call has one task, already running).
    pub fn start(
        &self,
        id: Uuid,
        kind: &str,
        target: Option<Target>,
        requester: &str,
        tasks: Vec<TaskSpec>,
    ) -> Result<Arc<JobHandle>, StoreError> {
        let single = tasks.len() == 1;
        let created_at = now();
        let job = Job {
            id,
            kind: kind.to_owned(),
            state: JobState::Running,
            progress_percent: 0,
            target,
            requested_by: requester.to_owned(),
            error: None,
            created_at: created_at.clone(),
            finished_at: None,
            result: None,
            tasks: tasks
                .into_iter()
                .enumerate()
                .map(|(i, t)| Task {
                    id: i as u32,
                    state: if single {
                        JobState::Running
                    } else {
                        JobState::Queued
                    },
                    progress_percent: 0,
                    target: t.target,
                    description: t.description,
                    log: Vec::new(),
                    error: None,
                    started_at: single.then(|| created_at.clone()),
                    finished_at: None,
                    node: None,
                    node_job: None,
                    placement: None,
                })
                .collect(),
        };
        let (done, _) = watch::channel(false);
        let h = Arc::new(JobHandle {
            job: Mutex::new(job.clone()),
            cancel: CancellationToken::new(),
            done,
            store: self.store.clone(),
            events: self.events.clone(),
            last_persist: Mutex::new(Instant::now()),
        });
        h.persist(&job);
        tracing::info!(
            job_id = %id,
            kind,
            vm_id = vm_of(job.target).map(tracing::field::display),
            requested_by = requester,
            "job started"
        );
        lock(&self.running).insert(id, h.clone());
        self.events.emit(
            "job.created",
            Target::Job(id),
            Some(kind.to_owned()),
            Some("running".into()),
        );
        Ok(h)
    }

    /// Ends a job: succeeded, failed (with the error) or cancelled.
    pub fn finish(&self, h: &JobHandle, error: Option<String>) -> Job {
        let cancelled = h.is_cancelled();
        let job = {
            let mut job = lock(&h.job);
            job.state = match (&error, cancelled) {
                (None, _) => JobState::Succeeded,
                (Some(_), true) => JobState::Cancelled,
                (Some(_), false) => JobState::Failed,
            };
            for t in job
                .tasks
                .iter_mut()
                .filter(|t| matches!(t.state, JobState::Queued | JobState::Running))
            {
                t.state = if error.is_none() {
                    JobState::Succeeded
                } else if cancelled {
                    JobState::Cancelled
                } else {
                    JobState::Failed
                };
                t.progress_percent = 100;
                t.finished_at = Some(now());
                if error.is_some() && t.error.is_none() {
                    t.error = error.clone();
                }
            }
            job.progress_percent = 100;
            job.error = error;
            job.finished_at = Some(now());
            h.persist(&job);
            job.clone()
        };
        tracing::info!(
            job_id = %job.id,
            kind = %job.kind,
            vm_id = vm_of(job.target).map(tracing::field::display),
            state = state_str(job.state),
            error = job.error.as_deref(),
            "job finished"
        );
        lock(&self.running).remove(&job.id);
        let _ = h.done.send(true);
        self.events.emit_progress(
            "job.finished",
            Target::Job(job.id),
            Some(job.kind.clone()),
            Some(state_str(job.state).into()),
            Some(100),
        );
        job
    }

    pub fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        if let Some(h) = lock(&self.running).get(&id) {
            return Ok(Some(h.snapshot()));
        }
        self.store.get_job(id)
    }

    /// Waits up to `timeout` for a running job to finish; returns it as it is then.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<Option<Job>, StoreError> {
        let handle = lock(&self.running).get(&id).cloned();
        if let Some(h) = handle {
            let mut rx = h.done.subscribe();
            let _ = tokio::time::timeout(timeout, rx.wait_for(|d| *d)).await;
        }
        self.get(id)
    }

    /// Asks a running job to stop at its next safe point.
    pub fn cancel(&self, id: Uuid) -> Result<Job, CancelError> {
        if let Some(h) = lock(&self.running).get(&id).cloned() {
            h.cancel.cancel();
            return Ok(h.snapshot());
        }
        match self.store.get_job::<Job>(id)? {
            None => Err(CancelError::NotFound(id)),
            Some(job) => Err(CancelError::Finished(id, state_str(job.state))),
        }
    }

    /// After a restart: jobs that were running when the daemon died failed.
    /// Returns them.
    pub fn fail_interrupted(&self) -> Result<Vec<Job>, StoreError> {
        let running: Vec<Job> = self.store.jobs_in_state(&["running", "queued"])?;
        for mut job in running.iter().cloned() {
            let msg = "interrupted: libgod stopped while the job ran".to_owned();
            for t in job
                .tasks
                .iter_mut()
                .filter(|t| matches!(t.state, JobState::Queued | JobState::Running))
            {
                t.state = JobState::Failed;
                t.error = Some(msg.clone());
                t.finished_at = Some(now());
            }
            job.state = JobState::Failed;
            job.error = Some(msg);
            job.finished_at = Some(now());
            self.store
                .put_job(job.id, &job.kind, "failed", &job.created_at, &job)?;
        }
        Ok(running)
    }
}

/// The VM a job acts on, for its log lines' `vm_id` field.
fn vm_of(target: Option<Target>) -> Option<Uuid> {
    match target {
        Some(Target::Vm(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> (tempfile::TempDir, Jobs) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        (dir, Jobs::new(store, EventBus::default()))
    }

    fn specs(n: usize) -> Vec<TaskSpec> {
        (0..n)
            .map(|i| TaskSpec {
                description: format!("item {i}"),
                target: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn progress_tasks_and_outcomes() {
        let (_d, jobs) = jobs();
        let h = jobs
            .start(Uuid::new_v4(), "vm.bulk_create", None, "uid:0", specs(2))
            .unwrap();
        assert_eq!(h.snapshot().tasks[0].state, JobState::Queued);
        h.task_running(0);
        h.task_progress(0, 50);
        assert_eq!(h.snapshot().progress_percent, 25);
        h.task_log(0, "cloning");
        h.task_done(0, Ok(()));
        h.task_running(1);
        h.task_done(1, Err("boom".into()));
        let job = jobs.finish(&h, Some("1 of 2 tasks failed".into()));
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.tasks[0].state, JobState::Succeeded);
        assert_eq!(job.tasks[1].error.as_deref(), Some("boom"));
        assert!(job.tasks[0].log[0].ends_with("cloning"));
        // Finished jobs come from the store; cancelling one is an error.
        let stored = jobs.get(job.id).unwrap().unwrap();
        assert_eq!(stored.state, JobState::Failed);
        assert!(matches!(
            jobs.cancel(job.id),
            Err(CancelError::Finished(..))
        ));
        assert!(matches!(
            jobs.cancel(Uuid::new_v4()),
            Err(CancelError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn cancel_and_wait() {
        let (_d, jobs) = jobs();
        let jobs = Arc::new(jobs);
        let h = jobs
            .start(Uuid::new_v4(), "vm.create", None, "uid:0", specs(1))
            .unwrap();
        let id = h.id();
        let waiter = {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.wait(id, Duration::from_secs(10)).await })
        };
        jobs.cancel(id).unwrap();
        assert!(h.token().is_cancelled());
        jobs.finish(&h, Some("cancelled".into()));
        let job = waiter.await.unwrap().unwrap().unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.tasks[0].state, JobState::Cancelled);
    }

    #[tokio::test]
    async fn interrupted_jobs_fail_after_a_restart() {
        let (_d, jobs) = jobs();
        let h = jobs
            .start(Uuid::new_v4(), "vm.start", None, "uid:0", specs(1))
            .unwrap();
        assert_eq!(jobs.fail_interrupted().unwrap().len(), 1);
        let job: Job = jobs.store.get_job(h.id()).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(job.error.unwrap().contains("interrupted"));
    }
}
