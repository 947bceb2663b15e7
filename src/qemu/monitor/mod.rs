//! Typed QMP commands over the transport in [`super::qmp`].
//!
//! One method per command the agent sends: typed arguments in, a typed answer
//! out. Answers are decoded with serde; one that does not have the documented
//! shape is a [`QmpError::BadReply`], never a panic. Command names and
//! argument spellings live here only; callers never build QMP JSON.
//!
//! Sections follow QEMU's QMP schema: run state, power, vCPUs, memory, block
//! devices, then room for what comes next (snapshots, hot-plug, display,
//! migration).

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::qmp::{Event, Qmp, QmpError};

/// Deadline of `quit`: QEMU answers at once or is past answering.
pub const QUIT_DEADLINE: Duration = Duration::from_secs(2);
/// Deadline of the queries made while serving a read (config, samples):
/// a busy monitor must not hold up the caller for the default deadline.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(2);
/// How long a `screendump` may take.
pub const SCREENDUMP_DEADLINE: Duration = Duration::from_secs(10);

/// Events kept for a command that waits on one (`device_del`): more than
/// QEMU sends in the time such a wait takes.
const EVENT_BACKLOG: usize = 64;
/// How often a wait without an event stream looks for the awaited state.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The typed monitor of one QEMU process. Cheap to clone; clones share the
/// connection.
#[derive(Debug, Clone)]
pub struct Monitor {
    qmp: Qmp,
    /// A copy of QEMU's events for the commands that wait on one; None for
    /// a monitor made with [`Monitor::new`]. Weak: the copy ends (waiters
    /// see it closed) when QEMU closes the socket.
    events: Option<broadcast::WeakSender<Event>>,
}

impl Monitor {
    /// A monitor without a copy of the events: the commands that wait on
    /// one poll QEMU instead.
    pub fn new(qmp: Qmp) -> Monitor {
        Monitor { qmp, events: None }
    }

