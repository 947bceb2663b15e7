//! Extra disks of a VM: a volume of a dir pool (made for the disk, or one
//! no VM uses) attached to a stopped VM for its next start, or hot-plugged
//! into a running one; detached (hot-unplugged: the guest releases it)
//! again. Each attach and detach is a job on the VM, recorded before it
//! touches anything (`DiskState`), so a stop of the daemon in the middle is
//! undone or finished at the next start and the VM's definition always
//! matches what its QEMU has.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::record::{is_dns_label, DiskRecord, DiskState, VmRecord};
use super::registry::{VmEngine, VmEntry};
use crate::engine::core::{JobCtx, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::host::confine::{self, VmFile};
use crate::host::pool;
use crate::model::{AttachDiskRequest, Disk, IoLimits, PoolType, VmStatus};
use crate::qemu::disks::{self as qdisks, DiskError, ExtraDisk, HOTPLUG_PORTS, MAX_ID_LEN};
use crate::qemu::monitor::ImageFormat;
use crate::rollback::Rollback;
use crate::sync::lock;

const GIB: u64 = 1 << 30;
/// How long a guest has to release a disk being unplugged.
const UNPLUG_DEADLINE: Duration = Duration::from_secs(30);

use super::resources::throttle;

/// What the guest reads as the disk's serial (virtio-blk keeps 20 bytes).
fn serial(name: &str) -> String {
    format!("lg-{name}").chars().take(20).collect()
}

fn disk_err(e: DiskError) -> EngineError {
    match e {
        DiskError::Invalid(m) => EngineError::Invalid(format!("Invalid parameter: {m}.")),
        DiskError::NoFreePort => EngineError::Conflict(format!(
            "The VM has no free hot-plug port (at most {HOTPLUG_PORTS} extra disks; a VM started before libgo had them needs a restart)."
        )),
        e @ DiskError::NotReleased { .. } => EngineError::Conflict(e.to_string()),
        DiskError::Qmp(q) => EngineError::internal("QMP", q),
    }
}

impl VmEngine {
    /// The disks QEMU gets at start: those attached.
    pub(crate) fn start_disks(&self, rec: &VmRecord) -> Vec<ExtraDisk> {
        rec.disks
            .iter()
            .filter(|d| d.state == DiskState::Attached)
            .map(|d| self.extra_disk(d))
            .collect()
    }

    fn extra_disk(&self, d: &DiskRecord) -> ExtraDisk {
        ExtraDisk {
            id: d.name.clone(),
            path: d.path.clone(),
            format: if d.format == "raw" {
                ImageFormat::Raw
            } else {
                ImageFormat::Qcow2
            },
            read_only: d.read_only,
            serial: serial(&d.name),
            io: throttle(d.io_limits.as_ref()),
            direct: d.path.parent().is_some_and(crate::host::supports_o_direct),
        }
    }

    /// The disk as the API shows it.
    fn disk_view(&self, rec: &VmRecord, d: &DiskRecord, capacity: u64) -> Disk {
        let first = if rec.cloud_init { b'c' } else { b'b' };
        let index = rec
            .disks
            .iter()
            .filter(|x| x.state != DiskState::Attaching || x.name == d.name)
            .position(|x| x.name == d.name)
            .unwrap_or(0);
        Disk {
            name: d.name.clone(),
            pool: d.pool.clone(),
            volume: d.volume.clone(),
            format: d.format.clone(),
            capacity,
            device: device_name(first, index),
            serial: serial(&d.name),
            read_only: d.read_only,
            io_limits: d.io_limits.clone(),
            owned: d.owned,
            attached: matches!(rec.status, VmStatus::Running | VmStatus::Paused)
                && d.state == DiskState::Attached,
        }
    }

    async fn capacity(&self, path: &std::path::Path) -> u64 {
        self.inner
            .base_info
            .info(&self.inner.img, path)
            .await
            .map(|i| i.virtual_size)
            .unwrap_or(0)
    }

    /// A VM's extra disks, in port order.
    pub async fn disks(&self, entry: &VmEntry) -> Vec<Disk> {
        let rec = entry.record();
        let mut out = Vec::new();
        for d in rec.disks.iter().filter(|d| d.state == DiskState::Attached) {
            out.push(self.disk_view(&rec, d, self.capacity(&d.path).await));
        }
        out
    }

    pub async fn disk(&self, entry: &VmEntry, name: &str) -> Result<Disk> {
        let rec = entry.record();
        let d = rec
            .disks
            .iter()
            .find(|d| d.name == name && d.state == DiskState::Attached)
            .ok_or_else(|| EngineError::NotFound(format!("No such disk: {name}")))?;
        Ok(self.disk_view(&rec, d, self.capacity(&d.path).await))
    }

    /// Attaches a disk: to a stopped VM for its next start, or hot-plugged
    /// into a running one. A job.
    pub async fn attach_disk(
        &self,
        entry: &Arc<VmEntry>,
        req: AttachDiskRequest,
        requester: &Requester,
    ) -> Result<Submitted<Disk>> {
        let rec = entry.record();
        let name = match &req.name {
            Some(n) => n.clone(),
            None => (1..)
                .map(|i| format!("disk{i}"))
                .find(|n| rec.disks.iter().all(|d| &d.name != n))
                .unwrap_or_default(),
        };
        if !is_dns_label(&name) || name.len() > MAX_ID_LEN {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: a disk name is a DNS label of at most {MAX_ID_LEN} characters, got {name:?}."
            )));
        }
        if rec.disks.iter().any(|d| d.name == name) {
            return Err(EngineError::Conflict(format!(
                "The VM has a disk named {name}."
            )));
        }
        if rec.disks.len() >= HOTPLUG_PORTS {
            return Err(EngineError::Conflict(format!(
                "The VM has {HOTPLUG_PORTS} extra disks, the most it can have."
            )));
        }
        if let Some(l) = &req.io_limits {
            super::record::validate_io_limits(l)?;
        }
        let pool_name = req.pool.clone().unwrap_or_else(|| "default".into());
        let pools = &self.core().pools;
        let def = pools.find(&pool_name)?;
        if !def.active {
            return Err(EngineError::Conflict(format!(
                "Storage pool {pool_name} is inactive; activate it first."
            )));
        }
        if def.kind != PoolType::Dir {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: extra disks live in dir pools; {pool_name} is {}.",
                def.kind.as_str()
            )));
        }
        // The volume: made for the disk, or an existing one no VM uses.
        let (volume, path, format, size) = match (&req.size, &req.volume) {
            (Some(gib), None) => {
                let max = self.core().cfg.max_disk_gib;
                if *gib == 0 || *gib > max {
                    return Err(EngineError::Invalid(format!(
                        "Invalid parameter: size must be 1..={max} GiB, got {gib}."
                    )));
                }
                let volume = format!("{}-{name}.qcow2", rec.name);
                let path = def.path.join(&volume);
                if path.symlink_metadata().is_ok() {
                    return Err(EngineError::Conflict(format!(
                        "Volume {volume} exists in storage pool {pool_name}."
                    )));
                }
                (volume, path, "qcow2".to_owned(), Some(gib * GIB))
            }
            (None, Some(volume)) => {
                if !pool::valid_volume_name(volume) {
                    return Err(EngineError::Invalid(format!(
                        "Invalid parameter: {volume:?} is not a volume name."
                    )));
                }
                let path = def.volume_path(volume)?;
                let info = self
                    .inner
                    .base_info
                    .info(&self.inner.img, &path)
                    .await
                    .map_err(|e| EngineError::Invalid(format!("{volume} is not a disk image: {e}")))?;
                if info.format != "qcow2" && info.format != "raw" {
                    return Err(EngineError::Invalid(format!(
                        "Invalid parameter: a disk is a qcow2 or raw volume; {volume} is {}.",
                        info.format
                    )));
                }
                if let Some((_, u)) = self
                    .volume_users()
                    .into_iter()
                    .find(|(p, _)| p.canonicalize().ok().as_deref() == Some(path.as_path()))
                {
                    return Err(EngineError::Conflict(format!(
                        "Volume {volume} is in use by VM {} ({}) as its {}.",
                        u.name, u.id, u.role
                    )));
                }
                (volume.clone(), path, info.format, None)
            }
            _ => {
                return Err(EngineError::Invalid(
                    "Invalid parameter: give exactly one of size (a new volume) or volume (an existing one).".into(),
                ))
            }
        };
        let job_id = Uuid::new_v4();
        let vol_guard = pools.claim(
            vec![(pool_name.clone(), volume.clone())],
            job_id,
            "vm.disk-attach",
        )?;
        let guard = self.claim(entry, job_id, "vm.disk-attach")?;
        let (handle, ctx) = self.vm_job(job_id, "vm.disk-attach", entry, requester)?;
        let status = entry.status();
        if !matches!(
            status,
            VmStatus::Stopped | VmStatus::Running | VmStatus::Paused
        ) {
            drop((guard, vol_guard));
            return self.core().refused(
                handle,
                EngineError::Conflict(format!(
                    "cannot attach a disk to a VM that is {}",
                    status.as_str()
                )),
            );
        }
        let disk = DiskRecord {
            name,
            pool: pool_name,
            volume,
            path,
            format,
            read_only: req.read_only,
            io_limits: req.io_limits.filter(|l| *l != IoLimits::default()),
            owned: size.is_some(),
            state: DiskState::Attaching,
        };
        let engine = self.clone();
        let entry = entry.clone();
        Ok(self.inner.core.spawn_job(handle, None, async move {
            let _guards = (guard, vol_guard);
            ctx.handle.task_running(0);
            let r = engine.attach_steps(&entry, disk, size, &ctx).await;
            ctx.handle
                .task_done(0, r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            r
        }))
    }

    async fn attach_steps(
        &self,
        entry: &Arc<VmEntry>,
        mut disk: DiskRecord,
        size: Option<u64>,
        ctx: &JobCtx,
    ) -> Result<Disk> {
        let mut rb = Rollback::new();
        // Recorded first: a stop of the daemon from here on is undone at
        // the next start.
        self.edit_disks(entry, |disks| disks.push(disk.clone()))?;
        {
            let (engine, entry, name) = (self.clone(), entry.clone(), disk.name.clone());
            rb.push("forget the disk", move || {
                let _ = engine.edit_disks(&entry, |d| d.retain(|x| x.name != name));
            });
        }
        if let Some(bytes) = size {
            let tmp = pool::hidden(
                disk.path.parent().unwrap_or(std::path::Path::new("/")),
                ctx.handle.id(),
                &disk.volume,
            );
            let undo = tmp.clone();
            rb.push("remove the partial volume", move || {
                let _ = std::fs::remove_file(&undo);
            });
            self.inner
                .img
                .create(&tmp, "qcow2", bytes)
                .await
                .map_err(|e| EngineError::internal("qemu-img create", e))?;
            pool::publish(&tmp, &disk.path).map_err(|e| {
                EngineError::internal(format!("publishing {}", disk.path.display()), e)
            })?;
            let made = disk.path.clone();
            rb.push("remove the new volume", move || {
                let _ = std::fs::remove_file(&made);
            });
            ctx.log(format!("made {}", disk.path.display()));
        }
        // QEMU, as the VM's group, reads and writes it.
        let gid = self.assign_gid(entry)?;
        let file = if disk.read_only {
            VmFile::Seed
        } else {
            VmFile::Disk
        };
        confine::own(&disk.path, gid, file)
            .map_err(|e| EngineError::internal("giving the disk to the VM's group", e))?;
        ctx.check()?;
        if let Some(rt) = entry.runtime() {
            let t = std::time::Instant::now();
            let extra = self.extra_disk(&disk);
            let port = qdisks::free_ports(&rt.monitor)
                .await
                .map_err(disk_err)?
                .into_iter()
                .next()
                .ok_or_else(|| disk_err(DiskError::NoFreePort))?;
            qdisks::hotplug(&rt.monitor, &extra, &port)
                .await
                .map_err(disk_err)?;
            let vm_name = entry.record().name;
            self.inner.faults.inject(
                &vm_name,
                crate::engine::faults::After::Hotplug,
                &self.core().jobs,
                ctx,
            )?;
            ctx.log(format!(
                "hot-plugged on {port} in {} ms",
                t.elapsed().as_millis()
            ));
        }
        disk.state = DiskState::Attached;
        let name = disk.name.clone();
        self.edit_disks(entry, |disks| {
            if let Some(d) = disks.iter_mut().find(|d| d.name == name) {
                d.state = DiskState::Attached;
            }
        })?;
        rb.disarm();
        ctx.progress(100);
        self.disk(entry, &name).await
    }

    /// Detaches a disk (the running guest releases it first); with
    /// `delete_volume`, a volume made for the disk goes too. A job.
    pub fn detach_disk(
        &self,
        entry: &Arc<VmEntry>,
        name: &str,
        delete_volume: bool,
        requester: &Requester,
    ) -> Result<Submitted<Disk>> {
        let rec = entry.record();
        let d = rec
            .disks
            .iter()
            .find(|d| d.name == name && d.state == DiskState::Attached)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("No such disk: {name}")))?;
        let job_id = Uuid::new_v4();
        let guard = self.claim(entry, job_id, "vm.disk-detach")?;
        let (handle, ctx) = self.vm_job(job_id, "vm.disk-detach", entry, requester)?;
        match entry.status() {
            VmStatus::Stopped | VmStatus::Running => {}
            VmStatus::Paused => {
                drop(guard);
                return self.core().refused(
                    handle,
                    EngineError::Conflict(
                        "a paused guest cannot release a disk: resume the VM, then detach".into(),
                    ),
                );
            }
            other => {
                drop(guard);
                return self.core().refused(
                    handle,
                    EngineError::Conflict(format!(
                        "cannot detach a disk from a VM that is {}",
                        other.as_str()
                    )),
                );
            }
        }
        let delete_volume = delete_volume && d.owned;
        let engine = self.clone();
        let entry = entry.clone();
        Ok(self.inner.core.spawn_job(handle, None, async move {
            let _guard = guard;
            ctx.handle.task_running(0);
            let view = {
                let rec = entry.record();
                engine.disk_view(&rec, &d, engine.capacity(&d.path).await)
            };
            let r = engine
                .detach_steps(&entry, &d, delete_volume, &ctx)
                .await
                .map(|_| Disk {
                    attached: false,
                    ..view
                });
            ctx.handle
                .task_done(0, r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            r
        }))
    }

    async fn detach_steps(
        &self,
        entry: &Arc<VmEntry>,
        d: &DiskRecord,
        delete_volume: bool,
        ctx: &JobCtx,
    ) -> Result<()> {
        let set = |state: DiskState| {
            self.edit_disks(entry, |disks| {
                if let Some(x) = disks.iter_mut().find(|x| x.name == d.name) {
                    x.state = state;
                }
            })
        };
        set(DiskState::Detaching { delete_volume })?;
        if let Some(rt) = entry.runtime() {
            let t = std::time::Instant::now();
            if let Err(e) = qdisks::unplug(&rt.monitor, &d.name, UNPLUG_DEADLINE).await {
                // Still plugged: the disk stays attached.
                set(DiskState::Attached)?;
                return Err(disk_err(e));
            }
            ctx.log(format!(
                "guest released it in {} ms",
                t.elapsed().as_millis()
            ));
        }
        self.finish_detach(entry, d, delete_volume)
    }

    fn finish_detach(
        &self,
        entry: &Arc<VmEntry>,
        d: &DiskRecord,
        delete_volume: bool,
    ) -> Result<()> {
        self.edit_disks(entry, |disks| disks.retain(|x| x.name != d.name))?;
        if delete_volume {
            match std::fs::remove_file(&d.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %d.path.display(), error = %e, "volume of a detached disk left")
                }
            }
        }
        Ok(())
    }

    /// Changes the VM's disk list and persists it.
    fn edit_disks(&self, entry: &VmEntry, f: impl FnOnce(&mut Vec<DiskRecord>)) -> Result<()> {
        self.edit_record(entry, |rec| {
            f(&mut rec.disks);
            rec.updated_at = crate::clock::now();
        })
    }

    /// After a restart: an attach cut short is undone, a detach cut short
    /// finished, so the definition matches what QEMU has (`running`: the
    /// VM's QEMU was re-adopted).
    pub(crate) async fn settle_disks(&self, entry: &Arc<VmEntry>) {
        let rec = entry.record();
        for d in rec.disks.iter().filter(|d| d.state != DiskState::Attached) {
            if let Some(rt) = entry.runtime() {
                let present = rt
                    .monitor
                    .peripheral_exists(&qdisks::device_id(&d.name))
                    .await
                    .unwrap_or(false);
                if present {
                    if let Err(e) = qdisks::unplug(&rt.monitor, &d.name, UNPLUG_DEADLINE).await {
                        tracing::warn!(vm_id = %rec.id, disk = %d.name, error = %e, "cannot unplug a disk left half-attached");
                        continue;
                    }
                }
            }
            let delete = match d.state {
                DiskState::Attaching => d.owned,
                DiskState::Detaching { delete_volume } => delete_volume,
                DiskState::Attached => false,
            };
            if let Err(e) = self.finish_detach(entry, d, delete) {
                tracing::warn!(vm_id = %rec.id, disk = %d.name, error = %e, "cannot settle a disk");
            } else {
                tracing::info!(vm_id = %rec.id, disk = %d.name, "settled a disk attach or detach cut short");
            }
        }
    }

    pub(crate) fn entries_with_unsettled_disks(&self) -> Vec<Arc<VmEntry>> {
        self.entries()
            .into_iter()
            .filter(|e| {
                lock(&e.rec)
                    .disks
                    .iter()
                    .any(|d| d.state != DiskState::Attached)
            })
            .collect()
    }

    /// Volumes made for the VM's disks (they go with the VM).
    pub(crate) fn owned_volumes(rec: &VmRecord) -> Vec<PathBuf> {
        rec.disks
            .iter()
            .filter(|d| d.owned)
            .map(|d| d.path.clone())
            .collect()
    }
}

/// `vd` + the letter of the disk at `index` counted from `first`.
fn device_name(first: u8, index: usize) -> String {
    let n = (first - b'a') as usize + index;
    if n < 26 {
        format!("vd{}", (b'a' + n as u8) as char)
    } else {
        format!(
            "vd{}{}",
            (b'a' + (n / 26 - 1) as u8) as char,
            (b'a' + (n % 26) as u8) as char
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_follow_the_root_disk_and_the_seed() {
        assert_eq!(device_name(b'b', 0), "vdb");
        assert_eq!(device_name(b'c', 1), "vdd");
        assert_eq!(device_name(b'b', 25), "vdaa");
        assert_eq!(serial("a-very-long-disk-name-x"), "lg-a-very-long-disk-");
    }

    #[test]
    fn limits_become_qemu_throttles() {
        let t = throttle(Some(&IoLimits {
            read_iops: Some(50),
            write_bps: Some(1 << 20),
            ..Default::default()
        }));
        assert_eq!((t.read_iops, t.write_bps, t.iops), (50, 1 << 20, 0));
    }
}
