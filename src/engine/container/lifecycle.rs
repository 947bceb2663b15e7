//! Container lifecycle: create, actions, delete, resource updates and
//! adoption, each a job where it changes something; which action each
//! status allows is in `plan`.

use bollard::query_parameters as q;
use serde_json::{json, Value};
use uuid::Uuid;

use super::registry::{CGuard, ContainerEngine};
use crate::docker::{self, LABEL_AGENT, LABEL_ID, LABEL_TAGS};
use crate::engine::core::{JobCtx, JobTarget, Requester, Submitted};
use crate::engine::error::{chain, EngineError, Result};
use crate::engine::faults::After;
use crate::engine::vm::record as vm;
use crate::model::{
    Container, ContainerStatus, CreateContainerRequest, IoLimits, UpdateContainerRequest,
};
use crate::rollback::Rollback;
use crate::sync::lock;

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
    pub fn as_str(self) -> &'static str {
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

/// What a container action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerOutcome {
    Done(CAction),
    AlreadyThere(ContainerStatus),
}

/// What a container action answers.
#[derive(Debug, Clone)]
pub struct ContainerActionDone {
    pub id: Uuid,
    pub status: ContainerStatus,
    pub outcome: ContainerOutcome,
    pub job_id: Uuid,
}

/// What a create job is given: everything checked, nothing done yet.
struct CreatePlan {
    name: String,
    /// libgo's id for the container (also its label).
    id: Uuid,
    config: bollard::models::ContainerCreateBody,
    start: bool,
}

/// Which actions each status allows: `Ok(Some(outcome))` = nothing to do,
/// `Ok(None)` = do it, `Err` = refused.
pub fn plan(
    action: CAction,
    status: ContainerStatus,
) -> std::result::Result<Option<ContainerOutcome>, String> {
    use CAction as A;
    use ContainerStatus as S;
    match (action, status) {
        (A::Start, S::Running) | (A::Unpause, S::Running) => {
            Ok(Some(ContainerOutcome::AlreadyThere(S::Running)))
        }
        (A::Stop, S::Stopped) => Ok(Some(ContainerOutcome::AlreadyThere(S::Stopped))),
        (A::Pause, S::Paused) => Ok(Some(ContainerOutcome::AlreadyThere(S::Paused))),
        (A::Unpause, s) if s != S::Paused => Err(format!(
            "Container is {}, cannot {}.",
            s.as_str(),
            action.as_str()
        )),
        (A::Kill | A::Pause, s) if s != S::Running && s != S::Paused => Err(format!(
            "Container is {}, cannot {}.",
            s.as_str(),
            action.as_str()
        )),
        _ => Ok(None),
    }
}

