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
    /// The read-only socket (default /run/libgo-ro.sock; "" for none).
    #[arg(long)]
    readonly_socket: Option<PathBuf>,
    /// Also listen on TCP at ADDR:PORT (TLS unless --plaintext).
    #[arg(long)]
    listen: Option<String>,
    /// PEM certificate chain of the TCP listener (default: self-signed).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the TCP listener.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Plain HTTP on the TCP listener: allowed on a loopback address only.
    #[arg(long)]
    plaintext: bool,
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
    if let Some(v) = &args.readonly_socket {
        cfg.readonly_socket = v.clone();
    }
    if let Some(v) = &args.listen {
        cfg.listen = v.clone();
    }
    if let Some(v) = &args.tls_cert {
        cfg.tls_cert = v.clone();
    }
    if let Some(v) = &args.tls_key {
        cfg.tls_key = v.clone();
    }
    if args.plaintext {
        cfg.plaintext = true;
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

/// Binds a Unix socket: refuses if another daemon answers on it, replaces
/// a stale file, then sets its mode.
fn bind_unix(path: &std::path::Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another libgod is serving {}", path.display());
        }
        std::fs::remove_file(path).context("removing a stale socket")?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Binds the admin socket with its mode and group.
fn bind_socket(
    cfg: &Config,
) -> anyhow::Result<(tokio::net::UnixListener, Option<nix::unistd::Gid>)> {
    let listener = bind_unix(&cfg.socket, cfg.socket_mode_bits()?)?;
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
    let nofile = libgo::api::listen::raise_nofile();
    let auth = std::sync::Arc::new(
        libgo::auth::Auth::open(
            agent.shared_store(),
            &cfg.state_dir.join("session.key"),
            cfg.session_ttl_secs,
        )
        .context("opening users and tokens")?,
    );
    let (listener, group) = bind_socket(&cfg)?;
    let mut listeners = vec![libgo::api::listen::Listener::Admin { listener, group }];
    if !cfg.readonly_socket.as_os_str().is_empty() {
        // Any local user who can open it may read: mode 0666.
        listeners.push(libgo::api::listen::Listener::ReadOnly(bind_unix(
            &cfg.readonly_socket,
            0o666,
        )?));
    }
    if !cfg.listen.is_empty() {
        let tcp = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let tls = if cfg.plaintext {
            tracing::warn!(listen = %cfg.listen, "TCP listener without TLS (loopback only)");
            None
        } else {
            let tls = libgo::api::tls::load(&cfg, agent.node())?;
            tracing::info!(
                listen = %cfg.listen,
                fingerprint = %tls.fingerprint,
                certificate = %tls.cert_path.display(),
                generated = tls.generated,
                "TLS listener certificate (SHA-256)"
            );
            Some(tls.acceptor)
        };
        listeners.push(libgo::api::listen::Listener::Tcp { listener: tcp, tls });
    }
    tracing::info!(
        socket = %cfg.socket.display(),
        readonly_socket = %cfg.readonly_socket.display(),
        listen = %cfg.listen,
        state = %cfg.state_dir.display(),
        accel = agent.vms.accel().as_str(),
        vms = agent.vms.count(),
        nofile,
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
    let app = libgo::api::router(agent, auth);
    libgo::api::listen::serve(listeners, app, &cfg.connections, shutdown).await;
    if !cfg.readonly_socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&cfg.readonly_socket);
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
