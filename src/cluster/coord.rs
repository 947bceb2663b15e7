//! What libgo keeps in etcd, under a prefix (default `/libgo/`):
//!
//! | key | value | lifetime |
//! | --- | --- | --- |
//! | `nodes/<name>` | [`NodeRegistration`] (JSON) | the node's lease |
//! | `aggregators/<id>` | [`AggregatorRecord`] (JSON) | the aggregator's lease |
//! | `names/<vm name>` | [`NameOwner`] (JSON) | until released |
//! | `jobs/<uuid>` | `{"owner", "doc"}` (JSON) | until deleted |
//!
//! Names and ids in keys are percent-encoded (anything but `A-Z a-z 0-9
//! . _ ~ : @ -`), so a `/` in one never makes a key of another kind.
//!
//! Registration rules. A node name is held by at most one live
//! registration: registering creates `nodes/<name>` only if absent, in one
//! transaction. The one exception is the same node coming back (a restart
//! before its old lease expired, or after its heartbeat lost the lease while
//! etcd kept it): a registration carrying the same `token` — the node's own
//! secret, kept in its state directory — replaces the old one (a
//! compare-and-swap on its revision) and the old lease is revoked. Any other
//! holder makes the registration fail with [`CoordError::NodeTaken`] until
//! its lease ends. Aggregator ids have no such exception: an aggregator
//! that crashed is taken for dead only once its lease expires, which is
//! what makes its jobs orphans that others may claim.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::etcd::{Compare, Etcd, EtcdError, EventKind, Kv, Lease, TxnOp, TxnResponse, Watch};

/// The default prefix of every key.
pub const DEFAULT_PREFIX: &str = "/libgo/";

/// What can go wrong coordinating.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Another live registration holds the node name.
    #[error("node name {0:?} is registered by another live node")]
    NodeTaken(String),
    /// Another live aggregator holds the id.
    #[error("aggregator id {0:?} is held by another live aggregator")]
    AggregatorTaken(String),
    /// `create_job` of an id that exists.
    #[error("cluster job {0} already exists")]
    JobExists(Uuid),
    /// A stored value libgo did not write.
    #[error("etcd key {key} holds something libgo does not read: {reason}")]
    Corrupt { key: String, reason: String },
    /// An argument that cannot be stored (an empty name, a TTL below 1 s).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;

/// A node as it announces itself: how to reach it and with what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// The node's name (its `node_name`).
    pub name: String,
    /// Where its TLS (or loopback plain HTTP) listener answers.
    pub url: String,
    /// SHA-256 of its listener's certificate, `AB:CD:…` (none: plain HTTP).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// An API token of the node for the cluster's use (bearer credential).
    pub token: String,
    /// libgod's version.
    #[serde(default)]
    pub version: String,
}

/// An aggregator while it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatorRecord {
    pub id: String,
    /// When it registered (RFC 3339).
    #[serde(default)]
    pub since: String,
}

/// Who holds a cluster-wide VM name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameOwner {
    /// The node the VM lives (or is being made) on.
    pub node: String,
    /// The VM's id, once it exists.
    #[serde(default)]
    pub vm: Option<Uuid>,
    /// The aggregator that reserved the name.
    pub by: String,
}

/// A cluster job as stored: its owner aggregator and the owner's document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub id: Uuid,
    pub owner: String,
    pub doc: serde_json::Value,
    /// Give it back to `update_job`/`claim_job` to change exactly this version.
    pub mod_revision: i64,
}

impl StoredJob {
    /// The document's `"finished": true`.
    pub fn finished(&self) -> bool {
        self.doc
            .get("finished")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    }
}

#[derive(Serialize, Deserialize)]
struct JobRecord {
    owner: String,
    doc: serde_json::Value,
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// A node registered, or changed its registration.
    Registered {
        node: NodeRegistration,
        revision: i64,
    },
    /// A registration ended: revoked, or its lease expired.
    Gone { name: String, revision: i64 },
}

/// Membership changes, in order. When [`NodeWatch::next`] answers an error
/// the watch is over: watch again from [`NodeWatch::resume_revision`] (on
/// `Compacted`, list with [`Coord::nodes`] and watch after its revision).
#[derive(Debug)]
pub struct NodeWatch {
    watch: Watch,
    prefix: String,
}

