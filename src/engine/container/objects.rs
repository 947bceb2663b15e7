//! Images, networks and volumes of the container engine, and the unified
//! instance list over VMs and containers.

use std::collections::HashMap;

use bollard::query_parameters as q;
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use super::registry::ContainerEngine;
use crate::docker;
use crate::engine::core::{JobCtx, JobTarget, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::model::{Image, Network, Volume};

fn ts(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn labels_of(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// `repo[:tag]` split, tag defaulting to `latest`.
pub fn split_ref(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
        _ => (image.to_owned(), "latest".to_owned()),
    }
}

impl ContainerEngine {
    fn d(&self) -> Result<bollard::Docker> {
        Ok(self.inner.docker.client()?)
    }

    fn de(&self, what: &str) -> impl Fn(bollard::errors::Error) -> EngineError + '_ {
        let what = what.to_owned();
        move |e| self.inner.docker.map(&what, e).into()
    }

    // ---- images -------------------------------------------------------

    pub async fn list_images(&self) -> Result<Vec<Image>> {
        let list = self
            .d()?
            .list_images(Some(q::ListImagesOptions::default()))
            .await
            .map_err(self.de("listing images"))?;
        Ok(list
            .into_iter()
            .map(|i| Image {
                id: i.id,
                tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                size: i.size,
                created_at: ts(i.created),
            })
            .collect())
    }

    /// The engine's full inspect document of an image.
    pub async fn inspect_image(&self, name: &str) -> Result<Value> {
        docker::check_image_ref(name)?;
        let img = self
            .d()?
            .inspect_image(name)
            .await
            .map_err(self.de(&format!("image {name}")))?;
        serde_json::to_value(img)
            .map_err(|e| EngineError::internal("reading the engine's answer", e))
    }

    /// Drains an engine progress stream into the job's log; the first error
    /// ends it. `read` gives an item's error and its log line.
    async fn drain<S, T>(
        &self,
        ctx: &JobCtx,
        what: String,
        mut stream: S,
        read: fn(&T) -> (Option<String>, Option<String>),
    ) -> Result<()>
    where
        S: futures::Stream<Item = std::result::Result<T, bollard::errors::Error>> + Unpin,
    {
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let (err, line) = read(&info);
                    if let Some(err) = err {
                        return Err(EngineError::Invalid(format!("{what}: {err}")));
                    }
                    if let Some(line) = line.map(|l| l.trim().to_owned()).filter(|l| !l.is_empty())
                    {
                        ctx.log(line);
                    }
                }
                Err(e) => return Err(self.inner.docker.map(&what, e).into()),
            }
        }
        Ok(())
    }

    /// `drain` for a transfer with a registry: bounded in time, and a
    /// registry that does not answer is the backend being unavailable.
    async fn registry_drain<S, T>(
        &self,
        ctx: &JobCtx,
        what: String,
        stream: S,
        read: fn(&T) -> (Option<String>, Option<String>),
    ) -> Result<()>
    where
        S: futures::Stream<Item = std::result::Result<T, bollard::errors::Error>> + Unpin,
    {
        tokio::time::timeout(
            std::time::Duration::from_secs(600),
            self.drain(ctx, what.clone(), stream, read),
        )
        .await
        .map_err(|_| {
            EngineError::Unavailable(format!("{what}: no answer from the registry in 600 s"))
        })?
        .map_err(registry_error)
    }

    fn image_job(
        &self,
        kind: &str,
        what: &str,
        requester: &Requester,
    ) -> Result<(std::sync::Arc<crate::jobs::JobHandle>, JobCtx)> {
        self.core().start_single(
            Uuid::new_v4(),
            kind,
            JobTarget::Image(what.to_owned()),
            what.to_owned(),
            requester,
        )
    }

    /// Pulls an image from its registry (a job; no registry = a clear error).
    pub fn pull_image(&self, image: &str, requester: &Requester) -> Result<Submitted<Image>> {
        docker::check_image_name(image)?;
        let (repo, tag) = split_ref(image);
        let (h, ctx) = self.image_job("image.pull", image, requester)?;
        let agent = self.clone();
        let image = image.to_owned();
        Ok(self.core().spawn_job(h, None, async move {
            let d = agent.d()?;
            let stream = d.create_image(
                Some(q::CreateImageOptions {
                    from_image: Some(repo.clone()),
                    tag: Some(tag.clone()),
                    ..Default::default()
                }),
                None,
                None,
            );
            agent
                .registry_drain(
                    &ctx,
                    format!("pulling {image}"),
                    Box::pin(stream),
                    create_info,
                )
                .await?;
            agent.image_view(&format!("{repo}:{tag}")).await
        }))
    }

    async fn image_view(&self, name: &str) -> Result<Image> {
        let v = self.inspect_image(name).await?;
        Ok(Image {
            id: v["Id"].as_str().unwrap_or_default().to_owned(),
            tags: v["RepoTags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            size: v["Size"].as_i64().unwrap_or(0),
            created_at: v["Created"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Imports a root filesystem tarball as `image` (like `docker import`).
    pub fn import_image(
        &self,
        image: &str,
        tarball: hyper::body::Bytes,
        requester: &Requester,
    ) -> Result<Submitted<Image>> {
        docker::check_image_name(image)?;
        let (repo, tag) = split_ref(image);
        if tarball.is_empty() {
            return Err(EngineError::Invalid(
                "Invalid request: the tarball is empty.".into(),
            ));
        }
        let (h, ctx) = self.image_job("image.import", image, requester)?;
        let agent = self.clone();
        let image = image.to_owned();
        Ok(self.core().spawn_job(h, None, async move {
            let d = agent.d()?;
            let stream = d.create_image(
                Some(q::CreateImageOptions {
                    from_src: Some("-".into()),
                    repo: Some(repo.clone()),
                    tag: Some(tag.clone()),
                    ..Default::default()
                }),
                Some(bollard::body_full(tarball)),
                None,
            );
            agent
                .drain(
                    &ctx,
                    format!("importing {image}"),
                    Box::pin(stream),
                    create_info,
                )
                .await
                .map_err(tarball_error)?;
            agent.image_view(&format!("{repo}:{tag}")).await
        }))
    }

    /// Loads images from a `docker save` tarball.
    pub fn load_images(
        &self,
        tarball: hyper::body::Bytes,
        requester: &Requester,
    ) -> Result<Submitted<Vec<Image>>> {
        let (h, ctx) = self.image_job("image.load", "image tarball", requester)?;
        let agent = self.clone();
        Ok(self.core().spawn_job(h, None, async move {
            let d = agent.d()?;
            let stream = d.import_image(
                q::ImportImageOptions::default(),
                bollard::body_full(tarball),
                None,
            );
            agent
                .drain(&ctx, "loading images".into(), Box::pin(stream), build_info)
                .await
                .map_err(tarball_error)?;
            agent.list_images().await
        }))
    }

    /// Builds an image from a context tarball holding a Dockerfile.
    pub fn build_image(
        &self,
        tag: &str,
        dockerfile: &str,
        context: hyper::body::Bytes,
        requester: &Requester,
    ) -> Result<Submitted<Image>> {
        docker::check_image_name(tag)?;
        if !is_context_path(dockerfile) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: dockerfile {:?} must be a relative path in the context.",
                dockerfile.chars().take(64).collect::<String>()
            )));
        }
        if context.is_empty() {
            return Err(EngineError::Invalid(
                "Invalid request: the build context is empty.".into(),
            ));
        }
        let (h, ctx) = self.image_job("image.build", tag, requester)?;
        let agent = self.clone();
        let (tag, dockerfile) = (tag.to_owned(), dockerfile.to_owned());
        Ok(self.core().spawn_job(h, None, async move {
            let d = agent.d()?;
            let opts = q::BuildImageOptions {
                t: Some(tag.clone()),
                dockerfile,
                rm: true,
                forcerm: true,
                ..Default::default()
            };
            let stream = d.build_image(opts, None, Some(bollard::body_full(context)));
            agent
                .drain(
                    &ctx,
                    format!("building {tag}"),
                    Box::pin(stream),
                    build_info,
                )
                .await
                .map_err(tarball_error)?;
            agent.image_view(&tag).await
        }))
    }

    pub async fn tag_image(&self, source: &str, target: &str) -> Result<Image> {
        docker::check_image_ref(source)?;
        docker::check_image_name(target)?;
        let (repo, tag) = split_ref(target);
        self.d()?
            .tag_image(
                source,
                Some(q::TagImageOptions {
                    repo: Some(repo.clone()),
                    tag: Some(tag.clone()),
                }),
            )
            .await
            .map_err(self.de(&format!("tagging {source}")))?;
        self.image_view(&format!("{repo}:{tag}")).await
    }

    /// Pushes an image to its registry (a job; unreachable = a clear error).
    pub fn push_image(&self, image: &str, requester: &Requester) -> Result<Submitted<Image>> {
        docker::check_image_name(image)?;
        let (repo, tag) = split_ref(image);
        let (h, ctx) = self.image_job("image.push", image, requester)?;
        let agent = self.clone();
        let image = image.to_owned();
        Ok(self.core().spawn_job(h, None, async move {
            let d = agent.d()?;
            let stream = d.push_image(
                &repo,
                Some(q::PushImageOptions {
                    tag: Some(tag.clone()),
                    ..Default::default()
                }),
                None,
            );
            agent
                .registry_drain(
                    &ctx,
                    format!("pushing {image}"),
                    Box::pin(stream),
                    push_info,
                )
                .await
                .map_err(|e| match e {
                    EngineError::Invalid(m) if m.contains("does not exist locally") => {
                        EngineError::NotFound(m)
                    }
                    other => other,
                })?;
            agent.image_view(&image).await
        }))
    }

    pub async fn remove_image(&self, name: &str, force: bool) -> Result<()> {
        docker::check_image_ref(name)?;
        self.d()?
            .remove_image(
                name,
                Some(q::RemoveImageOptions {
                    force,
                    ..Default::default()
                }),
                None,
            )
            .await
            .map_err(self.de(&format!("removing image {name}")))?;
        Ok(())
    }

    // ---- networks -----------------------------------------------------

    fn network_view(v: &Value) -> Network {
        Network {
            id: v["Id"].as_str().unwrap_or_default().to_owned(),
            name: v["Name"].as_str().unwrap_or_default().to_owned(),
            driver: v["Driver"].as_str().unwrap_or_default().to_owned(),
            internal: v["Internal"].as_bool().unwrap_or(false),
            containers: v["Containers"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            labels: labels_of(&v["Labels"]),
        }
    }

    pub async fn list_networks(&self) -> Result<Vec<Network>> {
        let list = self
            .d()?
            .list_networks(Some(q::ListNetworksOptions::default()))
            .await
            .map_err(self.de("listing networks"))?;
        Ok(list
            .iter()
            .map(|n| Self::network_view(&serde_json::to_value(n).unwrap_or(Value::Null)))
            .collect())
    }

    pub async fn inspect_network(&self, name: &str) -> Result<Network> {
        docker::check_name("network", name)?;
        let n = self
            .d()?
            .inspect_network(name, None::<q::InspectNetworkOptions>)
            .await
            .map_err(self.de(&format!("network {name}")))?;
        Ok(Self::network_view(
            &serde_json::to_value(n).unwrap_or(Value::Null),
        ))
    }

    pub async fn create_network(&self, req: crate::model::CreateNetworkRequest) -> Result<Network> {
        crate::engine::vm::record::validate_name(&req.name)?;
        let driver = req.driver.unwrap_or_else(|| "bridge".into());
        if !NETWORK_DRIVERS.contains(&driver.as_str()) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: driver {:?}: use {}.",
                driver.chars().take(64).collect::<String>(),
                NETWORK_DRIVERS.join(", ")
            )));
        }
        // Networks are addressed by name: older engines would make a second
        // network of the same name, and every later call on it would fail.
        if self
            .list_networks()
            .await?
            .iter()
            .any(|n| n.name == req.name)
        {
            return Err(EngineError::Conflict(format!(
                "name already in use: network {}",
                req.name
            )));
        }
        let body: bollard::models::NetworkCreateRequest = serde_json::from_value(json!({
            "Name": req.name, "Driver": driver,
            "Internal": req.internal, "Labels": req.labels,
        }))
        .map_err(|e| EngineError::internal("building the network", e))?;
        self.d()?
            .create_network(body)
            .await
            .map_err(self.de(&format!("creating network {}", req.name)))?;
        self.inspect_network(&req.name).await
    }

    pub async fn remove_network(&self, name: &str) -> Result<()> {
        docker::check_name("network", name)?;
        self.d()?
            .remove_network(name)
            .await
            .map_err(self.de(&format!("removing network {name}")))
    }

    /// Attaches (or detaches) a container to a network.
    pub async fn network_attach(
        &self,
        network: &str,
        container: &str,
        attach: bool,
    ) -> Result<Network> {
        docker::check_name("network", network)?;
        let c = self.find(container).await?;
        let d = self.d()?;
        if attach {
            let body: bollard::models::NetworkConnectRequest =
                serde_json::from_value(json!({"Container": c.engine_id}))
                    .map_err(|e| EngineError::internal("connect", e))?;
            d.connect_network(network, body)
                .await
                .map_err(self.de(&format!("connecting {} to {network}", c.name)))?;
        } else {
            let body: bollard::models::NetworkDisconnectRequest =
                serde_json::from_value(json!({"Container": c.engine_id, "Force": false}))
                    .map_err(|e| EngineError::internal("disconnect", e))?;
            d.disconnect_network(network, body)
                .await
                .map_err(self.de(&format!("disconnecting {} from {network}", c.name)))?;
        }
        self.inspect_network(network).await
    }

    // ---- volumes ------------------------------------------------------

    fn volume_view(v: &Value) -> Volume {
        Volume {
            name: v["Name"].as_str().unwrap_or_default().to_owned(),
            driver: v["Driver"].as_str().unwrap_or_default().to_owned(),
            mountpoint: v["Mountpoint"].as_str().unwrap_or_default().to_owned(),
            labels: labels_of(&v["Labels"]),
            created_at: v["CreatedAt"].as_str().unwrap_or_default().to_owned(),
        }
    }

    pub async fn list_volumes(&self) -> Result<Vec<Volume>> {
        let list = self
            .d()?
            .list_volumes(Some(q::ListVolumesOptions::default()))
            .await
            .map_err(self.de("listing volumes"))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .iter()
            .map(|v| Self::volume_view(&serde_json::to_value(v).unwrap_or(Value::Null)))
            .collect())
    }

    pub async fn inspect_volume(&self, name: &str) -> Result<Volume> {
        docker::check_name("volume", name)?;
        let v = self
            .d()?
            .inspect_volume(name)
            .await
            .map_err(self.de(&format!("volume {name}")))?;
        Ok(Self::volume_view(
            &serde_json::to_value(v).unwrap_or(Value::Null),
        ))
    }

    pub async fn create_volume(&self, req: crate::model::CreateVolumeRequest) -> Result<Volume> {
        crate::engine::vm::record::validate_name(&req.name)?;
        if req.name.len() < 2 {
            return Err(EngineError::Invalid(
                "Invalid parameter: a volume name has at least 2 characters.".into(),
            ));
        }
        let body: bollard::models::VolumeCreateRequest =
            serde_json::from_value(json!({"Name": req.name, "Labels": req.labels}))
                .map_err(|e| EngineError::internal("building the volume", e))?;
        let v = self
            .d()?
            .create_volume(body)
            .await
            .map_err(self.de(&format!("creating volume {}", req.name)))?;
        Ok(Self::volume_view(
            &serde_json::to_value(v).unwrap_or(Value::Null),
        ))
    }

    pub async fn remove_volume(&self, name: &str, force: bool) -> Result<()> {
        docker::check_name("volume", name)?;
        self.d()?
            .remove_volume(name, Some(q::RemoveVolumeOptions { force }))
            .await
            .map_err(self.de(&format!("removing volume {name}")))
    }
}

