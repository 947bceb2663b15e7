//! Test networks: agents in their own network namespaces on a bridge the
//! test makes, with private addresses that exist only while the test runs.
//!
//! ```text
//!            host namespace                      ns(0)          ns(1) …
//!   processes of the test (aggregator, etcd)
//!        bind host_addr() = 10.a.b.254
//!                    │
//!             bridge lgtb-<tag> ── lgtv-<tag>-0 ══ eth0 10.a.b.1
//!                               ── lgtv-<tag>-1 ══ eth0 10.a.b.2
//! ```
//!
//! * [`TestNet::new`] picks a /24 of 10.0.0.0/8 that no address or route of
//!   the host overlaps (under a lock shared by every test process, so two
//!   concurrent tests never pick the same), makes the bridge with the host
//!   end `.254`, and one namespace per node with a veth pair: the host end
//!   on the bridge, the namespace end `eth0` with `.(i+1)`, and `lo` up.
//!   IPv6 is off on the segment (no duplicate-address detection, no router
//!   solicitations): it is IPv4 only.
//! * Host ↔ node traffic is plain local delivery; node ↔ node traffic is
//!   bridged. Where `br_netfilter` hands bridged frames to iptables (with
//!   Docker installed the FORWARD policy is DROP), a rule accepting
//!   traffic within the bridge is inserted and removed with the network.
//! * [`TestNet::cut`] / [`TestNet::restore`] pull and plug a node's cable.
//! * Dropping the `TestNet` kills whatever still runs in its namespaces and
//!   removes namespaces, veths, bridge and rule, even after a panic; and
//!   every `TestNet::new` first removes what tests that died (their pid
//!   is in the names) left behind.
//!
//! [`NetAgent`] is a `libgod` in one namespace, with a TLS listener on its
//! node address, an admin API token and the certificate fingerprint: what
//! an aggregator needs to front it. Its admin socket is a file, so the test
//! still drives each agent over its socket from the host namespace.
//!
//! Names: `<tag>` is `<pid>-<n>` in base 36 (the test process and its n-th
//! network). Interface names stay within 15 bytes.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{pid_alive, Daemon};

/// Prefixes of everything a test network makes.
const BRIDGE_PREFIX: &str = "lgtb-";
const VETH_PREFIX: &str = "lgtv-";
const NS_PREFIX: &str = "lgtn-";
/// The comment of the iptables rule (`lgt-<tag>`).
const RULE_PREFIX: &str = "lgt-";
/// Held while choosing a subnet and sweeping leftovers.
const LOCK: &str = "/tmp/libgo-testnet.lock";

/// The port of a [`NetAgent`]'s TLS listener (each namespace has its own
/// ports, so every agent uses the default one).
pub const AGENT_PORT: u16 = 8443;

/// `n` in base 36 (the digits of names' tags).
pub fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// Runs a command; its stdout, or a panic with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip ARGS…`, panicking when it fails.
fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// Runs a clean-up command whose failure (the object is already gone) is
/// fine.
fn quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The process ids running in namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in namespace `ns` and waits (up to 10 s) until
/// none is left, so that deleting the namespace frees its interfaces.
fn kill_netns_pids(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<u32> = netns_pids(ns)
            .into_iter()
            .filter(|p| pid_alive(*p))
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid a name of ours carries (`<prefix><pid36>-…`).
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    u32::from_str_radix(rest.split('-').next()?, 36).ok()
}

fn bridge_nf_call_iptables() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

/// The iptables rules (as `-A FORWARD …` words) whose comment is ours.
fn our_rules() -> Vec<(String, Vec<String>)> {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-S", "FORWARD"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            let pos = words.iter().position(|w| w == "--comment")?;
            let comment = words.get(pos + 1)?.trim_matches('"').to_owned();
            comment.starts_with(RULE_PREFIX).then_some((comment, words))
        })
        .collect()
}

/// Removes what test networks of processes that no longer live left
/// behind: processes in their namespaces, the namespaces, veths, bridges
/// and iptables rules. Networks of live processes are left alone.
pub fn sweep_leftovers() {
    let dead = |name: &str, prefix: &str| owner_pid(name, prefix).is_some_and(|p| !pid_alive(p));
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in netns.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if dead(name, NS_PREFIX) {
            kill_netns_pids(name);
            quiet("ip", &["netns", "del", name]);
        }
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in links.lines() {
        // `7: name@peer: <FLAGS> …`
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if dead(name, VETH_PREFIX) || dead(name, BRIDGE_PREFIX) {
            quiet("ip", &["link", "del", name]);
        }
    }
    for (comment, words) in our_rules() {
        if dead(&comment, RULE_PREFIX) {
            delete_rule(&words);
        }
    }
}

