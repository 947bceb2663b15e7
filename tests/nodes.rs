//! An agent speaks of itself as a cluster of one: `/nodes`, `/nodes/{id}`,
//! `/nodes/{id}/resources`, `/resources` and `/cluster` answer with the
//! host's real figures, in the shape the aggregator serves for many nodes.

mod common;

use common::Daemon;
use serde_json::json;

fn meminfo_total_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = s.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

fn online_cpus() -> u64 {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_a_cluster_of_one_with_the_hosts_figures() {
    let d = Daemon::start().await;

    let (code, list) = d.req("GET", "/api/v1/nodes", None).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["total_count"], 1, "{list}");
    let node = &list["nodes"][0];
    assert_eq!(node["name"], d.node.as_str());
    assert_eq!(node["status"], "online");
    assert_eq!(node["accel"], "tcg");
    assert!(node["last_seen"].as_str().unwrap().contains('T'), "{node}");
    let res = &node["resources"];
    assert_eq!(res["host"]["cpus"].as_u64().unwrap(), online_cpus());
    assert_eq!(
        res["host"]["memory_mib"].as_u64().unwrap(),
        meminfo_total_mib()
    );

    // The pools: the VMs' disk directory, then the default pool with the
    // images the daemon was given.
    let pools = res["pools"].as_array().unwrap();
    assert_eq!(pools[0]["name"], "vms", "{res}");
    let default = pools.iter().find(|p| p["name"] == "default").unwrap();
    let images: Vec<&str> = default["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(images.contains(&"base.qcow2"), "{default}");
    assert!(default["total_bytes"].as_u64().unwrap() > 0);
    assert!(default["used_bytes"].as_u64().unwrap() <= default["total_bytes"].as_u64().unwrap());
    assert!(
        default["allocated_bytes"].as_u64().unwrap() > 0,
        "{default}"
    );

    for key in ["self", d.node.as_str()] {
        let (code, one) = d.req("GET", &format!("/api/v1/nodes/{key}"), None).await;
        assert_eq!(code, 200, "{one}");
        assert_eq!(one["name"], d.node.as_str());
        let (code, r) = d
            .req("GET", &format!("/api/v1/nodes/{key}/resources"), None)
            .await;
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["node"], d.node.as_str());
    }
    for path in [
        "/api/v1/nodes/elsewhere",
        "/api/v1/nodes/elsewhere/resources",
    ] {
        let (code, e) = d.req("GET", path, None).await;
        assert_eq!(code, 404, "{path}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(&d.node),
            "{e}"
        );
    }

    // A created (stopped) VM is allocated in `vms` but holds no memory.
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "here", "node": "self", "vcpus": 1, "memory": 64,
                        "disk_size": 2, "base_image": "base.qcow2"}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    assert_eq!(vm["node"], d.node.as_str());
    let (code, e) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "there", "node": "elsewhere", "vcpus": 1, "memory": 64,
                        "disk_size": 1, "base_image": "base.qcow2"}),
            ),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("elsewhere"),
        "{e}"
    );

    let (code, totals) = d.req("GET", "/api/v1/resources", None).await;
    assert_eq!(code, 200, "{totals}");
    let t = &totals["totals"];
    assert_eq!(t["nodes"], 1);
    assert_eq!(t["cpus"].as_u64().unwrap(), online_cpus());
    assert_eq!(
        t["committed_memory_mib"], 0,
        "a stopped VM holds no memory: {t}"
    );
    assert_eq!(totals["nodes"][0]["node"], d.node.as_str());
    let vms_pool = &totals["nodes"][0]["pools"][0];
    assert_eq!(
        vms_pool["allocated_bytes"].as_u64().unwrap(),
        2 << 30,
        "{vms_pool}"
    );
    let pool_sum: u64 = totals["nodes"][0]["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["allocated_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(t["storage_allocated_bytes"].as_u64().unwrap(), pool_sum);

    let (code, c) = d.req("GET", "/api/v1/cluster", None).await;
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["role"], "node");
    assert_eq!(c["name"], d.node.as_str());
    assert_eq!(
        (c["nodes"].as_u64(), c["online"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(c["membership"], "self");
    assert_eq!(c["totals"]["cpus"], t["cpus"]);

    // The CLI lists the node and creates on it by name.
    let cli = |args: &[&str]| common::libgo_cli(&d.socket, &d.state_dir(), args);
    let (code, out, err) = cli(&["node", "list", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes[0]["name"], d.node.as_str(), "{out}");
    let (code, out, err) = cli(&["node", "ls"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&d.node) && out.contains("online"), "{out}");
    let (code, _, err) = cli(&["node", "show", "elsewhere"]);
    assert_eq!(code, Some(1), "{err}");
    // The token an aggregator calls this node with: not rate limited.
    let (code, out, err) = cli(&[
        "token",
        "create",
        "aggregator",
        "--role",
        "admin",
        "--unlimited",
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["unlimited"], true, "{out}");
    let (code, out, err) = cli(&["token", "ls"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("UNLIMITED") && out.contains("true"), "{out}");
    let (code, _, err) = cli(&[
        "vm",
        "create",
        "cli1",
        "--node",
        &d.node,
        "--vcpus",
        "1",
        "--memory",
        "64",
        "--disk-size",
        "1",
        "--base-image",
        "base.qcow2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&[
        "vm",
        "create",
        "cli2",
        "--node",
        "elsewhere",
        "--vcpus",
        "1",
        "--memory",
        "64",
        "--disk-size",
        "1",
        "--base-image",
        "base.qcow2",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("elsewhere"), "{err}");

    // The served document takes only this node's name (or `self`).
    let (_, doc) = d.req("GET", "/openapi.json", None).await;
    let node_schema = &doc["components"]["schemas"]["CreateVmRequest"]["properties"]["node"];
    assert_eq!(
        node_schema["enum"],
        json!(["self", d.node, null]),
        "{node_schema}"
    );
}
