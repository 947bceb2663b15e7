//! Login, logout, users and API tokens.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::access::{AccessState, Caller};
use super::error::{ApiError, ApiResult};
use super::extract::JsonBody;
use crate::auth::{self, AuthError};
use crate::model::{
    CreateTokenRequest, CreateUserRequest, CreatedToken, ErrorBody, LoginRequest, PatchUserRequest,
    Session, Token, TokenList, User, UserList, WhoAmI,
};

/// Who the audit trail names for a call whose caller is not yet known
/// (a login names the user it was for).
#[derive(Debug, Clone)]
pub struct AuditActor(pub String);

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let status = match &e {
            AuthError::BadCredentials | AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AuthError::Invalid(_) => StatusCode::BAD_REQUEST,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::Conflict(_) => StatusCode::CONFLICT,
            AuthError::Store(_) | AuthError::Internal(_) => {
                tracing::error!(error = %e, "access control failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match &e {
            AuthError::BadCredentials => "Wrong user name or password.".to_owned(),
            other => other.to_string(),
        };
        ApiError::new(status, message)
    }
}

fn user(u: auth::User) -> User {
    User {
        username: u.username,
        role: u.role,
        created_at: u.created_at,
    }
}

fn token(t: auth::Token) -> Token {
    Token {
        id: t.id,
        name: t.name,
        owner: t.owner,
        role: t.role,
        created_at: t.created_at,
        expires_at: t.expires_at,
        unlimited: t.unlimited,
    }
}

/// Runs slow password hashing off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> auth::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Into::into)
}

/// Log in.
///
/// Exchanges a user name and password for a session token (a JWT) to send as `Authorization:
/// Bearer <token>`. 401 for a wrong name or password.
#[utoipa::path(post, path = "/api/v1/login", tag = "access", request_body = LoginRequest,
    responses((status = 200, body = Session), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody, description = "Wrong user name or password")))]
pub async fn login(
    State(st): State<Arc<AccessState>>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Response {
    let actor = AuditActor(if auth::valid_username(&req.username) {
        format!("user:{}", req.username)
    } else {
        "anonymous".into()
    });
    let username = req.username.clone();
    let auth = st.auth.clone();
    let result = blocking(move || auth.login(&req.username, &req.password)).await;
    let mut resp = match result {
        Ok(s) => Json(Session {
            token: s.token,
            token_type: "Bearer".into(),
            expires_at: s.expires_at,
            username,
            role: s.role,
        })
        .into_response(),
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(actor);
    resp
}

/// Log out.
///
/// Ends the login session this call is made with.
#[utoipa::path(post, path = "/api/v1/logout", tag = "access",
    responses((status = 204, description = "The session is revoked"),
              (status = 409, body = ErrorBody, description = "The call was not made with a login session (a socket, an API token)")))]
pub async fn logout(
    State(st): State<Arc<AccessState>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<StatusCode> {
    let Some((jti, exp)) = &caller.session else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Only a login session can be logged out; revoke API tokens with DELETE /api/v1/tokens/{id}.",
        ));
    };
    st.auth.logout(jti, *exp)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who is calling.
///
/// The caller, its role and transport.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "access", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(Extension(caller): Extension<Caller>) -> ApiResult<Json<WhoAmI>> {
    let role = caller
        .role
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "No role."))?;
    Ok(Json(WhoAmI {
        caller: caller.label,
        role,
        transport: caller.transport.as_str().into(),
        expires_at: caller.session.map(|(_, exp)| exp),
    }))
}

/// List users.
///
/// Every user with its role (never their passwords).
#[utoipa::path(get, path = "/api/v1/users", tag = "access", responses((status = 200, body = UserList)))]
pub async fn list_users(State(st): State<Arc<AccessState>>) -> ApiResult<Json<UserList>> {
    Ok(Json(UserList {
        users: st.auth.users()?.into_iter().map(user).collect(),
    }))
}

/// Create a user.
///
/// Creates a user with a password (stored as an argon2 hash) and a role. 409 when the name is
/// taken.
#[utoipa::path(post, path = "/api/v1/users", tag = "access", request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(st): State<Arc<AccessState>>,
    JsonBody(req): JsonBody<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let auth = st.auth.clone();
    let u = blocking(move || auth.create_user(&req.username, &req.password, req.role)).await?;
    Ok((StatusCode::CREATED, Json(user(u))))
}

/// Get a user.
///
/// One user with its role.
#[utoipa::path(get, path = "/api/v1/users/{username}", tag = "access",
    params(("username" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(st): State<Arc<AccessState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(user(st.auth.user(&name)?)))
}

/// Change a user.
///
/// Changes a user's password or role; a new password revokes their sessions.
#[utoipa::path(patch, path = "/api/v1/users/{username}", tag = "access", request_body = PatchUserRequest,
    params(("username" = String, Path)),
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_user(
    State(st): State<Arc<AccessState>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PatchUserRequest>,
) -> ApiResult<Json<User>> {
    let auth = st.auth.clone();
    let patch = auth::UserPatch {
        password: req.password,
        role: req.role,
    };
    let u = blocking(move || auth.update_user(&name, &patch)).await?;
    Ok(Json(user(u)))
}

/// Delete a user.
///
/// Removes a user, their sessions and the API tokens they made.
#[utoipa::path(delete, path = "/api/v1/users/{username}", tag = "access",
    params(("username" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody)))]
pub async fn delete_user(
    State(st): State<Arc<AccessState>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.auth.delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// List API tokens.
///
/// Every API token (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "access", responses((status = 200, body = TokenList)))]
pub async fn list_tokens(State(st): State<Arc<AccessState>>) -> ApiResult<Json<TokenList>> {
    Ok(Json(TokenList {
        tokens: st.auth.tokens()?.into_iter().map(token).collect(),
    }))
}

/// Create an API token.
///
/// Makes a long-lived API token for a machine; its secret is in this answer only (the agent
/// keeps a SHA-256 of it).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "access", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody)))]
pub async fn create_token(
    State(st): State<Arc<AccessState>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let maker_role = caller
        .role
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "No role."))?;
    let (t, secret) = st.auth.create_token(
        &caller.label,
        maker_role,
        &req.name,
        req.role,
        req.expires_in,
        req.unlimited,
    )?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: token(t),
            secret,
        }),
    ))
}

/// Get an API token.
///
/// One API token (never its secret).
#[utoipa::path(get, path = "/api/v1/tokens/{id}", tag = "access",
    params(("id" = String, Path)),
    responses((status = 200, body = Token), (status = 404, body = ErrorBody)))]
pub async fn get_token(
    State(st): State<Arc<AccessState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Token>> {
    Ok(Json(token(st.auth.token(&id)?)))
}

/// Revoke an API token.
///
/// Revokes an API token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "access",
    params(("id" = String, Path)),
    responses((status = 204, description = "Revoked"), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(st): State<Arc<AccessState>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.auth.revoke_token(&id)?;
    Ok(StatusCode::NO_CONTENT)
}
