//! Containers through the Docker Engine API, managed like VMs: same errors,
//! jobs, one operation at a time per container, events, the same resource
//! fields (vcpus -> CPU quota, memory, cpu_pinning -> cpuset, io_limits ->
//! per-device throttles). The engine is the source of truth for container
//! state; libgo marks what it owns with labels and keeps adoptions in SQLite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters as q;
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use super::runtime::{Sample, Samples};
use super::{lock, vm, Agent, EngineError, JobCtx, Result, Submitted};
use crate::docker::{self, DockerError, LABEL_AGENT, LABEL_ID, LABEL_TAGS};
use crate::jobs::TaskSpec;
use crate::model::{
    ActionResponse, Container, CreateContainerRequest, ExecRequest, ExecResult, IoLimits,
    MountSpec, Performance, PortMapping, UpdateContainerRequest, VmStatus,
};

impl From<DockerError> for EngineError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Unavailable { .. } => EngineError::Unavailable(e.to_string()),
            DockerError::NotFound(m) => EngineError::NotFound(m),
            DockerError::Conflict(m) => EngineError::Conflict(m),
            DockerError::Invalid(m) => EngineError::Invalid(m),
            DockerError::Engine(m) => EngineError::Internal(m),
        }
    }
}

/// A container action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CAction {
    Start,
    Stop,
    Restart,
    Kill,
    Pause,
    Unpause,
}

