//! Who is calling and what they may do: the caller of each request (from
//! the socket's peer credentials or a bearer credential on TCP), the one
//! table of access rules per route, and the rate limits.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::auth::{Auth, Principal, RateLimiter, Role};
use crate::config::RateLimits;

/// Which listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The admin Unix socket.
    Socket,
    /// The read-only Unix socket.
    ReadOnlySocket,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Socket => "unix",
            Transport::ReadOnlySocket => "unix-ro",
            Transport::Tcp => "tcp",
        }
    }
}

/// Where a connection came from, as the request handlers may see it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub transport: Transport,
    /// The client's address on TCP.
    pub addr: Option<std::net::SocketAddr>,
}

/// Who is calling, as established by the listener and the credentials.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `uid:0`, `user:alice`, `token:<id>`, `anonymous`.
    pub label: String,
    /// None: connected, but not allowed to use the API.
    pub role: Option<Role>,
    pub transport: Transport,
    /// The login session the call came with (JWT id, expiry).
    pub session: Option<(String, i64)>,
    /// What the rate limits count against (the label; the address for
    /// anonymous TCP callers); none for a token the limits do not count.
    pub limit_key: Option<String>,
}

impl Caller {
    /// The caller as the engine records it on jobs.
    pub fn requester(&self) -> crate::engine::Requester {
        crate::engine::Requester::new(self.label.clone())
    }

    pub fn nobody(transport: Transport) -> Caller {
        Caller {
            label: "unknown".into(),
            role: None,
            transport,
            session: None,
            limit_key: Some("unknown".into()),
        }
    }

    /// A peer of the read-only socket: reads, whoever it is.
    pub fn reader(uid: u32) -> Caller {
        Caller {
            label: format!("uid:{uid}"),
            role: Some(Role::Viewer),
            transport: Transport::ReadOnlySocket,
            session: None,
            limit_key: Some(format!("uid:{uid}")),
        }
    }

    fn anonymous(peer: Option<&Peer>) -> Caller {
        let addr = peer
            .and_then(|p| p.addr)
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        Caller {
            label: "anonymous".into(),
            role: None,
            transport: Transport::Tcp,
            session: None,
            limit_key: Some(format!("ip:{addr}")),
        }
    }

    fn principal(p: Principal) -> Caller {
        Caller {
            limit_key: (!p.unlimited).then(|| p.label.clone()),
            label: p.label,
            role: Some(p.role),
            transport: Transport::Tcp,
            session: p.session,
        }
    }
}

/// Decides the role of an admin-socket peer: root and members of the
/// socket's group are admins, anyone else is refused.
pub fn socket_caller(cred: &tokio::net::unix::UCred, group: Option<nix::unistd::Gid>) -> Caller {
    let uid = cred.uid();
    // Root needs no group look-up (a read of /proc per connection).
    let in_group = uid != 0
        && group.is_some_and(|g| {
            cred.gid() == g.as_raw()
                || cred
                    .pid()
                    .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                    .is_some_and(|status| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix("Groups:"))
                            .is_some_and(|gs| {
                                gs.split_whitespace().any(|x| x == g.as_raw().to_string())
                            })
                    })
        });
    Caller {
        label: format!("uid:{uid}"),
        role: (uid == 0 || in_group).then_some(Role::Admin),
        transport: Transport::Socket,
        session: None,
        limit_key: Some(format!("uid:{uid}")),
    }
}

/// Whether a call changes anything: its method is not GET, HEAD or
/// OPTIONS. Such calls are audited and count against the write budget.
pub fn is_mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, without credentials.
    Open,
    /// At least this role.
    Min(Role),
}

use Role::{Admin, Operator, Viewer};
use Rule::{Min, Open};

