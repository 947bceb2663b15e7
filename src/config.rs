//! Every path, binary, limit and timeout of the agent, with embedded defaults.
//!
//! Precedence: built-in defaults < TOML file (`--config`) < command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which QEMU accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where the host really has hardware virtualization, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// A layer that can enforce disk I/O limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoLayer {
    /// The VM's own cgroup: `io.max` (v2) or `blkio.throttle.*` (v1), keyed
    /// by the whole disk holding the image. Needs O_DIRECT (`cache=none`).
    Cgroup,
    /// QEMU's block throttling (`block_set_io_throttle`): works on any
    /// storage, including what a cgroup cannot see (tmpfs, network filesystems).
    Qemu,
}

/// A named directory that holds base images, kernels and initrds.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub path: PathBuf,
}

/// Above the ranges systemd hands to users, dynamic users and containers
/// (which end at 0x6FFFFFFF), below the signed-integer boundary.
pub const DEFAULT_QEMU_GID_BASE: u32 = 0x7000_0000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// Mode of the socket file (octal in TOML as a string, e.g. "0660").
    pub socket_mode: String,
    /// Group allowed to use the socket besides root.
    pub socket_group: String,
    /// Durable state: the database, VM disks, console logs.
    pub state_dir: PathBuf,
    /// Runtime files: pidfiles, QMP and console sockets.
    pub run_dir: PathBuf,
    /// The default storage pool (named "default").
    pub image_dir: PathBuf,
    /// Further storage pools.
    pub storage_pools: Vec<PoolConfig>,
    /// Directories under which pools made through the API may live (empty:
    /// `<state_dir>/pools` only). A pool's directory is one of them plus
    /// the pool's own path below it.
    pub pool_parents: Vec<PathBuf>,
    pub qemu_binary: PathBuf,
    pub qemu_img_binary: PathBuf,
    pub accel: Accel,
    /// Seconds to wait for a QMP reply.
    pub qmp_timeout_secs: u64,
    /// Seconds to wait for a fresh QEMU to open its QMP socket.
    pub qemu_start_timeout_secs: u64,
    /// Default graceful-stop timeout before forcing a VM off.
    pub stop_timeout_secs: u64,
    /// Seconds between ACPI power-button presses during a graceful stop.
    pub powerdown_retry_secs: u64,
    /// Upper bounds that turn absurd requests into 400s.
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    pub max_disk_gib: u64,
    /// Where I/O limits are enforced (both by default).
    pub io_throttle: Vec<IoLayer>,
    /// The cgroup filesystem root.
    pub cgroup_root: PathBuf,
    /// Per-VM cgroups live under `<hierarchy>/<cgroup_parent>/<vm id>`.
    pub cgroup_parent: String,
    /// Milliseconds between performance samples of a running VM.
    pub sample_interval_ms: u64,
    /// Bytes of a VM's recent serial console output replayed to a client
    /// that attaches to its console.
    pub console_history_bytes: usize,
    /// Items of a bulk job that run at once (0: the number of host cores).
    pub bulk_parallelism: usize,
    /// Finished jobs are kept this long.
    pub job_retention_hours: u64,
    /// The Docker Engine API socket.
    pub docker_socket: PathBuf,
    /// A second, read-only socket (GETs only, for any local user who can
    /// open it); empty: none.
    pub readonly_socket: PathBuf,
    /// The TCP listener, `ADDR:PORT`; empty: none.
    pub listen: String,
    /// PEM certificate chain and key of the TCP listener; when both are
    /// empty a self-signed pair is made in `<state_dir>/tls` on first start.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Serve plain HTTP on the TCP listener (allowed on loopback only).
    pub plaintext: bool,
    /// Lifetime of a login session (its JWT), in seconds.
    pub session_ttl_secs: u64,
    /// Connection limits and timeouts of every listener.
    pub connections: ConnectionLimits,
    /// Requests per minute per caller (0: unlimited).
    pub rate_limits: RateLimits,
    /// Audit entries are kept this many days.
    pub audit_retention_days: u64,
    /// This agent's name (the `node` of its resources, the owner label of
    /// its containers); the host name when empty.
    pub node_name: String,
    /// The unprivileged user every guest's QEMU runs as (made at the first
    /// start when missing), each VM with a group of its own; empty: QEMU
    /// runs as root (for debugging only).
    pub qemu_user: String,
    /// The first of the 65536 group ids given to VMs, one each (no
    /// `/etc/group` entry; they must not be used by anything else).
    pub qemu_gid_base: u32,
    /// Admission control: what the host may hold (`[capacity]`).
    pub capacity: CapacityConfig,
    /// The etcd of a cluster (`http://HOST:PORT`): the agent registers
    /// itself there under a lease; empty: none.
    pub etcd: String,
    /// The prefix of libgo's keys in that etcd.
    pub etcd_prefix: String,
    /// How other hosts reach the TCP listener (`https://HOST:PORT`), as
    /// registered in etcd; empty: derived from `listen` (needed when
    /// `listen` is a wildcard address).
    pub advertise_url: String,
}

