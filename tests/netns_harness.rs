//! The test network harness (`common::netns`): three agents, each in its
//! own network namespace on a bridge of the test, reached from the host
//! over TLS with the typed client; a node's cable pulled and plugged back;
//! nothing left behind, not even by a test that died.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::netns::{base36, NetAgent, TestNet};
use libgo::client::{Client, ClientError};

fn names_of(tag: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (cmd, args) in [
        ("ip", &["netns", "list"][..]),
        ("ip", &["-o", "link", "show"][..]),
        ("iptables", &["-w", "-S", "FORWARD"][..]),
    ] {
        let out = std::process::Command::new(cmd).args(args).output().unwrap();
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| {
                    [format!("-{tag}-"), format!("-{tag}:"), format!("-{tag} ")]
                        .iter()
                        .any(|m| l.contains(m.as_str()))
                        || l.ends_with(&format!("-{tag}"))
                })
                .map(str::to_owned),
        );
    }
    found
}

/// Whether an agent of the host namespace would enforce I/O limits in
/// cgroups (v1 blkio, or v2 with the io controller).
fn host_enforces_io() -> bool {
    let io =
        |p: &str| std::fs::read_to_string(p).is_ok_and(|c| c.split_whitespace().any(|w| w == "io"));
    std::path::Path::new("/sys/fs/cgroup/blkio/blkio.throttle.read_iops_device").exists()
        || io("/sys/fs/cgroup/cgroup.controllers")
        || io("/sys/fs/cgroup/unified/cgroup.controllers")
}