    /// Connects to a QMP socket (see [`Qmp::connect`]); returns the monitor
    /// and QEMU's event stream, which ends when QEMU closes the socket.
    ///
    /// Every event also goes to the monitor's own copy first, so that
    /// `device_del` can wait for its `DEVICE_DELETED` while the returned
    /// stream has its one reader (the VM's watcher).
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Monitor, mpsc::Receiver<Event>), QmpError> {
        let (qmp, mut from_qemu) = Qmp::connect(path, timeout).await?;
        let (tx, rx) = mpsc::channel(256);
        let (copy, _) = broadcast::channel(EVENT_BACKLOG);
        let weak = copy.downgrade();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Some(ev) = from_qemu.recv().await {
                // No subscriber only means nobody waits for an event now.
                let _ = copy.send(ev.clone());
                if let Some(t) = &tx {
                    if t.send(ev).await.is_err() {
                        tx = None; // nobody reads the stream; the copy goes on
                    }
                }
            }
        });
        Ok((
            Monitor {
                qmp,
                events: Some(weak),
            },
            rx,
        ))
    }

    /// Runs a command whose answer carries nothing (`{}`).
    async fn run(&self, command: &str, args: Option<Value>) -> Result<(), QmpError> {
        self.qmp.execute(command, args).await.map(drop)
    }

    /// Runs a command and decodes its answer.
    async fn ask<T: DeserializeOwned>(
        &self,
        command: &str,
        args: Option<Value>,
        deadline: Option<Duration>,
    ) -> Result<T, QmpError> {
        let answer = match deadline {
            Some(d) => self.qmp.execute_with_timeout(command, args, d).await?,
            None => self.qmp.execute(command, args).await?,
        };
        decode(command, answer)
    }

    // ---- Run state ----------------------------------------------------

    /// `query-status`: where the VM's run state machine is.
    pub async fn query_status(&self) -> Result<RunState, QmpError> {
        #[derive(Deserialize)]
        struct StatusInfo {
            status: RunState,
        }
        let st: StatusInfo = self.ask("query-status", None, None).await?;
        Ok(st.status)
    }

    /// `set-action`: what QEMU does when the guest shuts down.
    pub async fn set_shutdown_action(&self, action: ShutdownAction) -> Result<(), QmpError> {
        self.run("set-action", Some(json!({"shutdown": action.as_str()})))
            .await
    }

    // ---- Power and execution ------------------------------------------

    /// `cont`: runs the vCPUs (after `-S`, `stop` or a reset).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.run("cont", None).await
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.run("stop", None).await
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.run("system_powerdown", None).await
    }

    /// `system_reset`: the reset button.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.run("system_reset", None).await
    }

    /// `quit`, with [`QUIT_DEADLINE`]. QEMU may close the socket before its
    /// answer arrives: that is the exit asked for, so it counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self
            .qmp
            .execute_with_timeout("quit", None, QUIT_DEADLINE)
            .await
        {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    // ---- vCPUs --------------------------------------------------------

    /// `query-cpus-fast`: the host thread of every vCPU, by cpu-index.
    pub async fn query_cpus_fast(&self) -> Result<Vec<VcpuThread>, QmpError> {
        let mut cpus: Vec<VcpuThread> = self.ask("query-cpus-fast", None, None).await?;
        cpus.sort_unstable_by_key(|c| c.cpu_index);
        Ok(cpus)
    }

    // ---- Memory -------------------------------------------------------

    /// `query-memory-size-summary`: boot and hot-plugged RAM.
    pub async fn query_memory_size_summary(&self) -> Result<MemorySizeSummary, QmpError> {
        self.ask("query-memory-size-summary", None, None).await
    }

    /// `query-balloon`, with [`QUERY_DEADLINE`]: the guest's memory in bytes
    /// as the balloon leaves it.
    pub async fn query_balloon(&self) -> Result<u64, QmpError> {
        #[derive(Deserialize)]
        struct BalloonInfo {
            actual: u64,
        }
        let b: BalloonInfo = self
            .ask("query-balloon", None, Some(QUERY_DEADLINE))
            .await?;
        Ok(b.actual)
    }

    /// `balloon`: asks the guest to leave it `bytes` of memory.
    pub async fn balloon(&self, bytes: u64) -> Result<(), QmpError> {
        self.run("balloon", Some(json!({"value": bytes}))).await
    }

    // ---- Block devices ------------------------------------------------

    /// `block_set_io_throttle` on the block backend of the guest device with
    /// qdev id or QOM path `qdev`; all zeros lifts every limit.
    pub async fn set_io_throttle(&self, qdev: &str, limits: &IoThrottle) -> Result<(), QmpError> {
        let args = json!({
            "id": qdev,
            "iops": limits.iops,
            "iops_rd": limits.read_iops,
            "iops_wr": limits.write_iops,
            "bps": limits.bps,
            "bps_rd": limits.read_bps,
            "bps_wr": limits.write_bps,
        });
        self.run("block_set_io_throttle", Some(args)).await
    }

    /// `query-block`, with [`QUERY_DEADLINE`]: every block backend, its
    /// guest device and its medium.
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        self.ask("query-block", None, Some(QUERY_DEADLINE)).await
    }

    /// `block_resize`: grows (or shrinks) the image under `target` to `bytes`.
    pub async fn block_resize(&self, target: BlockRef<'_>, bytes: u64) -> Result<(), QmpError> {
        let args = match target {
            BlockRef::Device(d) => json!({"device": d, "size": bytes}),
            BlockRef::NodeName(n) => json!({"node-name": n, "size": bytes}),
        };
        self.run("block_resize", Some(args)).await
    }

    /// `query-blockstats`, with [`QUERY_DEADLINE`]: I/O counters of every
    /// block backend.
    pub async fn query_blockstats(&self) -> Result<Vec<BlockStats>, QmpError> {
        self.ask("query-blockstats", None, Some(QUERY_DEADLINE))
            .await
    }

    /// `blockdev-add` of a read-only `file` node named `node` on `path`:
    /// QEMU opens the file itself, with its own credentials.
    pub async fn blockdev_add_file(&self, node: &str, path: &Path) -> Result<(), QmpError> {
        let args = json!({
            "driver": "file",
            "node-name": node,
            "filename": path.to_string_lossy(),
            "read-only": true,
            "locking": "off",
        });
        self.run("blockdev-add", Some(args)).await
    }

    /// `blockdev-del`: removes a node added with `blockdev-add`.
    pub async fn blockdev_del(&self, node: &str) -> Result<(), QmpError> {
        self.run("blockdev-del", Some(json!({"node-name": node})))
            .await
    }

    // ---- Snapshots ----------------------------------------------------

    /// Starts a `snapshot-save` job `job`: internal snapshot `tag` of every
    /// node of `devices`, the guest's memory and device state into
    /// `vmstate` (a qcow2 node). Wait for it with [`Monitor::query_jobs`].
    pub async fn snapshot_save(
        &self,
        job: &str,
        tag: &str,
        vmstate: &str,
        devices: &[&str],
    ) -> Result<(), QmpError> {
        self.snapshot_vm_job("snapshot-save", job, tag, vmstate, devices)
            .await
    }

    /// Starts a `snapshot-load` job: disks and guest state back to `tag`.
    pub async fn snapshot_load(
        &self,
        job: &str,
        tag: &str,
        vmstate: &str,
        devices: &[&str],
    ) -> Result<(), QmpError> {
        self.snapshot_vm_job("snapshot-load", job, tag, vmstate, devices)
            .await
    }

    /// `snapshot-save` and `snapshot-load` take the same arguments.
    async fn snapshot_vm_job(
        &self,
        command: &'static str,
        job: &str,
        tag: &str,
        vmstate: &str,
        devices: &[&str],
    ) -> Result<(), QmpError> {
        let args = json!({"job-id": job, "tag": tag, "vmstate": vmstate, "devices": devices});
        self.run(command, Some(args)).await
    }

    /// Starts a `snapshot-delete` job: drops `tag` from every node of `devices`.
    pub async fn snapshot_delete(
        &self,
        job: &str,
        tag: &str,
        devices: &[&str],
    ) -> Result<(), QmpError> {
        let args = json!({"job-id": job, "tag": tag, "devices": devices});
        self.run("snapshot-delete", Some(args)).await
    }

    /// `blockdev-snapshot-internal-sync`: a disk-only internal snapshot
    /// `name` of the backend `device`, taken at once.
    pub async fn snapshot_internal_disk(&self, device: &str, name: &str) -> Result<(), QmpError> {
        let args = json!({"device": device, "name": name});
        self.run("blockdev-snapshot-internal-sync", Some(args))
            .await
    }

    /// `query-jobs`, with [`QUERY_DEADLINE`]: QEMU's background jobs.
    pub async fn query_jobs(&self) -> Result<Vec<QemuJob>, QmpError> {
        self.ask("query-jobs", None, Some(QUERY_DEADLINE)).await
    }

    /// `job-dismiss`: forgets a concluded job.
    pub async fn job_dismiss(&self, id: &str) -> Result<(), QmpError> {
        self.run("job-dismiss", Some(json!({"id": id}))).await
    }

    // ---- Moving a VM to another host ----------------------------------
    // Target: `nbd-server-start`, `block-export-add` per disk, then
    // `migrate-incoming`. Source: `blockdev-add` of an nbd node per disk,
    // `blockdev-mirror` onto it, `migrate`, then `block-job-cancel`.

    /// `nbd-server-start` on `host:port` (TCP).
    pub async fn nbd_server_start(&self, host: &str, port: u16) -> Result<(), QmpError> {
        let addr = json!({"type": "inet", "data": {"host": host, "port": port.to_string()}});
        self.run("nbd-server-start", Some(json!({ "addr": addr })))
            .await
    }

    /// `nbd-server-stop`: ends the NBD server and its exports.
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        self.run("nbd-server-stop", None).await
    }

    /// `block-export-add` of `node` (a node or backend name) as the
    /// writable NBD export `name`.
    pub async fn nbd_export_writable(
        &self,
        id: &str,
        node: &str,
        name: &str,
    ) -> Result<(), QmpError> {
        let args =
            json!({"type": "nbd", "id": id, "node-name": node, "name": name, "writable": true});
        self.run("block-export-add", Some(args)).await
    }

    /// `migrate-incoming`: a QEMU started with `-incoming defer` listens on `uri`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.run("migrate-incoming", Some(json!({ "uri": uri })))
            .await
    }

    /// `blockdev-add` of a node named `node` on NBD export `export` of `host:port`.
    pub async fn blockdev_add_nbd(
        &self,
        node: &str,
        host: &str,
        port: u16,
        export: &str,
    ) -> Result<(), QmpError> {
        let args = json!({
            "driver": "nbd",
            "node-name": node,
            "server": {"type": "inet", "host": host, "port": port.to_string()},
            "export": export,
        });
        self.run("blockdev-add", Some(args)).await
    }

    /// `blockdev-mirror` of `device` onto node `target`, the whole disk
    /// (`sync: full`), at most `speed` bytes/s (0: unlimited).
    pub async fn blockdev_mirror(
        &self,
        job: &str,
        device: &str,
        target: &str,
        speed: u64,
    ) -> Result<(), QmpError> {
        let args = json!({"job-id": job, "device": device, "target": target, "sync": "full", "speed": speed});
        self.run("blockdev-mirror", Some(args)).await
    }

    /// `query-block-jobs`, with [`QUERY_DEADLINE`].
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJob>, QmpError> {
        self.ask("query-block-jobs", None, Some(QUERY_DEADLINE))
            .await
    }

    /// `block-job-cancel`: a ready mirror ends consistent (`force` ends it
    /// at once, wherever it is).
    pub async fn block_job_cancel(&self, job: &str, force: bool) -> Result<(), QmpError> {
        self.run(
            "block-job-cancel",
            Some(json!({"device": job, "force": force})),
        )
        .await
    }

    /// `migrate-set-parameters`.
    pub async fn migrate_set_parameters(&self, params: Value) -> Result<(), QmpError> {
        self.run("migrate-set-parameters", Some(params)).await
    }

    /// `migrate` to `uri` (`tcp:host:port`).
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.run("migrate", Some(json!({ "uri": uri }))).await
    }

    /// `migrate_cancel`.
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.run("migrate_cancel", None).await
    }

    /// `query-migrate`, with [`QUERY_DEADLINE`].
    pub async fn query_migrate(&self) -> Result<MigrateInfo, QmpError> {
        self.ask("query-migrate", None, Some(QUERY_DEADLINE)).await
    }

    // ---- Hot-plug -----------------------------------------------------
    // Disks: `blockdev-add` then `device_add`; removal: `device_del`, wait
    // for DEVICE_DELETED, then `blockdev-del` (see `qemu::disks`).

    /// `blockdev-add` of a disk image: its format node named `image.node`
    /// over an implicit `file` node, both removed by one `blockdev-del`.
    pub async fn blockdev_add_image(&self, image: &ImageNode<'_>) -> Result<(), QmpError> {
        self.run("blockdev-add", Some(image.options())).await
    }

    /// `device_add` of a virtio-blk PCI disk on a (root) port.
    pub async fn device_add_virtio_blk(&self, dev: &VirtioBlk<'_>) -> Result<(), QmpError> {
        self.run("device_add", Some(dev.options())).await
    }

    /// `device_del` of the device with qdev id `id`, then the wait for its
    /// `DEVICE_DELETED` until `deadline` has passed (the whole call's).
    ///
    /// The guest must release the device: a guest that does not answer
    /// leaves it in place with its unplug pending ([`Unplug::Pending`]);
    /// QEMU then refuses a second `device_del` ("already in the process
    /// of unplug"), which this takes as the same request and waits again.
    /// An unknown id is QEMU's `DeviceNotFound` error. At the deadline one
    /// more query (with [`QUERY_DEADLINE`]) makes sure the event was not
    /// missed.
    pub async fn device_del(&self, id: &str, deadline: Duration) -> Result<Unplug, QmpError> {
        let end = tokio::time::Instant::now() + deadline;
        // Listen before asking: the event may come with the answer.
        let mut events = self
            .events
            .as_ref()
            .and_then(broadcast::WeakSender::upgrade)
            .map(|tx| tx.subscribe());
        match self
            .qmp
            .execute_with_timeout("device_del", Some(json!({"id": id})), deadline)
            .await
        {
            Ok(_) => {}
            Err(QmpError::Command { desc, .. }) if desc.contains("in the process of unplug") => {}
            Err(e) => return Err(e),
        }
        loop {
            let Some(rx) = events.as_mut() else {
                // No event stream: look for the device itself.
                if !self.peripheral_exists(id).await? {
                    return Ok(Unplug::Deleted);
                }
                if tokio::time::Instant::now() + POLL_INTERVAL > end {
                    return Ok(Unplug::Pending);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            };
            match tokio::time::timeout_at(end, rx.recv()).await {
                Ok(Ok(ev)) if is_device_deleted(&ev, id) => return Ok(Unplug::Deleted),
                Ok(Ok(_)) => {}
                // Events were dropped: the one awaited may be among them.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    if !self.peripheral_exists(id).await? {
                        return Ok(Unplug::Deleted);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(QmpError::Disconnected),
                Err(_) => {
                    // One last look, in case the event was missed.
                    return Ok(if self.peripheral_exists(id).await? {
                        Unplug::Pending
                    } else {
                        Unplug::Deleted
                    });
                }
            }
        }
    }

    /// Whether a device with qdev id `id` exists (`qom-list` of
    /// `/machine/peripheral`, with [`QUERY_DEADLINE`]).
    pub async fn peripheral_exists(&self, id: &str) -> Result<bool, QmpError> {
        let props = self.qom_list("/machine/peripheral").await?;
        Ok(props
            .iter()
            .any(|p| p.name == id && p.kind.starts_with("child<")))
    }

    /// `qom-list`, with [`QUERY_DEADLINE`]: the properties (children
    /// included) of the QOM object at `path`.
    pub async fn qom_list(&self, path: &str) -> Result<Vec<QomProperty>, QmpError> {
        self.ask(
            "qom-list",
            Some(json!({"path": path})),
            Some(QUERY_DEADLINE),
        )
        .await
    }

    /// `query-pci`, with [`QUERY_DEADLINE`]: the devices of every root
    /// bus, bridges (root ports) with the devices behind them. This is
    /// QEMU's own model: a device whose unplug is pending is still there.
    pub async fn query_pci(&self) -> Result<Vec<PciDevice>, QmpError> {
        #[derive(Deserialize)]
        struct PciBus {
            devices: Vec<PciDevice>,
        }
        let buses: Vec<PciBus> = self.ask("query-pci", None, Some(QUERY_DEADLINE)).await?;
        Ok(buses.into_iter().flat_map(|b| b.devices).collect())
    }

    // ---- Display ------------------------------------------------------

    /// `screendump` of the primary display as a PNG into `path`, with
    /// [`SCREENDUMP_DEADLINE`] (QEMU encodes the PNG on its main thread). QEMU writes the file itself, with its own
    /// credentials: `path` must be in a directory it may write to.
    pub async fn screendump_png(&self, path: &Path) -> Result<(), QmpError> {
        let args = json!({"filename": path.to_string_lossy(), "format": "png"});
        self.qmp
            .execute_with_timeout("screendump", Some(args), SCREENDUMP_DEADLINE)
            .await
            .map(drop)
    }

    // ---- Migration (to come) ------------------------------------------
    // `migrate-set-capabilities`, `migrate`, `query-migrate`.
}