/// The limits creates and starts are checked against.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Memory of running guests may reach this multiple of the host's
    /// memory less `reserved_memory_mib`. 1.0: guest memory is not swapped
    /// out safely and a balloon is a request, not a guarantee, so by
    /// default no guest can be made to fail for memory another one took.
    pub memory_overcommit: f64,
    /// vCPUs of running VMs may reach this multiple of the host's online
    /// cores (vCPUs that idle cost little; 4 keeps a busy host responsive).
    pub vcpu_overcommit: f64,
    /// Memory kept for the host itself: libgod, Docker, QEMU's own
    /// overhead per guest, the page cache (MiB).
    pub reserved_memory_mib: u64,
    /// Count every VM, stopped ones too, and admit creates against the
    /// limits: allocation rather than use, what a node placed on by an
    /// aggregator needs so that two placements cannot overcommit it.
    pub count_stopped: bool,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            memory_overcommit: 1.0,
            vcpu_overcommit: 4.0,
            reserved_memory_mib: 1024,
            count_stopped: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("/run/libgo.sock"),
            socket_mode: "0660".into(),
            socket_group: "libgo".into(),
            state_dir: PathBuf::from("/var/lib/libgo"),
            run_dir: PathBuf::from("/run/libgo"),
            image_dir: PathBuf::from("/var/lib/libgo/images"),
            storage_pools: Vec::new(),
            pool_parents: Vec::new(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            qemu_img_binary: PathBuf::from("qemu-img"),
            accel: Accel::Auto,
            qmp_timeout_secs: 10,
            qemu_start_timeout_secs: 30,
            stop_timeout_secs: 60,
            powerdown_retry_secs: 3,
            max_vcpus: 256,
            max_memory_mib: 4 * 1024 * 1024,
            max_disk_gib: 64 * 1024,
            io_throttle: vec![IoLayer::Cgroup, IoLayer::Qemu],
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "libgo".into(),
            sample_interval_ms: 2000,
            console_history_bytes: 64 * 1024,
            bulk_parallelism: 0,
            job_retention_hours: 168,
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            readonly_socket: PathBuf::from("/run/libgo-ro.sock"),
            listen: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            plaintext: false,
            session_ttl_secs: 8 * 3600,
            connections: ConnectionLimits::default(),
            rate_limits: RateLimits::default(),
            audit_retention_days: 90,
            node_name: String::new(),
            qemu_user: "libgo-qemu".into(),
            qemu_gid_base: DEFAULT_QEMU_GID_BASE,
            capacity: CapacityConfig::default(),
            etcd: String::new(),
            etcd_prefix: "/libgo/".into(),
            advertise_url: String::new(),
        }
    }
}

/// What one connection may take, and how many a listener holds.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Seconds from a request's first byte to the end of its headers.
    pub header_timeout_secs: u64,
    /// Seconds the body may go without a byte arriving.
    pub body_timeout_secs: u64,
    /// Seconds a kept-alive connection may wait for its next request (and a
    /// response may wait for the client to read).
    pub idle_timeout_secs: u64,
    /// Open connections per listener; the admin socket always lets root and
    /// the socket's group in beyond it.
    pub max_per_listener: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_per_listener: 1024,
        }
    }
}

