//! The HTTP edge: parses requests into `model` types, checks who is asking,
//! calls the engine and renders the answer. Nothing below it knows HTTP.

pub mod access;
pub mod audit;
pub mod consoles;
pub mod containers;
pub mod disks;
pub mod docs;
pub mod error;
pub mod events;
pub mod extract;
pub mod groups;
pub mod idempotency;
pub mod job_sink;
pub mod jobs;
pub mod listen;
pub mod metrics;
pub mod migrations;
pub mod nodes;
pub mod openapi;
pub mod page;
pub mod render;
pub mod respond;
pub mod snapshots;
pub mod storage;
pub mod templates;
pub mod tls;
pub mod users;
pub mod vms;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Json, Router};

use crate::engine::Agent;
use crate::model::Health;
use error::{ApiError, REQUEST_ID};

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1 << 20;
/// Image tarballs (import, load, build contexts) may be this large.
pub const MAX_UPLOAD: usize = 4 << 30;

pub use access::Caller;

/// What every handler may reach.
#[derive(Clone)]
pub struct AppState {
    pub agent: Agent,
    pub http: Arc<metrics::HttpMetrics>,
    pub access: Arc<access::AccessState>,
}

impl axum::extract::FromRef<AppState> for Agent {
    fn from_ref(s: &AppState) -> Agent {
        s.agent.clone()
    }
}

impl axum::extract::FromRef<AppState> for Arc<crate::store::Store> {
    fn from_ref(s: &AppState) -> Arc<crate::store::Store> {
        s.agent.store_arc()
    }
}

impl axum::extract::FromRef<AppState> for crate::events::EventBus {
    fn from_ref(s: &AppState) -> crate::events::EventBus {
        s.agent.events().clone()
    }
}

impl axum::extract::FromRef<AppState> for Arc<access::AccessState> {
    fn from_ref(s: &AppState) -> Arc<access::AccessState> {
        s.access.clone()
    }
}

/// Adds routes to `$router` and records each (method, path) in `$seen`, so
/// the route table can be walked (every route must have an access rule).
macro_rules! routes {
    ($router:ident, $seen:ident, $prefix:literal; $( $path:literal => $( $m:ident($h:expr) ),+ ; )*) => {
        $(
            $( $seen.push((stringify!($m).to_ascii_uppercase(), format!("{}{}", $prefix, $path))); )+
            $router = $router.route($path, routes!(@chain $( $m($h) ),+));
        )*
    };
    (@chain $m:ident($h:expr) $(, $rest:ident($rh:expr) )*) => {
        axum::routing::$m($h) $( .$rest($rh) )*
    };
}

