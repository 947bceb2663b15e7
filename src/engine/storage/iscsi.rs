//! iSCSI pools and storage servers: a pool is one target of a server, its
//! LUNs the pool's volumes (`lun-<n>`), reached by QEMU's own initiator
//! (`iscsi://host:port/target/lun`). Every call on a server has a deadline:
//! a server that is down makes the call `Unavailable` with the reason, at
//! once when nothing listens, within the deadline when nothing answers.

use std::time::Duration;

use super::StorageEngine;
use crate::engine::error::{EngineError, Result};
use crate::engine::pools::PoolDef;
use crate::host::iscsi::{self, IscsiError, Portal};
use crate::model::{
    CreatePoolRequest, IscsiTarget, Lun, PoolType, StoragePool, StorageServer, StorageVolume,
    VolumeState,
};

/// How long one call on a storage server may take.
const DEADLINE: Duration = Duration::from_secs(5);

/// `iscsi://host:port/target`.
pub(super) fn pool_url(def: &PoolDef) -> String {
    format!("iscsi://{}/{}", def.host, def.target)
}

/// The volume name of LUN `lun`.
pub(super) fn volume_name(lun: u32) -> String {
    format!("lun-{lun}")
}

fn iscsi_err(e: IscsiError) -> EngineError {
    match e {
        IscsiError::Invalid { .. } => EngineError::Invalid(format!("Invalid parameter: {e}.")),
        IscsiError::NoSuchTarget { .. } => EngineError::NotFound(e.to_string()),
        IscsiError::Unreachable { .. } | IscsiError::Protocol(_) | IscsiError::Tool(_) => {
            EngineError::Unavailable(format!("Storage server unavailable: {e}"))
        }
    }
}

fn portal_of(def: &PoolDef) -> Result<Portal> {
    Portal::parse(&def.host).map_err(iscsi_err)
}

