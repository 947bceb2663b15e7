//! `libgo container|template|image|network|volume|pool|job|group|user|token …`

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Subcommand;
use hyper::Method;
use serde_json::Value;
use uuid::Uuid;

use super::output::{to_value, View};
use super::views::{STATS_VIEW, VM_VIEW, VOLUME_VIEW};
use super::vm::SpecArgs;
use super::{assignments, gib, mib, usage, Ctx};
use crate::client::{segment, ListQuery};
use crate::model::*;

pub const JOB_VIEW: View = View {
    cols: &[
        ("ID", "id"),
        ("TYPE", "type"),
        ("STATE", "state"),
        ("PROGRESS", "progress_percent"),
        ("TARGET", "target"),
        ("CREATED", "created_at"),
        ("ERROR", "error"),
    ],
    id: "id",
};
const CONTAINER_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("STATUS", "status"),
        ("IMAGE", "image"),
        ("MANAGED", "managed"),
        ("ID", "id"),
    ],
    id: "id",
};
const TEMPLATE_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("VCPUS", "vcpus"),
        ("MEMORY", "memory"),
        ("DISK", "disk_size"),
        ("BASE IMAGE", "base_image"),
        ("ID", "id"),
    ],
    id: "id",
};
const IMAGE_VIEW: View = View {
    cols: &[
        ("TAGS", "tags"),
        ("SIZE", "bytes:size"),
        ("CREATED", "created_at"),
        ("ID", "id"),
    ],
    id: "id",
};
const NETWORK_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("DRIVER", "driver"),
        ("INTERNAL", "internal"),
        ("ID", "id"),
    ],
    id: "id",
};
const ENGINE_VOLUME_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("DRIVER", "driver"),
        ("MOUNTPOINT", "mountpoint"),
    ],
    id: "name",
};
const POOL_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("TYPE", "type"),
        ("STATE", "state"),
        ("PATH", "path"),
        ("CAPACITY", "bytes:capacity"),
        ("AVAILABLE", "bytes:available"),
        ("VOLUMES", "volumes"),
    ],
    id: "name",
};
const GROUP_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("DESCRIPTION", "description"),
        ("TAGS", "tags"),
        ("VMS", "vms"),
    ],
    id: "name",
};
const USER_VIEW: View = View {
    cols: &[
        ("USERNAME", "username"),
        ("ROLE", "role"),
        ("CREATED", "created_at"),
    ],
    id: "username",
};
const TOKEN_VIEW: View = View {
    cols: &[
        ("ID", "id"),
        ("NAME", "name"),
        ("OWNER", "owner"),
        ("ROLE", "role"),
        ("CREATED", "created_at"),
        ("EXPIRES", "expires_at"),
        ("UNLIMITED", "unlimited"),
    ],
    id: "id",
};

fn values<T: serde::Serialize>(items: &[T]) -> Vec<Value> {
    items.iter().map(to_value).collect()
}

// --- Containers ---------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum ContainerCmd {
    /// List containers (managed ones; --all: every one).
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  libgo container list\n  libgo container ls --all -q"
    )]
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        status: Option<String>,
    },
    /// Show a container.
    #[command(after_help = "Examples:\n  libgo container show app1")]
    Show { name: String },
    /// Create a container from an image present in the engine.
    #[command(after_help = "Examples:
  libgo container create alpine:3 --name app1 --start -- sleep 1000
  libgo container create nginx --port 80:8080 --memory 256 --env MODE=prod")]
    Create {
        image: String,
        #[arg(long)]
        name: Option<String>,
        /// KEY=VALUE (repeat).
        #[arg(long)]
        env: Vec<String>,
        /// CONTAINER_PORT[:HOST_PORT][/udp] (repeat).
        #[arg(long = "port", short = 'p')]
        ports: Vec<String>,
        /// SOURCE:TARGET[:ro] (repeat); an absolute SOURCE is a host path.
        #[arg(long = "mount", short = 'v')]
        mounts: Vec<String>,
        #[arg(long)]
        network: Option<String>,
        /// MiB, or with a unit.
        #[arg(long, value_parser = mib)]
        memory: Option<u64>,
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Start it too.
        #[arg(long)]
        start: bool,
        /// The command and its arguments.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Start containers.
    #[command(after_help = "Examples:\n  libgo container start app1")]
    Start { names: Vec<String> },
    /// Stop containers (SIGTERM, killed after the timeout).
    #[command(after_help = "Examples:\n  libgo container stop app1 --timeout 5")]
    Stop {
        names: Vec<String>,
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Restart containers.
    #[command(after_help = "Examples:\n  libgo container restart app1")]
    Restart { names: Vec<String> },
    /// Kill containers (SIGKILL).
    #[command(after_help = "Examples:\n  libgo container kill app1")]
    Kill { names: Vec<String> },
    /// Pause containers.
    #[command(after_help = "Examples:\n  libgo container pause app1")]
    Pause { names: Vec<String> },
    /// Unpause containers.
    #[command(
        visible_alias = "resume",
        after_help = "Examples:\n  libgo container unpause app1"
    )]
    Unpause { names: Vec<String> },
    /// Delete containers (--force: running ones too).
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo container rm app1 --force"
    )]
    Delete {
        names: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Change resources: KEY=VALUE pairs (vcpus, memory, io_limits.*).
    #[command(after_help = "Examples:\n  libgo container set app1 memory=512 vcpus=2")]
    Set {
        name: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Run a command in a running container; exits with its code.
    #[command(after_help = "Examples:\n  libgo container exec app1 -- cat /etc/os-release")]
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Print a container's logs.
    #[command(after_help = "Examples:\n  libgo container logs app1 --tail 50")]
    Logs {
        name: String,
        #[arg(long)]
        tail: Option<String>,
    },
    /// The latest resource figures of a running container.
    #[command(after_help = "Examples:\n  libgo container stats app1")]
    Stats { name: String },
    /// Take a container libgo did not create under its management.
    #[command(after_help = "Examples:\n  libgo container adopt legacy-db")]
    Adopt { name: String },
    /// The engine's volumes (not storage-pool volumes: see `libgo volume`).
    #[command(subcommand, after_help = "Examples:\n  libgo container volume list")]
    Volume(EngineVolumeCmd),
}

#[derive(Debug, Subcommand)]
pub enum EngineVolumeCmd {
    /// List the engine's volumes.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  libgo container volume list"
    )]
    List,
    /// Show one.
    #[command(after_help = "Examples:\n  libgo container volume show data")]
    Show { name: String },
    /// Create one.
    #[command(after_help = "Examples:\n  libgo container volume create data")]
    Create { name: String },
    /// Delete one.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo container volume rm data --force"
    )]
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