/// The access rule of every route: (method, route template, rule). A route
/// without a rule is refused to everyone, and the test suite fails.
pub const RULES: &[(&str, &str, Rule)] = &[
    ("GET", "/health", Open),
    ("GET", "/openapi.json", Open),
    // The page over the document, and its files.
    ("GET", "/docs", Open),
    ("GET", "/docs/{file}", Open),
    ("GET", "/metrics", Min(Viewer)),
    ("POST", "/api/v1/login", Open),
    ("POST", "/api/v1/logout", Min(Viewer)),
    ("GET", "/api/v1/whoami", Min(Viewer)),
    ("GET", "/api/v1/users", Min(Admin)),
    ("POST", "/api/v1/users", Min(Admin)),
    ("GET", "/api/v1/users/{username}", Min(Admin)),
    ("PATCH", "/api/v1/users/{username}", Min(Admin)),
    ("DELETE", "/api/v1/users/{username}", Min(Admin)),
    ("GET", "/api/v1/tokens", Min(Admin)),
    ("POST", "/api/v1/tokens", Min(Admin)),
    ("GET", "/api/v1/tokens/{id}", Min(Admin)),
    ("DELETE", "/api/v1/tokens/{id}", Min(Admin)),
    ("GET", "/api/v1/audit", Min(Admin)),
    ("GET", "/api/v1/vms", Min(Viewer)),
    ("POST", "/api/v1/vms", Min(Operator)),
    ("DELETE", "/api/v1/vms", Min(Operator)),
    ("GET", "/api/v1/vms/{id}", Min(Viewer)),
    ("PATCH", "/api/v1/vms/{id}", Min(Operator)),
    ("DELETE", "/api/v1/vms/{id}", Min(Operator)),
    ("GET", "/api/v1/vms/{id}/config", Min(Viewer)),
    ("GET", "/api/v1/vms/{id}/status", Min(Viewer)),
    ("PUT", "/api/v1/vms/{id}/cpu", Min(Operator)),
    ("PUT", "/api/v1/vms/{id}/memory", Min(Operator)),
    ("PUT", "/api/v1/vms/{id}/disk", Min(Operator)),
    ("GET", "/api/v1/vms/{id}/performance", Min(Viewer)),
    ("GET", "/api/v1/vms/{id}/resources", Min(Viewer)),
    ("POST", "/api/v1/vms/{id}/{action}", Min(Operator)),
    // The console types into the guest; a screenshot only reads.
    ("GET", "/api/v1/vms/{id}/console", Min(Operator)),
    ("GET", "/api/v1/vms/{id}/screenshot", Min(Viewer)),
    ("POST", "/api/v1/vms/{id}/export", Min(Operator)),
    ("POST", "/api/v1/vms/{id}/migrate", Min(Operator)),
    // The target side of a move: what a source agent calls with its token.
    ("POST", "/api/v1/migrations", Min(Operator)),
    ("DELETE", "/api/v1/migrations/{id}", Min(Operator)),
    ("POST", "/api/v1/migrations/{id}/complete", Min(Operator)),
    ("GET", "/api/v1/vms/{id}/disks", Min(Viewer)),
    ("POST", "/api/v1/vms/{id}/disks", Min(Operator)),
    ("GET", "/api/v1/vms/{id}/disks/{disk}", Min(Viewer)),
    ("DELETE", "/api/v1/vms/{id}/disks/{disk}", Min(Operator)),
    (
        "POST",
        "/api/v1/vms/{id}/disks/{disk}/detach",
        Min(Operator),
    ),
    ("GET", "/api/v1/storage-pools", Min(Viewer)),
    ("POST", "/api/v1/storage-pools", Min(Admin)),
    ("GET", "/api/v1/storage-pools/{name}", Min(Viewer)),
    ("DELETE", "/api/v1/storage-pools/{name}", Min(Admin)),
    ("POST", "/api/v1/storage-pools/{name}/activate", Min(Admin)),
    (
        "POST",
        "/api/v1/storage-pools/{name}/deactivate",
        Min(Admin),
    ),
    ("GET", "/api/v1/storage-pools/{pool}/volumes", Min(Viewer)),
    (
        "POST",
        "/api/v1/storage-pools/{pool}/volumes",
        Min(Operator),
    ),
    (
        "GET",
        "/api/v1/storage-pools/{pool}/volumes/{name}",
        Min(Viewer),
    ),
    (
        "DELETE",
        "/api/v1/storage-pools/{pool}/volumes/{name}",
        Min(Operator),
    ),
    ("GET", "/api/v1/storage-servers", Min(Viewer)),
    ("GET", "/api/v1/storage-servers/{host}", Min(Viewer)),
    ("GET", "/api/v1/storage-servers/{host}/targets", Min(Viewer)),
    // A volume's bytes are a guest's data: operators only.
    (
        "GET",
        "/api/v1/storage-pools/{pool}/volumes/{name}/content",
        Min(Operator),
    ),
    (
        "PUT",
        "/api/v1/storage-pools/{pool}/volumes/{name}/content",
        Min(Operator),
    ),
    ("GET", "/api/v1/vms/{id}/snapshots", Min(Viewer)),
    ("POST", "/api/v1/vms/{id}/snapshots", Min(Operator)),
    ("GET", "/api/v1/vms/{id}/snapshots/{name}", Min(Viewer)),
    ("DELETE", "/api/v1/vms/{id}/snapshots/{name}", Min(Operator)),
    (
        "POST",
        "/api/v1/vms/{id}/snapshots/{name}/revert",
        Min(Operator),
    ),
    ("GET", "/api/v1/nodes", Min(Viewer)),
    ("GET", "/api/v1/nodes/{node}", Min(Viewer)),
    ("GET", "/api/v1/nodes/{node}/resources", Min(Viewer)),
    ("GET", "/api/v1/resources", Min(Viewer)),
    ("GET", "/api/v1/cluster", Min(Viewer)),
    ("GET", "/api/v1/jobs", Min(Viewer)),
    ("DELETE", "/api/v1/jobs", Min(Operator)),
    ("GET", "/api/v1/jobs/{id}", Min(Viewer)),
    ("DELETE", "/api/v1/jobs/{id}", Min(Operator)),
    ("GET", "/api/v1/jobs/{id}/tasks", Min(Viewer)),
    ("GET", "/api/v1/jobs/{id}/tasks/{task_id}", Min(Viewer)),
    ("GET", "/api/v1/templates", Min(Viewer)),
    ("POST", "/api/v1/templates", Min(Operator)),
    ("DELETE", "/api/v1/templates", Min(Operator)),
    ("GET", "/api/v1/templates/{id}", Min(Viewer)),
    ("PATCH", "/api/v1/templates/{id}", Min(Operator)),
    ("DELETE", "/api/v1/templates/{id}", Min(Operator)),
    ("GET", "/api/v1/groups", Min(Viewer)),
    ("POST", "/api/v1/groups", Min(Operator)),
    ("GET", "/api/v1/groups/{name}", Min(Viewer)),
    ("PUT", "/api/v1/groups/{name}", Min(Operator)),
    ("DELETE", "/api/v1/groups/{name}", Min(Operator)),
    ("GET", "/api/v1/groups/{name}/vms", Min(Viewer)),
    ("POST", "/api/v1/groups/{name}/vms", Min(Operator)),
    ("POST", "/api/v1/groups/{name}/start", Min(Operator)),
    ("POST", "/api/v1/groups/{name}/stop", Min(Operator)),
    ("GET", "/api/v1/events", Min(Viewer)),
    ("GET", "/api/v1/containers", Min(Viewer)),
    ("POST", "/api/v1/containers", Min(Operator)),
    ("GET", "/api/v1/containers/{id}", Min(Viewer)),
    ("PATCH", "/api/v1/containers/{id}", Min(Operator)),
    ("DELETE", "/api/v1/containers/{id}", Min(Operator)),
    ("PUT", "/api/v1/containers/{id}/resources", Min(Operator)),
    ("POST", "/api/v1/containers/{id}/exec", Min(Operator)),
    // The WebSocket form of exec runs commands too.
    ("GET", "/api/v1/containers/{id}/exec", Min(Operator)),
    ("POST", "/api/v1/containers/{id}/adopt", Min(Operator)),
    ("GET", "/api/v1/containers/{id}/logs", Min(Viewer)),
    ("GET", "/api/v1/containers/{id}/stats", Min(Viewer)),
    ("POST", "/api/v1/containers/{id}/{action}", Min(Operator)),
    ("GET", "/api/v1/images", Min(Viewer)),
    ("POST", "/api/v1/images/pull", Min(Operator)),
    ("POST", "/api/v1/images/import", Min(Operator)),
    ("POST", "/api/v1/images/load", Min(Operator)),
    ("POST", "/api/v1/images/build", Min(Operator)),
    ("GET", "/api/v1/images/{id}", Min(Viewer)),
    ("DELETE", "/api/v1/images/{id}", Min(Operator)),
    ("POST", "/api/v1/images/{id}/tag", Min(Operator)),
    ("POST", "/api/v1/images/{id}/push", Min(Operator)),
    ("GET", "/api/v1/networks", Min(Viewer)),
    ("POST", "/api/v1/networks", Min(Operator)),
    ("GET", "/api/v1/networks/{id}", Min(Viewer)),
    ("DELETE", "/api/v1/networks/{id}", Min(Operator)),
    ("POST", "/api/v1/networks/{id}/{op}", Min(Operator)),
    ("GET", "/api/v1/volumes", Min(Viewer)),
    ("POST", "/api/v1/volumes", Min(Operator)),
    ("GET", "/api/v1/volumes/{id}", Min(Viewer)),
    ("DELETE", "/api/v1/volumes/{id}", Min(Operator)),
    ("GET", "/api/v1/instances", Min(Viewer)),
    ("POST", "/api/v1/instances", Min(Operator)),
    ("POST", "/api/v1/instances/{id}/{action}", Min(Operator)),
];

