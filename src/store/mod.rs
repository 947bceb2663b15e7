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

mod audit;
mod auth;
mod groups;
mod snapshots;
mod storage;

pub use audit::{AuditEntry, AuditQuery, AuditRecord};
pub use auth::{TokenRow, UserRow};
pub use groups::GroupRow;
pub use snapshots::SnapshotRow;
pub use storage::PoolRow;

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
    // 2: job type column, templates, idempotency keys.
    "ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT '';
     UPDATE jobs SET kind = COALESCE(json_extract(doc, '$.type'), '');
     CREATE INDEX jobs_kind ON jobs(kind);
     CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        doc TEXT NOT NULL
     );
     CREATE TABLE idempotency (
        caller TEXT NOT NULL,
        key TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        status INTEGER,
        response BLOB,
        location TEXT,
        job_id TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (caller, key)
     );",
    // 3: containers adopted by libgo (created by someone else).
    "CREATE TABLE adopted (
        engine_id TEXT PRIMARY KEY,
        id TEXT NOT NULL
     );",
    // 4: users, API tokens, revoked sessions; a fuller audit trail.
    "CREATE TABLE users (
        username TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        hash TEXT NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
     );
     CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        role TEXT NOT NULL,
        hash BLOB NOT NULL,
        created_at TEXT NOT NULL,
        expires_at INTEGER
     );
     CREATE TABLE revoked_sessions (
        jti TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
     );
     ALTER TABLE audit ADD COLUMN role TEXT NOT NULL DEFAULT '';
     ALTER TABLE audit ADD COLUMN transport TEXT NOT NULL DEFAULT 'unix';
     ALTER TABLE audit ADD COLUMN target TEXT NOT NULL DEFAULT '';
     ALTER TABLE audit ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
     ALTER TABLE audit ADD COLUMN duration_ms INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX audit_at ON audit(at);",
    // 5: snapshots of VMs (the tree and what qcow2 does not keep).
    "CREATE TABLE snapshots (
        vm TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        parent TEXT NOT NULL,
        created INTEGER NOT NULL,
        vm_state INTEGER NOT NULL,
        PRIMARY KEY (vm, name)
     );",
    // 6: storage pools (those made through the API, and the state of the
    // configured ones) and what imported volumes described.
    "CREATE TABLE storage_pools (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        host TEXT NOT NULL DEFAULT '',
        target TEXT NOT NULL DEFAULT '',
        active INTEGER NOT NULL,
        configured INTEGER NOT NULL,
        made_dir INTEGER NOT NULL,
        created_at TEXT NOT NULL
     );
     CREATE TABLE volume_hardware (
        pool TEXT NOT NULL,
        name TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        memory INTEGER NOT NULL,
        PRIMARY KEY (pool, name)
     );",
    // 7: VM groups and their members (a member row goes with its VM).
    "CREATE TABLE vm_groups (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL,
        tags TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
     );
     CREATE TABLE vm_group_members (
        grp TEXT NOT NULL REFERENCES vm_groups(name) ON DELETE CASCADE,
        vm TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        PRIMARY KEY (grp, vm)
     );
     CREATE INDEX vm_group_members_vm ON vm_group_members(vm);",
    // 8: tokens whose calls the rate limits do not count (an aggregator's).
    "ALTER TABLE tokens ADD COLUMN unlimited INTEGER NOT NULL DEFAULT 0;",
];

pub struct Store {
    conn: Mutex<Connection>,
}

