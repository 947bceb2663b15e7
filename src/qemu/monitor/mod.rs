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

    // ---- Snapshots (to come) ------------------------------------------
    // Internal snapshots: `snapshot-save` / `snapshot-load` /
    // `snapshot-delete` jobs (or `human-monitor-command` savevm/loadvm on
    // QEMU without them), waited for through `query-jobs` and JOB events.

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
mod tests {
    use super::*;
    use crate::qemu::qmp::tests::{fake_qmp, ret};
    use std::sync::{Arc, Mutex};

    type Sent = Arc<Mutex<Vec<Value>>>;

    /// A monitor connected to a fake QEMU that answers each command with the
    /// given `return` value (`"CLOSE"` hangs up; unknown commands get
    /// CommandNotFound) and records every command it receives.
    async fn monitor(answers: Vec<(&'static str, Value)>) -> (tempfile::TempDir, Monitor, Sent) {
        let sent: Sent = Arc::default();
        let log = sent.clone();
        let (dir, path) = fake_qmp(move |v| {
            let cmd = v["execute"].as_str().unwrap_or_default();
            if cmd == "qmp_capabilities" {
                return vec![ret(v, json!({}))];
            }
            log.lock().unwrap().push(v.clone());
            match answers.iter().find(|(c, _)| *c == cmd) {
                Some((_, a)) if a == "CLOSE" => vec!["CLOSE".into()],
                Some((_, a)) => vec![ret(v, a.clone())],
                None => vec![json!({
                    "error": {"class": "CommandNotFound", "desc": format!("The command {cmd} has not been found")},
                    "id": v["id"],
                })
                .to_string()],
            }
        })
        .await;
        let (mon, _events) = Monitor::connect(&path, Duration::from_secs(2))
            .await
            .unwrap();
        (dir, mon, sent)
    }

    /// (command, arguments) of every command sent, `Null` for no arguments.
    fn wire(sent: &Sent) -> Vec<(String, Value)> {
        sent.lock()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["execute"].as_str().unwrap().to_owned(),
                    v.get("arguments").cloned().unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    fn bad_reply_of(e: QmpError) -> String {
        match e {
            QmpError::BadReply { command, .. } => command,
            other => panic!("expected BadReply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn power_commands_go_out_without_arguments() {
        let answers = [
            "cont",
            "stop",
            "system_powerdown",
            "system_reset",
            "set-action",
        ]
        .into_iter()
        .map(|c| (c, json!({})))
        .collect();
        let (_d, mon, sent) = monitor(answers).await;
        mon.cont().await.unwrap();
        mon.stop().await.unwrap();
        mon.system_powerdown().await.unwrap();
        mon.system_reset().await.unwrap();
        mon.set_shutdown_action(ShutdownAction::Pause)
            .await
            .unwrap();
        mon.set_shutdown_action(ShutdownAction::Poweroff)
            .await
            .unwrap();
        assert_eq!(
            wire(&sent),
            vec![
                ("cont".into(), Value::Null),
                ("stop".into(), Value::Null),
                ("system_powerdown".into(), Value::Null),
                ("system_reset".into(), Value::Null),
                ("set-action".into(), json!({"shutdown": "pause"})),
                ("set-action".into(), json!({"shutdown": "poweroff"})),
            ]
        );
    }

    #[tokio::test]
    async fn quit_succeeds_when_qemu_hangs_up_instead_of_answering() {
        let (_d, mon, sent) = monitor(vec![("quit", json!("CLOSE"))]).await;
        mon.quit().await.unwrap();
        assert_eq!(wire(&sent), vec![("quit".into(), Value::Null)]);

        let (_d, mon, _) = monitor(vec![("quit", json!({}))]).await;
        mon.quit().await.unwrap();
    }

    #[tokio::test]
    async fn a_qmp_error_stays_a_command_error() {
        let (_d, mon, _) = monitor(vec![]).await;
        let e = mon.cont().await.unwrap_err();
        assert!(
            matches!(e, QmpError::Command { ref command, ref class, .. }
                if command == "cont" && class == "CommandNotFound"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn query_status_decodes_the_run_state() {
        for (status, running, want) in [
            ("running", true, RunState::Running),
            ("paused", false, RunState::Paused),
            ("prelaunch", false, RunState::Prelaunch),
            ("shutdown", false, RunState::Shutdown),
            ("internal-error", false, RunState::InternalError),
            ("guest-panicked", false, RunState::GuestPanicked),
            (
                "some-future-state",
                false,
                RunState::Other("some-future-state".into()),
            ),
        ] {
            let answer = json!({"status": status, "singlestep": false, "running": running});
            let (_d, mon, sent) = monitor(vec![("query-status", answer)]).await;
            let st = mon.query_status().await.unwrap();
            assert_eq!(st, want);
            assert_eq!(st.as_str(), status);
            assert_eq!(wire(&sent), vec![("query-status".into(), Value::Null)]);
        }
    }

    #[tokio::test]
    async fn a_status_without_a_state_is_a_bad_reply() {
        let (_d, mon, _) = monitor(vec![("query-status", json!({"running": true}))]).await;
        let e = mon.query_status().await.unwrap_err();
        assert_eq!(bad_reply_of(e), "query-status");
    }

    #[tokio::test]
    async fn query_cpus_fast_gives_threads_by_cpu_index() {
        let cpu = |i: u32, tid: u32| {
            json!({
                "thread-id": tid, "props": {"core-id": 0, "thread-id": 0, "socket-id": i},
                "qom-path": format!("/machine/unattached/device[{i}]"),
                "cpu-index": i, "target": "x86_64",
            })
        };
        let answer = json!([cpu(1, 4312), cpu(0, 4311), cpu(2, 4313)]);
        let (_d, mon, sent) = monitor(vec![("query-cpus-fast", answer)]).await;
        let cpus = mon.query_cpus_fast().await.unwrap();
        assert_eq!(
            cpus,
            vec![
                VcpuThread {
                    cpu_index: 0,
                    thread_id: 4311
                },
                VcpuThread {
                    cpu_index: 1,
                    thread_id: 4312
                },
                VcpuThread {
                    cpu_index: 2,
                    thread_id: 4313
                },
            ]
        );
        assert_eq!(wire(&sent), vec![("query-cpus-fast".into(), Value::Null)]);
    }

    #[tokio::test]
    async fn a_cpu_without_a_thread_is_a_bad_reply() {
        let answer = json!([{"cpu-index": 0, "thread-id": "1234"}]);
        let (_d, mon, _) = monitor(vec![("query-cpus-fast", answer)]).await;
        let e = mon.query_cpus_fast().await.unwrap_err();
        assert_eq!(bad_reply_of(e), "query-cpus-fast");
    }

    #[tokio::test]
    async fn memory_size_and_balloon() {
        let (_d, mon, sent) = monitor(vec![
            (
                "query-memory-size-summary",
                json!({"base-memory": 134217728}),
            ),
            ("query-balloon", json!({"actual": 100663296})),
            ("balloon", json!({})),
        ])
        .await;
        let m = mon.query_memory_size_summary().await.unwrap();
        assert_eq!(
            m,
            MemorySizeSummary {
                base_memory: 128 << 20,
                plugged_memory: None
            }
        );
        assert_eq!(mon.query_balloon().await.unwrap(), 96 << 20);
        mon.balloon(64 << 20).await.unwrap();
        assert_eq!(
            wire(&sent),
            vec![
                ("query-memory-size-summary".into(), Value::Null),
                ("query-balloon".into(), Value::Null),
                ("balloon".into(), json!({"value": 67108864})),
            ]
        );
    }

    #[tokio::test]
    async fn malformed_memory_answers_are_bad_replies() {
        let (_d, mon, _) = monitor(vec![
            ("query-memory-size-summary", json!({"base-memory": -1})),
            ("query-balloon", json!([])),
        ])
        .await;
        let e = mon.query_memory_size_summary().await.unwrap_err();
        assert_eq!(bad_reply_of(e), "query-memory-size-summary");
        let e = mon.query_balloon().await.unwrap_err();
        assert_eq!(bad_reply_of(e), "query-balloon");
    }

    #[tokio::test]
    async fn io_throttle_arguments_on_the_wire() {
        let (_d, mon, sent) = monitor(vec![("block_set_io_throttle", json!({}))]).await;
        let qdev = "/machine/peripheral/vd0/virtio-backend";
        let limits = IoThrottle {
            read_iops: 50,
            write_bps: 1_000_000,
            ..IoThrottle::default()
        };
        mon.set_io_throttle(qdev, &limits).await.unwrap();
        mon.set_io_throttle(qdev, &IoThrottle::default())
            .await
            .unwrap();
        assert_eq!(
            wire(&sent),
            vec![
                (
                    "block_set_io_throttle".into(),
                    json!({"id": qdev, "iops": 0, "iops_rd": 50, "iops_wr": 0,
                           "bps": 0, "bps_rd": 0, "bps_wr": 1000000})
                ),
                (
                    "block_set_io_throttle".into(),
                    json!({"id": qdev, "iops": 0, "iops_rd": 0, "iops_wr": 0,
                           "bps": 0, "bps_rd": 0, "bps_wr": 0})
                ),
            ]
        );
    }

    #[tokio::test]
    async fn query_block_decodes_backends_and_their_limits() {
        let answer = json!([
            {
                "io-status": "ok", "device": "disk0", "locked": false, "removable": false,
                "qdev": "/machine/peripheral/vd0/virtio-backend", "type": "unknown",
                "inserted": {
                    "iops_rd": 50, "detect_zeroes": "off", "iops_wr": 0, "ro": false,
                    "node-name": "#block128", "backing_file_depth": 1, "drv": "qcow2",
                    "iops": 0, "bps_wr": 1000000, "write_threshold": 0, "encrypted": false,
                    "bps": 0, "bps_rd": 0, "file": "/var/lib/libgo/vms/x/disk.qcow2",
                    "cache": {"no-flush": false, "direct": true, "writeback": true},
                    "image": {"virtual-size": 10737418240u64, "filename": "/var/lib/libgo/vms/x/disk.qcow2", "format": "qcow2"},
                },
            },
            {"device": "", "locked": false, "removable": true, "type": "unknown",
             "qdev": "/machine/peripheral-anon/device[1]", "tray_open": false},
        ]);
        let (_d, mon, sent) = monitor(vec![("query-block", answer)]).await;
        let blocks = mon.query_block().await.unwrap();
        assert_eq!(blocks.len(), 2);
        let disk = blocks
            .iter()
            .find(|b| b.is_named("/machine/peripheral/vd0/virtio-backend"))
            .unwrap();
        assert!(disk.is_named("disk0") && disk.is_named("#block128"));
        let ins = disk.inserted.as_ref().unwrap();
        assert_eq!(ins.file, "/var/lib/libgo/vms/x/disk.qcow2");
        assert!(!ins.ro);
        assert_eq!(
            ins.throttle,
            IoThrottle {
                read_iops: 50,
                write_bps: 1_000_000,
                ..IoThrottle::default()
            }
        );
        assert_eq!(blocks[1].device, None);
        assert_eq!(blocks[1].inserted, None);
        assert!(!blocks[1].is_named(""));
        assert_eq!(wire(&sent), vec![("query-block".into(), Value::Null)]);
    }

    #[tokio::test]
    async fn a_medium_without_its_limits_is_a_bad_reply() {
        let answer = json!([{"device": "disk0", "inserted": {"file": "/d", "ro": false}}]);
        let (_d, mon, _) = monitor(vec![("query-block", answer)]).await;
        let e = mon.query_block().await.unwrap_err();
        assert_eq!(bad_reply_of(e), "query-block");
    }

    #[tokio::test]
    async fn block_resize_by_device_or_node() {
        let (_d, mon, sent) = monitor(vec![("block_resize", json!({}))]).await;
        mon.block_resize(BlockRef::Device("disk0"), 20 << 30)
            .await
            .unwrap();
        mon.block_resize(BlockRef::NodeName("hp1"), 1 << 30)
            .await
            .unwrap();
        assert_eq!(
            wire(&sent),
            vec![
                (
                    "block_resize".into(),
                    json!({"device": "disk0", "size": 21474836480u64})
                ),
                (
                    "block_resize".into(),
                    json!({"node-name": "hp1", "size": 1073741824})
                ),
            ]
        );
    }

    #[tokio::test]
    async fn query_blockstats_decodes_the_counters() {
        let stats = |rb: u64, wb: u64, ro: u64, wo: u64| {
            json!({
                "rd_bytes": rb, "wr_bytes": wb, "rd_operations": ro, "wr_operations": wo,
                "flush_operations": 3, "wr_total_time_ns": 0, "rd_total_time_ns": 0,
                "flush_total_time_ns": 0, "rd_merged": 0, "wr_merged": 0,
                "wr_highest_offset": 0, "idle_time_ns": 1234, "failed_rd_operations": 0,
                "failed_wr_operations": 0, "invalid_rd_operations": 0,
                "invalid_wr_operations": 0, "account_invalid": true, "account_failed": true,
                "timed_stats": [], "unmap_operations": 0, "unmap_bytes": 0,
            })
        };
        let answer = json!([
            {"device": "disk0", "node-name": "#block128",
             "qdev": "/machine/peripheral/vd0/virtio-backend",
             "stats": stats(9_437_184, 4096, 300, 1),
             "parent": {"node-name": "#block024", "stats": stats(1, 1, 1, 1)}},
            {"device": "", "node-name": "hp1",
             "qdev": "/machine/peripheral/hp1/virtio-backend",
             "stats": stats(0, 0, 0, 0)},
        ]);
        let (_d, mon, sent) = monitor(vec![("query-blockstats", answer)]).await;
        let all = mon.query_blockstats().await.unwrap();
        let disk = all.iter().find(|s| s.is_named("disk0")).unwrap();
        assert_eq!(
            *disk,
            BlockStats {
                device: Some("disk0".into()),
                qdev: Some("/machine/peripheral/vd0/virtio-backend".into()),
                node_name: Some("#block128".into()),
                rd_bytes: 9_437_184,
                wr_bytes: 4096,
                rd_operations: 300,
                wr_operations: 1,
            }
        );
        let hot = all.iter().find(|s| s.is_named("hp1")).unwrap();
        assert_eq!(hot.device, None);
        assert_eq!(wire(&sent), vec![("query-blockstats".into(), Value::Null)]);
    }

    #[tokio::test]
    async fn blockstats_that_are_not_a_list_are_a_bad_reply() {
        let (_d, mon, _) = monitor(vec![("query-blockstats", json!({"stats": {}}))]).await;
        let e = mon.query_blockstats().await.unwrap_err();
        assert_eq!(bad_reply_of(e), "query-blockstats");
    }
}
