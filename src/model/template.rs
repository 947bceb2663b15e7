//! Templates: reusable defaults for VMs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::VmSpec;

/// Reusable defaults for VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    #[serde(flatten)]
    #[schema(inline)]
    pub spec: VmSpec,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /templates` body; `PATCH /templates/{id}` takes the same fields, all optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    #[schema(inline)]
    pub spec: VmSpec,
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
