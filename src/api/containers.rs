//! `/api/v1/containers`, `/images`, `/networks`, `/volumes` (the Docker
//! engine behind the agent) and `/instances` (VMs and containers together).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, OptionalBody, Path, Query, UploadBody};
use super::page::paginate;
use super::respond::{accepted, answer, answer_with, wants_async};
use super::Caller;
use crate::engine::container::{CAction, ContainerActionDone, ContainerOutcome};
use crate::engine::vm::Action;
use crate::engine::Agent;
use crate::model::{
    ActionRequest, Container, ContainerList, ContainerStatus, CreateContainerRequest,
    CreateNetworkRequest, CreateVmRequest, CreateVolumeRequest, ExecRequest, ExecResult, Image,
    ImageList, ImageRef, Instance, InstanceList, Network, NetworkConnect, NetworkList, Performance,
    UpdateContainerRequest, VmStatus, Volume, VolumeList,
};

fn flag(q: &HashMap<String, String>, name: &str) -> ApiResult<bool> {
    match q.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid {name} {other:?}: use true or false."
        ))),
    }
}

/// A `status` filter: a VM or a container status.
fn status_filter(q: &HashMap<String, String>) -> ApiResult<Option<&str>> {
    q.get("status")
        .map(|s| {
            (VmStatus::parse(s).is_some() || ContainerStatus::parse(s).is_some())
                .then_some(s.as_str())
                .ok_or_else(|| ApiError::invalid(format!("Invalid status filter {s:?}.")))
        })
        .transpose()
}

// ---- containers ---------------------------------------------------------

/// List containers.
///
/// The containers libgo manages (`?all=true`: every container of the engine), with filters
/// `status`, `name` and `tag`. 503 when the Docker engine does not answer.
#[utoipa::path(get, path = "/api/v1/containers", tag = "containers",
    params(("all" = Option<bool>, Query), ("status" = Option<String>, Query), ("name" = Option<String>, Query),
           ("tag" = Option<String>, Query), ("limit" = Option<usize>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, body = ContainerList), (status = 503, body = crate::model::ErrorBody)))]
pub async fn list(
    State(agent): State<Agent>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<ContainerList>> {
    let status = status_filter(&q)?;
    let all = flag(&q, "all")?;
    let items: Vec<Container> = agent
        .containers
        .list(all)
        .await?
        .into_iter()
        .filter(|c| status.is_none_or(|s| c.status.as_str() == s))
        .filter(|c| q.get("name").is_none_or(|n| &c.name == n))
        .filter(|c| q.get("tag").is_none_or(|t| c.tags.contains(t)))
        .collect();
    let (containers, next_page_token, total_count) = paginate(
        items,
        |c| (c.created_at.clone(), c.id),
        "created_at",
        false,
        &q,
    )?;
    Ok(Json(ContainerList {
        containers,
        next_page_token,
        total_count,
    }))
}

/// Create a container.
///
/// Creates a container from an image the engine has (404 when it has not: pull it first), with
/// its resources, ports, mounts, environment and labels, and starts it when `start` is true;
/// 201 with the container, or 202 with the job under `Prefer: respond-async`. 409 when the name
/// is taken.
#[utoipa::path(post, path = "/api/v1/containers", tag = "containers", request_body = CreateContainerRequest,
    responses((status = 201, body = Container), (status = 202, body = crate::model::Accepted), (status = 400, body = crate::model::ErrorBody),
              (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody), (status = 503, body = crate::model::ErrorBody)))]
pub async fn create(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateContainerRequest>,
) -> ApiResult<Response> {
    answer(
        agent.containers.create(req, &caller.requester()).await?,
        &headers,
        StatusCode::CREATED,
    )
    .await
}

/// Get a container.
///
/// A container by its libgo id, engine id or name. An engine id prefix that several containers
/// match is 409.
#[utoipa::path(get, path = "/api/v1/containers/{id}", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = Container), (status = 404, body = crate::model::ErrorBody), (status = 503, body = crate::model::ErrorBody)))]
pub async fn get(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<Container>> {
    Ok(Json(agent.containers.find(&id).await?))
}

/// Delete a container.
///
/// Removes the container; a running one needs `?force=true` (else 409).
#[utoipa::path(delete, path = "/api/v1/containers/{id}", tag = "containers", params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 200, body = Container), (status = 403, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn delete(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let sub = agent
        .containers
        .delete(&id, flag(&q, "force")?, &caller.requester())
        .await?;
    answer(sub, &headers, StatusCode::OK).await
}