fn port(s: &str) -> anyhow::Result<PortMapping> {
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let (c, h) = match ports.split_once(':') {
        Some((c, h)) => (c, Some(h)),
        None => (ports, None),
    };
    let bad = || usage(format!("--port {s:?}: CONTAINER_PORT[:HOST_PORT][/udp]"));
    Ok(PortMapping {
        container_port: c.parse().map_err(|_| bad())?,
        host_port: h.map(|h| h.parse()).transpose().map_err(|_| bad())?,
        protocol: proto.to_owned(),
    })
}

fn mount(s: &str) -> anyhow::Result<MountSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        [source, target] => Ok(MountSpec {
            source: source.into(),
            target: target.into(),
            read_only: false,
        }),
        [source, target, "ro"] => Ok(MountSpec {
            source: source.into(),
            target: target.into(),
            read_only: true,
        }),
        _ => Err(usage(format!("--mount {s:?}: SOURCE:TARGET[:ro]"))),
    }
}

fn kv(pairs: &[String], what: &str) -> anyhow::Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| usage(format!("{what} {p:?} is not KEY=VALUE")))
        })
        .collect()
}

pub async fn container(ctx: &Ctx, cmd: ContainerCmd) -> anyhow::Result<()> {
    let act = |names: Vec<String>, action: &'static str, timeout: Option<u64>| async move {
        for arg in &names {
            let (c, name) = ctx.target(arg)?;
            let path = format!("/api/v1/containers/{}/{action}", segment(&name));
            let accepted = c
                .submit(Method::POST, &path, Some(&ActionRequest { timeout }))
                .await?;
            if ctx
                .job(&c, accepted, &format!("{action} {name}"))
                .await?
                .is_some()
            {
                let ct = c.container(&name).await?;
                ctx.out.say(&format!(
                    "{}: {}",
                    ct.name,
                    to_value(&ct.status).as_str().unwrap_or("")
                ));
                if ctx.out.quiet || ctx.out.format != super::Format::Table {
                    ctx.out.one(&to_value(&ct), &CONTAINER_VIEW);
                }
            }
        }
        anyhow::Ok(())
    };
    match cmd {
        ContainerCmd::List { all, status } => {
            let c = ctx.client()?;
            let mut q = ListQuery {
                limit: Some(200),
                ..Default::default()
            };
            if all {
                q = q.filter("all", "true");
            }
            if let Some(s) = status {
                q = q.filter("status", s);
            }
            let mut items = Vec::new();
            loop {
                let page = c.containers(&q).await?;
                items.extend(values(&page.containers));
                match page.next_page_token {
                    Some(t) => q.page_token = Some(t),
                    None => break,
                }
            }
            ctx.out.list(&items, &CONTAINER_VIEW);
        }
        ContainerCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out
                .one(&to_value(&c.container(&name).await?), &CONTAINER_VIEW);
        }
        ContainerCmd::Create {
            image,
            name,
            env,
            ports,
            mounts,
            network,
            memory,
            vcpus,
            tags,
            start,
            command,
        } => {
            let (c, image) = ctx.target(&image)?;
            let req = CreateContainerRequest {
                name,
                image,
                command: (!command.is_empty()).then_some(command),
                env: kv(&env, "--env")?,
                ports: ports
                    .iter()
                    .map(|p| port(p))
                    .collect::<anyhow::Result<_>>()?,
                mounts: mounts
                    .iter()
                    .map(|m| mount(m))
                    .collect::<anyhow::Result<_>>()?,
                network,
                labels: HashMap::new(),
                restart_policy: None,
                vcpus,
                memory,
                cpu_pinning: None,
                io_limits: None,
                tags,
                start,
            };
            let accepted = c
                .submit(Method::POST, "/api/v1/containers", Some(&req))
                .await?;
            if let Some(job) = ctx.job(&c, accepted, "create container").await? {
                let id = job
                    .target
                    .ok_or_else(|| anyhow::anyhow!("the job names no container"))?
                    .id();
                ctx.out.one(
                    &to_value(&c.container(&id.to_string()).await?),
                    &CONTAINER_VIEW,
                );
            }
        }
        ContainerCmd::Start { names } => act(names, "start", None).await?,
        ContainerCmd::Stop { names, timeout } => act(names, "stop", timeout).await?,
        ContainerCmd::Restart { names } => act(names, "restart", None).await?,
        ContainerCmd::Kill { names } => act(names, "kill", None).await?,
        ContainerCmd::Pause { names } => act(names, "pause", None).await?,
        ContainerCmd::Unpause { names } => act(names, "unpause", None).await?,
        ContainerCmd::Delete { names, force } => {
            for arg in &names {
                let (c, name) = ctx.target(arg)?;
                c.delete_container(&name, force).await?;
                ctx.out.say(&format!("Container {name} deleted."));
            }
        }
        ContainerCmd::Set { name, pairs } => {
            let (c, name) = ctx.target(&name)?;
            let body: UpdateContainerRequest = serde_json::from_value(assignments(&pairs, &[])?)
                .map_err(|e| usage(format!("cannot set that: {e}")))?;
            ctx.out.one(
                &to_value(&c.update_container(&name, &body).await?),
                &CONTAINER_VIEW,
            );
        }
        ContainerCmd::Exec {
            name,
            command,
            timeout,
        } => {
            let (c, name) = ctx.target(&name)?;
            let r = c
                .container_exec(
                    &name,
                    &ExecRequest {
                        command,
                        env: HashMap::new(),
                        timeout,
                    },
                )
                .await?;
            if ctx.out.format == super::Format::Table {
                print!("{}", r.stdout);
                eprint!("{}", r.stderr);
                if r.exit_code != 0 {
                    std::process::exit(r.exit_code.clamp(1, 255) as i32);
                }
            } else {
                ctx.out.one(
                    &to_value(&r),
                    &View {
                        cols: &[("EXIT", "exit_code")],
                        id: "exit_code",
                    },
                );
            }
        }
        ContainerCmd::Logs { name, tail } => {
            let (c, name) = ctx.target(&name)?;
            print!("{}", c.container_logs(&name, tail.as_deref()).await?);
        }
        ContainerCmd::Stats { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out
                .one(&to_value(&c.container_stats(&name).await?), &STATS_VIEW);
        }
        ContainerCmd::Adopt { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out
                .one(&to_value(&c.adopt_container(&name).await?), &CONTAINER_VIEW);
        }
        ContainerCmd::Volume(v) => match v {
            EngineVolumeCmd::List => {
                let l = ctx.client()?.volumes().await?;
                ctx.out.list(&values(&l.volumes), &ENGINE_VOLUME_VIEW);
            }
            EngineVolumeCmd::Show { name } => {
                let (c, name) = ctx.target(&name)?;
                ctx.out
                    .one(&to_value(&c.volume(&name).await?), &ENGINE_VOLUME_VIEW);
            }
            EngineVolumeCmd::Create { name } => {
                let (c, name) = ctx.target(&name)?;
                let v = c
                    .create_volume(&CreateVolumeRequest {
                        name,
                        labels: HashMap::new(),
                    })
                    .await?;
                ctx.out.one(&to_value(&v), &ENGINE_VOLUME_VIEW);
            }
            EngineVolumeCmd::Delete { name, force } => {
                let (c, name) = ctx.target(&name)?;
                c.delete_volume(&name, force).await?;
                ctx.out.say(&format!("Volume {name} deleted."));
            }
        },
    }
    Ok(())
}

