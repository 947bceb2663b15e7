//! Storage pools and their volumes. A dir pool is a directory of image
//! files, each a volume; an iSCSI pool is one target of a storage server,
//! its LUNs the volumes. Pools are defined, activated and deactivated here;
//! a pool or volume a VM uses is never pulled from under it.
//!
//! Files being written (a volume being made, copied, imported or uploaded)
//! are hidden (`.libgo-<job>-<name>`) until they are whole, then linked
//! under their name in one step; what a crash leaves hidden is removed at
//! the next start.

mod export;
mod iscsi;
mod volumes;

use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use super::core::Core;
use super::error::{EngineError, Result};
use super::pools::{PoolDef, VolumeGuard};
use super::vm::VmEngine;
use crate::host::pool;
use crate::host::qemu_img::{ImageInfo, InfoCache, QemuImg};
use crate::model::{CreatePoolRequest, PoolState, PoolType, StoragePool, VolumeUser};

pub use export::EXPORT_TAG_PREFIX;
pub use volumes::Download;

/// The storage engine. Cheap to clone.
#[derive(Clone)]
pub struct StorageEngine {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    vms: VmEngine,
    img: QemuImg,
    info: InfoCache,
}

impl StorageEngine {
    /// The engine over the pool registry; removes what interrupted writes
    /// left in the directory pools.
    pub fn open(core: Arc<Core>, vms: VmEngine) -> StorageEngine {
        let engine = StorageEngine {
            inner: Arc::new(Inner {
                img: QemuImg::new(&core.cfg.qemu_img_binary),
                core,
                vms,
                info: InfoCache::default(),
            }),
        };
        for def in engine.core().pools.dirs() {
            pool::remove_partials(&def.path);
        }
        engine
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    /// Every pool, with its figures (an iSCSI server that does not answer
    /// leaves its pool's figures at 0 and says why).
    pub async fn pools(&self) -> Vec<StoragePool> {
        let mut out = Vec::new();
        for def in self.core().pools.all() {
            out.push(match self.describe(&def).await {
                Ok(p) => p,
                Err(e) => StoragePool {
                    error: Some(e.to_string()),
                    ..bare(&def)
                },
            });
        }
        out
    }

    /// One pool; an iSCSI pool whose server does not answer is `Unavailable`.
    pub async fn pool(&self, name: &str) -> Result<StoragePool> {
        let def = self.core().pools.find(name)?;
        self.describe(&def).await
    }

    async fn describe(&self, def: &PoolDef) -> Result<StoragePool> {
        match def.kind {
            PoolType::Dir => {
                let mut p = bare(def);
                match pool::space(&def.path) {
                    Ok(s) => {
                        p.capacity = s.capacity;
                        p.allocated = s.allocated;
                        p.available = s.available;
                    }
                    Err(e) => p.error = Some(format!("{}: {e}", def.path.display())),
                }
                if def.active {
                    p.volumes = self.dir_entries(def).len() as u64;
                }
                Ok(p)
            }
            PoolType::Iscsi => self.describe_iscsi(def).await,
        }
    }

    /// Defines a pool: a directory (made when missing) below one of the
    /// agent's `pool_parents`, or an iSCSI target its server offers.
    pub async fn create_pool(&self, req: CreatePoolRequest) -> Result<StoragePool> {
        if !super::vm::record::is_dns_label(&req.name) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: name must be a DNS label (a-z, 0-9, -; at most 63), got {:?}.",
                req.name
            )));
        }
        if self.core().pools.get(&req.name).is_some() {
            return Err(EngineError::Conflict(format!(
                "A storage pool named {} exists.",
                req.name
            )));
        }
        let def = match req.kind {
            PoolType::Dir => self.place_dir_pool(&req)?,
            PoolType::Iscsi => self.define_iscsi(&req).await?,
        };
        if let Err(e) = self.core().store.insert_pool(&def.row()) {
            if def.made_dir {
                let _ = std::fs::remove_dir(&def.path);
            }
            return Err(e.into());
        }
        self.core().pools.put(def.clone());
        tracing::info!(pool = %def.name, kind = def.kind.as_str(), "storage pool defined");
        self.describe(&def).await
    }

    fn place_dir_pool(&self, req: &CreatePoolRequest) -> Result<PoolDef> {
        if req.host.is_some() || req.target.is_some() {
            return Err(EngineError::Invalid(
                "Invalid parameter: host and target are for iscsi pools.".into(),
            ));
        }
        let parents = self.core().cfg.pool_parents();
        let given = match &req.path {
            Some(p) => p.clone(),
            None => parents[0].join(&req.name).display().to_string(),
        };
        let path = pool::check_pool_dir(&given, &parents).map_err(|e| match e {
            pool::PlaceError::NotNormal(_) => {
                EngineError::Invalid(format!("Invalid parameter: {e}."))
            }
            // Well formed, but not where this agent keeps pools.
            pool::PlaceError::OutsideParents { .. } => {
                EngineError::Forbidden(format!("{e} (the agent's pool_parents)."))
            }
            pool::PlaceError::Symlink(_) | pool::PlaceError::NotADirectory(_) => {
                EngineError::Conflict(format!("{e}."))
            }
        })?;
        for other in self.core().pools.dirs() {
            if path.starts_with(&other.path) || other.path.starts_with(&path) {
                return Err(EngineError::Conflict(format!(
                    "{} overlaps storage pool {} ({}).",
                    path.display(),
                    other.name,
                    other.path.display()
                )));
            }
        }
        let made_dir = !path.exists();
        if made_dir {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&path)
                .map_err(|e| EngineError::internal(format!("creating {}", path.display()), e))?;
        }
        Ok(PoolDef {
            name: req.name.clone(),
            kind: PoolType::Dir,
            path,
            host: String::new(),
            target: String::new(),
            active: true,
            configured: false,
            made_dir,
            created_at: crate::clock::now(),
        })
    }

    /// Forgets a pool made through the API. Refused while a VM uses one of
    /// its volumes, a job holds one, or (dir pools) it still has volumes.
    /// The directory goes too when the agent made it.
    pub async fn delete_pool(&self, name: &str) -> Result<StoragePool> {
        let def = self.core().pools.find(name)?;
        if def.configured {
            return Err(EngineError::Conflict(format!(
                "Storage pool {name} is defined in the configuration file; remove it there."
            )));
        }
        self.check_unused(&def).await?;
        if def.kind == PoolType::Dir {
            let n = self.dir_entries(&def).len();
            if n > 0 {
                return Err(EngineError::Conflict(format!(
                    "Storage pool {name} holds {n} volume(s); delete them first."
                )));
            }
        }
        let shown = bare(&def);
        self.core().store.delete_pool(name)?;
        self.core().pools.remove(name);
        if def.made_dir {
            pool::remove_partials(&def.path);
            if let Err(e) = std::fs::remove_dir(&def.path) {
                tracing::warn!(pool = name, error = %e, "pool directory left in place");
            }
        }
        tracing::info!(pool = name, "storage pool deleted");
        Ok(shown)
    }

    /// Makes a pool's volumes usable again (its directory must be there;
    /// an iSCSI server must answer).
    pub async fn activate(&self, name: &str) -> Result<StoragePool> {
        let def = self.core().pools.find(name)?;
        match def.kind {
            PoolType::Dir => {
                if !def.path.is_dir() {
                    return Err(EngineError::Conflict(format!(
                        "Storage pool {name} cannot be activated: {} is not a directory.",
                        def.path.display()
                    )));
                }
            }
            PoolType::Iscsi => {
                self.target_luns(&def).await?;
            }
        }
        self.set_active(&def, true).await
    }

    /// Takes a pool out of use: its volumes are no longer listed or usable.
    /// Refused while a VM or a job uses one of them.
    pub async fn deactivate(&self, name: &str) -> Result<StoragePool> {
        let def = self.core().pools.find(name)?;
        self.check_unused(&def).await?;
        self.set_active(&def, false).await
    }

    async fn set_active(&self, def: &PoolDef, active: bool) -> Result<StoragePool> {
        self.core().store.set_pool_active(&def.name, active)?;
        self.core().pools.set_active(&def.name, active);
        let mut def = def.clone();
        def.active = active;
        tracing::info!(pool = %def.name, active, "storage pool state changed");
        match def.kind {
            PoolType::Dir => self.describe(&def).await,
            PoolType::Iscsi => Ok(bare(&def)),
        }
    }

    /// `Conflict` when a VM uses a volume of the pool or a job holds one.
    async fn check_unused(&self, def: &PoolDef) -> Result<()> {
        if let Some((vol, job, kind)) = self.core().pools.busy_in(&def.name) {
            return Err(EngineError::Busy {
                what: format!("Volume {vol} of storage pool {}", def.name),
                job_id: job,
                job_type: kind,
            });
        }
        let users = self.users_in(def).await;
        if let Some((vol, u)) = users.first() {
            return Err(EngineError::Conflict(format!(
                "Storage pool {} is in use: VM {} ({}) uses volume {vol} as its {}.",
                def.name, u.name, u.id, u.role
            )));
        }
        Ok(())
    }

    /// Which VMs use which volume of `def`.
    async fn users_in(&self, def: &PoolDef) -> Vec<(String, VolumeUser)> {
        match def.kind {
            PoolType::Dir => {
                let dir = def.path.canonicalize().unwrap_or_else(|_| def.path.clone());
                self.inner
                    .vms
                    .volume_users()
                    .into_iter()
                    .filter_map(|(path, user)| {
                        let real = path.canonicalize().unwrap_or(path);
                        (real.parent() == Some(dir.as_path()))
                            .then(|| real.file_name()?.to_str().map(str::to_owned))
                            .flatten()
                            .map(|v| (v, user))
                    })
                    .collect()
            }
            PoolType::Iscsi => {
                let prefix = iscsi::pool_url(def);
                self.inner
                    .vms
                    .volume_users()
                    .into_iter()
                    .filter_map(|(path, user)| {
                        let url = path.to_str()?;
                        let lun = url.strip_prefix(&prefix)?.strip_prefix('/')?;
                        Some((iscsi::volume_name(lun.parse().ok()?), user))
                    })
                    .collect()
            }
        }
    }

    /// Holds `keys` for job `job` of type `kind`, or says which job has one.
    pub(crate) fn claim(
        &self,
        keys: Vec<(String, String)>,
        job: Uuid,
        kind: &str,
    ) -> Result<VolumeGuard> {
        self.core().pools.claim(keys, job, kind)
    }

    /// `qemu-img info` of `path`, asked once per version of the file.
    async fn info(&self, path: &Path) -> Result<ImageInfo> {
        self.inner
            .info
            .info(&self.inner.img, path)
            .await
            .map_err(|e| EngineError::internal(format!("reading {}", path.display()), e))
    }
}

/// A pool's representation without its figures.
fn bare(def: &PoolDef) -> StoragePool {
    StoragePool {
        name: def.name.clone(),
        kind: def.kind,
        state: if def.active {
            PoolState::Active
        } else {
            PoolState::Inactive
        },
        path: match def.kind {
            PoolType::Dir => def.path.display().to_string(),
            PoolType::Iscsi => iscsi::pool_url(def),
        },
        host: (def.kind == PoolType::Iscsi).then(|| def.host.clone()),
        target: (def.kind == PoolType::Iscsi).then(|| def.target.clone()),
        capacity: 0,
        allocated: 0,
        available: 0,
        volumes: 0,
        configured: def.configured,
        error: None,
    }
}