fn delete_rule(words: &[String]) {
    // `-A FORWARD …` as printed by -S; deleted by the same specification.
    let mut args: Vec<&str> = vec!["-w", "-D"];
    args.extend(words.iter().skip(1).map(String::as_str));
    quiet("iptables", &args);
}

/// The IPv4 networks the host has addresses or routes in.
fn host_networks() -> Vec<(u32, u8)> {
    let mut nets = Vec::new();
    let mut add = |cidr: &str| {
        let (a, p) = cidr.split_once('/').unwrap_or((cidr, "32"));
        if let (Ok(a), Ok(p)) = (a.parse::<Ipv4Addr>(), p.parse::<u8>()) {
            nets.push((u32::from(a), p.min(32)));
        }
    };
    for line in ip(&["-4", "-o", "addr", "show"]).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "inet") {
            if let Some(cidr) = words.get(i + 1) {
                add(cidr);
            }
        }
    }
    for line in ip(&["-4", "route", "show", "table", "all"]).lines() {
        let mut words = line.split_whitespace();
        let mut first = words.next().unwrap_or("");
        if matches!(
            first,
            "unicast" | "local" | "broadcast" | "multicast" | "blackhole" | "unreachable"
        ) {
            first = words.next().unwrap_or("");
        }
        if first != "default" {
            add(first);
        }
    }
    nets
}

fn overlaps((a, p): (u32, u8), (b, q): (u32, u8)) -> bool {
    let bits = p.min(q);
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    a & mask == b & mask
}

/// One node of a [`TestNet`].
struct Node {
    ns: String,
    veth: String,
}

/// A bridge, a private /24 and `n` network namespaces on it; removed on
/// drop. See the module documentation.
pub struct TestNet {
    tag: String,
    bridge: String,
    /// `10.a.b` of `10.a.b.0/24`.
    prefix: [u8; 3],
    nodes: Vec<Node>,
    /// The FORWARD rule accepting bridged traffic, when one was needed.
    rule: Option<Vec<String>>,
}