// --- Templates ----------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List templates.
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo template list")]
    List,
    /// Show a template.
    #[command(after_help = "Examples:\n  libgo template show small")]
    Show { name: String },
    /// Create a template.
    #[command(
        after_help = "Examples:\n  libgo template create small --vcpus 1 --memory 512 --disk-size 5 --base-image debian-12.qcow2"
    )]
    Create {
        name: String,
        #[command(flatten)]
        spec: Box<SpecArgs>,
    },
    /// Change a template: KEY=VALUE pairs (name renames it).
    #[command(after_help = "Examples:\n  libgo template set small memory=1024 tags=web")]
    Set {
        name: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Delete templates (VMs made from them stay).
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo template rm small"
    )]
    Delete { names: Vec<String> },
}

pub async fn template(ctx: &Ctx, cmd: TemplateCmd) -> anyhow::Result<()> {
    match cmd {
        TemplateCmd::List => {
            let c = ctx.client()?;
            let mut q = ListQuery {
                limit: Some(200),
                ..Default::default()
            };
            let mut items = Vec::new();
            loop {
                let page = c.templates(&q).await?;
                items.extend(values(&page.templates));
                match page.next_page_token {
                    Some(t) => q.page_token = Some(t),
                    None => break,
                }
            }
            ctx.out.list(&items, &TEMPLATE_VIEW);
        }
        TemplateCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out
                .one(&to_value(&c.template(&name).await?), &TEMPLATE_VIEW);
        }
        TemplateCmd::Create { name, spec } => {
            let (c, name) = ctx.target(&name)?;
            let t = c
                .create_template(&TemplateRequest {
                    name: Some(name),
                    spec: spec.spec()?,
                })
                .await?;
            ctx.out.one(&to_value(&t), &TEMPLATE_VIEW);
        }
        TemplateCmd::Set { name, pairs } => {
            let (c, name) = ctx.target(&name)?;
            let body: TemplateRequest = serde_json::from_value(assignments(&pairs, &["tags"])?)
                .map_err(|e| usage(format!("cannot set that: {e}")))?;
            ctx.out.one(
                &to_value(&c.patch_template(&name, &body).await?),
                &TEMPLATE_VIEW,
            );
        }
        TemplateCmd::Delete { names } => {
            for arg in &names {
                let (c, name) = ctx.target(arg)?;
                c.delete_template(&name).await?;
                ctx.out.say(&format!("Template {name} deleted."));
            }
        }
    }
    Ok(())
}

