//! Volumes of directory pools: listed from the directory, made empty,
//! copied, imported (converted to qcow2), uploaded, downloaded, removed.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::StorageEngine;
use crate::engine::core::{JobCtx, JobTarget, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::engine::pools::PoolDef;
use crate::host::pool;
use crate::host::pool::hidden;
use crate::host::qemu_img::Convert;
use crate::model::{
    CreateStorageVolumeRequest, PoolType, StorageVolume, VolumeHardware, VolumeRef, VolumeState,
    VolumeUser,
};
use crate::rollback::Rollback;

const GIB: u64 = 1 << 30;

/// Formats an import reads.
const IMPORTABLE: &[&str] = &["qcow2", "raw", "vmdk", "vdi", "ova"];

/// A volume opened for reading from its start.
pub struct Download {
    pub file: tokio::fs::File,
    pub len: u64,
    pub volume: StorageVolume,
}

/// What a create does.
enum Making {
    Empty { bytes: u64, format: &'static str },
    Copy { src: PathBuf, format: String },
    Import { src: PathBuf, format: String },
}

impl StorageEngine {
    /// The volumes of a dir pool by name: regular files with a volume's
    /// name (a symbolic link only when it stays inside the pools).
    pub(super) fn dir_entries(&self, def: &PoolDef) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&def.path) else {
            return Vec::new();
        };
        let here = [crate::config::PoolConfig {
            name: def.name.clone(),
            path: def.path.clone(),
        }];
        let mut out: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if !pool::valid_volume_name(&name) {
                    return None;
                }
                let path = pool::resolve(&here, &name, "volume").ok()?;
                Some((name, path))
            })
            .collect();
        out.sort();
        out
    }

    /// An active pool by name: `NotFound`, or `Conflict` while inactive.
    pub(super) fn active_pool(&self, name: &str) -> Result<PoolDef> {
        let def = self.core().pools.find(name)?;
        if !def.active {
            return Err(EngineError::Conflict(format!(
                "Storage pool {name} is inactive; activate it first."
            )));
        }
        Ok(def)
    }

    pub(super) fn check_name(name: &str) -> Result<()> {
        crate::engine::pools::check_volume_name(name)
    }

    /// Who uses which file (by real path).
    pub(super) fn users(&self) -> HashMap<PathBuf, Vec<VolumeUser>> {
        let mut map: HashMap<PathBuf, Vec<VolumeUser>> = HashMap::new();
        for (path, user) in self.inner.vms.volume_users() {
            let real = path.canonicalize().unwrap_or(path);
            map.entry(real).or_default().push(user);
        }
        map
    }

    pub(super) async fn to_volume(
        &self,
        def: &PoolDef,
        name: &str,
        path: &Path,
        users: &HashMap<PathBuf, Vec<VolumeUser>>,
    ) -> Result<StorageVolume> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| EngineError::internal(format!("reading {}", path.display()), e))?;
        let (format, capacity) = if is_ova(path) {
            ("ova".to_owned(), meta.len())
        } else {
            let info = self.info(path).await?;
            (info.format, info.virtual_size)
        };
        let used_by = users.get(path).cloned().unwrap_or_default();
        let hardware = self
            .core()
            .store
            .volume_hardware(&def.name, name)?
            .map(|(vcpus, memory)| VolumeHardware { vcpus, memory });
        Ok(StorageVolume {
            name: name.to_owned(),
            pool: def.name.clone(),
            format,
            capacity,
            allocation: meta.blocks() * 512,
            path: path.display().to_string(),
            state: if used_by.is_empty() {
                VolumeState::Unmapped
            } else {
                VolumeState::Mapped
            },
            used_by,
            hardware,
        })
    }

    /// The volumes of an active pool, by name.
    pub async fn volumes(&self, pool: &str) -> Result<Vec<StorageVolume>> {
        let def = self.active_pool(pool)?;
        if def.kind == PoolType::Iscsi {
            return self.iscsi_volumes(&def).await;
        }
        let users = self.users();
        let mut out = Vec::new();
        for (name, path) in self.dir_entries(&def) {
            // A file that vanished or is not an image in between is skipped.
            match self.to_volume(&def, &name, &path, &users).await {
                Ok(v) => out.push(v),
                Err(e) => tracing::debug!(volume = %name, error = %e, "volume skipped"),
            }
        }
        Ok(out)
    }

    pub async fn volume(&self, pool: &str, name: &str) -> Result<StorageVolume> {
        let def = self.active_pool(pool)?;
        if def.kind == PoolType::Iscsi {
            return self.iscsi_volume(&def, name).await;
        }
        let path = def.volume_path(name)?;
        self.to_volume(&def, name, &path, &self.users()).await
    }

    /// Makes a volume as a job: empty (`capacity`), a copy of another
    /// (`source`) or a qcow2 converted from a qcow2, raw, vmdk, vdi or OVA
    /// volume (`import`). Written hidden, linked under its name when whole.
    pub async fn create_volume(
        &self,
        pool: &str,
        req: CreateStorageVolumeRequest,
        requester: &Requester,
    ) -> Result<Submitted<StorageVolume>> {
        let def = self.active_pool(pool)?;
        if def.kind == PoolType::Iscsi {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: the volumes of iSCSI pool {pool} are its target's LUNs; they are made on the storage server."
            )));
        }
        Self::check_name(&req.name)?;
        let making = self.plan(pool, &req).await?;
        if def.path.join(&req.name).symlink_metadata().is_ok() {
            return Err(EngineError::Conflict(format!(
                "Volume {} exists in storage pool {pool}.",
                req.name
            )));
        }
        let need = match &making {
            Making::Empty { format: "raw", .. } | Making::Empty { .. } => 0,
            Making::Copy { src, .. } | Making::Import { src, .. } => std::fs::metadata(src)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.blocks() * 512
                })
                .unwrap_or(0),
        };
        let space = pool::space(&def.path)
            .map_err(|e| EngineError::internal(format!("reading {}", def.path.display()), e))?;
        if need > space.available {
            return Err(EngineError::Capacity {
                message: format!(
                    "Storage pool {pool} has {} bytes free; the volume needs {need}.",
                    space.available
                ),
                shortfall: None,
            });
        }
        let (kind, what) = match &making {
            Making::Empty { bytes, format } => (
                "volume.create",
                format!("an empty {format} volume of {bytes} bytes"),
            ),
            Making::Copy { src, .. } => ("volume.copy", format!("a copy of {}", src.display())),
            Making::Import { src, format } => (
                "volume.import",
                format!("qcow2 from {format} {}", src.display()),
            ),
        };
        let job_id = Uuid::new_v4();
        let mut keys = vec![(pool.to_owned(), req.name.clone())];
        if let Some(r) = req.source.as_ref().or(req.import.as_ref()) {
            keys.push((
                r.pool.clone().unwrap_or_else(|| pool.to_owned()),
                r.volume.clone(),
            ));
        }
        let guard = self.claim(keys, job_id, kind)?;
        let (handle, ctx) = self.core().start_single(
            job_id,
            kind,
            JobTarget::Volume(format!("{pool}/{}", req.name)),
            format!("make volume {} in storage pool {pool}: {what}", req.name),
            requester,
        )?;
        let engine = self.clone();
        let name = req.name.clone();
        Ok(self.inner.core.spawn_job(handle, None, async move {
            let _guard = guard;
            ctx.handle.task_running(0);
            let r = engine.make(&def, &name, making, &ctx).await;
            ctx.handle
                .task_done(0, r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            r
        }))
    }

    /// What a create request asks for, checked.
    async fn plan(&self, pool: &str, req: &CreateStorageVolumeRequest) -> Result<Making> {
        let given = [
            req.capacity.is_some(),
            req.source.is_some(),
            req.import.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(EngineError::Invalid(
                "Invalid parameter: give exactly one of capacity (a new empty volume), source (a copy) or import (a conversion).".into(),
            ));
        }
        if req.format.is_some() && req.capacity.is_none() {
            return Err(EngineError::Invalid(
                "Invalid parameter: format is for a new empty volume (with capacity).".into(),
            ));
        }
        if let Some(gib) = req.capacity {
            let max = self.core().cfg.max_disk_gib;
            if gib == 0 || gib > max {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: capacity must be 1..={max} GiB, got {gib}."
                )));
            }
            return Ok(Making::Empty {
                bytes: gib * GIB,
                format: req.format.unwrap_or_default().as_str(),
            });
        }
        let (r, import) = match (&req.source, &req.import) {
            (Some(r), _) => (r, false),
            (None, Some(r)) => (r, true),
            (None, None) => unreachable!("exactly one was given"),
        };
        let src = self.source(pool, r)?;
        let format = if is_ova(&src) {
            "ova".to_owned()
        } else {
            self.info(&src).await?.format
        };
        if import {
            if !IMPORTABLE.contains(&format.as_str()) {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: import reads {} volumes; {} is {format}.",
                    IMPORTABLE.join(", "),
                    r.volume
                )));
            }
            Ok(Making::Import { src, format })
        } else {
            Ok(Making::Copy { src, format })
        }
    }

    /// The file of a volume named in a request.
    fn source(&self, pool: &str, r: &VolumeRef) -> Result<PathBuf> {
        let src_pool = r.pool.as_deref().unwrap_or(pool);
        let def = self.active_pool(src_pool)?;
        if def.kind != PoolType::Dir {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: storage pool {src_pool} is not a dir pool."
            )));
        }
        def.volume_path(&r.volume)
    }

    async fn make(
        &self,
        def: &PoolDef,
        name: &str,
        making: Making,
        ctx: &JobCtx,
    ) -> Result<StorageVolume> {
        let tmp = hidden(&def.path, ctx.handle.id(), name);
        let mut rb = Rollback::new();
        let undo = tmp.clone();
        rb.push("remove the partial volume", move || {
            let _ = std::fs::remove_file(&undo);
            let _ = std::fs::remove_dir_all(undo.with_extension("d"));
        });
        let progress = |pct: f32| ctx.progress(pct.clamp(0.0, 99.0) as u8);
        let token = ctx.handle.token();
        let mut hardware = None;
        match &making {
            Making::Empty { bytes, format } => {
                self.inner
                    .img
                    .create(&tmp, format, *bytes)
                    .await
                    .map_err(|e| too_large(&def.name, *bytes, e))?;
            }
            Making::Copy { src, format } => {
                let job = Convert {
                    src,
                    src_format: Some(format),
                    dest: &tmp,
                    format,
                    options: &[],
                };
                self.convert(&job, token, progress).await?;
            }
            Making::Import { src, format } if format == "ova" => {
                let unpacked = tmp.with_extension("d");
                let unpacked_ova = self.unpack_ova(src, &unpacked).await?;
                let (system, disk) = (unpacked_ova.system, unpacked_ova.disk_path);
                ctx.log(format!(
                    "OVA {}: {} vCPUs, {} MiB",
                    system.name, system.cpus, system.memory_mib
                ));
                hardware = Some((system.cpus, system.memory_mib));
                let job = Convert {
                    src: &disk,
                    src_format: Some("vmdk"),
                    dest: &tmp,
                    format: "qcow2",
                    options: &[],
                };
                self.convert(&job, token, progress).await?;
                let _ = std::fs::remove_dir_all(&unpacked);
            }
            Making::Import { src, format } => {
                let job = Convert {
                    src,
                    src_format: Some(format),
                    dest: &tmp,
                    format: "qcow2",
                    options: &[],
                };
                self.convert(&job, token, progress).await?;
            }
        }
        ctx.check()?;
        let path = publish_volume(&tmp, &def.path.join(name))?;
        rb.disarm();
        if let Some((vcpus, memory)) = hardware {
            self.core()
                .store
                .set_volume_hardware(&def.name, name, vcpus, memory)?;
        }
        ctx.progress(100);
        ctx.log(format!("made {}", path.display()));
        self.to_volume(def, name, &path, &self.users()).await
    }

    pub(crate) async fn convert(
        &self,
        job: &Convert<'_>,
        token: tokio_util::sync::CancellationToken,
        progress: impl Fn(f32),
    ) -> Result<()> {
        let cancelled = token.clone();
        self.inner
            .img
            .convert(job, token, progress)
            .await
            .map_err(|e| {
                if cancelled.is_cancelled() {
                    EngineError::Cancelled("the job was cancelled".into())
                } else {
                    EngineError::internal("qemu-img convert", e)
                }
            })
    }

    /// Stores a request body as volume `name` (replacing an unused one of
    /// that name). True when it is new.
    pub async fn upload<S, E>(
        &self,
        pool: &str,
        name: &str,
        body: S,
    ) -> Result<(StorageVolume, bool)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let def = self.active_pool(pool)?;
        if def.kind == PoolType::Iscsi {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: the volumes of iSCSI pool {pool} are its target's LUNs."
            )));
        }
        Self::check_name(name)?;
        let id = Uuid::new_v4();
        let _guard = self.claim(
            vec![(pool.to_owned(), name.to_owned())],
            id,
            "volume.upload",
        )?;
        let dest = def.path.join(name);
        let existed = dest.symlink_metadata().is_ok();
        if existed {
            let real = def.volume_path(name)?;
            if let Some(u) = self.users().get(&real).and_then(|u| u.first()) {
                return Err(EngineError::Conflict(format!(
                    "Volume {name} is in use by VM {} ({}) as its {}.",
                    u.name, u.id, u.role
                )));
            }
        }
        let tmp = hidden(&def.path, id, name);
        let r = write_body(&def, &tmp, body).await;
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let path = if existed {
            std::fs::rename(&tmp, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                EngineError::internal(format!("replacing {}", dest.display()), e)
            })?;
            self.core().store.forget_volume(pool, name)?;
            dest
        } else {
            publish_volume(&tmp, &dest)?
        };
        tracing::info!(pool, volume = name, "volume uploaded");
        let v = self.to_volume(&def, name, &path, &self.users()).await?;
        Ok((v, !existed))
    }

    /// Opens a volume for download.
    pub async fn download(&self, pool: &str, name: &str) -> Result<Download> {
        let def = self.active_pool(pool)?;
        if def.kind == PoolType::Iscsi {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: download an iSCSI LUN by exporting or copying it; {pool} is an iSCSI pool."
            )));
        }
        let path = def.volume_path(name)?;
        let volume = self.to_volume(&def, name, &path, &self.users()).await?;
        if let Some(u) = volume.used_by.iter().find(|u| u.role == "disk") {
            return Err(EngineError::Conflict(format!(
                "Volume {name} is a disk of VM {} ({}); detach it or export the VM.",
                u.name, u.id
            )));
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| EngineError::internal(format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| EngineError::internal(format!("reading {}", path.display()), e))?
            .len();
        Ok(Download { file, len, volume })
    }

    /// Removes an unused volume no job holds.
    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<StorageVolume> {
        let def = self.active_pool(pool)?;
        if def.kind == PoolType::Iscsi {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: the volumes of iSCSI pool {pool} are its target's LUNs; they are removed on the storage server."
            )));
        }
        let path = def.volume_path(name)?;
        let _guard = self.claim(
            vec![(pool.to_owned(), name.to_owned())],
            Uuid::new_v4(),
            "volume.delete",
        )?;
        let volume = self.to_volume(&def, name, &path, &self.users()).await?;
        if let Some(u) = volume.used_by.first() {
            return Err(EngineError::Conflict(format!(
                "Volume {name} is in use by VM {} ({}) as its {}.",
                u.name, u.id, u.role
            )));
        }
        // The name in the pool goes, whatever it points at.
        let link = def.path.join(name);
        std::fs::remove_file(&link)
            .map_err(|e| EngineError::internal(format!("removing {}", link.display()), e))?;
        self.core().store.forget_volume(pool, name)?;
        tracing::info!(pool, volume = name, "volume deleted");
        Ok(volume)
    }
}