/// A connect to a cut node fails without the node answering: a timeout or
/// an unreachable host, never a refusal.
fn assert_unreachable(e: &ClientError) {
    let msg = e.to_string();
    assert!(matches!(e, ClientError::Transport(_)), "{e:?}");
    assert!(!msg.to_lowercase().contains("refused"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_in_namespaces_reached_over_tls_and_one_cut_off() {
    // Leftovers of a test that died (its pid is gone): swept by the next
    // TestNet.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let dead_tag = format!("{}-0", base36(dead.into()));
    let stale_ns = format!("lgtn-{dead_tag}-0");
    let stale_br = format!("lgtb-{dead_tag}");
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &stale_ns])
        .status()
        .unwrap()
        .success());
    assert!(std::process::Command::new("ip")
        .args(["link", "add", &stale_br, "type", "bridge"])
        .status()
        .unwrap()
        .success());

    let t = Instant::now();
    let net = TestNet::new(3);
    let setup = t.elapsed();
    assert!(
        names_of(&dead_tag).is_empty(),
        "leftovers not swept: {:?}",
        names_of(&dead_tag)
    );
    let tag = net.tag().to_owned();
    eprintln!(
        "net {tag}: bridge {} subnet {} host {} in {setup:?}",
        net.bridge(),
        net.subnet(),
        net.host_addr()
    );

    let t = Instant::now();
    let (a, b, c) = tokio::join!(
        NetAgent::start(&net, 0, &[]),
        NetAgent::start(&net, 1, &[]),
        NetAgent::start(&net, 2, &[]),
    );
    let agents = [a, b, c];
    eprintln!("3 agents up and reachable in {:?}", t.elapsed());

    for (i, agent) in agents.iter().enumerate() {
        // The daemon's pid is libgod's own (every wrapper execs), and it
        // lives in the node's network namespace…
        let pid = agent.daemon.pid();
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
            std::fs::canonicalize(env!("CARGO_BIN_EXE_libgod")).unwrap()
        );
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        let want = std::fs::metadata(net.ns_path(i)).unwrap();
        assert_eq!((ns.dev(), ns.ino()), (want.dev(), want.ino()));
        assert!(net.pids(i).contains(&pid));
        // …seeing the namespace's interfaces in sysfs, and the host's
        // cgroups.
        let root = format!("/proc/{pid}/root");
        assert!(std::path::Path::new(&format!("{root}/sys/class/net/eth0")).exists());
        assert!(!std::path::Path::new(&format!("{root}/sys/class/net/{}", net.bridge())).exists());
        let host_cg: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        for d in &host_cg {
            assert!(
                std::path::Path::new(&format!("{root}/sys/fs/cgroup"))
                    .join(d)
                    .exists(),
                "{d:?} missing from the agent's /sys/fs/cgroup"
            );
        }
        if host_enforces_io() {
            assert!(
                !agent.daemon.log().contains("no cgroup I/O enforcement"),
                "{}",
                agent.daemon.log()
            );
        }

        // Over TLS from the host, each answers with its own name.
        let client = agent.client();
        assert_eq!(client.health().await.unwrap().node, agent.name);
        assert_eq!(client.node_resources().await.unwrap().node, agent.name);
        assert_eq!(agent.name, format!("n{}-{tag}", i + 1));
        assert_eq!(agent.url, format!("https://{}:8443", net.addr(i)));
        let seen = libgo::client::probe_fingerprint(&agent.addr.to_string(), 8443)
            .await
            .unwrap();
        assert_eq!(seen, agent.fingerprint);
        let toml = agent.node_toml();
        assert!(toml.starts_with("[[node]]\n"), "{toml}");
        for v in [&agent.name, &agent.url, &agent.token, &agent.fingerprint] {
            assert!(toml.contains(&format!("\"{v}\"")), "{toml}");
        }
        // The admin socket is still the host's way in.
        assert_eq!(agent.daemon.req("GET", "/health", None).await.0, 200);
    }
    // The listener is only in the namespace: not on the host's loopback.
    let loopback = Client::from_url("https://127.0.0.1:8443", Some(&agents[0].fingerprint))
        .unwrap()
        .with_connect_timeout(Duration::from_secs(1));
    assert!(loopback.health().await.is_err());

    // Nodes reach each other (bridged: through iptables where br_netfilter
    // is on) and the host's address on the bridge.
    let host = std::net::TcpListener::bind((net.host_addr(), 0)).unwrap();
    let host_port = host.local_addr().unwrap().port();
    for (from, to) in [
        (0usize, format!("{}:8443", net.addr(2))),
        (1, format!("{}:{host_port}", net.host_addr())),
    ] {
        let (h, p) = to.split_once(':').unwrap();
        let out = net
            .command(from, "timeout")
            .args(["5", "bash", "-c", &format!("exec 3<>/dev/tcp/{h}/{p}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "node {from} cannot reach {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Node 2 (index 1) loses its cable: calls to it fail without an
    // answer while the others still answer.
    net.cut(1);
    assert!(net.is_cut(1) && !net.is_cut(0));
    let quick = agents[1]
        .client()
        .with_connect_timeout(Duration::from_secs(1));
    let t = Instant::now();
    let e = quick.health().await.unwrap_err();
    let failed_1s = t.elapsed();
    assert_unreachable(&e);
    assert!(
        failed_1s >= Duration::from_millis(900),
        "{failed_1s:?}: {e}"
    );
    assert!(failed_1s < Duration::from_secs(3), "{failed_1s:?}: {e}");
    for i in [0, 2] {
        assert_eq!(
            agents[i].client().health().await.unwrap().node,
            agents[i].name
        );
    }
    // Left to itself, a connect hangs until its timeout while the host's
    // ARP entry for the node stays valid (reachable time: 15 s at least),
    // as it does here; it would end with EHOSTUNREACH only later.
    let patient = agents[1]
        .client()
        .with_connect_timeout(Duration::from_secs(5));
    let t = Instant::now();
    let e = patient.health().await.unwrap_err();
    let failed_5s = t.elapsed();
    assert_unreachable(&e);
    assert!(
        failed_5s >= Duration::from_millis(2900),
        "{failed_5s:?}: {e}"
    );
    eprintln!("cut: a 1 s connect failed in {failed_1s:?}; a 5 s one in {failed_5s:?}: {e}");
    // The agent itself runs on, unaware, as behind a pulled cable; what it
    // calls is unreachable too (its eth0 has no carrier).
    assert_eq!(agents[1].daemon.req("GET", "/health", None).await.0, 200);
    let t = Instant::now();
    let out = net
        .command(1, "timeout")
        .args([
            "8",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{}/{host_port}", net.host_addr()),
        ])
        .output()
        .unwrap();
    let outbound = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(!err.to_lowercase().contains("refused"), "{err}");
    eprintln!(
        "cut: node 2 -> host failed in {outbound:?}: {}",
        err.lines().next().unwrap_or("timeout")
    );

    let t = Instant::now();
    net.restore(1);
    agents[1].wait_reachable(Duration::from_secs(10)).await;
    eprintln!("restore: answering again after {:?}", t.elapsed());
    assert!(!net.is_cut(1));
    assert_eq!(
        agents[1].client().health().await.unwrap().node,
        agents[1].name
    );

    // An agent restarted in its namespace keeps its certificate and
    // tokens.
    let mut agents = agents;
    let fp = agents[2].fingerprint.clone();
    agents[2].daemon.kill(nix::sys::signal::Signal::SIGTERM);
    agents[2].daemon.spawn().await;
    agents[2].wait_reachable(Duration::from_secs(10)).await;
    assert_eq!(
        common::netns::cert_fingerprint(&agents[2].daemon.state_dir().join("tls/cert.pem")),
        fp
    );
    assert!(net.pids(2).contains(&agents[2].daemon.pid()));
    assert_eq!(
        agents[2].client().node_resources().await.unwrap().node,
        agents[2].name
    );

    // Nothing of the network is left once it is dropped; its agents are
    // killed with it even when still running.
    let pids: Vec<u32> = agents.iter().map(|a| a.daemon.pid()).collect();
    let t = Instant::now();
    drop(net);
    eprintln!("teardown in {:?}", t.elapsed());
    for p in pids {
        assert!(!common::pid_alive(p), "agent {p} outlived its network");
    }
    assert!(
        names_of(&tag).is_empty(),
        "left behind: {:?}",
        names_of(&tag)
    );
    drop(agents);
}
