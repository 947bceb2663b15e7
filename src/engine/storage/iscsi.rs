//! iSCSI pools: one target of a storage server, its LUNs the volumes.

use super::StorageEngine;
use crate::engine::error::{EngineError, Result};
use crate::engine::pools::PoolDef;
use crate::model::{CreatePoolRequest, StoragePool};

/// `iscsi://host:port/target`.
pub(super) fn pool_url(def: &PoolDef) -> String {
    format!("iscsi://{}/{}", def.host, def.target)
}

/// The volume name of LUN `lun`.
pub(super) fn volume_name(lun: u32) -> String {
    format!("lun-{lun}")
}

impl StorageEngine {
    pub(super) async fn describe_iscsi(&self, def: &PoolDef) -> Result<StoragePool> {
        Ok(super::bare(def))
    }

    pub(super) async fn define_iscsi(&self, _req: &CreatePoolRequest) -> Result<PoolDef> {
        Err(EngineError::Invalid(
            "iscsi pools are not available yet".into(),
        ))
    }

    pub(super) async fn target_luns(&self, _def: &PoolDef) -> Result<()> {
        Ok(())
    }
}

impl StorageEngine {
    pub(super) async fn iscsi_volumes(
        &self,
        _def: &PoolDef,
    ) -> Result<Vec<crate::model::StorageVolume>> {
        Ok(Vec::new())
    }

    pub(super) async fn iscsi_volume(
        &self,
        def: &PoolDef,
        name: &str,
    ) -> Result<crate::model::StorageVolume> {
        Err(EngineError::NotFound(format!(
            "Volume not found: {name} in storage pool {}.",
            def.name
        )))
    }
}
