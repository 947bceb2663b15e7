//! A cluster as the issue draws it: three agents each in its own network
//! namespace on a test bridge (TLS listeners, registered in etcd with a
//! lease), one etcd on the bridge, two aggregators in front that discover
//! the nodes there. Calls and jobs work through either aggregator, names
//! are unique cluster-wide, a bulk job survives the aggregator that started
//! it, and a node whose link is cut is unreachable within two poll
//! intervals and comes back by itself.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::agg::Aggregator;
use common::etcd::EtcdServer;
use common::netns::{NetAgent, TestNet};
use common::ticks;
use serde_json::{json, Value};

/// What a node behind aggregators sets: admission by allocation. The
/// aggregators' token is `unlimited`: they apply the rate limits themselves.
const NODE_CONFIG: &str = "[capacity]\ncount_stopped = true\n";

fn vm_body(name: &str, memory: u64) -> Value {
    json!({"name": name, "vcpus": 1, "memory": memory, "disk_size": 1, "base_image": "base.qcow2"})
}

/// Three agents in namespaces, registered in etcd.
async fn cluster(net: &TestNet, etcd: &EtcdServer) -> Vec<NetAgent> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("libgod.toml");
    std::fs::write(&cfg, NODE_CONFIG).unwrap();
    let url = etcd.url();
    let mut agents = Vec::new();
    for i in 0..net.len() {
        agents.push(
            NetAgent::start(
                net,
                i,
                &[
                    "--config",
                    cfg.to_str().unwrap(),
                    "--etcd",
                    &url,
                    "--docker-socket",
                    "/nonexistent/docker.sock",
                ],
            )
            .await,
        );
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_aggregators_on_etcd_over_three_namespaced_nodes() {
    let net = TestNet::new(3);
    let etcd = EtcdServer::start_on(&net.host_addr().to_string()).await;
    let agents = cluster(&net, &etcd).await;
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let url = etcd.url();
    let mut a = Aggregator::start("agg-a", &[], "1s", &["--etcd", &url]).await;
    let b = Aggregator::start("agg-b", &[], "1s", &["--etcd", &url]).await;

    // Both found the three nodes in etcd, and each other.
    for agg in [&a, &b] {
        agg.wait_for("/api/v1/nodes", Duration::from_secs(15), |l| {
            l["total_count"] == 3
                && l["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["status"] == "online")
        })
        .await;
        let c = agg
            .wait_for("/api/v1/cluster", Duration::from_secs(10), |c| {
                c["aggregators"].as_array().is_some_and(|a| a.len() == 2)
            })
            .await;
        assert_eq!(c["membership"], "etcd", "{c}");
        assert_eq!(c["aggregators"], json!(["agg-a", "agg-b"]));
    }

    // Calls and jobs through either aggregator.
    let (code, vm) = a
        .req("POST", "/api/v1/vms", Some(vm_body("web1", 128)))
        .await;
    assert_eq!(code, 201, "{vm}\n{}", a.log());
    let home = vm["node"].as_str().unwrap().to_owned();
    assert!(names.contains(&home));
    let (code, got) = b.req("GET", "/api/v1/vms/web1", None).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["id"], vm["id"]);
    let (code, p) = b
        .req(
            "PATCH",
            "/api/v1/vms/web1",
            Some(json!({"tags": ["front"]})),
        )
        .await;
    assert_eq!(code, 200, "{p}");
    let (code, job) = b
        .req(
            "GET",
            &format!("/api/v1/jobs/{}", vm["job_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 200, "the job A started, read through B: {job}");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["tasks"][0]["node"], home.as_str());
    // An action's job, started through B and followed through A.
    let (code, acc) = b
        .req_with(
            "POST",
            "/api/v1/vms/web1/start",
            None,
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(code, 202, "{acc}");
    let jid = acc["job"]["id"].as_str().unwrap().to_owned();
    a.wait_for(
        &format!("/api/v1/jobs/{jid}"),
        Duration::from_secs(60),
        |j| j["state"] == "succeeded",
    )
    .await;
    let (code, r) = a.req("POST", "/api/v1/vms/web1/poweroff", None).await;
    assert_eq!(code, 200, "{r}");

    // A name is the cluster's: the same name through the other aggregator,
    // even on another node, is refused; once deleted it is free again.
    let other = names.iter().find(|n| **n != home).unwrap();
    let mut dup = vm_body("web1", 64);
    dup["node"] = json!(other);
    let (code, e) = b.req("POST", "/api/v1/vms", Some(dup.clone())).await;
    assert_eq!(code, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in the cluster"),
        "{e}"
    );
    let (code, _) = b
        .req("POST", "/api/v1/vms", Some(vm_body("web1", 64)))
        .await;
    assert_eq!(code, 409);
    let (code, r) = a.req("DELETE", "/api/v1/vms/web1", None).await;
    assert!(code < 300, "{r}");
    let (code, r) = b.req("POST", "/api/v1/vms", Some(dup)).await;
    assert_eq!(code, 201, "{r}");

    // A bulk job spread over the nodes survives the aggregator that
    // started it: B takes it over once A's registration is gone.
    let items: Vec<Value> = (0..18)
        .map(|i| vm_body(&format!("bulk{i:02}"), 64))
        .collect();
    let (code, acc) = a.req("POST", "/api/v1/vms", Some(Value::from(items))).await;
    assert_eq!(code, 202, "{acc}");
    let jid = acc["job"]["id"].as_str().unwrap().to_owned();
    // Kill A while some tasks are handed over and some are not.
    let deadline = Instant::now() + Duration::from_secs(30);
    let unsettled_at_kill = loop {
        let (_, j) = b.req("GET", &format!("/api/v1/jobs/{jid}"), None).await;
        let tasks = j["tasks"].as_array().cloned().unwrap_or_default();
        let handed = tasks.iter().filter(|t| t["node_job"].is_string()).count();
        if handed >= 1 {
            a.kill(nix::sys::signal::Signal::SIGKILL);
            let (_, j) = b.req("GET", &format!("/api/v1/jobs/{jid}"), None).await;
            break j["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["node_job"].is_null() && t["error"].is_null())
                .count();
        }
        assert!(Instant::now() < deadline, "no task was handed over: {j}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("aggregator A killed with {unsettled_at_kill} tasks not yet handed to a node (of 18)");
    assert!(
        unsettled_at_kill > 0,
        "A finished the whole job before it was killed"
    );
    let t0 = Instant::now();
    let job = b
        .wait_for(
            &format!("/api/v1/jobs/{jid}"),
            Duration::from_secs(60),
            |j| j["state"] == "succeeded" || j["state"] == "failed",
        )
        .await;
    println!("B finished A's job {:?} after A died", t0.elapsed());
    assert_eq!(job["state"], "succeeded", "{job}");
    let used: BTreeSet<&str> = job["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["node"].as_str().unwrap())
        .collect();
    assert_eq!(used.len(), 3, "{job}");
    // Every VM once, none twice (the takeover re-sent nothing twice).
    let (_, l) = b.req("GET", "/api/v1/vms?limit=200", None).await;
    let bulk: Vec<&str> = l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .filter(|n| n.starts_with("bulk"))
        .collect();
    assert_eq!(bulk.len(), 18, "{bulk:?}");

    // A node whose link is cut: unreachable within two poll intervals, its
    // VMs listed stale; it comes back by itself.
    let victim = &names[2];
    let before = b
        .req("GET", &format!("/api/v1/vms?node={victim}&limit=200"), None)
        .await
        .1["total_count"]
        .as_u64()
        .unwrap();
    b.wait_for(
        &format!("/api/v1/nodes/{victim}"),
        Duration::from_secs(5),
        |n| n["vms"].as_u64() == Some(before),
    )
    .await;
    net.cut(2);
    let t0 = Instant::now();
    b.wait_for(
        &format!("/api/v1/nodes/{victim}"),
        Duration::from_secs(10),
        |n| n["status"] == "unreachable",
    )
    .await;
    let detect = t0.elapsed();
    println!("link cut detected after {detect:?} (poll interval 1 s)");
    assert!(detect <= Duration::from_millis(2300), "{detect:?}");
    let (code, l) = b
        .req("GET", &format!("/api/v1/vms?node={victim}&limit=200"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(l["total_count"].as_u64(), Some(before), "{l}");
    assert!(l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["stale"] == true));
    // Reads of its VMs say why they cannot be answered.
    let stale_vm = l["vms"][0]["id"].as_str().unwrap().to_owned();
    let (code, e) = b.req("GET", &format!("/api/v1/vms/{stale_vm}"), None).await;
    assert_eq!(code, 503, "{e}");
    net.restore(2);
    let t0 = Instant::now();
    b.wait_for(
        &format!("/api/v1/nodes/{victim}"),
        Duration::from_secs(30),
        |n| n["status"] == "online",
    )
    .await;
    println!("node back {:?} after the link", t0.elapsed());
    let (code, _) = b.req("GET", &format!("/api/v1/vms/{stale_vm}"), None).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vms_move_between_namespaces_through_the_aggregator() {
    use common::agg::NodeInfo;
    let net = TestNet::new(2);
    let (n1, n2) = tokio::join!(NetAgent::start(&net, 0, &[]), NetAgent::start(&net, 1, &[]));
    let infos: Vec<NodeInfo> = [&n1, &n2].into_iter().map(NodeInfo::from).collect();
    let a = Aggregator::start("agg-m", &infos, "1s", &[]).await;

    // A stopped VM moves cold: disk copied, definition moved, nothing left.
    let mut body = vm_body("cold1", 64);
    body["node"] = json!(n1.name);
    let (code, vm) = a.req("POST", "/api/v1/vms", Some(body)).await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let (code, r) = a
        .req(
            "POST",
            "/api/v1/vms/cold1/migrate",
            Some(json!({"node": n2.name})),
        )
        .await;
    assert_eq!(code, 200, "{r}\n{}", n1.daemon.log());
    assert_eq!(r["mode"], "cold", "{r}");
    let (code, moved) = a.req("GET", "/api/v1/vms/cold1", None).await;
    assert_eq!(code, 200, "{moved}");
    assert_eq!(
        (moved["id"].as_str(), moved["node"].as_str()),
        (Some(id.as_str()), Some(n2.name.as_str()))
    );
    assert_eq!(
        n1.daemon
            .req("GET", &format!("/api/v1/vms/{id}"), None)
            .await
            .0,
        404
    );
    let (code, e) = a
        .req(
            "POST",
            "/api/v1/vms/cold1/migrate",
            Some(json!({"node": n2.name, "target": {"url": "https://x:1", "token": "t"}})),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    let (code, _) = a
        .req(
            "POST",
            "/api/v1/vms/cold1/migrate",
            Some(json!({"node": "nowhere"})),
        )
        .await;
    assert_eq!(code, 404);

    // A running guest moves live between the namespaces; its serial
    // counter goes on across the move.
    let _slot = common::guest_slot().await;
    let (code, vm) = a
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "runner", "vcpus": 1, "memory": 256, "disk_size": 1, "base_image": "base.qcow2",
                "node": n1.name,
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": common::fixture_cmdline()},
            })),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let (code, s) = a.req("POST", "/api/v1/vms/runner/start", None).await;
    assert_eq!(code, 200, "{s}");
    n1.daemon
        .wait_marker(&id, common::READY, 1, common::BOOT)
        .await;
    n1.daemon.start_ticking(&id).await;
    let seen = *ticks(&n1.daemon.console_text(&id)).last().unwrap();
    let (code, r) = a
        .req(
            "POST",
            "/api/v1/vms/runner/migrate",
            Some(json!({"node": n2.name, "live": true})),
        )
        .await;
    assert_eq!(code, 200, "{r}\n{}\n{}", n1.daemon.log(), n2.daemon.log());
    assert_eq!(r["mode"], "live");
    let (downtime, total) = (
        r["downtime_ms"].as_u64().unwrap(),
        r["total_ms"].as_u64().unwrap(),
    );
    println!(
        "live move of a 256 MiB guest between namespaces: downtime {downtime} ms, total {total} ms, {} bytes",
        r["bytes_sent"]
    );
    // The job through the aggregator carries the figures.
    let (code, job) = a
        .req(
            "GET",
            &format!("/api/v1/jobs/{}", r["job_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["result"]["downtime_ms"], downtime);
    let (_, moved) = a.req("GET", "/api/v1/vms/runner", None).await;
    assert_eq!(
        (moved["node"].as_str(), moved["status"].as_str()),
        (Some(n2.name.as_str()), Some("running")),
        "{moved}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let on_n2 = loop {
        let t = ticks(&n2.daemon.console_text(&id));
        if t.len() >= 5 {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no ticks on n2: {}",
            n2.daemon.console_text(&id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        on_n2[0] > seen,
        "n2 starts at {} after {seen} on n1",
        on_n2[0]
    );
    assert!(on_n2.windows(2).all(|w| w[1] == w[0] + 1), "{on_n2:?}");
    assert!(common::processes_carrying(&id).len() == 1);
    // Its serial console, through the aggregator: the counter's lines.
    {
        use futures::StreamExt;
        let client =
            libgo::client::Client::new(libgo::client::Endpoint::Unix(a.socket.clone()), None)
                .unwrap();
        let mut ws = client
            .websocket("/api/v1/vms/runner/console")
            .await
            .unwrap();
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ticks(&text).iter().any(|t| *t > on_n2[0]) {
            assert!(
                Instant::now() < deadline,
                "no ticks on the relayed console: {text}"
            );
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(m))) => text.push_str(&String::from_utf8_lossy(&m.into_data())),
                other => panic!("console relay ended: {other:?}"),
            }
        }
    }
    let (code, _) = a.req("POST", "/api/v1/vms/runner/poweroff", None).await;
    assert_eq!(code, 200);
}
