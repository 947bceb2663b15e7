//! Resource control of a running VM: vCPU pinning, I/O limits (cgroup and
//! QEMU), memory balloon, disk growth, and the background performance sampler.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lifecycle::{plan, Action, Plan};
use super::live::qmp_err;
use super::live::Runtime;
use super::record::{self as vm, VmRecord};
use super::registry::{VmEngine, VmEntry, GIB};
use crate::config::IoLayer;
use crate::engine::capacity::Demand;
use crate::engine::core::{JobCtx, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::engine::sample::Sample;
use crate::host::blockdev::{self, DevId};
use crate::host::cgroup::IoMax;
use crate::host::pinning;
use crate::model::{
    Applies, CgroupEnforcement, CpuPinning, FieldChange, IoEnforcement, IoLimits, PatchVmRequest,
    Performance, PinningInForce, VcpuAffinity, VmStatus,
};
use crate::qemu::argv::DISK_DRIVE_ID;
use crate::qemu::monitor::{BlockInfo, BlockRef, IoThrottle};
use crate::sync::lock;

const MIB: u64 = 1 << 20;
/// QOM path of the root disk's virtio-blk backend, for block_set_io_throttle.
const DISK_QDEV: &str = "/machine/peripheral/vd0/virtio-backend";

fn online_cpus() -> Vec<u32> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| crate::host::pinning::parse_cpu_list(&s))
        .unwrap_or_default()
}

/// Host cores must exist and be online.
pub(crate) fn check_pinning(pin: &CpuPinning) -> Result<()> {
    let online = online_cpus();
    let sets = [Some(&pin.cores), pin.emulator_cores.as_ref()];
    for (field, cores) in ["cores", "emulator_cores"].iter().zip(sets) {
        let Some(cores) = cores else { continue };
        if cores.is_empty() {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: cpu_pinning.{field} must not be empty."
            )));
        }
        if let Some(bad) = cores.iter().find(|c| !online.contains(c)) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: cpu_pinning.{field}: host core {bad} does not exist or is offline (online: {}).",
                pinning::format_list(&online)
            )));
        }
    }
    Ok(())
}

/// The cgroup limits for a VM's I/O limits: a total `iops` bounds each
/// direction (cgroups have no combined counter); a per-direction value wins.
fn io_max(l: Option<&IoLimits>) -> IoMax {
    let nz = |v: Option<u64>| v.filter(|v| *v > 0);
    let Some(l) = l else { return IoMax::default() };
    IoMax {
        read_iops: nz(l.read_iops).or(nz(l.iops)),
        write_iops: nz(l.write_iops).or(nz(l.iops)),
        read_bps: nz(l.read_bps),
        write_bps: nz(l.write_bps),
    }
}

fn limits_of(m: IoMax) -> IoLimits {
    IoLimits {
        iops: None,
        read_iops: m.read_iops,
        write_iops: m.write_iops,
        read_bps: m.read_bps,
        write_bps: m.write_bps,
    }
}

/// What a resource update did: the VM after it, and each field changed.
#[derive(Debug, Clone)]
pub struct Updated {
    pub vm: crate::model::Vm,
    /// `Live` when everything changed took effect now.
    pub applies: Applies,
    pub changes: Vec<FieldChange>,
    pub job_id: uuid::Uuid,
}

