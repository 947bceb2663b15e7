//! libgo: a node agent that runs VMs on QEMU (driven over QMP, no libvirt)
//! and serves one REST API over a Unix socket.

/// The HTTP edge: routing, access checks, error rendering, OpenAPI.
pub mod api;
/// Users, login sessions, API tokens, roles and rate limits.
pub mod auth;
/// The `libgo` command line.
pub mod cli;
/// A typed client of the REST API.
pub mod client;
/// Wall-clock times as the API shows them.
pub mod clock;
/// The aggregator: many node agents served as one API, and what several
/// of them agree on in etcd.
pub mod cluster;
/// All paths, binaries, limits and timeouts, with embedded defaults.
pub mod config;
/// The container backend: the Docker Engine API on its socket.
pub mod docker;
/// What the agent does, one engine per backend (QEMU, Docker), transport-agnostic.
pub mod engine;
/// The broadcast of lifecycle and job events.
pub mod events;
/// Effects on this machine: qemu-img, storage pools, accelerator detection.
pub mod host;
/// Jobs with tasks, progress and cancellation.
pub mod jobs;
/// Wire types shared by the API and its clients.
pub mod model;
/// Readiness, watchdog and stop notifications to systemd (`sd_notify`).
pub mod notify;
/// Keyset pagination, the one pager of every list.
pub mod page;
/// One QEMU process: argv, spawn/reattach, QMP.
pub mod qemu;
/// Undo stack so a failed operation leaves nothing behind.
pub mod rollback;
/// Durable state in SQLite.
pub mod store;
/// Lock helpers that survive a poisoned lock.
pub mod sync;
