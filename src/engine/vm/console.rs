//! A VM's consoles as the engine offers them: the serial console shared by
//! any number of clients (through `console_hub`), the display's VNC socket,
//! and screenshots. Nothing here knows HTTP.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixStream;
use uuid::Uuid;

pub use super::console_hub::ConsoleSession;
use super::registry::{VmEngine, VmEntry};
use crate::engine::error::{EngineError, Result};
use crate::model::VmStatus;

impl VmEngine {
    /// A VM with a QEMU process (running or paused), or 409.
    fn live_entry(&self, key: &str, what: &str) -> Result<Arc<VmEntry>> {
        let entry = self.find(key)?;
        let rec = entry.record();
        let live =
            matches!(rec.status, VmStatus::Running | VmStatus::Paused) && entry.runtime().is_some();
        if !live {
            return Err(EngineError::Conflict(format!(
                "VM {} is {}: its {what} is there only while it runs.",
                rec.name,
                rec.status.as_str()
            )));
        }
        Ok(entry)
    }

    /// A VM with a display (and a QEMU process), or 409.
    fn display_entry(&self, key: &str, what: &str) -> Result<Arc<VmEntry>> {
        let entry = self.find(key)?;
        let rec = entry.record();
        if !rec.display {
            return Err(EngineError::Conflict(format!(
                "VM {} has no display: create it with \"display\": true for a {what}.",
                rec.name
            )));
        }
        self.live_entry(key, what)
    }

    /// Attaches to a VM's serial console (409 unless it runs).
    pub async fn console(&self, key: &str) -> Result<ConsoleSession> {
        let entry = self.live_entry(key, "serial console")?;
        let limit = self.core().cfg.console_history_bytes;
        self.inner
            .consoles
            .attach(
                entry.id,
                self.console_socket(entry.id),
                self.console_log(entry.id),
                limit,
            )
            .await
    }

    /// Path of the VM's VNC socket while it runs with a display.
    pub fn vnc_socket(&self, id: Uuid) -> PathBuf {
        self.run_dir(id).join("vnc.sock")
    }

    /// A connection to the VM's display (RFB), for one client (409 unless
    /// it has a display and runs).
    pub async fn vnc(&self, key: &str) -> Result<UnixStream> {
        let entry = self.display_entry(key, "graphical console")?;
        UnixStream::connect(self.vnc_socket(entry.id))
            .await
            .map_err(|e| EngineError::internal("connecting to the VM's display", e))
    }

    /// A PNG of the VM's display now (409 unless it has a display and
    /// runs). QEMU writes it into the VM's run directory; it is read and
    /// removed.
    pub async fn screenshot(&self, key: &str) -> Result<Vec<u8>> {
        let entry = self.display_entry(key, "screenshot")?;
        let rt = entry.runtime().ok_or_else(|| {
            EngineError::Conflict(format!("VM {} is not running.", entry.record().name))
        })?;
        let file = self
            .run_dir(entry.id)
            .join(format!("screen-{}.png", Uuid::new_v4().simple()));
        let dumped = rt.monitor.screendump_png(&file).await;
        let read = match dumped {
            Ok(()) => tokio::fs::read(&file)
                .await
                .map_err(|e| EngineError::internal("reading the screenshot", e)),
            Err(e) => Err(EngineError::internal("QEMU screendump failed", e)),
        };
        let _ = tokio::fs::remove_file(&file).await;
        read
    }
}
