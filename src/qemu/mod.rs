//! Everything about one QEMU process: its command line, its process, its monitor.

pub mod argv;
pub mod process;
pub mod qmp;
