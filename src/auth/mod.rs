//! Who may call the API: users with argon2 password hashes, login sessions
//! as signed JWTs, long-lived API tokens stored hashed, and roles. Knows
//! nothing of HTTP; the API maps `AuthError` to status codes.

mod limit;
mod password;
mod session;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, TokenRow, UserRow};
use crate::sync::{read, write};

pub use limit::{RateLimiter, Verdict};

/// What a caller may do; each role includes the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but users, tokens and the audit trail.
    Viewer,
    /// Creates, changes, powers and deletes instances and their objects.
    Operator,
    /// Everything, users and tokens included.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong user name or password (the same answer for both).
    #[error("wrong user name or password")]
    BadCredentials,
    /// A bearer credential that is malformed, expired, revoked or unknown.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, AuthError>;

/// An authenticated caller on the TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `user:<name>` or `token:<id>`.
    pub label: String,
    pub role: Role,
    /// The login session (JWT id and expiry) the call was made with.
    pub session: Option<(String, i64)>,
    /// A token whose calls the rate limits do not count.
    pub unlimited: bool,
}

/// A login session handed to a client.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_at: i64,
    pub role: Role,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub created_at: String,
}

/// An API token as the API lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub role: Role,
    pub created_at: String,
    pub expires_at: Option<i64>,
    pub unlimited: bool,
}

/// Changes to a user; absent fields stay.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub password: Option<String>,
    pub role: Option<Role>,
}

/// Users, tokens and sessions, cached in memory over the store.
pub struct Auth {
    store: Arc<Store>,
    keys: session::Keys,
    session_ttl: i64,
    users: RwLock<HashMap<String, UserRow>>,
    tokens: RwLock<HashMap<String, TokenRow>>,
    /// Logged-out sessions not yet expired: JWT id -> expiry.
    revoked: RwLock<HashMap<String, i64>>,
}

const TOKEN_PREFIX: &str = "lgo_";

/// The longest lifetime an API token may be given: 100 years, in seconds.
pub const MAX_TOKEN_TTL: u64 = 3_153_600_000;

/// `^[a-z_][a-z0-9_.-]{0,31}$`, as for system user names.
pub fn valid_username(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'_')
        && s.len() <= 32
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c))
}

fn check_password(p: &str) -> Result<()> {
    if !(8..=1024).contains(&p.chars().count()) {
        return Err(AuthError::Invalid(
            "A password has 8 to 1024 characters.".into(),
        ));
    }
    Ok(())
}

/// A token's name: 1 to 64 characters, none a control character.
pub fn valid_token_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

fn role_of(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| AuthError::Internal(format!("stored role {s:?} is unknown")))
}

fn user_view(u: &UserRow) -> Result<User> {
    Ok(User {
        username: u.username.clone(),
        role: role_of(&u.role)?,
        created_at: u.created_at.clone(),
    })
}

fn token_view(t: &TokenRow) -> Result<Token> {
    Ok(Token {
        id: t.id.clone(),
        name: t.name.clone(),
        owner: t.owner.clone(),
        role: role_of(&t.role)?,
        created_at: t.created_at.clone(),
        expires_at: t.expires_at,
        unlimited: t.unlimited,
    })
}

impl Auth {
    /// Loads users, tokens and revocations; the session signing key lives in
    /// `key_file` (made on first start, mode 0600).
    pub fn open(store: Arc<Store>, key_file: &Path, session_ttl_secs: u64) -> Result<Auth> {
        let keys = session::Keys::load_or_create(key_file)
            .map_err(|e| AuthError::Internal(format!("session key {}: {e}", key_file.display())))?;
        let users = store
            .users()?
            .into_iter()
            .map(|u| (u.username.clone(), u))
            .collect();
        let tokens = store
            .tokens()?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let revoked = store
            .revoked_sessions(crate::clock::unix_now())?
            .into_iter()
            .collect();
        Ok(Auth {
            store,
            keys,
            session_ttl: session_ttl_secs as i64,
            users: RwLock::new(users),
            tokens: RwLock::new(tokens),
            revoked: RwLock::new(revoked),
        })
    }

