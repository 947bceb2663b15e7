//! The aggregator's VM routes: the merged list, placed creates (one cluster
//! job for many) and moves between nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;
use uuid::Uuid;

use crate::api::access::Caller;
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{Path, Query};
use crate::cluster::forward;
use crate::cluster::jobs::{ClusterJob, ClusterTask, Stored};
use crate::cluster::merge::{self, VmQuery};
use crate::cluster::placement::{self, Candidate, Want};
use crate::cluster::registry::NodeHandle;
use crate::cluster::ClusterError;
use crate::model::{Accepted, CreateVmRequest, CreatedVm, JobState, NodeResources, Vm, VmList};
use crate::sync::lock;

use super::pass_on::{learn, owner};
use super::Aggregator;

pub(super) async fn list_vms(
    State(agg): State<Arc<Aggregator>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<VmList>> {
    // The agent's own reading of the query: sort, direction, filters.
    let (parsed, sort, descending) = crate::api::vms::parse_list_query(&q)?;
    let mut page = crate::api::page::request(&q, sort, descending)?;
    page.descending = descending;
    let node = parsed.node;
    if let Some(n) = &node {
        agg.node(n)?;
    }
    let filters = ["status", "name", "tag", "template"]
        .iter()
        .filter_map(|k| q.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let query = VmQuery {
        sort: sort.to_owned(),
        field: parsed.sort,
        filters,
        node,
        page,
    };
    let sort_owned = sort.to_owned();
    let token = move |k: &merge::Key| crate::api::page::token(&sort_owned, k);
    let page = merge::vms(&agg.registry, &query, &token).await;
    let (vms, next_page_token, total_count) = crate::api::page::render(page, sort);
    Ok(Json(VmList {
        vms,
        next_page_token,
        total_count,
    }))
}

/// `POST /api/v1/vms`: with `node`, passed on to that node; without,
/// placed; an array, one cluster job spread over the nodes.
pub(super) async fn create_vms(
    State(agg): State<Arc<Aggregator>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))?;
    let items: Vec<CreateVmRequest> = match &value {
        Value::Array(_) => serde_json::from_value(value.clone()),
        _ => serde_json::from_value(value.clone()).map(|r| vec![r]),
    }
    .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))?;
    if items.is_empty() || items.len() > 100 {
        return Err(ApiError::invalid("A bulk create takes 1 to 100 VMs."));
    }
    if let (false, Some(n)) = (value.is_array(), items[0].node.clone()) {
        // Named: the node decides, as if asked directly.
        let node = agg.node(&n)?;
        let mut req = items[0].clone();
        req.node = Some("self".into());
        if let Some(name) = &req.name {
            agg.reserve_name(name, &node.name, false).await?;
        }
        let body = serde_json::to_vec(&req).map_err(|e| ApiError::invalid(e.to_string()))?;
        let resp = forward::to_node(
            &node,
            Method::POST,
            "/api/v1/vms",
            &headers,
            Body::from(body),
        )
        .await;
        let ok = resp.as_ref().is_ok_and(|r| r.status().is_success());
        if let (false, Some(name)) = (ok, &req.name) {
            agg.release_name(name).await;
        }
        let resp = learn(&agg, &node, resp?).await;
        if let (true, Some(name)) = (ok, &req.name) {
            if let Some(vm) = node.vm_named(name) {
                agg.name_made(name, &node.name, vm).await;
            }
        }
        return Ok(resp);
    }
    for it in &items {
        if let Some(n) = &it.node {
            agg.node(n)?;
        }
    }
    let job = ClusterJob {
        id: Uuid::new_v4(),
        kind: "vm.create".into(),
        requested_by: caller.label.clone(),
        created_at: crate::clock::now(),
        finished: false,
        tasks: items
            .iter()
            .map(|r| ClusterTask {
                request: serde_json::to_value(r).unwrap_or_default(),
                description: r.name.clone().unwrap_or_else(|| "vm".into()),
                node: None,
                node_job: None,
                vm: None,
                placement: None,
                error: None,
                error_status: None,
            })
            .collect(),
    };
    agg.jobs.create(&agg.cfg.name, &job).await?;
    // A retry under the same Idempotency-Key meanwhile is pointed at it.
    crate::api::respond::track_id(job.id);
    if value.is_array() {
        let a = agg.clone();
        let id = job.id;
        tokio::spawn(async move { a.run_job(id).await });
        let view = agg.job_view(&job).await;
        crate::api::respond::track(&view);
        return Ok(crate::api::respond::accepted(view, None));
    }
    // One VM: placed now, so a refusal by every node is this call's answer.
    agg.run_job(job.id).await;
    let stored = agg
        .jobs
        .get(job.id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the job vanished"))?;
    let task = &stored.job.tasks[0];
    if let Some(e) = &task.error {
        // The node's own refusal keeps its status (a bad request is 400
        // there and here); no node taking it is a 409.
        let status = task
            .error_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::CONFLICT);
        let mut err = ApiError::new(status, e.clone());
        if task.node_job.is_none() && e.starts_with("No node") {
            err.reason = "INSUFFICIENT_CAPACITY";
        }
        if let Some(p) = &task.placement {
            err.details
                .push(serde_json::to_value(p).unwrap_or_default());
        }
        return Err(err);
    }
    let (Some(node), Some(vm_id)) = (task.node.clone(), task.vm) else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the create was not handed to a node",
        ));
    };
    let node = agg.node(&node)?;
    if crate::api::respond::wants_async(&headers) {
        let view = agg.job_view(&stored.job).await;
        let vm = node.guard(node.client.vm(&vm_id.to_string())).await.ok();
        return Ok(crate::api::respond::accepted(view, vm));
    }
    // Synchronous: the node's job to its end, then the VM.
    if let Some(nj) = task.node_job {
        let done = node
            .guard(node.client.wait_job(nj, |_| {}))
            .await
            .map_err(|e| ClusterError::from_client(&node.name, e))?;
        if done.state != JobState::Succeeded {
            return Err(ClusterError::Node {
                node: node.name.clone(),
                status: 500,
                body: Box::new(crate::model::ErrorBody {
                    error: crate::model::ErrorDetail {
                        code: 500,
                        status: "INTERNAL".into(),
                        message: done.error.unwrap_or_else(|| "the create failed".into()),
                        details: Vec::new(),
                        request_id: String::new(),
                    },
                }),
            }
            .into());
        }
    }
    let vm = node
        .guard(node.client.vm(&vm_id.to_string()))
        .await
        .map_err(|e| ClusterError::from_client(&node.name, e))?;
    node.note_vm(vm.clone());
    let mut resp = (
        StatusCode::CREATED,
        Json(CreatedVm {
            message: format!("VM created on node {}.", node.name),
            job_id: job.id,
            vm,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/vms/{vm_id}")) {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(resp)
}

/// `POST /api/v1/vms/{id}/migrate`: to the VM's node, with how to reach the
/// target node (its URL, token and pinned certificate) filled in.
pub(super) async fn migrate(
    State(agg): State<Arc<Aggregator>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let mut req: crate::model::MigrateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))?;
    if req.target.is_some() {
        return Err(ApiError::invalid(
            "target: the aggregator fills it in from its node list; give only node.",
        ));
    }
    let target = agg.node(&req.node)?;
    let token = target.token.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "node {} has no token in the aggregator's configuration",
                target.name
            ),
        )
    })?;
    req.target = Some(crate::model::MigrationTarget {
        url: target.url.clone(),
        token,
        fingerprint: target.fingerprint.clone(),
    });
    let path = format!("/api/v1/vms/{}", crate::client::segment(&id));
    let source = owner(&agg, "/api/v1/vms/{id}", &path, &Method::GET)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No VM {id:?} on any node.")))?;
    let body = serde_json::to_vec(&req).map_err(|e| ApiError::invalid(e.to_string()))?;
    let resp = forward::to_node(
        &source,
        Method::POST,
        &format!("{path}/migrate"),
        &headers,
        Body::from(body),
    )
    .await?;
    if resp.status() == StatusCode::OK {
        // Moved: the source has it no more, the target has it now.
        source.forget_vm(&id);
        target.poll(agg.cfg.poll_timeout).await;
    }
    Ok(learn(&agg, &source, resp).await)
}