/// Whether `ev` is the `DEVICE_DELETED` of the device with qdev id `id`
/// (not that of one of its parts, e.g. `.../virtio-backend`, which has a
/// path only).
fn is_device_deleted(ev: &Event, id: &str) -> bool {
    ev.name == "DEVICE_DELETED" && ev.data.get("device").and_then(Value::as_str) == Some(id)
}

/// Decodes a command's answer into its typed form.
fn decode<T: DeserializeOwned>(command: &str, answer: Value) -> Result<T, QmpError> {
    serde_json::from_value(answer).map_err(|e| QmpError::BadReply {
        command: command.to_owned(),
        detail: e.to_string(),
    })
}

/// An optional name where QEMU says "no name" with an empty string.
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// QEMU's `RunState`, as `query-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum RunState {
    Running,
    Paused,
    /// Started with `-S` and not continued yet.
    Prelaunch,
    /// The guest shut down and QEMU was told to pause rather than exit.
    Shutdown,
    InternalError,
    IoError,
    GuestPanicked,
    Suspended,
    Watchdog,
    Debug,
    InMigrate,
    PostMigrate,
    FinishMigrate,
    SaveVm,
    RestoreVm,
    Colo,
    /// A state this code does not know (a newer QEMU).
    Other(String),
}

impl RunState {
    /// The name QMP uses.
    pub fn as_str(&self) -> &str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Prelaunch => "prelaunch",
            RunState::Shutdown => "shutdown",
            RunState::InternalError => "internal-error",
            RunState::IoError => "io-error",
            RunState::GuestPanicked => "guest-panicked",
            RunState::Suspended => "suspended",
            RunState::Watchdog => "watchdog",
            RunState::Debug => "debug",
            RunState::InMigrate => "inmigrate",
            RunState::PostMigrate => "postmigrate",
            RunState::FinishMigrate => "finish-migrate",
            RunState::SaveVm => "save-vm",
            RunState::RestoreVm => "restore-vm",
            RunState::Colo => "colo",
            RunState::Other(s) => s,
        }
    }
}