/// A pull or push the engine could not do because the registry does not
/// answer is the backend being unavailable, not an agent failure.
fn registry_error(e: EngineError) -> EngineError {
    const UNREACHABLE: [&str; 5] = [
        "dial tcp",
        "no such host",
        "connection refused",
        "i/o timeout",
        "lookup ",
    ];
    let text = match &e {
        EngineError::Invalid(m) => m.clone(),
        EngineError::Internal { .. } => crate::engine::error::chain(&e),
        _ => return e,
    };
    if UNREACHABLE.iter().any(|k| text.contains(k)) {
        EngineError::Unavailable(format!("registry not reachable: {text}"))
    } else {
        e
    }
}

/// A path inside a build context: components of `[A-Za-z0-9_.-]` that do
/// not start with `.` or `-`, each at most 255 (a file name), joined by
/// `/`, at most 1024 in all: the engine opens it below its own build
/// directory, and the whole must stay under the kernel's 4096 (`PATH_MAX`).
pub fn is_context_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && p.split('/').all(|c| {
            c.len() <= 255
                && c.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        })
}

/// The network drivers libgo creates with: the engine's bridge (others need
/// host setup, and a plugin name makes the engine look for it for 15 s).
pub const NETWORK_DRIVERS: [&str; 1] = ["bridge"];

