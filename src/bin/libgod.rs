//! `libgod`: the libgo node agent. Parses its configuration, opens the state,
//! re-adopts running guests and serves the API until SIGTERM. Stopping the
//! daemon never stops a guest.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use libgo::config::{Accel, Config, IoLayer};
use libgo::notify::Notifier;
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
    /// A cluster's etcd, http://HOST:PORT: register this node there.
    #[arg(long)]
    etcd: Option<String>,
    /// How other hosts reach the TCP listener, https://HOST:PORT (default:
    /// from --listen; needed when that is a wildcard address).
    #[arg(long)]
    advertise_url: Option<String>,
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
    if let Some(v) = &args.etcd {
        cfg.etcd = v.clone();
    }
    if let Some(v) = &args.advertise_url {
        cfg.advertise_url = v.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Logs go to journald when systemd started the daemon (its journal socket
/// answers), to stderr otherwise. In the journal every field of an event and
/// of the spans around it is a field of the entry, upper-cased and without a
/// prefix: `vm_id` is `VM_ID`, `job_id` `JOB_ID`, `request_id` `REQUEST_ID`,
/// so `journalctl VM_ID=<uuid>` shows one guest's history.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    if under_systemd {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    journald
                        .with_field_prefix(None)
                        .with_syslog_identifier("libgod".into()),
                )
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before the runtime starts any thread: this edits the environment so
    // that QEMU and helpers never inherit NOTIFY_SOCKET.
    let notifier = libgo::notify::Notifier::take_from_env();
    init_logging();
    let notifier = notifier.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "NOTIFY_SOCKET unusable: no readiness or watchdog notifications");
        None
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, notifier.map(Arc::new)))
}

async fn run(args: Args, notifier: Option<Arc<Notifier>>) -> anyhow::Result<()> {
    let cfg = match load_config(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            notify_failure(notifier.as_deref(), &e);
            return Err(e);
        }
    };
    let result = serve(cfg, notifier.clone()).await;
    if let Err(e) = &result {
        notify_failure(notifier.as_deref(), e);
    }
    result
}

/// Tells the service manager why the daemon gives up (`systemctl status`).
fn notify_failure(notifier: Option<&Notifier>, e: &anyhow::Error) {
    if let Some(n) = notifier {
        let status = format!("{e:#}").replace('\n', " ");
        let _ = n.notify(&format!("STATUS=failed: {status}"));
    }
}

async fn serve(cfg: Config, notifier: Option<Arc<Notifier>>) -> anyhow::Result<()> {
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
    let mut fingerprint = None;
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
            fingerprint = Some(tls.fingerprint);
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
    let vms = agent.vms.count();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stopping = notifier.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        if let Some(n) = &stopping {
            let _ = n.notify("STOPPING=1\nSTATUS=stopping; guests keep running");
        }
        tracing::info!("stopping; guests keep running");
    };
    let registration = match cluster_registration(&cfg, &agent, &auth, fingerprint) {
        Ok(r) => r,
        Err(e) => {
            // The node serves its own clients whatever the cluster's state.
            tracing::error!(error = %format!("{e:#}"), "not registering in etcd");
            None
        }
    };
    let stop_registration = tokio_util::sync::CancellationToken::new();
    let registered = registration.map(|(coord, reg)| {
        let stop = stop_registration.clone();
        tokio::spawn(async move {
            coord
                .keep_node_registered(reg, CLUSTER_LEASE_TTL_SECS, stop)
                .await
        })
    });
    let app = libgo::api::router(agent, auth);
    let connections = cfg.connections.clone();
    let server = tokio::spawn(async move {
        libgo::api::listen::serve(listeners, app, &connections, shutdown).await;
    });
    if let Some(n) = notifier {
        // Guests were re-adopted by Agent::open; READY=1 once the socket
        // answers a request, so a unit ordered after libgod finds it serving.
        let socket = cfg.socket.clone();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Err(e) = self_check(&socket).await {
                tracing::debug!(error = %e, "the API socket does not answer yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if ready.is_err() {
            anyhow::bail!("the API socket did not answer within 30 s");
        }
        // A manager that went away is no reason to stop serving guests.
        if let Err(e) = n.notify(&format!(
            "READY=1\nMAINPID={}\nSTATUS=serving {}, {vms} VMs",
            std::process::id(),
            socket.display()
        )) {
            tracing::error!(error = %e, "cannot notify readiness to the service manager");
        }
        if let Some(timeout) = n.watchdog_timeout() {
            tokio::spawn(watchdog(n.clone(), socket, timeout));
        }
    }
    server.await.context("the API server task")?;
    if let Some(task) = registered {
        // Revoke the registration so aggregators see the node leave now,
        // not a lease TTL later.
        stop_registration.cancel();
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("etcd registration not revoked within 5 s");
        }
    }
    if !cfg.readonly_socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&cfg.readonly_socket);
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// The lease of this node's registration in etcd: aggregators see a node
/// that died gone within this many seconds.
const CLUSTER_LEASE_TTL_SECS: i64 = 10;