impl From<String> for RunState {
    fn from(s: String) -> RunState {
        match s.as_str() {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "prelaunch" => RunState::Prelaunch,
            "shutdown" => RunState::Shutdown,
            "internal-error" => RunState::InternalError,
            "io-error" => RunState::IoError,
            "guest-panicked" => RunState::GuestPanicked,
            "suspended" => RunState::Suspended,
            "watchdog" => RunState::Watchdog,
            "debug" => RunState::Debug,
            "inmigrate" => RunState::InMigrate,
            "postmigrate" => RunState::PostMigrate,
            "finish-migrate" => RunState::FinishMigrate,
            "save-vm" => RunState::SaveVm,
            "restore-vm" => RunState::RestoreVm,
            "colo" => RunState::Colo,
            _ => RunState::Other(s),
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What QEMU does when the guest shuts down (`set-action`'s `shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// Exit (QEMU's default).
    Poweroff,
    /// Stay alive in the `shutdown` run state, ready for a reset.
    Pause,
}

impl ShutdownAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownAction::Poweroff => "poweroff",
            ShutdownAction::Pause => "pause",
        }
    }
}

/// One vCPU and the host thread that runs it (`query-cpus-fast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VcpuThread {
    #[serde(rename = "cpu-index")]
    pub cpu_index: u32,
    #[serde(rename = "thread-id")]
    pub thread_id: u32,
}