/// Change a container's resources.
///
/// Changes a running or stopped container's vCPUs and memory live (the same operation as `PUT
/// .../resources`). 409 when the engine refuses the change in the container's state.
#[utoipa::path(patch, path = "/api/v1/containers/{id}", tag = "containers", params(("id" = String, Path)), request_body = UpdateContainerRequest,
    responses((status = 200, body = Container), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn update(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateContainerRequest>,
) -> ApiResult<Response> {
    answer(
        agent
            .containers
            .update(&id, req, &caller.requester())
            .await?,
        &headers,
        StatusCode::OK,
    )
    .await
}

/// Change a container's resources.
///
/// Changes a running or stopped container's vCPUs and memory live (the same operation as `PATCH
/// /containers/{id}`).
#[utoipa::path(put, path = "/api/v1/containers/{id}/resources", tag = "containers", params(("id" = String, Path)), request_body = UpdateContainerRequest,
    responses((status = 200, body = Container), (status = 400, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody)))]
pub async fn put_resources(
    state: State<Agent>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    id: Path<String>,
    body: JsonBody<UpdateContainerRequest>,
) -> ApiResult<Response> {
    update(state, caller, headers, id, body).await
}

/// Run a power action on a container.
///
/// `start`, `stop` (graceful, then killed after `timeout`), `restart`, `kill`, `pause` or
/// `unpause`. 409 when the container's state does not allow the action (pausing a stopped
/// container) or its program cannot be started (missing or not executable).
#[utoipa::path(post, path = "/api/v1/containers/{id}/{action}", tag = "containers",
    params(("id" = String, Path), ("action" = String, Path, description = "start | stop | restart | kill | pause | unpause")),
    request_body(content = Option<ActionRequest>),
    responses((status = 200, body = crate::model::ActionResponse), (status = 403, body = crate::model::ErrorBody), (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody), (status = 503, body = crate::model::ErrorBody)))]
pub async fn action(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    JsonBody(req): OptionalBody<ActionRequest>,
) -> ApiResult<Response> {
    let action = CAction::parse(&action)
        .ok_or_else(|| ApiError::not_found(format!("No such container action: {action}.")))?;
    super::vms::check_timeout(&req)?;
    let sub = agent
        .containers
        .action(&id, action, req.timeout, &caller.requester())
        .await?;
    answer_with(sub, &headers, StatusCode::OK, container_action_response).await
}

/// Run a command in a container.
///
/// Runs `command` in the running container and answers its exit code and output once it ends
/// (or after `timeout` seconds). 409 when the container does not run.
#[utoipa::path(post, path = "/api/v1/containers/{id}/exec", tag = "containers", params(("id" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 409, body = crate::model::ErrorBody)))]
pub async fn exec(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> ApiResult<Json<ExecResult>> {
    if req.timeout.is_some_and(|t| !(1..=3600).contains(&t)) {
        return Err(ApiError::invalid(
            "Invalid parameter: timeout must be 1 to 3600 s.",
        ));
    }
    Ok(Json(agent.containers.exec(&id, req).await?))
}

/// Run an interactive command in a container (WebSocket).
///
/// Upgrades to a WebSocket: `?command=sh&command=-c&command=...` (repeat `command` for each
/// argument; `sh` when absent), `tty=true` for a terminal. Client frames go to stdin; output
/// comes back as binary frames; the socket closes with the exit code as its reason (`exit 0`).
#[utoipa::path(get, path = "/api/v1/containers/{id}/exec", tag = "containers",
    params(("id" = String, Path), ("command" = Option<Vec<String>>, Query), ("tty" = Option<bool>, Query)),
    responses((status = 101, description = "WebSocket: stdin in, output out"), (status = 400, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn exec_ws(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| {
        ApiError::invalid(format!("this endpoint expects a WebSocket upgrade: {e}"))
    })?;
    let mut command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        command.push("sh".into());
    }
    let flags: HashMap<String, String> = q.iter().filter(|(k, _)| k == "tty").cloned().collect();
    let tty = flag(&flags, "tty")?;
    let attached = agent.containers.exec_attach(&id, command, tty).await?;
    Ok(ws.on_upgrade(move |socket| pump_exec(agent, socket, attached)))
}

async fn pump_exec(
    agent: Agent,
    mut socket: axum::extract::ws::WebSocket,
    mut exec: crate::engine::container::AttachedExec,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    loop {
        tokio::select! {
            out = exec.output.next() => match out {
                Some(Ok(chunk)) => {
                    if socket.send(Message::Binary(chunk.into_bytes())).await.is_err() {
                        return;
                    }
                }
                _ => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => { let _ = exec.input.write_all(&b).await; }
                Some(Ok(Message::Text(t))) => { let _ = exec.input.write_all(t.as_bytes()).await; }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
        }
    }
    let code = agent.containers.exec_exit_code(&exec.exec_id).await;
    let reason = match code {
        Some(c) => format!("exit {c}"),
        None => "exit unknown".to_owned(),
    };
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: reason.into(),
        })))
        .await;
}