/// Requests per minute per caller, reads (GET, HEAD) and writes apart.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub tcp_read: u32,
    pub tcp_write: u32,
    pub socket_read: u32,
    pub socket_write: u32,
    pub readonly_read: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            tcp_read: 600,
            tcp_write: 60,
            socket_read: 0,
            socket_write: 0,
            readonly_read: 600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// All storage pools: "default" at `image_dir`, then the configured ones.
    pub fn pools(&self) -> Vec<PoolConfig> {
        let mut pools = vec![PoolConfig {
            name: "default".into(),
            path: self.image_dir.clone(),
        }];
        pools.extend(self.storage_pools.iter().cloned());
        pools
    }

    /// Where pools made through the API may live.
    pub fn pool_parents(&self) -> Vec<PathBuf> {
        if self.pool_parents.is_empty() {
            vec![self.state_dir.join("pools")]
        } else {
            self.pool_parents.clone()
        }
    }

    pub fn socket_mode_bits(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid(format!("socket_mode {:?}", self.socket_mode)))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_mode_bits()?;
        let mut names: Vec<&str> = Vec::new();
        for parent in &self.pool_parents {
            if !parent.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "pool_parents: {} is not an absolute path",
                    parent.display()
                )));
            }
        }
        for pool in self.storage_pools.iter() {
            if pool.name == "default" || names.contains(&pool.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "duplicate storage pool name {:?}",
                    pool.name
                )));
            }
            names.push(&pool.name);
        }
        if self.sample_interval_ms < 100 {
            return Err(ConfigError::Invalid(
                "sample_interval_ms must be at least 100".into(),
            ));
        }
        if !self.listen.is_empty() {
            let addr: std::net::SocketAddr = self.listen.parse().map_err(|_| {
                ConfigError::Invalid(format!("listen {:?}: expected ADDR:PORT", self.listen))
            })?;
            if self.plaintext && !addr.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "plaintext is allowed on a loopback address only, not {addr}"
                )));
            }
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key go together".into(),
            ));
        }
        let c = &self.connections;
        if c.header_timeout_secs == 0
            || c.body_timeout_secs == 0
            || c.idle_timeout_secs == 0
            || c.max_per_listener == 0
        {
            return Err(ConfigError::Invalid(
                "connection timeouts and max_per_listener must be at least 1".into(),
            ));
        }
        if self.session_ttl_secs < 60 {
            return Err(ConfigError::Invalid(
                "session_ttl_secs must be at least 60".into(),
            ));
        }
        if self.qemu_gid_base == 0
            || self
                .qemu_gid_base
                .checked_add(0xFFFF)
                .is_none_or(|end| end == u32::MAX)
        {
            return Err(ConfigError::Invalid(
                "qemu_gid_base must leave room for 65536 group ids below 4294967295".into(),
            ));
        }
        for (key, v) in [
            ("memory_overcommit", self.capacity.memory_overcommit),
            ("vcpu_overcommit", self.capacity.vcpu_overcommit),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
                return Err(ConfigError::Invalid(format!(
                    "capacity.{key} must be above 0 and at most 1000"
                )));
            }
        }
        if self.qmp_timeout_secs == 0 || self.qemu_start_timeout_secs == 0 {
            return Err(ConfigError::Invalid("timeouts must be at least 1 s".into()));
        }
        self.advertised_url()?;
        if !self.etcd.is_empty() {
            crate::cluster::etcd::parse_url(&self.etcd)
                .map_err(|e| ConfigError::Invalid(format!("etcd: {e}")))?;
            if self.listen.is_empty() {
                return Err(ConfigError::Invalid(
                    "etcd needs listen: other hosts reach the node over its TCP listener".into(),
                ));
            }
            if !self.etcd_prefix.starts_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "etcd_prefix {:?} must start with /",
                    self.etcd_prefix
                )));
            }
        }
        Ok(())
    }

    /// The URL other hosts reach the TCP listener at: `advertise_url`, or
    /// `https://` (`http://` with `plaintext`) and the `listen` address
    /// when that is a specific one. None without a listener; an error for
    /// a wildcard `listen` without `advertise_url`, or an `advertise_url`
    /// of the wrong scheme.
    pub fn advertised_url(&self) -> Result<Option<String>, ConfigError> {
        let scheme = if self.plaintext { "http" } else { "https" };
        if !self.advertise_url.is_empty() {
            let bad = |why: String| {
                ConfigError::Invalid(format!("advertise_url {:?}: {why}", self.advertise_url))
            };
            let ep: crate::client::Endpoint = self
                .advertise_url
                .parse()
                .map_err(|e: crate::client::ClientError| bad(e.to_string()))?;
            let want_tls = !self.plaintext;
            if matches!(ep, crate::client::Endpoint::Unix(_)) || ep.is_tls() != want_tls {
                return Err(bad(format!("expected {scheme}://HOST:PORT")));
            }
            if self.listen.is_empty() {
                return Err(bad("there is no TCP listener (listen) to advertise".into()));
            }
            return Ok(Some(ep.to_string()));
        }
        if self.listen.is_empty() {
            return Ok(None);
        }
        let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
            return Err(ConfigError::Invalid(format!(
                "listen {:?}: expected ADDR:PORT",
                self.listen
            )));
        };
        if addr.ip().is_unspecified() {
            if self.etcd.is_empty() {
                return Ok(None);
            }
            return Err(ConfigError::Invalid(format!(
                "listen {addr} is a wildcard address: set advertise_url to the {scheme}://HOST:PORT other hosts reach"
            )));
        }
        Ok(Some(format!("{scheme}://{addr}")))
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("libgo.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_paths() {
        let c = Config::default();
        assert_eq!(c.socket, PathBuf::from("/run/libgo.sock"));
        assert_eq!(c.socket_mode_bits().unwrap(), 0o660);
        assert_eq!(c.pools()[0].path, PathBuf::from("/var/lib/libgo/images"));
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_keys() {
        let c: Config = toml::from_str(
            "state_dir = \"/tmp/x\"\naccel = \"tcg\"\n[[storage_pools]]\nname = \"fast\"\npath = \"/srv\"\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.accel, Accel::Tcg);
        assert_eq!(c.pools().len(), 2);
        assert!(toml::from_str::<Config>("stat_dir = \"/x\"").is_err());
    }

    #[test]
    fn the_shipped_sample_config_is_the_defaults() {
        let text = include_str!("../packaging/libgod.toml");
        let c: Config = toml::from_str(text).unwrap();
        let d = Config::default();
        assert_eq!(c.socket, d.socket);
        assert_eq!(c.state_dir, d.state_dir);
        assert_eq!(c.max_memory_mib, d.max_memory_mib);
        assert_eq!(c.stop_timeout_secs, d.stop_timeout_secs);
        assert_eq!(c.qemu_user, d.qemu_user);
        assert_eq!(c.qemu_gid_base, d.qemu_gid_base);
        assert_eq!(c.capacity, d.capacity);
        assert_eq!(
            (&c.etcd, &c.etcd_prefix, &c.advertise_url),
            (&d.etcd, &d.etcd_prefix, &d.advertise_url)
        );
        c.validate().unwrap();
    }

    #[test]
    fn plaintext_only_on_loopback() {
        let mut c = Config {
            listen: "127.0.0.1:8443".into(),
            plaintext: true,
            ..Config::default()
        };
        c.validate().unwrap();
        c.listen = "[::1]:8443".into();
        c.validate().unwrap();
        c.listen = "0.0.0.0:8443".into();
        assert!(c.validate().is_err());
        c.plaintext = false;
        c.validate().unwrap();
        c.listen = "nonsense".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn capacity_limits_are_a_section_and_checked() {
        let c: Config =
            toml::from_str("[capacity]\nmemory_overcommit = 1.5\nreserved_memory_mib = 0\n")
                .unwrap();
        assert_eq!(c.capacity.memory_overcommit, 1.5);
        assert_eq!(c.capacity.vcpu_overcommit, 4.0);
        assert_eq!(c.capacity.reserved_memory_mib, 0);
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("[capacity]\nmemory = 1\n").is_err());
        let mut bad = Config::default();
        bad.capacity.vcpu_overcommit = 0.0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn etcd_needs_a_listener_and_a_url_others_reach() {
        let mut c = Config {
            etcd: "http://10.0.0.254:2379".into(),
            ..Config::default()
        };
        // No TCP listener: nothing to advertise.
        assert!(c.validate().is_err());
        c.listen = "10.0.0.1:8443".into();
        c.validate().unwrap();
        assert_eq!(
            c.advertised_url().unwrap().as_deref(),
            Some("https://10.0.0.1:8443")
        );
        c.listen = "[fd00::1]:8443".into();
        assert_eq!(
            c.advertised_url().unwrap().as_deref(),
            Some("https://[fd00::1]:8443")
        );
        // A wildcard listener needs advertise_url.
        c.listen = "0.0.0.0:8443".into();
        assert!(c.validate().is_err());
        c.advertise_url = "https://node1.lan:8443".into();
        c.validate().unwrap();
        assert_eq!(
            c.advertised_url().unwrap().as_deref(),
            Some("https://node1.lan:8443")
        );
        for bad in [
            "http://node1.lan:8443",
            "node1.lan:8443",
            "https://node1.lan:8443/x",
            "unix:///run/x",
        ] {
            c.advertise_url = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
        // Plain HTTP on loopback advertises http.
        c.advertise_url.clear();
        c.listen = "127.0.0.1:8080".into();
        c.plaintext = true;
        assert_eq!(
            c.advertised_url().unwrap().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        for bad in ["https://127.0.0.1:2379", "127.0.0.1:2379", "http://h"] {
            c.etcd = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
        c.etcd = "http://127.0.0.1:2379".into();
        c.etcd_prefix = "libgo".into();
        assert!(c.validate().is_err());
        // The keys in TOML.
        let t: Config = toml::from_str(
            "etcd = \"http://127.0.0.1:2379\"\nlisten = \"0.0.0.0:8443\"\nadvertise_url = \"https://n1:8443\"\n",
        )
        .unwrap();
        t.validate().unwrap();
        assert_eq!(t.etcd_prefix, "/libgo/");
    }

    #[test]
    fn duplicate_pools_are_rejected() {
        let mut c = Config::default();
        c.storage_pools.push(PoolConfig {
            name: "default".into(),
            path: "/x".into(),
        });
        assert!(c.validate().is_err());
    }
}
