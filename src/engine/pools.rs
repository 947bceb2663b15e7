//! The registry of storage pools: the configured ones (the default pool at
//! `image_dir`, then `storage_pools`) and those made through the API, each
//! active or not. Both engines read it: the VM engine resolves base images,
//! kernels and disks in the active directory pools; the storage engine
//! changes it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use uuid::Uuid;

use super::error::{EngineError, Result};
use crate::config::{Config, PoolConfig};
use crate::model::PoolType;
use crate::store::{PoolRow, Store};
use crate::sync::lock;

/// One pool's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub name: String,
    pub kind: PoolType,
    /// A dir pool's directory (empty for iSCSI).
    pub path: PathBuf,
    /// iSCSI: `host:port`.
    pub host: String,
    /// iSCSI: the target's IQN.
    pub target: String,
    pub active: bool,
    pub configured: bool,
    pub made_dir: bool,
    pub created_at: String,
}

/// `Invalid` unless `name` can name a volume.
pub fn check_volume_name(name: &str) -> Result<()> {
    if crate::host::pool::valid_volume_name(name) {
        return Ok(());
    }
    Err(EngineError::Invalid(format!(
        "Invalid parameter: a volume name is a file name of letters, digits, '.', '_' and '-', not starting with '.' or '-' (at most 255), got {:?}.",
        name.chars().take(300).collect::<String>()
    )))
}

impl PoolDef {
    /// The file of volume `name` of this dir pool: `NotFound`, or
    /// `Invalid` for a name that is not a volume's or leads out of the pool.
    pub fn volume_path(&self, name: &str) -> Result<PathBuf> {
        check_volume_name(name)?;
        let here = [PoolConfig {
            name: self.name.clone(),
            path: self.path.clone(),
        }];
        crate::host::pool::resolve(&here, name, "volume").map_err(|e| match e {
            crate::host::pool::PoolError::NotFound { .. } => EngineError::NotFound(format!(
                "Volume not found: {name} in storage pool {}.",
                self.name
            )),
            other => EngineError::Invalid(format!("Invalid parameter: {other}.")),
        })
    }

    pub fn row(&self) -> PoolRow {
        PoolRow {
            name: self.name.clone(),
            kind: self.kind.as_str().into(),
            path: self.path.display().to_string(),
            host: self.host.clone(),
            target: self.target.clone(),
            active: self.active,
            configured: self.configured,
            made_dir: self.made_dir,
            created_at: self.created_at.clone(),
        }
    }

    fn from_row(r: PoolRow) -> Option<PoolDef> {
        let kind = match r.kind.as_str() {
            "dir" => PoolType::Dir,
            "iscsi" => PoolType::Iscsi,
            _ => return None,
        };
        Some(PoolDef {
            name: r.name,
            kind,
            path: PathBuf::from(r.path),
            host: r.host,
            target: r.target,
            active: r.active,
            configured: r.configured,
            made_dir: r.made_dir,
            created_at: r.created_at,
        })
    }
}

pub struct Pools {
    defs: RwLock<BTreeMap<String, PoolDef>>,
    /// Volumes held by a running job: (pool, volume) → (job, kind).
    busy: Arc<Mutex<Holders>>,
}

/// Volumes held by running jobs: (pool, volume) → (job, kind).
type Holders = HashMap<(String, String), (Uuid, String)>;

/// Volumes held for a job until it ends.
pub struct VolumeGuard {
    busy: Arc<Mutex<Holders>>,
    keys: Vec<(String, String)>,
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let mut busy = lock(&self.busy);
        for k in &self.keys {
            busy.remove(k);
        }
    }
}

impl Pools {
    /// The configured pools (with the state their rows keep) and the
    /// pools made through the API. A configured pool gets a row the first
    /// time it is seen; a row left by a pool no longer configured is kept
    /// aside and not served.
    pub fn load(cfg: &Config, store: &Store) -> Result<Pools> {
        let rows = store.pools()?;
        let mut defs = BTreeMap::new();
        for p in cfg.pools() {
            let active = match rows.iter().find(|r| r.name == p.name) {
                Some(r) => r.active,
                None => {
                    let def = configured(&p);
                    store.insert_pool(&def.row())?;
                    true
                }
            };
            let mut def = configured(&p);
            def.active = active;
            defs.insert(p.name.clone(), def);
        }
        for r in rows {
            if r.configured || defs.contains_key(&r.name) {
                continue;
            }
            if let Some(def) = PoolDef::from_row(r) {
                defs.insert(def.name.clone(), def);
            }
        }
        Ok(Pools {
            defs: RwLock::new(defs),
            busy: Arc::default(),
        })
    }

