//! A VM's QEMU process at run time: starting it, watching it, stopping it,
//! and re-adopting it after the daemon restarts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{lock, qmp_err, Agent, EngineError, JobCtx, Result, VmEntry};
use crate::engine::vm::{self, VmRecord};
use crate::model::{NetworkMode, VmStatus};
use crate::qemu::argv::{self, KernelBoot, LaunchSpec};
use crate::qemu::process;
use crate::qemu::qmp::{Event, Qmp};

/// One performance sample of a running VM.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: std::time::Instant,
    pub at_str: String,
    /// utime + stime of the whole QEMU process, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
    /// Guest in bytes, out bytes, in packets, out packets (tap networking).
    pub net: Option<[u64; 4]>,
}

impl Default for Sample {
    fn default() -> Sample {
        Sample {
            at: std::time::Instant::now(),
            at_str: String::new(),
            cpu_ticks: 0,
            rss_bytes: 0,
            rd_bytes: 0,
            wr_bytes: 0,
            rd_ops: 0,
            wr_ops: 0,
            net: None,
        }
    }
}

/// The two newest samples; rates are taken between them.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub latest: Option<Sample>,
    pub previous: Option<Sample>,
}

/// A live QEMU process of one VM.
pub struct Runtime {
    pub pid: u32,
    pub qmp: Qmp,
    /// Memory (MiB) QEMU was started with: the balloon's ceiling.
    pub boot_memory: u64,
    /// vCPU thread ids, by vCPU index.
    pub vcpu_tids: std::sync::Mutex<Vec<u32>>,
    pub samples: std::sync::Mutex<Samples>,
    /// Turns true once QEMU has exited and the watcher has settled the status.
    exited: watch::Receiver<bool>,
    /// We asked QEMU to quit: its exit is a stop, not a crash.
    expect_exit: AtomicBool,
    /// The guest shut itself down (SHUTDOWN event).
    shutdown_seen: AtomicBool,
}

impl Runtime {
    async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.exited.clone();
        let exited = tokio::time::timeout(timeout, rx.wait_for(|v| *v)).await;
        exited.is_ok()
    }
}

/// Files of a VM under the run directory.
struct RunFiles {
    dir: PathBuf,
    pidfile: PathBuf,
    qmp: PathBuf,
    console: PathBuf,
}

impl Agent {
    fn run_files(&self, id: Uuid) -> RunFiles {
        let dir = self.vm_run_dir(id);
        RunFiles {
            pidfile: dir.join("qemu.pid"),
            qmp: dir.join("qmp.sock"),
            console: dir.join("console.sock"),
            dir,
        }
    }

    /// Path of the VM's serial console log (kept across boots).
    pub fn console_log(&self, id: Uuid) -> PathBuf {
        self.vm_state_dir(id).join("console.log")
    }

    /// Path of the VM's serial console socket while it runs.
    pub fn console_socket(&self, id: Uuid) -> PathBuf {
        self.run_files(id).console
    }

    fn launch_spec(&self, rec: &VmRecord, files: &RunFiles) -> LaunchSpec {
        LaunchSpec {
            id: rec.id,
            name: rec.name.clone(),
            vcpus: rec.vcpus,
            memory_mib: rec.memory,
            accel: self.inner.accel,
            disk: rec.disk_file.clone(),
            disk_cache: self.inner.disk_cache,
            mac: rec.mac_address.clone(),
            tap: (rec.network.mode == NetworkMode::Tap).then(|| vm::tap_name(rec.id)),
            boot: rec.boot_paths.as_ref().map(|b| KernelBoot {
                kernel: b.kernel.clone(),
                initrd: b.initrd.clone(),
                cmdline: rec.boot.as_ref().and_then(|b| b.cmdline.clone()),
            }),
            seed: rec
                .cloud_init
                .then(|| self.vm_state_dir(rec.id).join("cidata.iso")),
            pidfile: files.pidfile.clone(),
            qmp_socket: files.qmp.clone(),
            console_socket: files.console.clone(),
            console_log: self.console_log(rec.id),
        }
    }