/// RAM sizes in bytes (`query-memory-size-summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct MemorySizeSummary {
    /// RAM the machine was started with (`-m`): the balloon's ceiling.
    #[serde(rename = "base-memory")]
    pub base_memory: u64,
    /// Hot-plugged RAM, absent when there is none.
    #[serde(rename = "plugged-memory", default)]
    pub plugged_memory: Option<u64>,
}

/// QEMU-level I/O limits of one block backend; 0 means unlimited. Sent by
/// `block_set_io_throttle`, read back in `query-block`'s `inserted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct IoThrottle {
    /// Total operations per second.
    pub iops: u64,
    #[serde(rename = "iops_rd")]
    pub read_iops: u64,
    #[serde(rename = "iops_wr")]
    pub write_iops: u64,
    /// Total bytes per second.
    pub bps: u64,
    #[serde(rename = "bps_rd")]
    pub read_bps: u64,
    #[serde(rename = "bps_wr")]
    pub write_bps: u64,
}

/// How a block command names its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRef<'a> {
    /// The backend name (`-drive id=`).
    Device(&'a str),
    /// A node of the block graph (`blockdev-add`'s `node-name`).
    NodeName(&'a str),
}

/// The format of a disk image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    /// QEMU's block driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

/// A disk image opened as a format node over a `file` node: the arguments
/// of `blockdev-add`, and (as JSON) of `-blockdev` on the command line, so
/// that a disk given at start and one hot-plugged are opened alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageNode<'a> {
    /// Node name of the format node (at most 31 characters, a letter
    /// first); the file node is implicit and goes with it.
    pub node: &'a str,
    pub path: &'a Path,
    pub format: ImageFormat,
    pub read_only: bool,
    /// O_DIRECT, as the root disk's `cache=none` (where the file system
    /// has it); the page cache otherwise.
    pub direct: bool,
}

