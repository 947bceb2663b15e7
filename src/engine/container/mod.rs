//! The Docker backend: containers, images, networks and volumes through the
//! Docker Engine API on its socket.

/// Commands in a running container: exec, interactive exec, logs.
pub mod exec;
/// Create, actions, delete, updates, adoption; the status rules.
pub mod lifecycle;
/// Images, networks and volumes.
pub mod objects;
/// The container engine, lookups and views.
pub mod registry;
/// Statistics streams.
pub mod stats;

pub use exec::AttachedExec;
pub use lifecycle::{CAction, ContainerActionDone, ContainerOutcome};
pub use registry::ContainerEngine;
