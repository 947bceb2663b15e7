//! The HTTP edge: parses requests into `model` types, checks who is asking,
//! calls the engine and renders the answer. Nothing below it knows HTTP.

pub mod containers;
pub mod error;
pub mod events;
pub mod extract;
pub mod idempotency;
pub mod job_sink;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod render;
pub mod respond;
pub mod templates;
pub mod vms;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tower::ServiceExt;

use crate::engine::Agent;
use crate::model::Health;
use crate::store::AuditEntry;
use error::{ApiError, REQUEST_ID};

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1 << 20;
/// Image tarballs (import, load, build contexts) may be this large.
pub const MAX_UPLOAD: usize = 4 << 30;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    /// Connected, but not allowed to use the API.
    None,
}

/// Who is calling, as established by the listener (peer credentials on the
/// Unix socket; a token on TCP, later).
#[derive(Debug, Clone)]
pub struct Caller {
    pub label: String,
    pub role: Role,
}

impl Caller {
    /// The caller as the engine records it on jobs.
    pub fn requester(&self) -> crate::engine::Requester {
        crate::engine::Requester::new(self.label.clone())
    }
}

/// Decides the role of a Unix-socket peer: root and members of the socket's
/// group are admins, anyone else is refused.
pub fn unix_caller(cred: &tokio::net::unix::UCred, group: Option<nix::unistd::Gid>) -> Caller {
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
        role: if uid == 0 || in_group {
            Role::Admin
        } else {
            Role::None
        },
    }
}

/// What every handler may reach.
#[derive(Clone)]
pub struct AppState {
    pub agent: Agent,
    pub http: Arc<metrics::HttpMetrics>,
}

impl axum::extract::FromRef<AppState> for Agent {
    fn from_ref(s: &AppState) -> Agent {
        s.agent.clone()
    }
}

pub fn router(agent: Agent) -> Router {
    let http = Arc::new(metrics::HttpMetrics::default());
    let state = AppState {
        agent: agent.clone(),
        http: http.clone(),
    };
    let api = Router::<AppState>::new()
        .route(
            "/vms",
            get(vms::list).post(vms::create).delete(vms::bulk_delete),
        )
        .route(
            "/vms/{id}",
            get(vms::get).delete(vms::delete).patch(vms::patch),
        )
        .route("/vms/{id}/config", get(vms::config))
        .route("/vms/{id}/status", get(vms::status))
        .route("/vms/{id}/cpu", put(vms::put_cpu))
        .route("/vms/{id}/memory", put(vms::put_memory))
        .route("/vms/{id}/disk", put(vms::put_disk))
        .route("/vms/{id}/performance", get(vms::performance))
        .route("/vms/{id}/resources", get(vms::resources))
        .route("/vms/{id}/{action}", post(vms::action))
        .route("/jobs", get(jobs::list).delete(jobs::bulk_cancel))
        .route("/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/jobs/{id}/tasks", get(jobs::tasks))
        .route("/jobs/{id}/tasks/{task_id}", get(jobs::task))
        .route(
            "/templates",
            get(templates::list)
                .post(templates::create)
                .delete(templates::bulk_delete),
        )
        .route(
            "/templates/{id}",
            get(templates::get)
                .patch(templates::patch)
                .delete(templates::delete),
        )
        .route("/events", get(events::stream))
        .route(
            "/containers",
            get(containers::list).post(containers::create),
        )
        .route(
            "/containers/{id}",
            get(containers::get)
                .delete(containers::delete)
                .patch(containers::update),
        )
        .route("/containers/{id}/resources", put(containers::update))
        .route(
            "/containers/{id}/exec",
            post(containers::exec).get(containers::exec_ws),
        )
        .route("/containers/{id}/adopt", post(containers::adopt))
        .route("/containers/{id}/logs", get(containers::logs))
        .route("/containers/{id}/stats", get(containers::stats))
        .route("/containers/{id}/{action}", post(containers::action))
        .route("/images", get(containers::images))
        .route("/images/pull", post(containers::pull))
        .route(
            "/images/import",
            post(containers::import).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route(
            "/images/load",
            post(containers::load).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route(
            "/images/build",
            post(containers::build).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route(
            "/images/{id}",
            get(containers::image).delete(containers::remove_image),
        )
        .route("/images/{id}/tag", post(containers::tag))
        .route("/images/{id}/push", post(containers::push))
        .route(
            "/networks",
            get(containers::networks).post(containers::create_network),
        )
        .route(
            "/networks/{id}",
            get(containers::network).delete(containers::remove_network),
        )
        .route("/networks/{id}/{op}", post(containers::network_op))
        .route(
            "/volumes",
            get(containers::volumes).post(containers::create_volume),
        )
        .route(
            "/volumes/{id}",
            get(containers::volume).delete(containers::remove_volume),
        )
        .route(
            "/instances",
            get(containers::instances).post(containers::create_instance),
        )
        .route(
            "/instances/{id}/{action}",
            post(containers::instance_action),
        );
    Router::new()
        .nest("/api/v1", api)
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics::serve))
        // Only on a route and method that exist: an unknown path or method
        // is 404 or 405 whatever its Idempotency-Key.
        .route_layer(middleware::from_fn_with_state(
            agent.clone(),
            idempotency::middleware,
        ))
        // After routing, so the route template is known (MatchedPath).
        .route_layer(middleware::from_fn_with_state(http, metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(agent, audit))
        .layer(middleware::from_fn(authorize))
        .layer(middleware::from_fn(request_id))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(std::sync::Arc::new(
            render::VmJson::default(),
        )))
        .with_state(state)
}

/// Health of the agent (no authentication).
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Health)))]
pub async fn health(State(agent): State<Agent>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: agent.node().into(),
        accel: agent.vms.accel().as_str().into(),
        vms: agent.vms.count(),
    })
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "No such endpoint: {} {}",
        clip(req.method().as_str(), 32),
        clip(req.uri().path(), 256)
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "Method {} is not allowed on {}",
            clip(req.method().as_str(), 32),
            clip(req.uri().path(), 256)
        ),
    )
}