/// The rule of a route, if it has one.
pub fn rule(method: &str, path: &str) -> Option<Rule> {
    static TABLE: OnceLock<HashMap<(&'static str, &'static str), Rule>> = OnceLock::new();
    TABLE
        .get_or_init(|| RULES.iter().map(|(m, p, r)| ((*m, *p), *r)).collect())
        .get(&(method, path))
        .copied()
}

/// Routes anyone may call: anonymous TCP callers are turned away (401)
/// before routing from everything else.
fn open(method: &Method, path: &str) -> bool {
    // The one open route with a parameter: a file of the docs page.
    let template = match path.strip_prefix("/docs/") {
        Some(file) if !file.is_empty() && !file.contains('/') => "/docs/{file}",
        _ => path,
    };
    rule(method.as_str(), template) == Some(Open)
}

/// What the access middlewares share.
pub struct AccessState {
    pub auth: Arc<Auth>,
    pub limiter: RateLimiter,
    pub limits: RateLimits,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, cred) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| cred.trim())
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    resp.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"libgo\""),
    );
    resp
}

/// Establishes the caller. Socket callers come from the listener; on TCP a
/// bearer credential (a login session or an API token) is required
/// everywhere but the open routes. The caller is also put on the response,
/// for the audit trail.
pub async fn authenticate(
    State(st): State<Arc<AccessState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match req.extensions().get::<Caller>() {
        Some(c) => c.clone(),
        None => {
            let anonymous = Caller::anonymous(req.extensions().get::<Peer>());
            let is_open = open(req.method(), req.uri().path());
            match bearer(req.headers()) {
                Some(cred) if !is_open => match st.auth.authenticate(cred) {
                    Ok(p) => Caller::principal(p),
                    Err(e) => return with_caller(unauthorized(&e.to_string()), anonymous),
                },
                _ if is_open => anonymous,
                _ => {
                    return with_caller(
                        unauthorized("Authentication required: send Authorization: Bearer <token> (POST /api/v1/login gives one)."),
                        anonymous,
                    )
                }
            }
        }
    };
    req.extensions_mut().insert(caller.clone());
    with_caller(next.run(req).await, caller)
}

