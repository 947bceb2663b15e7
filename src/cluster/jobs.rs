//! Cluster jobs: an aggregator's job whose tasks run on nodes (a create it
//! placed, a bulk create spread over nodes). The record holds what the
//! aggregator decided — each task's node, its placement, the node's job —
//! never the nodes' progress, which is read from the nodes' jobs when the
//! job is shown. Records live in etcd when the aggregator has it (any
//! aggregator answers for them and takes over an unfinished one whose owner
//! died), else in the aggregator's memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Job, JobState, PlacementDecision, Task};
use crate::sync::lock;

/// One task of a cluster job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterTask {
    /// The create asked for (a `CreateVmRequest`).
    pub request: serde_json::Value,
    pub description: String,
    /// The node chosen (set before the create is sent: a takeover sends it
    /// there again, under the same idempotency key).
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub node_job: Option<Uuid>,
    #[serde(default)]
    pub vm: Option<Uuid>,
    #[serde(default)]
    pub placement: Option<PlacementDecision>,
    /// Why the task could not be handed to any node.
    #[serde(default)]
    pub error: Option<String>,
    /// The status of a node's refusal, when a node refused it.
    #[serde(default)]
    pub error_status: Option<u16>,
}

impl ClusterTask {
    /// Nothing more for the aggregator to do: handed to a node, or failed.
    pub fn settled(&self) -> bool {
        self.node_job.is_some() || self.error.is_some()
    }
}

/// The record of a cluster job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterJob {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub requested_by: String,
    pub created_at: String,
    /// Every task is settled: no aggregator has anything left to do.
    pub finished: bool,
    pub tasks: Vec<ClusterTask>,
}

impl ClusterJob {
    /// The idempotency key of task `i`'s create on its node.
    pub fn key(&self, i: usize) -> String {
        format!("cluster-{}-{i}", self.id)
    }

    /// The job as the API shows it, given the nodes' jobs (by id) as far
    /// as they could be read.
    pub fn view(&self, node_jobs: &BTreeMap<Uuid, Job>) -> Job {
        let tasks: Vec<Task> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let nj = t.node_job.and_then(|id| node_jobs.get(&id));
                let (state, progress, error, finished_at, started_at) = match (nj, &t.error) {
                    (_, Some(e)) => (JobState::Failed, 100, Some(e.clone()), None, None),
                    (Some(j), _) => (
                        j.state,
                        j.progress_percent,
                        j.error.clone(),
                        j.finished_at.clone(),
                        Some(j.created_at.clone()),
                    ),
                    (None, None) if t.node_job.is_some() => {
                        (JobState::Running, 0, None, None, None)
                    }
                    (None, None) => (JobState::Queued, 0, None, None, None),
                };
                Task {
                    id: i as u32,
                    state,
                    progress_percent: progress,
                    target: t.vm.map(crate::model::Target::Vm),
                    description: t.description.clone(),
                    log: t
                        .placement
                        .as_ref()
                        .and_then(|p| p.node.as_ref())
                        .map(|n| vec![format!("placed on {n}")])
                        .unwrap_or_default(),
                    error,
                    started_at,
                    finished_at,
                    node: t.node.clone(),
                    node_job: t.node_job,
                    placement: t.placement.clone(),
                }
            })
            .collect();
        let done = |s: JobState| {
            matches!(
                s,
                JobState::Succeeded | JobState::Failed | JobState::Cancelled
            )
        };
        let all_done = self.finished && tasks.iter().all(|t| done(t.state));
        let state = if !all_done {
            if tasks.iter().any(|t| t.state != JobState::Queued) {
                JobState::Running
            } else {
                JobState::Queued
            }
        } else if tasks.iter().all(|t| t.state == JobState::Succeeded) {
            JobState::Succeeded
        } else if tasks.iter().any(|t| t.state == JobState::Failed) {
            JobState::Failed
        } else {
            JobState::Cancelled
        };
        let progress = if tasks.is_empty() {
            100
        } else {
            (tasks
                .iter()
                .map(|t| u32::from(t.progress_percent))
                .sum::<u32>()
                / tasks.len() as u32) as u8
        };
        let errors: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| format!("task {}: {e}", t.id)))
            .collect();
        Job {
            id: self.id,
            kind: self.kind.clone(),
            state,
            progress_percent: progress,
            // One VM: the job is about it, as a node's create job is.
            target: match self.tasks.as_slice() {
                [t] => t.vm.map(crate::model::Target::Vm),
                _ => None,
            },
            requested_by: self.requested_by.clone(),
            error: (!errors.is_empty() && all_done).then(|| errors.join("; ")),
            created_at: self.created_at.clone(),
            // One task: its node job's result is the job's.
            result: match self.tasks.as_slice() {
                [t] => t
                    .node_job
                    .and_then(|id| node_jobs.get(&id))
                    .and_then(|j| j.result.clone()),
                _ => None,
            },
            finished_at: all_done
                .then(|| tasks.iter().filter_map(|t| t.finished_at.clone()).max())
                .flatten(),
            tasks,
        }
    }
}

/// A stored record and its revision (for compare-and-swap updates).
#[derive(Debug, Clone)]
pub struct Stored {
    pub job: ClusterJob,
    pub owner: String,
    pub revision: i64,
}

/// Where cluster jobs are kept.
#[derive(Clone)]
pub enum JobStore {
    /// This aggregator's memory (no etcd): its jobs end with it.
    Local(Arc<Mutex<BTreeMap<Uuid, Stored>>>),
    /// etcd: every aggregator reads them, any takes over an orphan.
    Etcd(Box<super::coord::Coord>),
}