// --- Images -------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// List images.
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo image list")]
    List,
    /// The engine's inspect document of an image.
    #[command(after_help = "Examples:\n  libgo image show alpine:3 --format json")]
    Show { name: String },
    /// Pull an image from its registry.
    #[command(
        after_help = "Examples:\n  libgo image pull alpine:3\n  libgo image pull docker.io/library/nginx:1.27 --async"
    )]
    Pull { image: String },
    /// Tag an image.
    #[command(after_help = "Examples:\n  libgo image tag alpine:3 registry.local/base:1")]
    Tag { image: String, new: String },
    /// Push an image to its registry.
    #[command(after_help = "Examples:\n  libgo image push registry.local/base:1")]
    Push { image: String },
    /// Import a root filesystem tarball as an image.
    #[command(after_help = "Examples:\n  libgo image import rootfs.tar mybase:1")]
    Import {
        file: std::path::PathBuf,
        image: String,
    },
    /// Remove images.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo image rm alpine:3 --force"
    )]
    Delete {
        images: Vec<String>,
        #[arg(long)]
        force: bool,
    },
}

pub async fn image(ctx: &Ctx, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::List => {
            let l = ctx.client()?.images().await?;
            ctx.out.list(&values(&l.images), &IMAGE_VIEW);
        }
        ImageCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            let v = c.image(&name).await?;
            ctx.out.one(
                &v,
                &View {
                    cols: &[("ID", "Id")],
                    id: "Id",
                },
            );
        }
        ImageCmd::Pull { image } => {
            let (c, image) = ctx.target(&image)?;
            let accepted = c.pull_image_async(&image).await?;
            if ctx
                .job(&c, accepted, &format!("pull {image}"))
                .await?
                .is_some()
            {
                ctx.out.say(&format!("Pulled {image}."));
                if ctx.out.quiet || ctx.out.format != super::Format::Table {
                    ctx.out.one(
                        &c.image(&image).await?,
                        &View {
                            cols: &[("ID", "Id")],
                            id: "Id",
                        },
                    );
                }
            }
        }
        ImageCmd::Tag { image, new } => {
            let (c, image) = ctx.target(&image)?;
            ctx.out
                .one(&to_value(&c.tag_image(&image, &new).await?), &IMAGE_VIEW);
        }
        ImageCmd::Push { image } => {
            let (c, image) = ctx.target(&image)?;
            ctx.out
                .one(&to_value(&c.push_image(&image).await?), &IMAGE_VIEW);
        }
        ImageCmd::Import { file, image } => {
            let (c, image) = ctx.target(&image)?;
            let tar = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            ctx.out
                .one(&to_value(&c.import_image(&image, tar).await?), &IMAGE_VIEW);
        }
        ImageCmd::Delete { images, force } => {
            for arg in &images {
                let (c, image) = ctx.target(arg)?;
                c.remove_image(&image, force).await?;
                ctx.out.say(&format!("Image {image} removed."));
            }
        }
    }
    Ok(())
}

// --- Networks -----------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// List container networks.
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo network list")]
    List,
    /// Show a network.
    #[command(after_help = "Examples:\n  libgo network show backend")]
    Show { name: String },
    /// Create a bridge network.
    #[command(after_help = "Examples:\n  libgo network create backend --internal")]
    Create {
        name: String,
        #[arg(long)]
        internal: bool,
    },
    /// Delete networks.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo network rm backend"
    )]
    Delete { names: Vec<String> },
    /// Connect a container.
    #[command(after_help = "Examples:\n  libgo network connect backend app1")]
    Connect { name: String, container: String },
    /// Disconnect a container.
    #[command(after_help = "Examples:\n  libgo network disconnect backend app1")]
    Disconnect { name: String, container: String },
}

pub async fn network(ctx: &Ctx, cmd: NetworkCmd) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::List => {
            let l = ctx.client()?.networks().await?;
            ctx.out.list(&values(&l.networks), &NETWORK_VIEW);
        }
        NetworkCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out
                .one(&to_value(&c.network(&name).await?), &NETWORK_VIEW);
        }
        NetworkCmd::Create { name, internal } => {
            let (c, name) = ctx.target(&name)?;
            let req = CreateNetworkRequest {
                name,
                driver: None,
                internal,
                labels: HashMap::new(),
            };
            ctx.out
                .one(&to_value(&c.create_network(&req).await?), &NETWORK_VIEW);
        }
        NetworkCmd::Delete { names } => {
            for arg in &names {
                let (c, name) = ctx.target(arg)?;
                c.delete_network(&name).await?;
                ctx.out.say(&format!("Network {name} deleted."));
            }
        }
        NetworkCmd::Connect { name, container } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(
                &to_value(&c.network_op(&name, "connect", &container).await?),
                &NETWORK_VIEW,
            );
        }
        NetworkCmd::Disconnect { name, container } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(
                &to_value(&c.network_op(&name, "disconnect", &container).await?),
                &NETWORK_VIEW,
            );
        }
    }
    Ok(())
}

