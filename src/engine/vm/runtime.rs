//! A VM's QEMU process at run time: starting it, watching it, stopping it,
//! and re-adopting it after the daemon restarts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::lifecycle::{Action, Outcome, VmEvent};
use super::live::{qmp_err, Runtime};
use super::record::{self as vm, VmRecord};
use super::registry::{VmEngine, VmEntry};
use crate::config::IoLayer;
use crate::engine::capacity::Demand;
use crate::engine::core::JobCtx;
use crate::engine::error::{chain, EngineError, Result};
use crate::engine::faults::After;
use crate::engine::sample::Samples;
use crate::model::IoLimits;
use crate::model::{NetworkMode, VmStatus};
use crate::qemu::argv::{self, DriveThrottle, KernelBoot, LaunchSpec};
use crate::qemu::monitor::{Monitor, ShutdownAction};
use crate::qemu::process;
use crate::qemu::qmp::Event;
use crate::rollback::Rollback;
use crate::sync::lock;

/// Files of a VM under the run directory.
pub(crate) struct RunFiles {
    pub(crate) dir: PathBuf,
    pub(crate) pidfile: PathBuf,
    pub(crate) qmp: PathBuf,
    pub(crate) console: PathBuf,
}

impl VmEngine {
    pub(crate) fn run_files(&self, id: Uuid) -> RunFiles {
        let dir = self.run_dir(id);
        RunFiles {
            pidfile: dir.join("qemu.pid"),
            qmp: dir.join("qmp.sock"),
            console: dir.join("console.sock"),
            dir,
        }
    }

    /// Path of the VM's serial console log (kept across boots).
    pub fn console_log(&self, id: Uuid) -> PathBuf {
        self.state_dir(id).join("console.log")
    }

    /// Path of the VM's serial console socket while it runs.
    pub fn console_socket(&self, id: Uuid) -> PathBuf {
        self.run_files(id).console
    }

    fn launch_spec(&self, rec: &VmRecord, files: &RunFiles, tap_fd: Option<i32>) -> LaunchSpec {
        LaunchSpec {
            id: rec.id,
            name: rec.name.clone(),
            vcpus: rec.vcpus,
            memory_mib: rec.memory,
            accel: self.inner.accel,
            disk: rec.disk_file.clone(),
            disk_format: rec.disk_format.clone(),
            disk_cache: self.inner.disk_cache,
            mac: rec.mac_address.clone(),
            tap_fd,
            boot: rec.boot_paths.as_ref().map(|b| KernelBoot {
                kernel: b.kernel.clone(),
                initrd: b.initrd.clone(),
                cmdline: rec.boot.as_ref().and_then(|b| b.cmdline.clone()),
            }),
            seed: rec
                .cloud_init
                .then(|| self.state_dir(rec.id).join("cidata.iso")),
            pidfile: files.pidfile.clone(),
            qmp_socket: files.qmp.clone(),
            console_socket: files.console.clone(),
            console_log: self.console_log(rec.id),
            vnc_socket: rec.display.then(|| files.dir.join("vnc.sock")),
            throttle: self
                .core()
                .cfg
                .io_throttle
                .contains(&IoLayer::Qemu)
                .then(|| drive_throttle(rec.io_limits.as_ref()))
                .flatten(),
            extra_disks: self.start_disks(rec),
            incoming: false,
        }
    }

