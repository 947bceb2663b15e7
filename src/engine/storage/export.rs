//! Exporting a VM: its disk as a volume of a pool, in qcow2, raw, vmdk,
//! vdi or an OVF 1.0 package. A running VM is read from a disk-only
//! snapshot taken for the purpose (atomic in QEMU, dropped afterwards),
//! so the copy is one instant of the disk, never a disk being written.

use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use super::volumes::publish_volume;
use super::StorageEngine;
use crate::engine::core::{Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::engine::vm::VmEntry;
use crate::host::ova::{OvfDisk, OvfNic, OvfSystem};
use crate::host::pool::hidden;
use crate::host::qemu_img::Convert;
use crate::model::{ExportFormat, ExportVmRequest, PoolType, StorageVolume, VmStatus};
use crate::rollback::Rollback;

/// Tag of the snapshot a live export reads: not a DNS label, so never a
/// name a client gave.
fn export_tag(job: Uuid) -> String {
    format!("_export-{}", &job.simple().to_string()[..12])
}

/// The prefix of export snapshots (what a crash may leave in an image).
pub const EXPORT_TAG_PREFIX: &str = "_export-";

impl StorageEngine {
    /// Exports a VM's disk (or one of its snapshots) as a volume. A job on
    /// the VM: it holds the VM's operation slot, so the VM is neither
    /// started, stopped nor snapshotted meanwhile.
    pub async fn export_vm(
        &self,
        entry: &Arc<VmEntry>,
        req: ExportVmRequest,
        requester: &Requester,
    ) -> Result<Submitted<StorageVolume>> {
        let rec = entry.record();
        let pool = req.pool.clone().unwrap_or_else(|| "default".into());
        let def = self.active_pool(&pool)?;
        if def.kind != PoolType::Dir {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: exports go to a dir pool; {pool} is {}.",
                def.kind.as_str()
            )));
        }
        if req.compress && matches!(req.format, ExportFormat::Raw | ExportFormat::Vdi) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: {} cannot be compressed (qcow2, vmdk and ova can).",
                req.format.as_str()
            )));
        }
        let name = match &req.name {
            Some(n) => n.clone(),
            None => format!(
                "{}-{}.{}",
                rec.name,
                crate::clock::now()
                    .replace([':', '-'], "")
                    .replace('T', "-")
                    .trim_end_matches('Z'),
                req.format.as_str()
            ),
        };
        Self::check_name(&name)?;
        if def.path.join(&name).symlink_metadata().is_ok() {
            return Err(EngineError::Conflict(format!(
                "Volume {name} exists in storage pool {pool}."
            )));
        }
        if let Some(s) = &req.snapshot {
            if self.core().store.snapshot(entry.id, s)?.is_none() {
                return Err(EngineError::NotFound(format!("No such snapshot: {s}")));
            }
        }
        let job_id = Uuid::new_v4();
        let vms = &self.inner.vms;
        let vm_guard = vms.claim(entry, job_id, "vm.export")?;
        let vol_guard = self.claim(vec![(pool.clone(), name.clone())], job_id, "vm.export")?;
        let (handle, ctx) = vms.vm_job(job_id, "vm.export", entry, requester)?;
        let live = match entry.status() {
            VmStatus::Stopped => false,
            VmStatus::Running | VmStatus::Paused
                if req.snapshot.is_none() && !rec.snapshots_possible() =>
            {
                drop((vm_guard, vol_guard));
                return self.core().refused(
                    handle,
                    EngineError::Conflict(format!(
                        "VM {} runs on a {} volume, which cannot be snapshotted: stop it to export it.",
                        rec.name, rec.disk_format
                    )),
                );
            }
            VmStatus::Running | VmStatus::Paused => req.snapshot.is_none(),
            other => {
                drop((vm_guard, vol_guard));
                return self.core().refused(
                    handle,
                    EngineError::Conflict(format!("cannot export a VM that is {}", other.as_str())),
                );
            }
        };
        ctx.log(format!(
            "export to {pool}/{name} as {}",
            req.format.as_str()
        ));
        let engine = self.clone();
        let entry = entry.clone();
        Ok(self.inner.core.spawn_job(handle, None, async move {
            let _guards = (vm_guard, vol_guard);
            ctx.handle.task_running(0);
            let r = engine
                .export_steps(&entry, &def, &name, &req, live, &ctx)
                .await;
            ctx.handle
                .task_done(0, r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            r
        }))
    }

    async fn export_steps(
        &self,
        entry: &Arc<VmEntry>,
        def: &crate::engine::pools::PoolDef,
        name: &str,
        req: &ExportVmRequest,
        live: bool,
        ctx: &crate::engine::core::JobCtx,
    ) -> Result<StorageVolume> {
        let rec = entry.record();
        let vms = &self.inner.vms;
        let mut rb = Rollback::new();
        // The instant to copy: a snapshot taken now (running VM), the one
        // asked for, or the disk of a VM that cannot change meanwhile.
        let tag = if live {
            let rt = entry
                .runtime()
                .ok_or_else(|| EngineError::Conflict("the VM's QEMU is gone".into()))?;
            let tag = export_tag(ctx.handle.id());
            vms.snapshot_take_live(&rt, &tag, false).await?;
            let (engine, undo_tag) = (vms.clone(), tag.clone());
            rb.push_async("drop the export snapshot", async move {
                if let Err(e) = engine.snapshot_drop_live(&rt, &undo_tag).await {
                    tracing::warn!(snapshot = %undo_tag, error = %e, "export snapshot left in the image");
                }
            });
            Some(tag)
        } else {
            req.snapshot.clone()
        };
        let tmp = hidden(&def.path, ctx.handle.id(), name);
        let undo = tmp.clone();
        rb.push("remove the partial export", move || {
            let _ = std::fs::remove_file(&undo);
            let _ = std::fs::remove_file(undo.with_extension("vmdk"));
        });
        let snap_opt = tag.as_ref().map(|t| format!("snapshot.name={t}"));
        let mut options: Vec<&str> = vec!["-U"];
        if let Some(s) = &snap_opt {
            options.extend(["-l", s.as_str()]);
        }
        let (format, out) = match req.format {
            ExportFormat::Ova => ("vmdk", tmp.with_extension("vmdk")),
            f => (f.as_str(), tmp.clone()),
        };
        match req.format {
            ExportFormat::Ova => options.extend(["-o", "subformat=streamOptimized"]),
            ExportFormat::Vmdk if req.compress => {
                options.extend(["-o", "subformat=streamOptimized"])
            }
            ExportFormat::Qcow2 if req.compress => options.push("-c"),
            _ => {}
        }
        let job = Convert {
            src: &rec.disk_file,
            src_format: Some(&rec.disk_format),
            dest: &out,
            format,
            options: &options,
        };
        let share = if req.format == ExportFormat::Ova {
            90.0
        } else {
            99.0
        };
        let progress = |pct: f32| ctx.progress((pct * share / 100.0) as u8);
        let converted = self.convert(&job, ctx.handle.token(), progress).await;
        if let Err(e) = converted {
            rb.unwind().await;
            return Err(e);
        }
        // The copy is whole: the export snapshot can go.
        if live {
            if let (Some(rt), Some(t)) = (entry.runtime(), &tag) {
                if let Err(e) = vms.snapshot_drop_live(&rt, t).await {
                    tracing::warn!(snapshot = %t, error = %e, "export snapshot left in the image");
                }
            }
        }
        if req.format == ExportFormat::Ova {
            if let Err(e) = self.package(&rec, &out, &tmp, ctx).await {
                rb.unwind().await;
                return Err(e);
            }
            let _ = std::fs::remove_file(&out);
        }
        if let Err(e) = ctx.check() {
            rb.unwind().await;
            return Err(e);
        }
        let path = match publish_volume(&tmp, &def.path.join(name)) {
            Ok(p) => p,
            Err(e) => {
                rb.unwind().await;
                return Err(e);
            }
        };
        rb.disarm();
        ctx.progress(100);
        ctx.log(format!("exported to {}", path.display()));
        self.to_volume(def, name, &path, &self.users()).await
    }

    /// Wraps a streamOptimized VMDK into an OVA at `out`.
    async fn package(
        &self,
        rec: &crate::engine::vm::record::VmRecord,
        vmdk: &Path,
        out: &Path,
        ctx: &crate::engine::core::JobCtx,
    ) -> Result<()> {
        let info = self.info(vmdk).await?;
        let system = OvfSystem {
            name: rec.name.clone(),
            cpus: rec.vcpus,
            memory_mib: rec.memory,
            disk: OvfDisk {
                file_href: format!("{}-disk1.vmdk", rec.name),
                file_size: 0,
                capacity: info.virtual_size,
                populated_size: None,
            },
            nics: vec![OvfNic {
                network: "VM Network".into(),
                mac: Some(rec.mac_address.clone()),
            }],
            description: Some(format!("Exported by libgo from VM {}", rec.id)),
        };
        let (vmdk, out) = (vmdk.to_owned(), out.to_owned());
        let handle = ctx.handle.clone();
        tokio::task::spawn_blocking(move || {
            crate::host::ova::write_ova(&out, &system, &vmdk, true, |done, total| {
                if let Some(part) = (done * 9).checked_div(total) {
                    handle.task_progress(0, (90 + part) as u8);
                }
            })
        })
        .await
        .map_err(|e| EngineError::internal("packing the OVA", e))?
        .map_err(|e| EngineError::internal("packing the OVA", e))
    }
}
