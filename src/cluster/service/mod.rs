//! The aggregator's HTTP edge: the agent's API, served for many nodes. Its
//! own routes (nodes, resources, cluster, merged lists, placed creates,
//! cluster jobs, merged events, users and tokens, the audit trail) answer
//! here; every other route of the agent is passed on to the node that has
//! what it names. The same middlewares as an agent's check the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter};
use axum::{Json, Router};
use serde_json::Value;
use uuid::Uuid;

use super::config::AggregatorConfig;
use super::jobs::JobStore;
use super::registry::{NodeHandle, Registry};
use super::ClusterError;
use crate::api::access::{self, AccessState};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::Path;
use crate::events::EventBus;
use crate::model::{
    Cluster, ClusterResources, Health, Node, NodeList, NodeResources, ResourceTotals,
};
use crate::store::Store;
use crate::sync::lock;

mod jobs;
mod pass_on;
mod vms;

use jobs::{cancel_job, job, job_task, job_tasks, list_jobs};
use pass_on::pass_on;
use vms::{create_vms, list_vms, migrate};

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

/// Keys of the aggregator's callers are kept here; its nodes see one
/// caller (the aggregator's token), so each key goes on as one of its own
/// per caller and key.
impl crate::api::idempotency::IdemHost for AggState {
    fn idem_store(&self) -> Arc<Store> {
        self.store.clone()
    }
    fn idem_job(
        &self,
        id: Uuid,
    ) -> impl std::future::Future<Output = Result<crate::model::Job, ApiError>> + Send {
        let agg = self.agg.clone();
        async move { agg.any_job(id).await }
    }
    fn onward_key(&self, caller: &str, key: &str) -> Option<String> {
        Some(crate::api::idempotency::derived_key(caller, key))
    }
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
    let routed = r
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::api::idempotency::middleware::<AggState>,
        ))
        .route_layer(middleware::from_fn(access::authorize))
        .fallback(not_found);
    crate::api::caller_layers(routed, access, store)
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
