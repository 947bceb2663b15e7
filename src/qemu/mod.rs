//! Everything about one QEMU process: its command line, its process, its monitor.

pub mod argv;
/// Extra disks: given at start, hot-plugged, hot-unplugged.
pub mod disks;
/// Typed QMP commands (one method per command) over the `qmp` transport.
pub mod monitor;
pub mod process;
pub mod qmp;