impl ContainerEngine {
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
            .ok_or_else(|| EngineError::failed(format!("no device name for {dev}")))?;
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
            // A CPU quota cannot exceed the host's CPUs (the engine refuses).
            let host = std::fs::read_to_string("/sys/devices/system/cpu/online")
                .map(|l| crate::host::pinning::parse_cpu_list(&l).len() as u32)
                .unwrap_or(1)
                .max(1);
            let max = self.inner.core.cfg.max_vcpus.min(host);
            if v == 0 || v > max {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: vcpus must be between 1 and {max}."
                )));
            }
            hc.insert("NanoCpus".into(), json!(v as i64 * 1_000_000_000));
        }
        if let Some(m) = memory {
            if !(6..=self.inner.core.cfg.max_memory_mib).contains(&m) {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: memory must be between 6 and {} MiB.",
                    self.inner.core.cfg.max_memory_mib
                )));
            }
            hc.insert("Memory".into(), json!((m << 20) as i64));
        }
        if let Some(p) = pin {
            crate::engine::vm::resources::check_pinning(p)?;
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
    /// Each step is on an undo stack: a create that fails or is cancelled
    /// removes what it made before its job ends. Actions and updates are one
    /// engine call each, so they need none.
    pub async fn create(
        &self,
        req: CreateContainerRequest,
        requester: &Requester,
    ) -> Result<Submitted<Container>> {
        if let Some(name) = &req.name {
            vm::validate_name(name)?;
            if name.len() < 2 {
                return Err(EngineError::Invalid(
                    "Invalid parameter: a container name has at least 2 characters.".into(),
                ));
            }
        }
        vm::validate_tags(&req.tags)?;
        if req.image.is_empty() {
            return Err(EngineError::Invalid(
                "Invalid parameter: image must not be empty.".into(),
            ));
        }
        docker::check_image_ref(&req.image)?;
        if req
            .command
            .as_ref()
            .and_then(|c| c.first())
            .is_some_and(String::is_empty)
        {
            return Err(EngineError::Invalid(
                "Invalid parameter: command's first item (the program) must not be empty.".into(),
            ));
        }
        if let Some(n) = &req.network {
            docker::check_name("network", n)?;
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
                docker::check_name("volume", &m.source)?;
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
        labels.insert(LABEL_AGENT.into(), self.inner.core.node.clone());
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
        // A container started with a memory limit holds it: admitted (and
        // counted until the job ends, when the engine shows it running)
        // before anything is made.
        let room = match (req.start, req.memory) {
            (true, Some(m)) => Some(self.admit(id, &name, m).await?),
            _ => None,
        };
        let (handle, ctx) = self.core().start_single(
            Uuid::new_v4(),
            "container.create",
            JobTarget::Container(id),
            name.clone(),
            requester,
        )?;
        let agent = self.clone();
        let plan = CreatePlan {
            name,
            id,
            config,
            start: req.start,
        };
        Ok(self.core().spawn_job(handle, None, async move {
            let _room = room;
            let mut undo = Rollback::new();
            let mut slot = None;
            match agent.create_steps(plan, &ctx, &mut undo, &mut slot).await {
                Ok(c) => {
                    undo.disarm();
                    drop(slot);
                    agent.container_event("container.created", &c);
                    Ok(c)
                }
                Err(e) => {
                    ctx.log(format!("undoing the create: {}", chain(&e)));
                    // The job ends (and a synchronous caller gets its answer)
                    // only once the container is gone; the slot is held until
                    // then, so no other operation acts on it meanwhile.
                    undo.unwind().await;
                    drop(slot);
                    Err(e)
                }
            }
        }))
    }

    /// The steps of a create; each pushes its undo on `undo` as soon as it
    /// has succeeded. The engine's create is the only step that needs an
    /// undo of its own: a forced removal also stops what the start
    /// started, and the stats stream of a started container ends with it.
    async fn create_steps(
        &self,
        plan: CreatePlan,
        ctx: &JobCtx,
        undo: &mut Rollback,
        slot: &mut Option<CGuard>,
    ) -> Result<Container> {
        let CreatePlan {
            name,
            id,
            config,
            start,
        } = plan;
        let name = name.as_str();
        ctx.check()?;
        let d = self.docker()?;
        let created = d
            .create_container(
                Some(q::CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                config,
            )
            .await
            .map_err(|e| self.dmap(&format!("creating container {name}"), e))?;
        undo.push_async("container", self.clone().remove_made(created.id.clone()));
        ctx.log(format!("created {}", created.id));
        // One operation at a time: nothing else acts on the container
        // while it is being started, or being removed again.
        *slot = Some(self.claim_slot(&created.id, id, ctx.handle.id(), "container.create")?);
        self.inject(name, After::Create, ctx)?;
        ctx.check()?;
        if start {
            d.start_container(&created.id, None::<q::StartContainerOptions>)
                .await
                .map_err(|e| self.dmap(&format!("starting container {name}"), e))?;
            ctx.log("started");
            self.inject(name, After::Start, ctx)?;
            ctx.check()?;
        }
        Ok(self.view(&self.inspect(&created.id).await?))
    }

    /// Undoes a create: removes the container (stopping it if it runs, with
    /// its anonymous volumes) and forgets its stats.
    async fn remove_made(self, engine_id: String) {
        let removed = match self.docker() {
            Ok(d) => d
                .remove_container(
                    &engine_id,
                    Some(q::RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| self.dmap(&format!("removing container {engine_id}"), e)),
            Err(e) => Err(e.into()),
        };
        match removed {
            Ok(()) | Err(EngineError::NotFound(_)) => {}
            Err(e) => {
                tracing::error!(container = %engine_id, error = %chain(&e), "could not undo a create")
            }
        }
        lock(&self.inner.state).stats.remove(&engine_id);
    }

    /// Admission of container `id` (`name`) holding `memory_mib`: refused
    /// with 409 when the host's limit has no room for it, else counted
    /// until the permit is dropped.
    async fn admit(
        &self,
        id: Uuid,
        name: &str,
        memory_mib: u64,
    ) -> Result<crate::engine::capacity::Permit> {
        let demand = crate::engine::capacity::Demand {
            memory_mib,
            vcpus: 0,
        };
        self.core()
            .admission
            .reserve(id, demand)
            .await
            .map_err(|s| {
                s.refuse(&format!(
                    "container {name} with a memory limit of {memory_mib} MiB"
                ))
            })
    }

    /// The testing aid of `engine::faults`: fails or cancels the create of
    /// `name` right after `step` when the daemon was told to.
    fn inject(&self, name: &str, step: After, ctx: &JobCtx) -> Result<()> {
        self.inner.faults.inject(name, step, &self.core().jobs, ctx)
    }

    /// `inject` for an operation that is no job (nothing to cancel).
    fn fail_after(&self, name: &str, step: After) -> Result<()> {
        self.inner.faults.fail_after(name, step)
    }

    /// start, stop (graceful, `timeout` s), restart, kill, pause, unpause.
    pub async fn action(
        &self,
        key: &str,
        action: CAction,
        timeout: Option<u64>,
        requester: &Requester,
    ) -> Result<Submitted<ContainerActionDone>> {
        let c = self.find(key).await?;
        let kind = format!("container.{}", action.as_str());
        let job_id = Uuid::new_v4();
        let guard = self.claim(&c, job_id, &kind)?;
        let (handle, _ctx) = self.container_job(job_id, &kind, &c, requester)?;
        let agent = self.clone();
        let t = timeout.unwrap_or(10).min(3600) as i32;
        Ok(self.core().spawn_job(handle, None, async move {
            let _guard = guard;
            let d = agent.docker()?;
            let id = c.engine_id.as_str();
            let skip = plan(action, c.status).map_err(EngineError::Conflict)?;
            let starts = matches!(action, CAction::Start | CAction::Restart)
                && !matches!(
                    c.status,
                    ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Starting
                );
            let _room = match c.memory {
                Some(m) if starts && skip.is_none() => Some(agent.admit(c.id, &c.name, m).await?),
                _ => None,
            };
            let outcome = match skip {
                Some(outcome) => outcome,
                None => {
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
                    ContainerOutcome::Done(action)
                }
            };
            let now = agent.view(&agent.inspect(id).await?);
            agent.container_event(&format!("container.{}", now.status.as_str()), &now);
            Ok(ContainerActionDone {
                id: now.id,
                status: now.status,
                outcome,
                job_id,
            })
        }))
    }

    /// Removes a container (`force` stops a running one first).
    ///
    /// No undo stack here: the engine's removal (stop included, with
    /// `force`) is one call that either happens or not, and it comes first.
    /// What follows it (the adoption row, the stats samples) is clean-up
    /// of the container that is gone, done whatever happens: undoing it
    /// would only bring back records of nothing.
    pub async fn delete(
        &self,
        key: &str,
        force: bool,
        requester: &Requester,
    ) -> Result<Submitted<Container>> {
        let c = self.find(key).await?;
        let job_id = Uuid::new_v4();
        let guard = self.claim(&c, job_id, "container.delete")?;
        if c.status == ContainerStatus::Running && !force {
            drop(guard);
            return Err(EngineError::Conflict(format!(
                "Container {} is running: stop it first or delete with ?force=true.",
                c.name
            )));
        }
        let (handle, ctx) = self.container_job(job_id, "container.delete", &c, requester)?;
        let agent = self.clone();
        Ok(self.core().spawn_job(handle, None, async move {
            let _guard = guard;
            ctx.check()?;
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
            if let Err(e) = agent.inner.core.store.unadopt(&c.engine_id) {
                // A stale row names an engine id that never comes back.
                tracing::warn!(container = %c.engine_id, error = %e, "could not forget the adoption");
            }
            lock(&agent.inner.state).stats.remove(&c.engine_id);
            agent.container_event("container.deleted", &c);
            Ok(c)
        }))
    }

    /// Changes resources of a container, live (the engine's update).
    pub async fn update(
        &self,
        key: &str,
        req: UpdateContainerRequest,
        requester: &Requester,
    ) -> Result<Submitted<Container>> {
        let c = self.find(key).await?;
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
        // A running container's memory limit may grow only within the host's.
        let running = matches!(
            c.status,
            ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Starting
        );
        let room = match req.memory {
            Some(m) if running && c.memory.is_none_or(|now| m > now) => {
                Some(self.admit(c.id, &c.name, m).await?)
            }
            _ => None,
        };
        let job_id = Uuid::new_v4();
        let guard = self.claim(&c, job_id, "container.update")?;
        let (handle, _ctx) = self.container_job(job_id, "container.update", &c, requester)?;
        let agent = self.clone();
        Ok(self.core().spawn_job(handle, None, async move {
            let _guard = guard;
            let _room = room;
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

    /// Marks a container libgo did not create as managed. Two steps: the
    /// adoption row, then the container as the engine has it now; if that
    /// fails (the container went away meanwhile), the row goes again.
    pub async fn adopt(&self, key: &str) -> Result<Container> {
        let c = self.find(key).await?;
        let mut undo = Rollback::new();
        if !c.managed {
            let store = self.inner.core.store.clone();
            store.adopt(&c.engine_id, c.id)?;
            let engine_id = c.engine_id.clone();
            undo.push("adoption row", move || {
                if let Err(e) = store.unadopt(&engine_id) {
                    tracing::error!(container = %engine_id, error = %e, "could not undo an adoption");
                }
            });
        }
        self.fail_after(&c.name, After::Adopt)?;
        let now = self.find(&c.engine_id).await?;
        undo.disarm();
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks every (status, action) pair.
    #[test]
    fn every_status_action_pair() {
        use CAction as A;
        use ContainerStatus as S;
        let statuses = [
            S::Stopped,
            S::Starting,
            S::Running,
            S::Paused,
            S::Deleting,
            S::Crashed,
            S::Error,
        ];
        let actions = [A::Start, A::Stop, A::Restart, A::Kill, A::Pause, A::Unpause];
        for s in statuses {
            for a in actions {
                let p = plan(a, s);
                let expected_skip = matches!(
                    (a, s),
                    (A::Start | A::Unpause, S::Running)
                        | (A::Stop, S::Stopped)
                        | (A::Pause, S::Paused)
                );
                // Unpausing what is neither paused nor running is refused
                // here (the engine would answer "not paused").
                let expected_refuse = (matches!(a, A::Kill | A::Pause)
                    && !matches!(s, S::Running | S::Paused))
                    || (a == A::Unpause && !matches!(s, S::Running | S::Paused));
                assert_eq!(matches!(p, Ok(Some(_))), expected_skip, "{a:?} {s:?}");
                assert_eq!(p.is_err(), expected_refuse, "{a:?} {s:?}");
            }
        }
        assert_eq!(CAction::parse("poweroff"), Some(A::Kill));
    }
}
