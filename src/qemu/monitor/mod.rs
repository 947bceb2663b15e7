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
use tokio::sync::mpsc;

use super::qmp::{Event, Qmp, QmpError};

/// Deadline of `quit`: QEMU answers at once or is past answering.
pub const QUIT_DEADLINE: Duration = Duration::from_secs(2);
/// Deadline of the queries made while serving a read (config, samples):
/// a busy monitor must not hold up the caller for the default deadline.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(2);

/// The typed monitor of one QEMU process. Cheap to clone; clones share the
/// connection.
#[derive(Debug, Clone)]
pub struct Monitor {
    qmp: Qmp,
}

impl Monitor {
    pub fn new(qmp: Qmp) -> Monitor {
        Monitor { qmp }
    }

    /// Connects to a QMP socket (see [`Qmp::connect`]); returns the monitor
    /// and QEMU's event stream, which ends when QEMU closes the socket.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Monitor, mpsc::Receiver<Event>), QmpError> {
        let (qmp, events) = Qmp::connect(path, timeout).await?;
        Ok((Monitor::new(qmp), events))
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

    // ---- Hot-plug (to come) -------------------------------------------
    // Disks: `blockdev-add` then `device_add`; removal: `device_del`, wait
    // for DEVICE_DELETED, then `blockdev-del`.

    // ---- Display (to come) --------------------------------------------
    // `screendump` to a file the agent owns.

    // ---- Migration (to come) ------------------------------------------
    // `migrate-set-capabilities`, `migrate`, `query-migrate`.
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
mod tests;
