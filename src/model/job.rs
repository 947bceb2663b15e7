//! Jobs, their tasks, and the events the `/api/v1/events` stream carries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Target;

/// State of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// A record of one mutating operation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// What was asked: `vm.create`, `vm.start`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub state: JobState,
    pub progress_percent: u8,
    /// The resource the job acts on (`/api/v1/vms/{id}`); none for bulk jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub target: Option<Target>,
    /// Who asked (`uid:0`).
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What a finished job produced, for the jobs that report figures
    /// (`vm.migrate`: a `MigrationResult`; `vm.migrate_in`: a
    /// `PreparedMigration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// One per item of the job (one for a single-resource call).
    #[serde(default)]
    pub tasks: Vec<Task>,
}

/// One item of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Index of the task in its job, from 0.
    pub id: u32,
    pub state: JobState,
    pub progress_percent: u8,
    /// The resource the task acts on, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub target: Option<Target>,
    /// What the task is about (a VM name, an id).
    pub description: String,
    /// The last log lines of the task (at most 100).
    #[serde(default)]
    pub log: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// On an aggregator's job: the node the task runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// On an aggregator's job: the node's own job for the task
    /// (`/api/v1/jobs/{node_job}`, reachable through the aggregator too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_job: Option<Uuid>,
    /// On an aggregator's job: how the node was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<super::PlacementDecision>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

/// A page of tasks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

/// `DELETE /jobs` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCancelJobs {
    #[serde(alias = "jobIds")]
    pub job_ids: Vec<Uuid>,
}

/// An event on the `/api/v1/events` stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventMessage {
    /// `vm.created`, `vm.starting`, `vm.started`, `vm.stopping`, `vm.stopped`,
    /// `vm.paused`, `vm.resumed`, `vm.rebooting`, `vm.crashed`, `vm.error`,
    /// `vm.updated`, `vm.deleted`, `job.created`, `job.progress`, `job.finished`,
    /// `template.created`, `template.updated`, `template.deleted`;
    /// `events.lost` (resource `/api/v1/events`) on a resumed stream.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource's path (`/api/v1/vms/{id}`).
    #[schema(value_type = String)]
    pub resource: Target,
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<u8>,
    pub at: String,
    /// Strictly increasing per event of this agent, also across restarts: a
    /// run starts at its start time in microseconds since the epoch and adds
    /// one per event. A stream opened with `?since=SEQ` first replays the
    /// kept events after SEQ (an `events.lost` message, whose `seq` is SEQ,
    /// comes first when some are no longer kept).
    pub seq: u64,
    /// The node the event happened on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}