/// At most `max` bytes of a client's text echoed back (cut at a character).
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Gives every request an id (the client's `X-Request-Id` if it sent a sane
/// one), visible to error bodies and echoed in the response.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4().simple()));
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn is_mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses callers without a role; viewers may only read.
async fn authorize(req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let role = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.role)
        .unwrap_or(Role::None);
    let allowed = match role {
        Role::Admin | Role::Operator => true,
        Role::Viewer => !is_mutating(req.method()),
        Role::None => false,
    };
    if !allowed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden: only root and members of the libgo group may use this socket.",
        )
        .into_response();
    }
    next.run(req).await
}

/// Writes every mutating call to the audit log: who, what, target, result.
async fn audit(State(agent): State<Agent>, req: Request, next: Next) -> Response {
    if !is_mutating(req.method()) {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let caller = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.label.clone())
        .unwrap_or_else(|| "unknown".into());
    let resp = next.run(req).await;
    let entry = AuditEntry {
        at: crate::clock::now(),
        request_id: error::current_request_id(),
        caller,
        method,
        path,
        status: resp.status().as_u16(),
    };
    tracing::info!(target: "audit", caller = %entry.caller, method = %entry.method, path = %entry.path, status = entry.status, request_id = %entry.request_id);
    if let Err(e) = agent.store().audit(&entry) {
        tracing::error!(error = %e, "cannot write the audit log");
    }
    resp
}

/// Serves `app` on a Unix socket until `shutdown` resolves, then lets the
/// requests in flight finish (up to 10 s). Each connection's caller comes from
/// its peer credentials (SO_PEERCRED).
pub async fn serve_unix(
    listener: UnixListener,
    app: Router,
    group: Option<nix::unistd::Gid>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let app = Arc::new(app);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let caller = match stream.peer_cred() {
            Ok(cred) => unix_caller(&cred, group),
            Err(_) => Caller {
                label: "unknown".into(),
                role: Role::None,
            },
        };
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller.clone());
                let app = (*app).clone();
                async move {
                    Ok::<_, Infallible>(
                        app.oneshot(req.map(axum::body::Body::new))
                            .await
                            .into_response(),
                    )
                }
            });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // HTTP/1.1 with upgrades (the event stream is a WebSocket).
            let builder =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after 10 s; leaving them");
    }
}