impl VmEngine {
    /// Pins vCPU i to cores[i] (same counts) or every vCPU to the whole set,
    /// and QEMU's other threads to `emulator_cores`; no pinning = all online
    /// cores, which also undoes an earlier pinning live.
    pub(crate) async fn apply_pinning(&self, rt: &Runtime, pin: Option<&CpuPinning>) -> Result<()> {
        let vcpus: Vec<(u32, u32)> = rt
            .monitor
            .query_cpus_fast()
            .await
            .map_err(qmp_err("query-cpus-fast"))?
            .into_iter()
            .map(|v| (v.cpu_index, v.thread_id))
            .collect();
        let all = online_cpus();
        let pin_err = |e: pinning::PinError| EngineError::internal("pinning vCPU threads", e);
        for (i, (_, tid)) in vcpus.iter().enumerate() {
            let cores: Vec<u32> = match pin {
                Some(p) if p.cores.len() == vcpus.len() => vec![p.cores[i]],
                Some(p) => p.cores.clone(),
                None => all.clone(),
            };
            pinning::pin_thread(*tid, &cores).map_err(pin_err)?;
        }
        let vcpu_tids: Vec<u32> = vcpus.iter().map(|(_, t)| *t).collect();
        let emulator = pin.and_then(|p| p.emulator_cores.clone()).unwrap_or(all);
        for tid in pinning::threads(Path::new("/proc"), rt.pid) {
            if !vcpu_tids.contains(&tid) {
                // A thread may exit between listing and pinning.
                if let Err(e) = pinning::pin_thread(tid, &emulator) {
                    tracing::debug!(tid, error = %e, "emulator thread not pinned");
                }
            }
        }
        *lock(&rt.vcpu_tids) = vcpu_tids;
        Ok(())
    }

    fn pinning_in_force(&self, rt: &Runtime) -> PinningInForce {
        let proc = Path::new("/proc");
        let tids = lock(&rt.vcpu_tids).clone();
        PinningInForce {
            vcpus: tids
                .iter()
                .enumerate()
                .map(|(i, tid)| VcpuAffinity {
                    vcpu: i as u32,
                    thread_id: *tid,
                    cpus_allowed_list: pinning::allowed_list(proc, rt.pid, *tid)
                        .unwrap_or_default(),
                })
                .collect(),
            emulator: pinning::allowed_list(proc, rt.pid, rt.pid).unwrap_or_default(),
        }
    }

    fn disk_device(&self, disk: &Path) -> Option<DevId> {
        blockdev::whole_disk_of(disk, Path::new("/sys"))
    }

    /// Makes the VM's cgroup with its I/O limits before QEMU starts, when
    /// the VM has limits and cgroups enforce them; answers the cgroup's
    /// `cgroup.procs` for QEMU to join. A VM without limits gets its cgroup
    /// only when limits are set on it live.
    pub(crate) fn prepare_cgroup(
        &self,
        rec: &VmRecord,
        undo: &mut crate::rollback::Rollback,
    ) -> Result<Option<std::path::PathBuf>> {
        let limits = rec
            .io_limits
            .as_ref()
            .filter(|l| **l != IoLimits::default());
        let (Some(cg), Some(limits)) = (&self.inner.cgroups, limits) else {
            return Ok(None);
        };
        if !self.core().cfg.io_throttle.contains(&IoLayer::Cgroup) {
            return Ok(None);
        }
        let name = rec.id.to_string();
        let dir = cg
            .create(&name)
            .map_err(|e| EngineError::internal("creating the VM's cgroup", e))?;
        {
            let (cg, name) = (cg.clone(), name.clone());
            undo.push("cgroup", move || {
                super::runtime::remove_cgroup_now(&cg, &name)
            });
        }
        if let Some(dev) = self.disk_device(&rec.disk_file) {
            cg.set_io(&name, dev, &io_max(Some(limits)))
                .map_err(|e| EngineError::internal("setting cgroup I/O limits", e))?;
        }
        Ok(Some(dir.join("cgroup.procs")))
    }

