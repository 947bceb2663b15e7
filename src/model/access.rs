//! Users, login sessions, API tokens and the audit trail.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::auth::Role;

/// `POST /api/v1/login`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(min_length = 1, max_length = 32)]
    pub username: String,
    #[schema(min_length = 1, max_length = 1024)]
    pub password: String,
}

/// A login session: send `Authorization: Bearer <token>` until it expires.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Session {
    pub token: String,
    pub token_type: String,
    /// Seconds since the epoch.
    pub expires_at: i64,
    pub username: String,
    pub role: Role,
}

/// The caller as the agent sees it.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct WhoAmI {
    /// `uid:0`, `user:alice`, `token:<id>`.
    pub caller: String,
    pub role: Role,
    /// `unix`, `unix-ro` or `tcp`.
    pub transport: String,
    /// When the login session ends (seconds since the epoch), for sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A user (never the password).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub created_at: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<User>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// 1 to 32 of a-z, 0-9, `_`, `.`, `-`, starting with a letter or `_`.
    #[schema(pattern = "^[a-z_][a-z0-9_.-]{0,31}$")]
    pub username: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    pub role: Role,
}

/// `PATCH /api/v1/users/{username}`: a new password revokes the user's
/// sessions.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUserRequest {
    #[serde(default)]
    #[schema(min_length = 8, max_length = 1024)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// No control characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    /// At most the maker's own role.
    pub role: Role,
    /// Seconds until it expires; absent: never.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3_153_600_000u64)]
    pub expires_in: Option<u64>,
    /// Its calls are not counted against the rate limits: the token of an
    /// aggregator, which applies the budgets to its own callers.
    #[serde(default)]
    pub unlimited: bool,
}

/// An API token (its secret is shown only when it is made).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    /// Who made it: `user:alice`, `uid:0`.
    pub owner: String,
    pub role: Role,
    pub created_at: String,
    /// Seconds since the epoch; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Its calls are not counted against the rate limits.
    #[serde(default)]
    pub unlimited: bool,
}

/// A new API token with its secret, shown this once.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    /// `Authorization: Bearer <secret>`.
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

/// One mutating call.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: String,
    pub request_id: String,
    /// `uid:0`, `user:alice`, `token:<id>`, `anonymous`.
    pub actor: String,
    /// The role the call ran with; empty when none.
    pub role: String,
    /// `unix`, `unix-ro` or `tcp`.
    pub transport: String,
    pub method: String,
    pub path: String,
    /// The object acted on (`vms/web1`) or the collection (`vms`).
    pub target: String,
    pub status: u16,
    /// `succeeded`, `failed` or `denied`.
    pub outcome: String,
    pub duration_ms: u64,
}

/// A page of the audit trail, newest first.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}
