//! Storage pools: the definitions made through the API, the active state of
//! every pool (configured ones included), and the hardware an imported OVA
//! described for its volume.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store, StoreError};

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: String,
    /// `dir` or `iscsi`.
    pub kind: String,
    /// The directory of a dir pool; empty for iSCSI.
    pub path: String,
    /// iSCSI: `host:port`.
    pub host: String,
    /// iSCSI: the target's IQN.
    pub target: String,
    pub active: bool,
    /// Defined in the configuration file (the row only keeps its state).
    pub configured: bool,
    /// The agent made the directory, so deleting the pool removes it.
    pub made_dir: bool,
    pub created_at: String,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PoolRow> {
    Ok(PoolRow {
        name: r.get(0)?,
        kind: r.get(1)?,
        path: r.get(2)?,
        host: r.get(3)?,
        target: r.get(4)?,
        active: r.get::<_, i64>(5)? != 0,
        configured: r.get::<_, i64>(6)? != 0,
        made_dir: r.get::<_, i64>(7)? != 0,
        created_at: r.get(8)?,
    })
}

const COLUMNS: &str = "name, kind, path, host, target, active, configured, made_dir, created_at";

impl Store {
    /// Records a pool; a name already there is `NameTaken`.
    pub fn insert_pool(&self, p: &PoolRow) -> Result<()> {
        let done = self.conn().execute(
            &format!(
                "INSERT INTO storage_pools ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(name) DO NOTHING"
            ),
            params![
                p.name,
                p.kind,
                p.path,
                p.host,
                p.target,
                p.active as i64,
                p.configured as i64,
                p.made_dir as i64,
                p.created_at
            ],
        )?;
        if done == 0 {
            return Err(StoreError::NameTaken(p.name.clone()));
        }
        Ok(())
    }

    pub fn pools(&self) -> Result<Vec<PoolRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM storage_pools ORDER BY name"
        ))?;
        let rows = stmt.query_map([], row)?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(Into::into)
    }

    pub fn pool(&self, name: &str) -> Result<Option<PoolRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM storage_pools WHERE name = ?1"),
                [name],
                row,
            )
            .optional()
            .map_err(Into::into)
    }

    pub fn set_pool_active(&self, name: &str, active: bool) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE storage_pools SET active = ?2 WHERE name = ?1",
            params![name, active as i64],
        )? > 0)
    }

    /// Forgets a pool and what its volumes described.
    pub fn delete_pool(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM storage_pools WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM volume_hardware WHERE pool = ?1", [name])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Records the hardware an imported volume's descriptor gave.
    pub fn set_volume_hardware(
        &self,
        pool: &str,
        name: &str,
        vcpus: u32,
        memory: u64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO volume_hardware (pool, name, vcpus, memory) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(pool, name) DO UPDATE SET vcpus = ?3, memory = ?4",
            params![pool, name, vcpus, memory as i64],
        )?;
        Ok(())
    }

    pub fn volume_hardware(&self, pool: &str, name: &str) -> Result<Option<(u32, u64)>> {
        self.conn()
            .query_row(
                "SELECT vcpus, memory FROM volume_hardware WHERE pool = ?1 AND name = ?2",
                [pool, name],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(Into::into)
    }

    pub fn forget_volume(&self, pool: &str, name: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM volume_hardware WHERE pool = ?1 AND name = ?2",
            [pool, name],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str) -> PoolRow {
        PoolRow {
            name: name.into(),
            kind: "dir".into(),
            path: format!("/srv/{name}"),
            host: String::new(),
            target: String::new(),
            active: true,
            configured: false,
            made_dir: true,
            created_at: "2026-12-02T00:00:00Z".into(),
        }
    }

    #[test]
    fn pools_round_trip_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.insert_pool(&pool("fast")).unwrap();
        assert!(matches!(
            store.insert_pool(&pool("fast")),
            Err(StoreError::NameTaken(_))
        ));
        assert!(store.set_pool_active("fast", false).unwrap());
        let got = store.pool("fast").unwrap().unwrap();
        assert!(!got.active);
        store
            .set_volume_hardware("fast", "a.qcow2", 2, 256)
            .unwrap();
        assert_eq!(
            store.volume_hardware("fast", "a.qcow2").unwrap(),
            Some((2, 256))
        );
        assert!(store.delete_pool("fast").unwrap());
        assert_eq!(store.pools().unwrap(), vec![]);
        assert_eq!(store.volume_hardware("fast", "a.qcow2").unwrap(), None);
    }
}