// --- Storage volumes and pools -------------------------------------------

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// List the volumes of a pool (default: every active pool).
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  libgo volume list\n  libgo volume list --pool default"
    )]
    List {
        #[arg(long)]
        pool: Option<String>,
    },
    /// Show a volume (`POOL/NAME`, or NAME in `default`).
    #[command(after_help = "Examples:\n  libgo volume show default/debian-12.qcow2")]
    Show { volume: String },
    /// Create a volume: empty (--size), a copy (--source) or a qcow2
    /// conversion (--import) of another volume.
    #[command(after_help = "Examples:
  libgo volume create data.qcow2 --size 20
  libgo volume create --pool fast copy.qcow2 --source default/base.qcow2
  libgo volume create appliance.qcow2 --import default/appliance.ova")]
    Create {
        name: String,
        #[arg(long, default_value = "default")]
        pool: String,
        /// GiB of a new empty volume.
        #[arg(long, value_parser = gib)]
        size: Option<u64>,
        /// Format of a new empty volume.
        #[arg(long = "volume-format", value_parser = ["qcow2", "raw"])]
        volume_format: Option<String>,
        /// Copy `POOL/VOLUME`.
        #[arg(long)]
        source: Option<String>,
        /// Convert `POOL/VOLUME` (qcow2, raw, vmdk, vdi, ova) to qcow2.
        #[arg(long)]
        import: Option<String>,
    },
    /// Delete volumes.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo volume rm default/old.qcow2"
    )]
    Delete { volumes: Vec<String> },
    /// Upload a file as a volume's content (`POOL/NAME`, or NAME in
    /// `default`): made, or replaced whole; streamed, never held in memory.
    #[command(after_help = "Examples:
  libgo volume upload default/debian-12.qcow2 ./debian-12-genericcloud-amd64.qcow2
  libgo volume upload appliance.ova ./appliance.ova && libgo volume create appliance.qcow2 --import default/appliance.ova")]
    Upload { volume: String, file: PathBuf },
    /// Download a volume's content into a file (`-` for standard output).
    #[command(after_help = "Examples:
  libgo volume download default/web1.ova -o web1.ova
  libgo volume download fast/data.qcow2 -o - | qemu-img info /dev/stdin")]
    Download {
        volume: String,
        /// Where to write (default: the volume's name in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn pool_volume(s: &str) -> (String, String) {
    match s.split_once('/') {
        Some((p, v)) => (p.to_owned(), v.to_owned()),
        None => ("default".to_owned(), s.to_owned()),
    }
}

fn volume_ref(s: &str) -> VolumeRef {
    match s.split_once('/') {
        Some((p, v)) => VolumeRef {
            pool: Some(p.into()),
            volume: v.into(),
        },
        None => VolumeRef {
            pool: None,
            volume: s.into(),
        },
    }
}