    /// Applies I/O limits on every configured layer (None removes them).
    pub(crate) async fn apply_io(&self, rec: &VmRecord, rt: &Runtime) -> Result<()> {
        let layers = &self.inner.core.cfg.io_throttle;
        if layers.contains(&IoLayer::Cgroup) {
            let unlimited = rec
                .io_limits
                .as_ref()
                .is_none_or(|l| *l == IoLimits::default());
            let cgroup = self
                .inner
                .cgroups
                .as_ref()
                .filter(|cg| !unlimited || cg.group_path(&rec.id.to_string()).exists());
            if let Some(cg) = cgroup {
                let name = rec.id.to_string();
                cg.create(&name)
                    .map_err(|e| EngineError::internal("creating the VM's cgroup", e))?;
                cg.add_process(&name, rt.pid)
                    .map_err(|e| EngineError::internal("moving QEMU into its cgroup", e))?;
                if let Some(dev) = self.disk_device(&rec.disk_file) {
                    cg.set_io(&name, dev, &io_max(rec.io_limits.as_ref()))
                        .map_err(|e| EngineError::internal("setting cgroup I/O limits", e))?;
                }
            }
        }
        if layers.contains(&IoLayer::Qemu) {
            let limits = throttle(rec.io_limits.as_ref());
            rt.monitor
                .set_io_throttle(DISK_QDEV, &limits)
                .await
                .map_err(qmp_err("block_set_io_throttle"))?;
        }
        Ok(())
    }

    /// Edits the VM's record and persists it.
    pub(crate) fn edit_record(&self, entry: &VmEntry, f: impl FnOnce(&mut VmRecord)) -> Result<()> {
        let mut rec = lock(&entry.rec);
        f(&mut rec);
        self.core()
            .store
            .update_vm(rec.id, rec.status.as_str(), &*rec)?;
        drop(rec);
        entry.touch();
        Ok(())
    }

    /// Removes a stopped VM's cgroup. The kernel may still count a process
    /// reaped a moment ago, so a busy group is retried briefly.
    pub(crate) async fn remove_cgroup(&self, id: uuid::Uuid) {
        let Some(cg) = &self.inner.cgroups else {
            return;
        };
        for attempt in 0..20 {
            match cg.remove(&id.to_string()) {
                Ok(()) => return,
                Err(crate::host::cgroup::CgroupError::Busy { .. }) if attempt < 19 => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => {
                    tracing::warn!(vm_id = %id, error = %e, "cannot remove the VM's cgroup");
                    return;
                }
            }
        }
    }

    async fn io_enforcement(&self, rec: &VmRecord, rt: Option<&Runtime>) -> IoEnforcement {
        let mut out = IoEnforcement::default();
        let layers = &self.inner.core.cfg.io_throttle;
        if !layers.contains(&IoLayer::Cgroup) {
            out.notes
                .push("cgroup enforcement disabled by configuration (io_throttle)".into());
        } else if self.inner.cgroups.is_none() {
            out.notes
                .push("no cgroup hierarchy with the io/blkio controller on this host".into());
        } else if rt.is_some() {
            match (&self.inner.cgroups, self.disk_device(&rec.disk_file)) {
                (Some(cg), Some(dev)) if !cg.group_path(&rec.id.to_string()).exists() => {
                    out.notes
                        .push("cgroup: none yet (the VM has had no I/O limits since it started)".into());
                    let _ = dev;
                }
                (Some(cg), Some(dev)) => {
                    let name = rec.id.to_string();
                    match cg.read_io(&name, dev) {
                        Ok(m) => out.cgroup = Some(CgroupEnforcement {
                            version: format!("{:?}", cg.version()).to_lowercase(),
                            group: cg.group_path(&name).display().to_string(),
                            device: dev.to_string(),
                            in_force: limits_of(m),
                        }),
                        Err(e) => out.notes.push(format!("cgroup: {e}")),
                    }
                }
                (_, None) => out.notes.push(format!(
                    "cgroup: {} is not on a block device the kernel throttles (tmpfs, overlay, network)",
                    rec.disk_file.display()
                )),
                _ => {}
            }
            if self.inner.disk_cache != "none" {
                out.notes.push(
                    "cgroup limits need O_DIRECT (cache=none), which this filesystem lacks".into(),
                );
            }
        }
        if !layers.contains(&IoLayer::Qemu) {
            out.notes
                .push("QEMU throttling disabled by configuration (io_throttle)".into());
        } else if let Some(rt) = rt {
            match rt.monitor.query_block().await {
                Ok(blocks) => out.qemu = qemu_throttle(&blocks),
                Err(e) => out.notes.push(format!("QEMU: {e}")),
            }
        }
        if rt.is_none() {
            out.notes
                .push("VM is not running: limits are applied at the next start".into());
        }
        out
    }

