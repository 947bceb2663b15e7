//! A VM's live QEMU process as the engine holds it: its pid, its monitor,
//! the samples taken of it, and the signals between it and its watcher.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::error::EngineError;
use crate::engine::sample::Samples;
use crate::qemu::monitor::Monitor;
use crate::qemu::qmp::QmpError;

/// A live QEMU process of one VM.
pub struct Runtime {
    pub pid: u32,
    pub monitor: Monitor,
    /// Memory (MiB) QEMU was started with: the balloon's ceiling.
    pub boot_memory: u64,
    /// vCPU thread ids, by vCPU index.
    pub vcpu_tids: std::sync::Mutex<Vec<u32>>,
    pub samples: std::sync::Mutex<Samples>,
    /// Turns true once QEMU has exited and the watcher has settled the status.
    pub(crate) exited: watch::Receiver<bool>,
    /// We asked QEMU to quit: its exit is a stop, not a crash.
    pub(crate) expect_exit: AtomicBool,
    /// The guest shut itself down (SHUTDOWN event).
    pub(crate) shutdown_seen: AtomicBool,
}

impl Runtime {
    pub(crate) async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.exited.clone();
        let exited = tokio::time::timeout(timeout, rx.wait_for(|v| *v)).await;
        exited.is_ok()
    }
}

/// A failed QMP command, as the step it was part of.
pub(crate) fn qmp_err(step: &'static str) -> impl Fn(QmpError) -> EngineError {
    move |e| EngineError::internal(format!("QEMU {step} failed"), e)
}
