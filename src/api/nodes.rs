//! `/api/v1/nodes`, `/resources`, `/cluster` on an agent: the agent speaks
//! of itself as a cluster of one, in the shape the aggregator uses for many
//! nodes, so a client never cares which of the two it talks to.

use axum::extract::State;
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::extract::Path;
use crate::engine::Agent;
use crate::model::{
    Cluster, ClusterResources, ErrorBody, Node, NodeList, NodeResources, NodeStatus, ResourceTotals,
};

/// `{node}` must be this agent's name or `self`.
fn check_node(agent: &Agent, node: &str) -> ApiResult<()> {
    if node == "self" || node == agent.node() {
        return Ok(());
    }
    Err(ApiError::not_found(format!(
        "Node not found: {node:?}; this agent is node {} (or `self`).",
        agent.node()
    )))
}

async fn this_node(agent: &Agent) -> Node {
    Node {
        name: agent.node().to_owned(),
        status: NodeStatus::Online,
        last_seen: crate::clock::now(),
        url: None,
        version: env!("CARGO_PKG_VERSION").into(),
        accel: agent.vms.accel().as_str().into(),
        vms: agent.vms.count(),
        error: None,
        resources: Some(agent.node_resources().await),
    }
}

/// List nodes.
///
/// On an agent, the one node it is, online, with its capacity. The aggregator lists every
/// node it knows, `online` or `unreachable`.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "system",
    responses((status = 200, body = NodeList)))]
pub async fn list(State(agent): State<Agent>) -> Json<NodeList> {
    Json(NodeList {
        nodes: vec![this_node(&agent).await],
        next_page_token: None,
        total_count: 1,
    })
}

/// Get a node.
///
/// Its status, when it last answered, its version, accelerator, VM count and capacity. An
/// agent knows only itself (its name or `self`): 404 for any other.
#[utoipa::path(get, path = "/api/v1/nodes/{node}", tag = "system",
    params(("node" = String, Path, description = "a node name, or `self` on an agent")),
    responses((status = 200, body = Node),
              (status = 404, body = ErrorBody, description = "no such node")))]
pub async fn get(State(agent): State<Agent>, Path(node): Path<String>) -> ApiResult<Json<Node>> {
    check_node(&agent, &node)?;
    Ok(Json(this_node(&agent).await))
}

/// Get a node's resources.
///
/// What the host has, what admission control allows (`[capacity]`), what guests with a process
/// hold, what is left for a start or a create, and each storage pool's size, allocation and
/// use. 404 for another node's name.
#[utoipa::path(get, path = "/api/v1/nodes/{node}/resources", tag = "system",
    params(("node" = String, Path, description = "this agent's node name, or `self`")),
    responses((status = 200, body = NodeResources),
              (status = 404, body = ErrorBody, description = "another node")))]
pub async fn resources(
    State(agent): State<Agent>,
    Path(node): Path<String>,
) -> ApiResult<Json<NodeResources>> {
    check_node(&agent, &node)?;
    Ok(Json(agent.node_resources().await))
}

/// Get the cluster's resources.
///
/// The sums over the nodes (one on an agent) and each node's figures.
#[utoipa::path(get, path = "/api/v1/resources", tag = "system",
    responses((status = 200, body = ClusterResources)))]
pub async fn totals(State(agent): State<Agent>) -> Json<ClusterResources> {
    let nodes = vec![agent.node_resources().await];
    Json(ClusterResources {
        totals: ResourceTotals::of(&nodes),
        nodes,
    })
}

/// Describe the cluster.
///
/// Who answers (`node` for an agent: a cluster of one; `aggregator`), how many nodes are
/// online and unreachable, how membership is known, and the totals.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "system",
    responses((status = 200, body = Cluster)))]
pub async fn cluster(State(agent): State<Agent>) -> Json<Cluster> {
    let r = agent.node_resources().await;
    Json(Cluster {
        role: "node".into(),
        name: agent.node().to_owned(),
        nodes: 1,
        online: 1,
        unreachable: 0,
        membership: "self".into(),
        aggregators: Vec::new(),
        poll_interval_secs: 0.0,
        totals: ResourceTotals::of([&r]),
    })
}
