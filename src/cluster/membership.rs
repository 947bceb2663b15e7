//! An aggregator on etcd: it registers itself with a lease, learns nodes
//! as they register (and keeps those whose lease ended, unreachable, their
//! VMs listed stale), reads its peers, takes over the unfinished cluster
//! jobs of an aggregator that died, and reserves VM names cluster-wide.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::config::NodeEntry;
use super::coord::{Coord, NameOwner, NodeChange, NodeRegistration};
use super::registry::{NodeHandle, Source};
use super::service::Aggregator;
use super::ClusterError;
use crate::sync::lock;

/// Seconds an aggregator's registration outlives its last heartbeat.
pub const LEASE_TTL: i64 = 6;

impl Aggregator {
    /// Joins etcd: registers, then keeps membership, peers and orphaned
    /// jobs in view for as long as the aggregator runs.
    pub async fn join(self: &Arc<Self>, coord: Coord) -> anyhow::Result<()> {
        let me = self.cfg.name.clone();
        // A restart under the same name waits for its old lease to end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(LEASE_TTL as u64 + 5);
        let lease = loop {
            match coord.register_aggregator(&me, LEASE_TTL).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting to register in etcd");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (nodes, revision) = coord.nodes().await?;
        for reg in nodes {
            self.learn_node(reg).await;
        }
        let agg = self.clone();
        let c = coord.clone();
        tokio::spawn(async move { agg.follow_nodes(c, revision + 1).await });
        let agg = self.clone();
        tokio::spawn(async move { agg.keep_up(coord, lease).await });
        Ok(())
    }

    async fn learn_node(self: &Arc<Self>, reg: NodeRegistration) {
        if let Some(old) = self.registry.get(&reg.name) {
            if old.url == reg.url
                && old.token.as_deref() == Some(&reg.token)
                && old.fingerprint == reg.fingerprint
            {
                return;
            }
        }
        let entry = NodeEntry {
            name: reg.name.clone(),
            url: reg.url.clone(),
            token: Some(reg.token.clone()),
            fingerprint: reg.fingerprint.clone(),
        };
        match NodeHandle::new(&entry, Source::Etcd) {
            Ok(n) => {
                tracing::info!(node = %reg.name, url = %reg.url, "node registered in etcd");
                self.add_node(n).await;
            }
            Err(e) => {
                tracing::warn!(node = %reg.name, error = %e, "cannot use a node's registration")
            }
        }
    }

    /// Follows node registrations; a watch that breaks is resumed where it
    /// stopped (or after a fresh list when etcd compacted past it).
    async fn follow_nodes(self: Arc<Self>, coord: Coord, mut from: i64) {
        loop {
            match coord.watch_nodes(from).await {
                Ok(mut w) => {
                    while let Some(change) = w.next().await {
                        match change {
                            Ok(NodeChange::Registered { node, .. }) => self.learn_node(node).await,
                            // Kept: its poll marks it unreachable, its VMs
                            // stay listed until it registers again.
                            Ok(NodeChange::Gone { name, .. }) => {
                                tracing::warn!(node = %name, "node registration ended in etcd")
                            }
                            Err(_) => break,
                        }
                    }
                    from = w.resume_revision();
                }
                Err(e) => tracing::warn!(error = %e, "watching nodes in etcd"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok((nodes, rev)) = coord.nodes().await {
                for reg in nodes {
                    self.learn_node(reg).await;
                }
                from = from.max(rev + 1);
            }
        }
    }

    /// Every poll interval: the registration, the peers, orphaned jobs.
    async fn keep_up(self: Arc<Self>, coord: Coord, mut lease: super::etcd::Lease) {
        let me = self.cfg.name.clone();
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        loop {
            tick.tick().await;
            if !lease.is_alive() {
                tracing::warn!("registration in etcd lost; registering again");
                match coord.register_aggregator(&me, LEASE_TTL).await {
                    Ok(l) => lease = l,
                    Err(e) => {
                        tracing::warn!(error = %e, "registering in etcd");
                        continue;
                    }
                }
            }
            if let Ok(peers) = coord.aggregators().await {
                *lock(&self.peers) = peers;
            }
            let Ok(orphans) = self.jobs.orphans(&me).await else {
                continue;
            };
            for o in orphans {
                if let Ok(true) = self.jobs.claim(o.job.id, &me, o.revision).await {
                    tracing::info!(job = %o.job.id, from = %o.owner, "took over a cluster job");
                    let agg = self.clone();
                    tokio::spawn(async move { agg.run_job(o.job.id).await });
                }
            }
        }
    }

    /// Reserves `name` for a VM about to be made on `node`. A reservation
    /// whose VM no node has any more (deleted behind the aggregator's back)
    /// is taken over. `resuming`: a task taken over from an aggregator that
    /// died after reserving it for this node (sending the create again
    /// under the task's idempotency key gives the same VM).
    pub async fn reserve_name(
        &self,
        name: &str,
        node: &str,
        resuming: bool,
    ) -> Result<(), ClusterError> {
        let Some(coord) = &self.coord else {
            return Ok(());
        };
        let owner = NameOwner {
            node: node.to_owned(),
            vm: None,
            by: self.cfg.name.clone(),
        };
        let e = |e: super::coord::CoordError| ClusterError::Unavailable(format!("etcd: {e}"));
        for _ in 0..2 {
            if coord.reserve_name(name, &owner).await.map_err(e)? {
                return Ok(());
            }
            let Some(held) = coord.name_owner(name).await.map_err(e)? else {
                continue;
            };
            if resuming && held.node == node {
                return Ok(());
            }
            let gone = match held.vm {
                // Gone from every node (it may have moved), all answering.
                Some(id) => {
                    let nodes = self.registry.all();
                    nodes.iter().all(|n| n.online())
                        && !nodes.iter().any(|n| n.has_vm(&id.to_string()))
                }
                // Still being made: only its aggregator's death frees it.
                None => !coord.aggregator_alive(&held.by).await.map_err(e)?,
            };
            if !gone {
                return Err(ClusterError::Conflict(format!(
                    "name already in use in the cluster: {name} (node {})",
                    held.node
                )));
            }
            coord.release_name(name).await.map_err(e)?;
        }
        Err(ClusterError::Conflict(format!(
            "name already in use in the cluster: {name}"
        )))
    }

    /// Records the VM a reserved name now belongs to.
    pub async fn name_made(&self, name: &str, node: &str, vm: Uuid) {
        if let Some(coord) = &self.coord {
            let expected = NameOwner {
                node: node.to_owned(),
                vm: None,
                by: self.cfg.name.clone(),
            };
            let new = NameOwner {
                vm: Some(vm),
                ..expected.clone()
            };
            let _ = coord.set_name_owner(name, &expected, &new).await;
        }
    }

    /// Frees a name (its create failed, or its VM was deleted).
    pub async fn release_name(&self, name: &str) {
        if let Some(coord) = &self.coord {
            let _ = coord.release_name(name).await;
        }
    }
}