    /// Checks a user's password (slow by design: run it off the async
    /// threads) and issues a session.
    pub fn login(&self, username: &str, password: &str) -> Result<Issued> {
        let (u, p) = (username.chars().count(), password.chars().count());
        if !(1..=32).contains(&u) || !(1..=1024).contains(&p) {
            return Err(AuthError::Invalid(
                "A user name has 1 to 32 characters and a password 1 to 1024.".into(),
            ));
        }
        let user = read(&self.users).get(username).cloned();
        let Some(user) = user else {
            // The same work as for a real user, so timing does not tell
            // which names exist.
            password::burn(password);
            return Err(AuthError::BadCredentials);
        };
        if !password::verify(password, &user.hash) {
            return Err(AuthError::BadCredentials);
        }
        let role = role_of(&user.role)?;
        let now = crate::clock::unix_now();
        let expires_at = now + self.session_ttl;
        let token = self
            .keys
            .issue(&user.username, user.generation, now, expires_at)
            .map_err(|e| AuthError::Internal(format!("cannot sign a session: {e}")))?;
        Ok(Issued {
            token,
            expires_at,
            role,
        })
    }

    /// The caller a bearer credential (a session or an API token) stands for.
    pub fn authenticate(&self, bearer: &str) -> Result<Principal> {
        let now = crate::clock::unix_now();
        if let Some(rest) = bearer.strip_prefix(TOKEN_PREFIX) {
            return self.token_principal(rest, now);
        }
        let claims = self
            .keys
            .verify(bearer, now)
            .map_err(|e| AuthError::Unauthenticated(format!("Invalid session: {e}.")))?;
        if read(&self.revoked).contains_key(&claims.jti) {
            return Err(AuthError::Unauthenticated(
                "This session was logged out.".into(),
            ));
        }
        let users = read(&self.users);
        let user = users
            .get(&claims.sub)
            .filter(|u| u.generation == claims.gen)
            .ok_or_else(|| {
                AuthError::Unauthenticated(
                    "This session was revoked (password changed or user removed).".into(),
                )
            })?;
        Ok(Principal {
            label: format!("user:{}", user.username),
            role: role_of(&user.role)?,
            session: Some((claims.jti, claims.exp)),
            unlimited: false,
        })
    }

    fn token_principal(&self, rest: &str, now: i64) -> Result<Principal> {
        let bad = || AuthError::Unauthenticated("Unknown or revoked API token.".into());
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        let tokens = read(&self.tokens);
        let t = tokens.get(id).ok_or_else(bad)?;
        if !password::same_digest(&t.hash, secret) {
            return Err(bad());
        }
        if t.expires_at.is_some_and(|e| e <= now) {
            return Err(AuthError::Unauthenticated(
                "This API token has expired.".into(),
            ));
        }
        Ok(Principal {
            label: format!("token:{}", t.id),
            role: role_of(&t.role)?,
            session: None,
            unlimited: t.unlimited,
        })
    }

    /// Ends a login session before its expiry.
    pub fn logout(&self, jti: &str, expires_at: i64) -> Result<()> {
        self.store.revoke_session(jti, expires_at)?;
        let mut revoked = write(&self.revoked);
        let now = crate::clock::unix_now();
        revoked.retain(|_, exp| *exp >= now);
        revoked.insert(jti.to_owned(), expires_at);
        Ok(())
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let users = read(&self.users);
        let mut list: Vec<User> = users.values().map(user_view).collect::<Result<_>>()?;
        list.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(list)
    }

    pub fn user(&self, username: &str) -> Result<User> {
        let users = read(&self.users);
        users
            .get(username)
            .map(user_view)
            .unwrap_or_else(|| Err(AuthError::NotFound(format!("No such user: {username}"))))
    }

    /// Creates a user (hashing is slow: run it off the async threads).
    pub fn create_user(&self, username: &str, password: &str, role: Role) -> Result<User> {
        if !valid_username(username) {
            return Err(AuthError::Invalid(format!(
                "Invalid user name {username:?}: 1 to 32 of a-z, 0-9, '_', '.', '-', starting with a letter or '_'."
            )));
        }
        check_password(password)?;
        let row = UserRow {
            username: username.to_owned(),
            role: role.as_str().to_owned(),
            hash: password::hash(password).map_err(AuthError::Internal)?,
            generation: 0,
            created_at: crate::clock::now(),
        };
        let mut users = write(&self.users);
        match self.store.insert_user(&row) {
            Err(StoreError::NameTaken(_)) => {
                return Err(AuthError::Conflict(format!(
                    "User {username} already exists."
                )))
            }
            r => r?,
        }
        users.insert(row.username.clone(), row.clone());
        user_view(&row)
    }

