//! VM groups and their members. A member row goes with its VM (foreign
//! key, `ON DELETE CASCADE`), so a VM deleted on its own leaves its groups.

use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use super::{Result, Store, StoreError};

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Member VM ids, in the order they joined.
    pub vms: Vec<Uuid>,
    pub created_at: String,
    pub updated_at: String,
}

impl Store {
    /// Records a group with its members; a name in use is `NameTaken`.
    pub fn insert_group(&self, g: &GroupRow) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let done = tx.execute(
            "INSERT INTO vm_groups (name, description, tags, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(name) DO NOTHING",
            params![
                g.name,
                g.description,
                serde_json::to_string(&g.tags)?,
                g.created_at,
                g.updated_at
            ],
        )?;
        if done == 0 {
            return Err(StoreError::NameTaken(g.name.clone()));
        }
        set_members(&tx, &g.name, &g.vms)?;
        tx.commit()?;
        Ok(())
    }

    /// Rewrites a group's properties and member list.
    pub fn update_group(&self, g: &GroupRow) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let done = tx.execute(
            "UPDATE vm_groups SET description = ?2, tags = ?3, updated_at = ?4 WHERE name = ?1",
            params![
                g.name,
                g.description,
                serde_json::to_string(&g.tags)?,
                g.updated_at
            ],
        )?;
        if done == 0 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM vm_group_members WHERE grp = ?1",
            params![g.name],
        )?;
        set_members(&tx, &g.name, &g.vms)?;
        tx.commit()?;
        Ok(true)
    }

    /// Adds one member (nothing if it is one already); false when the
    /// group or the VM is gone.
    pub fn add_group_member(&self, group: &str, vm: Uuid) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "INSERT INTO vm_group_members (grp, vm, seq)
             SELECT ?1, ?2, COALESCE((SELECT MAX(seq) + 1 FROM vm_group_members WHERE grp = ?1), 0)
             WHERE EXISTS (SELECT 1 FROM vm_groups WHERE name = ?1)
               AND EXISTS (SELECT 1 FROM vms WHERE id = ?2)
             ON CONFLICT(grp, vm) DO NOTHING",
            params![group, vm.to_string()],
        )?;
        Ok(n > 0)
    }

    pub fn delete_group(&self, name: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM vm_groups WHERE name = ?1", params![name])?;
        Ok(n > 0)
    }

    pub fn group(&self, name: &str) -> Result<Option<GroupRow>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT name, description, tags, created_at, updated_at FROM vm_groups WHERE name = ?1",
                params![name],
                head,
            )
            .optional()?;
        let Some(mut g) = row else { return Ok(None) };
        g.vms = members(&conn, &g.name)?;
        Ok(Some(g))
    }

    /// Every group, by name.
    pub fn groups(&self) -> Result<Vec<GroupRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, description, tags, created_at, updated_at FROM vm_groups ORDER BY name",
        )?;
        let mut out = stmt
            .query_map([], head)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for g in out.iter_mut() {
            g.vms = members(&conn, &g.name)?;
        }
        Ok(out)
    }
}

fn head(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    let tags: String = r.get(2)?;
    Ok(GroupRow {
        name: r.get(0)?,
        description: r.get(1)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        vms: Vec::new(),
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

fn members(conn: &rusqlite::Connection, group: &str) -> Result<Vec<Uuid>> {
    let mut stmt = conn.prepare("SELECT vm FROM vm_group_members WHERE grp = ?1 ORDER BY seq")?;
    let ids = stmt
        .query_map(params![group], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
}

fn set_members(tx: &rusqlite::Transaction<'_>, group: &str, vms: &[Uuid]) -> Result<()> {
    for (i, vm) in vms.iter().enumerate() {
        tx.execute(
            "INSERT INTO vm_group_members (grp, vm, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT(grp, vm) DO NOTHING",
            params![group, vm.to_string(), i as i64],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_go_with_their_vm_and_with_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for (id, name) in [(a, "a"), (b, "b")] {
            store
                .insert_vm(id, name, "stopped", "t", &serde_json::json!({}))
                .unwrap();
        }
        let g = GroupRow {
            name: "web".into(),
            description: "d".into(),
            tags: vec!["x".into()],
            vms: vec![b, a],
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        store.insert_group(&g).unwrap();
        assert!(matches!(
            store.insert_group(&g),
            Err(StoreError::NameTaken(_))
        ));
        assert_eq!(store.group("web").unwrap().unwrap(), g);
        store.delete_vm(b).unwrap();
        assert_eq!(store.group("web").unwrap().unwrap().vms, vec![a]);
        assert!(!store.add_group_member("web", b).unwrap());
        assert!(!store.add_group_member("nope", a).unwrap());
        assert!(store.delete_group("web").unwrap());
        assert!(store.groups().unwrap().is_empty());
        // The VM stays.
        assert_eq!(store.load_vms::<serde_json::Value>().unwrap().len(), 1);
    }
}
