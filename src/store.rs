//! Durable state in an embedded SQLite database (WAL, `synchronous=FULL`).
//!
//! Rows hold a JSON document plus the columns the agent looks things up by.
//! Every write is its own transaction, committed before the API answers, so
//! nothing reported as done is lost when the daemon is killed.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row {id}: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("cannot encode row: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("name already in use: {0}")]
    NameTaken(String),
    #[error("database is newer than this libgod (schema {0})")]
    TooNew(i64),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Each entry moves the schema one version up; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: VMs, jobs, audit log.
    "CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        doc TEXT NOT NULL
     );
     CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        doc TEXT NOT NULL
     );
     CREATE INDEX jobs_state ON jobs(state);
     CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        request_id TEXT NOT NULL,
        caller TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        status INTEGER NOT NULL
     );",
];

pub struct Store {
    conn: Mutex<Connection>,
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: String,
    pub request_id: String,
    pub caller: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (each statement is atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_vm<T: Serialize>(
        &self,
        id: Uuid,
        name: &str,
        status: &str,
        created_at: &str,
        doc: &T,
    ) -> Result<()> {
        let doc = serde_json::to_string(doc)?;
        let res = self.conn().execute(
            "INSERT INTO vms (id, name, status, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id.to_string(), name, status, created_at, doc],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::NameTaken(name.to_owned()))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub fn update_vm<T: Serialize>(&self, id: Uuid, status: &str, doc: &T) -> Result<()> {
        let doc = serde_json::to_string(doc)?;
        self.conn().execute(
            "UPDATE vms SET status = ?2, doc = ?3 WHERE id = ?1",
            params![id.to_string(), status, doc],
        )?;
        Ok(())
    }

    pub fn delete_vm(&self, id: Uuid) -> Result<()> {
        self.conn()
            .execute("DELETE FROM vms WHERE id = ?1", params![id.to_string()])?;
        Ok(())
    }

    pub fn load_vms<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.docs("SELECT id, doc FROM vms ORDER BY created_at, id", [])
    }

    /// Runs a query selecting `(id, doc)` rows and decodes each document.
    fn docs<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, doc) = row?;
            out.push(
                serde_json::from_str(&doc).map_err(|source| StoreError::Corrupt { id, source })?,
            );
        }
        Ok(out)
    }

    pub fn put_job<T: Serialize>(
        &self,
        id: Uuid,
        state: &str,
        created_at: &str,
        doc: &T,
    ) -> Result<()> {
        let doc = serde_json::to_string(doc)?;
        self.conn().execute(
            "INSERT INTO jobs (id, state, created_at, doc) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, doc = excluded.doc",
            params![id.to_string(), state, created_at, doc],
        )?;
        Ok(())
    }

    pub fn get_job<T: DeserializeOwned>(&self, id: Uuid) -> Result<Option<T>> {
        let doc: Option<String> = self
            .conn()
            .query_row(
                "SELECT doc FROM jobs WHERE id = ?1",
                params![id.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        doc.map(|d| {
            serde_json::from_str(&d).map_err(|source| StoreError::Corrupt {
                id: id.to_string(),
                source,
            })
        })
        .transpose()
    }

    /// Jobs newest first.
    pub fn list_jobs<T: DeserializeOwned>(&self, limit: usize) -> Result<Vec<T>> {
        self.docs(
            "SELECT id, doc FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?1",
            params![limit as i64],
        )
    }

    /// Jobs in one of the given states.
    pub fn jobs_in_state<T: DeserializeOwned>(&self, states: &[&str]) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for state in states {
            out.extend(self.docs("SELECT id, doc FROM jobs WHERE state = ?1", params![state])?);
        }
        Ok(out)
    }

    /// How many jobs there are of each (type, state).
    pub fn job_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT json_extract(doc, '$.type'), state, COUNT(*) FROM jobs GROUP BY 1, 2",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(Into::into)
    }

    pub fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, request_id, caller, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.at, e.request_id, e.caller, e.method, e.path, e.status],
        )?;
        Ok(())
    }

    /// The newest audit entries, newest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, request_id, caller, method, path, status FROM audit ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                request_id: r.get(1)?,
                caller: r.get(2)?,
                method: r.get(3)?,
                path: r.get(4)?,
                status: r.get(5)?,
            })
        })?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(Into::into)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = MIGRATIONS.len() as i64;
    if version > latest {
        return Err(StoreError::TooNew(version));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Doc {
        v: u32,
    }

    #[test]
    fn vms_round_trip_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let a = Uuid::new_v4();
        store
            .insert_vm(a, "one", "stopped", "2026-01-01T00:00:00Z", &Doc { v: 1 })
            .unwrap();
        let err = store
            .insert_vm(
                Uuid::new_v4(),
                "one",
                "stopped",
                "2026-01-01T00:00:00Z",
                &Doc { v: 2 },
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::NameTaken(_)));
        store.update_vm(a, "running", &Doc { v: 3 }).unwrap();
        drop(store);
        // Reopening runs no migration twice and keeps the data.
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.load_vms::<Doc>().unwrap(), vec![Doc { v: 3 }]);
        store.delete_vm(a).unwrap();
        assert!(store.load_vms::<Doc>().unwrap().is_empty());
    }

    #[test]
    fn jobs_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let id = Uuid::new_v4();
        store.put_job(id, "running", "t1", &Doc { v: 1 }).unwrap();
        store.put_job(id, "succeeded", "t1", &Doc { v: 2 }).unwrap();
        assert_eq!(store.get_job::<Doc>(id).unwrap(), Some(Doc { v: 2 }));
        assert!(store.jobs_in_state::<Doc>(&["running"]).unwrap().is_empty());
        let e = AuditEntry {
            at: "t".into(),
            request_id: "r".into(),
            caller: "uid:0".into(),
            method: "POST".into(),
            path: "/api/v1/vms".into(),
            status: 201,
        };
        store.audit(&e).unwrap();
        assert_eq!(store.audit_tail(5).unwrap(), vec![e]);
    }
}