fn unavailable(e: super::coord::CoordError) -> super::ClusterError {
    super::ClusterError::Unavailable(format!("etcd: {e}"))
}

fn stored(s: super::coord::StoredJob) -> super::Result<Stored> {
    let job = serde_json::from_value(s.doc).map_err(|e| {
        super::ClusterError::Unavailable(format!("etcd holds a cluster job libgo cannot read: {e}"))
    })?;
    Ok(Stored {
        job,
        owner: s.owner,
        revision: s.mod_revision,
    })
}

fn doc(job: &ClusterJob) -> serde_json::Value {
    serde_json::to_value(job).unwrap_or_default()
}

impl Default for JobStore {
    fn default() -> Self {
        JobStore::Local(Arc::default())
    }
}

impl JobStore {
    pub async fn create(&self, owner: &str, job: &ClusterJob) -> super::Result<()> {
        match self {
            JobStore::Local(m) => {
                lock(m).insert(
                    job.id,
                    Stored {
                        job: job.clone(),
                        owner: owner.to_owned(),
                        revision: 1,
                    },
                );
                Ok(())
            }
            JobStore::Etcd(c) => c
                .create_job(job.id, owner, &doc(job))
                .await
                .map_err(unavailable),
        }
    }

    pub async fn get(&self, id: Uuid) -> super::Result<Option<Stored>> {
        match self {
            JobStore::Local(m) => Ok(lock(m).get(&id).cloned()),
            JobStore::Etcd(c) => c
                .job(id)
                .await
                .map_err(unavailable)?
                .map(stored)
                .transpose(),
        }
    }

    pub async fn list(&self) -> super::Result<Vec<Stored>> {
        match self {
            JobStore::Local(m) => Ok(lock(m).values().cloned().collect()),
            JobStore::Etcd(c) => c
                .jobs()
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(stored)
                .collect(),
        }
    }

    /// Saves `job` if the record is still at `revision`: the new revision,
    /// or none when another aggregator changed it first.
    pub async fn update(
        &self,
        owner: &str,
        job: &ClusterJob,
        revision: i64,
    ) -> super::Result<Option<i64>> {
        match self {
            JobStore::Local(m) => {
                let mut m = lock(m);
                match m.get_mut(&job.id) {
                    Some(s) if s.revision == revision => {
                        s.job = job.clone();
                        s.owner = owner.to_owned();
                        s.revision += 1;
                        Ok(Some(s.revision))
                    }
                    _ => Ok(None),
                }
            }
            JobStore::Etcd(c) => {
                if !c
                    .update_job(job.id, revision, owner, &doc(job))
                    .await
                    .map_err(unavailable)?
                {
                    return Ok(None);
                }
                Ok(c.job(job.id)
                    .await
                    .map_err(unavailable)?
                    .map(|s| s.mod_revision))
            }
        }
    }

    /// Unfinished jobs whose owner is no longer alive (never with a local
    /// store: its owner is this aggregator).
    pub async fn orphans(&self, me: &str) -> super::Result<Vec<Stored>> {
        match self {
            JobStore::Local(_) => Ok(Vec::new()),
            JobStore::Etcd(c) => c
                .orphaned_jobs(me)
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(stored)
                .collect(),
        }
    }

    /// Makes `me` the owner of a job at `revision` (a takeover): false when
    /// another aggregator was first.
    pub async fn claim(&self, id: Uuid, me: &str, revision: i64) -> super::Result<bool> {
        match self {
            JobStore::Local(_) => Ok(false),
            JobStore::Etcd(c) => c.claim_job(id, me, revision).await.map_err(unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(node_job: Option<Uuid>, error: Option<&str>) -> ClusterTask {
        ClusterTask {
            request: serde_json::json!({}),
            description: "vm".into(),
            node: Some("n1".into()),
            node_job,
            vm: None,
            placement: None,
            error: error.map(str::to_owned),
            error_status: None,
        }
    }

    fn node_job(id: Uuid, state: JobState) -> Job {
        Job {
            id,
            kind: "vm.create".into(),
            state,
            progress_percent: if state == JobState::Running { 40 } else { 100 },
            target: None,
            requested_by: "x".into(),
            error: None,
            created_at: "t0".into(),
            finished_at: (state != JobState::Running).then(|| "t1".into()),
            tasks: Vec::new(),
            result: None,
        }
    }

    #[test]
    fn the_view_follows_the_node_jobs() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut job = ClusterJob {
            id: Uuid::new_v4(),
            kind: "vm.create".into(),
            requested_by: "x".into(),
            created_at: "t".into(),
            finished: false,
            tasks: vec![task(Some(a), None), task(None, None)],
        };
        let mut nj = BTreeMap::new();
        nj.insert(a, node_job(a, JobState::Running));
        let v = job.view(&nj);
        assert_eq!(v.state, JobState::Running);
        assert_eq!(v.tasks[1].state, JobState::Queued);
        assert_eq!(v.tasks[0].node_job, Some(a));

        job.tasks[1] = task(Some(b), None);
        job.finished = true;
        nj.insert(a, node_job(a, JobState::Succeeded));
        nj.insert(b, node_job(b, JobState::Succeeded));
        let v = job.view(&nj);
        assert_eq!((v.state, v.progress_percent), (JobState::Succeeded, 100));

        job.tasks[1] = task(None, Some("no node can take it"));
        let v = job.view(&nj);
        assert_eq!(v.state, JobState::Failed);
        assert!(v.error.unwrap().contains("task 1: no node"));
    }
}