impl NodeWatch {
    pub async fn next(&mut self) -> Option<Result<NodeChange>> {
        let ev = match self.watch.next().await? {
            Ok(ev) => ev,
            Err(e) => return Some(Err(e.into())),
        };
        let revision = ev.revision();
        let name = match ev.kv.key.strip_prefix(&self.prefix).map(unescape) {
            Some(Some(n)) => n,
            _ => {
                return Some(Err(CoordError::Corrupt {
                    key: ev.kv.key.clone(),
                    reason: "not a node key".into(),
                }))
            }
        };
        Some(match ev.kind {
            EventKind::Delete => Ok(NodeChange::Gone { name, revision }),
            EventKind::Put => decode::<NodeRegistration>(&ev.kv)
                .map(|node| NodeChange::Registered { node, revision }),
        })
    }

    pub fn resume_revision(&self) -> i64 {
        self.watch.resume_revision()
    }
}

/// libgo's records in one etcd, under one prefix.
#[derive(Debug, Clone)]
pub struct Coord {
    etcd: Etcd,
    prefix: String,
}

/// A name or id as one key segment: percent-encoded but for
/// `A-Z a-z 0-9 . _ ~ : @ -`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._~:@-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The name an [`escape`]d segment stands for.
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn decode<T: serde::de::DeserializeOwned>(kv: &Kv) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| CoordError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

fn to_json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("libgo's records serialize")
}

fn nonempty(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(CoordError::Invalid(format!("{what} is empty")));
    }
    Ok(())
}

fn check_ttl(ttl_secs: i64) -> Result<()> {
    if ttl_secs < 1 {
        return Err(CoordError::Invalid(format!(
            "a lease lives at least 1 s, not {ttl_secs}"
        )));
    }
    Ok(())
}

impl Coord {
    /// libgo's records under `prefix` (a `/` is added at its end when
    /// missing; empty: [`DEFAULT_PREFIX`]).
    pub fn new(etcd: Etcd, prefix: &str) -> Coord {
        let mut prefix = if prefix.is_empty() {
            DEFAULT_PREFIX.to_owned()
        } else {
            prefix.to_owned()
        };
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Coord { etcd, prefix }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn dir(&self, kind: &str) -> String {
        format!("{}{kind}/", self.prefix)
    }

    /// The key of `name` in `kind` (`nodes`, `aggregators`, `names`, `jobs`).
    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{}", self.prefix, escape(name))
    }

    // ---- nodes ----

    /// Registers a node, bound to a new lease of `ttl_secs` that a
    /// background task renews every third of it. See the module's
    /// registration rules; [`CoordError::NodeTaken`] when another live node
    /// holds the name. When the [`Lease`] is lost the key is gone (or soon
    /// will be): register again.
    pub async fn register_node(&self, reg: &NodeRegistration, ttl_secs: i64) -> Result<Lease> {
        nonempty("a node name", &reg.name)?;
        check_ttl(ttl_secs)?;
        let key = self.key("nodes", &reg.name);
        let value = to_json(reg);
        let lease = self.etcd.lease_grant(ttl_secs).await?;
        let r = self.claim_node(&key, &value, reg, lease).await;
        match r {
            Ok(old_lease) => {
                if let Some(old) = old_lease.filter(|o| *o != lease) {
                    // Its keys were moved to the new lease: nothing else goes.
                    if let Err(e) = self.etcd.lease_revoke(old).await {
                        tracing::debug!(error = %e, "revoking the replaced registration's lease");
                    }
                }
                Ok(self.etcd.keep_alive(lease, ttl_secs))
            }
            Err(e) => {
                let _ = self.etcd.lease_revoke(lease).await;
                Err(e)
            }
        }
    }