/// Adopt a container.
///
/// Takes over a container of the engine that libgo did not create: from then on it is listed
/// and managed like the others (adopting one libgo manages changes nothing).
#[utoipa::path(post, path = "/api/v1/containers/{id}/adopt", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = Container), (status = 404, body = crate::model::ErrorBody)))]
pub async fn adopt(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<Container>> {
    Ok(Json(agent.containers.adopt(&id).await?))
}

/// Get a container's logs.
///
/// The container's output: `tail` (a number of lines or `all`), `since` (unix seconds),
/// `timestamps`, and `follow` to stream what comes next.
#[utoipa::path(get, path = "/api/v1/containers/{id}/logs", tag = "containers",
    params(("id" = String, Path), ("tail" = Option<String>, Query), ("since" = Option<i64>, Query), ("timestamps" = Option<bool>, Query), ("follow" = Option<bool>, Query)),
    responses((status = 200, description = "log text", content_type = "text/plain"), (status = 404, body = crate::model::ErrorBody)))]
pub async fn logs(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let tail = match q.get("tail") {
        None => None,
        Some(t) if t == "all" || t.parse::<u32>().is_ok() => Some(t.clone()),
        Some(t) => {
            return Err(ApiError::invalid(format!(
                "Invalid tail {t:?}: a line count or all."
            )))
        }
    };
    let since = match q.get("since") {
        None => 0,
        Some(s) => s
            .parse::<i32>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| ApiError::invalid(format!("Invalid since {s:?}: unix seconds.")))?,
    };
    let stream = agent
        .containers
        .logs(
            &id,
            tail,
            since,
            flag(&q, "timestamps")?,
            flag(&q, "follow")?,
        )
        .await?;
    // Once the headers are sent, an engine error can only end the text: a
    // last line says why, and the response ends cleanly (never cut short).
    let stream = futures::StreamExt::scan(stream, false, |ended, item| {
        let out = match (*ended, item) {
            (true, _) => None,
            (false, Ok(bytes)) => Some(Ok::<_, std::io::Error>(bytes)),
            (false, Err(e)) => {
                *ended = true;
                Some(Ok(axum::body::Bytes::from(format!(
                    "\nlibgo: the log stream ended: {e}\n"
                ))))
            }
        };
        std::future::ready(out)
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Get a container's live figures.
///
/// CPU, memory, network and block I/O figures in the shape of a VM's `/performance`, from a
/// background stats stream.
#[utoipa::path(get, path = "/api/v1/containers/{id}/stats", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = Performance), (status = 409, body = crate::model::ErrorBody)))]
pub async fn stats(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<Performance>> {
    Ok(Json(agent.containers.stats(&id).await?))
}

// ---- images ---------------------------------------------------------------

/// List images.
///
/// The images in the Docker engine, with their tags, sizes and creation times.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", responses((status = 200, body = ImageList)))]
pub async fn images(State(agent): State<Agent>) -> ApiResult<Json<ImageList>> {
    let images = agent.containers.list_images().await?;
    Ok(Json(ImageList {
        total_count: images.len(),
        images,
    }))
}

/// Get an image.
///
/// The engine's inspect document of an image, by id or name.
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::model::ErrorBody)))]
pub async fn image(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(agent.containers.inspect_image(&id).await?))
}

/// Pull an image.
///
/// Pulls an image from its registry as a job. It fails clearly (the job's error) when no
/// registry answers.
#[utoipa::path(post, path = "/api/v1/images/pull", tag = "images", request_body = ImageRef,
    responses((status = 200, body = Image), (status = 202, body = crate::model::Accepted), (status = 400, body = crate::model::ErrorBody), (status = 503, body = crate::model::ErrorBody)))]