    /// Changes a user's password or role. A new password voids the user's
    /// sessions.
    pub fn update_user(&self, username: &str, patch: &UserPatch) -> Result<User> {
        if let Some(p) = &patch.password {
            check_password(p)?;
        }
        let hash = match &patch.password {
            Some(p) => Some(password::hash(p).map_err(AuthError::Internal)?),
            None => None,
        };
        let mut users = write(&self.users);
        let mut row = users
            .get(username)
            .cloned()
            .ok_or_else(|| AuthError::NotFound(format!("No such user: {username}")))?;
        if let Some(h) = hash {
            row.hash = h;
            row.generation += 1;
        }
        if let Some(r) = patch.role {
            row.role = r.as_str().to_owned();
        }
        self.store.update_user(&row)?;
        users.insert(row.username.clone(), row.clone());
        user_view(&row)
    }

    /// Removes a user, their sessions and the tokens they created.
    pub fn delete_user(&self, username: &str) -> Result<()> {
        let owner = format!("user:{username}");
        let mut users = write(&self.users);
        let mut tokens = write(&self.tokens);
        if !users.contains_key(username) {
            return Err(AuthError::NotFound(format!("No such user: {username}")));
        }
        self.store.delete_user(username, &owner)?;
        users.remove(username);
        tokens.retain(|_, t| t.owner != owner);
        Ok(())
    }

