//! `libgod`: the libgo node agent. Parses its configuration, opens the state,
//! re-adopts running guests and serves the API until SIGTERM. Stopping the
//! daemon never stops a guest.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use libgo::config::{Accel, Config, IoLayer};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::prelude::*;

#[derive(Parser, Debug)]
#[command(name = "libgod", version, about = "libgo node agent")]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "LIBGO_CONFIG")]
    config: Option<PathBuf>,
    /// API socket (default /run/libgo.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Socket file mode, octal (default 0660).
    #[arg(long)]
    socket_mode: Option<String>,
    /// Durable state directory (default /var/lib/libgo).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Runtime directory (default /run/libgo).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The default storage pool (default /var/lib/libgo/images).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// QEMU system emulator binary.
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// qemu-img binary.
    #[arg(long)]
    qemu_img: Option<PathBuf>,
    /// Seconds to wait for any QMP reply.
    #[arg(long)]
    qmp_timeout: Option<u64>,
    /// Seconds to wait for a fresh QEMU's monitor.
    #[arg(long)]
    qemu_start_timeout: Option<u64>,
    /// Default seconds a graceful stop waits before forcing.
    #[arg(long)]
    stop_timeout: Option<u64>,
    /// Where I/O limits are enforced: cgroup, qemu, or both (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    io_throttle: Option<Vec<IoLayer>>,
    /// The cgroup filesystem root (default /sys/fs/cgroup).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Milliseconds between performance samples.
    #[arg(long)]
    sample_interval_ms: Option<u64>,
    /// Items of a bulk job that run at once (0: the number of cores).
    #[arg(long)]
    bulk_parallelism: Option<usize>,
    /// The Docker Engine API socket (default /var/run/docker.sock).
    #[arg(long)]
    docker_socket: Option<PathBuf>,
    /// This agent's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = &args.socket {
        cfg.socket = v.clone();
    }
    if let Some(v) = &args.socket_mode {
        cfg.socket_mode = v.clone();
    }
    if let Some(v) = &args.state_dir {
        cfg.state_dir = v.clone();
        if args.image_dir.is_none() && args.config.is_none() {
            cfg.image_dir = v.join("images");
        }
    }
    if let Some(v) = &args.run_dir {
        cfg.run_dir = v.clone();
    }
    if let Some(v) = &args.image_dir {
        cfg.image_dir = v.clone();
    }
    if let Some(v) = args.accel {
        cfg.accel = v;
    }
    if let Some(v) = &args.qemu {
        cfg.qemu_binary = v.clone();
    }
    if let Some(v) = &args.qemu_img {
        cfg.qemu_img_binary = v.clone();
    }
    if let Some(v) = args.qmp_timeout {
        cfg.qmp_timeout_secs = v;
    }
    if let Some(v) = args.qemu_start_timeout {
        cfg.qemu_start_timeout_secs = v;
    }
    if let Some(v) = args.stop_timeout {
        cfg.stop_timeout_secs = v;
    }
    if let Some(v) = &args.io_throttle {
        cfg.io_throttle = v.clone();
    }
    if let Some(v) = &args.cgroup_root {
        cfg.cgroup_root = v.clone();
    }
    if let Some(v) = args.sample_interval_ms {
        cfg.sample_interval_ms = v;
    }
    if let Some(v) = args.bulk_parallelism {
        cfg.bulk_parallelism = v;
    }
    if let Some(v) = &args.docker_socket {
        cfg.docker_socket = v.clone();
    }
    if let Some(v) = &args.node_name {
        cfg.node_name = v.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    if under_systemd {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald)
                .init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

/// Binds the API socket: refuses if another daemon answers on it, replaces
/// a stale file, then sets mode and group.
fn bind_socket(
    cfg: &Config,
) -> anyhow::Result<(tokio::net::UnixListener, Option<nix::unistd::Gid>)> {
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if cfg.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
            anyhow::bail!("another libgod is serving {}", cfg.socket.display());
        }
        std::fs::remove_file(&cfg.socket).context("removing a stale socket")?;
    }
    let listener = tokio::net::UnixListener::bind(&cfg.socket)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(
        &cfg.socket,
        std::fs::Permissions::from_mode(cfg.socket_mode_bits()?),
    )?;
    let group = nix::unistd::Group::from_name(&cfg.socket_group)
        .ok()
        .flatten();
    match &group {
        Some(g) => {
            nix::unistd::chown(&cfg.socket, None, Some(g.gid))
                .with_context(|| format!("giving {} to group {}", cfg.socket.display(), g.name))?;
        }
        None => {
            tracing::info!(group = %cfg.socket_group, "group does not exist: only root may use the socket")
        }
    }
    Ok((listener, group.map(|g| g.gid)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let cfg = load_config(&args)?;
    let started = std::time::Instant::now();
    let agent = libgo::engine::Agent::open(cfg.clone()).await?;
    let (listener, group) = bind_socket(&cfg)?;
    tracing::info!(
        socket = %cfg.socket.display(),
        state = %cfg.state_dir.display(),
        accel = agent.vms.accel().as_str(),
        vms = agent.vms.count(),
        ready_ms = started.elapsed().as_millis() as u64,
        "libgod serving"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("stopping; guests keep running");
    };
    libgo::api::serve_unix(listener, libgo::api::router(agent), group, shutdown).await;
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
