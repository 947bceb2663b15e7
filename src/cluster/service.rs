//! The aggregator's HTTP edge: the agent's API, served for many nodes. Its
//! own routes (nodes, resources, cluster, merged lists, placed creates,
//! cluster jobs, merged events, users and tokens, the audit trail) answer
//! here; every other route of the agent is passed on to the node that has
//! what it names. The same middlewares as an agent's check the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde_json::Value;
use uuid::Uuid;

use super::config::AggregatorConfig;
use super::forward;
use super::jobs::{ClusterJob, ClusterTask, JobStore, Stored};
use super::merge::{self, SortField, VmQuery};
use super::placement::{self, Candidate, Want};
use super::registry::{NodeHandle, Registry};
use super::ClusterError;
use crate::api::access::{self, AccessState, Caller};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{Path, Query};
use crate::events::EventBus;
use crate::model::{
    Accepted, Cluster, ClusterResources, CreateVmRequest, CreatedVm, Health, Job, JobList,
    JobState, Node, NodeList, NodeResources, ResourceTotals, TaskList, Vm, VmList,
};
use crate::store::Store;
use crate::sync::lock;

/// The aggregator: its nodes, cluster jobs and merged events.
pub struct Aggregator {
    pub cfg: AggregatorConfig,
    pub registry: Arc<Registry>,
    pub jobs: JobStore,
    pub events: EventBus,
    /// `static` or `etcd`.
    pub membership: String,
    /// etcd, when the aggregator has it.
    pub coord: Option<super::coord::Coord>,
    /// Aggregators registered in etcd, as last read.
    pub peers: Mutex<Vec<String>>,
    /// One placement at a time from this aggregator (other aggregators are
    /// held off by the nodes' admission control).
    place: tokio::sync::Mutex<()>,
    /// Which node a job id belongs to, as forwarded answers showed.
    job_nodes: Mutex<HashMap<Uuid, String>>,
}

impl Aggregator {
    pub fn new(cfg: AggregatorConfig, coord: Option<super::coord::Coord>) -> Arc<Aggregator> {
        let (jobs, membership) = match &coord {
            Some(c) => (JobStore::Etcd(Box::new(c.clone())), "etcd"),
            None => (JobStore::default(), "static"),
        };
        Arc::new(Aggregator {
            coord,
            registry: Arc::new(Registry::new(cfg.poll_interval, cfg.poll_timeout)),
            cfg,
            jobs,
            events: EventBus::new(1024),
            membership: membership.to_owned(),
            peers: Mutex::new(Vec::new()),
            place: tokio::sync::Mutex::new(()),
            job_nodes: Mutex::new(HashMap::new()),
        })
    }

    /// Adds a node: polled, and its events relayed.
    pub async fn add_node(self: &Arc<Self>, node: NodeHandle) {
        let node = self.registry.add(node).await;
        let bus = self.events.clone();
        let interval = self.cfg.poll_interval;
        let n = node.clone();
        node.attach(tokio::spawn(relay_events(n, bus, interval)));
    }

    pub(crate) fn node(&self, name: &str) -> Result<Arc<NodeHandle>, ClusterError> {
        self.registry.get(name).ok_or_else(|| {
            ClusterError::NotFound(format!("No node named {name:?} in the cluster."))
        })
    }
}