pub async fn volume(ctx: &Ctx, cmd: VolumeCmd) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::List { pool } => {
            let c = ctx.client()?;
            let pools = match pool {
                Some(p) => vec![p],
                None => c
                    .pools()
                    .await?
                    .pools
                    .into_iter()
                    .filter(|p| p.state == PoolState::Active)
                    .map(|p| p.name)
                    .collect(),
            };
            let mut items = Vec::new();
            for p in pools {
                items.extend(values(&c.pool_volumes(&p).await?.volumes));
            }
            ctx.out.list(&items, &VOLUME_VIEW);
        }
        VolumeCmd::Show { volume } => {
            let (c, v) = ctx.target(&volume)?;
            let (p, v) = pool_volume(&v);
            ctx.out
                .one(&to_value(&c.pool_volume(&p, &v).await?), &VOLUME_VIEW);
        }
        VolumeCmd::Create {
            name,
            pool,
            size,
            volume_format,
            source,
            import,
        } => {
            let (c, pool) = ctx.target(&pool)?;
            let req = CreateStorageVolumeRequest {
                name: name.clone(),
                capacity: size,
                format: volume_format
                    .map(|f| serde_json::from_value(Value::String(f)))
                    .transpose()?,
                source: source.as_deref().map(volume_ref),
                import: import.as_deref().map(volume_ref),
            };
            let accepted = c.create_pool_volume_async(&pool, &req).await?;
            if ctx
                .job(&c, accepted, &format!("create {name}"))
                .await?
                .is_some()
            {
                ctx.out
                    .one(&to_value(&c.pool_volume(&pool, &name).await?), &VOLUME_VIEW);
            }
        }
        VolumeCmd::Delete { volumes } => {
            for arg in &volumes {
                let (c, v) = ctx.target(arg)?;
                let (p, v) = pool_volume(&v);
                c.delete_pool_volume(&p, &v).await?;
                ctx.out.say(&format!("Volume {p}/{v} deleted."));
            }
        }
        VolumeCmd::Upload { volume, file } => {
            let (c, v) = ctx.target(&volume)?;
            let (p, v) = pool_volume(&v);
            let f = tokio::fs::File::open(&file)
                .await
                .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
            let vol = c.upload_pool_volume_file(&p, &v, f).await?;
            ctx.out.one(&to_value(&vol), &VOLUME_VIEW);
        }
        VolumeCmd::Download { volume, output } => {
            let (c, v) = ctx.target(&volume)?;
            let (p, v) = pool_volume(&v);
            let resp = c.download_pool_volume(&p, &v).await?;
            let output = output.unwrap_or_else(|| PathBuf::from(&v));
            let written = if output.as_os_str() == "-" {
                copy_body(resp, tokio::io::stdout()).await?
            } else {
                // Written beside its name and renamed when whole, so a cut
                // download never looks like a whole one.
                let mut part = output.clone().into_os_string();
                part.push(".part");
                let part = PathBuf::from(part);
                let mut f = tokio::fs::File::create(&part).await?;
                let copied = match copy_body(resp, &mut f).await {
                    Ok(n) => f.sync_all().await.map(|()| n).map_err(Into::into),
                    Err(e) => Err(e),
                };
                match copied {
                    Ok(n) => {
                        tokio::fs::rename(&part, &output).await?;
                        n
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&part).await;
                        return Err(e);
                    }
                }
            };
            if output.as_os_str() != "-" {
                ctx.out
                    .say(&format!("{written} bytes written to {}.", output.display()));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// List storage pools.
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo pool list")]
    List,
    /// Show a pool.
    #[command(after_help = "Examples:\n  libgo pool show default")]
    Show { name: String },
    /// Create a pool: a directory, or an iSCSI target.
    #[command(after_help = "Examples:
  libgo pool create fast --type dir --path /var/lib/libgo/pools/fast
  libgo pool create san --type iscsi --host 10.0.0.5 --target iqn.2026-01.lan.san:vms")]
    Create {
        name: String,
        #[arg(long = "type", default_value = "dir", value_parser = ["dir", "iscsi"])]
        kind: String,
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        target: Option<String>,
    },
    /// Delete pools.
    #[command(visible_alias = "rm", after_help = "Examples:\n  libgo pool rm fast")]
    Delete { names: Vec<String> },
    /// Activate a pool.
    #[command(after_help = "Examples:\n  libgo pool activate fast")]
    Activate { name: String },
    /// Deactivate a pool.
    #[command(after_help = "Examples:\n  libgo pool deactivate fast")]
    Deactivate { name: String },
}

pub async fn pool(ctx: &Ctx, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::List => {
            let l = ctx.client()?.pools().await?;
            ctx.out.list(&values(&l.pools), &POOL_VIEW);
        }
        PoolCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(&to_value(&c.pool(&name).await?), &POOL_VIEW);
        }
        PoolCmd::Create {
            name,
            kind,
            path,
            host,
            target,
        } => {
            let (c, name) = ctx.target(&name)?;
            let req = CreatePoolRequest {
                name,
                kind: serde_json::from_value(Value::String(kind))?,
                path,
                host,
                target,
            };
            ctx.out
                .one(&to_value(&c.create_pool(&req).await?), &POOL_VIEW);
        }
        PoolCmd::Delete { names } => {
            for arg in &names {
                let (c, name) = ctx.target(arg)?;
                c.delete_pool(&name).await?;
                ctx.out.say(&format!("Pool {name} deleted."));
            }
        }
        PoolCmd::Activate { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(
                &to_value(&c.pool_action(&name, "activate").await?),
                &POOL_VIEW,
            );
        }
        PoolCmd::Deactivate { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(
                &to_value(&c.pool_action(&name, "deactivate").await?),
                &POOL_VIEW,
            );
        }
    }
    Ok(())
}

// --- Jobs ---------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List jobs, newest first.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  libgo job list\n  libgo job list --state running --type vm.create"
    )]
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long = "type")]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a job with its tasks.
    #[command(after_help = "Examples:\n  libgo job show 9e1f…")]
    Show { id: String },
    /// Wait for a job to end (a progress bar on a terminal); exits 1 if it
    /// did not succeed.
    #[command(
        after_help = "Examples:\n  id=$(libgo vm start web1 --async) && libgo job wait \"$id\""
    )]
    Wait { id: String },
    /// Cancel running jobs.
    #[command(after_help = "Examples:\n  libgo job cancel 9e1f…")]
    Cancel { ids: Vec<String> },
}

fn job_id(ctx: &Ctx, arg: &str) -> anyhow::Result<(crate::client::Client, Uuid)> {
    let (c, id) = ctx.target(arg)?;
    let id = Uuid::parse_str(&id).map_err(|_| usage(format!("{id:?} is not a job id (a UUID)")))?;
    Ok((c, id))
}

