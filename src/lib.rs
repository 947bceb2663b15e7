//! libgo: a node agent that runs VMs on QEMU (driven over QMP, no libvirt)
//! and serves one REST API over a Unix socket.

/// The HTTP edge: routing, access checks, error rendering, OpenAPI.
pub mod api;
/// All paths, binaries, limits and timeouts, with embedded defaults.
pub mod config;
/// What the agent does: VMs, their lifecycle and recovery, transport-agnostic.
pub mod engine;
/// Effects on this machine: qemu-img, storage pools, accelerator detection.
pub mod host;
/// Durable records of every mutating operation.
pub mod jobs;
/// Wire types shared by the API and its clients.
pub mod model;
/// One QEMU process: argv, spawn/reattach, QMP.
pub mod qemu;
/// Undo stack so a failed operation leaves nothing behind.
pub mod rollback;
/// Durable state in SQLite.
pub mod store;