    /// Boot order, so a guest never runs unpinned or unthrottled: the VM's
    /// cgroup with its I/O limits (only when it has limits) -> QEMU started
    /// paused (-S) inside it, its own throttle on the command line -> QMP
    /// connected -> watcher running -> vCPU threads pinned -> tap up ->
    /// `cont`. Each step pushes its undo: a failure leaves nothing behind.
    pub(crate) async fn start(&self, entry: &Arc<VmEntry>, ctx: &JobCtx) -> Result<()> {
        let rec = entry.record();
        let previous = rec.status;
        {
            // Checked and counted (`starting`) under one lock: two starts
            // never both pass on the same room. Refused: nothing was done.
            let admission = &self.core().admission;
            let _serial = admission.serialize().await;
            let demand = Demand {
                memory_mib: rec.memory,
                vcpus: rec.vcpus.into(),
            };
            admission
                .check(rec.id, demand)
                .await
                .map_err(|s| s.refuse(&format!("starting VM {}", rec.name)))?;
            self.transition(entry, VmEvent::Start, None)?;
        }
        let mut undo = Rollback::new();
        let mut attached = None;
        let result = self
            .start_steps(entry, &rec, ctx, &mut undo, &mut attached, false)
            .await;
        match result {
            Ok(()) => {
                undo.disarm();
                self.transition(entry, VmEvent::Run, None)?;
                Ok(())
            }
            Err(e) => {
                // Kills QEMU (and waits until it is gone), removes its
                // cgroup and run files; the job ends only after that.
                undo.unwind().await;
                // The watcher's end, not `entry.runtime()`: the watcher
                // clears that before it looks at the status, and a start
                // that settled in between would then see its reason
                // overwritten by an ordinary exit.
                if let Some(rt) = attached {
                    rt.wait_exit(Duration::from_secs(10)).await;
                }
                let event = if previous == VmStatus::Crashed {
                    VmEvent::StartFailedAgain
                } else {
                    VmEvent::StartFailed
                };
                self.settle(entry, event, Some(format!("start failed: {}", chain(&e))));
                Err(e)
            }
        }
    }

