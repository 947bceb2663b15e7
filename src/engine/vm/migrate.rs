//! Moving a VM to another agent, and receiving one.
//!
//! The source (`migrate`, a `vm.migrate` job holding the VM's operation
//! slot) asks the target to prepare (`POST /api/v1/migrations`), then:
//! - cold (a stopped VM): `qemu-img convert` of the disk onto the target's
//!   NBD export (a `qemu-nbd` the target runs on the new, empty disk);
//! - live (a running VM): its disk mirrored onto the target's NBD export
//!   (QEMU's own NBD server in the target's QEMU, started paused with
//!   `-incoming defer`), then its memory migrated while the mirror follows
//!   the guest's writes; the mirror ends consistent once the guest is
//!   paused at the switch-over.
//!
//! then asks the target to complete (the VM becomes an ordinary VM there,
//! running again if it ran) and deletes its own copy. Every step before the
//! completion is undone on failure or cancellation: the source's guest
//! runs on (or stays stopped), the target is told to abort.
//!
//! On the target an arriving VM has a row (status `creating`, so that a
//! restart of the daemon removes it) but is in no list and found by no
//! lookup until its move completes.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::lifecycle::VmEvent;
use super::live::{qmp_err, Runtime};
use super::record::{self as vm, CreateSpec, VmRecord};
use super::registry::{VmEngine, VmEntry, GIB};
use crate::client::{Client, ClientError, Endpoint};
use crate::engine::capacity::{Demand, Permit};
use crate::engine::core::{JobCtx, JobTarget, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::model::{
    CloneMode, IncomingMigration, MigrateRequest, MigrationDisk, MigrationExport, MigrationMode,
    MigrationResult, PreparedMigration, Vm, VmSpec, VmStatus,
};
use crate::qemu::monitor::RunState;
use crate::rollback::Rollback;
use crate::sync::lock;

/// The backend name of the root disk (`-drive id=`).
const ROOT_DRIVE: &str = crate::qemu::argv::DISK_DRIVE_ID;
/// The NBD export name of the root disk.
const ROOT_EXPORT: &str = "root";
/// The source's node (and block job) on the target's export.
const MIRROR_NODE: &str = "migrate-root";
const MIRROR_JOB: &str = "migrate-root-job";

/// A VM arriving from another agent.
pub struct Incoming {
    pub(crate) entry: Arc<VmEntry>,
    pub(crate) live: bool,
    /// The `qemu-nbd` serving the new disk of a cold move.
    nbd: Mutex<Option<tokio::process::Child>>,
    /// Held by a completion under way (a second one is refused).
    completing: tokio::sync::Mutex<()>,
    /// Room promised to the disk and (live) to the guest until it counts
    /// by itself.
    _permits: Vec<Permit>,
}

/// The address part of the agent's `listen` setting.
fn listen_ip(listen: &str) -> Option<IpAddr> {
    listen.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// A TCP port nobody listens on now at `ip`.
fn free_port(ip: IpAddr) -> Result<u16> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| EngineError::internal(format!("finding a free port on {ip}"), e))
}

/// `host:port` for QEMU's `tcp:` URIs and NBD URLs.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// A failed call to the target agent, as this agent's error.
fn target_err(node: &str, step: &str, e: ClientError) -> EngineError {
    match &e {
        ClientError::Api { status, body } if (400..500).contains(status) => {
            let msg = format!("target node {node} refused {step}: {}", body.error.message);
            if *status == 400 {
                EngineError::Invalid(msg)
            } else {
                EngineError::Conflict(msg)
            }
        }
        ClientError::Transport(_) | ClientError::Tls(_) => {
            EngineError::Unavailable(format!("target node {node} unreachable ({step}): {e}"))
        }
        _ => EngineError::failed(format!("target node {node} failed {step}: {e}")),
    }
}

/// Everything a move needs to know before its job starts.
struct Plan {
    node: String,
    client: Client,
    /// The host the target was reached at.
    target_host: String,
    mode: MigrationMode,
    incoming: IncomingMigration,
    max_bandwidth: u64,
}

impl VmEngine {
    // ---- Source ----------------------------------------------------------