/// The name of the API token the node mints for the cluster, and its role:
/// the aggregators in front of the node act for every caller they serve,
/// storage pools included.
const CLUSTER_TOKEN_NAME: &str = "cluster";
const CLUSTER_TOKEN_ROLE: libgo::auth::Role = libgo::auth::Role::Admin;

/// What to register in etcd, when `etcd` is configured.
fn cluster_registration(
    cfg: &Config,
    agent: &libgo::engine::Agent,
    auth: &libgo::auth::Auth,
    fingerprint: Option<String>,
) -> anyhow::Result<
    Option<(
        libgo::cluster::coord::Coord,
        libgo::cluster::coord::NodeRegistration,
    )>,
> {
    if cfg.etcd.is_empty() {
        return Ok(None);
    }
    let url = cfg
        .advertised_url()?
        .context("no TCP listener to advertise")?;
    let token = cluster_token(auth, &cfg.state_dir.join("cluster.token"))?;
    let etcd = libgo::cluster::etcd::Etcd::new(&cfg.etcd)?;
    let coord = libgo::cluster::coord::Coord::new(etcd, &cfg.etcd_prefix);
    let reg = libgo::cluster::coord::NodeRegistration {
        name: agent.node().to_owned(),
        url,
        fingerprint,
        token,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    Ok(Some((coord, reg)))
}

/// The cluster's API token: the one whose secret is kept in `path` (mode
/// 0600) while it still authenticates with its role, else a new one
/// (minted once, not at every start).
fn cluster_token(auth: &libgo::auth::Auth, path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(kept) = std::fs::read_to_string(path) {
        let kept = kept.trim();
        match auth.authenticate(kept) {
            // Aggregators apply the rate limits to their own callers.
            Ok(p) if p.role == CLUSTER_TOKEN_ROLE && p.unlimited => return Ok(kept.to_owned()),
            Ok(_) => tracing::warn!(
                "the kept cluster token has another role or is rate limited: minting a new one"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "the kept cluster token no longer works: minting a new one")
            }
        }
    }
    let (token, secret) = auth
        .create_token(
            "uid:0",
            libgo::auth::Role::Admin,
            CLUSTER_TOKEN_NAME,
            CLUSTER_TOKEN_ROLE,
            None,
            true,
        )
        .context("minting the cluster API token")?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        // A token nobody can use again must not stay valid.
        let _ = auth.revoke_token(&token.id);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    tracing::info!(token = %token.id, role = CLUSTER_TOKEN_ROLE.as_str(), "minted the cluster API token");
    Ok(secret)
}

/// One `GET /health` over the admin socket, as a client would send it: the
/// accept loop, the router and the VM registry's lock all answer it.
async fn self_check(socket: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: libgod\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    anyhow::ensure!(
        &head[..9] == b"HTTP/1.1 " && &head[9..12] == b"200",
        "answered {:?}",
        String::from_utf8_lossy(&head)
    );
    Ok(())
}

/// Pings the watchdog at half its timeout, each time only after the daemon
/// answered a health request on its own socket within that half: a daemon
/// whose runtime, accept loop or VM registry is wedged stops pinging and
/// systemd restarts it (guests keep running and are re-adopted).
async fn watchdog(n: Arc<Notifier>, socket: PathBuf, timeout: Duration) {
    let period = timeout / 2;
    tracing::info!(period_ms = period.as_millis() as u64, "watchdog enabled");
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(period, self_check(&socket)).await {
            Ok(Ok(())) => {
                if let Err(e) = n.notify("WATCHDOG=1") {
                    tracing::warn!(error = %e, "cannot ping the watchdog");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "health check failed: watchdog not pinged"),
            Err(_) => tracing::warn!("health check timed out: watchdog not pinged"),
        }
    }
}
