//! Templates: reusable defaults for VMs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{BootSpec, CloneMode, CpuPinning, IoLimits, NetworkSpec};

/// Reusable defaults for VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limits: Option<IoLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// cloud-init user data given to every VM made from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /templates` body; `PATCH /templates/{id}` takes the same fields, all optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub base_image: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub disk_size: Option<u64>,
    #[serde(default)]
    pub clone: Option<CloneMode>,
    #[serde(default)]
    pub cpu_pinning: Option<CpuPinning>,
    #[serde(default)]
    pub io_limits: Option<IoLimits>,
    #[serde(default)]
    pub boot: Option<BootSpec>,
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub user_data: Option<String>,
}

/// A page of templates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

/// `DELETE /templates` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDeleteTemplates {
    #[serde(alias = "templateIds")]
    pub template_ids: Vec<String>,
}
