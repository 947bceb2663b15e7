//! `libgo-aggregator`: many libgo agents served as one API. Polls the nodes
//! of its configuration (or those registered in etcd), merges their lists,
//! places creates and passes every other call on to the node it concerns.
//! It keeps no guest state of its own: stopping it touches no node.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use libgo::cluster::config::AggregatorConfig;
use libgo::cluster::registry::{NodeHandle, Source};
use libgo::cluster::service::{self, Aggregator};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(name = "libgo-aggregator", version, about = "libgo cluster aggregator")]
struct Args {
    /// TOML configuration file (`poll_interval`, `[[node]]` entries, …).
    #[arg(long, env = "LIBGO_AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// API socket (default /run/libgo-aggregator.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// TLS listener, ADDR:PORT (default: none).
    #[arg(long)]
    listen: Option<String>,
    /// etcd, http://HOST:PORT: nodes are discovered there, and names and
    /// cluster jobs are shared with the other aggregators.
    #[arg(long)]
    etcd: Option<String>,
    /// Users, tokens, the audit trail and the TLS certificate
    /// (default /var/lib/libgo-aggregator).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This aggregator's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn load(args: &Args) -> anyhow::Result<AggregatorConfig> {
    let mut cfg = AggregatorConfig::load(args.config.as_deref())?;
    if let Some(v) = &args.socket {
        cfg.socket = v.clone();
    }
    if let Some(v) = &args.listen {
        cfg.listen = v.clone();
    }
    if let Some(v) = &args.etcd {
        cfg.etcd = v.clone();
    }
    if let Some(v) = &args.state_dir {
        cfg.state_dir = v.clone();
    }
    if let Some(v) = &args.name {
        cfg.name = v.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = load(&args)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let store = Arc::new(
        libgo::store::Store::open(&cfg.state_dir.join("aggregator.db"))
            .context("opening the aggregator's state")?,
    );
    // Idempotency keys are remembered for a day, as on an agent.
    let pruned = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let cutoff = libgo::clock::unix_now() - libgo::engine::IDEMPOTENCY_TTL;
            if let Err(e) = pruned.prune_idempotency(cutoff) {
                tracing::warn!(error = %e, "pruning idempotency keys");
            }
        }
    });
    let auth = Arc::new(
        libgo::auth::Auth::open(store.clone(), &cfg.state_dir.join("session.key"), 12 * 3600)
            .context("opening users and tokens")?,
    );
    let access = Arc::new(libgo::api::access::AccessState {
        auth,
        limiter: Default::default(),
        limits: libgo::config::Config::default().rate_limits,
    });
    let coord = if cfg.etcd.is_empty() {
        None
    } else {
        let etcd = libgo::cluster::etcd::Etcd::new(&cfg.etcd)?;
        Some(libgo::cluster::coord::Coord::new(etcd, &cfg.etcd_prefix))
    };
    let agg = Aggregator::new(cfg.clone(), coord.clone());
    for entry in &cfg.nodes {
        let node = NodeHandle::new(entry, Source::Static)
            .with_context(|| format!("node {}", entry.name))?;
        agg.add_node(node).await;
    }
    if let Some(c) = coord {
        agg.join(c).await.context("joining etcd")?;
    }
    let membership = agg.membership.clone();
    for n in agg.registry.all() {
        let v = n.view();
        tracing::info!(node = %v.name, url = %n.url, status = ?v.status, error = ?v.error, "node");
    }

    let connections = libgo::config::Config::default().connections;
    let mut listeners = Vec::new();
    let socket = bind_unix(&cfg.socket)?;
    listeners.push(libgo::api::listen::Listener::Admin {
        listener: socket,
        group: None,
    });
    if !cfg.listen.is_empty() {
        let tcp = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let tls_cfg = libgo::config::Config {
            state_dir: cfg.state_dir.clone(),
            tls_cert: cfg.tls_cert.clone(),
            tls_key: cfg.tls_key.clone(),
            listen: cfg.listen.clone(),
            ..libgo::config::Config::default()
        };
        let tls = libgo::api::tls::load(&tls_cfg, &cfg.name)?;
        tracing::info!(listen = %cfg.listen, fingerprint = %tls.fingerprint, "TLS listener certificate (SHA-256)");
        listeners.push(libgo::api::listen::Listener::Tcp {
            listener: tcp,
            tls: Some(tls.acceptor),
        });
    }
    tracing::info!(
        name = %cfg.name,
        socket = %cfg.socket.display(),
        listen = %cfg.listen,
        nodes = agg.registry.all().len(),
        membership,
        "libgo-aggregator serving"
    );
    let app = service::router(agg, access, store);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("stopping");
    };
    libgo::api::listen::serve(listeners, app, &connections, shutdown).await;
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// Binds the admin socket (root only: mode 0600), replacing a stale file.
fn bind_unix(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another aggregator is serving {}", path.display());
        }
        std::fs::remove_file(path).context("removing a stale socket")?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
