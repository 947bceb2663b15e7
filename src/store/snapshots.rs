//! Snapshots of VMs: what the qcow2 image does not keep (description, the
//! parent in the tree, whether memory was saved), one row per snapshot.

use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use super::{Result, Store, StoreError};

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub vm: Uuid,
    pub name: String,
    pub description: String,
    /// The snapshot this one was taken on top of (empty: none).
    pub parent: String,
    /// Seconds since the epoch.
    pub created: i64,
    /// Guest memory and device state saved with it.
    pub vm_state: bool,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRow> {
    let vm: String = r.get(0)?;
    Ok(SnapshotRow {
        vm: Uuid::parse_str(&vm).unwrap_or_default(),
        name: r.get(1)?,
        description: r.get(2)?,
        parent: r.get(3)?,
        created: r.get(4)?,
        vm_state: r.get::<_, i64>(5)? != 0,
    })
}

const COLUMNS: &str = "vm, name, description, parent, created, vm_state";

impl Store {
    /// Records a snapshot; a name the VM already has is `NameTaken`.
    pub fn insert_snapshot(&self, s: &SnapshotRow) -> Result<()> {
        let done = self.conn().execute(
            "INSERT INTO snapshots (vm, name, description, parent, created, vm_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(vm, name) DO NOTHING",
            params![
                s.vm.to_string(),
                s.name,
                s.description,
                s.parent,
                s.created,
                s.vm_state as i64
            ],
        )?;
        if done == 0 {
            return Err(StoreError::NameTaken(s.name.clone()));
        }
        Ok(())
    }

    /// A VM's snapshots, oldest first.
    pub fn snapshots(&self, vm: Uuid) -> Result<Vec<SnapshotRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE vm = ?1 ORDER BY created, name"
        ))?;
        let rows = stmt.query_map(params![vm.to_string()], row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn snapshot(&self, vm: Uuid, name: &str) -> Result<Option<SnapshotRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM snapshots WHERE vm = ?1 AND name = ?2"),
                params![vm.to_string(), name],
                row,
            )
            .optional()?)
    }

    /// Removes a snapshot; its children take its parent, so the tree stays
    /// whole. False if there was none.
    pub fn delete_snapshot(&self, vm: Uuid, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let parent: Option<String> = tx
            .query_row(
                "SELECT parent FROM snapshots WHERE vm = ?1 AND name = ?2",
                params![vm.to_string(), name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(parent) = parent else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE snapshots SET parent = ?3 WHERE vm = ?1 AND parent = ?2",
            params![vm.to_string(), name, parent],
        )?;
        tx.execute(
            "DELETE FROM snapshots WHERE vm = ?1 AND name = ?2",
            params![vm.to_string(), name],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Forgets every snapshot of a VM (it is deleted).
    pub fn delete_snapshots(&self, vm: Uuid) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM snapshots WHERE vm = ?1",
            params![vm.to_string()],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(vm: Uuid, name: &str, parent: &str, created: i64) -> SnapshotRow {
        SnapshotRow {
            vm,
            name: name.into(),
            description: format!("{name} desc"),
            parent: parent.into(),
            created,
            vm_state: name.ends_with('m'),
        }
    }

    #[test]
    fn a_tree_per_vm_that_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // a: s1 <- s2m <- s3, and s1 <- s4 (a branch after a revert).
        for s in [
            snap(a, "s1", "", 1),
            snap(a, "s2m", "s1", 2),
            snap(a, "s3", "s2m", 3),
            snap(a, "s4", "s1", 4),
            snap(b, "s1", "", 1),
        ] {
            store.insert_snapshot(&s).unwrap();
        }
        assert!(matches!(
            store.insert_snapshot(&snap(a, "s1", "", 9)),
            Err(StoreError::NameTaken(_))
        ));
        let names = |vm| -> Vec<String> {
            store
                .snapshots(vm)
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(names(a), vec!["s1", "s2m", "s3", "s4"]);
        assert!(store.snapshot(a, "s2m").unwrap().unwrap().vm_state);
        // Deleting the middle of a chain re-parents its child.
        assert!(store.delete_snapshot(a, "s2m").unwrap());
        assert_eq!(store.snapshot(a, "s3").unwrap().unwrap().parent, "s1");
        assert!(!store.delete_snapshot(a, "s2m").unwrap());
        // Another VM's snapshot of the same name is its own.
        assert_eq!(store.delete_snapshots(a).unwrap(), 3);
        assert_eq!(names(b), vec!["s1"]);
    }
}