    /// Puts the registration if the name is free or held by the same node;
    /// answers the replaced registration's lease.
    async fn claim_node(
        &self,
        key: &str,
        value: &[u8],
        reg: &NodeRegistration,
        lease: i64,
    ) -> Result<Option<i64>> {
        for _ in 0..5 {
            let r = self
                .etcd
                .txn(
                    &[Compare::absent(key)],
                    &[TxnOp::put(key, value, Some(lease))],
                    &[TxnOp::get(key)],
                )
                .await?;
            if r.succeeded {
                return Ok(None);
            }
            let Some(TxnResponse::Get(Some(held))) = r.responses.into_iter().next() else {
                // Gone between the compare and the read: try again.
                continue;
            };
            let same = decode::<NodeRegistration>(&held)
                .map(|h| h.token == reg.token && h.name == reg.name)
                .unwrap_or(false);
            if !same {
                return Err(CoordError::NodeTaken(reg.name.clone()));
            }
            let swapped = self
                .etcd
                .txn(
                    &[Compare::mod_revision(key, held.mod_revision)],
                    &[TxnOp::put(key, value, Some(lease))],
                    &[],
                )
                .await?;
            if swapped.succeeded {
                return Ok(held.lease);
            }
        }
        Err(CoordError::NodeTaken(reg.name.clone()))
    }

    /// One node's registration.
    pub async fn node(&self, name: &str) -> Result<Option<NodeRegistration>> {
        match self.etcd.get(&self.key("nodes", name)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every live registration, by name, and the revision they were read
    /// at: [`Coord::watch_nodes`] from the revision after it misses nothing.
    /// A record libgo cannot read is left out (and logged).
    pub async fn nodes(&self) -> Result<(Vec<NodeRegistration>, i64)> {
        let (kvs, rev) = self.etcd.range_prefix(&self.dir("nodes")).await?;
        let nodes = kvs
            .iter()
            .filter_map(|kv| match decode(kv) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a node registration");
                    None
                }
            })
            .collect();
        Ok((nodes, rev))
    }

    /// Membership changes from `from_revision` (0: from now on).
    pub async fn watch_nodes(&self, from_revision: i64) -> Result<NodeWatch> {
        let prefix = self.dir("nodes");
        let watch = self.etcd.watch_prefix(&prefix, from_revision).await?;
        Ok(NodeWatch { watch, prefix })
    }

    /// Keeps `reg` registered until `stop` is cancelled, then revokes it:
    /// registers (retrying, etcd down or the name held, every 1 to 10 s),
    /// waits for the lease to be lost, registers again. For a node agent.
    pub async fn keep_node_registered(
        &self,
        reg: NodeRegistration,
        ttl_secs: i64,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            // Not abandoned halfway on `stop`: a registration made but not
            // yet answered would stay for a whole lease. Each call is bounded
            // by the client's deadline.
            let attempt = self.register_node(&reg, ttl_secs).await;
            if stop.is_cancelled() {
                if let Ok(lease) = attempt {
                    let _ = lease.revoke().await;
                }
                return;
            }
            let lease = match attempt {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(etcd = %self.etcd.url(), error = %e,
                        retry_secs = backoff.as_secs(), "cannot register in etcd");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_secs(1);
            tracing::info!(etcd = %self.etcd.url(), node = %reg.name, url = %reg.url,
                lease = format!("{:x}", lease.id()), "registered in etcd");
            tokio::select! {
                _ = lease.lost() => {
                    tracing::warn!(node = %reg.name, "etcd registration lost: registering again");
                }
                _ = stop.cancelled() => {
                    match lease.revoke().await {
                        Ok(()) => tracing::info!(node = %reg.name, "etcd registration revoked"),
                        Err(e) => tracing::warn!(error = %e, "cannot revoke the etcd registration"),
                    }
                    return;
                }
            }
        }
    }

    // ---- aggregators ----

    /// Registers an aggregator under a lease kept alive in the background;
    /// [`CoordError::AggregatorTaken`] while another live one has the id.
    pub async fn register_aggregator(&self, id: &str, ttl_secs: i64) -> Result<Lease> {
        nonempty("an aggregator id", id)?;
        check_ttl(ttl_secs)?;
        let key = self.key("aggregators", id);
        let value = to_json(&AggregatorRecord {
            id: id.to_owned(),
            since: crate::clock::now(),
        });
        let lease = self.etcd.lease_grant(ttl_secs).await?;
        let r = self
            .etcd
            .txn(
                &[Compare::absent(&key)],
                &[TxnOp::put(&key, value, Some(lease))],
                &[],
            )
            .await;
        match r {
            Ok(r) if r.succeeded => Ok(self.etcd.keep_alive(lease, ttl_secs)),
            other => {
                let _ = self.etcd.lease_revoke(lease).await;
                other?;
                Err(CoordError::AggregatorTaken(id.to_owned()))
            }
        }
    }