pub async fn pull(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ImageRef>,
) -> ApiResult<Response> {
    answer(
        agent
            .containers
            .pull_image(&req.image, &caller.requester())?,
        &headers,
        StatusCode::OK,
    )
    .await
}

fn image_param(q: &HashMap<String, String>, name: &str) -> ApiResult<String> {
    q.get(name)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::invalid(format!("Query parameter {name} is required.")))
}

/// Import a root filesystem as an image.
///
/// Imports the body, a root filesystem tarball, as the image `?image=repo:tag`; a job.
#[utoipa::path(post, path = "/api/v1/images/import", tag = "images", params(("image" = String, Query)),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = Image), (status = 400, body = crate::model::ErrorBody)))]
pub async fn import(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    UploadBody(body): UploadBody,
) -> ApiResult<Response> {
    let image = image_param(&q, "image")?;
    answer(
        agent
            .containers
            .import_image(&image, body, &caller.requester())?,
        &headers,
        StatusCode::CREATED,
    )
    .await
}

/// Load images from a tarball.
///
/// Loads the images of a `docker save` tarball (the body); a job.
#[utoipa::path(post, path = "/api/v1/images/load", tag = "images",
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 200, body = ImageList)))]
pub async fn load(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    UploadBody(body): UploadBody,
) -> ApiResult<Response> {
    if wants_async(&headers) {
        let sub = agent.containers.load_images(body, &caller.requester())?;
        return Ok(accepted(sub.job, None));
    }
    let sub = agent.containers.load_images(body, &caller.requester())?;
    super::respond::track(&sub.job);
    let images = sub.outcome().await?;
    Ok(Json(ImageList {
        total_count: images.len(),
        images,
    })
    .into_response())
}

/// Build an image.
///
/// Builds an image from the body, a build context tarball, with its Dockerfile:
/// `?tag=repo:tag&dockerfile=Dockerfile`; a job whose task log carries the build output.
#[utoipa::path(post, path = "/api/v1/images/build", tag = "images", params(("tag" = String, Query), ("dockerfile" = Option<String>, Query)),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = Image), (status = 400, body = crate::model::ErrorBody)))]
pub async fn build(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    UploadBody(body): UploadBody,
) -> ApiResult<Response> {
    let tag = image_param(&q, "tag")?;
    let dockerfile = q
        .get("dockerfile")
        .cloned()
        .unwrap_or_else(|| "Dockerfile".into());
    answer(
        agent
            .containers
            .build_image(&tag, &dockerfile, body, &caller.requester())?,
        &headers,
        StatusCode::CREATED,
    )
    .await
}

/// Tag an image.
///
/// Gives an image another name: `{"image": "repo:tag"}`.
#[utoipa::path(post, path = "/api/v1/images/{id}/tag", tag = "images", params(("id" = String, Path)), request_body = ImageRef,
    responses((status = 200, body = Image), (status = 404, body = crate::model::ErrorBody)))]
pub async fn tag(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ImageRef>,
) -> ApiResult<Json<Image>> {
    Ok(Json(agent.containers.tag_image(&id, &req.image).await?))
}

/// Push an image.
///
/// Pushes an image to the registry its name names, as a job.
#[utoipa::path(post, path = "/api/v1/images/{id}/push", tag = "images", params(("id" = String, Path)),
    responses((status = 200, body = Image), (status = 503, body = crate::model::ErrorBody)))]
pub async fn push(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    answer(
        agent.containers.push_image(&id, &caller.requester())?,
        &headers,
        StatusCode::OK,
    )
    .await
}

/// Delete an image.
///
/// Removes an image; `?force=true` also when it is tagged more than once or a container uses it
/// (else 409).
#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn remove_image(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    agent
        .containers
        .remove_image(&id, flag(&q, "force")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- networks and volumes -----------------------------------------------

/// List networks.
///
/// The container networks of the Docker engine.
#[utoipa::path(get, path = "/api/v1/networks", tag = "networks", responses((status = 200, body = NetworkList)))]
pub async fn networks(State(agent): State<Agent>) -> ApiResult<Json<NetworkList>> {
    let networks = agent.containers.list_networks().await?;
    Ok(Json(NetworkList {
        total_count: networks.len(),
        networks,
    }))
}

/// Create a network.
///
/// Creates a container network with its driver. 409 when the name is taken.
#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", request_body = CreateNetworkRequest,
    responses((status = 201, body = Network), (status = 409, body = crate::model::ErrorBody)))]
