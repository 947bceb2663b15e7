//! Jobs through the aggregator: a cluster job's view from its nodes' jobs,
//! and calls on a node's job passed to the node that has it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use uuid::Uuid;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{Path, Query};
use crate::cluster::forward;
use crate::cluster::jobs::{ClusterJob, Stored};
use crate::cluster::registry::NodeHandle;
use crate::cluster::ClusterError;
use crate::model::{Job, JobList, TaskList};
use crate::sync::lock;

use super::Aggregator;

impl Aggregator {
    /// The job as the API shows it, its nodes' jobs read now.
    pub async fn job_view(&self, job: &ClusterJob) -> Job {
        let reads = job.tasks.iter().filter_map(|t| {
            let (node, id) = (t.node.as_ref()?, t.node_job?);
            let node = self.registry.get(node)?;
            Some(async move { node.guard(node.client.job(id)).await.ok().map(|j| (id, j)) })
        });
        let node_jobs: BTreeMap<Uuid, Job> = futures::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect();
        job.view(&node_jobs)
    }

    /// A job of the cluster's own or of a node, as the API shows it.
    pub async fn any_job(&self, id: Uuid) -> Result<Job, ApiError> {
        if let Some(s) = self.jobs.get(id).await? {
            return Ok(self.job_view(&s.job).await);
        }
        let node = self.job_node(id).await?;
        Ok(node
            .guard(node.client.job(id))
            .await
            .map_err(|e| ClusterError::from_client(&node.name, e))?)
    }

    /// The node a job id belongs to: known from an answer, else the first
    /// node that has it.
    async fn job_node(&self, id: Uuid) -> Result<Arc<NodeHandle>, ClusterError> {
        if let Some(n) = lock(&self.job_nodes)
            .get(&id)
            .and_then(|n| self.registry.get(n))
        {
            return Ok(n);
        }
        let path = format!("/api/v1/jobs/{id}");
        let nodes = self.registry.online();
        let asks = nodes.iter().map(|n| {
            let path = path.clone();
            async move {
                matches!(
                    forward::call(n, Method::GET, &path, &[], None).await,
                    Ok((200, _))
                )
            }
        });
        let found = futures::future::join_all(asks).await;
        let node = nodes
            .into_iter()
            .zip(found)
            .find_map(|(n, f)| f.then_some(n))
            .ok_or_else(|| ClusterError::NotFound(format!("Job {id} not found on any node.")))?;
        lock(&self.job_nodes).insert(id, node.name.clone());
        Ok(node)
    }
}

/// A call on a node's job, passed to the node that has it.
async fn job_call(
    agg: &Aggregator,
    id: Uuid,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let node = agg.job_node(id).await?;
    let path = forward::without_node_param(uri.path(), uri.query());
    Ok(forward::to_node(&node, method, &path, headers, Body::empty()).await?)
}

fn job_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::invalid(format!("Invalid job id {s:?}: a UUID.")))
}

pub(super) async fn job(
    State(agg): State<Arc<Aggregator>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    if let Some(s) = agg.jobs.get(id).await? {
        return Ok(Json(agg.job_view(&s.job).await).into_response());
    }
    job_call(&agg, id, Method::GET, &uri, &headers).await
}

pub(super) async fn cancel_job(
    State(agg): State<Arc<Aggregator>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    if let Some(Stored {
        mut job, revision, ..
    }) = agg.jobs.get(id).await?
    {
        // Tasks not yet handed over are cancelled here; the others on
        // their nodes.
        for t in job.tasks.iter_mut().filter(|t| !t.settled()) {
            t.error = Some("cancelled before it reached a node".into());
        }
        job.finished = true;
        agg.jobs.update(&agg.cfg.name, &job, revision).await?;
        for t in &job.tasks {
            if let (Some(n), Some(nj)) = (
                t.node.as_ref().and_then(|n| agg.registry.get(n)),
                t.node_job,
            ) {
                let _ = n.guard(n.client.cancel_job(nj)).await;
            }
        }
        return Ok(Json(agg.job_view(&job).await).into_response());
    }
    job_call(&agg, id, Method::DELETE, &uri, &headers).await
}

pub(super) async fn job_tasks(
    State(agg): State<Arc<Aggregator>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    if let Some(s) = agg.jobs.get(id).await? {
        let view = agg.job_view(&s.job).await;
        return Ok(Json(TaskList {
            total_count: view.tasks.len(),
            tasks: view.tasks,
            next_page_token: None,
        })
        .into_response());
    }
    job_call(&agg, id, Method::GET, &uri, &headers).await
}

pub(super) async fn job_task(
    State(agg): State<Arc<Aggregator>>,
    Path((id, task)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    if let Some(s) = agg.jobs.get(id).await? {
        let view = agg.job_view(&s.job).await;
        let n: usize = task
            .parse()
            .map_err(|_| ApiError::invalid(format!("Invalid task id {task:?}.")))?;
        return view
            .tasks
            .get(n)
            .cloned()
            .map(|t| Json(t).into_response())
            .ok_or_else(|| ApiError::not_found(format!("Task {n} not found in job {id}.")));
    }
    job_call(&agg, id, Method::GET, &uri, &headers).await
}

/// Jobs of every node and the cluster's own, newest first.
pub(super) async fn list_jobs(
    State(agg): State<Arc<Aggregator>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<JobList>> {
    let node = q.get("node").cloned();
    if let Some(n) = &node {
        agg.node(n)?;
    }
    let state = q.get("state").cloned();
    let kind = q.get("type").cloned();
    let mut passed: Vec<(String, String)> = Vec::new();
    for k in ["state", "type"] {
        if let Some(v) = q.get(k) {
            passed.push((k.to_owned(), v.clone()));
        }
    }
    let nodes: Vec<_> = agg
        .registry
        .online()
        .into_iter()
        .filter(|n| node.as_ref().is_none_or(|w| &n.name == w))
        .collect();
    let lists = futures::future::join_all(nodes.iter().map(|n| {
        let lq = crate::client::ListQuery {
            limit: Some(200),
            filters: passed.clone(),
            ..Default::default()
        };
        async move { n.guard(n.client.jobs(&lq)).await }
    }))
    .await;
    let mut all: Vec<Job> = Vec::new();
    for (n, l) in nodes.iter().zip(lists) {
        // A node that does not answer now: its jobs are left out.
        if let Ok(l) = l {
            for j in &l.jobs {
                lock(&agg.job_nodes).insert(j.id, n.name.clone());
            }
            all.extend(l.jobs);
        }
    }
    if node.is_none() {
        for s in agg.jobs.list().await? {
            let v = agg.job_view(&s.job).await;
            let state_ok = state.as_ref().is_none_or(|st| {
                serde_json::to_value(v.state)
                    .ok()
                    .and_then(|x| x.as_str().map(str::to_owned))
                    .as_deref()
                    == Some(st)
            });
            if state_ok && kind.as_ref().is_none_or(|k| &v.kind == k) {
                all.push(v);
            }
        }
    }
    all.sort_by(|a, b| (&b.created_at, b.id).cmp(&(&a.created_at, a.id)));
    let (jobs, next_page_token, total_count) = crate::api::page::paginate(
        all,
        |j: &Job| (j.created_at.clone(), j.id),
        "-created_at",
        true,
        &q,
    )?;
    Ok(Json(JobList {
        jobs,
        next_page_token,
        total_count,
    }))
}