    /// Holds volumes `keys` (pool, name) for job `job` of type `kind`, or
    /// says which job holds one.
    pub fn claim(&self, keys: Vec<(String, String)>, job: Uuid, kind: &str) -> Result<VolumeGuard> {
        let mut busy = lock(&self.busy);
        for k in &keys {
            if let Some((id, ty)) = busy.get(k) {
                return Err(EngineError::Busy {
                    what: format!("Volume {} of storage pool {}", k.1, k.0),
                    job_id: *id,
                    job_type: ty.clone(),
                });
            }
        }
        for k in &keys {
            busy.insert(k.clone(), (job, kind.to_owned()));
        }
        drop(busy);
        Ok(VolumeGuard {
            busy: self.busy.clone(),
            keys,
        })
    }

    /// A job holding a volume of pool `pool`, if any: (volume, job, kind).
    pub fn busy_in(&self, pool: &str) -> Option<(String, Uuid, String)> {
        lock(&self.busy)
            .iter()
            .find(|((p, _), _)| p == pool)
            .map(|((_, v), (j, k))| (v.clone(), *j, k.clone()))
    }

    pub fn get(&self, name: &str) -> Option<PoolDef> {
        crate::sync::read(&self.defs).get(name).cloned()
    }

    /// A pool by name, or `NotFound`.
    pub fn find(&self, name: &str) -> Result<PoolDef> {
        self.get(name)
            .ok_or_else(|| EngineError::NotFound(format!("Storage pool not found: {name}.")))
    }

    pub fn all(&self) -> Vec<PoolDef> {
        crate::sync::read(&self.defs).values().cloned().collect()
    }

    /// The active directory pools, where names given by clients resolve.
    pub fn active_dirs(&self) -> Vec<PoolConfig> {
        crate::sync::read(&self.defs)
            .values()
            .filter(|d| d.active && d.kind == PoolType::Dir)
            .map(|d| PoolConfig {
                name: d.name.clone(),
                path: d.path.clone(),
            })
            .collect()
    }

    /// `Conflict` when `given` (`pool/file`) names an inactive pool, so
    /// the client learns why the file is not found.
    pub fn check_named_active(&self, given: &str) -> Result<()> {
        if let Some((name, _)) = given.split_once('/') {
            if self.get(name).is_some_and(|d| !d.active) {
                return Err(EngineError::Conflict(format!(
                    "Storage pool {name} is inactive; activate it first."
                )));
            }
        }
        Ok(())
    }

    /// Every directory pool, active or not (what may hold a VM's files).
    pub fn dirs(&self) -> Vec<PoolDef> {
        crate::sync::read(&self.defs)
            .values()
            .filter(|d| d.kind == PoolType::Dir)
            .cloned()
            .collect()
    }

    pub(crate) fn put(&self, def: PoolDef) {
        crate::sync::write(&self.defs).insert(def.name.clone(), def);
    }

    pub(crate) fn remove(&self, name: &str) {
        crate::sync::write(&self.defs).remove(name);
    }

    pub(crate) fn set_active(&self, name: &str, active: bool) {
        if let Some(d) = crate::sync::write(&self.defs).get_mut(name) {
            d.active = active;
        }
    }

    /// The dir pool and volume name of a file directly in a pool's
    /// directory.
    pub fn volume_of(&self, file: &Path) -> Option<(String, String)> {
        let parent = file.parent()?;
        let name = file.file_name()?.to_str()?.to_owned();
        crate::sync::read(&self.defs)
            .values()
            .filter(|d| d.kind == PoolType::Dir)
            .find(|d| d.path == parent || d.path.canonicalize().ok().as_deref() == Some(parent))
            .map(|d| (d.name.clone(), name))
    }
}

fn configured(p: &PoolConfig) -> PoolDef {
    PoolDef {
        name: p.name.clone(),
        kind: PoolType::Dir,
        path: p.path.clone(),
        host: String::new(),
        target: String::new(),
        active: true,
        configured: true,
        made_dir: false,
        created_at: crate::clock::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_pools_keep_their_state_and_api_pools_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let cfg = Config {
            image_dir: dir.path().join("images"),
            storage_pools: vec![PoolConfig {
                name: "fast".into(),
                path: dir.path().join("fast"),
            }],
            ..Config::default()
        };
        let pools = Pools::load(&cfg, &store).unwrap();
        assert_eq!(
            pools
                .active_dirs()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["default", "fast"]
        );
        store.set_pool_active("fast", false).unwrap();
        let mut made = pools.find("fast").unwrap();
        made.name = "made".into();
        made.configured = false;
        made.path = dir.path().join("made");
        store.insert_pool(&made.row()).unwrap();
        let again = Pools::load(&cfg, &store).unwrap();
        assert!(!again.find("fast").unwrap().active);
        assert!(again.find("made").unwrap().active);
        assert_eq!(
            again.volume_of(&dir.path().join("made/a.qcow2")),
            Some(("made".into(), "a.qcow2".into()))
        );
        assert!(matches!(again.find("nope"), Err(EngineError::NotFound(_))));
    }
}