impl ImageNode<'_> {
    /// The options, as the root disk's `-drive ...,cache=none,aio=threads,
    /// discard=unmap` sets them: writes are flushed (`no-flush` stays off).
    pub fn options(&self) -> Value {
        let cache = json!({"direct": self.direct, "no-flush": false});
        json!({
            "driver": self.format.as_str(),
            "node-name": self.node,
            "read-only": self.read_only,
            "discard": "unmap",
            "cache": cache,
            "file": {
                "driver": "file",
                "filename": self.path.to_string_lossy(),
                "aio": "threads",
                "read-only": self.read_only,
                "discard": "unmap",
                "cache": cache,
            },
        })
    }
}

/// A virtio-blk PCI disk: the arguments of `device_add`, and (as JSON) of
/// `-device` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioBlk<'a> {
    /// qdev id.
    pub id: &'a str,
    /// Node name of the image (`ImageNode::node`).
    pub node: &'a str,
    /// qdev id of the (root) port; the disk goes in its only slot.
    pub port: &'a str,
    /// What the guest reads in `/sys/block/vdX/serial` (virtio-blk keeps
    /// 20 bytes); none when empty.
    pub serial: &'a str,
}

impl VirtioBlk<'_> {
    pub fn options(&self) -> Value {
        // addr 0: on an occupied port QEMU then refuses, rather than
        // putting the disk in a slot the guest never scans.
        let mut o = json!({
            "driver": "virtio-blk-pci",
            "id": self.id,
            "drive": self.node,
            "bus": self.port,
            "addr": "0",
        });
        if !self.serial.is_empty() {
            o["serial"] = json!(self.serial);
        }
        o
    }
}