/// Relays a node's events onto the aggregator's bus, resuming after the
/// last one seen whenever the stream breaks.
async fn relay_events(node: Arc<NodeHandle>, bus: EventBus, interval: Duration) {
    let mut since: Option<u64> = None;
    loop {
        let path = match since {
            Some(s) => format!("/api/v1/events?since={s}"),
            None => "/api/v1/events".to_owned(),
        };
        if let Ok(ws) = node.guard(node.client.websocket(&path)).await {
            let mut stream = crate::client::EventStream::from_socket(ws);
            // A node marked unreachable: its stream is dropped, and taken
            // up again (from the last seq) once it answers.
            while let Some(Some(Ok(mut ev))) = tokio::select! {
                ev = stream.next() => Some(ev),
                _ = node.gone() => None,
            } {
                since = Some(ev.seq);
                if ev.node.is_none() {
                    ev.node = Some(node.name.clone());
                }
                bus.relay(ev);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// What every handler may reach.
#[derive(Clone)]
pub struct AggState {
    pub agg: Arc<Aggregator>,
    pub access: Arc<AccessState>,
    pub store: Arc<Store>,
}

impl axum::extract::FromRef<AggState> for Arc<AccessState> {
    fn from_ref(s: &AggState) -> Arc<AccessState> {
        s.access.clone()
    }
}
impl axum::extract::FromRef<AggState> for Arc<Store> {
    fn from_ref(s: &AggState) -> Arc<Store> {
        s.store.clone()
    }
}
impl axum::extract::FromRef<AggState> for EventBus {
    fn from_ref(s: &AggState) -> EventBus {
        s.agg.events.clone()
    }
}
impl axum::extract::FromRef<AggState> for Arc<Aggregator> {
    fn from_ref(s: &AggState) -> Arc<Aggregator> {
        s.agg.clone()
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Invalid(m) => ApiError::invalid(m),
            ClusterError::NotFound(m) => ApiError::not_found(m),
            ClusterError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            ClusterError::Capacity(m) => {
                let mut e = ApiError::new(StatusCode::CONFLICT, m);
                e.reason = "INSUFFICIENT_CAPACITY";
                e
            }
            ClusterError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ClusterError::Node { node, status, body } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut e = ApiError::new(status, format!("node {node}: {}", body.error.message));
                e.details = body.error.details;
                e
            }
        }
    }
}

/// The aggregator's router: its own routes, and every other route of the
/// agent's API passed on.
pub fn router(agg: Arc<Aggregator>, access: Arc<AccessState>, store: Arc<Store>) -> Router {
    use crate::api::{audit, events, users};
    let own: Vec<(&str, &str)> = vec![
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/login"),
        ("POST", "/api/v1/logout"),
        ("GET", "/api/v1/whoami"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("GET", "/api/v1/users/{username}"),
        ("PATCH", "/api/v1/users/{username}"),
        ("DELETE", "/api/v1/users/{username}"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/tokens/{id}"),
        ("DELETE", "/api/v1/tokens/{id}"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/nodes"),
        ("GET", "/api/v1/nodes/{node}"),
        ("GET", "/api/v1/nodes/{node}/resources"),
        ("GET", "/api/v1/resources"),
        ("GET", "/api/v1/cluster"),
        ("GET", "/api/v1/vms"),
        ("POST", "/api/v1/vms"),
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/{id}"),
        ("DELETE", "/api/v1/jobs/{id}"),
        ("GET", "/api/v1/jobs/{id}/tasks"),
        ("GET", "/api/v1/jobs/{id}/tasks/{task_id}"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/vms/{id}/migrate"),
    ];
    let mut r = Router::<AggState>::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/api/v1/login", axum::routing::post(users::login))
        .route("/api/v1/logout", axum::routing::post(users::logout))
        .route("/api/v1/whoami", get(users::whoami))
        .route(
            "/api/v1/users",
            get(users::list_users).post(users::create_user),
        )
        .route(
            "/api/v1/users/{username}",
            get(users::get_user)
                .patch(users::patch_user)
                .delete(users::delete_user),
        )
        .route(
            "/api/v1/tokens",
            get(users::list_tokens).post(users::create_token),
        )
        .route(
            "/api/v1/tokens/{id}",
            get(users::get_token).delete(users::revoke_token),
        )
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{node}", get(node))
        .route("/api/v1/nodes/{node}/resources", get(node_resources))
        .route("/api/v1/resources", get(resources))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/vms/{id}/migrate", axum::routing::post(migrate))
        .route("/api/v1/jobs/{id}", get(job).delete(cancel_job))
        .route("/api/v1/jobs/{id}/tasks", get(job_tasks))
        .route("/api/v1/jobs/{id}/tasks/{task_id}", get(job_task));
    // The rest of the agent's routes, passed on by their shape.
    let mut rest: BTreeMap<String, Vec<Method>> = BTreeMap::new();
    for (m, p) in crate::api::route_table() {
        if own.iter().any(|(om, op)| *om == m && *op == p) {
            continue;
        }
        if let Ok(method) = m.parse::<Method>() {
            rest.entry(p).or_default().push(method);
        }
    }
    for (path, methods) in rest {
        let mut mr = axum::routing::MethodRouter::<AggState>::new();
        for m in methods {
            if let Ok(f) = MethodFilter::try_from(m) {
                mr = mr.merge(on(f, pass_on));
            }
        }
        // The agent's list and create of VMs and list of jobs are ours.
        match path.as_str() {
            "/api/v1/vms" => mr = mr.merge(get(list_vms).post(create_vms)),
            "/api/v1/jobs" => mr = mr.merge(get(list_jobs)),
            _ => {}
        }
        r = r.route(&path, mr);
    }
    let state = AggState {
        agg,
        access: access.clone(),
        store: store.clone(),
    };
    r.route_layer(middleware::from_fn(access::authorize))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            access.clone(),
            access::rate_limit,
        ))
        .layer(middleware::from_fn_with_state(access, access::authenticate))
        .layer(middleware::from_fn_with_state(
            store,
            crate::api::audit::middleware,
        ))
        .layer(middleware::from_fn(crate::api::request_id))
        .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_UPLOAD))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "No such endpoint: {} {}",
        req.method(),
        req.uri().path().chars().take(256).collect::<String>()
    ))
}