    /// Makes an API token; the secret is returned here and never again.
    pub fn create_token(
        &self,
        owner: &str,
        owner_role: Role,
        name: &str,
        role: Role,
        ttl_secs: Option<u64>,
        unlimited: bool,
    ) -> Result<(Token, String)> {
        if !valid_token_name(name) {
            return Err(AuthError::Invalid(
                "A token name has 1 to 64 characters and no control characters.".into(),
            ));
        }
        if ttl_secs.is_some_and(|t| !(1..=MAX_TOKEN_TTL).contains(&t)) {
            return Err(AuthError::Invalid(format!(
                "expires_in is 1 to {MAX_TOKEN_TTL} seconds (100 years)."
            )));
        }
        if role > owner_role {
            return Err(AuthError::Invalid(format!(
                "A token cannot have more rights ({}) than its maker ({}).",
                role.as_str(),
                owner_role.as_str()
            )));
        }
        if unlimited && owner_role != Role::Admin {
            return Err(AuthError::Invalid(
                "Only an admin makes a token the rate limits do not count.".into(),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        let secret = password::random_secret();
        let now = crate::clock::unix_now();
        let row = TokenRow {
            id: id.clone(),
            name: name.to_owned(),
            owner: owner.to_owned(),
            role: role.as_str().to_owned(),
            hash: password::digest(&secret),
            created_at: crate::clock::now(),
            expires_at: ttl_secs.map(|t| now.saturating_add(t as i64)),
            unlimited,
        };
        let mut tokens = write(&self.tokens);
        self.store.insert_token(&row)?;
        tokens.insert(id.clone(), row.clone());
        Ok((token_view(&row)?, format!("{TOKEN_PREFIX}{id}_{secret}")))
    }

    pub fn tokens(&self) -> Result<Vec<Token>> {
        let tokens = read(&self.tokens);
        let mut list: Vec<Token> = tokens.values().map(token_view).collect::<Result<_>>()?;
        list.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(list)
    }

    pub fn token(&self, id: &str) -> Result<Token> {
        let tokens = read(&self.tokens);
        tokens
            .get(id)
            .map(token_view)
            .unwrap_or_else(|| Err(AuthError::NotFound(format!("No such token: {id}"))))
    }

    /// Revokes a token at once.
    pub fn revoke_token(&self, id: &str) -> Result<()> {
        let mut tokens = write(&self.tokens);
        if !self.store.delete_token(id)? {
            return Err(AuthError::NotFound(format!("No such token: {id}")));
        }
        tokens.remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let a = Auth::open(store, &dir.path().join("session.key"), 3600).unwrap();
        (dir, a)
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn usernames() {
        for ok in ["alice", "_svc", "a.b-c_1"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["", "Alice", "1a", "a/b", "..", &"a".repeat(33), "a\0"] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }

    #[test]
    fn login_sessions_and_their_revocation() {
        let (dir, a) = auth();
        a.create_user("alice", "correct horse", Role::Operator)
            .unwrap();
        assert!(matches!(
            a.create_user("alice", "correct horse", Role::Admin),
            Err(AuthError::Conflict(_))
        ));
        assert!(matches!(
            a.create_user("bob", "short", Role::Admin),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.login("alice", "wrong password"),
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            a.login("nobody", "correct horse"),
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            a.login("alice", &"x".repeat(1025)),
            Err(AuthError::Invalid(_))
        ));
        // Lengths are characters: 32 of them, however many bytes, are a
        // name that does not exist, not a malformed one.
        assert!(matches!(
            a.login(&"é".repeat(32), "correct horse"),
            Err(AuthError::BadCredentials)
        ));
        let s = a.login("alice", "correct horse").unwrap();
        let p = a.authenticate(&s.token).unwrap();
        assert_eq!((p.label.as_str(), p.role), ("user:alice", Role::Operator));
        // A role change applies to sessions already issued.
        a.update_user(
            "alice",
            &UserPatch {
                role: Some(Role::Viewer),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(a.authenticate(&s.token).unwrap().role, Role::Viewer);
        // Logout ends that session only, and survives a restart.
        let (jti, exp) = p.session.clone().unwrap();
        let other = a.login("alice", "correct horse").unwrap();
        a.logout(&jti, exp).unwrap();
        assert!(a.authenticate(&s.token).is_err());
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let b = Auth::open(store, &dir.path().join("session.key"), 3600).unwrap();
        assert!(b.authenticate(&s.token).is_err());
        assert!(b.authenticate(&other.token).is_ok());
        // A password change voids every session.
        b.update_user(
            "alice",
            &UserPatch {
                password: Some("battery staple".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(b.authenticate(&other.token).is_err());
        assert!(b.login("alice", "battery staple").is_ok());
        // Tampered tokens are refused.
        let t = b.login("alice", "battery staple").unwrap().token;
        let mut forged = t.clone();
        forged.pop();
        assert!(b.authenticate(&forged).is_err());
        assert!(b.authenticate("garbage").is_err());
    }

    #[test]
    fn api_tokens_are_hashed_and_revocable() {
        let (_dir, a) = auth();
        a.create_user("ops", "long enough", Role::Admin).unwrap();
        assert!(matches!(
            a.create_token("user:x", Role::Operator, "ci", Role::Admin, None, false),
            Err(AuthError::Invalid(_))
        ));
        let (t, secret) = a
            .create_token("user:ops", Role::Admin, "reader", Role::Viewer, None, false)
            .unwrap();
        assert!(secret.starts_with("lgo_"));
        let p = a.authenticate(&secret).unwrap();
        assert_eq!(p.label, format!("token:{}", t.id));
        assert_eq!(p.role, Role::Viewer);
        // The store never holds the secret itself.
        let stored = a.store.tokens().unwrap();
        let raw = secret.rsplit('_').next().unwrap();
        assert!(!stored[0]
            .hash
            .windows(raw.len())
            .any(|w| w == raw.as_bytes()));
        let mut wrong = secret.clone();
        wrong.push('x');
        assert!(a.authenticate(&wrong).is_err());
        // A token never lives 0 s; an expired one stops working.
        assert!(matches!(
            a.create_token(
                "user:ops",
                Role::Admin,
                "short",
                Role::Viewer,
                Some(0),
                false
            ),
            Err(AuthError::Invalid(_))
        ));
        let (short, secret_short) = a
            .create_token(
                "user:ops",
                Role::Admin,
                "short",
                Role::Viewer,
                Some(1),
                false,
            )
            .unwrap();
        assert!(a.authenticate(&secret_short).is_ok());
        write(&a.tokens).get_mut(&short.id).unwrap().expires_at = Some(crate::clock::unix_now());
        assert!(a.authenticate(&secret_short).is_err());
        // Removing the maker revokes their tokens; revoking works directly.
        a.delete_user("ops").unwrap();
        assert!(a.authenticate(&secret).is_err());
        let (t2, s2) = a
            .create_token("uid:0", Role::Admin, "script", Role::Operator, None, false)
            .unwrap();
        assert!(a.authenticate(&s2).is_ok());
        a.revoke_token(&t2.id).unwrap();
        assert!(a.authenticate(&s2).is_err());
        assert!(matches!(
            a.revoke_token(&t2.id),
            Err(AuthError::NotFound(_))
        ));
    }

    #[test]
    fn only_an_admin_makes_a_token_the_rate_limits_do_not_count() {
        let (dir, a) = auth();
        assert!(matches!(
            a.create_token("user:ops", Role::Operator, "agg", Role::Viewer, None, true),
            Err(AuthError::Invalid(_))
        ));
        let (t, secret) = a
            .create_token("uid:0", Role::Admin, "agg", Role::Admin, None, true)
            .unwrap();
        assert!(t.unlimited);
        assert!(a.authenticate(&secret).unwrap().unlimited);
        // Kept across a restart of the agent.
        let again = Auth::open(a.store.clone(), &dir.path().join("session.key"), 3600).unwrap();
        assert!(again.token(&t.id).unwrap().unlimited);
        let (_, plain) = a
            .create_token("uid:0", Role::Admin, "plain", Role::Admin, None, false)
            .unwrap();
        assert!(!a.authenticate(&plain).unwrap().unlimited);
    }
}