    /// Boot order, so a guest never runs unpinned or unthrottled: QEMU
    /// started paused (-S) -> QMP connected -> watcher running -> vCPU threads
    /// pinned -> I/O limits (cgroup, QEMU) -> tap up -> `cont`. Any failure
    /// kills QEMU and leaves the VM stopped.
    pub(crate) async fn start(&self, entry: &Arc<VmEntry>, ctx: &JobCtx) -> Result<()> {
        let rec = entry.record();
        let previous = rec.status;
        self.set_status(entry, VmStatus::Starting, None);
        match self.start_steps(entry, &rec, ctx).await {
            Ok(()) => {
                self.set_status(entry, VmStatus::Running, None);
                Ok(())
            }
            Err(e) => {
                if let Some(rt) = entry.runtime() {
                    rt.expect_exit.store(true, Ordering::SeqCst);
                    let _ = process::signal(rt.pid, Signal::SIGKILL);
                    rt.wait_exit(Duration::from_secs(10)).await;
                }
                let back = if previous == VmStatus::Crashed {
                    previous
                } else {
                    VmStatus::Stopped
                };
                self.set_status(entry, back, Some(format!("start failed: {e}")));
                Err(e)
            }
        }
    }

    async fn start_steps(&self, entry: &Arc<VmEntry>, rec: &VmRecord, ctx: &JobCtx) -> Result<()> {
        ctx.check()?;
        let files = self.run_files(rec.id);
        std::fs::create_dir_all(&files.dir)
            .map_err(|e| EngineError::internal("creating the run directory", e))?;
        for stale in [&files.pidfile, &files.qmp, &files.console] {
            let _ = std::fs::remove_file(stale);
        }
        let argv = argv::build(&self.launch_spec(rec, &files));
        let log = self.vm_state_dir(rec.id).join("qemu.log");
        let spawned = std::time::Instant::now();
        let mut child = process::spawn(&self.inner.cfg.qemu_binary, &argv, &log).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::Unavailable(format!(
                    "QEMU is not installed: {} not found",
                    self.inner.cfg.qemu_binary.display()
                ))
            } else {
                EngineError::internal("starting QEMU", e)
            }
        })?;
        let pid = child
            .id()
            .ok_or_else(|| EngineError::Internal("QEMU exited at once".into()))?;

        // Wait for the monitor, noticing an early exit (bad argv, no memory).
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(self.inner.cfg.qemu_start_timeout_secs);
        let qmp_timeout = Duration::from_secs(self.inner.cfg.qmp_timeout_secs);
        let (qmp, events) = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(EngineError::Internal(format!(
                    "QEMU exited during start ({status}): {}",
                    process::log_tail(&log, 600)
                )));
            }
            if files.qmp.exists() {
                match Qmp::connect(&files.qmp, qmp_timeout).await {
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
                return Err(EngineError::Internal(format!(
                    "QEMU did not open its QMP socket within {} s",
                    self.inner.cfg.qemu_start_timeout_secs
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let qmp_up = spawned.elapsed();
        let rt = self.attach(entry, pid, qmp, events, Some(child), rec.memory);
        ctx.log(format!("QEMU pid {pid} answering QMP"));
        ctx.progress(50);
        ctx.check()?;
        let t = std::time::Instant::now();
        self.apply_pinning(&rt, rec.cpu_pinning.as_ref()).await?;
        let pinned = t.elapsed();
        let t = std::time::Instant::now();
        self.apply_io(rec, &rt).await?;
        let throttled = t.elapsed();
        ctx.check()?;
        if rec.network.mode == NetworkMode::Tap {
            set_link_up(&vm::tap_name(rec.id)).await?;
        }
        rt.qmp
            .execute("cont", None)
            .await
            .map_err(qmp_err("cont"))?;
        tracing::info!(
            vm = %rec.id,
            pid,
            qmp_up_us = qmp_up.as_micros() as u64,
            pin_us = pinned.as_micros() as u64,
            io_limits_us = throttled.as_micros() as u64,
            total_us = spawned.elapsed().as_micros() as u64,
            "guest continued"
        );
        Ok(())
    }

    /// Installs a runtime for a live QEMU and spawns its watcher.
    fn attach(
        &self,
        entry: &Arc<VmEntry>,
        pid: u32,
        qmp: Qmp,
        events: mpsc::Receiver<Event>,
        child: Option<tokio::process::Child>,
        boot_memory: u64,
    ) -> Arc<Runtime> {
        let (exited_tx, exited_rx) = watch::channel(false);
        let rt = Arc::new(Runtime {
            pid,
            qmp,
            boot_memory,
            vcpu_tids: std::sync::Mutex::new(Vec::new()),
            samples: std::sync::Mutex::new(Samples::default()),
            exited: exited_rx,
            expect_exit: AtomicBool::new(false),
            shutdown_seen: AtomicBool::new(false),
        });
        *lock(&entry.rt) = Some(rt.clone());
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
        let interval = Duration::from_millis(self.inner.cfg.sample_interval_ms);
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
            tracing::debug!(vm = %entry.id, event = %ev.name, data = %ev.data, "QMP event");
            let idle = entry.busy_op().is_none();
            match ev.name.as_str() {
                "SHUTDOWN" => {
                    rt.shutdown_seen.store(true, Ordering::SeqCst);
                }
                "STOP" if idle && entry.status() == VmStatus::Running => {
                    self.set_status(&entry, VmStatus::Paused, None)
                }
                "RESUME" if idle && entry.status() == VmStatus::Paused => {
                    self.set_status(&entry, VmStatus::Running, None)
                }
                _ => {}
            }
        }
        // The monitor closed: QEMU is exiting.
        let how = match child {
            Some(mut c) => match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
                Ok(Ok(status)) => Some(status.to_string()),
                _ => None,
            },
            None => process::wait_gone(rt.pid, Duration::from_secs(10))
                .await
                .then(|| "exited".to_owned()),
        };
        let Some(how) = how else {
            self.set_status(
                &entry,
                VmStatus::Error,
                Some(format!(
                    "QMP connection lost but QEMU (pid {}) is still alive",
                    rt.pid
                )),
            );
            let _ = exited.send(true);
            return;
        };
        *lock(&entry.rt) = None;
        self.remove_cgroup(entry.id).await;
        let files = self.run_files(entry.id);
        for f in [&files.pidfile, &files.qmp, &files.console] {
            let _ = std::fs::remove_file(f);
        }
        if rt.expect_exit.load(Ordering::SeqCst) || rt.shutdown_seen.load(Ordering::SeqCst) {
            self.set_status(&entry, VmStatus::Stopped, None);
        } else {
            let log = self.vm_state_dir(entry.id).join("qemu.log");
            let tail = process::log_tail(&log, 300);
            let reason = if tail.is_empty() {
                format!("QEMU exited unexpectedly ({how})")
            } else {
                format!("QEMU exited unexpectedly ({how}): {tail}")
            };
            tracing::warn!(vm = %entry.id, %reason, "VM crashed");
            self.set_status(&entry, VmStatus::Crashed, Some(reason));
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
    ) -> Result<String> {
        let Some(rt) = entry.runtime() else {
            // Crashed or failed: nothing runs; acknowledge.
            self.set_status(entry, VmStatus::Stopped, None);
            return Ok("VM had no running process; marked stopped.".into());
        };
        let before = entry.status();
        self.set_status(entry, VmStatus::Stopping, None);
        if before == VmStatus::Paused {
            rt.qmp
                .execute("cont", None)
                .await
                .map_err(qmp_err("resume before stop"))?;
        }
        let token = ctx.handle.token();
        let done = || async { token.is_cancelled() || rt.wait_exit(Duration::ZERO).await };
        if self.press_until(&rt, timeout, done).await && !token.is_cancelled() {
            return Ok("VM successfully stopped.".into());
        }
        if token.is_cancelled() {
            if rt.wait_exit(Duration::ZERO).await {
                return Ok("VM stopped.".into());
            }
            self.set_status(entry, VmStatus::Running, None);
            ctx.check()?;
        }
        if !force {
            self.set_status(entry, VmStatus::Running, None);
            return Err(EngineError::Conflict(format!(
                "The guest did not power off within {} s (it may ignore ACPI); use stop or poweroff to force it.",
                timeout.as_secs()
            )));
        }
        self.kill(&rt).await?;
        Ok(format!(
            "The guest did not shut down within {} s; VM forced off.",
            timeout.as_secs()
        ))
    }

    /// Presses the ACPI power button every `powerdown_retry_secs` until
    /// `done` is true or `timeout` passes. Returns whether `done` happened.
    async fn press_until<F, Fut>(&self, rt: &Runtime, timeout: Duration, done: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let retry = Duration::from_secs(self.inner.cfg.powerdown_retry_secs.max(1));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Err(e) = rt.qmp.execute("system_powerdown", None).await {
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
                self.set_status(entry, VmStatus::Stopping, None);
                self.kill(&rt).await
            }
            None => {
                self.set_status(entry, VmStatus::Stopped, None);
                Ok(())
            }
        }
    }

    async fn kill(&self, rt: &Runtime) -> Result<()> {
        rt.expect_exit.store(true, Ordering::SeqCst);
        let _ = rt
            .qmp
            .execute_with_timeout("quit", None, Duration::from_secs(2))
            .await;
        if rt.wait_exit(Duration::from_secs(5)).await {
            return Ok(());
        }
        let _ = process::signal(rt.pid, Signal::SIGKILL);
        if rt.wait_exit(Duration::from_secs(15)).await {
            Ok(())
        } else {
            Err(EngineError::Internal(format!(
                "QEMU (pid {}) survived SIGKILL",
                rt.pid
            )))
        }
    }

    /// Graceful reboot: the power button with QEMU told to pause instead of
    /// exiting on shutdown, then a reset; forced reset after `timeout`.
    pub(crate) async fn reboot(&self, entry: &Arc<VmEntry>, timeout: Duration) -> Result<String> {
        let rt = self.qmp_of(entry)?;
        self.set_status(entry, VmStatus::Rebooting, None);
        let result = self.reboot_steps(&rt, timeout).await;
        let alive = entry.runtime().is_some();
        if alive {
            self.set_status(entry, VmStatus::Running, None);
        }
        result
    }

    async fn reboot_steps(&self, rt: &Runtime, timeout: Duration) -> Result<String> {
        let shutdown_action = |a: &str| json!({"shutdown": a});
        let graceful = rt
            .qmp
            .execute("set-action", Some(shutdown_action("pause")))
            .await
            .is_ok();
        let mut clean = false;
        if graceful {
            let seen = || async { rt.shutdown_seen.swap(false, Ordering::SeqCst) };
            clean = self.press_until(rt, timeout, seen).await;
        }
        rt.qmp
            .execute("system_reset", None)
            .await
            .map_err(qmp_err("reset"))?;
        rt.qmp
            .execute("cont", None)
            .await
            .map_err(qmp_err("cont after reset"))?;
        if graceful {
            rt.qmp
                .execute("set-action", Some(shutdown_action("poweroff")))
                .await
                .map_err(qmp_err("set-action"))?;
        }
        rt.shutdown_seen.store(false, Ordering::SeqCst);
        Ok(if clean {
            "VM successfully rebooted.".into()
        } else {
            format!(
                "The guest did not shut down within {} s; VM reset.",
                timeout.as_secs()
            )
        })
    }

    /// At start: settle what a crash left half-done and re-adopt every QEMU
    /// that still runs (pidfile, `/proc/<pid>/cmdline` carries the UUID, QMP).
    pub(crate) async fn recover(&self) -> anyhow::Result<()> {
        let interrupted = self.inner.jobs.fail_interrupted()?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "jobs interrupted by the last stop marked failed"
            );
        }
        let records: Vec<VmRecord> = self.inner.store.load_vms()?;
        let mut adopt = Vec::new();
        for rec in records {
            let files = self.run_files(rec.id);
            let pid =
                process::read_pidfile(&files.pidfile).filter(|p| process::is_qemu_of(*p, rec.id));
            match rec.status {
                VmStatus::Creating | VmStatus::Deleting => {
                    // Creation was never reported done; deletion was asked for.
                    if let Some(pid) = pid {
                        let _ = process::signal(pid, Signal::SIGKILL);
                        process::wait_gone(pid, Duration::from_secs(10)).await;
                    }
                    self.remove_files(rec.id)?;
                    self.inner.store.delete_vm(rec.id)?;
                    tracing::info!(vm = %rec.id, status = rec.status.as_str(), "finished an interrupted create/delete");
                    continue;
                }
                _ => {}
            }
            let entry = VmEntry::new(rec.clone());
            self.inner
                .vms
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rec.id, entry.clone());
            match pid {
                Some(pid) => adopt.push((entry, pid, files.qmp)),
                None if rec.status.has_process() => self.set_status(
                    &entry,
                    VmStatus::Crashed,
                    Some("QEMU exited while libgod was not running".into()),
                ),
                None => {}
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
        if n > 0 {
            tracing::info!(
                guests = n,
                ms = t.elapsed().as_millis() as u64,
                "re-adopted running guests"
            );
        }
        Ok(())
    }

    async fn adopt(&self, entry: Arc<VmEntry>, pid: u32, qmp_path: PathBuf) {
        let timeout = Duration::from_secs(self.inner.cfg.qmp_timeout_secs);
        let connected = match Qmp::connect(&qmp_path, timeout).await {
            Ok((qmp, events)) => match qmp.execute("query-status", None).await {
                Ok(st) => Ok((qmp, events, st)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok((qmp, events, st)) => {
                let boot_memory = qmp
                    .execute("query-memory-size-summary", None)
                    .await
                    .ok()
                    .and_then(|m| m.get("base-memory").and_then(Value::as_u64))
                    .map(|b| b >> 20)
                    .unwrap_or_else(|| entry.record().memory);
                let status = match st.get("status").and_then(Value::as_str) {
                    Some("running") => VmStatus::Running,
                    Some("paused") | Some("prelaunch") => VmStatus::Paused,
                    Some(other) => {
                        tracing::warn!(vm = %entry.id, status = other, "adopted QEMU in an unusual state");
                        VmStatus::Paused
                    }
                    None => VmStatus::Running,
                };
                let rt = self.attach(&entry, pid, qmp, events, None, boot_memory);
                self.set_status(&entry, status, None);
                // Limits may have been changed while the daemon was down, or
                // the cgroup lost: re-apply what the record says.
                let rec = entry.record();
                if let Err(e) = self.apply_pinning(&rt, rec.cpu_pinning.as_ref()).await {
                    tracing::warn!(vm = %entry.id, error = %e, "re-applying pinning");
                }
                if let Err(e) = self.apply_io(&rec, &rt).await {
                    tracing::warn!(vm = %entry.id, error = %e, "re-applying I/O limits");
                }
                // A reboot interrupted by the restart left QEMU told to pause on shutdown.
                if let Some(rt) = entry.runtime() {
                    let _ = rt
                        .qmp
                        .execute("set-action", Some(json!({"shutdown": "poweroff"})))
                        .await;
                }
                tracing::info!(vm = %entry.id, pid, "re-adopted");
            }
            Err(e) => self.set_status(
                &entry,
                VmStatus::Error,
                Some(format!(
                    "QEMU (pid {pid}) runs but its monitor does not answer: {e}"
                )),
            ),
        }
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
        return Err(EngineError::Internal(format!(
            "bringing tap {dev} up: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
