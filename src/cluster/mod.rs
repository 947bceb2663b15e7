//! The aggregator: many node agents served as one. It keeps no truth of its
//! own about guests: nodes are polled (`registry`), lists are merged from
//! their answers (`merge`), calls on one object are passed on to the node
//! that has it (`forward`), creates are placed by filters and scores
//! (`placement`), and what several aggregators must agree on (membership,
//! cluster-wide names, cluster jobs) lives in etcd (`etcd`, `coord`).

pub mod config;
pub mod coord;
pub mod etcd;
pub mod forward;
pub mod jobs;
pub mod membership;
pub mod merge;
pub mod placement;
pub mod registry;
pub mod service;

/// What can go wrong in the aggregator, before or beside a node's own
/// answer (which is passed on as it came).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// No node can take it: every candidate was filtered out or refused.
    #[error("{0}")]
    Capacity(String),
    /// A node (or etcd) did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// A node's error answer to a call the aggregator made for the caller.
    #[error("node {node}: {}", body.error.message)]
    Node {
        node: String,
        status: u16,
        body: Box<crate::model::ErrorBody>,
    },
}

impl ClusterError {
    pub fn unreachable(node: &str, e: crate::client::ClientError) -> ClusterError {
        ClusterError::Unavailable(format!("node {node} is unreachable: {e}"))
    }

    /// A client error of a call to `node`: its answer, or unreachable.
    pub fn from_client(node: &str, e: crate::client::ClientError) -> ClusterError {
        match e {
            crate::client::ClientError::Api { status, body } => ClusterError::Node {
                node: node.to_owned(),
                status,
                body: Box::new(body),
            },
            e => ClusterError::unreachable(node, e),
        }
    }
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
