//! Wire types of the REST API: what clients send and receive.
//!
//! Request types reject unknown fields so a typo never silently does nothing.
//! Shared by the API layer, the engine's inputs and the test clients.

mod access;
mod capacity;
mod cloud_init;
mod cluster;
mod common;
mod container;
mod disk;
mod group;
mod job;
mod migration;
mod snapshot;
mod storage;
mod target;
mod template;
mod vm;

pub use access::*;
pub use capacity::*;
pub use cloud_init::*;
pub use cluster::*;
pub use common::*;
pub use container::*;
pub use disk::*;
pub use group::*;
pub use job::*;
pub use migration::*;
pub use snapshot::*;
pub use storage::*;
pub use target::Target;
pub use template::*;
pub use vm::*;
