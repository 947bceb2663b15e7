//! The QEMU backend: VMs created from base images, run as detached QEMU
//! processes driven over QMP, re-adopted when the daemon restarts.

/// A VM's consoles: the serial console, the display's VNC socket, screenshots.
pub mod console;
/// The serial console hub: one connection shared by every client.
pub mod console_hub;
/// Creating a VM: a request resolved into a record, the disk cloned, the row committed.
pub mod create;
/// Extra disks: attached, hot-plugged, detached.
pub mod disks;
/// Every lifecycle rule: allowed actions, the transition table, recovery.
pub mod lifecycle;
/// A live QEMU process as the engine holds it.
pub mod live;
/// Moving a VM to another agent (source) and receiving one (target).
pub mod migrate;
/// Power actions and delete as jobs.
pub mod power;
/// The VM record that is persisted, and the checks of its fields.
pub mod record;
/// Re-adoption of running guests when the daemon starts.
pub mod recover;
/// The VM engine, its registry, lookups, lists and the status writer.
pub mod registry;
/// Resource control: pinning, I/O limits, balloon, disk growth, updates.
pub mod resources;
/// A VM's QEMU at run time: start, watch, stop, reboot.
pub mod runtime;
/// Snapshot steps on the host: qemu-img offline, QEMU's jobs live.
pub mod snapshots;
/// Reusable VM defaults.
pub mod templates;

pub use lifecycle::{Action, Outcome};
pub use power::{ActionDone, Deleted};
pub use registry::{ListQuery, SortField, VmEngine, VmEntry, VmMetrics};
pub use resources::Updated;