impl StorageEngine {
    /// Checks an OVA (its manifest's digests included) and unpacks its
    /// disk into `dest`.
    async fn unpack_ova(&self, src: &Path, dest: &Path) -> Result<crate::host::ova::ImportedOva> {
        let (src, dest) = (src.to_owned(), dest.to_owned());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dest)?;
            Ok::<_, std::io::Error>(crate::host::ova::read_ova(&src, &dest))
        })
        .await
        .map_err(|e| EngineError::internal("reading the OVA", e))?
        .map_err(|e| EngineError::internal("unpacking the OVA", e))?
        .map_err(|e| match e {
            crate::host::ova::OvaError::Invalid(m) => {
                EngineError::Invalid(format!("Invalid parameter: the OVA: {m}."))
            }
            other => EngineError::internal("reading the OVA", other),
        })
    }
}

/// `pool::publish`, with the engine's errors: a name taken is a conflict.
pub(super) fn publish_volume(tmp: &Path, dest: &Path) -> Result<PathBuf> {
    crate::host::pool::publish(tmp, dest).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            EngineError::Conflict(format!("{} exists.", dest.display()))
        } else {
            EngineError::internal(format!("publishing {}", dest.display()), e)
        }
    })
}

/// Writes a body to `tmp`, keeping a margin of the pool's free space.
async fn write_body<S, E>(def: &PoolDef, tmp: &Path, mut body: S) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// Free space an upload leaves untouched.
    const MARGIN: u64 = 64 << 20;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .await
        .map_err(|e| EngineError::internal(format!("creating {}", tmp.display()), e))?;
    let mut room = pool::space(&def.path).map(|s| s.available).unwrap_or(0);
    let mut since_check = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| EngineError::Invalid(format!("the upload was cut short: {e}")))?;
        since_check += chunk.len() as u64;
        if since_check > 64 << 20 {
            room = pool::space(&def.path).map(|s| s.available).unwrap_or(0);
            since_check = chunk.len() as u64;
        }
        if room < MARGIN + since_check {
            return Err(EngineError::Capacity {
                message: format!(
                    "Storage pool {} is full: the upload would leave less than {} MiB free.",
                    def.name,
                    MARGIN >> 20
                ),
                shortfall: None,
            });
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| EngineError::internal(format!("writing {}", tmp.display()), e))?;
    }
    file.flush()
        .await
        .map_err(|e| EngineError::internal(format!("writing {}", tmp.display()), e))?;
    Ok(())
}