/// A request carrying an `Idempotency-Key`.
pub struct IdemRequest<'a> {
    pub caller: &'a str,
    pub key: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// What an `Idempotency-Key` lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemState {
    /// First use: the request runs.
    New,
    /// Same request answered before: send this again.
    Replay {
        status: u16,
        body: Vec<u8>,
        location: Option<String>,
    },
    /// Same request still running (with the job it started, once known).
    InProgress { job_id: Option<Uuid> },
    /// The key was used with another request.
    Mismatch,
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
        // Any order: the registry keeps its own index (and a sort of 10,000
        // documents without an index would spill to a temporary file).
        self.docs("SELECT id, doc FROM vms", [])
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
        kind: &str,
        state: &str,
        created_at: &str,
        doc: &T,
    ) -> Result<()> {
        let doc = serde_json::to_string(doc)?;
        self.conn().execute(
            "INSERT INTO jobs (id, kind, state, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, doc = excluded.doc",
            params![id.to_string(), kind, state, created_at, doc],
        )?;
        Ok(())
    }

    /// A page of jobs, newest first: (rowid, doc) after the cursor `before`
    /// (a rowid), with optional state and type filters, and the total count.
    pub fn page_jobs<T: DeserializeOwned>(
        &self,
        state: Option<&str>,
        kind: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<(i64, T)>, usize)> {
        let conn = self.conn();
        let filter = "(?1 IS NULL OR state = ?1) AND (?2 IS NULL OR kind = ?2)";
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM jobs WHERE {filter}"),
            params![state, kind],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT rowid, id, doc FROM jobs WHERE {filter} AND (?3 IS NULL OR rowid < ?3)
             ORDER BY rowid DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![state, kind, before, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (rowid, id, doc) = row?;
            let doc =
                serde_json::from_str(&doc).map_err(|source| StoreError::Corrupt { id, source })?;
            out.push((rowid, doc));
        }
        Ok((out, total as usize))
    }

    /// Deletes finished jobs created before `cutoff` (RFC 3339).
    pub fn prune_jobs(&self, cutoff: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND created_at < ?1",
            params![cutoff],
        )?)
    }

    // ---- templates ----------------------------------------------------

    pub fn insert_template<T: Serialize>(
        &self,
        id: Uuid,
        name: &str,
        created_at: &str,
        doc: &T,
    ) -> Result<()> {
        let doc = serde_json::to_string(doc)?;
        let res = self.conn().execute(
            "INSERT INTO templates (id, name, created_at, doc) VALUES (?1, ?2, ?3, ?4)",
            params![id.to_string(), name, created_at, doc],
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

    pub fn update_template<T: Serialize>(&self, id: Uuid, name: &str, doc: &T) -> Result<()> {
        let doc = serde_json::to_string(doc)?;
        let res = self.conn().execute(
            "UPDATE templates SET name = ?2, doc = ?3 WHERE id = ?1",
            params![id.to_string(), name, doc],
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

    pub fn delete_template(&self, id: Uuid) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM templates WHERE id = ?1",
            params![id.to_string()],
        )? > 0)
    }

    pub fn load_templates<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.docs("SELECT id, doc FROM templates ORDER BY created_at, id", [])
    }

    // ---- adopted containers -------------------------------------------

    pub fn adopt(&self, engine_id: &str, id: Uuid) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO adopted (engine_id, id) VALUES (?1, ?2)",
            params![engine_id, id.to_string()],
        )?;
        Ok(())
    }

    pub fn adopted(&self, engine_id: &str) -> Result<Option<Uuid>> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT id FROM adopted WHERE engine_id = ?1",
                params![engine_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(id.and_then(|i| Uuid::parse_str(&i).ok()))
    }

    pub fn unadopt(&self, engine_id: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM adopted WHERE engine_id = ?1",
            params![engine_id],
        )?;
        Ok(())
    }

    // ---- idempotency keys ---------------------------------------------

    /// Looks up (and expires) a key; inserts it as pending when absent.
    pub fn idem_begin(&self, r: &IdemRequest<'_>, now: i64, ttl: i64) -> Result<IdemState> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM idempotency WHERE caller = ?1 AND key = ?2 AND created_at < ?3",
            params![r.caller, r.key, now - ttl],
        )?;
        let row = tx
            .query_row(
                "SELECT method, path, body, state, status, response, location, job_id FROM idempotency
                 WHERE caller = ?1 AND key = ?2",
                params![r.caller, r.key],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<u16>>(4)?,
                        row.get::<_, Option<Vec<u8>>>(5)?,
                        row.get::<_, Option<String>>(6)?,
                        row.get::<_, Option<String>>(7)?,
                    ))
                },
            )
            .optional()?;
        let state = match row {
            None => {
                tx.execute(
                    "INSERT INTO idempotency (caller, key, method, path, body, state, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                    params![r.caller, r.key, r.method, r.path, r.body, now],
                )?;
                IdemState::New
            }
            Some((method, path, body, _, _, _, _, _))
                if method != r.method || path != r.path || body != r.body =>
            {
                IdemState::Mismatch
            }
            Some((_, _, _, state, status, response, location, _)) if state == "done" => {
                IdemState::Replay {
                    status: status.unwrap_or(200),
                    body: response.unwrap_or_default(),
                    location,
                }
            }
            Some((_, _, _, _, _, _, _, job)) => IdemState::InProgress {
                job_id: job.and_then(|j| Uuid::parse_str(&j).ok()),
            },
        };
        tx.commit()?;
        Ok(state)
    }

    /// Links a pending key to the job its request started.
    pub fn idem_job(&self, caller: &str, key: &str, job_id: Uuid) -> Result<()> {
        self.conn().execute(
            "UPDATE idempotency SET job_id = ?3 WHERE caller = ?1 AND key = ?2",
            params![caller, key, job_id.to_string()],
        )?;
        Ok(())
    }

    /// Stores the answer of a keyed request.
    pub fn idem_done(
        &self,
        caller: &str,
        key: &str,
        status: u16,
        body: &[u8],
        location: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE idempotency SET state = 'done', status = ?3, response = ?4, location = ?5
             WHERE caller = ?1 AND key = ?2",
            params![caller, key, status, body, location],
        )?;
        Ok(())
    }

    /// Forgets a key (its request failed in a way a retry should redo).
    pub fn idem_forget(&self, caller: &str, key: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM idempotency WHERE caller = ?1 AND key = ?2",
            params![caller, key],
        )?;
        Ok(())
    }

    pub fn prune_idempotency(&self, before: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM idempotency WHERE created_at < ?1",
            params![before],
        )?)
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
    fn jobs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let id = Uuid::new_v4();
        store
            .put_job(id, "k", "running", "t1", &Doc { v: 1 })
            .unwrap();
        store
            .put_job(id, "k", "succeeded", "t1", &Doc { v: 2 })
            .unwrap();
        let (page, total) = store
            .page_jobs::<Doc>(Some("succeeded"), Some("k"), None, 10)
            .unwrap();
        assert_eq!((page.len(), total), (1, 1));
        assert_eq!(
            store
                .page_jobs::<Doc>(None, Some("other"), None, 10)
                .unwrap()
                .1,
            0
        );
        assert_eq!(store.get_job::<Doc>(id).unwrap(), Some(Doc { v: 2 }));
        assert!(store.jobs_in_state::<Doc>(&["running"]).unwrap().is_empty());
    }

    #[test]
    fn finished_jobs_past_retention_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (old, running, new) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        store
            .put_job(old, "k", "succeeded", "2020-01-01T00:00:00Z", &Doc { v: 1 })
            .unwrap();
        store
            .put_job(
                running,
                "k",
                "running",
                "2020-01-01T00:00:00Z",
                &Doc { v: 2 },
            )
            .unwrap();
        store
            .put_job(new, "k", "failed", "2030-01-01T00:00:00Z", &Doc { v: 3 })
            .unwrap();
        assert_eq!(store.prune_jobs("2025-01-01T00:00:00Z").unwrap(), 1);
        assert!(store.get_job::<Doc>(old).unwrap().is_none());
        assert!(store.get_job::<Doc>(running).unwrap().is_some());
        assert!(store.get_job::<Doc>(new).unwrap().is_some());
    }

    #[test]
    fn idempotency_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let r = IdemRequest {
            caller: "uid:0",
            key: "k1",
            method: "POST",
            path: "/x",
            body: b"{}",
        };
        assert_eq!(store.idem_begin(&r, 100, 86400).unwrap(), IdemState::New);
        assert_eq!(
            store.idem_begin(&r, 101, 86400).unwrap(),
            IdemState::InProgress { job_id: None }
        );
        let job = Uuid::new_v4();
        store.idem_job("uid:0", "k1", job).unwrap();
        assert_eq!(
            store.idem_begin(&r, 101, 86400).unwrap(),
            IdemState::InProgress { job_id: Some(job) }
        );
        store
            .idem_done("uid:0", "k1", 201, b"done", Some("/loc"))
            .unwrap();
        assert_eq!(
            store.idem_begin(&r, 102, 86400).unwrap(),
            IdemState::Replay {
                status: 201,
                body: b"done".to_vec(),
                location: Some("/loc".into())
            }
        );
        let other = IdemRequest {
            body: b"{\"a\":1}",
            ..r
        };
        assert_eq!(
            store.idem_begin(&other, 103, 86400).unwrap(),
            IdemState::Mismatch
        );
        // Another caller's key space is its own; an expired key is new again.
        let mine = IdemRequest {
            caller: "uid:5",
            ..r
        };
        assert_eq!(store.idem_begin(&mine, 103, 86400).unwrap(), IdemState::New);
        assert_eq!(
            store.idem_begin(&other, 100 + 86401, 86400).unwrap(),
            IdemState::New
        );
    }
}