/// The API's routes and the (method, path) of each.
fn routes() -> (Router<AppState>, Vec<(String, String)>) {
    let mut seen = Vec::new();
    let mut api = Router::<AppState>::new();
    routes! { api, seen, "/api/v1";
        "/login" => post(users::login);
        "/logout" => post(users::logout);
        "/whoami" => get(users::whoami);
        "/users" => get(users::list_users), post(users::create_user);
        "/users/{username}" => get(users::get_user), patch(users::patch_user), delete(users::delete_user);
        "/tokens" => get(users::list_tokens), post(users::create_token);
        "/tokens/{id}" => get(users::get_token), delete(users::revoke_token);
        "/audit" => get(audit::list);
        "/vms" => get(vms::list), post(vms::create), delete(vms::bulk_delete);
        "/vms/{id}" => get(vms::get), delete(vms::delete), patch(vms::patch);
        "/vms/{id}/config" => get(vms::config);
        "/vms/{id}/status" => get(vms::status);
        "/vms/{id}/cpu" => put(vms::put_cpu);
        "/vms/{id}/memory" => put(vms::put_memory);
        "/vms/{id}/disk" => put(vms::put_disk);
        "/vms/{id}/performance" => get(vms::performance);
        "/vms/{id}/resources" => get(vms::resources);
        "/vms/{id}/snapshots" => get(snapshots::list), post(snapshots::create);
        "/vms/{id}/snapshots/{name}" => get(snapshots::get), delete(snapshots::delete);
        "/vms/{id}/snapshots/{name}/revert" => post(snapshots::revert);
        "/vms/{id}/export" => post(storage::export);
        "/vms/{id}/migrate" => post(migrations::migrate);
        "/migrations" => post(migrations::prepare);
        "/migrations/{id}" => delete(migrations::abort);
        "/migrations/{id}/complete" => post(migrations::complete);
        "/vms/{id}/disks" => get(disks::list), post(disks::attach);
        "/vms/{id}/disks/{disk}" => get(disks::get), delete(disks::delete);
        "/vms/{id}/disks/{disk}/detach" => post(disks::detach);
        "/vms/{id}/console" => get(consoles::console);
        "/vms/{id}/screenshot" => get(consoles::screenshot);
        "/vms/{id}/{action}" => post(vms::action);
        "/nodes" => get(nodes::list);
        "/nodes/{node}" => get(nodes::get);
        "/nodes/{node}/resources" => get(nodes::resources);
        "/resources" => get(nodes::totals);
        "/cluster" => get(nodes::cluster);
        "/jobs" => get(jobs::list), delete(jobs::bulk_cancel);
        "/jobs/{id}" => get(jobs::get), delete(jobs::cancel);
        "/jobs/{id}/tasks" => get(jobs::tasks);
        "/jobs/{id}/tasks/{task_id}" => get(jobs::task);
        "/templates" => get(templates::list), post(templates::create), delete(templates::bulk_delete);
        "/templates/{id}" => get(templates::get), patch(templates::patch), delete(templates::delete);
        "/groups" => get(groups::list), post(groups::create);
        "/groups/{name}" => get(groups::get), put(groups::put), delete(groups::delete);
        "/groups/{name}/vms" => get(groups::members), post(groups::create_vm);
        "/groups/{name}/start" => post(groups::start);
        "/groups/{name}/stop" => post(groups::stop);
        "/events" => get(events::stream);
        "/containers" => get(containers::list), post(containers::create);
        "/containers/{id}" => get(containers::get), delete(containers::delete), patch(containers::update);
        "/containers/{id}/resources" => put(containers::put_resources);
        "/containers/{id}/exec" => post(containers::exec), get(containers::exec_ws);
        "/containers/{id}/adopt" => post(containers::adopt);
        "/containers/{id}/logs" => get(containers::logs);
        "/containers/{id}/stats" => get(containers::stats);
        "/containers/{id}/{action}" => post(containers::action);
        "/images" => get(containers::images);
        "/images/pull" => post(containers::pull);
        "/images/{id}" => get(containers::image), delete(containers::remove_image);
        "/images/{id}/tag" => post(containers::tag);
        "/images/{id}/push" => post(containers::push);
        "/networks" => get(containers::networks), post(containers::create_network);
        "/networks/{id}" => get(containers::network), delete(containers::remove_network);
        "/networks/{id}/{op}" => post(containers::network_op);
        "/volumes" => get(containers::volumes), post(containers::create_volume);
        "/volumes/{id}" => get(containers::volume), delete(containers::remove_volume);
        "/instances" => get(containers::instances), post(containers::create_instance);
        "/instances/{id}/{action}" => post(containers::instance_action);
        "/storage-pools" => get(storage::list), post(storage::create);
        "/storage-pools/{name}" => get(storage::get), delete(storage::delete);
        "/storage-pools/{name}/activate" => post(storage::activate);
        "/storage-pools/{name}/deactivate" => post(storage::deactivate);
        "/storage-pools/{pool}/volumes" => get(storage::volumes), post(storage::create_volume);
        "/storage-pools/{pool}/volumes/{name}" => get(storage::volume), delete(storage::delete_volume);
        "/storage-servers" => get(storage::servers);
        "/storage-servers/{host}" => get(storage::server);
        "/storage-servers/{host}/targets" => get(storage::targets);
    }
    // Volume content is streamed to and from the pool, bounded by its
    // free space rather than by a body limit.
    let mut content = Router::<AppState>::new();
    routes! { content, seen, "/api/v1";
        "/storage-pools/{pool}/volumes/{name}/content" => get(storage::download), put(storage::upload);
    }
    // Image tarballs (import, load, build contexts) may be large.
    let mut uploads = Router::<AppState>::new();
    routes! { uploads, seen, "/api/v1";
        "/images/import" => post(containers::import);
        "/images/load" => post(containers::load);
        "/images/build" => post(containers::build);
    }
    let mut top = Router::<AppState>::new();
    routes! { top, seen, "";
        "/health" => get(health);
        "/openapi.json" => get(openapi::serve);
        "/metrics" => get(metrics::serve);
        "/docs" => get(docs::index);
        "/docs/{file}" => get(docs::file);
    }
    let api = api
        .merge(uploads.layer(DefaultBodyLimit::max(MAX_UPLOAD)))
        .merge(content.layer(DefaultBodyLimit::disable()));
    (top.nest("/api/v1", api), seen)
}