impl TestNet {
    /// A network of `n` nodes (at most 36). Panics when the host cannot
    /// make one (not root, no `ip`); whatever was made by then is removed.
    pub fn new(n: usize) -> TestNet {
        assert!((1..=36).contains(&n), "a TestNet holds 1 to 36 nodes");
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let k = COUNT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{}", base36(pid.into()), base36(k.into()));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .unwrap();
        let guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        sweep_leftovers();

        // A /24 no address or route of the host overlaps, starting from
        // one derived from the pid and the count.
        let used = host_networks();
        let start = (pid.wrapping_mul(2654435761) ^ k.wrapping_mul(40503)) % (150 * 256);
        let prefix = (0..150 * 256)
            .map(|j| (start + j) % (150 * 256))
            .map(|c| [10u8, 100 + (c / 256) as u8, (c % 256) as u8])
            .find(|p| {
                let net = (u32::from(Ipv4Addr::new(p[0], p[1], p[2], 0)), 24);
                !used.iter().any(|u| overlaps(*u, net))
            })
            .expect("a free /24 in 10.100.0.0-10.249.255.0");

        let mut net = TestNet {
            bridge: format!("{BRIDGE_PREFIX}{tag}"),
            tag,
            prefix,
            nodes: Vec::new(),
            rule: None,
        };
        assert!(net.bridge.len() <= 15, "{}", net.bridge);
        // A fixed address: a bridge otherwise takes its lowest port's,
        // which changes as ports come and go and would stale ARP caches.
        let mac = format!("02:6c:67:{:02x}:{:02x}:fe", prefix[1], prefix[2]);
        ip(&[
            "link",
            "add",
            &net.bridge,
            "address",
            &mac,
            "type",
            "bridge",
        ]);
        disable_ipv6_on(&net.bridge);
        let host = format!("{}/24", net.host_addr());
        ip(&["addr", "add", &host, "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        drop(guard);

        if bridge_nf_call_iptables() {
            let comment = format!("{RULE_PREFIX}{}", net.tag);
            let spec = [
                "FORWARD",
                "-i",
                &net.bridge,
                "-o",
                &net.bridge,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ];
            let mut args = vec!["-w", "-I"];
            args.extend(spec);
            run(Command::new("iptables").args(&args));
            let mut words = vec!["-A".to_owned()];
            words.extend(spec.iter().map(|s| s.to_string()));
            net.rule = Some(words);
        }

        for i in 0..n {
            let node = Node {
                ns: format!("{NS_PREFIX}{}-{}", net.tag, base36(i as u64)),
                veth: format!("{VETH_PREFIX}{}-{}", net.tag, base36(i as u64)),
            };
            assert!(node.veth.len() <= 15, "{}", node.veth);
            ip(&["netns", "add", &node.ns]);
            let (ns, veth) = (node.ns.clone(), node.veth.clone());
            net.nodes.push(node);
            run(net.command(i, "sysctl").args([
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]));
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            disable_ipv6_on(&veth);
            ip(&["link", "set", &veth, "master", &net.bridge, "up"]);
            let addr = format!("{}/24", net.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `<pid>-<n>` in base 36: in every name this network made.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The network, `10.a.b.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.0/24")
    }

    /// Node `i`'s namespace name (`ip netns exec <ns> …`).
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i].ns
    }

    /// Node `i`'s namespace file, for `nsenter --net=` or `setns`.
    pub fn ns_path(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(self.ns(i))
    }

    /// The host end of node `i`'s veth pair (on the bridge).
    pub fn host_veth(&self, i: usize) -> &str {
        &self.nodes[i].veth
    }

    /// Node `i`'s address, `10.a.b.(i+1)`, on its `eth0`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.nodes.len(), "no node {i}");
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    /// The host's address on the bridge, `10.a.b.254`: where processes of
    /// the host namespace (an aggregator, an etcd) listen to be reached by
    /// the nodes.
    pub fn host_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// A command that runs `program` in node `i`'s network namespace (and
    /// otherwise in the host's namespaces).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path(i).display()))
            .arg("--")
            .arg(program);
        c
    }

    /// The processes running in node `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        netns_pids(self.ns(i))
    }

    /// Pulls node `i`'s cable: its veth's host end goes down, so the node's
    /// `eth0` loses carrier and frames either way are dropped silently (the
    /// bridge keeps its address and its other ports). No RST, no ICMP:
    /// never "connection refused", which would say the machine is up and
    /// the agent is not. What a caller sees is what it sees of a dead
    /// machine on its segment:
    /// * host → node: while the host's ARP entry for the node is still
    ///   valid (the kernel's reachable time, 15–45 s after the last
    ///   exchange, then ~8 s of probes), SYNs go out and vanish: a connect
    ///   hangs until its own timeout. Once the entry has failed, a connect
    ///   ends with EHOSTUNREACH ("No route to host") after ~3 s of
    ///   unanswered ARP.
    /// * node → anything: its `eth0` has no carrier, which flushes its ARP
    ///   cache: a connect ends with EHOSTUNREACH after ~3 s.
    ///
    /// Connections already open stay open without traffic, as with a real
    /// cable; the processes in the namespace run on, unaware.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", self.host_veth(i), "down"]);
    }

    /// Plugs node `i`'s cable back and waits until the bridge forwards its
    /// frames again and both ends of its link are up.
    pub fn restore(&self, i: usize) {
        ip(&["link", "set", self.host_veth(i), "up"]);
        // Address resolutions that went on while the cable was out would
        // hold what is sent now until their next retry (up to 1 s): drop
        // them, on the node and on the host, so the first packet resolves
        // at once.
        ip(&["-n", self.ns(i), "neigh", "flush", "dev", "eth0"]);
        let addr = self.addr(i).to_string();
        ip(&["neigh", "flush", "to", &addr, "dev", &self.bridge]);
        let state = Path::new("/sys/class/net")
            .join(self.host_veth(i))
            .join("brport/state");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port forwards (3: BR_STATE_FORWARDING), and both ends are
        // operationally up: the kernel restarts a device's queue when it
        // marks it so (link events are batched, up to 1 s late), and drops
        // what is sent before, carrier or not.
        let host_up = || {
            std::fs::read_to_string(
                Path::new("/sys/class/net")
                    .join(self.host_veth(i))
                    .join("operstate"),
            )
            .is_ok_and(|s| s.trim() == "up")
        };
        let node_up = || {
            Command::new("ip")
                .args(["-n", self.ns(i), "-o", "link", "show", "eth0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" state UP "))
        };
        while !(std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "3")
            && host_up()
            && node_up())
        {
            assert!(
                Instant::now() < deadline,
                "{} does not forward after 10 s",
                self.host_veth(i)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether node `i`'s cable is pulled.
    pub fn is_cut(&self, i: usize) -> bool {
        std::fs::read_to_string(
            Path::new("/sys/class/net")
                .join(self.host_veth(i))
                .join("operstate"),
        )
        .map(|s| s.trim() != "up")
        .unwrap_or(true)
    }
}

fn disable_ipv6_on(dev: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for n in &self.nodes {
            kill_netns_pids(&n.ns);
        }
        // Deleting one end of a veth pair deletes both at once; leaving it
        // to the namespace's (asynchronous) teardown would not.
        for n in &self.nodes {
            quiet("ip", &["link", "del", &n.veth]);
            quiet("ip", &["netns", "del", &n.ns]);
        }
        quiet("ip", &["link", "del", &self.bridge]);
        if let Some(words) = self.rule.take() {
            delete_rule(&words);
        }
    }
}

/// `program` in namespace `ns`'s network, the way `ip netns exec` runs
/// it but without losing the host's cgroup mounts: `ip netns exec` mounts
/// a fresh sysfs (so `/sys/class/net` shows the namespace's interfaces)
/// over `/sys`, which hides `/sys/fs/cgroup`. Here, in a mount namespace
/// of its own (slave to the host's: nothing it mounts shows outside),
/// `/sys/fs/cgroup` is set aside in `stash` (an empty directory), a sysfs
/// of the namespace mounted on `/sys`, and the cgroup tree moved back
/// onto it. Every step execs the next, so the child's pid is `program`'s.
pub fn enter_command(ns: &str, stash: &Path, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .args(["--", "unshare", "--mount", "--propagation", "slave", "--"])
        .args([
            "sh",
            "-c",
            "mount --rbind /sys/fs/cgroup \"$0\" && mount -t sysfs sysfs /sys \
             && mount --move \"$0\" /sys/fs/cgroup && exec \"$@\"",
        ])
        .arg(stash)
        .arg(program);
    c
}

/// A `libgod` in one node of a [`TestNet`]: its TLS listener on the
/// node's address, an admin token and the pinned certificate — what an
/// aggregator needs to front it. Drop it before its `TestNet` (declare it
/// after); the `TestNet` kills it anyway if not.
pub struct NetAgent {
    /// The node name (`--node-name`).
    pub name: String,
    /// The node's address, where the listener is.
    pub addr: Ipv4Addr,
    /// `https://<addr>:8443`.
    pub url: String,
    /// An API token of role admin.
    pub token: String,
    /// SHA-256 of the listener's certificate, `AB:CD:…`.
    pub fingerprint: String,
    /// The daemon; its admin socket is reachable from the host namespace.
    pub daemon: Daemon,
}

impl NetAgent {
    /// Starts an agent in node `i` named `n<i+1>-<tag>` (names are
    /// unique across concurrent tests: the agent's containers carry it).
    pub async fn start(net: &TestNet, i: usize, extra_args: &[&str]) -> NetAgent {
        let name = format!("n{}-{}", i + 1, net.tag());
        NetAgent::start_named(net, i, &name, extra_args).await
    }

    /// Starts an agent named `name` in node `i`, listening with TLS (a
    /// self-signed certificate made at first start) on `addr(i):8443`,
    /// and waits until it answers there from the host.
    pub async fn start_named(net: &TestNet, i: usize, name: &str, extra_args: &[&str]) -> NetAgent {
        let addr = net.addr(i);
        let listen = format!("{addr}:{AGENT_PORT}");
        let mut args = vec!["--listen", listen.as_str()];
        args.extend_from_slice(extra_args);
        let mut daemon = Daemon::prepare(&args, &[]);
        daemon.node = name.to_owned();
        daemon.netns = Some(net.ns(i).to_owned());
        daemon.spawn().await;

        let (code, t) = daemon
            .req(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": "aggregator", "role": "admin", "unlimited": true})),
            )
            .await;
        assert_eq!(code, 201, "{t}");
        let token = t["secret"].as_str().unwrap().to_owned();
        let fingerprint = cert_fingerprint(&daemon.state_dir().join("tls/cert.pem"));
        let agent = NetAgent {
            name: name.to_owned(),
            addr,
            url: format!("https://{addr}:{AGENT_PORT}"),
            token,
            fingerprint,
            daemon,
        };
        agent.wait_reachable(Duration::from_secs(20)).await;
        agent
    }

    /// A typed client of the agent over TLS, with the admin token.
    pub fn client(&self) -> libgo::client::Client {
        libgo::client::Client::from_url(&self.url, Some(&self.fingerprint))
            .unwrap()
            .with_token(self.token.clone())
    }

    /// Waits until `GET /health` answers over TLS from the host.
    pub async fn wait_reachable(&self, timeout: Duration) {
        let client = self.client().with_connect_timeout(Duration::from_secs(1));
        let deadline = Instant::now() + timeout;
        loop {
            match client.health().await {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{} not reachable within {timeout:?}: {e}\n{}",
                    self.url,
                    self.daemon.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent as a `[[node]]` of an aggregator's TOML configuration.
    pub fn node_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_owned()).to_string();
        format!(
            "[[node]]\nname = {}\nurl = {}\ntoken = {}\nfingerprint = {}\n",
            s(&self.name),
            s(&self.url),
            s(&self.token),
            s(&self.fingerprint)
        )
    }
}

/// The fingerprint of the first certificate of a PEM file.
pub fn cert_fingerprint(pem: &Path) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    libgo::client::fingerprint(der.as_ref())
}
