//! The host steps of VM snapshots: internal qcow2 snapshots of the root
//! disk, taken, applied and dropped with `qemu-img` while the VM is off,
//! and through QEMU's own snapshot jobs while it runs (memory included or
//! not). The API-facing operations (jobs, the tree, the status rules) build
//! on these.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::live::{qmp_err, Runtime};
use super::record::is_dns_label;
use super::registry::{OpGuard, VmEngine, VmEntry};
use crate::engine::core::{JobCtx, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::jobs::JobHandle;
use crate::model::{CreateSnapshotRequest, Snapshot, VmStatus};
use crate::qemu::argv::DISK_DRIVE_ID;
use crate::store::SnapshotRow;

/// How long a QEMU snapshot job may run before it is given up.
const JOB_DEADLINE: Duration = Duration::from_secs(600);

/// The node name of the root disk's qcow2 layer in a running QEMU.
async fn disk_node(rt: &Runtime) -> Result<String> {
    let blocks = rt
        .monitor
        .query_block()
        .await
        .map_err(qmp_err("query-block"))?;
    blocks
        .into_iter()
        .find(|b| b.device.as_deref() == Some(DISK_DRIVE_ID))
        .and_then(|b| b.inserted)
        .and_then(|i| i.node_name)
        .ok_or_else(|| EngineError::failed("QEMU shows no node of the root disk"))
}

/// Waits for QEMU job `id` to conclude, then dismisses it; its error, if
/// any, is the step's.
async fn wait_job(rt: &Runtime, id: &str, step: &'static str) -> Result<()> {
    let started = Instant::now();
    loop {
        let jobs = rt
            .monitor
            .query_jobs()
            .await
            .map_err(qmp_err("query-jobs"))?;
        match jobs.into_iter().find(|j| j.id == id) {
            Some(j) if j.status == "concluded" => {
                let _ = rt.monitor.job_dismiss(id).await;
                return match j.error {
                    None => Ok(()),
                    Some(e) => Err(EngineError::failed(format!("{step}: {e}"))),
                };
            }
            Some(_) => {}
            None => {
                return Err(EngineError::failed(format!(
                    "{step}: QEMU job {id} disappeared"
                )))
            }
        }
        if started.elapsed() > JOB_DEADLINE {
            return Err(EngineError::failed(format!(
                "{step}: QEMU job {id} still running after {} s",
                JOB_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl VmEngine {
    /// Takes snapshot `tag` of a running VM's disk, with its memory when
    /// `memory` (QEMU pauses the guest while it saves, then resumes it).
    pub(crate) async fn snapshot_take_live(
        &self,
        rt: &Runtime,
        tag: &str,
        memory: bool,
    ) -> Result<()> {
        let node = disk_node(rt).await?;
        let job = format!("snap-save-{tag}");
        if memory {
            rt.monitor
                .snapshot_save(&job, tag, &node, &[&node])
                .await
                .map_err(qmp_err("snapshot-save"))?;
            wait_job(rt, &job, "QEMU snapshot-save").await
        } else {
            rt.monitor
                .snapshot_internal_disk(DISK_DRIVE_ID, tag)
                .await
                .map_err(qmp_err("blockdev-snapshot-internal-sync"))
        }
    }

    /// Puts a running VM back to snapshot `tag` (taken with its memory):
    /// disk, memory and devices, running again at that instant.
    pub(crate) async fn snapshot_load_live(&self, rt: &Runtime, tag: &str) -> Result<()> {
        let node = disk_node(rt).await?;
        let job = format!("snap-load-{tag}");
        rt.monitor
            .snapshot_load(&job, tag, &node, &[&node])
            .await
            .map_err(qmp_err("snapshot-load"))?;
        wait_job(rt, &job, "QEMU snapshot-load").await
    }

    /// Drops snapshot `tag` from a running VM's disk.
    pub(crate) async fn snapshot_drop_live(&self, rt: &Runtime, tag: &str) -> Result<()> {
        let node = disk_node(rt).await?;
        let job = format!("snap-delete-{tag}");
        rt.monitor
            .snapshot_delete(&job, tag, &[&node])
            .await
            .map_err(qmp_err("snapshot-delete"))?;
        wait_job(rt, &job, "QEMU snapshot-delete").await
    }

    /// `qemu-img snapshot` on a stopped VM's disk: take (`-c`), apply (`-a`)
    /// or drop (`-d`).
    pub(crate) async fn snapshot_offline(
        &self,
        disk: &std::path::Path,
        tag: &str,
        op: OfflineOp,
    ) -> Result<()> {
        let img = &self.inner.img;
        let r = match op {
            OfflineOp::Take => img.snapshot_create(disk, tag).await,
            OfflineOp::Apply => img.snapshot_apply(disk, tag).await,
            OfflineOp::Drop => img.snapshot_delete(disk, tag).await,
        };
        r.map_err(|e| EngineError::internal(format!("qemu-img snapshot {tag}"), e))
    }
}

/// What `qemu-img snapshot` does to a stopped VM's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfflineOp {
    Take,
    Apply,
    Drop,
}

fn view(row: &SnapshotRow, size: u64) -> Snapshot {
    Snapshot {
        name: row.name.clone(),
        description: row.description.clone(),
        created: row.created,
        created_at: crate::clock::from_unix(row.created),
        parent: row.parent.clone(),
        vm_state: row.vm_state,
        size,
    }
}

/// A snapshot job that passed its checks: the VM's operation slot, the
/// job, and whether QEMU (not qemu-img) does the work.
struct Begun {
    guard: OpGuard,
    handle: Arc<JobHandle>,
    ctx: JobCtx,
    live: bool,
}

impl VmEngine {
    /// Bytes of saved state per snapshot tag, as the disk image says.
    async fn snapshot_sizes(&self, entry: &VmEntry) -> std::collections::HashMap<String, u64> {
        let disk = entry.record().disk_file;
        match self.inner.img.info(&disk).await {
            Ok(info) => info
                .snapshots
                .into_iter()
                .map(|s| (s.name, s.vm_state_size))
                .collect(),
            Err(_) => Default::default(),
        }
    }

    /// The answer for one snapshot, with its size read from the image.
    async fn snapshot_view(&self, entry: &VmEntry, row: &SnapshotRow) -> Snapshot {
        let size = self.snapshot_sizes(entry).await.get(&row.name).copied();
        view(row, size.unwrap_or(0))
    }

    /// A VM's snapshots, oldest first, and the one its disk came from.
    pub async fn snapshots(&self, entry: &VmEntry) -> Result<(Vec<Snapshot>, Option<String>)> {
        let rows = self.core().store.snapshots(entry.id)?;
        let sizes = self.snapshot_sizes(entry).await;
        let list = rows
            .iter()
            .map(|r| view(r, sizes.get(&r.name).copied().unwrap_or(0)))
            .collect();
        Ok((list, entry.record().current_snapshot))
    }

    /// One snapshot of a VM.
    pub async fn snapshot(&self, entry: &VmEntry, name: &str) -> Result<Snapshot> {
        let row = self.snapshot_row(entry, name)?;
        Ok(self.snapshot_view(entry, &row).await)
    }

    fn snapshot_row(&self, entry: &VmEntry, name: &str) -> Result<SnapshotRow> {
        self.core()
            .store
            .snapshot(entry.id, name)?
            .ok_or_else(|| EngineError::NotFound(format!("No such snapshot: {name}")))
    }

    fn set_current(&self, entry: &VmEntry, name: Option<String>) -> Result<()> {
        self.edit_record(entry, |rec| rec.current_snapshot = name)
    }

    /// Claims the VM for a snapshot job `kind`, records the job, and asks
    /// `decide` (given the status, the VM held) whether QEMU does the work;
    /// a refusal is recorded on the job and answered.
    fn begin_snapshot_job(
        &self,
        entry: &Arc<VmEntry>,
        kind: &str,
        requester: &Requester,
        decide: impl FnOnce(VmStatus) -> Result<bool>,
    ) -> Result<Begun> {
        let rec = entry.record();
        if !rec.snapshots_possible() {
            return Err(EngineError::Conflict(format!(
                "VM {} runs on a {} volume, which holds no snapshots.",
                rec.name, rec.disk_format
            )));
        }
        let job_id = Uuid::new_v4();
        let guard = self.claim(entry, job_id, kind)?;
        let (handle, ctx) = self.vm_job(job_id, kind, entry, requester)?;
        match decide(entry.status()) {
            Ok(live) => Ok(Begun {
                guard,
                handle,
                ctx,
                live,
            }),
            Err(e) => {
                drop(guard);
                self.core().refused(handle, e)
            }
        }
    }

    /// Takes a snapshot: of the disk of a stopped VM, or of a running or
    /// paused one (with its memory when asked). A job.
    pub fn create_snapshot(
        &self,
        entry: &Arc<VmEntry>,
        req: CreateSnapshotRequest,
        requester: &Requester,
    ) -> Result<Submitted<Snapshot>> {
        if !is_dns_label(&req.name) {
            return Err(EngineError::Invalid(format!(
                "Invalid snapshot name {:?}: a DNS label (a-z, 0-9, '-', at most 63).",
                req.name
            )));
        }
        let description = req.description.clone().unwrap_or_default();
        if description.chars().count() > 1024 {
            return Err(EngineError::Invalid(
                "A description has at most 1024 characters.".into(),
            ));
        }
        let exists = self.core().store.snapshot(entry.id, &req.name)?.is_some();
        let b = self.begin_snapshot_job(entry, "vm.snapshot", requester, |status| {
            if exists {
                return Err(EngineError::Conflict(format!(
                    "snapshot {} already exists",
                    req.name
                )));
            }
            match status {
                VmStatus::Stopped if req.memory => Err(EngineError::Conflict(
                    "a stopped VM has no memory to save: take a disk-only snapshot".into(),
                )),
                VmStatus::Stopped => Ok(false),
                VmStatus::Running | VmStatus::Paused => Ok(true),
                other => Err(EngineError::Conflict(format!(
                    "cannot snapshot a VM that is {}",
                    other.as_str()
                ))),
            }
        })?;
        let engine = self.clone();
        let entry = entry.clone();
        Ok(self.inner.core.spawn_job(b.handle, None, async move {
            let (_guard, ctx) = (b.guard, b.ctx);
            let rec = entry.record();
            let row = SnapshotRow {
                vm: entry.id,
                name: req.name.clone(),
                description,
                parent: rec.current_snapshot.clone().unwrap_or_default(),
                created: crate::clock::unix_now(),
                vm_state: req.memory,
            };
            if b.live {
                let rt = live_runtime(&entry)?;
                engine.snapshot_take_live(&rt, &row.name, req.memory).await?;
            } else {
                engine
                    .snapshot_offline(&rec.disk_file, &row.name, OfflineOp::Take)
                    .await?;
            }
            engine.inner.faults.inject(
                &rec.name,
                crate::engine::faults::After::Snapshot,
                &engine.core().jobs,
                &ctx,
            )?;
            // The snapshot is in the image: record it, or take it back out.
            let recorded = engine
                .core()
                .store
                .insert_snapshot(&row)
                .map_err(EngineError::from)
                .and_then(|_| engine.set_current(&entry, Some(row.name.clone())));
            if let Err(e) = recorded {
                let undo = match entry.runtime() {
                    Some(rt) if b.live => engine.snapshot_drop_live(&rt, &row.name).await,
                    _ => {
                        engine
                            .snapshot_offline(&rec.disk_file, &row.name, OfflineOp::Drop)
                            .await
                    }
                };
                if let Err(u) = undo {
                    tracing::error!(error = %u, snapshot = %row.name, "cannot take back a snapshot that was not recorded");
                }
                let _ = engine.core().store.delete_snapshot(entry.id, &row.name);
                return Err(e);
            }
            Ok(engine.snapshot_view(&entry, &row).await)
        }))
    }

    /// Puts the VM back to a snapshot: a disk-only one on a stopped VM, one
    /// with memory on a running or paused VM (which then runs from that
    /// instant). A job.
    pub fn revert_snapshot(
        &self,
        entry: &Arc<VmEntry>,
        name: &str,
        requester: &Requester,
    ) -> Result<Submitted<Snapshot>> {
        let row = self.snapshot_row(entry, name)?;
        let memory = row.vm_state;
        let b = self.begin_snapshot_job(entry, "vm.revert", requester, |status| {
            match (status, memory) {
                (VmStatus::Running | VmStatus::Paused, true) => Ok(true),
                (VmStatus::Stopped, false) => Ok(false),
                (VmStatus::Stopped, true) => Err(EngineError::Conflict(format!(
                    "snapshot {name} holds the guest's memory: start the VM, then revert"
                ))),
                (VmStatus::Running | VmStatus::Paused, false) => Err(EngineError::Conflict(
                    format!("snapshot {name} is of the disk only: stop the VM, then revert"),
                )),
                (other, _) => Err(EngineError::Conflict(format!(
                    "cannot revert a VM that is {}",
                    other.as_str()
                ))),
            }
        })?;
        let engine = self.clone();
        let entry = entry.clone();
        Ok(self.inner.core.spawn_job(b.handle, None, async move {
            let (_guard, _ctx) = (b.guard, b.ctx);
            if b.live {
                let rt = live_runtime(&entry)?;
                engine.snapshot_load_live(&rt, &row.name).await?;
            } else {
                engine
                    .snapshot_offline(&entry.record().disk_file, &row.name, OfflineOp::Apply)
                    .await?;
            }
            engine.set_current(&entry, Some(row.name.clone()))?;
            Ok(engine.snapshot_view(&entry, &row).await)
        }))
    }

    /// Drops a snapshot from the disk and the tree (its children take its
    /// parent). A job.
    pub fn delete_snapshot(
        &self,
        entry: &Arc<VmEntry>,
        name: &str,
        requester: &Requester,
    ) -> Result<Submitted<Snapshot>> {
        let row = self.snapshot_row(entry, name)?;
        let b =
            self.begin_snapshot_job(
                entry,
                "vm.snapshot-delete",
                requester,
                |status| match status {
                    VmStatus::Stopped => Ok(false),
                    VmStatus::Running | VmStatus::Paused => Ok(true),
                    other => Err(EngineError::Conflict(format!(
                        "cannot delete a snapshot of a VM that is {}",
                        other.as_str()
                    ))),
                },
            )?;
        let engine = self.clone();
        let entry = entry.clone();
        Ok(self.inner.core.spawn_job(b.handle, None, async move {
            let (_guard, _ctx) = (b.guard, b.ctx);
            // Its size is read while it is still in the image.
            let answer = engine.snapshot_view(&entry, &row).await;
            if b.live {
                let rt = live_runtime(&entry)?;
                engine.snapshot_drop_live(&rt, &row.name).await?;
            } else {
                engine
                    .snapshot_offline(&entry.record().disk_file, &row.name, OfflineOp::Drop)
                    .await?;
            }
            engine.core().store.delete_snapshot(entry.id, &row.name)?;
            if entry.record().current_snapshot.as_deref() == Some(row.name.as_str()) {
                let parent = (!row.parent.is_empty()).then(|| row.parent.clone());
                engine.set_current(&entry, parent)?;
            }
            Ok(answer)
        }))
    }
}

impl VmEngine {
    /// After a snapshot, revert, delete or export job was cut by a stop of
    /// the daemon: the image's snapshots and the tree are made to agree
    /// again. A snapshot in the image with no row (taken, never recorded;
    /// an export's own) is dropped; a row whose snapshot is gone is
    /// forgotten.
    pub async fn reconcile_snapshots(&self, vms: &[Uuid]) {
        for id in vms {
            let Ok(entry) = self.find(&id.to_string()) else {
                continue;
            };
            if let Err(e) = self.reconcile_one(&entry).await {
                tracing::warn!(vm_id = %id, error = %e, "cannot reconcile the snapshots");
            }
        }
    }

    async fn reconcile_one(&self, entry: &Arc<VmEntry>) -> Result<()> {
        let disk = entry.record().disk_file;
        let in_image = self
            .inner
            .img
            .info(&disk)
            .await
            .map_err(|e| EngineError::internal("reading the disk's snapshots", e))?
            .snapshots;
        let rows = self.core().store.snapshots(entry.id)?;
        for s in &in_image {
            if rows.iter().any(|r| r.name == s.name) {
                continue;
            }
            match entry.runtime() {
                Some(rt) => self.snapshot_drop_live(&rt, &s.name).await?,
                None => {
                    self.snapshot_offline(&disk, &s.name, OfflineOp::Drop)
                        .await?
                }
            }
            tracing::warn!(vm_id = %entry.id, snapshot = %s.name, "dropped a snapshot an interrupted job left in the image");
        }
        for r in &rows {
            if !in_image.iter().any(|s| s.name == r.name) {
                self.core().store.delete_snapshot(entry.id, &r.name)?;
                tracing::warn!(vm_id = %entry.id, snapshot = %r.name, "forgot a snapshot the image no longer holds");
                if entry.record().current_snapshot.as_deref() == Some(r.name.as_str()) {
                    let parent = (!r.parent.is_empty()).then(|| r.parent.clone());
                    self.set_current(entry, parent)?;
                }
            }
        }
        Ok(())
    }
}

/// The QEMU of a VM a live snapshot step works on.
fn live_runtime(entry: &VmEntry) -> Result<Arc<Runtime>> {
    entry
        .runtime()
        .ok_or_else(|| EngineError::Conflict("the VM's QEMU is gone".into()))
}