impl StorageEngine {
    pub(super) async fn define_iscsi(&self, req: &CreatePoolRequest) -> Result<PoolDef> {
        if req.path.is_some() {
            return Err(EngineError::Invalid(
                "Invalid parameter: path is for dir pools.".into(),
            ));
        }
        let (Some(host), Some(target)) = (&req.host, &req.target) else {
            return Err(EngineError::Invalid(
                "Invalid parameter: an iscsi pool needs host and target.".into(),
            ));
        };
        let portal = Portal::parse(host).map_err(iscsi_err)?;
        if !iscsi::valid_iqn(target) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: target {target:?} is not an iSCSI name (iqn.YYYY-MM.domain[:name], eui. or naa.)."
            )));
        }
        let offered = iscsi::discover(&portal, DEADLINE)
            .await
            .map_err(iscsi_err)?;
        if !offered.iter().any(|t| t == target) {
            return Err(EngineError::NotFound(format!(
                "Storage server {portal} offers no target {target} (it offers: {}).",
                if offered.is_empty() {
                    "none".to_owned()
                } else {
                    offered.join(", ")
                }
            )));
        }
        Ok(PoolDef {
            name: req.name.clone(),
            kind: PoolType::Iscsi,
            path: Default::default(),
            host: portal.to_string(),
            target: target.clone(),
            active: true,
            configured: false,
            made_dir: false,
            created_at: crate::clock::now(),
        })
    }

    /// The target's disk LUNs, asked of the server now.
    pub(super) async fn target_luns(&self, def: &PoolDef) -> Result<Vec<iscsi::Lun>> {
        let portal = portal_of(def)?;
        iscsi::luns(&portal, &def.target, DEADLINE)
            .await
            .map_err(iscsi_err)
    }

    pub(super) async fn describe_iscsi(&self, def: &PoolDef) -> Result<StoragePool> {
        let mut p = super::bare(def);
        if !def.active {
            return Ok(p);
        }
        let luns = self.target_luns(def).await?;
        p.capacity = luns.iter().map(|l| l.size).sum();
        p.allocated = p.capacity;
        p.volumes = luns.len() as u64;
        Ok(p)
    }

    fn lun_volume(
        &self,
        def: &PoolDef,
        lun: &iscsi::Lun,
        users: &[(String, crate::model::VolumeUser)],
    ) -> StorageVolume {
        let name = volume_name(lun.id);
        let used_by: Vec<_> = users
            .iter()
            .filter(|(v, _)| *v == name)
            .map(|(_, u)| u.clone())
            .collect();
        StorageVolume {
            path: format!("{}/{}", pool_url(def), lun.id),
            pool: def.name.clone(),
            format: "raw".into(),
            capacity: lun.size,
            allocation: lun.size,
            state: if used_by.is_empty() {
                VolumeState::Unmapped
            } else {
                VolumeState::Mapped
            },
            used_by,
            hardware: None,
            name,
        }
    }

    pub(super) async fn iscsi_volumes(&self, def: &PoolDef) -> Result<Vec<StorageVolume>> {
        let luns = self.target_luns(def).await?;
        let users = self.users_in(def).await;
        Ok(luns
            .iter()
            .map(|l| self.lun_volume(def, l, &users))
            .collect())
    }

    pub(super) async fn iscsi_volume(&self, def: &PoolDef, name: &str) -> Result<StorageVolume> {
        let luns = self.target_luns(def).await?;
        let users = self.users_in(def).await;
        luns.iter()
            .find(|l| volume_name(l.id) == name)
            .map(|l| self.lun_volume(def, l, &users))
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "Volume not found: {name} in storage pool {}.",
                    def.name
                ))
            })
    }

    /// The storage servers iSCSI pools use, each asked whether it answers.
    pub async fn servers(&self) -> Vec<StorageServer> {
        let mut by_host: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for def in self.core().pools.all() {
            if def.kind == PoolType::Iscsi {
                by_host
                    .entry(def.host.clone())
                    .or_default()
                    .push(def.name.clone());
            }
        }
        let mut out = Vec::new();
        for (host, pools) in by_host {
            let answer = match Portal::parse(&host) {
                Ok(p) => iscsi::discover(&p, DEADLINE).await.map(|_| ()),
                Err(e) => Err(e),
            };
            out.push(StorageServer {
                host,
                protocol: "iscsi".into(),
                pools,
                reachable: answer.is_ok(),
                error: answer.err().map(|e| e.to_string()),
            });
        }
        out
    }

    /// One storage server, by `host:port` (or `host` for port 3260).
    pub async fn server(&self, host: &str) -> Result<StorageServer> {
        // What does not read as a portal is no pool's server either.
        let key = Portal::parse(host)
            .map(|p| p.to_string())
            .unwrap_or_else(|_| host.to_owned());
        self.servers()
            .await
            .into_iter()
            .find(|s| s.host == key)
            .ok_or_else(|| {
                EngineError::NotFound(format!("No storage pool uses storage server {key}."))
            })
    }

    /// The targets a storage server offers, with their disk LUNs.
    pub async fn server_targets(&self, host: &str) -> Result<Vec<IscsiTarget>> {
        let server = self.server(host).await?;
        let portal = Portal::parse(&server.host).map_err(iscsi_err)?;
        let iqns = iscsi::discover(&portal, DEADLINE)
            .await
            .map_err(iscsi_err)?;
        let mut out = Vec::new();
        for iqn in iqns {
            let luns = iscsi::luns(&portal, &iqn, DEADLINE)
                .await
                .map_err(iscsi_err)?;
            out.push(IscsiTarget {
                luns: luns
                    .iter()
                    .map(|l| Lun {
                        lun: l.id,
                        size: l.size,
                        url: iscsi::qemu_url(&portal, &iqn, l.id),
                    })
                    .collect(),
                iqn,
            });
        }
        Ok(out)
    }
}