async fn health(State(agg): State<Arc<Aggregator>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: agg.cfg.name.clone(),
        accel: String::new(),
        vms: agg.registry.all().iter().map(|n| n.view().vms).sum(),
    })
}

async fn openapi(State(agg): State<Arc<Aggregator>>) -> Json<Value> {
    let cores = agg
        .registry
        .all()
        .iter()
        .filter_map(|n| n.resources().map(|r| r.host.cpus))
        .max()
        .unwrap_or(1);
    let mut doc = crate::api::openapi::document_for(&crate::api::openapi::Limits {
        node: None,
        online_cores: (0..cores).collect(),
        ..crate::api::openapi::Limits::of(&crate::config::Config::default())
    });
    // The aggregator fills in a move's target from its node list.
    if let Some(props) = doc
        .pointer_mut("/components/schemas/MigrateRequest/properties")
        .and_then(Value::as_object_mut)
    {
        props.remove("target");
    }
    if let Some(schema) = doc.pointer_mut("/components/schemas/MigrateRequest") {
        if schema.get("example").is_some() {
            schema["example"] = serde_json::json!({"node": "node2"});
        }
    }
    Json(doc)
}

/// Prometheus text: each node's state as the aggregator sees it.
async fn metrics(State(agg): State<Arc<Aggregator>>) -> Response {
    let mut out = String::from(
        "# HELP libgo_aggregator_node_up Whether the node answered its last poll.\n# TYPE libgo_aggregator_node_up gauge\n",
    );
    for n in agg.registry.all() {
        let v = n.view();
        out.push_str(&format!(
            "libgo_aggregator_node_up{{node=\"{}\"}} {}\n",
            v.name,
            u8::from(v.status == crate::model::NodeStatus::Online)
        ));
    }
    out.push_str("# HELP libgo_aggregator_node_vms VMs on the node as last polled.\n# TYPE libgo_aggregator_node_vms gauge\n");
    for n in agg.registry.all() {
        let v = n.view();
        out.push_str(&format!(
            "libgo_aggregator_node_vms{{node=\"{}\"}} {}\n",
            v.name, v.vms
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

// --- Nodes ----------------------------------------------------------------

async fn nodes(State(agg): State<Arc<Aggregator>>) -> Json<NodeList> {
    let nodes: Vec<Node> = agg.registry.all().iter().map(|n| n.view()).collect();
    Json(NodeList {
        total_count: nodes.len(),
        nodes,
        next_page_token: None,
    })
}

async fn node(
    State(agg): State<Arc<Aggregator>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Node>> {
    Ok(Json(agg.node(&name)?.view()))
}

async fn node_resources(
    State(agg): State<Arc<Aggregator>>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeResources>> {
    agg.node(&name)?.resources().map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {name} has not answered yet: its resources are not known"),
        )
    })
}

fn online_resources(agg: &Aggregator) -> Vec<NodeResources> {
    agg.registry
        .online()
        .iter()
        .filter_map(|n| n.resources())
        .collect()
}

async fn resources(State(agg): State<Arc<Aggregator>>) -> Json<ClusterResources> {
    let nodes = online_resources(&agg);
    Json(ClusterResources {
        totals: ResourceTotals::of(&nodes),
        nodes,
    })
}

async fn cluster(State(agg): State<Arc<Aggregator>>) -> Json<Cluster> {
    let all = agg.registry.all();
    let online = all.iter().filter(|n| n.online()).count();
    Json(Cluster {
        role: "aggregator".into(),
        name: agg.cfg.name.clone(),
        nodes: all.len(),
        online,
        unreachable: all.len() - online,
        membership: agg.membership.clone(),
        aggregators: lock(&agg.peers).clone(),
        poll_interval_secs: agg.cfg.poll_interval.as_secs_f64(),
        totals: ResourceTotals::of(&online_resources(&agg)),
    })
}

// --- VMs -------------------------------------------------------------------

async fn list_vms(
    State(agg): State<Arc<Aggregator>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<VmList>> {
    let sort = q.get("sort").map(String::as_str).unwrap_or("created_at");
    let (field, descending) = match sort {
        "created_at" => (SortField::CreatedAt, false),
        "-created_at" => (SortField::CreatedAt, true),
        "name" => (SortField::Name, false),
        "-name" => (SortField::Name, true),
        _ => {
            return Err(ApiError::invalid(format!(
                "Invalid sort {sort:?}: use name, -name, created_at or -created_at."
            )))
        }
    };
    let mut page = crate::api::page::request(&q, sort, descending)?;
    page.descending = descending;
    if let Some(s) = q.get("status") {
        if crate::model::VmStatus::parse(s).is_none() {
            return Err(ApiError::invalid(format!("Invalid status filter {s:?}.")));
        }
    }
    let node = q.get("node").cloned();
    if let Some(n) = &node {
        agg.node(n)?;
    }
    let filters = ["status", "name", "tag", "template"]
        .iter()
        .filter_map(|k| q.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let query = VmQuery {
        sort: sort.to_owned(),
        field,
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
async fn create_vms(
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
async fn migrate(
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

/// Notes what a forwarded answer tells: a job's node, a VM's node.
async fn learn(agg: &Aggregator, node: &NodeHandle, resp: Response) -> Response {
    // Only small JSON answers say anything worth noting; streams (logs,
    // downloads, event streams) pass untouched.
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let small = resp
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= 1 << 20);
    if !resp.status().is_success() || !json || !small {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        if let Some(id) = v
            .pointer("/job/id")
            .or_else(|| v.get("job_id"))
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            lock(&agg.job_nodes).insert(id, node.name.clone());
        }
        let vm = v.get("vm").cloned().unwrap_or(v.clone());
        if let Ok(vm) = serde_json::from_value::<Vm>(vm) {
            node.note_vm(vm);
        }
    }
    Response::from_parts(parts, Body::from(bytes))
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

// --- Jobs ------------------------------------------------------------------

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

async fn job(
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

async fn cancel_job(
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

async fn job_tasks(
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

async fn job_task(
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
async fn list_jobs(
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

// --- Everything else: passed on -------------------------------------------

/// Finds the node a call is about and passes the call on.
async fn pass_on(
    State(agg): State<Arc<Aggregator>>,
    matched: MatchedPath,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Response> {
    let (mut parts, body) = req.into_parts();
    let template = matched.as_str().to_owned();
    let path = forward::without_node_param(parts.uri.path(), parts.uri.query());
    let node = match q.get("node") {
        Some(n) => Some(agg.node(n)?),
        None => owner(&agg, &template, parts.uri.path(), &parts.method).await?,
    };
    let Some(node) = node else {
        return merged_list(&agg, parts.uri.path(), &q).await;
    };
    // A WebSocket (a console, an interactive exec): one to the node, and
    // messages relayed both ways until either side closes.
    let upgrade = parts
        .headers
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        use axum::extract::FromRequestParts;
        let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::invalid(format!("a WebSocket upgrade: {e}")))?;
        let upstream = node
            .guard(node.client.websocket(&path))
            .await
            .map_err(|e| ClusterError::from_client(&node.name, e))?;
        return Ok(ws.on_upgrade(move |socket| relay_ws(socket, upstream)));
    }
    // The name of a VM about to be deleted, to free it cluster-wide.
    let deleting = (parts.method == Method::DELETE && template == "/api/v1/vms/{id}")
        .then(|| {
            parts
                .uri
                .path()
                .rsplit('/')
                .next()
                .and_then(|id| node.vm_name(id))
        })
        .flatten();
    let resp = forward::to_node(&node, parts.method.clone(), &path, &parts.headers, body).await?;
    if let (true, Some(name)) = (resp.status().is_success(), &deleting) {
        agg.release_name(name).await;
    }
    if access::is_mutating(&parts.method) && resp.status().is_success() {
        node.refresh_resources(agg.cfg.poll_timeout).await;
    }
    if parts.method == Method::DELETE
        && resp.status().is_success()
        && template == "/api/v1/vms/{id}"
    {
        if let Some(id) = parts.uri.path().rsplit('/').next() {
            node.forget_vm(id);
        }
    }
    Ok(learn(&agg, &node, resp).await)
}

/// Relays messages between a caller's WebSocket and a node's.
async fn relay_ws(caller: axum::extract::ws::WebSocket, node: crate::client::Socket) {
    use axum::extract::ws::Message as A;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as T;
    let (mut to_caller, mut from_caller) = caller.split();
    let (mut to_node, mut from_node) = node.split();
    let up = async {
        while let Some(Ok(m)) = from_caller.next().await {
            let m = match m {
                A::Text(t) => T::text(t.as_str()),
                A::Binary(b) => T::binary(b),
                A::Ping(b) => T::Ping(b),
                A::Pong(b) => T::Pong(b),
                A::Close(_) => break,
            };
            if to_node.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_node.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = from_node.next().await {
            let m = match m {
                T::Text(t) => A::Text(t.as_str().into()),
                T::Binary(b) => A::Binary(b),
                T::Ping(b) => A::Ping(b),
                T::Pong(b) => A::Pong(b),
                T::Close(f) => {
                    let frame = f.map(|f| axum::extract::ws::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = to_caller.send(A::Close(frame)).await;
                    break;
                }
                T::Frame(_) => continue,
            };
            if to_caller.send(m).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// The node a call names; none for a list of a whole collection (merged).
async fn owner(
    agg: &Aggregator,
    template: &str,
    path: &str,
    method: &Method,
) -> Result<Option<Arc<NodeHandle>>, ClusterError> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let tsegs: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    // `/api/v1/{collection}`: a list is merged; anything else goes to the
    // only node, or must name one.
    if tsegs.len() <= 3 || !tsegs[3].starts_with('{') {
        if tsegs.len() <= 3 && *method == Method::GET {
            return Ok(None);
        }
        let nodes = agg.registry.all();
        return match nodes.as_slice() {
            [one] => Ok(Some(one.clone())),
            _ => Err(ClusterError::Invalid(format!(
                "{method} {path} acts on one node: name it with ?node= (nodes: {}).",
                nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        };
    }
    let (coll, id) = (segs[2], segs[3]);
    if coll == "vms" {
        let known = agg.registry.owner_of(id);
        if known.len() == 1 {
            return Ok(known.into_iter().next());
        }
    }
    // Ask every node that answers whether it has it.
    let probe = format!("/api/v1/{coll}/{id}");
    let nodes = agg.registry.online();
    let found = futures::future::join_all(nodes.iter().map(|n| {
        let probe = probe.clone();
        async move {
            matches!(
                forward::call(n, Method::GET, &probe, &[], None).await,
                Ok((200, _))
            )
        }
    }))
    .await;
    let have: Vec<Arc<NodeHandle>> = nodes
        .into_iter()
        .zip(found)
        .filter_map(|(n, f)| f.then_some(n))
        .collect();
    match have.len() {
        1 => Ok(have.into_iter().next()),
        0 => {
            let down: Vec<String> = agg
                .registry
                .all()
                .iter()
                .filter(|n| !n.online())
                .map(|n| n.name.clone())
                .collect();
            if coll == "vms" && agg.registry.owner_of(id).iter().any(|n| !n.online()) {
                return Err(ClusterError::Unavailable(format!(
                    "{id} is on a node that does not answer ({}).",
                    down.join(", ")
                )));
            }
            Err(ClusterError::NotFound(format!(
                "No {} named {id:?} on any node{}.",
                coll.trim_end_matches('s'),
                if down.is_empty() {
                    String::new()
                } else {
                    format!(" that answers (unreachable: {})", down.join(", "))
                }
            )))
        }
        _ => Err(ClusterError::Conflict(format!(
            "{id:?} exists on several nodes ({}): name one with ?node=.",
            have.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A list of a collection other than VMs and jobs: every node's whole list
/// (each item with its `node`), paged here by (node, id or name).
async fn merged_list(
    agg: &Aggregator,
    path: &str,
    q: &HashMap<String, String>,
) -> ApiResult<Response> {
    let passed: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "node" | "limit" | "page_token" | "pageToken"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let nodes = agg.registry.online();
    let answers = futures::future::join_all(nodes.iter().map(|n| {
        let passed = passed.clone();
        async move { whole_list(n, path, passed).await }
    }))
    .await;
    let mut field: Option<String> = None;
    let mut items: Vec<Value> = Vec::new();
    for (n, a) in nodes.iter().zip(answers) {
        let (f, list) = a?;
        field = field.or(f);
        for mut it in list {
            if let Some(o) = it.as_object_mut() {
                o.entry("node")
                    .or_insert_with(|| Value::from(n.name.clone()));
            }
            items.push(it);
        }
    }
    let key = |v: &Value| -> (String, String) {
        let node = v
            .get("node")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let id = ["id", "name"]
            .iter()
            .find_map(|k| {
                v.get(*k)
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            })
            .unwrap_or_default();
        (node, id)
    };
    items.sort_by_key(key);
    let (page, next, total) = crate::api::page::paginate(items, key, "node", false, q)?;
    let mut out = serde_json::Map::new();
    out.insert(field.unwrap_or_else(|| "items".into()), Value::from(page));
    if let Some(t) = next {
        out.insert("next_page_token".into(), Value::from(t));
    }
    out.insert("total_count".into(), Value::from(total));
    Ok(Json(Value::Object(out)).into_response())
}

/// A node's whole list at `path`: the name of its items' field and the
/// items, page after page.
async fn whole_list(
    node: &NodeHandle,
    path: &str,
    passed: Vec<(String, String)>,
) -> Result<(Option<String>, Vec<Value>), ApiError> {
    let mut items = Vec::new();
    let mut field = None;
    let mut token: Option<String> = None;
    for _ in 0..50 {
        let mut lq = crate::client::ListQuery {
            limit: Some(200),
            filters: passed.clone(),
            ..Default::default()
        };
        lq.page_token = token.take();
        let url = format!("{path}{}", lq.to_query());
        let (status, bytes) = forward::call(node, Method::GET, &url, &[], None).await?;
        if status != 200 {
            let e = crate::client::ClientError::from_answer(status, &bytes);
            return Err(ClusterError::from_client(&node.name, e).into());
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let Some(obj) = v.as_object() else {
            return Ok((field, items));
        };
        if let Some((k, arr)) = obj.iter().find(|(_, v)| v.is_array()) {
            field = Some(k.clone());
            items.extend(arr.as_array().cloned().unwrap_or_default());
        }
        match obj.get("next_page_token").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok((field, items)),
        }
    }
    Ok((field, items))
}