    /// Moves a VM to another agent as a `vm.migrate` job.
    pub async fn migrate(
        &self,
        entry: &Arc<VmEntry>,
        req: MigrateRequest,
        requester: &Requester,
    ) -> Result<Submitted<MigrationResult>> {
        let node = req.node.clone();
        if node.is_empty() || node.len() > 253 {
            return Err(EngineError::Invalid(
                "Invalid parameter: node must be 1 to 253 characters.".into(),
            ));
        }
        if node == self.core().node {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: node {node:?} is this agent's own node; a VM moves to another one."
            )));
        }
        let target = req.target.ok_or_else(|| {
            EngineError::Invalid(
                "Invalid parameter: target is required on an agent (the target agent's url, token and fingerprint).".into(),
            )
        })?;
        if target.url.is_empty() || target.url.len() > 2048 {
            return Err(EngineError::Invalid(
                "Invalid parameter: target.url must be 1 to 2048 characters.".into(),
            ));
        }
        if target.token.is_empty() || target.token.len() > 4096 {
            return Err(EngineError::Invalid(
                "Invalid parameter: target.token must be 1 to 4096 characters.".into(),
            ));
        }
        if target.fingerprint.as_ref().is_some_and(|f| f.len() > 128) {
            return Err(EngineError::Invalid(
                "Invalid parameter: target.fingerprint must be at most 128 characters.".into(),
            ));
        }
        if req.max_bandwidth.is_some_and(|b| b < 1 << 20) {
            return Err(EngineError::Invalid(
                "Invalid parameter: max_bandwidth must be at least 1048576 bytes/s.".into(),
            ));
        }
        let endpoint: Endpoint = target
            .url
            .parse()
            .map_err(|e| EngineError::Invalid(format!("Invalid parameter: target.url: {e}")))?;
        let target_host = match &endpoint {
            Endpoint::Https { host, .. } | Endpoint::Http { host, .. } => host.clone(),
            Endpoint::Unix(_) => {
                return Err(EngineError::Invalid(
                    "Invalid parameter: target.url must be https://host:port (the target agent's TCP listener).".into(),
                ))
            }
        };
        let client = Client::new(endpoint, target.fingerprint.as_deref())
            .map_err(|e| EngineError::Invalid(format!("Invalid parameter: target: {e}")))?
            .with_token(target.token)
            .with_connect_timeout(Duration::from_secs(10));

        let job_id = Uuid::new_v4();
        let guard = self.claim(entry, job_id, "vm.migrate")?;
        let (handle, ctx) = self.vm_job(job_id, "vm.migrate", entry, requester)?;
        let rec = entry.record();
        let mode = match (rec.status, req.live) {
            (VmStatus::Running, None | Some(true)) => Ok(MigrationMode::Live),
            (VmStatus::Stopped, None | Some(false)) => Ok(MigrationMode::Cold),
            (VmStatus::Running, Some(false)) => Err(EngineError::Conflict(
                "VM is running: a cold move needs it stopped (or move it live).".into(),
            )),
            (VmStatus::Stopped, Some(true)) => Err(EngineError::Conflict(
                "VM is stopped: there is nothing to move live (a cold move copies its disk)."
                    .into(),
            )),
            (s, _) => Err(EngineError::Conflict(format!(
                "VM is {}: only a running or a stopped VM can move.",
                s.as_str()
            ))),
        }
        .and_then(|mode| {
            self.movable(&rec)?;
            Ok(mode)
        });
        let mode = match mode {
            Ok(m) => m,
            Err(e) => {
                drop(guard);
                return self.core().refused(handle, e);
            }
        };
        let incoming = match self.incoming_of(&rec, mode == MigrationMode::Live).await {
            Ok(i) => i,
            Err(e) => {
                drop(guard);
                return self.core().refused(handle, e);
            }
        };
        let plan = Plan {
            node,
            client,
            target_host,
            mode,
            incoming,
            max_bandwidth: req.max_bandwidth.unwrap_or(0),
        };
        let engine = self.clone();
        let entry = entry.clone();
        let preview = Some(self.to_api(&entry));
        Ok(self.inner.core.spawn_job(handle, preview, async move {
            let _guard = guard;
            engine.migrate_run(&entry, plan, &ctx).await
        }))
    }

    /// What a VM must be to move: its root disk only, a disk of its own.
    fn movable(&self, rec: &VmRecord) -> Result<()> {
        if !rec.disks.is_empty() {
            return Err(EngineError::Conflict(format!(
                "VM {} has {} extra disk(s): detach them before moving it (a move carries the root disk only).",
                rec.name,
                rec.disks.len()
            )));
        }
        if rec.clone == CloneMode::Direct {
            return Err(EngineError::Conflict(format!(
                "VM {} runs directly on {}: a volume of this node's pool does not move with it.",
                rec.name, rec.base_image
            )));
        }
        if rec.cloud_init && rec.cloud_init_config.is_none() {
            return Err(EngineError::Conflict(format!(
                "VM {} has a cloud-init seed whose configuration was not kept: it cannot be made again on the target.",
                rec.name
            )));
        }
        Ok(())
    }

    /// The VM as the target is told of it.
    async fn incoming_of(&self, rec: &VmRecord, live: bool) -> Result<IncomingMigration> {
        let info = self
            .inner
            .img
            .info(&rec.disk_file)
            .await
            .map_err(|e| EngineError::internal("reading the disk's size", e))?;
        Ok(IncomingMigration {
            id: rec.id,
            name: rec.name.clone(),
            spec: VmSpec {
                vcpus: Some(rec.vcpus),
                memory: Some(rec.memory),
                disk_size: Some(rec.disk_size),
                base_image: Some(rec.base_image.clone()),
                clone: None,
                user_data: None,
                cloud_init: rec.cloud_init_config.clone(),
                cpu_pinning: rec.cpu_pinning.clone(),
                io_limits: rec.io_limits.clone(),
                boot: rec.boot.clone(),
                network: Some(rec.network.clone()),
                tags: Some(rec.tags.clone()),
                display: Some(rec.display),
            },
            mac_address: rec.mac_address.clone(),
            live,
            disks: vec![MigrationDisk {
                name: "root".into(),
                virtual_size: info.virtual_size,
            }],
        })
    }

    async fn migrate_run(
        &self,
        entry: &Arc<VmEntry>,
        plan: Plan,
        ctx: &JobCtx,
    ) -> Result<MigrationResult> {
        let t0 = Instant::now();
        let node = plan.node.clone();
        let id = entry.id;
        ctx.log(format!(
            "moving {} to node {node} ({})",
            plan.incoming.name,
            match plan.mode {
                MigrationMode::Cold => "cold",
                MigrationMode::Live => "live",
            }
        ));
        let mut undo = Rollback::new();
        let result = self.migrate_steps(entry, &plan, ctx, &mut undo, t0).await;
        let (bytes_sent, downtime_ms) = match result {
            Ok(figures) => {
                undo.disarm();
                figures
            }
            Err(e) => {
                ctx.log(format!("move failed, undoing: {e}"));
                undo.unwind().await;
                return Err(e);
            }
        };
        // The VM lives on the target now: nothing of it stays here.
        ctx.log("moved; removing this node's copy");
        if let Err(e) = self.delete_steps(entry).await {
            tracing::error!(vm_id = %id, error = %crate::engine::error::chain(&e), "the VM moved but its copy here was not removed");
            ctx.log(format!(
                "the VM moved but its copy here was not removed: {e}"
            ));
        }
        let result = MigrationResult {
            id,
            name: plan.incoming.name.clone(),
            node,
            mode: plan.mode,
            bytes_sent,
            total_ms: t0.elapsed().as_millis() as u64,
            downtime_ms,
            job_id: ctx.handle.id(),
        };
        if let Ok(v) = serde_json::to_value(&result) {
            ctx.handle.set_result(v);
        }
        ctx.log(format!(
            "done in {} ms, {} bytes sent{}",
            result.total_ms,
            result.bytes_sent,
            downtime_ms
                .map(|d| format!(", downtime {d} ms"))
                .unwrap_or_default()
        ));
        Ok(result)
    }

    /// The steps of a move up to the target's completion; each pushes its
    /// undo. Returns (bytes sent, downtime).
    async fn migrate_steps(
        &self,
        entry: &Arc<VmEntry>,
        plan: &Plan,
        ctx: &JobCtx,
        undo: &mut Rollback,
        t0: Instant,
    ) -> Result<(u64, Option<u64>)> {
        let node = &plan.node;
        let id = entry.id;
        ctx.check()?;
        // The address given must be the node named.
        let health = plan
            .client
            .health()
            .await
            .map_err(|e| target_err(node, "its health check", e))?;
        if health.node != *node {
            return Err(EngineError::Conflict(format!(
                "target.url answers as node {}, not {node}.",
                health.node
            )));
        }
        let prepared = plan
            .client
            .prepare_migration(&plan.incoming)
            .await
            .map_err(|e| target_err(node, "to prepare", e))?;
        {
            let client = plan.client.clone();
            let node = node.clone();
            undo.push_async("the target's preparation", async move {
                if let Err(e) = client.abort_migration(id).await {
                    tracing::error!(vm_id = %id, node, error = %e, "the target did not abort the move");
                }
            });
        }
        ctx.log(format!(
            "target prepared in {} ms",
            t0.elapsed().as_millis()
        ));
        ctx.progress(5);
        let host = prepared
            .host
            .clone()
            .unwrap_or_else(|| plan.target_host.clone());
        let export = prepared
            .exports
            .iter()
            .find(|e| e.disk == "root")
            .map(|e| e.export.clone())
            .ok_or_else(|| EngineError::failed("the target offered no export for the root disk"))?;
        let virtual_size = plan.incoming.disks[0].virtual_size;
        let figures = match plan.mode {
            MigrationMode::Cold => {
                let rec = entry.record();
                let url = format!("nbd://{}/{export}", host_port(&host, prepared.nbd_port));
                ctx.log(format!("copying the disk to {url}"));
                let job = crate::host::qemu_img::Convert {
                    src: &rec.disk_file,
                    src_format: Some(&rec.disk_format),
                    dest: Path::new(&url),
                    format: "raw",
                    options: &["-n"],
                };
                let result = self
                    .inner
                    .img
                    .convert(&job, ctx.handle.token(), |pct| {
                        ctx.progress(5 + (pct * 0.9) as u8)
                    })
                    .await;
                ctx.check()?;
                result.map_err(|e| EngineError::internal("copying the disk to the target", e))?;
                (virtual_size, None)
            }
            MigrationMode::Live => {
                let rt = self.monitor_of(entry)?;
                let mport = prepared
                    .migration_port
                    .ok_or_else(|| EngineError::failed("the target offered no migration port"))?;
                self.live_steps(
                    &rt,
                    plan,
                    ctx,
                    undo,
                    &host,
                    prepared.nbd_port,
                    &export,
                    mport,
                )
                .await
                .map(|(bytes, downtime)| (bytes, Some(downtime)))?
            }
        };
        ctx.check()?;
        if let Err(e) = plan.client.complete_migration(id).await {
            // An answer lost on the way back must not leave the guest
            // running on both nodes: the target is asked what it holds.
            match plan.client.vm(&id.to_string()).await {
                Ok(vm) if vm.status != VmStatus::Creating => {
                    ctx.log(format!(
                        "the target completed the move (its answer was lost: {e})"
                    ));
                }
                _ => return Err(target_err(node, "to complete", e)),
            }
        }
        ctx.progress(99);
        Ok(figures)
    }

    /// Mirror, migrate, end the mirror. Returns (bytes sent, downtime ms).
    #[allow(clippy::too_many_arguments)]
    async fn live_steps(
        &self,
        rt: &Arc<Runtime>,
        plan: &Plan,
        ctx: &JobCtx,
        undo: &mut Rollback,
        host: &str,
        nbd_port: u16,
        export: &str,
        migration_port: u16,
    ) -> Result<(u64, u64)> {
        let m = &rt.monitor;
        m.blockdev_add_nbd(MIRROR_NODE, host, nbd_port, export)
            .await
            .map_err(qmp_err("blockdev-add of the target's export"))?;
        {
            let rt = rt.clone();
            undo.push_async("the target's export node", async move {
                let _ = rt.monitor.blockdev_del(MIRROR_NODE).await;
            });
        }
        let root = root_node(rt).await?;
        m.blockdev_mirror(MIRROR_JOB, &root, MIRROR_NODE, plan.max_bandwidth)
            .await
            .map_err(qmp_err("blockdev-mirror"))?;
        {
            let rt = rt.clone();
            undo.push_async("the mirror", async move {
                let _ = rt.monitor.block_job_cancel(MIRROR_JOB, true).await;
                wait_block_job_gone(&rt, Duration::from_secs(30)).await;
            });
        }
        ctx.log("mirroring the disk");
        // Until the mirror is ready: the whole disk copied once.
        let mut disk_bytes;
        loop {
            ctx.check()?;
            let job = mirror_job(rt).await?;
            disk_bytes = job.offset;
            if job.len > 0 {
                ctx.progress(5 + (job.offset as f64 / job.len as f64 * 40.0) as u8);
            }
            if job.ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ctx.log(format!(
            "disk mirrored ({disk_bytes} bytes); migrating memory"
        ));
        let mut params = serde_json::json!({"downtime-limit": 300});
        if plan.max_bandwidth > 0 {
            params["max-bandwidth"] = plan.max_bandwidth.into();
        }
        m.migrate_set_parameters(params)
            .await
            .map_err(qmp_err("migrate-set-parameters"))?;
        let uri = format!("tcp:{}", host_port(host, migration_port));
        m.migrate(&uri).await.map_err(qmp_err("migrate"))?;
        {
            let rt = rt.clone();
            undo.push_async("the migration", async move {
                let _ = rt.monitor.migrate_cancel().await;
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    match rt.monitor.query_migrate().await {
                        Ok(i)
                            if matches!(
                                i.status.as_deref(),
                                Some(
                                    "active" | "setup" | "cancelling" | "device" | "pre-switchover"
                                )
                            ) =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        _ => break,
                    }
                }
                // The guest runs on here, whatever point the move reached.
                if !matches!(rt.monitor.query_status().await, Ok(RunState::Running)) {
                    if let Err(e) = rt.monitor.cont().await {
                        tracing::error!(error = %e, "the guest did not resume after a failed move");
                    }
                }
            });
        }
        let info = loop {
            ctx.check()?;
            let info = rt
                .monitor
                .query_migrate()
                .await
                .map_err(qmp_err("query-migrate"))?;
            match info.status.as_deref() {
                Some("completed") => break info,
                Some("failed" | "cancelled") => {
                    return Err(EngineError::failed(format!(
                        "the migration {}: {}",
                        info.status.as_deref().unwrap_or_default(),
                        info.error_desc.as_deref().unwrap_or("no reason given")
                    )))
                }
                _ => {}
            }
            if let Some(ram) = &info.ram {
                if ram.total > 0 {
                    let done = ram.total.saturating_sub(ram.remaining);
                    ctx.progress(45 + (done as f64 / ram.total as f64 * 50.0) as u8);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let ram = info.ram.map(|r| r.transferred).unwrap_or(0);
        let downtime = info.downtime.unwrap_or(0);
        ctx.log(format!(
            "memory migrated ({ram} bytes, downtime {downtime} ms)"
        ));
        // The guest is paused here: the ready mirror ends consistent.
        let last = mirror_job(rt).await?;
        disk_bytes = disk_bytes.max(last.offset);
        m.block_job_cancel(MIRROR_JOB, false)
            .await
            .map_err(qmp_err("block-job-cancel"))?;
        if !wait_block_job_gone(rt, Duration::from_secs(60)).await {
            return Err(EngineError::failed("the disk mirror did not end"));
        }
        let _ = m.blockdev_del(MIRROR_NODE).await;
        Ok((disk_bytes + ram, downtime))
    }

    // ---- Target ----------------------------------------------------------

    /// Checks an arriving VM as a create would be checked, and promises it
    /// room; then prepares to receive it as a `vm.migrate_in` job.
    pub async fn prepare_incoming(
        &self,
        req: IncomingMigration,
        requester: &Requester,
    ) -> Result<Submitted<PreparedMigration>> {
        let cfg = &self.core().cfg;
        let ip = listen_ip(&cfg.listen).ok_or_else(|| {
            EngineError::Conflict(
                "this agent has no TCP listener: a VM can only move to an agent that listens on TCP."
                    .into(),
            )
        })?;
        let [disk] = req.disks.as_slice() else {
            return Err(EngineError::Invalid(
                "Invalid parameter: disks must name exactly one disk, root.".into(),
            ));
        };
        if disk.name != "root" {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: disks: unknown disk {:?} (only root moves).",
                disk.name
            )));
        }
        if disk.virtual_size == 0 {
            return Err(EngineError::Invalid(
                "Invalid parameter: disks[0].virtual_size must be at least 1.".into(),
            ));
        }
        if !is_mac(&req.mac_address) {
            return Err(EngineError::Invalid(
                "Invalid parameter: mac_address must be six lower-case hex pairs.".into(),
            ));
        }
        let s = req.spec.clone();
        let missing =
            |f: &str| EngineError::Invalid(format!("Invalid parameter: spec.{f} is required."));
        // The disk as it is wins: a definition whose disk_size lags behind
        // the disk's virtual size (grown since) takes the disk's.
        let disk_gib = disk.virtual_size.div_ceil(GIB);
        let spec = CreateSpec {
            name: Some(req.name.clone()),
            vcpus: s.vcpus.ok_or_else(|| missing("vcpus"))?,
            memory: s.memory.ok_or_else(|| missing("memory"))?,
            disk_size: s
                .disk_size
                .ok_or_else(|| missing("disk_size"))?
                .max(disk_gib),
            base_image: s.base_image.clone().ok_or_else(|| missing("base_image"))?,
            clone: CloneMode::Full,
            cpu_pinning: s.cpu_pinning.clone(),
            io_limits: s.io_limits.clone(),
            boot: s.boot.clone(),
            network: s.network.clone().unwrap_or_default(),
            tags: s.tags.clone().unwrap_or_default(),
            cloud_init: s.cloud_init(),
            template: None,
            display: s.display.unwrap_or(false),
        };
        vm::validate_create(&spec, &vm::Bounds::of(cfg))?;
        if let Some(pin) = &spec.cpu_pinning {
            super::resources::check_pinning(pin)?;
        }
        if disk.virtual_size > spec.disk_size.saturating_mul(GIB) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: disks[0].virtual_size {} is larger than disk_size {} GiB.",
                disk.virtual_size, spec.disk_size
            )));
        }
        let pools = self.core().pools.active_dirs();
        let boot_paths = self.resolve_boot(&pools, spec.boot.as_ref())?;
        let id = req.id;
        if self.find(&id.to_string()).is_ok() || lock(&self.inner.incoming).contains_key(&id) {
            return Err(EngineError::Conflict(format!(
                "VM {id} already exists on this node."
            )));
        }
        let name_taken = self.find(&req.name).is_ok()
            || lock(&self.inner.incoming)
                .values()
                .any(|i| lock(&i.entry.rec).name == req.name);
        if name_taken {
            return Err(EngineError::Conflict(format!(
                "name already in use: {}",
                req.name
            )));
        }
        let mut permits = vec![self.core().admission.reserve_disk(
            id,
            &format!("a disk of {} GiB", spec.disk_size),
            &cfg.state_dir.join("vms"),
            disk.virtual_size,
        )?];
        if req.live {
            let demand = Demand {
                memory_mib: spec.memory,
                vcpus: spec.vcpus.into(),
            };
            permits.push(
                self.core()
                    .admission
                    .reserve(id, demand)
                    .await
                    .map_err(|s| s.refuse(&format!("receiving VM {}", req.name)))?,
            );
        }
        let now = crate::clock::now();
        let dir = self.state_dir(id);
        let disk_file = dir.join("root.qcow2");
        let rec = VmRecord {
            id,
            name: req.name.clone(),
            status: VmStatus::Creating,
            status_reason: None,
            vcpus: spec.vcpus,
            memory: spec.memory,
            disk_size: spec.disk_size,
            base_image: spec.base_image,
            base_path: disk_file.clone(),
            clone: CloneMode::Full,
            disk_file,
            disk_format: "qcow2".into(),
            mac_address: req.mac_address.clone(),
            cpu_pinning: spec.cpu_pinning,
            io_limits: spec.io_limits.filter(|l| *l != Default::default()),
            boot: spec.boot,
            boot_paths,
            network: spec.network,
            tags: spec.tags,
            template: None,
            cloud_init: spec.cloud_init.is_some(),
            cloud_init_config: spec.cloud_init,
            display: spec.display,
            qemu_gid: None,
            current_snapshot: None,
            disks: Vec::new(),
            created_at: now.clone(),
            updated_at: now,
        };
        let incoming = Arc::new(Incoming {
            entry: VmEntry::new(rec),
            live: req.live,
            nbd: Mutex::new(None),
            completing: tokio::sync::Mutex::new(()),
            _permits: permits,
        });
        let (handle, ctx) = self.core().start_single(
            Uuid::new_v4(),
            "vm.migrate_in",
            JobTarget::Vm(id),
            req.name.clone(),
            requester,
        )?;
        let engine = self.clone();
        Ok(self.inner.core.spawn_job(handle, None, async move {
            let prepared = engine
                .prepare_run(incoming, ip, virtual_size(&req.disks), &ctx)
                .await?;
            if let Ok(v) = serde_json::to_value(&prepared) {
                ctx.handle.set_result(v);
            }
            Ok(prepared)
        }))
    }

    async fn prepare_run(
        &self,
        incoming: Arc<Incoming>,
        ip: IpAddr,
        virtual_size: u64,
        ctx: &JobCtx,
    ) -> Result<PreparedMigration> {
        let entry = incoming.entry.clone();
        let rec = entry.record();
        let id = rec.id;
        let store = self.core().store.clone();
        let mut undo = Rollback::new();
        ctx.check()?;
        // The row first: the name is taken atomically, and a restart of the
        // daemon removes a VM still `creating` with all its files.
        store.insert_vm(id, &rec.name, rec.status.as_str(), &rec.created_at, &rec)?;
        {
            let engine = self.clone();
            undo.push("row and files", move || {
                let _ = engine.remove_files(id);
                let _ = engine.core().store.delete_vm(id);
            });
        }
        let dir = self.state_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the VM directory", e))?;
        let gid = self.assign_gid(&entry)?;
        crate::host::confine::own(&dir, gid, crate::host::confine::VmFile::StateDir)
            .map_err(|e| EngineError::internal("giving the VM directory to its group", e))?;
        self.inner
            .img
            .create(&rec.disk_file, "qcow2", virtual_size)
            .await
            .map_err(|e| EngineError::internal("creating the disk", e))?;
        if let Some(c) = &rec.cloud_init_config {
            self.write_seed(&rec, c).await?;
        }
        self.own_files(&entry.record(), gid)?;
        ctx.progress(30);
        ctx.check()?;
        let host = ip.to_string();
        let nbd_port = free_port(ip)?;
        let mut migration_port = None;
        if incoming.live {
            let mut attached = None;
            let rec = entry.record();
            self.start_steps(&entry, &rec, ctx, &mut undo, &mut attached, true)
                .await?;
            let rt = attached.ok_or_else(|| EngineError::failed("QEMU was not attached"))?;
            rt.monitor
                .nbd_server_start(&host, nbd_port)
                .await
                .map_err(qmp_err("nbd-server-start"))?;
            let node = root_node(&rt).await?;
            rt.monitor
                .nbd_export_writable("migrate-root", &node, ROOT_EXPORT)
                .await
                .map_err(qmp_err("block-export-add"))?;
            let port = free_port(ip)?;
            rt.monitor
                .migrate_incoming(&format!("tcp:{}", host_port(&host, port)))
                .await
                .map_err(qmp_err("migrate-incoming"))?;
            migration_port = Some(port);
        } else {
            self.serve_nbd(&incoming, &rec, ip, nbd_port, &mut undo)
                .await?;
        }
        ctx.check()?;
        lock(&self.inner.incoming).insert(id, incoming.clone());
        undo.disarm();
        ctx.log(format!("ready to receive VM {} on {host}", rec.name));
        Ok(PreparedMigration {
            id,
            name: rec.name.clone(),
            live: incoming.live,
            host: (!ip.is_unspecified()).then_some(host),
            nbd_port,
            exports: vec![MigrationExport {
                disk: "root".into(),
                export: ROOT_EXPORT.into(),
            }],
            migration_port,
        })
    }

    /// A `qemu-nbd` serving the new disk, writable, on `ip:port`; ready
    /// once it accepts connections.
    async fn serve_nbd(
        &self,
        incoming: &Arc<Incoming>,
        rec: &VmRecord,
        ip: IpAddr,
        port: u16,
        undo: &mut Rollback,
    ) -> Result<()> {
        let bin = self.core().cfg.qemu_img_binary.with_file_name("qemu-nbd");
        let bin = if bin.exists() { bin } else { "qemu-nbd".into() };
        let log = self.state_dir(rec.id).join("qemu-nbd.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| EngineError::internal("creating the qemu-nbd log", e))?;
        let mut child = tokio::process::Command::new(&bin)
            .args(["--format", "qcow2", "--persistent", "--cache", "writeback"])
            .args(["--export-name", ROOT_EXPORT])
            .arg("--bind")
            .arg(ip.to_string())
            .arg("--port")
            .arg(port.to_string())
            // The VM's id as an argument of its own: a leftover found by
            // its pidfile is recognisable (`recover` kills it).
            .arg("--description")
            .arg(rec.id.to_string())
            .arg(&rec.disk_file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EngineError::internal(format!("starting {}", bin.display()), e))?;
        let addr = std::net::SocketAddr::new(
            if ip.is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                ip
            },
            port,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(EngineError::failed(format!(
                    "qemu-nbd exited at once ({status}): {}",
                    crate::qemu::process::log_tail(&log, 400)
                )));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(EngineError::failed("qemu-nbd did not listen within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(pid) = child.id() {
            let _ = std::fs::write(nbd_pidfile(&self.state_dir(rec.id)), format!("{pid}\n"));
        }
        *lock(&incoming.nbd) = Some(child);
        let incoming = incoming.clone();
        undo.push_async("qemu-nbd", async move { stop_nbd(&incoming).await });
        Ok(())
    }

    /// Makes an arrived VM an ordinary VM of this node: the NBD service
    /// ends, the guest of a live move runs.
    pub async fn complete_incoming(&self, id: Uuid) -> Result<Vm> {
        let incoming = self.arriving(id)?;
        let Ok(_completing) = incoming.completing.try_lock() else {
            return Err(EngineError::Conflict(format!(
                "the move of VM {id} is already being completed or aborted."
            )));
        };
        let entry = incoming.entry.clone();
        if incoming.live {
            let rt = self.monitor_of(&entry)?;
            // The source saw its side complete; this side may still be
            // loading the last pages.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let st = rt
                    .monitor
                    .query_status()
                    .await
                    .map_err(qmp_err("query-status"))?;
                match st {
                    RunState::InMigrate => {}
                    RunState::Paused | RunState::PostMigrate | RunState::Prelaunch => break,
                    RunState::Running => break,
                    other => {
                        return Err(EngineError::Conflict(format!(
                            "the incoming guest is {}: its move did not complete.",
                            other.as_str()
                        )))
                    }
                }
                if Instant::now() >= deadline {
                    return Err(EngineError::Conflict(
                        "the incoming guest has not arrived (still in migration after 60 s)."
                            .into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            rt.monitor
                .nbd_server_stop()
                .await
                .map_err(qmp_err("nbd-server-stop"))?;
            rt.monitor.cont().await.map_err(qmp_err("cont"))?;
        } else {
            stop_nbd(&incoming).await;
        }
        lock(&self.inner.incoming).remove(&id);
        self.insert(entry.clone());
        let event = if incoming.live {
            VmEvent::MigratedIn
        } else {
            VmEvent::Created
        };
        self.transition(&entry, event, None)?;
        let _ = std::fs::remove_file(self.state_dir(id).join("qemu-nbd.log"));
        let _ = std::fs::remove_file(nbd_pidfile(&self.state_dir(id)));
        tracing::info!(vm_id = %id, live = incoming.live, "VM moved here");
        Ok(self.to_api(&entry))
    }

    /// Gives up receiving a VM: its QEMU or qemu-nbd, files and row go.
    pub async fn abort_incoming(&self, id: Uuid) -> Result<()> {
        let incoming = self.arriving(id)?;
        let _completing = incoming.completing.lock().await;
        if lock(&self.inner.incoming).remove(&id).is_none() {
            return Err(EngineError::NotFound(format!(
                "No VM is arriving with id {id}."
            )));
        }
        stop_nbd(&incoming).await;
        match incoming.entry.runtime() {
            Some(rt) => self.kill(&rt).await?,
            None => self.kill_unattached(id).await?,
        }
        self.remove_cgroup(id).await;
        self.remove_files(id)?;
        self.core().store.delete_vm(id)?;
        tracing::info!(vm_id = %id, "incoming move aborted");
        Ok(())
    }

    fn arriving(&self, id: Uuid) -> Result<Arc<Incoming>> {
        lock(&self.inner.incoming)
            .get(&id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("No VM is arriving with id {id}.")))
    }
}

fn virtual_size(disks: &[MigrationDisk]) -> u64 {
    disks.first().map(|d| d.virtual_size).unwrap_or(0)
}

/// Where the pid of the `qemu-nbd` of a cold move is kept (in the VM's
/// state directory).
pub(crate) fn nbd_pidfile(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("qemu-nbd.pid")
}

/// Ends the `qemu-nbd` of a cold move (it flushes and closes the disk).
async fn stop_nbd(incoming: &Incoming) {
    let child = lock(&incoming.nbd).take();
    if let Some(mut child) = child {
        if let Some(pid) = child.id() {
            let _ = crate::qemu::process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// The node name of the root disk's image (QEMU names the nodes of a
/// `-drive` itself).
async fn root_node(rt: &Runtime) -> Result<String> {
    let blocks = rt
        .monitor
        .query_block()
        .await
        .map_err(qmp_err("query-block"))?;
    blocks
        .into_iter()
        .find(|b| b.device.as_deref() == Some(ROOT_DRIVE))
        .and_then(|b| b.inserted)
        .and_then(|i| i.node_name)
        .ok_or_else(|| EngineError::failed("the root disk has no node in QEMU"))
}

/// The mirror's block job.
async fn mirror_job(rt: &Runtime) -> Result<crate::qemu::monitor::BlockJob> {
    let jobs = rt
        .monitor
        .query_block_jobs()
        .await
        .map_err(qmp_err("query-block-jobs"))?;
    let job = jobs
        .into_iter()
        .find(|j| j.device == MIRROR_JOB)
        .ok_or_else(|| EngineError::failed("the disk mirror ended unexpectedly"))?;
    if let Some(e) = &job.error {
        return Err(EngineError::failed(format!("the disk mirror failed: {e}")));
    }
    Ok(job)
}

/// Waits until the mirror's block job is gone; whether it went.
async fn wait_block_job_gone(rt: &Runtime, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match rt.monitor.query_block_jobs().await {
            Ok(jobs) if jobs.iter().any(|j| j.device == MIRROR_JOB) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