fn with_caller(mut resp: Response, caller: Caller) -> Response {
    resp.extensions_mut().insert(caller);
    resp
}

/// Counts the request against the caller's read or write budget.
pub async fn rate_limit(State(st): State<Arc<AccessState>>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>() else {
        return next.run(req).await;
    };
    let write = is_mutating(req.method());
    let l = &st.limits;
    let budget = match (caller.transport, write) {
        (Transport::Tcp, false) => l.tcp_read,
        (Transport::Tcp, true) => l.tcp_write,
        (Transport::Socket, false) => l.socket_read,
        (Transport::Socket, true) => l.socket_write,
        // Writes are refused there anyway; they count as reads.
        (Transport::ReadOnlySocket, _) => l.readonly_read,
    };
    let Some(counted) = caller.limit_key.as_ref().filter(|_| budget > 0) else {
        return next.run(req).await;
    };
    let key = format!("{counted}:{}", if write { "write" } else { "read" });
    let v = st.limiter.check(&key, budget, Instant::now());
    let mut resp = if v.allowed {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Rate limit of {budget} {} per minute reached; retry in {} s.",
                if write { "writes" } else { "reads" },
                v.retry_after_secs
            ),
        )
        .into_response();
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(v.retry_after_secs));
        r
    };
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(v.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(v.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(v.reset_secs));
    resp
}

/// Applies the route's rule (after routing: the route template is known).
pub async fn authorize(req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let Some(rule) = rule(req.method().as_str(), &path) else {
        tracing::error!(method = %req.method(), route = %path, "route has no access rule: refused");
        return ApiError::new(StatusCode::FORBIDDEN, "This route has no access rule.")
            .into_response();
    };
    let Rule::Min(needed) = rule else {
        return next.run(req).await;
    };
    let caller = req.extensions().get::<Caller>();
    match caller.and_then(|c| c.role) {
        Some(role) if role >= needed => next.run(req).await,
        Some(role) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: {} {path} needs the {} role; this caller is {}.",
                req.method(),
                needed.as_str(),
                role.as_str()
            ),
        )
        .into_response(),
        None if caller.is_some_and(|c| c.transport == Transport::Tcp) => {
            unauthorized("Authentication required.")
        }
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden: only root and members of the libgo group may use this socket.",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_unique_and_writes_need_an_operator() {
        let mut seen = std::collections::HashSet::new();
        for (m, p, r) in RULES {
            assert!(seen.insert((m, p)), "{m} {p} twice");
            if *m != "GET" && !matches!(r, Open) {
                assert!(
                    matches!(r, Min(Operator | Admin)) || *p == "/api/v1/logout",
                    "{m} {p} lets a viewer write"
                );
            }
        }
        assert_eq!(rule("POST", "/api/v1/vms"), Some(Min(Operator)));
        assert_eq!(rule("GET", "/api/v1/users"), Some(Min(Admin)));
        assert_eq!(rule("GET", "/nope"), None);
        assert!(open(&Method::GET, "/docs"));
        assert!(open(&Method::GET, "/docs/swagger-ui.css"));
        assert!(!open(&Method::GET, "/docs/"));
        assert!(!open(&Method::GET, "/docs/a/b"));
        assert!(!open(&Method::POST, "/docs"));
        assert!(!open(&Method::GET, "/api/v1/vms"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
