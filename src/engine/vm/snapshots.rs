//! The host steps of VM snapshots: internal qcow2 snapshots of the root
//! disk, taken, applied and dropped with `qemu-img` while the VM is off,
//! and through QEMU's own snapshot jobs while it runs (memory included or
//! not). The API-facing operations (jobs, the tree, the status rules) build
//! on these.

use std::time::{Duration, Instant};

use super::live::{qmp_err, Runtime};
use super::registry::VmEngine;
use crate::engine::error::{EngineError, Result};
use crate::qemu::argv::DISK_DRIVE_ID;

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