/// What `device_del` came to within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplug {
    /// `DEVICE_DELETED` arrived: the device is gone, its backend free.
    Deleted,
    /// The guest has not released the device: it is still there, its
    /// unplug pending (a guest reset completes it).
    Pending,
}

/// One property of a QOM object (`qom-list`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QomProperty {
    pub name: String,
    /// e.g. `child<virtio-blk-pci>`, `link<bus>`, `bool`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// One PCI device (`query-pci`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PciDevice {
    /// Bus number as the guest's firmware set it (0 before it ran).
    pub bus: u32,
    pub slot: u32,
    pub function: u32,
    /// qdev id; None for a device without one (the machine's own).
    #[serde(default, deserialize_with = "non_empty")]
    pub qdev_id: Option<String>,
    /// For a bridge (a root port): what is behind it.
    #[serde(rename = "pci_bridge", default)]
    pub bridge: Option<PciBridge>,
}

/// The devices behind a PCI bridge (`query-pci`'s `pci_bridge`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PciBridge {
    /// Absent when the bridge has none.
    #[serde(default)]
    pub devices: Vec<PciDevice>,
}

/// One block job (`query-block-jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockJob {
    /// The job's id (`job-id`).
    pub device: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub len: u64,
    pub offset: u64,
    /// A mirror has copied everything once and now follows the writes.
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MigrateInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelling`,
    /// `cancelled`, ...; absent before any migration.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub ram: Option<MigrateRam>,
    /// Milliseconds the guest was stopped at the switch-over (completed).
    #[serde(default)]
    pub downtime: Option<u64>,
    #[serde(rename = "total-time", default)]
    pub total_time: Option<u64>,
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
}

/// The memory part of `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MigrateRam {
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub remaining: u64,
    #[serde(default)]
    pub total: u64,
}