pub async fn create_network(
    State(agent): State<Agent>,
    JsonBody(req): JsonBody<CreateNetworkRequest>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    Ok((
        StatusCode::CREATED,
        Json(agent.containers.create_network(req).await?),
    ))
}

/// Get a network.
///
/// A container network by id or name, with the containers attached to it.
#[utoipa::path(get, path = "/api/v1/networks/{id}", tag = "networks", params(("id" = String, Path)),
    responses((status = 200, body = Network), (status = 404, body = crate::model::ErrorBody)))]
pub async fn network(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<Json<Network>> {
    Ok(Json(agent.containers.inspect_network(&id).await?))
}

/// Delete a network.
///
/// Removes a container network. 409 while containers are attached to it.
#[utoipa::path(delete, path = "/api/v1/networks/{id}", tag = "networks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::model::ErrorBody)))]
pub async fn remove_network(
    State(agent): State<Agent>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    agent.containers.remove_network(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Connect or disconnect a container.
///
/// Connects (`/connect`) a container to the network or disconnects (`/disconnect`) it. 409 when
/// it already is (or is not) connected.
#[utoipa::path(post, path = "/api/v1/networks/{id}/{op}", tag = "networks", params(("id" = String, Path), ("op" = String, Path, description = "connect | disconnect")),
    request_body = NetworkConnect, responses((status = 200, body = Network), (status = 404, body = crate::model::ErrorBody)))]
pub async fn network_op(
    State(agent): State<Agent>,
    Path((id, op)): Path<(String, String)>,
    JsonBody(req): JsonBody<NetworkConnect>,
) -> ApiResult<Json<Network>> {
    let attach = match op.as_str() {
        "connect" => true,
        "disconnect" => false,
        other => {
            return Err(ApiError::not_found(format!(
                "No such network operation: {other}."
            )))
        }
    };
    Ok(Json(
        agent
            .containers
            .network_attach(&id, &req.container, attach)
            .await?,
    ))
}

/// List volumes.
///
/// The container volumes of the Docker engine.
#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", responses((status = 200, body = VolumeList)))]
pub async fn volumes(State(agent): State<Agent>) -> ApiResult<Json<VolumeList>> {
    let volumes = agent.containers.list_volumes().await?;
    Ok(Json(VolumeList {
        total_count: volumes.len(),
        volumes,
    }))
}

/// Create a volume.
///
/// Creates a container volume. 409 when the name is taken.
#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", request_body = CreateVolumeRequest,
    responses((status = 201, body = Volume), (status = 400, body = crate::model::ErrorBody)))]
pub async fn create_volume(
    State(agent): State<Agent>,
    JsonBody(req): JsonBody<CreateVolumeRequest>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    Ok((
        StatusCode::CREATED,
        Json(agent.containers.create_volume(req).await?),
    ))
}

/// Get a volume.
///
/// A container volume by name.
#[utoipa::path(get, path = "/api/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = crate::model::ErrorBody)))]
pub async fn volume(State(agent): State<Agent>, Path(id): Path<String>) -> ApiResult<Json<Volume>> {
    Ok(Json(agent.containers.inspect_volume(&id).await?))
}

/// Delete a volume.
///
/// Removes a container volume; `?force=true` even when a container uses it (else 409).
#[utoipa::path(delete, path = "/api/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 404, body = crate::model::ErrorBody), (status = 409, body = crate::model::ErrorBody)))]
pub async fn remove_volume(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    agent
        .containers
        .remove_volume(&id, flag(&q, "force")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- instances -------------------------------------------------------------

/// List VMs and containers.
///
/// VMs and containers in one list, with filters `backend`, `status`, `name` and `tag`. If the
/// Docker engine is down, the VMs are still listed and `containers_error` says why.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances",
    params(("backend" = Option<String>, Query), ("status" = Option<String>, Query), ("name" = Option<String>, Query), ("tag" = Option<String>, Query),
           ("limit" = Option<usize>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, body = InstanceList)))]
