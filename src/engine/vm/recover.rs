//! When the daemon starts: settle what a stop of the daemon left half-done
//! and re-adopt every QEMU that still runs (pidfile, `/proc/<pid>/cmdline`
//! carries the VM's UUID, QMP), each by the rules in `lifecycle::recover`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::lifecycle::{self, Recovery, VmEvent};
use super::record::VmRecord;
use super::registry::{VmEngine, VmEntry};
use crate::model::VmStatus;
use crate::qemu::monitor::{Monitor, RunState, ShutdownAction};
use crate::qemu::process;

impl VmEngine {
    pub(crate) async fn recover(&self) -> anyhow::Result<()> {
        let records: Vec<VmRecord> = self.core().store.load_vms()?;
        let mut adopt = Vec::new();
        for rec in records {
            let files = self.run_files(rec.id);
            let pid =
                process::read_pidfile(&files.pidfile).filter(|p| process::is_qemu_of(*p, rec.id));
            if pid.is_none() && rec.status == VmStatus::Starting {
                self.kill_unrecorded_launch(&rec, &files.pidfile).await;
            }
            match lifecycle::recover(rec.status, pid.is_some(), false) {
                Recovery::Remove => {
                    // A create never reported done, or a delete asked for.
                    if let Some(pid) = pid {
                        let _ = process::signal(pid, Signal::SIGKILL);
                        process::wait_gone(pid, Duration::from_secs(10)).await;
                    }
                    // The qemu-nbd of a VM arriving cold from another node.
                    let nbd = super::migrate::nbd_pidfile(&self.state_dir(rec.id));
                    if let Some(pid) =
                        process::read_pidfile(&nbd).filter(|p| process::is_qemu_of(*p, rec.id))
                    {
                        let _ = process::signal(pid, Signal::SIGKILL);
                        process::wait_gone(pid, Duration::from_secs(10)).await;
                    }
                    self.remove_cgroup(rec.id).await;
                    self.remove_files(rec.id)?;
                    super::power::remove_owned_volumes(&rec);
                    self.core().store.delete_vm(rec.id)?;
                    tracing::info!(vm_id = %rec.id, status = rec.status.as_str(), "finished an interrupted create/delete");
                    continue;
                }
                Recovery::Adopt | Recovery::Discard(_) => {
                    let entry = VmEntry::new(rec.clone());
                    self.insert(entry.clone());
                    if let Some(pid) = pid {
                        adopt.push((entry, pid, files.qmp));
                    }
                }
                Recovery::Settle(event) => {
                    let entry = VmEntry::new(rec.clone());
                    self.insert(entry.clone());
                    for f in [&files.pidfile, &files.qmp, &files.console] {
                        let _ = std::fs::remove_file(f);
                    }
                    // No QEMU: its cgroup (made by a start, or left by a
                    // QEMU that exited meanwhile) has nothing to hold.
                    self.remove_cgroup(rec.id).await;
                    if let Some(event) = event {
                        let reason = match event {
                            VmEvent::Crash => "QEMU exited while libgod was not running",
                            VmEvent::StartFailed => "start interrupted by a restart of libgod",
                            _ => "",
                        };
                        let reason = (!reason.is_empty()).then(|| reason.to_owned());
                        self.settle(&entry, event, reason);
                    }
                }
            }
        }
        let t = std::time::Instant::now();
        let n = adopt.len();
        futures::future::join_all(
            adopt
                .into_iter()
                .map(|(e, pid, qmp)| self.adopt(e, pid, qmp)),
        )
        .await;
        // Disk attaches and detaches cut short: undone or finished, once
        // each QEMU is known.
        for entry in self.entries_with_unsettled_disks() {
            self.settle_disks(&entry).await;
        }
        if n > 0 {
            tracing::info!(
                guests = n,
                ms = t.elapsed().as_millis() as u64,
                "re-adopted running guests"
            );
        }
        Ok(())
    }