/// The engine failing on an uploaded tarball (not a tar, cut short, no
/// Dockerfile) is the upload's fault: 400, not the engine's 500.
fn tarball_error(e: EngineError) -> EngineError {
    match e {
        EngineError::Internal { .. } => EngineError::Invalid(format!(
            "the engine could not use the tarball: {}",
            crate::engine::error::chain(&e)
        )),
        other => other,
    }
}

fn detail(e: &Option<bollard::models::ErrorDetail>) -> Option<String> {
    e.as_ref().and_then(|d| d.message.clone())
}

fn create_info(i: &bollard::models::CreateImageInfo) -> (Option<String>, Option<String>) {
    (detail(&i.error_detail), i.status.clone())
}

fn build_info(i: &bollard::models::BuildInfo) -> (Option<String>, Option<String>) {
    (
        detail(&i.error_detail),
        i.stream.clone().or_else(|| i.status.clone()),
    )
}

fn push_info(i: &bollard::models::PushImageInfo) -> (Option<String>, Option<String>) {
    (detail(&i.error_detail), i.status.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        assert_eq!(split_ref("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_ref("libgo/bb:1.0"), ("libgo/bb".into(), "1.0".into()));
        assert_eq!(
            split_ref("localhost:5000/bb"),
            ("localhost:5000/bb".into(), "latest".into())
        );
    }

    #[test]
    fn context_paths() {
        assert!(is_context_path("Dockerfile"));
        assert!(is_context_path("build/Dockerfile.dev"));
        assert!(!is_context_path(""));
        assert!(!is_context_path("../Dockerfile"));
        assert!(!is_context_path("/Dockerfile"));
        assert!(!is_context_path(&"a".repeat(256)));
        // Components that are each a valid file name but add up past what
        // the engine can open below its build directory.
        let deep = vec!["a".repeat(255); 5].join("/");
        assert!(!is_context_path(&deep));
        assert!(is_context_path(&vec!["a".repeat(255); 4].join("/")));
    }
}