/// Every (method, path template) the API serves.
pub fn route_table() -> Vec<(String, String)> {
    routes().1
}

pub fn router(agent: Agent, auth: Arc<crate::auth::Auth>) -> Router {
    let http = Arc::new(metrics::HttpMetrics::default());
    let access = Arc::new(access::AccessState {
        auth,
        limiter: Default::default(),
        limits: agent.config().rate_limits.clone(),
    });
    let state = AppState {
        agent: agent.clone(),
        http: http.clone(),
        access: access.clone(),
    };
    let routed = routes()
        .0
        // Only on a route and method that exist: an unknown path or method
        // is 404 or 405 whatever its Idempotency-Key.
        .route_layer(middleware::from_fn_with_state(
            agent.clone(),
            idempotency::middleware::<Agent>,
        ))
        // After routing, so the route template is known (MatchedPath).
        .route_layer(middleware::from_fn(access::authorize))
        .route_layer(middleware::from_fn_with_state(http, metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    caller_layers(routed, access, agent.store_arc())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(std::sync::Arc::new(
            render::VmJson::default(),
        )))
        .with_state(state)
}

/// Who calls, the same on every server of the API (an agent, an
/// aggregator), outermost first: the request id, the audit trail (refusals
/// included), the caller's credentials, then the caller's budget.
pub fn caller_layers<S: Clone + Send + Sync + 'static>(
    routed: Router<S>,
    access: Arc<access::AccessState>,
    store: Arc<crate::store::Store>,
) -> Router<S> {
    routed
        .layer(middleware::from_fn_with_state(
            access.clone(),
            access::rate_limit,
        ))
        .layer(middleware::from_fn_with_state(access, access::authenticate))
        .layer(middleware::from_fn_with_state(store, audit::middleware))
        .layer(middleware::from_fn(request_id))
}

/// Health of the agent.
///
/// Whether the agent answers, its version, node name, accelerator and VM count. Needs no
/// credentials on any listener.
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
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4().simple()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Whatever the handler logs carries the id (journald: REQUEST_ID).
    let span = tracing::info_span!("request", request_id = %id);
    let started = std::time::Instant::now();
    let mut resp =
        tracing::Instrument::instrument(REQUEST_ID.scope(id.clone(), next.run(req)), span).await;
    // Writes are in the audit trail (at info, with their request_id); every
    // request, reads included, at debug.
    tracing::debug!(
        request_id = %id,
        %method,
        path = %clip(&path, 256),
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the route table: a route without an access rule (or a rule for
    /// a route that is gone) fails here.
    #[test]
    fn every_route_has_exactly_one_access_rule() {
        let table = route_table();
        for (method, path) in &table {
            assert!(
                access::rule(method, path).is_some(),
                "{method} {path} has no access rule in api/access.rs"
            );
        }
        for (method, path, _) in access::RULES {
            assert!(
                table.iter().any(|(m, p)| m == method && p == path),
                "the rule for {method} {path} names no route"
            );
        }
    }

    /// Every route is in the OpenAPI document, with the same methods.
    #[test]
    fn every_route_is_documented() {
        let doc = openapi::document();
        let missing: Vec<String> = route_table()
            .into_iter()
            .filter(|(m, p)| !doc["paths"][p][m.to_ascii_lowercase()].is_object())
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        assert!(
            missing.is_empty(),
            "not in the OpenAPI document: {missing:?}"
        );
    }
}
