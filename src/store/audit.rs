//! The audit trail: one row per mutating call, written before the answer.

use rusqlite::params;

use super::{Result, Store};

/// One mutating call, as the API recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// RFC 3339, whole seconds, UTC.
    pub at: String,
    pub request_id: String,
    /// Who called: `uid:0`, `user:alice`, `token:<id>`, `anonymous`.
    pub actor: String,
    /// The role the call ran with (empty when none was established).
    pub role: String,
    /// `unix`, `unix-ro` or `tcp`.
    pub transport: String,
    pub method: String,
    pub path: String,
    /// The object acted on (`vms/web1`, `users/alice`), or the collection.
    pub target: String,
    pub status: u16,
    /// `succeeded`, `failed` or `denied`.
    pub outcome: String,
    pub duration_ms: u64,
}

/// A stored entry with its sequence number (the cursor of the pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub entry: AuditEntry,
}

/// Filters of an audit page; entries come newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    /// Matches the target itself and everything below it (`vms/web1`
    /// matches `vms/web1/disks/d1`).
    pub target: Option<String>,
    /// RFC 3339: entries at or after.
    pub since: Option<String>,
    pub outcome: Option<String>,
    /// Entries older than this sequence number (the previous page's last).
    pub before_seq: Option<i64>,
    pub limit: usize,
}

const COLUMNS: &str = "seq, at, request_id, caller, role, transport, method, path, target, status, outcome, duration_ms";

impl Store {
    /// Appends one entry; returns its sequence number once it is durable.
    pub fn audit(&self, e: &AuditEntry) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO audit (at, request_id, caller, role, transport, method, path, target, status, outcome, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                e.at,
                e.request_id,
                e.actor,
                e.role,
                e.transport,
                e.method,
                e.path,
                e.target,
                e.status,
                e.outcome,
                e.duration_ms as i64
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// One page of entries matching `q`, newest first, and whether more follow.
    pub fn audit_page(&self, q: &AuditQuery) -> Result<(Vec<AuditRecord>, bool)> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(a) = &q.actor {
            arg(&mut sql, " AND caller = ?", a.clone().into());
        }
        if let Some(t) = &q.target {
            arg(&mut sql, " AND (target = ?", t.clone().into());
            let below = format!(
                "{}/%",
                t.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            arg(&mut sql, " OR target LIKE ? ESCAPE '\\')", below.into());
        }
        if let Some(s) = &q.since {
            arg(&mut sql, " AND at >= ?", s.clone().into());
        }
        if let Some(o) = &q.outcome {
            arg(&mut sql, " AND outcome = ?", o.clone().into());
        }
        if let Some(b) = q.before_seq {
            arg(&mut sql, " AND seq < ?", b.into());
        }
        arg(
            &mut sql,
            " ORDER BY seq DESC LIMIT ?",
            ((q.limit + 1) as i64).into(),
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                entry: AuditEntry {
                    at: r.get(1)?,
                    request_id: r.get(2)?,
                    actor: r.get(3)?,
                    role: r.get(4)?,
                    transport: r.get(5)?,
                    method: r.get(6)?,
                    path: r.get(7)?,
                    target: r.get(8)?,
                    status: r.get(9)?,
                    outcome: r.get(10)?,
                    duration_ms: r.get::<_, i64>(11)?.max(0) as u64,
                },
            })
        })?;
        let mut page: Vec<AuditRecord> = rows.collect::<std::result::Result<_, _>>()?;
        let more = page.len() > q.limit;
        page.truncate(q.limit);
        Ok((page, more))
    }

    /// Removes entries older than `cutoff` (RFC 3339); returns how many.
    pub fn prune_audit(&self, cutoff: &str) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM audit WHERE at < ?1", params![cutoff])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: &str, actor: &str, target: &str, outcome: &str) -> AuditEntry {
        AuditEntry {
            at: at.into(),
            request_id: "r".into(),
            actor: actor.into(),
            role: "admin".into(),
            transport: "tcp".into(),
            method: "POST".into(),
            path: format!("/api/v1/{target}"),
            target: target.into(),
            status: 201,
            outcome: outcome.into(),
            duration_ms: 3,
        }
    }

    #[test]
    fn pages_filter_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let rows = [
            entry("2026-01-01T00:00:00Z", "user:a", "vms/web1", "succeeded"),
            entry(
                "2026-01-02T00:00:00Z",
                "user:b",
                "vms/web1/disks/d",
                "failed",
            ),
            entry("2026-01-03T00:00:00Z", "user:a", "vms/web10", "denied"),
            entry("2026-01-04T00:00:00Z", "user:a", "users/b", "succeeded"),
        ];
        for r in &rows {
            store.audit(r).unwrap();
        }
        let q = |f: &dyn Fn(&mut AuditQuery)| {
            let mut q = AuditQuery {
                limit: 10,
                ..Default::default()
            };
            f(&mut q);
            store.audit_page(&q).unwrap().0
        };
        // Newest first; a target matches itself and what is below it only.
        let web1 = q(&|q| q.target = Some("vms/web1".into()));
        assert_eq!(web1.len(), 2);
        assert_eq!(web1[0].entry, rows[1]);
        assert_eq!(q(&|q| q.actor = Some("user:a".into())).len(), 3);
        assert_eq!(q(&|q| q.outcome = Some("denied".into()))[0].entry, rows[2]);
        assert_eq!(
            q(&|q| q.since = Some("2026-01-03T00:00:00Z".into())).len(),
            2
        );
        // A LIKE wildcard in the filter is taken literally.
        assert!(q(&|q| q.target = Some("vms/web_".into())).is_empty());
        // Cursor pages: two by two, then the end.
        let (first, more) = store
            .audit_page(&AuditQuery {
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert!(more);
        let (second, more) = store
            .audit_page(&AuditQuery {
                limit: 2,
                before_seq: Some(first[1].seq),
                ..Default::default()
            })
            .unwrap();
        assert!(!more);
        assert_eq!(second[1].entry, rows[0]);
        assert_eq!(store.prune_audit("2026-01-03T00:00:00Z").unwrap(), 2);
        assert_eq!(q(&|_| {}).len(), 2);
    }
}