pub async fn job(ctx: &Ctx, cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {
        JobCmd::List { state, kind, limit } => {
            let mut q = ListQuery {
                limit: Some(limit.clamp(1, 200)),
                ..Default::default()
            };
            if let Some(s) = state {
                q = q.filter("state", s);
            }
            if let Some(k) = kind {
                q = q.filter("type", k);
            }
            let l = ctx.client()?.jobs(&q).await?;
            ctx.out.list(&values(&l.jobs), &JOB_VIEW);
        }
        JobCmd::Show { id } => {
            let (c, id) = job_id(ctx, &id)?;
            ctx.out.one(&to_value(&c.job(id).await?), &JOB_VIEW);
        }
        JobCmd::Wait { id } => {
            let (c, id) = job_id(ctx, &id)?;
            let job = c.job(id).await?;
            let accepted = Accepted { job, vm: None };
            if let Some(job) = ctx.follow(&c, accepted, "waiting").await? {
                ctx.out.say(&format!(
                    "Job {} {}.",
                    job.id,
                    to_value(&job.state).as_str().unwrap_or("")
                ));
                if ctx.out.quiet || ctx.out.format != super::Format::Table {
                    ctx.out.one(&to_value(&job), &JOB_VIEW);
                }
            }
        }
        JobCmd::Cancel { ids } => {
            for arg in &ids {
                let (c, id) = job_id(ctx, arg)?;
                let job = c.cancel_job(id).await?;
                ctx.out.one(&to_value(&job), &JOB_VIEW);
            }
        }
    }
    Ok(())
}

// --- Groups -------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List groups.
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo group list")]
    List,
    /// Show a group.
    #[command(after_help = "Examples:\n  libgo group show web")]
    Show { name: String },
    /// Create a group.
    #[command(
        after_help = "Examples:\n  libgo group create web --description 'front ends' --vm web1 --vm web2"
    )]
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long = "vm")]
        vms: Vec<String>,
    },
    /// Change a group: description=…, tags=a,b, vms=web1,web2 (the whole list).
    #[command(after_help = "Examples:\n  libgo group set web vms=web1,web2,web3")]
    Set {
        name: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Delete groups (their VMs stay unless --delete-vms).
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo group rm web\n  libgo group rm web --delete-vms"
    )]
    Delete {
        names: Vec<String>,
        #[arg(long)]
        delete_vms: bool,
    },
    /// The group's VMs.
    #[command(after_help = "Examples:\n  libgo group members web")]
    Members { name: String },
    /// Start every VM of the group.
    #[command(after_help = "Examples:\n  libgo group start web")]
    Start { name: String },
    /// Stop every VM of the group.
    #[command(after_help = "Examples:\n  libgo group stop web --timeout 30")]
    Stop {
        name: String,
        #[arg(long)]
        timeout: Option<u64>,
    },
}

pub async fn group(ctx: &Ctx, cmd: GroupCmd) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::List => {
            let l = ctx
                .client()?
                .groups(&ListQuery {
                    limit: Some(200),
                    ..Default::default()
                })
                .await?;
            ctx.out.list(&values(&l.groups), &GROUP_VIEW);
        }
        GroupCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(&to_value(&c.group(&name).await?), &GROUP_VIEW);
        }
        GroupCmd::Create {
            name,
            description,
            tags,
            vms,
        } => {
            let (c, name) = ctx.target(&name)?;
            let req = CreateGroupRequest {
                name,
                description,
                tags: (!tags.is_empty()).then_some(tags),
                vms: (!vms.is_empty()).then_some(vms),
            };
            ctx.out
                .one(&to_value(&c.create_group(&req).await?), &GROUP_VIEW);
        }
        GroupCmd::Set { name, pairs } => {
            let (c, name) = ctx.target(&name)?;
            let body: UpdateGroupRequest =
                serde_json::from_value(assignments(&pairs, &["tags", "vms"])?)
                    .map_err(|e| usage(format!("cannot set that: {e}")))?;
            ctx.out
                .one(&to_value(&c.put_group(&name, &body).await?), &GROUP_VIEW);
        }
        GroupCmd::Delete { names, delete_vms } => {
            for arg in &names {
                let (c, name) = ctx.target(arg)?;
                if delete_vms {
                    let v = c.delete_group_with_vms(&name).await?;
                    if let Ok(accepted) = serde_json::from_value::<Accepted>(v) {
                        ctx.job(&c, accepted, &format!("delete {name}")).await?;
                    }
                } else {
                    c.delete_group(&name).await?;
                }
                ctx.out.say(&format!("Group {name} deleted."));
            }
        }
        GroupCmd::Members { name } => {
            let (c, name) = ctx.target(&name)?;
            let m = c.group_members(&name).await?;
            ctx.out.list(&values(&m.vms), &VM_VIEW);
        }
        GroupCmd::Start { name } => group_action(ctx, &name, "start", None).await?,
        GroupCmd::Stop { name, timeout } => group_action(ctx, &name, "stop", timeout).await?,
    }
    Ok(())
}

async fn group_action(
    ctx: &Ctx,
    arg: &str,
    action: &str,
    timeout: Option<u64>,
) -> anyhow::Result<()> {
    let (c, name) = ctx.target(arg)?;
    let accepted = c.group_action_async(&name, action, timeout).await?;
    if let Some(job) = ctx.job(&c, accepted, &format!("{action} {name}")).await? {
        ctx.out.one(&to_value(&job), &JOB_VIEW);
    }
    Ok(())
}

// --- Users and tokens ---------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// List users.
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo user list")]
    List,
    /// Show a user.
    #[command(after_help = "Examples:\n  libgo user show alice")]
    Show { name: String },
    /// Create a user; the password from LIBGO_PASSWORD or the first line of stdin.
    #[command(
        after_help = "Examples:\n  echo 's3cret-pass' | libgo user create alice --role operator"
    )]
    Create {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        #[arg(long, env = "LIBGO_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Change a user's role, or password (--password or stdin with --password-stdin).
    #[command(
        after_help = "Examples:\n  libgo user set alice --role admin\n  echo 'n3w-pass' | libgo user set alice --password-stdin"
    )]
    Set {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete users (their sessions and tokens end).
    #[command(visible_alias = "rm", after_help = "Examples:\n  libgo user rm alice")]
    Delete { names: Vec<String> },
}