    /// The ids of the live aggregators, sorted.
    pub async fn aggregators(&self) -> Result<Vec<String>> {
        let dir = self.dir("aggregators");
        let (kvs, _) = self.etcd.range_prefix(&dir).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&dir).and_then(unescape))
            .collect())
    }

    pub async fn aggregator_alive(&self, id: &str) -> Result<bool> {
        Ok(self.etcd.get(&self.key("aggregators", id)).await?.is_some())
    }

    // ---- cluster-wide VM names ----

    /// Reserves a VM name for `owner` if nobody holds it: true when it is
    /// ours now. Of any number of concurrent reservations exactly one wins.
    pub async fn reserve_name(&self, name: &str, owner: &NameOwner) -> Result<bool> {
        nonempty("a VM name", name)?;
        let key = self.key("names", name);
        let r = self
            .etcd
            .txn(
                &[Compare::absent(&key)],
                &[TxnOp::put(&key, to_json(owner), None)],
                &[],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Who holds a name.
    pub async fn name_owner(&self, name: &str) -> Result<Option<NameOwner>> {
        match self.etcd.get(&self.key("names", name)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Replaces a name's owner record, if it still is `expected` (e.g. to
    /// record the VM's id once made): false when it changed or is gone.
    pub async fn set_name_owner(
        &self,
        name: &str,
        expected: &NameOwner,
        new: &NameOwner,
    ) -> Result<bool> {
        let key = self.key("names", name);
        let Some(kv) = self.etcd.get(&key).await? else {
            return Ok(false);
        };
        if decode::<NameOwner>(&kv)? != *expected {
            return Ok(false);
        }
        let r = self
            .etcd
            .txn(
                &[Compare::mod_revision(&key, kv.mod_revision)],
                &[TxnOp::put(&key, to_json(new), None)],
                &[],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Frees a name; answers whether it was held.
    pub async fn release_name(&self, name: &str) -> Result<bool> {
        Ok(self.etcd.delete(&self.key("names", name)).await?)
    }

    // ---- cluster jobs ----

    /// Stores a new job; [`CoordError::JobExists`] if the id is taken.
    pub async fn create_job(&self, id: Uuid, owner: &str, doc: &serde_json::Value) -> Result<()> {
        nonempty("a job owner", owner)?;
        let key = self.key("jobs", &id.to_string());
        let value = to_json(&JobRecord {
            owner: owner.to_owned(),
            doc: doc.clone(),
        });
        let r = self
            .etcd
            .txn(
                &[Compare::absent(&key)],
                &[TxnOp::put(&key, value, None)],
                &[],
            )
            .await?;
        if !r.succeeded {
            return Err(CoordError::JobExists(id));
        }
        Ok(())
    }

    fn stored_job(&self, kv: &Kv) -> Result<StoredJob> {
        let id = kv
            .key
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CoordError::Corrupt {
                key: kv.key.clone(),
                reason: "not a job key".into(),
            })?;
        let rec: JobRecord = decode(kv)?;
        Ok(StoredJob {
            id,
            owner: rec.owner,
            doc: rec.doc,
            mod_revision: kv.mod_revision,
        })
    }

    pub async fn job(&self, id: Uuid) -> Result<Option<StoredJob>> {
        match self.etcd.get(&self.key("jobs", &id.to_string())).await? {
            Some(kv) => Ok(Some(self.stored_job(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every job (those libgo cannot read are left out and logged).
    pub async fn jobs(&self) -> Result<Vec<StoredJob>> {
        let (kvs, _) = self.etcd.range_prefix(&self.dir("jobs")).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| match self.stored_job(kv) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a cluster job");
                    None
                }
            })
            .collect())
    }

    /// Writes a job if it is still at `expected_mod_revision`: false when
    /// someone else changed (or deleted) it since.
    pub async fn update_job(
        &self,
        id: Uuid,
        expected_mod_revision: i64,
        owner: &str,
        doc: &serde_json::Value,
    ) -> Result<bool> {
        nonempty("a job owner", owner)?;
        let key = self.key("jobs", &id.to_string());
        let value = to_json(&JobRecord {
            owner: owner.to_owned(),
            doc: doc.clone(),
        });
        let r = self
            .etcd
            .txn(
                &[Compare::mod_revision(&key, expected_mod_revision)],
                &[TxnOp::put(&key, value, None)],
                &[],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Takes a job over (its document unchanged) if it is still at
    /// `expected_mod_revision`: of several aggregators claiming one orphan,
    /// one gets true.
    pub async fn claim_job(
        &self,
        id: Uuid,
        new_owner: &str,
        expected_mod_revision: i64,
    ) -> Result<bool> {
        let Some(job) = self.job(id).await? else {
            return Ok(false);
        };
        if job.mod_revision != expected_mod_revision {
            return Ok(false);
        }
        self.update_job(id, expected_mod_revision, new_owner, &job.doc)
            .await
    }

    /// Removes a job; answers whether it existed.
    pub async fn delete_job(&self, id: Uuid) -> Result<bool> {
        Ok(self.etcd.delete(&self.key("jobs", &id.to_string())).await?)
    }

    /// Unfinished jobs whose owner is neither `me` nor a live aggregator.
    pub async fn orphaned_jobs(&self, me: &str) -> Result<Vec<StoredJob>> {
        let alive = self.aggregators().await?;
        Ok(self
            .jobs()
            .await?
            .into_iter()
            .filter(|j| !j.finished() && j.owner != me && !alive.contains(&j.owner))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coord(prefix: &str) -> Coord {
        Coord::new(Etcd::new("http://127.0.0.1:2379").unwrap(), prefix)
    }

    #[test]
    fn keys_live_under_the_prefix_with_names_escaped() {
        let c = coord("");
        assert_eq!(c.prefix(), "/libgo/");
        assert_eq!(c.key("nodes", "n1"), "/libgo/nodes/n1");
        assert_eq!(c.key("names", "a/b c"), "/libgo/names/a%2Fb%20c");
        let id = Uuid::nil();
        assert_eq!(
            c.key("jobs", &id.to_string()),
            "/libgo/jobs/00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(coord("/x").key("aggregators", "a1"), "/x/aggregators/a1");
        assert_eq!(coord("/x/").dir("nodes"), "/x/nodes/");
        for s in ["plain", "a/b", "100%", "é", "web-1.lab:x@y~"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s), "{s}");
            assert!(!escape(s).contains('/'));
        }
        assert_eq!(unescape("%2"), None);
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn records_have_a_stable_json_shape() {
        let reg = NodeRegistration {
            name: "n1".into(),
            url: "https://10.0.0.1:8443".into(),
            fingerprint: Some("AB:CD".into()),
            token: "lgo_x_y".into(),
            version: "0.1.0".into(),
        };
        let v = serde_json::to_value(&reg).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "n1", "url": "https://10.0.0.1:8443",
                "fingerprint": "AB:CD", "token": "lgo_x_y", "version": "0.1.0"})
        );
        // Older or newer writers: missing optional fields, extra fields.
        let r: NodeRegistration = serde_json::from_str(
            r#"{"name":"n","url":"http://127.0.0.1:1","token":"t","extra":1}"#,
        )
        .unwrap();
        assert_eq!((r.fingerprint, r.version.as_str()), (None, ""));
        let o = NameOwner {
            node: "n1".into(),
            vm: None,
            by: "agg-1".into(),
        };
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            serde_json::json!({"node": "n1", "vm": null, "by": "agg-1"})
        );
        let j = StoredJob {
            id: Uuid::nil(),
            owner: "a".into(),
            doc: serde_json::json!({"finished": true}),
            mod_revision: 1,
        };
        assert!(j.finished());
        let j = StoredJob {
            doc: serde_json::json!({"finished": "yes"}),
            ..j
        };
        assert!(!j.finished());
    }

    #[test]
    fn job_keys_decode_to_their_id() {
        let c = coord("/p/");
        let id = Uuid::new_v4();
        let kv = Kv {
            key: c.key("jobs", &id.to_string()),
            value: br#"{"owner":"a","doc":{"x":1}}"#.to_vec(),
            create_revision: 3,
            mod_revision: 4,
            version: 2,
            lease: None,
        };
        let j = c.stored_job(&kv).unwrap();
        assert_eq!((j.id, j.owner.as_str(), j.mod_revision), (id, "a", 4));
        let bad = Kv {
            value: b"[]".to_vec(),
            ..kv
        };
        assert!(matches!(
            c.stored_job(&bad),
            Err(CoordError::Corrupt { .. })
        ));
    }
}