impl CAction {
    pub fn parse(s: &str) -> Option<CAction> {
        Some(match s {
            "start" => CAction::Start,
            "stop" | "shutdown" => CAction::Stop,
            "restart" | "reboot" => CAction::Restart,
            "kill" | "poweroff" => CAction::Kill,
            "pause" => CAction::Pause,
            "unpause" | "resume" => CAction::Unpause,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            CAction::Start => "start",
            CAction::Stop => "stop",
            CAction::Restart => "restart",
            CAction::Kill => "kill",
            CAction::Pause => "pause",
            CAction::Unpause => "unpause",
        }
    }
}

/// The engine's state in the VM vocabulary.
pub fn status_of(state: &str) -> VmStatus {
    match state {
        "running" => VmStatus::Running,
        "paused" => VmStatus::Paused,
        "restarting" => VmStatus::Starting,
        "removing" => VmStatus::Deleting,
        "dead" => VmStatus::Crashed,
        "created" | "exited" => VmStatus::Stopped,
        _ => VmStatus::Error,
    }
}

/// An interactive exec: the command's output, its stdin, its id.
pub struct AttachedExec {
    pub output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = std::result::Result<
                        bollard::container::LogOutput,
                        bollard::errors::Error,
                    >,
                > + Send,
        >,
    >,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub exec_id: String,
}

/// What the agent keeps per container at run time.
#[derive(Default)]
pub struct ContainerState {
    /// Engine id -> (job id, job type) of the operation holding it.
    pub busy: HashMap<String, (Uuid, String)>,
    /// Engine id -> the two newest stats samples.
    pub stats: HashMap<String, Samples>,
}

/// Holds a container's operation slot.
pub struct CGuard {
    agent: Agent,
    engine_id: String,
}

impl Drop for CGuard {
    fn drop(&mut self) {
        lock(&self.agent.inner.containers)
            .busy
            .remove(&self.engine_id);
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl Agent {
    fn docker(&self) -> std::result::Result<bollard::Docker, DockerError> {
        self.inner.docker.client()
    }

    fn dmap(&self, what: &str, e: bollard::errors::Error) -> EngineError {
        self.inner.docker.map(what, e).into()
    }

    /// A container view from the engine's inspect document.
    fn view(&self, doc: &Value) -> Container {
        let labels: HashMap<String, String> = doc["Config"]["Labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default();
        let engine_id = s(&doc["Id"]);
        let adopted = self.inner.store.adopted(&engine_id).ok().flatten();
        let managed = labels.get(LABEL_AGENT) == Some(&self.inner.node) || adopted.is_some();
        let id = labels
            .get(LABEL_ID)
            .and_then(|i| Uuid::parse_str(i).ok())
            .or(adopted)
            .unwrap_or_else(|| docker::foreign_id(&engine_id));
        let tags = labels
            .get(LABEL_TAGS)
            .map(|t| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let hc = &doc["HostConfig"];
        let ports = hc["PortBindings"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
                        Some(PortMapping {
                            container_port: port.parse().ok()?,
                            host_port: v[0]["HostPort"].as_str().and_then(|p| p.parse().ok()),
                            protocol: proto.to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mounts = doc["Mounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| MountSpec {
                        source: if m["Type"] == "volume" {
                            s(&m["Name"])
                        } else {
                            s(&m["Source"])
                        },
                        target: s(&m["Destination"]),
                        read_only: !m["RW"].as_bool().unwrap_or(true),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let throttle = |k: &str| hc[k][0]["Rate"].as_u64().filter(|r| *r > 0);
        let io = IoLimits {
            iops: None,
            read_iops: throttle("BlkioDeviceReadIOps"),
            write_iops: throttle("BlkioDeviceWriteIOps"),
            read_bps: throttle("BlkioDeviceReadBps"),
            write_bps: throttle("BlkioDeviceWriteBps"),
        };
        let state = s(&doc["State"]["Status"]);
        let mut cmd: Vec<String> = doc["Config"]["Entrypoint"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        cmd.extend(
            doc["Config"]["Cmd"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        Container {
            id,
            engine_id,
            name: s(&doc["Name"]).trim_start_matches('/').to_owned(),
            image: s(&doc["Config"]["Image"]),
            status: status_of(&state),
            engine_state: state,
            exit_code: doc["State"]["ExitCode"].as_i64(),
            command: cmd,
            ports,
            mounts,
            networks: doc["NetworkSettings"]["Networks"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            labels: labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with("io.libgo."))
                .collect(),
            restart_policy: hc["RestartPolicy"]["Name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(String::from),
            vcpus: hc["NanoCpus"]
                .as_i64()
                .filter(|n| *n > 0)
                .map(|n| n as f64 / 1e9),
            memory: hc["Memory"]
                .as_i64()
                .filter(|m| *m > 0)
                .map(|m| m as u64 >> 20),
            cpu_pinning: hc["CpusetCpus"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(|c| crate::model::CpuPinning {
                    cores: vm::online_cpus(c),
                    emulator_cores: None,
                }),
            io_limits: (io != IoLimits::default()).then_some(io),
            tags,
            node: self.inner.node.clone(),
            managed,
            created_at: s(&doc["Created"]),
        }
    }

    async fn inspect(&self, key: &str) -> Result<Value> {
        let d = self.docker()?;
        let doc = d
            .inspect_container(key, None::<q::InspectContainerOptions>)
            .await
            .map_err(|e| self.dmap(&format!("container {key}"), e))?;
        serde_json::to_value(doc)
            .map_err(|e| EngineError::internal("reading the engine's answer", e))
    }

    /// Finds a container by libgo id, engine id or name. A key that is none
    /// of these is 400; an unknown one 404.
    pub async fn find_container(&self, key: &str) -> Result<Container> {
        if let Ok(id) = Uuid::parse_str(key) {
            // A container libgo made carries its id as a label: ask the
            // engine for that one. Only ids derived from an engine id (or
            // adopted ones) need the whole list.
            let filters: HashMap<String, Vec<String>> =
                [("label".to_string(), vec![format!("{LABEL_ID}={id}")])].into();
            let labelled = self
                .docker()?
                .list_containers(Some(q::ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .map_err(|e| self.dmap("listing containers", e))?;
            if let Some(engine_id) = labelled.into_iter().find_map(|c| c.id) {
                return Ok(self.view(&self.inspect(&engine_id).await?));
            }
            let all = self.list_containers(true).await?;
            return all
                .into_iter()
                .find(|c| c.id == id)
                .ok_or_else(|| EngineError::NotFound(format!("Container not found: {key}.")));
        }
        if !vm::is_dns_label(key) && !docker::is_engine_id(key) {
            let ok = key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok || key.is_empty() {
                return Err(EngineError::Invalid(
                    "Invalid UUID format: expected a container id or name.".into(),
                ));
            }
        }
        match self.inspect(key).await {
            Ok(doc) => Ok(self.view(&doc)),
            Err(EngineError::NotFound(_)) => Err(EngineError::NotFound(format!(
                "Container not found: {key}."
            ))),
            Err(e) => Err(e),
        }
    }

    /// Containers this agent manages, or every container with `all`.
    pub async fn list_containers(&self, all: bool) -> Result<Vec<Container>> {
        let d = self.docker()?;
        let summaries = d
            .list_containers(Some(q::ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| self.dmap("listing containers", e))?;
        let mut out = Vec::new();
        for c in summaries {
            let Some(id) = c.id else { continue };
            let labels = c.labels.unwrap_or_default();
            let mine = labels.get(LABEL_AGENT) == Some(&self.inner.node)
                || self.inner.store.adopted(&id).ok().flatten().is_some();
            if !all && !mine {
                continue;
            }
            match self.inspect(&id).await {
                Ok(doc) => out.push(self.view(&doc)),
                Err(EngineError::NotFound(_)) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
        Ok(out)
    }

    /// The slot of a managed container; foreign ones are read-only.
    fn claim_container(&self, c: &Container, job_id: Uuid, kind: &str) -> Result<CGuard> {
        if !c.managed {
            return Err(EngineError::Forbidden(format!(
                "Container {} was not created by libgo; adopt it first (POST /api/v1/containers/{}/adopt).",
                c.name, c.engine_id
            )));
        }
        let mut st = lock(&self.inner.containers);
        if let Some((job_id, job_type)) = st.busy.get(&c.engine_id).cloned() {
            return Err(EngineError::Busy {
                what: format!("Container {}", c.id),
                job_id,
                job_type,
            });
        }
        st.busy
            .insert(c.engine_id.clone(), (job_id, kind.to_owned()));
        Ok(CGuard {
            agent: self.clone(),
            engine_id: c.engine_id.clone(),
        })
    }

    fn container_job(
        &self,
        job_id: Uuid,
        kind: &str,
        c: &Container,
        caller: &str,
    ) -> Result<Arc<crate::jobs::JobHandle>> {
        let target = format!("/api/v1/containers/{}", c.id);
        Ok(self.inner.jobs.start(
            job_id,
            kind,
            Some(target.clone()),
            caller,
            vec![TaskSpec {
                description: c.name.clone(),
                target: Some(target),
            }],
        )?)
    }

    fn container_event(&self, kind: &str, c: &Container) {
        self.inner.events.emit(
            kind,
            format!("/api/v1/containers/{}", c.id),
            c.id,
            Some(c.name.clone()),
            Some(c.status.as_str().into()),
        );
    }

    /// The disk holding the engine's data, as a device path for throttles.
    async fn engine_disk(&self) -> Result<String> {
        let d = self.docker()?;
        let info = d.info().await.map_err(|e| self.dmap("engine info", e))?;
        let root = info
            .docker_root_dir
            .unwrap_or_else(|| "/var/lib/docker".into());
        let dev = crate::host::blockdev::whole_disk_of(std::path::Path::new(&root), std::path::Path::new("/sys"))
            .ok_or_else(|| EngineError::Invalid(format!("io_limits: the engine's data ({root}) is not on a block device the kernel throttles")))?;
        let uevent =
            std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).unwrap_or_default();
        let name = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .ok_or_else(|| EngineError::Internal(format!("no device name for {dev}")))?;
        Ok(format!("/dev/{name}"))
    }

    /// Engine HostConfig fields for libgo's resource fields.
    async fn resource_fields(
        &self,
        vcpus: Option<u32>,
        memory: Option<u64>,
        pin: Option<&crate::model::CpuPinning>,
        io: Option<&IoLimits>,
    ) -> Result<serde_json::Map<String, Value>> {
        let mut hc = serde_json::Map::new();
        if let Some(v) = vcpus {
            if v == 0 || v > self.inner.cfg.max_vcpus {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: vcpus must be between 1 and {}.",
                    self.inner.cfg.max_vcpus
                )));
            }
            hc.insert("NanoCpus".into(), json!(v as i64 * 1_000_000_000));
        }
        if let Some(m) = memory {
            if !(6..=self.inner.cfg.max_memory_mib).contains(&m) {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: memory must be between 6 and {} MiB.",
                    self.inner.cfg.max_memory_mib
                )));
            }
            hc.insert("Memory".into(), json!((m << 20) as i64));
        }
        if let Some(p) = pin {
            super::resources::check_pinning(p)?;
            hc.insert(
                "CpusetCpus".into(),
                json!(crate::host::pinning::format_list(&p.cores)),
            );
        }
        if let Some(l) = io {
            vm::validate_io_limits(l)?;
            let dev = self.engine_disk().await?;
            let rule = |v: Option<u64>| match v.filter(|v| *v > 0) {
                Some(rate) => json!([{"Path": dev, "Rate": rate}]),
                None => json!([]),
            };
            hc.insert("BlkioDeviceReadIOps".into(), rule(l.read_iops.or(l.iops)));
            hc.insert("BlkioDeviceWriteIOps".into(), rule(l.write_iops.or(l.iops)));
            hc.insert("BlkioDeviceReadBps".into(), rule(l.read_bps));
            hc.insert("BlkioDeviceWriteBps".into(), rule(l.write_bps));
        }
        Ok(hc)
    }

    /// Creates a container (and starts it with `start: true`) as a job.
    pub async fn create_container(
        &self,
        req: CreateContainerRequest,
        caller: &str,
    ) -> Result<Submitted<Container>> {
        if let Some(name) = &req.name {
            vm::validate_name(name)?;
        }
        vm::validate_tags(&req.tags)?;
        if req.image.is_empty() {
            return Err(EngineError::Invalid(
                "Invalid parameter: image must not be empty.".into(),
            ));
        }
        if req.labels.keys().any(|k| k.starts_with("io.libgo.")) {
            return Err(EngineError::Invalid(
                "Invalid parameter: labels io.libgo.* are reserved.".into(),
            ));
        }
        let restart = match req.restart_policy.as_deref() {
            None | Some("no") => "no",
            Some(p @ ("always" | "unless-stopped" | "on-failure")) => p,
            Some(other) => {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: restart_policy {other:?}: use no, always, unless-stopped or on-failure."
                )))
            }
        };
        let mut hc = self
            .resource_fields(
                req.vcpus,
                req.memory,
                req.cpu_pinning.as_ref(),
                req.io_limits.as_ref(),
            )
            .await?;
        hc.insert("RestartPolicy".into(), json!({"Name": restart}));
        let mut exposed = serde_json::Map::new();
        let mut bindings = serde_json::Map::new();
        for p in &req.ports {
            if p.protocol != "tcp" && p.protocol != "udp" {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: ports: protocol {:?}",
                    p.protocol
                )));
            }
            let key = format!("{}/{}", p.container_port, p.protocol);
            exposed.insert(key.clone(), json!({}));
            let host = p.host_port.map(|h| h.to_string()).unwrap_or_default();
            bindings.insert(key, json!([{"HostIp": "127.0.0.1", "HostPort": host}]));
        }
        hc.insert("PortBindings".into(), Value::Object(bindings));
        let mut mounts = Vec::new();
        for m in &req.mounts {
            if !m.target.starts_with('/') {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: mounts: target {:?} must be absolute",
                    m.target
                )));
            }
            let kind = if m.source.starts_with('/') {
                "bind"
            } else {
                "volume"
            };
            mounts.push(json!({"Type": kind, "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}));
        }
        hc.insert("Mounts".into(), Value::Array(mounts));
        if let Some(n) = &req.network {
            hc.insert("NetworkMode".into(), json!(n));
        }
        let id = Uuid::new_v4();
        let mut labels = req.labels.clone();
        labels.insert(LABEL_AGENT.into(), self.inner.node.clone());
        labels.insert(LABEL_ID.into(), id.to_string());
        labels.insert(LABEL_TAGS.into(), req.tags.join(","));
        let mut body = json!({
            "Image": req.image,
            "Env": docker::env_list(&req.env),
            "Labels": labels,
            "ExposedPorts": exposed,
            "HostConfig": hc,
        });
        if let Some(cmd) = &req.command {
            body["Cmd"] = json!(cmd);
        }
        let config: bollard::models::ContainerCreateBody = serde_json::from_value(body)
            .map_err(|e| EngineError::internal("building the container config", e))?;
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| vm::generate_name(&req.image.replace([':', '/'], "-")));
        let target = format!("/api/v1/containers/{id}");
        let handle = self.inner.jobs.start(
            Uuid::new_v4(),
            "container.create",
            Some(target.clone()),
            caller,
            vec![TaskSpec {
                description: name.clone(),
                target: Some(target),
            }],
        )?;
        let agent = self.clone();
        let start = req.start;
        let ctx = JobCtx {
            handle: handle.clone(),
            task: 0,
        };
        Ok(self.spawn_job(handle, async move {
            let d = agent.docker()?;
            let created = d
                .create_container(
                    Some(q::CreateContainerOptions {
                        name: Some(name.clone()),
                        ..Default::default()
                    }),
                    config,
                )
                .await
                .map_err(|e| agent.dmap(&format!("creating container {name}"), e))?;
            ctx.log(format!("created {}", created.id));
            if start {
                if let Err(e) = d
                    .start_container(&created.id, None::<q::StartContainerOptions>)
                    .await
                {
                    let _ = d
                        .remove_container(
                            &created.id,
                            Some(q::RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                    return Err(agent.dmap(&format!("starting container {name}"), e));
                }
            }
            let c = agent.view(&agent.inspect(&created.id).await?);
            agent.container_event("container.created", &c);
            Ok(c)
        }))
    }

    /// start, stop (graceful, `timeout` s), restart, kill, pause, unpause.
    pub async fn container_action(
        &self,
        key: &str,
        action: CAction,
        timeout: Option<u64>,
        caller: &str,
    ) -> Result<Submitted<ActionResponse>> {
        let c = self.find_container(key).await?;
        let kind = format!("container.{}", action.as_str());
        let job_id = Uuid::new_v4();
        let guard = self.claim_container(&c, job_id, &kind)?;
        let handle = self.container_job(job_id, &kind, &c, caller)?;
        let agent = self.clone();
        let t = timeout.unwrap_or(10).min(3600) as i32;
        Ok(self.spawn_job(handle, async move {
            let _guard = guard;
            let d = agent.docker()?;
            let id = c.engine_id.as_str();
            let already = |what: &str| Ok::<_, EngineError>(format!("Container already {what}."));
            let message = match (action, c.status) {
                (CAction::Start, VmStatus::Running) => already("running")?,
                (CAction::Stop, VmStatus::Stopped) => already("stopped")?,
                (CAction::Pause, VmStatus::Paused) => already("paused")?,
                (CAction::Unpause, VmStatus::Running) => already("running")?,
                (CAction::Kill | CAction::Pause, s)
                    if s != VmStatus::Running && s != VmStatus::Paused =>
                {
                    return Err(EngineError::Conflict(format!(
                        "Container is {}, cannot {}.",
                        s.as_str(),
                        action.as_str()
                    )))
                }
                _ => {
                    let r = match action {
                        CAction::Start => {
                            d.start_container(id, None::<q::StartContainerOptions>)
                                .await
                        }
                        CAction::Stop => {
                            d.stop_container(
                                id,
                                Some(q::StopContainerOptions {
                                    t: Some(t),
                                    ..Default::default()
                                }),
                            )
                            .await
                        }
                        CAction::Restart => {
                            d.restart_container(
                                id,
                                Some(q::RestartContainerOptions {
                                    t: Some(t),
                                    ..Default::default()
                                }),
                            )
                            .await
                        }
                        CAction::Kill => {
                            d.kill_container(
                                id,
                                Some(q::KillContainerOptions {
                                    signal: "SIGKILL".into(),
                                }),
                            )
                            .await
                        }
                        CAction::Pause => d.pause_container(id).await,
                        CAction::Unpause => d.unpause_container(id).await,
                    };
                    match r {
                        Ok(()) => {}
                        // 304: already in that state.
                        Err(bollard::errors::Error::DockerResponseServerError {
                            status_code: 304,
                            ..
                        }) => {}
                        Err(e) => {
                            return Err(agent.dmap(&format!("{} {}", action.as_str(), c.name), e))
                        }
                    }
                    match action {
                        CAction::Start => "Container started.",
                        CAction::Stop => "Container stopped.",
                        CAction::Restart => "Container restarted.",
                        CAction::Kill => "Container killed.",
                        CAction::Pause => "Container paused.",
                        CAction::Unpause => "Container unpaused.",
                    }
                    .to_owned()
                }
            };
            let now = agent.view(&agent.inspect(id).await?);
            agent.container_event(&format!("container.{}", now.status.as_str()), &now);
            Ok(ActionResponse {
                id: now.id,
                status: now.status.as_str().into(),
                message,
                job_id,
            })
        }))
    }

    /// Removes a container (`force` stops a running one first).
    pub async fn delete_container(
        &self,
        key: &str,
        force: bool,
        caller: &str,
    ) -> Result<Submitted<Container>> {
        let c = self.find_container(key).await?;
        let job_id = Uuid::new_v4();
        let guard = self.claim_container(&c, job_id, "container.delete")?;
        if c.status == VmStatus::Running && !force {
            drop(guard);
            return Err(EngineError::Conflict(format!(
                "Container {} is running: stop it first or delete with ?force=true.",
                c.name
            )));
        }
        let handle = self.container_job(job_id, "container.delete", &c, caller)?;
        let agent = self.clone();
        Ok(self.spawn_job(handle, async move {
            let _guard = guard;
            let d = agent.docker()?;
            d.remove_container(
                &c.engine_id,
                Some(q::RemoveContainerOptions {
                    force,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| agent.dmap(&format!("removing {}", c.name), e))?;
            let _ = agent.inner.store.unadopt(&c.engine_id);
            lock(&agent.inner.containers).stats.remove(&c.engine_id);
            agent.container_event("container.deleted", &c);
            Ok(c)
        }))
    }

    /// Changes resources of a container, live (the engine's update).
    pub async fn update_container(
        &self,
        key: &str,
        req: UpdateContainerRequest,
        caller: &str,
    ) -> Result<Submitted<Container>> {
        let c = self.find_container(key).await?;
        let hc = self
            .resource_fields(
                req.vcpus,
                req.memory,
                req.cpu_pinning.as_ref(),
                req.io_limits.as_ref(),
            )
            .await?;
        let mut body = Value::Object(hc);
        if req.memory.is_some() {
            body["MemorySwap"] = json!(-1);
        }
        let update: bollard::models::ContainerUpdateBody = serde_json::from_value(body)
            .map_err(|e| EngineError::internal("building the update", e))?;
        let job_id = Uuid::new_v4();
        let guard = self.claim_container(&c, job_id, "container.update")?;
        let handle = self.container_job(job_id, "container.update", &c, caller)?;
        let agent = self.clone();
        Ok(self.spawn_job(handle, async move {
            let _guard = guard;
            agent
                .docker()?
                .update_container(&c.engine_id, update)
                .await
                .map_err(|e| agent.dmap(&format!("updating {}", c.name), e))?;
            let now = agent.view(&agent.inspect(&c.engine_id).await?);
            agent.container_event("container.updated", &now);
            Ok(now)
        }))
    }

    /// Marks a container libgo did not create as managed.
    pub async fn adopt_container(&self, key: &str) -> Result<Container> {
        let c = self.find_container(key).await?;
        if !c.managed {
            self.inner.store.adopt(&c.engine_id, c.id)?;
        }
        self.find_container(&c.engine_id).await
    }

    /// Runs a command in a running container: exit code and output.
    pub async fn container_exec(&self, key: &str, req: ExecRequest) -> Result<ExecResult> {
        let c = self.find_container(key).await?;
        if !c.managed {
            return Err(EngineError::Forbidden(format!(
                "Container {} is not managed by libgo.",
                c.name
            )));
        }
        if req.command.is_empty() {
            return Err(EngineError::Invalid(
                "Invalid parameter: command must not be empty.".into(),
            ));
        }
        if c.status != VmStatus::Running {
            return Err(EngineError::Conflict(format!(
                "Container {} is {}, not running.",
                c.name,
                c.status.as_str()
            )));
        }
        let d = self.docker()?;
        let cfg: bollard::models::ExecConfig = serde_json::from_value(json!({
            "AttachStdout": true, "AttachStderr": true, "Cmd": req.command, "Env": docker::env_list(&req.env)
        }))
        .map_err(|e| EngineError::internal("building the exec", e))?;
        let exec = d
            .create_exec(&c.engine_id, cfg)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        let started = d
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            let timeout = Duration::from_secs(req.timeout.unwrap_or(60).clamp(1, 3600));
            let read = async {
                while let Some(item) = output.next().await {
                    match item {
                        Ok(bollard::container::LogOutput::StdOut { message }) => {
                            stdout.extend_from_slice(&message)
                        }
                        Ok(bollard::container::LogOutput::StdErr { message }) => {
                            stderr.extend_from_slice(&message)
                        }
                        Ok(_) => {}
                        Err(e) => return Err(self.dmap("exec output", e)),
                    }
                }
                Ok(())
            };
            tokio::time::timeout(timeout, read).await.map_err(|_| {
                EngineError::Conflict(format!(
                    "the command ran longer than {} s",
                    timeout.as_secs()
                ))
            })??;
        }
        let info = d
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        Ok(ExecResult {
            exit_code: info.exit_code.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Starts an interactive command (stdin attached) in a running container:
    /// its output stream, its input, and the exec id (for the exit code).
    pub async fn container_exec_attach(
        &self,
        key: &str,
        command: Vec<String>,
        tty: bool,
    ) -> Result<AttachedExec> {
        let c = self.find_container(key).await?;
        if !c.managed {
            return Err(EngineError::Forbidden(format!(
                "Container {} is not managed by libgo.",
                c.name
            )));
        }
        if c.status != VmStatus::Running {
            return Err(EngineError::Conflict(format!(
                "Container {} is {}, not running.",
                c.name,
                c.status.as_str()
            )));
        }
        let d = self.docker()?;
        let cfg: bollard::models::ExecConfig = serde_json::from_value(json!({
            "AttachStdin": true, "AttachStdout": true, "AttachStderr": true, "Tty": tty, "Cmd": command
        }))
        .map_err(|e| EngineError::internal("building the exec", e))?;
        let exec = d
            .create_exec(&c.engine_id, cfg)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        match d
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.dmap("exec", e))?
        {
            bollard::exec::StartExecResults::Attached { output, input } => Ok(AttachedExec {
                output,
                input,
                exec_id: exec.id,
            }),
            bollard::exec::StartExecResults::Detached => {
                Err(EngineError::Internal("the engine detached the exec".into()))
            }
        }
    }

    /// The exit code of a finished exec.
    pub async fn exec_exit_code(&self, exec_id: &str) -> Option<i64> {
        self.docker()
            .ok()?
            .inspect_exec(exec_id)
            .await
            .ok()?
            .exit_code
    }

    /// Log lines of a container (`follow` keeps the stream open).
    pub async fn container_logs(
        &self,
        key: &str,
        tail: Option<String>,
        since: i32,
        timestamps: bool,
        follow: bool,
    ) -> Result<impl futures::Stream<Item = std::result::Result<bytes_of::Bytes, std::io::Error>>>
    {
        let c = self.find_container(key).await?;
        let d = self.docker()?;
        let opts = q::LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            since,
            until: 0,
            timestamps,
            tail: tail.unwrap_or_else(|| "all".into()),
        };
        let stream = d.logs(&c.engine_id, Some(opts));
        Ok(stream.map(|item| match item {
            Ok(out) => Ok(out.into_bytes()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }))
    }

    /// `GET /containers/{id}/stats`: the VM `/performance` shape, from the
    /// background stats stream (the engine takes ~1 s per one-shot call).
    pub async fn container_stats(&self, key: &str) -> Result<Performance> {
        let c = self.find_container(key).await?;
        if c.status != VmStatus::Running {
            return Err(EngineError::Conflict(format!(
                "Container {} is {}: stats exist only while it runs.",
                c.name,
                c.status.as_str()
            )));
        }
        self.ensure_stats(&c.engine_id);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let samples = lock(&self.inner.containers)
                .stats
                .get(&c.engine_id)
                .cloned();
            if let Some(Samples {
                latest: Some(now),
                previous,
            }) = samples
            {
                let (dt, prev) = match previous {
                    Some(p) => (now.at.duration_since(p.at).as_secs_f64().max(1e-3), p),
                    None => (0.0, now.clone()),
                };
                let rate = |a: u64, b: u64| {
                    if dt > 0.0 {
                        a.saturating_sub(b) as f64 / dt
                    } else {
                        0.0
                    }
                };
                let cpu = if dt > 0.0 {
                    now.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / 1e9 / dt * 100.0
                } else {
                    0.0
                };
                let net = |i: usize| now.net.map(|n| n[i]);
                return Ok(Performance {
                    id: c.id,
                    cpu_usage: (cpu * 10.0).round() / 10.0,
                    memory_usage: now.rss_bytes >> 20,
                    disk_read_bytes: now.rd_bytes,
                    disk_write_bytes: now.wr_bytes,
                    disk_read_iops: rate(now.rd_ops, prev.rd_ops),
                    disk_write_iops: rate(now.wr_ops, prev.wr_ops),
                    disk_read_bytes_per_sec: rate(now.rd_bytes, prev.rd_bytes),
                    disk_write_bytes_per_sec: rate(now.wr_bytes, prev.wr_bytes),
                    network_in_bytes: net(0),
                    network_out_bytes: net(1),
                    network_in_packets: net(2),
                    network_out_packets: net(3),
                    sampled_at: now.at_str.clone(),
                    interval_secs: dt,
                });
            }
            if Instant::now() > deadline {
                return Err(EngineError::Unavailable(
                    "no stats from the engine yet".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Keeps one streaming stats subscription per running container.
    pub(crate) fn ensure_stats(&self, engine_id: &str) {
        {
            let mut st = lock(&self.inner.containers);
            if st.stats.contains_key(engine_id) {
                return;
            }
            st.stats.insert(engine_id.to_owned(), Samples::default());
        }
        let agent = self.clone();
        let id = engine_id.to_owned();
        tokio::spawn(async move {
            let Ok(d) = agent.docker() else {
                lock(&agent.inner.containers).stats.remove(&id);
                return;
            };
            let mut stream = d.stats(
                &id,
                Some(q::StatsOptions {
                    stream: true,
                    one_shot: false,
                }),
            );
            while let Some(Ok(st)) = stream.next().await {
                let v = serde_json::to_value(&st).unwrap_or(Value::Null);
                let blk = |op: &str, key: &str| -> u64 {
                    v["blkio_stats"][key]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|e| {
                                    e["op"].as_str().is_some_and(|o| o.eq_ignore_ascii_case(op))
                                })
                                .filter_map(|e| e["value"].as_u64())
                                .sum()
                        })
                        .unwrap_or(0)
                };
                let net = v["networks"].as_object().map(|m| {
                    let sum = |k: &str| m.values().filter_map(|n| n[k].as_u64()).sum::<u64>();
                    [
                        sum("rx_bytes"),
                        sum("tx_bytes"),
                        sum("rx_packets"),
                        sum("tx_packets"),
                    ]
                });
                let sample = Sample {
                    at: Instant::now(),
                    at_str: crate::clock::now(),
                    cpu_ticks: v["cpu_stats"]["cpu_usage"]["total_usage"]
                        .as_u64()
                        .unwrap_or(0),
                    rss_bytes: v["memory_stats"]["usage"].as_u64().unwrap_or(0),
                    rd_bytes: blk("read", "io_service_bytes_recursive"),
                    wr_bytes: blk("write", "io_service_bytes_recursive"),
                    rd_ops: blk("read", "io_serviced_recursive"),
                    wr_ops: blk("write", "io_serviced_recursive"),
                    net,
                };
                let mut st = lock(&agent.inner.containers);
                let Some(slot) = st.stats.get_mut(&id) else {
                    return;
                };
                slot.previous = slot.latest.take();
                slot.latest = Some(sample);
            }
            lock(&agent.inner.containers).stats.remove(&id);
        });
    }

    /// Follows the engine's events: stats streams for running containers,
    /// libgo events for lifecycle changes. Reconnects when the engine comes back.
    pub(crate) async fn watch_engine(self) {
        loop {
            if let Ok(d) = self.docker() {
                if let Ok(list) = self.list_containers(false).await {
                    for c in list.iter().filter(|c| c.status == VmStatus::Running) {
                        self.ensure_stats(&c.engine_id);
                    }
                }
                let filters: HashMap<String, Vec<String>> =
                    [("type".to_string(), vec!["container".to_string()])].into();
                let mut events = d.events(Some(q::EventsOptions {
                    filters: Some(filters),
                    ..Default::default()
                }));
                while let Some(Ok(ev)) = events.next().await {
                    let action = ev.action.unwrap_or_default();
                    let Some(id) = ev.actor.and_then(|a| a.id) else {
                        continue;
                    };
                    match action.as_str() {
                        "start" | "unpause" | "restart" => self.ensure_stats(&id),
                        "die" | "destroy" => {
                            lock(&self.inner.containers).stats.remove(&id);
                        }
                        _ => {}
                    }
                    if matches!(
                        action.as_str(),
                        "start" | "die" | "pause" | "unpause" | "oom"
                    ) {
                        if let Ok(doc) = self.inspect(&id).await {
                            let c = self.view(&doc);
                            if c.managed {
                                let kind = if action == "oom" {
                                    "container.oom".to_owned()
                                } else {
                                    format!("container.{}", c.status.as_str())
                                };
                                self.container_event(&kind, &c);
                            }
                        }
                    }
                }
            }
            lock(&self.inner.containers).stats.clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Re-export so the API layer names one Bytes type.
pub mod bytes_of {
    pub use hyper::body::Bytes;
}