/// Whether `path` is a tar archive whose first member is an OVF descriptor.
fn is_ova(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() || &head[257..262] != b"ustar" {
        return false;
    }
    let end = head[..100].iter().position(|b| *b == 0).unwrap_or(100);
    head[..end].ends_with(b".ovf")
}

/// qemu-img refusing a size the pool's filesystem cannot hold in one file
/// (a raw volume is a sparse file of its whole capacity) is the pool's
/// capacity, not a failure of the host: 409, like any other shortfall.
fn too_large(pool: &str, bytes: u64, e: crate::host::qemu_img::ImgError) -> EngineError {
    use crate::host::qemu_img::ImgError;
    if let ImgError::Failed { stderr, .. } = &e {
        if !stderr.contains("too large") {
            return EngineError::internal("qemu-img create", e);
        }
        let text = stderr.trim();
        return EngineError::Capacity {
            message: format!(
                "Storage pool {pool} cannot hold a volume of {bytes} bytes: its filesystem refuses a file that large ({text})."
            ),
            shortfall: None,
        };
    }
    EngineError::internal("qemu-img create", e)
}

#[cfg(test)]
mod too_large_tests {
    use super::*;
    use crate::host::qemu_img::ImgError;

    #[test]
    fn a_size_the_filesystem_refuses_is_the_pools_capacity() {
        let refused = ImgError::Failed {
            op: "create",
            stderr: "qemu-img: /p/.v: The image size is too large for file format 'raw'".into(),
        };
        let e = too_large("default", 1 << 45, refused);
        assert_eq!(e.kind(), crate::engine::ErrorKind::Capacity, "{e}");
        assert!(e.to_string().contains("default"), "{e}");
        let other = ImgError::Failed {
            op: "create",
            stderr: "qemu-img: /p/.v: Permission denied".into(),
        };
        assert_eq!(
            too_large("default", 1, other).kind(),
            crate::engine::ErrorKind::Internal
        );
    }
}
