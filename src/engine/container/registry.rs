//! The container engine: containers through the Docker Engine API, managed
//! like VMs (same errors, jobs, one operation at a time per container,
//! events, the same resource fields). The engine is the source of truth
//! for container state; libgo marks what it owns with labels and keeps
//! adoptions in SQLite. This file: the engine itself, lookups and views.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bollard::query_parameters as q;
use serde_json::Value;
use uuid::Uuid;

use crate::docker::{self, DockerBackend, DockerError, LABEL_AGENT, LABEL_ID, LABEL_TAGS};
use crate::engine::core::{Core, JobTarget, Requester};
use crate::engine::error::{EngineError, Result};
use crate::engine::faults::FailSteps;
use crate::engine::sample::Samples;
use crate::model::{Container, ContainerStatus, IoLimits, MountSpec, PortMapping, Target};
use crate::sync::lock;

/// What the container engine owns besides the shared core.
pub struct ContainerShared {
    pub(crate) core: Arc<Core>,
    pub(crate) docker: DockerBackend,
    pub(crate) state: Mutex<ContainerState>,
    /// Failures to inject on purpose (a testing aid; empty unless
    /// `LIBGO_TEST_FAIL_STEP` was set when the daemon started).
    pub(crate) faults: FailSteps,
}

/// The Docker backend. Cheap to clone.
#[derive(Clone)]
pub struct ContainerEngine {
    pub(crate) inner: Arc<ContainerShared>,
}

impl From<DockerError> for EngineError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Unavailable { .. } => EngineError::Unavailable(e.to_string()),
            DockerError::NotFound(m) => EngineError::NotFound(m),
            DockerError::Conflict(m) => EngineError::Conflict(m),
            DockerError::Invalid(m) => EngineError::Invalid(m),
            DockerError::Engine(m) => EngineError::failed(m),
        }
    }
}

/// The engine's state as a container status.
pub fn status_of(state: &str) -> ContainerStatus {
    match state {
        "running" => ContainerStatus::Running,
        "paused" => ContainerStatus::Paused,
        "restarting" => ContainerStatus::Starting,
        "removing" => ContainerStatus::Deleting,
        "dead" => ContainerStatus::Crashed,
        "created" | "exited" => ContainerStatus::Stopped,
        _ => ContainerStatus::Error,
    }
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
    engine: ContainerEngine,
    engine_id: String,
}

impl Drop for CGuard {
    fn drop(&mut self) {
        lock(&self.engine.inner.state).busy.remove(&self.engine_id);
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl ContainerEngine {
    pub fn new(core: Arc<Core>) -> ContainerEngine {
        let docker = DockerBackend::new(core.cfg.docker_socket.clone());
        ContainerEngine {
            inner: Arc::new(ContainerShared {
                core,
                docker,
                state: Mutex::new(ContainerState::default()),
                faults: FailSteps::from_env(),
            }),
        }
    }
}

impl ContainerEngine {
    pub(crate) fn docker(&self) -> std::result::Result<bollard::Docker, DockerError> {
        self.inner.docker.client()
    }

    pub(crate) fn dmap(&self, what: &str, e: bollard::errors::Error) -> EngineError {
        self.inner.docker.map(what, e).into()
    }

    /// A container view from the engine's inspect document.
    pub(crate) fn view(&self, doc: &Value) -> Container {
        let labels: HashMap<String, String> = doc["Config"]["Labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default();
        let engine_id = s(&doc["Id"]);
        let adopted = self.inner.core.store.adopted(&engine_id).ok().flatten();
        let managed = labels.get(LABEL_AGENT) == Some(&self.inner.core.node) || adopted.is_some();
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
                    cores: crate::host::pinning::parse_cpu_list(c),
                    emulator_cores: None,
                }),
            io_limits: (io != IoLimits::default()).then_some(io),
            tags,
            node: self.inner.core.node.clone(),
            managed,
            created_at: s(&doc["Created"]),
        }
    }

    pub(crate) async fn inspect(&self, key: &str) -> Result<Value> {
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
    pub async fn find(&self, key: &str) -> Result<Container> {
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
            let all = self.list(true).await?;
            return all
                .into_iter()
                .find(|c| c.id == id)
                .ok_or_else(|| EngineError::NotFound(format!("Container not found: {key}.")));
        }
        // An engine id or name (`..` and `.` never reach an engine path).
        if docker::check_name("container", key).is_err() {
            return Err(EngineError::Invalid(
                "Invalid UUID format: expected a container id or name.".into(),
            ));
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
    pub async fn list(&self, all: bool) -> Result<Vec<Container>> {
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
            let mine = labels.get(LABEL_AGENT) == Some(&self.inner.core.node)
                || self.inner.core.store.adopted(&id).ok().flatten().is_some();
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
    pub(crate) fn claim(&self, c: &Container, job_id: Uuid, kind: &str) -> Result<CGuard> {
        if !c.managed {
            return Err(EngineError::Forbidden(format!(
                "Container {} was not created by libgo; adopt it first (container {}).",
                c.name, c.engine_id
            )));
        }
        self.claim_slot(&c.engine_id, c.id, job_id, kind)
    }

    /// The slot of `engine_id` (libgo id `id`), for job `job_id`.
    pub(crate) fn claim_slot(
        &self,
        engine_id: &str,
        id: Uuid,
        job_id: Uuid,
        kind: &str,
    ) -> Result<CGuard> {
        let mut st = lock(&self.inner.state);
        if let Some((job_id, job_type)) = st.busy.get(engine_id).cloned() {
            return Err(EngineError::Busy {
                what: format!("Container {id}"),
                job_id,
                job_type,
            });
        }
        st.busy
            .insert(engine_id.to_owned(), (job_id, kind.to_owned()));
        Ok(CGuard {
            engine: self.clone(),
            engine_id: engine_id.to_owned(),
        })
    }

    /// Records a one-task job on a container.
    pub(crate) fn container_job(
        &self,
        job_id: Uuid,
        kind: &str,
        c: &Container,
        requester: &Requester,
    ) -> Result<(Arc<crate::jobs::JobHandle>, crate::engine::core::JobCtx)> {
        self.inner.core.start_single(
            job_id,
            kind,
            JobTarget::Container(c.id),
            c.name.clone(),
            requester,
        )
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    pub(crate) fn container_event(&self, kind: &str, c: &Container) {
        self.inner.core.events.emit(
            kind,
            Target::Container(c.id),
            Some(c.name.clone()),
            Some(c.status.as_str().into()),
        );
    }
}