pub fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        return Err(usage("no password on stdin"));
    }
    Ok(p)
}

pub async fn user(ctx: &Ctx, cmd: UserCmd) -> anyhow::Result<()> {
    let role = |r: &str| serde_json::from_value::<Role>(Value::String(r.into()));
    match cmd {
        UserCmd::List => {
            let l = ctx.client()?.users().await?;
            ctx.out.list(&values(&l.users), &USER_VIEW);
        }
        UserCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(&to_value(&c.user(&name).await?), &USER_VIEW);
        }
        UserCmd::Create {
            name,
            role: r,
            password,
        } => {
            let (c, name) = ctx.target(&name)?;
            let password = match password {
                Some(p) => p,
                None => read_password()?,
            };
            let req = CreateUserRequest {
                username: name,
                password,
                role: role(&r)?,
            };
            ctx.out
                .one(&to_value(&c.create_user(&req).await?), &USER_VIEW);
        }
        UserCmd::Set {
            name,
            role: r,
            password_stdin,
        } => {
            let (c, name) = ctx.target(&name)?;
            if r.is_none() && !password_stdin {
                return Err(usage("nothing to change: --role or --password-stdin"));
            }
            let req = PatchUserRequest {
                password: password_stdin.then(read_password).transpose()?,
                role: r.as_deref().map(role).transpose()?,
            };
            ctx.out
                .one(&to_value(&c.patch_user(&name, &req).await?), &USER_VIEW);
        }
        UserCmd::Delete { names } => {
            for arg in &names {
                let (c, name) = ctx.target(arg)?;
                c.delete_user(&name).await?;
                ctx.out.say(&format!("User {name} deleted."));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List API tokens (never their secrets).
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo token list")]
    List,
    /// Show a token.
    #[command(after_help = "Examples:\n  libgo token show 3f2a…")]
    Show { id: String },
    /// Make a token; its secret is printed this once.
    #[command(
        after_help = "Examples:\n  libgo token create aggregator --role admin --unlimited\n  libgo token create ci --role operator --expires-in 86400 -q   # the secret alone"
    )]
    Create {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Seconds until it expires (never when left out).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Its calls are not counted against the rate limits (an
        /// aggregator's token).
        #[arg(long)]
        unlimited: bool,
    },
    /// Revoke tokens.
    #[command(visible_aliases = ["delete", "rm"], after_help = "Examples:\n  libgo token revoke 3f2a…")]
    Revoke { ids: Vec<String> },
}

pub async fn token(ctx: &Ctx, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::List => {
            let l = ctx.client()?.tokens().await?;
            ctx.out.list(&values(&l.tokens), &TOKEN_VIEW);
        }
        TokenCmd::Show { id } => {
            let (c, id) = ctx.target(&id)?;
            ctx.out.one(&to_value(&c.token(&id).await?), &TOKEN_VIEW);
        }
        TokenCmd::Create {
            name,
            role,
            expires_in,
            unlimited,
        } => {
            let (c, name) = ctx.target(&name)?;
            let req = CreateTokenRequest {
                name,
                role: serde_json::from_value(Value::String(role))?,
                expires_in,
                unlimited,
            };
            let t = c.create_token(&req).await?;
            ctx.out.one(
                &to_value(&t),
                &View {
                    cols: &[("ID", "id"), ("SECRET", "secret")],
                    id: "secret",
                },
            );
        }
        TokenCmd::Revoke { ids } => {
            for arg in &ids {
                let (c, id) = ctx.target(arg)?;
                c.revoke_token(&id).await?;
                ctx.out.say(&format!("Token {id} revoked."));
            }
        }
    }
    Ok(())
}

// --- Audit --------------------------------------------------------------

pub const AUDIT_VIEW: View = View {
    cols: &[
        ("AT", "at"),
        ("ACTOR", "actor"),
        ("METHOD", "method"),
        ("PATH", "path"),
        ("STATUS", "status"),
        ("OUTCOME", "outcome"),
    ],
    id: "request_id",
};

/// `libgo audit`: the agent's trail of mutating calls, newest first.
pub async fn audit(
    ctx: &Ctx,
    actor: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
    limit: u32,
) -> anyhow::Result<()> {
    let mut q = ListQuery {
        limit: Some(limit.clamp(1, 200)),
        ..Default::default()
    };
    for (k, v) in [("actor", actor), ("target", target), ("outcome", outcome)] {
        if let Some(v) = v {
            q = q.filter(k, v);
        }
    }
    let page = ctx.client()?.audit(&q).await?;
    ctx.out.list(&values(&page.events), &AUDIT_VIEW);
    Ok(())
}

/// Copies a response's body to `out` as it arrives; the byte count.
async fn copy_body(
    resp: hyper::Response<hyper::body::Incoming>,
    mut out: impl tokio::io::AsyncWrite + Unpin,
) -> anyhow::Result<u64> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data).await?;
            n += data.len() as u64;
        }
    }
    out.flush().await?;
    Ok(n)
}