    /// A start cut short before QEMU wrote its pidfile: nothing says which
    /// process was launched, yet it may still be alive (QEMU about to write
    /// the pidfile, or a launcher about to exec QEMU), and would then sit
    /// paused before its first instruction, holding the disk, with no daemon
    /// that knows of it. Whatever carries the VM's UUID and pidfile path in
    /// its arguments is killed with its process group (a launcher's
    /// children too, which would keep the cgroup busy), until a scan finds
    /// none.
    async fn kill_unrecorded_launch(&self, rec: &VmRecord, pidfile: &std::path::Path) {
        for _ in 0..5 {
            let found = process::launched_for(rec.id, pidfile);
            if found.is_empty() {
                return;
            }
            for pid in found {
                let _ = process::kill_launch(pid);
                process::wait_gone(pid, Duration::from_secs(10)).await;
                tracing::info!(vm_id = %rec.id, pid, "killed a QEMU launch whose start was cut short before its pidfile");
            }
        }
        tracing::error!(vm_id = %rec.id, "processes launched for the VM keep appearing");
    }

    async fn adopt(&self, entry: Arc<VmEntry>, pid: u32, qmp_path: PathBuf) {
        let timeout = Duration::from_secs(self.core().cfg.qmp_timeout_secs);
        let connected = match Monitor::connect(&qmp_path, timeout).await {
            Ok((monitor, events)) => match monitor.query_status().await {
                Ok(st) => Ok((monitor, events, st)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        let (monitor, events, state) = match connected {
            Ok(c) => c,
            Err(e) => {
                return self.settle(
                    &entry,
                    VmEvent::Fail,
                    Some(format!(
                        "QEMU (pid {pid}) runs but its monitor does not answer: {e}"
                    )),
                )
            }
        };
        let never_ran = state == RunState::Prelaunch;
        if let Recovery::Discard(event) = lifecycle::recover(entry.status(), true, never_ran) {
            // A start cut short before the guest ran: its job already
            // failed, so the VM goes back to where a failed start leaves it.
            let _ = monitor.quit().await;
            let _ = process::signal(pid, Signal::SIGKILL);
            process::wait_gone(pid, Duration::from_secs(10)).await;
            let files = self.run_files(entry.id);
            for f in [&files.pidfile, &files.qmp, &files.console] {
                let _ = std::fs::remove_file(f);
            }
            self.remove_cgroup(entry.id).await;
            self.settle(
                &entry,
                event,
                Some("start interrupted by a restart of libgod".into()),
            );
            tracing::info!(vm_id = %entry.id, pid, "discarded a QEMU whose start was cut short");
            return;
        }
        let boot_memory = monitor
            .query_memory_size_summary()
            .await
            .ok()
            .map(|m| m.base_memory >> 20)
            .unwrap_or_else(|| entry.record().memory);
        let event = match &state {
            RunState::Running => VmEvent::AdoptRunning,
            RunState::Paused | RunState::Prelaunch => VmEvent::AdoptPaused,
            other => {
                tracing::warn!(vm_id = %entry.id, status = %other, "adopted QEMU in an unusual state");
                VmEvent::AdoptPaused
            }
        };
        let rt = self.attach(&entry, pid, monitor, events, None, boot_memory);
        self.settle(&entry, event, None);
        // Limits may have been changed while the daemon was down, or the
        // cgroup lost: re-apply what the record says.
        let rec = entry.record();
        if let Err(e) = self.apply_pinning(&rt, rec.cpu_pinning.as_ref()).await {
            tracing::warn!(vm_id = %entry.id, error = %e, "re-applying pinning");
        }
        if let Err(e) = self.apply_io(&rec, &rt).await {
            tracing::warn!(vm_id = %entry.id, error = %e, "re-applying I/O limits");
        }
        // A reboot interrupted by the restart left QEMU told to pause on shutdown.
        let _ = rt
            .monitor
            .set_shutdown_action(ShutdownAction::Poweroff)
            .await;
        debug_assert!(entry.status() != VmStatus::Creating);
        tracing::info!(vm_id = %entry.id, pid, "re-adopted");
    }
}