impl Aggregator {
    /// Settles every task of a cluster job: places it, hands it to a node.
    /// Saves after each step (compare-and-swap), so another aggregator can
    /// take over where this one stopped.
    pub async fn run_job(self: &Arc<Self>, id: Uuid) {
        let Ok(Some(Stored {
            mut job,
            mut revision,
            ..
        })) = self.jobs.get(id).await
        else {
            return;
        };
        for i in 0..job.tasks.len() {
            if job.tasks[i].settled() {
                continue;
            }
            let _one_at_a_time = self.place.lock().await;
            match self.settle(&mut job, &mut revision, i).await {
                Ok(()) => {}
                Err(lost) => {
                    tracing::warn!(job = %id, "{lost}");
                    return;
                }
            }
        }
        job.finished = true;
        let _ = self.save(&job, &mut revision).await;
    }

    async fn save(&self, job: &ClusterJob, revision: &mut i64) -> Result<(), String> {
        match self.jobs.update(&self.cfg.name, job, *revision).await {
            Ok(Some(r)) => {
                *revision = r;
                Ok(())
            }
            Ok(None) => Err("another aggregator changed the job: leaving it".into()),
            Err(e) => Err(format!("cannot save the job: {e}")),
        }
    }

    async fn settle(
        &self,
        job: &mut ClusterJob,
        revision: &mut i64,
        i: usize,
    ) -> Result<(), String> {
        let req: CreateVmRequest = match serde_json::from_value(job.tasks[i].request.clone()) {
            Ok(r) => r,
            Err(e) => {
                job.tasks[i].error = Some(format!("Invalid request: {e}"));
                return self.save(job, revision).await;
            }
        };
        let want = Want {
            vcpus: req.spec.vcpus.unwrap_or(0),
            memory_mib: req.spec.memory.unwrap_or(0),
            base_image: req.spec.base_image.clone(),
            pinned_cores: req
                .spec
                .cpu_pinning
                .as_ref()
                .map(|p| p.cores.clone())
                .unwrap_or_default(),
            tags: req.spec.tags.clone().unwrap_or_default(),
            policy: req.placement.clone().unwrap_or_default(),
        };
        let mut refused: BTreeMap<String, String> = BTreeMap::new();
        loop {
            // A node chosen before a takeover is asked again first (the
            // same idempotency key gives the same answer).
            let chosen = job.tasks[i].node.clone();
            let resuming = chosen.is_some();
            let mut decision = {
                let nodes = self.registry.all();
                let views: Vec<(Arc<NodeHandle>, Option<NodeResources>, Vec<Vm>)> = nodes
                    .iter()
                    .filter(|n| req.node.as_ref().is_none_or(|want| &n.name == want))
                    .map(|n| (n.clone(), n.resources(), n.cached_vms()))
                    .collect();
                let cands: Vec<Candidate<'_>> = views
                    .iter()
                    .map(|(n, r, vms)| Candidate {
                        name: &n.name,
                        online: n.online(),
                        resources: r.as_ref(),
                        vms,
                    })
                    .collect();
                placement::rank(&want, &cands)
            };
            for c in &mut decision.candidates {
                if let Some(why) = refused.get(&c.node) {
                    c.eligible = false;
                    c.score = None;
                    c.reasons.push(why.clone());
                }
            }
            let pick = chosen.or_else(|| {
                decision
                    .candidates
                    .iter()
                    .find(|c| c.eligible)
                    .map(|c| c.node.clone())
            });
            let Some(name) = pick else {
                let why: Vec<String> = decision
                    .candidates
                    .iter()
                    .map(|c| format!("{}: {}", c.node, c.reasons.join(", ")))
                    .collect();
                job.tasks[i].placement = Some(decision);
                job.tasks[i].error = Some(format!(
                    "No node can take this VM ({}).",
                    if why.is_empty() {
                        "no nodes".into()
                    } else {
                        why.join("; ")
                    }
                ));
                return self.save(job, revision).await;
            };
            decision.node = Some(name.clone());
            job.tasks[i].node = Some(name.clone());
            job.tasks[i].placement = Some(decision);
            if let Some(vm_name) = &req.name {
                if let Err(e) = self.reserve_name(vm_name, &name, resuming).await {
                    job.tasks[i].node = None;
                    job.tasks[i].error = Some(e.to_string());
                    return self.save(job, revision).await;
                }
            }
            self.save(job, revision).await?;
            let Some(node) = self.registry.get(&name) else {
                refused.insert(name, "left the cluster".into());
                job.tasks[i].node = None;
                continue;
            };
            let mut body = req.clone();
            body.node = Some("self".into());
            body.placement = None;
            let key = job.key(i);
            let answer = node
                .guard(node.client.request_with_headers::<Accepted>(
                    Method::POST,
                    "/api/v1/vms",
                    Some(&body),
                    &[("prefer", "respond-async"), ("idempotency-key", &key)],
                ))
                .await;
            match answer {
                Ok(acc) => {
                    lock(&self.job_nodes).insert(acc.job.id, name.clone());
                    job.tasks[i].node_job = Some(acc.job.id);
                    if let Some(vm) = acc.vm {
                        job.tasks[i].vm = Some(vm.id);
                        node.note_vm(vm);
                    }
                    node.charge(want.memory_mib, u64::from(want.vcpus));
                    if let (Some(vm_name), Some(vm)) = (&req.name, job.tasks[i].vm) {
                        self.name_made(vm_name, &name, vm).await;
                    }
                    return self.save(job, revision).await;
                }
                Err(crate::client::ClientError::Api { status: 409, body })
                    if body.error.status == "INSUFFICIENT_CAPACITY" =>
                {
                    if let Some(vm_name) = &req.name {
                        self.release_name(vm_name).await;
                    }
                    refused.insert(name, format!("refused: {}", body.error.message));
                    job.tasks[i].node = None;
                }
                Err(crate::client::ClientError::Api { status, body }) => {
                    if let Some(vm_name) = &req.name {
                        self.release_name(vm_name).await;
                    }
                    job.tasks[i].error_status = Some(status);
                    job.tasks[i].error = Some(format!("node {name}: {}", body.error.message));
                    return self.save(job, revision).await;
                }
                Err(e) => {
                    if let Some(vm_name) = &req.name {
                        self.release_name(vm_name).await;
                    }
                    refused.insert(name, format!("unreachable: {e}"));
                    job.tasks[i].node = None;
                }
            }
        }
    }
}