    /// The steps of a start; each pushes its undo on `undo`. The runtime,
    /// once attached, is left in `attached`. `incoming`: QEMU waits for the
    /// guest from another host (`-incoming defer`) and is left paused.
    pub(crate) async fn start_steps(
        &self,
        entry: &Arc<VmEntry>,
        rec: &VmRecord,
        ctx: &JobCtx,
        undo: &mut Rollback,
        attached: &mut Option<Arc<Runtime>>,
        incoming: bool,
    ) -> Result<()> {
        ctx.check()?;
        let files = self.run_files(rec.id);
        std::fs::create_dir_all(&files.dir)
            .map_err(|e| EngineError::internal("creating the run directory", e))?;
        for stale in [&files.pidfile, &files.qmp, &files.console] {
            let _ = std::fs::remove_file(stale);
        }
        // The VM's files and run directory go to its group before QEMU
        // exists; nothing to undo (they stay the VM's, and the next start
        // does the same).
        let gid = self.assign_gid(entry)?;
        self.own_files(rec, gid)?;
        let identity = self.qemu_identity(gid);
        {
            let stale = [
                files.pidfile.clone(),
                files.qmp.clone(),
                files.console.clone(),
            ];
            undo.push("run files", move || {
                for f in &stale {
                    let _ = std::fs::remove_file(f);
                }
            });
        }
        let spawned = std::time::Instant::now();
        let cgroup_procs = self.prepare_cgroup(rec, undo)?;
        self.inject(rec, After::Cgroup, ctx)?;
        // An unprivileged QEMU cannot make its tap: it inherits one made
        // here, which goes away with the last descriptor of it (QEMU's once
        // this one is closed below).
        let tap = match rec.network.mode {
            NetworkMode::Tap => Some(
                crate::host::confine::open_tap(&vm::tap_name(rec.id))
                    .map_err(|e| EngineError::internal("creating the tap device", e))?,
            ),
            _ => None,
        };
        let tap_fd = tap.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let mut spec = self.launch_spec(rec, &files, tap_fd);
        spec.incoming = incoming;
        let argv = argv::build(&spec);
        let log = self.state_dir(rec.id).join("qemu.log");
        let qemu = &self.core().cfg.qemu_binary;
        let spawned_qemu = process::spawn(
            qemu,
            &argv,
            &log,
            cgroup_procs.as_deref(),
            tap_fd.as_slice(),
            identity.as_ref(),
        );
        drop(tap);
        let mut child = spawned_qemu.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::Unavailable(format!(
                    "QEMU is not installed: {} not found",
                    self.core().cfg.qemu_binary.display()
                ))
            } else {
                EngineError::internal("starting QEMU", e)
            }
        })?;
        let pid = child
            .id()
            .ok_or_else(|| EngineError::failed("QEMU exited at once"))?;
        undo.push_async("QEMU", kill_launched(pid, rec.id));
        self.inject(rec, After::Spawn, ctx)?;
        ctx.check()?;

        // Wait for the monitor, noticing an early exit (bad argv, no memory).
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(self.core().cfg.qemu_start_timeout_secs);
        let qmp_timeout = Duration::from_secs(self.core().cfg.qmp_timeout_secs);
        let (monitor, events) = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(EngineError::failed(format!(
                    "QEMU exited during start ({status}): {}",
                    process::log_tail(&log, 600)
                )));
            }
            if files.qmp.exists() {
                match Monitor::connect(&files.qmp, qmp_timeout).await {
                    Ok(pair) => break pair,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        let _ = child.start_kill();
                        return Err(EngineError::internal("connecting to QMP", e));
                    }
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(EngineError::failed(format!(
                    "QEMU did not open its QMP socket within {} s",
                    self.core().cfg.qemu_start_timeout_secs
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let qmp_up = spawned.elapsed();
        let rt = self.attach(entry, pid, monitor, events, Some(child), rec.memory);
        *attached = Some(rt.clone());
        {
            let rt = rt.clone();
            undo.push("watcher", move || {
                rt.expect_exit.store(true, Ordering::SeqCst)
            });
        }
        ctx.log(format!("QEMU pid {pid} answering QMP"));
        self.inject(rec, After::Monitor, ctx)?;
        ctx.progress(50);
        ctx.check()?;
        let t = std::time::Instant::now();
        self.apply_pinning(&rt, rec.cpu_pinning.as_ref()).await?;
        let pinned = t.elapsed();
        self.inject(rec, After::Pin, ctx)?;
        ctx.check()?;
        if rec.network.mode == NetworkMode::Tap {
            set_link_up(&vm::tap_name(rec.id)).await?;
        }
        // Extra disks' limits exist only once their devices do: set while
        // the guest has not run yet.
        crate::qemu::disks::apply_limits(&rt.monitor, &self.start_disks(rec))
            .await
            .map_err(|e| EngineError::internal("setting the extra disks' I/O limits", e))?;
        if incoming {
            ctx.log("QEMU waits for the incoming guest");
            return Ok(());
        }
        rt.monitor.cont().await.map_err(qmp_err("cont"))?;
        tracing::info!(
            vm_id = %rec.id,
            pid,
            qmp_up_us = qmp_up.as_micros() as u64,
            pin_us = pinned.as_micros() as u64,
            total_us = spawned.elapsed().as_micros() as u64,
            "guest continued"
        );
        Ok(())
    }

    /// The testing aid of `engine::faults`: fails or cancels the start of
    /// `rec` right after `step` when the daemon was told to.
    fn inject(&self, rec: &VmRecord, step: After, ctx: &JobCtx) -> Result<()> {
        self.inner
            .faults
            .inject(&rec.name, step, &self.core().jobs, ctx)
    }

    /// Installs a runtime for a live QEMU and spawns its watcher.
    pub(crate) fn attach(
        &self,
        entry: &Arc<VmEntry>,
        pid: u32,
        monitor: Monitor,
        events: mpsc::Receiver<Event>,
        child: Option<tokio::process::Child>,
        boot_memory: u64,
    ) -> Arc<Runtime> {
        let (exited_tx, exited_rx) = watch::channel(false);
        let rt = Arc::new(Runtime {
            pid,
            monitor,
            boot_memory,
            vcpu_tids: std::sync::Mutex::new(Vec::new()),
            samples: std::sync::Mutex::new(Samples::default()),
            exited: exited_rx,
            expect_exit: AtomicBool::new(false),
            shutdown_seen: AtomicBool::new(false),
        });
        *lock(&entry.rt) = Some(rt.clone());
        entry.touch();
        tokio::spawn(
            self.clone()
                .watch(entry.clone(), rt.clone(), events, child, exited_tx),
        );
        tokio::spawn(self.clone().sample_loop(entry.clone(), rt.clone()));
        rt
    }

    /// Keeps the two newest performance samples of a running VM, so that
    /// `/performance` and `/metrics` answer from memory.
    async fn sample_loop(self, entry: Arc<VmEntry>, rt: Arc<Runtime>) {
        let interval = Duration::from_millis(self.core().cfg.sample_interval_ms);
        let tap = (entry.record().network.mode == NetworkMode::Tap).then(|| vm::tap_name(entry.id));
        let mut exited = rt.exited.clone();
        loop {
            let sample = self.take_sample(&rt, tap.as_deref()).await;
            {
                let mut s = lock(&rt.samples);
                s.previous = s.latest.take();
                s.latest = Some(sample);
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = exited.wait_for(|v| *v) => return,
            }
        }
    }

    /// Turns QEMU's events and its exit into status changes.
    async fn watch(
        self,
        entry: Arc<VmEntry>,
        rt: Arc<Runtime>,
        mut events: mpsc::Receiver<Event>,
        child: Option<tokio::process::Child>,
        exited: watch::Sender<bool>,
    ) {
        while let Some(ev) = events.recv().await {
            tracing::debug!(vm_id = %entry.id, event = %ev.name, data = %ev.data, "QMP event");
            let idle = entry.busy_op().is_none();
            match ev.name.as_str() {
                "SHUTDOWN" => {
                    rt.shutdown_seen.store(true, Ordering::SeqCst);
                }
                "STOP" if idle && entry.status() == VmStatus::Running => {
                    self.settle(&entry, VmEvent::Pause, None)
                }
                "RESUME" if idle && entry.status() == VmStatus::Paused => {
                    self.settle(&entry, VmEvent::Run, None)
                }
                _ => {}
            }
        }
        // The monitor closed: QEMU is exiting.
        let mut child = child;
        let mut lost = false;
        let how = loop {
            let gone = match child.as_mut() {
                Some(c) => match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
                    Ok(Ok(status)) => Some(status.to_string()),
                    _ => None,
                },
                None => process::wait_gone(rt.pid, Duration::from_secs(10))
                    .await
                    .then(|| "exited".to_owned()),
            };
            if let Some(how) = gone {
                break how;
            }
            if !lost {
                // The monitor is gone but QEMU is not: the VM is in error
                // until QEMU goes (a poweroff or delete SIGKILLs it), and
                // its exit is handled below like any other.
                lost = true;
                self.settle(
                    &entry,
                    VmEvent::Fail,
                    Some(format!(
                        "QMP connection lost but QEMU (pid {}) is still alive",
                        rt.pid
                    )),
                );
            }
        };
        *lock(&entry.rt) = None;
        entry.touch();
        self.remove_cgroup(entry.id).await;
        let files = self.run_files(entry.id);
        for f in [&files.pidfile, &files.qmp, &files.console] {
            let _ = std::fs::remove_file(f);
        }
        if matches!(entry.status(), VmStatus::Starting | VmStatus::Deleting) {
            // A start that failed, or a delete: the job settles the status.
        } else if rt.expect_exit.load(Ordering::SeqCst) || rt.shutdown_seen.load(Ordering::SeqCst) {
            self.settle(&entry, VmEvent::Exited, None);
        } else {
            let log = self.state_dir(entry.id).join("qemu.log");
            let tail = process::log_tail(&log, 300);
            let reason = if tail.is_empty() {
                format!("QEMU exited unexpectedly ({how})")
            } else {
                format!("QEMU exited unexpectedly ({how}): {tail}")
            };
            tracing::warn!(vm_id = %entry.id, %reason, "VM crashed");
            self.settle(&entry, VmEvent::Crash, Some(reason));
        }
        let _ = exited.send(true);
    }

    /// Graceful stop: press the power button (again every few seconds, as a
    /// guest may miss a press) until the guest is off or `timeout` passes;
    /// then force it off if `force`, else give up with 409.
    pub(crate) async fn stop(
        &self,
        entry: &Arc<VmEntry>,
        timeout: Duration,
        force: bool,
        ctx: &JobCtx,
    ) -> Result<Outcome> {
        let Some(rt) = entry.runtime() else {
            // Crashed or failed: nothing is attached; a QEMU whose monitor
            // never answered goes too, then the VM is acknowledged stopped.
            self.kill_unattached(entry.id).await?;
            self.transition(entry, VmEvent::Acknowledge, None)?;
            return Ok(Outcome::Acknowledged);
        };
        let action = if force {
            Action::Stop
        } else {
            Action::Shutdown
        };
        let before = entry.status();
        self.transition(entry, VmEvent::Stop, None)?;
        if before == VmStatus::Paused {
            rt.monitor
                .cont()
                .await
                .map_err(qmp_err("resume before stop"))?;
        }
        let token = ctx.handle.token();
        let done = || async { token.is_cancelled() || rt.wait_exit(Duration::ZERO).await };
        if self.press_until(&rt, timeout, done).await && !token.is_cancelled() {
            return Ok(Outcome::Done(action));
        }
        if token.is_cancelled() {
            if rt.wait_exit(Duration::ZERO).await {
                return Ok(Outcome::Done(action));
            }
            self.transition(entry, VmEvent::StopAbandoned, None)?;
            ctx.check()?;
        }
        if !force {
            self.transition(entry, VmEvent::StopAbandoned, None)?;
            return Err(EngineError::Conflict(format!(
                "The guest did not power off within {} s (it may ignore ACPI); use stop or poweroff to force it.",
                timeout.as_secs()
            )));
        }
        self.kill(&rt).await?;
        Ok(Outcome::Forced {
            action,
            after_secs: timeout.as_secs(),
        })
    }

    /// Presses the ACPI power button every `powerdown_retry_secs` until
    /// `done` is true or `timeout` passes. Returns whether `done` happened.
    async fn press_until<F, Fut>(&self, rt: &Runtime, timeout: Duration, done: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let retry = Duration::from_secs(self.core().cfg.powerdown_retry_secs.max(1));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Err(e) = rt.monitor.system_powerdown().await {
                tracing::debug!(error = %e, "system_powerdown");
            }
            let next = (tokio::time::Instant::now() + retry).min(deadline);
            while tokio::time::Instant::now() < next {
                if done().await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if done().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Forced power-off: `quit`, then SIGKILL if QEMU lingers.
    pub(crate) async fn poweroff(&self, entry: &Arc<VmEntry>) -> Result<()> {
        match entry.runtime() {
            Some(rt) => {
                self.transition(entry, VmEvent::Stop, None)?;
                self.kill(&rt).await
            }
            None => {
                self.kill_unattached(entry.id).await?;
                self.transition(entry, VmEvent::Acknowledge, None)?;
                Ok(())
            }
        }
    }

    /// Kills a QEMU of this VM that runs without being attached (its
    /// monitor did not answer when the daemon started), and its files.
    pub(crate) async fn kill_unattached(&self, id: Uuid) -> Result<()> {
        let files = self.run_files(id);
        let Some(pid) =
            process::read_pidfile(&files.pidfile).filter(|p| process::is_qemu_of(*p, id))
        else {
            return Ok(());
        };
        let _ = process::kill_launch(pid);
        if !process::wait_gone(pid, Duration::from_secs(15)).await {
            return Err(EngineError::failed(format!(
                "QEMU (pid {pid}) survived SIGKILL"
            )));
        }
        for f in [&files.pidfile, &files.qmp, &files.console] {
            let _ = std::fs::remove_file(f);
        }
        self.remove_cgroup(id).await;
        tracing::info!(vm_id = %id, pid, "killed a QEMU that was not attached");
        Ok(())
    }

    pub(crate) async fn kill(&self, rt: &Runtime) -> Result<()> {
        rt.expect_exit.store(true, Ordering::SeqCst);
        let _ = rt.monitor.quit().await;
        if rt.wait_exit(Duration::from_secs(5)).await {
            return Ok(());
        }
        let _ = process::signal(rt.pid, Signal::SIGKILL);
        if rt.wait_exit(Duration::from_secs(15)).await {
            Ok(())
        } else {
            Err(EngineError::failed(format!(
                "QEMU (pid {}) survived SIGKILL",
                rt.pid
            )))
        }
    }

    /// Graceful reboot: the power button with QEMU told to pause instead of
    /// exiting on shutdown, then a reset; forced reset after `timeout`.
    pub(crate) async fn reboot(&self, entry: &Arc<VmEntry>, timeout: Duration) -> Result<Outcome> {
        let rt = self.monitor_of(entry)?;
        self.transition(entry, VmEvent::Reboot, None)?;
        let result = self.reboot_steps(&rt, timeout).await;
        let alive = entry.runtime().is_some();
        if alive {
            self.settle(entry, VmEvent::Run, None);
        }
        result
    }

    async fn reboot_steps(&self, rt: &Runtime, timeout: Duration) -> Result<Outcome> {
        let graceful = rt
            .monitor
            .set_shutdown_action(ShutdownAction::Pause)
            .await
            .is_ok();
        let mut clean = false;
        if graceful {
            let seen = || async { rt.shutdown_seen.swap(false, Ordering::SeqCst) };
            clean = self.press_until(rt, timeout, seen).await;
        }
        rt.monitor.system_reset().await.map_err(qmp_err("reset"))?;
        rt.monitor
            .cont()
            .await
            .map_err(qmp_err("cont after reset"))?;
        if graceful {
            rt.monitor
                .set_shutdown_action(ShutdownAction::Poweroff)
                .await
                .map_err(qmp_err("set-action"))?;
        }
        rt.shutdown_seen.store(false, Ordering::SeqCst);
        Ok(if clean {
            Outcome::Done(Action::Reboot)
        } else {
            Outcome::Forced {
                action: Action::Reboot,
                after_secs: timeout.as_secs(),
            }
        })
    }
}

/// The undo of a spawn: kills the process started for VM `id` and returns
/// once it is gone, so that its cgroup can go and a failed start reports
/// only after the clean-up. A pid that no longer carries the VM's UUID (the
/// process already exited and was reaped) is left alone.
async fn kill_launched(pid: u32, id: Uuid) {
    if !process::is_qemu_of(pid, id) {
        return;
    }
    let _ = process::kill_launch(pid);
    if !process::wait_gone(pid, Duration::from_secs(10)).await {
        tracing::error!(vm_id = %id, pid, "QEMU survived SIGKILL while undoing a start");
    }
}

/// Brings a host network interface up (`ip link set DEV up`).
async fn set_link_up(dev: &str) -> Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(["link", "set", dev, "up"])
        .output()
        .await
        .map_err(|e| EngineError::internal("running ip(8)", e))?;
    if !out.status.success() {
        return Err(EngineError::failed(format!(
            "bringing tap {dev} up: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// QEMU's drive throttle for the VM's I/O limits (none when unlimited).
fn drive_throttle(l: Option<&IoLimits>) -> Option<DriveThrottle> {
    let l = l?;
    let v = |x: Option<u64>| x.unwrap_or(0);
    let t = DriveThrottle {
        iops_total: v(l.iops),
        iops_read: v(l.read_iops),
        iops_write: v(l.write_iops),
        bps_read: v(l.read_bps),
        bps_write: v(l.write_bps),
    };
    (t != DriveThrottle::default()).then_some(t)
}

/// Removes a cgroup at once (retrying briefly while the kernel still counts
/// a process that was just killed).
pub(crate) fn remove_cgroup_now(cg: &crate::host::cgroup::Cgroups, name: &str) {
    for _ in 0..10 {
        match cg.remove(name) {
            Err(crate::host::cgroup::CgroupError::Busy { .. }) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return,
        }
    }
}