    /// `GET /vms/{id}/config`: what was asked and what is in force.
    pub async fn vm_config(&self, entry: &VmEntry) -> crate::model::VmConfig {
        let r = entry.record();
        let rt = entry.runtime();
        let io_enforcement = self.io_enforcement(&r, rt.as_deref()).await;
        let mut memory_in_force = None;
        if let Some(rt) = &rt {
            if let Ok(b) = rt.monitor.query_balloon().await {
                memory_in_force = Some(b / MIB);
            }
        }
        crate::model::VmConfig {
            id: r.id,
            name: r.name,
            vcpus: r.vcpus,
            memory: r.memory,
            disk_size: r.disk_size,
            base_image: r.base_image,
            disk_file: r.disk_file.display().to_string(),
            mac_address: r.mac_address,
            cpu_pinning: r.cpu_pinning,
            io_limits: r.io_limits,
            boot: r.boot,
            network: r.network,
            accel: self.inner.accel.as_str().into(),
            cpu_pinning_in_force: rt.as_deref().map(|rt| self.pinning_in_force(rt)),
            io_enforcement,
            memory_in_force,
            boot_memory: rt.as_deref().map(|rt| rt.boot_memory),
        }
    }

    /// Changes any subset of a VM's resources (and, for PATCH, its status).
    /// Live where QEMU can, stored for the next start otherwise.
    pub fn update(
        &self,
        entry: &Arc<VmEntry>,
        req: PatchVmRequest,
        requester: &Requester,
    ) -> Result<Submitted<Updated>> {
        vm::Bounds::of(&self.core().cfg).check(req.vcpus, req.memory, req.disk_size)?;
        if let Some(Some(p)) = &req.cpu_pinning {
            check_pinning(p)?;
        }
        if let Some(tags) = &req.tags {
            vm::validate_tags(tags)?;
        }
        if let Some(Some(c)) = &req.cloud_init {
            vm::validate_cloud_init(c)?;
        }
        if let Some(Some(l)) = &req.io_limits {
            vm::validate_io_limits(l)?;
        }
        if let Some(s) = req.status {
            if !matches!(s, VmStatus::Running | VmStatus::Stopped | VmStatus::Paused) {
                return Err(EngineError::Invalid(
                    "Invalid parameter: status must be running, stopped or paused.".into(),
                ));
            }
        }
        if let Some(d) = req.disk_size {
            let rec = entry.record();
            if rec.clone == crate::model::CloneMode::Direct && d != rec.disk_size {
                return Err(EngineError::Conflict(format!(
                    "VM {} runs on its volume directly: grow the volume on its storage instead.",
                    rec.name
                )));
            }
            let current = rec.disk_size;
            if d < current {
                return Err(EngineError::Conflict(format!(
                    "disk_size {d} GiB is smaller than the current {current} GiB; disks only grow."
                )));
            }
        }
        let job_id = uuid::Uuid::new_v4();
        let guard = self.claim(entry, job_id, "vm.update")?;
        let (handle, ctx) = self.vm_job(job_id, "vm.update", entry, requester)?;
        let agent = self.clone();
        let entry = entry.clone();
        let preview = Some(self.to_api(&entry));
        Ok(self.inner.core.spawn_job(handle, preview, async move {
            let _guard = guard;
            let changes = agent.update_steps(&entry, &req, &ctx).await?;
            let rec = entry.record();
            let applies = if changes.iter().all(|c| c.applies == Applies::Live) {
                Applies::Live
            } else {
                Applies::NextStart
            };
            if !changes.is_empty() {
                agent.publish("vm.updated", rec.id, rec.name.clone(), rec.status);
            }
            Ok(Updated {
                vm: agent.to_api(&entry),
                applies,
                changes,
                job_id,
            })
        }))
    }

