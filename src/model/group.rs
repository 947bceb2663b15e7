//! VM groups: named sets of VMs, acted on together.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::VmStatus;

/// A named set of VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    /// DNS label.
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// The members' ids, in the order they joined.
    pub vms: Vec<Uuid>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /groups` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Members: VM ids or names.
    #[serde(default)]
    pub vms: Option<Vec<String>>,
}

/// `PUT /groups/{name}` body: the properties it names replace the group's.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroupRequest {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// The whole member list: VM ids or names.
    #[serde(default)]
    pub vms: Option<Vec<String>>,
}

/// A page of groups.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<Group>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    pub total_count: usize,
}

/// A member of a group, summarized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupMember {
    pub id: Uuid,
    pub name: String,
    pub status: VmStatus,
    /// `/api/v1/vms/{id}`.
    pub link: String,
}

/// `GET /groups/{name}/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupMembers {
    pub vms: Vec<GroupMember>,
}