pub async fn instances(
    State(agent): State<Agent>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<InstanceList>> {
    let backend = q.get("backend").map(String::as_str);
    if let Some(b) = backend {
        if b != "vm" && b != "container" {
            return Err(ApiError::invalid(format!(
                "Invalid backend {b:?}: vm or container."
            )));
        }
    }
    let status = status_filter(&q)?;
    let (all, err) = agent.instances().await;
    let items: Vec<Instance> = all
        .into_iter()
        .filter(|i| backend.is_none_or(|b| i.backend == b))
        .filter(|i| status.is_none_or(|s| i.status == s))
        .filter(|i| q.get("name").is_none_or(|n| &i.name == n))
        .filter(|i| q.get("tag").is_none_or(|t| i.tags.contains(t)))
        .collect();
    let (instances, next_page_token, total_count) = paginate(
        items,
        |i| (i.created_at.clone(), i.id),
        "created_at",
        false,
        &q,
    )?;
    Ok(Json(InstanceList {
        instances,
        next_page_token,
        total_count,
        containers_error: err.filter(|_| backend != Some("vm")),
    }))
}

/// Create a VM or a container.
///
/// `{"backend": "vm" | "container", ...}` with the fields of `POST /vms` or `POST /containers`;
/// answers as those do.
#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", request_body = Object,
    responses((status = 201, description = "the VM or the container"), (status = 400, body = crate::model::ErrorBody)))]
pub async fn create_instance(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let backend = body
        .as_object_mut()
        .and_then(|o| o.remove("backend"))
        .and_then(|b| b.as_str().map(String::from))
        .ok_or_else(|| {
            ApiError::invalid("Invalid request body: backend (vm or container) is required.")
        })?;
    let bad = |e: serde_json::Error| ApiError::invalid(format!("Invalid request body: {e}"));
    match backend.as_str() {
        "vm" => {
            let req: CreateVmRequest = serde_json::from_value(body).map_err(bad)?;
            answer(
                agent.vms.create(req, &caller.requester()).await?,
                &headers,
                StatusCode::CREATED,
            )
            .await
        }
        "container" => {
            let req: CreateContainerRequest = serde_json::from_value(body).map_err(bad)?;
            answer(
                agent.containers.create(req, &caller.requester()).await?,
                &headers,
                StatusCode::CREATED,
            )
            .await
        }
        other => Err(ApiError::invalid(format!(
            "Invalid backend {other:?}: vm or container."
        ))),
    }
}

/// Run a power action on a VM or a container.
///
/// Power actions on either kind: `start`, `stop`, `restart`/`reboot`, `pause`,
/// `resume`/`unpause`, `kill`/`poweroff`, mapped to the backend's own.
#[utoipa::path(post, path = "/api/v1/instances/{id}/{action}", tag = "instances",
    params(("id" = String, Path), ("action" = String, Path)), request_body(content = Option<ActionRequest>),
    responses((status = 200, body = crate::model::ActionResponse), (status = 404, body = crate::model::ErrorBody)))]
pub async fn instance_action(
    State(agent): State<Agent>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    JsonBody(req): OptionalBody<ActionRequest>,
) -> ApiResult<Response> {
    super::vms::check_timeout(&req)?;
    if let Ok(entry) = agent.vms.find(&id) {
        let a = match action.as_str() {
            "restart" => Some(Action::Reboot),
            "kill" => Some(Action::Poweroff),
            "unpause" => Some(Action::Resume),
            other => Action::parse(other),
        }
        .ok_or_else(|| ApiError::not_found(format!("No such action: {action}.")))?;
        return answer_with(
            agent
                .vms
                .action(&entry, a, req.timeout, &caller.requester())?,
            &headers,
            StatusCode::OK,
            super::vms::action_response,
        )
        .await;
    }
    let a = CAction::parse(&action)
        .ok_or_else(|| ApiError::not_found(format!("No such action: {action}.")))?;
    answer_with(
        agent
            .containers
            .action(&id, a, req.timeout, &caller.requester())
            .await?,
        &headers,
        StatusCode::OK,
        container_action_response,
    )
    .await
}

/// A container action's answer, phrased for people.
fn container_action_response(d: ContainerActionDone) -> crate::model::ActionResponse {
    let message = match d.outcome {
        ContainerOutcome::AlreadyThere(s) => format!("Container already {}.", s.as_str()),
        ContainerOutcome::Done(a) => match a {
            CAction::Start => "Container started.",
            CAction::Stop => "Container stopped.",
            CAction::Restart => "Container restarted.",
            CAction::Kill => "Container killed.",
            CAction::Pause => "Container paused.",
            CAction::Unpause => "Container unpaused.",
        }
        .into(),
    };
    crate::model::ActionResponse {
        id: d.id,
        status: d.status.as_str().into(),
        message,
        job_id: d.job_id,
    }
}