    async fn update_steps(
        &self,
        entry: &Arc<VmEntry>,
        req: &PatchVmRequest,
        ctx: &JobCtx,
    ) -> Result<Vec<FieldChange>> {
        let mut rec = entry.record();
        let rt = entry.runtime();
        // A VM with a QEMU process may grow its share only within the
        // host's limits: checked, and the new share recorded, under the
        // admission lock (released before a status change, which takes it).
        let mut serial = None;
        if let Some(rt) = &rt {
            let threads = lock(&rt.vcpu_tids).len() as u64;
            let memory = req.memory.unwrap_or(rec.memory);
            let vcpus = req.vcpus.unwrap_or(rec.vcpus) as u64;
            if memory > rec.memory.max(rt.boot_memory) || vcpus > (rec.vcpus as u64).max(threads) {
                let admission = &self.core().admission;
                let guard = admission.serialize().await;
                let demand = Demand {
                    memory_mib: memory.max(rt.boot_memory),
                    vcpus: vcpus.max(threads),
                };
                admission.check(rec.id, demand).await.map_err(|s| {
                    s.refuse(&format!(
                        "VM {} with {memory} MiB and {vcpus} vCPUs",
                        rec.name
                    ))
                })?;
                serial = Some(guard);
            }
        }
        let mut changes = Vec::new();
        let mut change = |field: &str, applies| {
            changes.push(FieldChange {
                field: field.into(),
                applies,
            })
        };
        let when_running = |rt: &Option<Arc<Runtime>>| {
            if rt.is_some() {
                Applies::Live
            } else {
                Applies::NextStart
            }
        };

        if let Some(d) = req.disk_size {
            if d < rec.disk_size {
                return Err(EngineError::Conflict(format!(
                    "disk_size {d} GiB is smaller than the current {} GiB; disks only grow.",
                    rec.disk_size
                )));
            }
            if d > rec.disk_size {
                let _room = self.core().admission.reserve_disk(
                    rec.id,
                    &format!("growing the disk of VM {} to {d} GiB", rec.name),
                    &self.core().cfg.state_dir.join("vms"),
                    (d - rec.disk_size).saturating_mul(GIB),
                )?;
                match &rt {
                    Some(rt) => rt
                        .monitor
                        .block_resize(BlockRef::Device(DISK_DRIVE_ID), d * GIB)
                        .await
                        .map_err(qmp_err("block_resize"))?,
                    None => self
                        .inner
                        .img
                        .resize(&rec.disk_file, d * GIB)
                        .await
                        .map_err(|e| EngineError::internal("Failed to resize the disk", e))?,
                };
                rec.disk_size = d;
                change("disk_size", Applies::Live);
            }
        }
        if let Some(v) = req.vcpus {
            if v != rec.vcpus {
                rec.vcpus = v;
                change("vcpus", Applies::NextStart);
            }
        }
        if let Some(m) = req.memory {
            if m != rec.memory {
                let applies = match &rt {
                    Some(rt) if m <= rt.boot_memory => {
                        rt.monitor
                            .balloon(m * MIB)
                            .await
                            .map_err(qmp_err("balloon"))?;
                        Applies::Live
                    }
                    _ => Applies::NextStart,
                };
                rec.memory = m;
                change("memory", applies);
            }
        }
        if let Some(pin) = &req.cpu_pinning {
            if *pin != rec.cpu_pinning {
                if let Some(rt) = &rt {
                    self.apply_pinning(rt, pin.as_ref()).await?;
                }
                rec.cpu_pinning = pin.clone();
                change("cpu_pinning", when_running(&rt));
            }
        }
        if let Some(limits) = &req.io_limits {
            let limits = limits.clone().filter(|l| *l != IoLimits::default());
            if limits != rec.io_limits {
                rec.io_limits = limits;
                if let Some(rt) = &rt {
                    self.apply_io(&rec, rt).await?;
                }
                change("io_limits", when_running(&rt));
            }
        }
        if let Some(tags) = &req.tags {
            if *tags != rec.tags {
                rec.tags = tags.clone();
                change("tags", Applies::Live);
            }
        }
        if let Some(c) = &req.cloud_init {
            // The seed is rewritten now (beside a running QEMU's, which
            // keeps the one it opened); the guest reads it at its next start.
            if *c != rec.cloud_init_config || c.is_some() != rec.cloud_init {
                let seed = self.state_dir(rec.id).join("cidata.iso");
                match c {
                    Some(c) => self.write_seed(&rec, c).await?,
                    None => match std::fs::remove_file(&seed) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(EngineError::internal("removing the cloud-init seed", e))
                        }
                        _ => {}
                    },
                }
                rec.cloud_init = c.is_some();
                rec.cloud_init_config = c.clone();
                change("cloud_init", Applies::NextStart);
            }
        }
        if !changes.is_empty() {
            self.store_config(entry, &rec)?;
        }
        drop(serial);
        if let Some(status) = req.status {
            let action = match status {
                VmStatus::Running if entry.status() == VmStatus::Paused => Action::Resume,
                VmStatus::Running => Action::Start,
                VmStatus::Paused => Action::Pause,
                _ => Action::Stop,
            };
            match plan(action, entry.status()) {
                Plan::Refuse(msg) => return Err(EngineError::Conflict(msg)),
                Plan::Skip(_) => {}
                Plan::Proceed => {
                    let timeout = Duration::from_secs(self.inner.core.cfg.stop_timeout_secs);
                    self.run_action(entry, action, timeout, ctx).await?;
                    changes.push(FieldChange {
                        field: "status".into(),
                        applies: Applies::Live,
                    });
                }
            }
        }
        Ok(changes)
    }

    /// Persists configuration fields (not the status, which the watcher owns).
    fn store_config(&self, entry: &VmEntry, new: &VmRecord) -> Result<()> {
        let mut rec = lock(&entry.rec);
        rec.vcpus = new.vcpus;
        rec.memory = new.memory;
        rec.disk_size = new.disk_size;
        rec.cpu_pinning = new.cpu_pinning.clone();
        rec.io_limits = new.io_limits.clone();
        rec.tags = new.tags.clone();
        rec.cloud_init = new.cloud_init;
        rec.cloud_init_config = new.cloud_init_config.clone();
        rec.updated_at = crate::clock::now();
        entry.touch();
        self.inner
            .core
            .store
            .update_vm(rec.id, rec.status.as_str(), &*rec)?;
        Ok(())
    }

    /// Takes one performance sample: /proc for CPU and memory, QMP for the
    /// disk counters, sysfs for a tap NIC.
    pub(crate) async fn take_sample(&self, rt: &Runtime, tap: Option<&str>) -> Sample {
        let (cpu_ticks, rss_bytes) = proc_stats(rt.pid);
        let mut s = Sample {
            at: Instant::now(),
            at_str: crate::clock::now(),
            cpu_ticks,
            rss_bytes,
            ..Sample::default()
        };
        if let Ok(stats) = rt.monitor.query_blockstats().await {
            if let Some(st) = stats
                .iter()
                .find(|d| d.is_named(DISK_DRIVE_ID) || d.is_named(DISK_QDEV))
            {
                s.rd_bytes = st.rd_bytes;
                s.wr_bytes = st.wr_bytes;
                s.rd_ops = st.rd_operations;
                s.wr_ops = st.wr_operations;
            }
        }
        if let Some(tap) = tap {
            let stat = |k: &str| {
                std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{k}"))
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            // The host's tap sends what the guest receives, and vice versa.
            s.net = match (
                stat("tx_bytes"),
                stat("rx_bytes"),
                stat("tx_packets"),
                stat("rx_packets"),
            ) {
                (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
                _ => None,
            };
        }
        s
    }

    /// `GET /vms/{id}/performance`, from memory.
    pub fn performance(&self, entry: &VmEntry) -> Result<Performance> {
        let Some(rt) = entry.runtime() else {
            return Err(EngineError::Conflict(format!(
                "VM {} is {}: performance metrics exist only while it runs.",
                entry.id,
                entry.status().as_str()
            )));
        };
        let perf = lock(&rt.samples).performance(entry.id, clock_ticks() as f64);
        perf.ok_or_else(|| EngineError::Conflict("VM is starting: no sample yet.".into()))
    }

    /// `GET /vms/{id}/resources`.
    pub fn resources(&self, entry: &VmEntry) -> crate::model::Resources {
        let rec = entry.record();
        let perf = self.performance(entry).ok();
        let allocated_bytes = std::fs::metadata(&rec.disk_file)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        crate::model::Resources {
            id: rec.id,
            status: rec.status,
            cpu: crate::model::CpuResources {
                vcpus: rec.vcpus,
                usage_percent: perf.as_ref().map(|p| p.cpu_usage),
            },
            memory: crate::model::MemoryResources {
                configured_mib: rec.memory,
                used_mib: perf.as_ref().map(|p| p.memory_usage),
            },
            disk: crate::model::DiskResources {
                size_gib: rec.disk_size,
                allocated_bytes,
            },
        }
    }
}

fn qemu_throttle(blocks: &[BlockInfo]) -> Option<IoLimits> {
    let t = &blocks
        .iter()
        .find(|b| b.is_named(DISK_DRIVE_ID) || b.is_named(DISK_QDEV))?
        .inserted
        .as_ref()?
        .throttle;
    let g = |v: u64| (v > 0).then_some(v);
    Some(IoLimits {
        iops: g(t.iops),
        read_iops: g(t.read_iops),
        write_iops: g(t.write_iops),
        read_bps: g(t.read_bps),
        write_bps: g(t.write_bps),
    })
}

/// utime+stime (clock ticks) and resident bytes of a process.
fn proc_stats(pid: u32) -> (u64, u64) {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14, stime 15.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    (ticks, rss)
}

pub(crate) fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

/// QEMU's throttle for some `IoLimits` (all 0: none).
pub(crate) fn throttle(l: Option<&IoLimits>) -> IoThrottle {
    let l = l.cloned().unwrap_or_default();
    let v = |x: Option<u64>| x.unwrap_or(0);
    IoThrottle {
        iops: v(l.iops),
        read_iops: v(l.read_iops),
        write_iops: v(l.write_iops),
        bps: 0,
        read_bps: v(l.read_bps),
        write_bps: v(l.write_bps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_iops_bounds_each_direction_and_direction_wins() {
        let l = IoLimits {
            iops: Some(50),
            write_iops: Some(10),
            read_bps: Some(0),
            ..IoLimits::default()
        };
        assert_eq!(
            io_max(Some(&l)),
            IoMax {
                read_iops: Some(50),
                write_iops: Some(10),
                read_bps: None,
                write_bps: None
            }
        );
        assert_eq!(io_max(None), IoMax::default());
    }

    #[test]
    fn qemu_throttle_is_read_from_query_block() {
        let blocks: Vec<BlockInfo> = serde_json::from_value(serde_json::json!([{"device": "disk0", "qdev": DISK_QDEV, "inserted": {"file": "/d.qcow2", "ro": false, "iops": 0, "iops_rd": 50, "iops_wr": 0, "bps": 0, "bps_rd": 0, "bps_wr": 1000}}])).unwrap();
        let l = qemu_throttle(&blocks).unwrap();
        assert_eq!(
            (l.read_iops, l.write_bps, l.iops),
            (Some(50), Some(1000), None)
        );
    }

    #[test]
    fn proc_stats_of_self() {
        let (ticks, rss) = proc_stats(std::process::id());
        assert!(rss > 0);
        let _ = ticks;
        assert!(clock_ticks() > 0);
    }
}