/// One QEMU background job (`query-jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QemuJob {
    pub id: String,
    /// `snapshot-save`, `snapshot-load`, `snapshot-delete`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `created`, `running`, ..., `concluded`, `null`.
    pub status: String,
    #[serde(rename = "current-progress", default)]
    pub current: u64,
    #[serde(rename = "total-progress", default)]
    pub total: u64,
    /// Why it failed, once concluded.
    #[serde(default)]
    pub error: Option<String>,
}

/// One block backend (`query-block`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockInfo {
    /// Backend name (`-drive id=`); None for an anonymous backend.
    #[serde(default, deserialize_with = "non_empty")]
    pub device: Option<String>,
    /// QOM path of the guest device it is attached to.
    #[serde(default, deserialize_with = "non_empty")]
    pub qdev: Option<String>,
    /// The medium; None for an empty drive.
    #[serde(default)]
    pub inserted: Option<BlockInserted>,
}

impl BlockInfo {
    /// Whether `name` is its backend name, its guest device's QOM path or
    /// its medium's node name.
    pub fn is_named(&self, name: &str) -> bool {
        self.device.as_deref() == Some(name)
            || self.qdev.as_deref() == Some(name)
            || self
                .inserted
                .as_ref()
                .is_some_and(|i| i.node_name.as_deref() == Some(name))
    }
}

/// The medium of a block backend (`query-block`'s `inserted`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockInserted {
    #[serde(rename = "node-name", default, deserialize_with = "non_empty")]
    pub node_name: Option<String>,
    /// Image file name.
    pub file: String,
    /// Read-only.
    pub ro: bool,
    /// The I/O limits in force.
    #[serde(flatten)]
    pub throttle: IoThrottle,
}

/// I/O counters of one block backend (`query-blockstats`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawBlockStats")]
pub struct BlockStats {
    /// Backend name; None for an anonymous (`blockdev-add`) backend.
    pub device: Option<String>,
    /// QOM path of the guest device it is attached to.
    pub qdev: Option<String>,
    pub node_name: Option<String>,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
}

impl BlockStats {
    /// Whether `name` is its backend name, its guest device's QOM path or
    /// its node name.
    pub fn is_named(&self, name: &str) -> bool {
        [&self.device, &self.qdev, &self.node_name]
            .iter()
            .any(|n| n.as_deref() == Some(name))
    }
}

/// `query-blockstats` as QEMU spells it: names beside, counters under `stats`.
#[derive(Deserialize)]
struct RawBlockStats {
    #[serde(default, deserialize_with = "non_empty")]
    device: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    qdev: Option<String>,
    #[serde(rename = "node-name", default, deserialize_with = "non_empty")]
    node_name: Option<String>,
    stats: RawCounters,
}

#[derive(Deserialize)]
struct RawCounters {
    rd_bytes: u64,
    wr_bytes: u64,
    rd_operations: u64,
    wr_operations: u64,
}

impl From<RawBlockStats> for BlockStats {
    fn from(r: RawBlockStats) -> BlockStats {
        BlockStats {
            device: r.device,
            qdev: r.qdev,
            node_name: r.node_name,
            rd_bytes: r.stats.rd_bytes,
            wr_bytes: r.stats.wr_bytes,
            rd_operations: r.stats.rd_operations,
            wr_operations: r.stats.wr_operations,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
