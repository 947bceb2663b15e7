//! Containers and what the container engine holds next to them: images,
//! networks, volumes; and instances, the VMs and containers listed together.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{CpuPinning, IoLimits, Target};

/// A container's status, read from the container engine (which owns it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Created or exited.
    Stopped,
    /// Restarting.
    Starting,
    Running,
    Paused,
    /// Being removed.
    Deleting,
    /// Dead: the engine could not stop or remove it cleanly.
    Crashed,
    /// A state the engine reports that libgo does not know.
    Error,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Stopped => "stopped",
            ContainerStatus::Starting => "starting",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Deleting => "deleting",
            ContainerStatus::Crashed => "crashed",
            ContainerStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<ContainerStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// A published port: `container_port` inside, `host_port` on the host
/// (any free one when absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// `tcp` (default) or `udp`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "tcp".into()
}

/// A volume or host directory mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// A volume name, or an absolute host path for a bind mount.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// `POST /api/v1/containers` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContainerRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub image: String,
    /// The command and its arguments (the image's default when absent).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: std::collections::HashMap<String, String>,
    #[serde(default, deserialize_with = "super::common::objects")]
    pub ports: Vec<PortMapping>,
    #[serde(default, deserialize_with = "super::common::objects")]
    pub mounts: Vec<MountSpec>,
    /// A network to attach to (the engine's default bridge when absent).
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub labels: std::collections::HashMap<String, String>,
    /// `no` (default), `always`, `unless-stopped`, `on-failure`.
    #[serde(default)]
    pub restart_policy: Option<String>,
    /// CPU quota in CPUs.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Cores the container may run on (cpuset).
    #[serde(default, deserialize_with = "super::common::object")]
    pub cpu_pinning: Option<CpuPinning>,
    /// Per-device throttles on the disk that holds the engine's data.
    #[serde(default, deserialize_with = "super::common::object")]
    pub io_limits: Option<IoLimits>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Start it once created.
    #[serde(default)]
    pub start: bool,
}

/// A container as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Container {
    /// libgo's id (a UUID; derived from the engine id for containers libgo did not create).
    pub id: Uuid,
    /// The engine's id.
    pub engine_id: String,
    pub name: String,
    pub image: String,
    /// In the VM vocabulary: `running`, `paused`, `stopped`, `starting` (restarting), `deleting`, `crashed` (dead), `creating`.
    pub status: ContainerStatus,
    /// The engine's own state and status text.
    pub engine_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub command: Vec<String>,
    pub ports: Vec<PortMapping>,
    pub mounts: Vec<MountSpec>,
    pub networks: Vec<String>,
    pub labels: std::collections::HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limits: Option<IoLimits>,
    pub tags: Vec<String>,
    pub node: String,
    /// Whether libgo created (or adopted) it; others are read-only.
    pub managed: bool,
    pub created_at: String,
}

/// A page of containers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ContainerList {
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

/// `PUT /containers/{id}/resources` and `PATCH /containers/{id}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateContainerRequest {
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default, deserialize_with = "super::common::object")]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default, deserialize_with = "super::common::object")]
    pub io_limits: Option<IoLimits>,
}

/// `POST /containers/{id}/exec`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: std::collections::HashMap<String, String>,
    /// Seconds before the command is abandoned (default 60).
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// An image in the engine.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: String,
    pub tags: Vec<String>,
    pub size: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<Image>,
    pub total_count: usize,
}

/// `POST /images/pull`, `/images/{id}/tag`, `/images/{id}/push`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// `repository[:tag]`.
    pub image: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkRequest {
    pub name: String,
    /// `bridge` (default) or another engine driver.
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub labels: std::collections::HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub internal: bool,
    /// Containers attached (engine ids).
    pub containers: Vec<String>,
    pub labels: std::collections::HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkList {
    pub networks: Vec<Network>,
    pub total_count: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConnect {
    /// A container id (libgo or engine) or name.
    pub container: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub labels: std::collections::HashMap<String, String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeList {
    pub volumes: Vec<Volume>,
    pub total_count: usize,
}

/// One entry of `/api/v1/instances`: a VM or a container.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: Uuid,
    pub name: String,
    /// `vm` or `container`.
    pub backend: String,
    /// The backend's status (`running`, `stopped`, ...).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<f64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    pub node: String,
    pub tags: Vec<String>,
    pub created_at: String,
    /// The full resource.
    #[schema(value_type = String)]
    pub link: Target,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
    /// Why the containers are missing from the list (the engine is not
    /// reachable); absent when they are listed, and with `backend=vm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers_error: Option<String>,
}
