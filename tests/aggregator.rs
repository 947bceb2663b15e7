//! The aggregator in front of three real agents (TLS listeners on loopback,
//! admin tokens, pinned certificates): nodes and capacity, placement by
//! free memory with the reasons in the job, nodes' admission as the final
//! word when two aggregators place at once, merged lists paged across nodes
//! under churn, forwarded reads, writes and jobs, a node that stops
//! answering and comes back, merged events with resume.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::agg::{node_info, Aggregator, NodeInfo};
use common::{free_port, Daemon};
use serde_json::{json, Value};

/// Host memory in MiB, as the agents read it.
fn mem_total_mib() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = m
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024
}

/// Agents whose memory limits are `caps` MiB, counting stopped VMs (as
/// nodes behind an aggregator do), Docker out of the picture.
async fn agents(caps: &[u64]) -> Vec<(Daemon, NodeInfo)> {
    let total = mem_total_mib();
    let mut out = Vec::new();
    for cap in caps {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("libgod.toml");
        std::fs::write(
            &cfg,
            format!(
                "[capacity]\ncount_stopped = true\nmemory_overcommit = 1.0\nreserved_memory_mib = {}\n",
                total - cap
            ),
        )
        .unwrap();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let d = Daemon::start_with(&[
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &listen,
            "--docker-socket",
            "/nonexistent/docker.sock",
        ])
        .await;
        let info = node_info(&d, "127.0.0.1", port).await;
        std::mem::forget(dir); // the config is read at start only; tiny
        out.push((d, info));
    }
    out
}

/// Starts `GET path` on the aggregator's socket and reads its first frame:
/// the announced length, the bytes so far and the rest of the body.
async fn start_download(a: &Aggregator, path: &str) -> (u64, usize, hyper::body::Incoming) {
    use http_body_util::BodyExt;
    let s = tokio::net::UnixStream::connect(&a.socket).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let len = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    (len, first.data_ref().map_or(0, |d| d.len()), body)
}

fn vm_body(name: &str, memory: u64) -> Value {
    json!({"name": name, "vcpus": 1, "memory": memory, "disk_size": 1, "base_image": "base.qcow2"})
}

async fn available(a: &Aggregator, node: &str) -> u64 {
    let (code, r) = a
        .req("GET", &format!("/api/v1/nodes/{node}/resources"), None)
        .await;
    assert_eq!(code, 200, "{r}");
    r["available"]["memory_mib"].as_u64().unwrap()
}

/// Every VM name of a merged list, walked page by page with `limit`.
async fn walk(
    a: &Aggregator,
    limit: usize,
    mut between: impl FnMut(usize) -> Option<(String, Value)>,
) -> Vec<String> {
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut page = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/vms?sort=name&limit={limit}&page_token={t}"),
            None => format!("/api/v1/vms?sort=name&limit={limit}"),
        };
        let (code, l) = a.req("GET", &path, None).await;
        assert_eq!(code, 200, "{l}");
        for v in l["vms"].as_array().unwrap() {
            assert!(v["node"].as_str().is_some_and(|n| !n.is_empty()), "{v}");
            names.push(v["name"].as_str().unwrap().to_owned());
        }
        page += 1;
        if let Some((path, body)) = between(page) {
            let (code, r) = if body.is_null() {
                a.req("DELETE", &path, None).await
            } else {
                a.req("POST", &path, Some(body)).await
            };
            assert!(code < 300, "{path}: {code} {r}");
        }
        match l["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => return names,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_lists_forwarding_jobs_and_a_node_going_away() {
    // n[0] 768 MiB, n[1] 1280 MiB, n[2] 512 MiB: 10 VMs of 256 MiB fit.
    let nodes = agents(&[768, 1280, 512]).await;
    let infos: Vec<NodeInfo> = nodes.iter().map(|(_, i)| i.clone()).collect();
    let names: Vec<String> = infos.iter().map(|i| i.name.clone()).collect();
    let a = Aggregator::start("agg-a", &infos, "500ms", &[]).await;

    // Nodes, their capacity, the cluster and its totals.
    let (code, l) = a.req("GET", "/api/v1/nodes", None).await;
    assert_eq!(code, 200, "{l}");
    assert_eq!(l["total_count"], 3);
    for n in l["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "online", "{n}");
        assert!(n["last_seen"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(n["resources"]["host"]["cpus"].as_u64().unwrap() >= 1);
    }
    assert_eq!(available(&a, &names[1]).await, 1280);
    let (_, c) = a.req("GET", "/api/v1/cluster", None).await;
    assert_eq!(
        (
            c["role"].as_str(),
            c["nodes"].as_u64(),
            c["online"].as_u64()
        ),
        (Some("aggregator"), Some(3), Some(3))
    );
    assert_eq!(c["membership"], "static");
    assert_eq!(c["totals"]["available_memory_mib"], 768 + 1280 + 512);
    let (code, _) = a.req("GET", "/api/v1/nodes/nope", None).await;
    assert_eq!(code, 404);

    // A request the node finds bad keeps the node's 400.
    let mut bad = vm_body("p-bad", 64);
    bad["disk_size"] = json!(0);
    let (code, e) = a.req("POST", "/api/v1/vms", Some(bad)).await;
    assert_eq!(code, 400, "{e}");

    // Placement: each create goes where the most memory is free.
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..10 {
        let before: Vec<u64> =
            futures::future::join_all(names.iter().map(|n| available(&a, n))).await;
        let (code, vm) = a
            .req(
                "POST",
                "/api/v1/vms",
                Some(vm_body(&format!("p{i:02}"), 256)),
            )
            .await;
        assert_eq!(code, 201, "create {i}: {vm}\n{}", a.log());
        let node = vm["node"].as_str().unwrap().to_owned();
        let idx = names.iter().position(|n| *n == node).unwrap();
        assert_eq!(
            before[idx],
            *before.iter().max().unwrap(),
            "create {i} went to {node}: {before:?}"
        );
        // The decision and its reasons are in the job.
        let (code, job) = a
            .req(
                "GET",
                &format!("/api/v1/jobs/{}", vm["job_id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(code, 200, "{job}");
        let t = &job["tasks"][0];
        assert_eq!(t["node"], node.as_str(), "{job}");
        assert_eq!(t["placement"]["node"], node.as_str());
        assert_eq!(t["placement"]["candidates"].as_array().unwrap().len(), 3);
        assert!(
            t["placement"]["candidates"][0]["reasons"][0]
                .as_str()
                .unwrap()
                .contains("MiB free"),
            "{job}"
        );
        assert!(t["node_job"].is_string());
        *placed.entry(node.clone()).or_default() += 1;
        // The node's own figures, polled, catch up before the next one.
        a.wait_for(
            &format!("/api/v1/nodes/{node}/resources"),
            Duration::from_secs(5),
            |r| r["available"]["memory_mib"].as_u64() == Some(before[idx] - 256),
        )
        .await;
    }
    assert_eq!(placed.values().sum::<usize>(), 10);
    assert_eq!(placed[&names[1]], 5, "{placed:?}");
    assert_eq!(placed[&names[0]], 3, "{placed:?}");
    assert_eq!(placed[&names[2]], 2, "{placed:?}");
    // Full: refused with every node's reason.
    let (code, e) = a
        .req("POST", "/api/v1/vms", Some(vm_body("p-full", 256)))
        .await;
    assert_eq!(code, 409, "{e}");
    assert_eq!(e["error"]["status"], "INSUFFICIENT_CAPACITY", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("memory"),
        "{e}"
    );

    // Merged list: every VM once, in order, with its node; ?node= filters.
    let all = walk(&a, 3, |_| None).await;
    let want: Vec<String> = (0..10).map(|i| format!("p{i:02}")).collect();
    assert_eq!(all, want);
    let (_, l) = a
        .req(
            "GET",
            &format!("/api/v1/vms?node={}&limit=50", names[1]),
            None,
        )
        .await;
    assert_eq!(l["total_count"], 5, "{l}");
    assert!(l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["node"] == names[1].as_str()));
    let (code, _) = a.req("GET", "/api/v1/vms?sort=size", None).await;
    assert_eq!(code, 400);

    // Reads and writes of one VM go to its node, by id or by name.
    let (code, v) = a.req("GET", "/api/v1/vms/p03", None).await;
    assert_eq!(code, 200, "{v}");
    let (code, cfg) = a
        .req(
            "GET",
            &format!("/api/v1/vms/{}/config", v["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 200, "{cfg}");
    let (code, p) = a
        .req("PATCH", "/api/v1/vms/p03", Some(json!({"tags": ["moved"]})))
        .await;
    assert_eq!(code, 200, "{p}");
    let owner = nodes
        .iter()
        .find(|(_, i)| i.name == v["node"].as_str().unwrap())
        .unwrap();
    let (_, direct) = owner.0.req("GET", "/api/v1/vms/p03", None).await;
    assert_eq!(direct["tags"], json!(["moved"]));
    // The node's audit trail meets the aggregator's (which names the
    // caller) by the request id the call carried on.
    let (code, h, _) = a
        .raw(
            "PATCH",
            "/api/v1/vms/p03",
            Some(json!({"tags": ["moved", "twice"]}).to_string()),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let rid = h["x-request-id"].to_str().unwrap().to_owned();
    let (_, here) = a.req("GET", "/api/v1/audit?limit=20", None).await;
    let (_, there) = owner.0.req("GET", "/api/v1/audit?limit=20", None).await;
    let by_id = |page: &Value| -> Value {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["request_id"] == rid.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("no {rid} in {page}"))
    };
    assert_eq!(by_id(&here)["actor"], "uid:0");
    assert!(by_id(&there)["actor"]
        .as_str()
        .unwrap()
        .starts_with("token:"));
    let (code, e) = a.req("GET", "/api/v1/vms/no-such-vm", None).await;
    assert_eq!(code, 404, "{e}");

    // Pagination stays stable while VMs come and go: a deleted VM not yet
    // seen may vanish, a new one may appear, the others come exactly once.
    let seen = walk(&a, 2, |page| match page {
        1 => Some(("/api/v1/vms/p09".to_owned(), Value::Null)),
        2 => Some(("/api/v1/vms".to_owned(), json!({"name": "p045", "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}))),
        _ => None,
    })
    .await;
    let set: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(set.len(), seen.len(), "a VM came twice: {seen:?}");
    for n in want.iter().filter(|n| *n != "p09") {
        assert!(set.contains(n), "{n} skipped: {seen:?}");
    }

    // A placed create (where p09 was) retried with its Idempotency-Key gets
    // its first answer and places nothing again; another request with it is a 422.
    let key = [("idempotency-key", "place-p10")];
    let (code, first) = a
        .req_with("POST", "/api/v1/vms", Some(vm_body("p10", 64)), &key)
        .await;
    assert_eq!(code, 201, "{first}");
    let (code, again, _) = {
        let (c, h, b) = a
            .raw(
                "POST",
                "/api/v1/vms",
                Some(vm_body("p10", 64).to_string()),
                &key,
            )
            .await
            .unwrap();
        (c, serde_json::from_slice::<Value>(&b).unwrap(), h)
    };
    assert_eq!(code, 201, "{again}");
    assert_eq!(again["vm"]["id"], first["vm"]["id"]);
    let (code, e) = a
        .req_with("POST", "/api/v1/vms", Some(vm_body("p11", 64)), &key)
        .await;
    assert_eq!(
        (code, e["error"]["status"].as_str()),
        (422, Some("IDEMPOTENCY_MISMATCH"))
    );
    // A call passed on to a node: the same, replayed by the aggregator (the
    // VM is gone, yet the retry gets the first answer, not a 404).
    let del = [("idempotency-key", "drop-p10")];
    let (code, gone) = a.req_with("DELETE", "/api/v1/vms/p10", None, &del).await;
    assert!(code == 200 || code == 204, "{code} {gone}");
    let (_, h, _) = a
        .raw("DELETE", "/api/v1/vms/p10", None, &del)
        .await
        .unwrap();
    assert_eq!(h["idempotent-replayed"], "true");
    let (code, _) = a.req("GET", "/api/v1/vms/p10", None).await;
    assert_eq!(code, 404);
    for n in &names {
        a.wait_for(
            &format!("/api/v1/vms?node={n}"),
            Duration::from_secs(5),
            |l| {
                l["vms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|v| v["name"] != "p10")
            },
        )
        .await;
    }

    // An asynchronous create: 202 with the cluster job, which follows the
    // node's job to its end; the node's job is reachable here too.
    let (code, acc) = a
        .req_with(
            "POST",
            "/api/v1/vms",
            Some(vm_body("async1", 64)),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(code, 202, "{acc}");
    let jid = acc["job"]["id"].as_str().unwrap().to_owned();
    let job = a
        .wait_for(
            &format!("/api/v1/jobs/{jid}"),
            Duration::from_secs(30),
            |j| j["state"] == "succeeded",
        )
        .await;
    let node_job = job["tasks"][0]["node_job"].as_str().unwrap();
    let (code, nj) = a
        .req("GET", &format!("/api/v1/jobs/{node_job}"), None)
        .await;
    assert_eq!(code, 200, "{nj}");
    assert_eq!(nj["type"], "vm.create");
    let (_, jobs) = a.req("GET", "/api/v1/jobs?limit=200", None).await;
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&jid.as_str()) && ids.contains(&node_job),
        "{jobs}"
    );

    // A bulk create: one cluster job, its tasks on several nodes, each
    // linked to its node's job.
    for v in ["p00", "p01", "p02", "p03", "p04", "p05"] {
        let (code, r) = a.req("DELETE", &format!("/api/v1/vms/{v}"), None).await;
        assert!(code < 300, "{r}");
    }
    let bulk: Vec<Value> = (0..4).map(|i| vm_body(&format!("bulk{i}"), 256)).collect();
    let (code, acc) = a.req("POST", "/api/v1/vms", Some(Value::from(bulk))).await;
    assert_eq!(code, 202, "{acc}");
    let jid = acc["job"]["id"].as_str().unwrap().to_owned();
    let job = a
        .wait_for(
            &format!("/api/v1/jobs/{jid}"),
            Duration::from_secs(60),
            |j| j["state"] != "running" && j["state"] != "queued",
        )
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let used: BTreeSet<&str> = job["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["node"].as_str().unwrap())
        .collect();
    assert!(used.len() >= 2, "one node took the whole bulk: {job}");

    // A node that stops answering is unreachable within two intervals; its
    // VMs stay listed, stale; it comes back by itself.
    let victim = &nodes[1].0;
    let victim_vms = a
        .req("GET", &format!("/api/v1/vms?node={}", names[1]), None)
        .await
        .1["total_count"]
        .as_u64()
        .unwrap();
    assert!(victim_vms > 0);
    // The aggregator's view has caught up with the node (one poll).
    a.wait_for(
        &format!("/api/v1/nodes/{}", names[1]),
        Duration::from_secs(5),
        |n| n["vms"].as_u64() == Some(victim_vms),
    )
    .await;
    // A download from it through the aggregator, begun before it stops.
    let big = victim.image_dir().join("big.raw");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let (len, mut got, mut body) = start_download(
        &a,
        &format!(
            "/api/v1/storage-pools/default/volumes/big.raw/content?node={}",
            names[1]
        ),
    )
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let t0 = Instant::now();
    a.wait_for(
        &format!("/api/v1/nodes/{}", names[1]),
        Duration::from_secs(5),
        |n| n["status"] == "unreachable",
    )
    .await;
    let detect = t0.elapsed();
    println!("dead node detected after {detect:?} (poll interval 500 ms)");
    assert!(
        detect <= Duration::from_millis(1000) + Duration::from_millis(300),
        "{detect:?}"
    );
    // The download is cut with an error, not left waiting on TCP.
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        use http_body_util::BodyExt;
        loop {
            match body.frame().await {
                Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("a download from a node that stopped answering was never cut");
    assert!(
        cut.is_err() && (got as u64) < len,
        "{cut:?}: {got} of {len} bytes"
    );
    let _ = std::fs::remove_file(&big);
    let (code, l) = a
        .req("GET", &format!("/api/v1/vms?node={}", names[1]), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        l["total_count"].as_u64().unwrap(),
        victim_vms,
        "{l}\n{}",
        a.log()
    );
    assert!(
        l["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["stale"] == true),
        "{l}"
    );
    let (_, all) = a.req("GET", "/api/v1/vms?limit=200", None).await;
    assert!(all["vms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["stale"] == true));
    let (_, c) = a.req("GET", "/api/v1/cluster", None).await;
    assert_eq!(c["unreachable"], 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    a.wait_for(
        &format!("/api/v1/nodes/{}", names[1]),
        Duration::from_secs(5),
        |n| n["status"] == "online",
    )
    .await;
    let (_, l) = a
        .req("GET", &format!("/api/v1/vms?node={}", names[1]), None)
        .await;
    assert!(
        l["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.get("stale").is_none()),
        "{l}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_aggregators_placing_at_once_never_overcommit() {
    // 1024 + 512 + 768 MiB: 9 VMs of 256 MiB fit, 16 are asked for.
    let nodes = agents(&[1024, 512, 768]).await;
    let infos: Vec<NodeInfo> = nodes.iter().map(|(_, i)| i.clone()).collect();
    let a = Aggregator::start("agg-a", &infos, "500ms", &[]).await;
    let b = Aggregator::start("agg-b", &infos, "500ms", &[]).await;
    let asks = (0..16).map(|i| {
        let agg = if i % 2 == 0 { &a } else { &b };
        async move {
            agg.req(
                "POST",
                "/api/v1/vms",
                Some(vm_body(&format!("r{i:02}"), 256)),
            )
            .await
        }
    });
    let answers = futures::future::join_all(asks).await;
    let made = answers.iter().filter(|(c, _)| *c == 201).count();
    for (c, r) in &answers {
        assert!(
            *c == 201 || (*c == 409 && r["error"]["status"] == "INSUFFICIENT_CAPACITY"),
            "{c} {r}"
        );
    }
    assert_eq!(made, 9, "{answers:?}");
    for (d, i) in &nodes {
        let (_, r) = d.req("GET", "/api/v1/nodes/self/resources", None).await;
        assert!(
            r["committed"]["memory_mib"].as_u64().unwrap()
                <= r["limits"]["memory_mib"].as_u64().unwrap(),
            "{} overcommitted: {r}",
            i.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merged_events_carry_the_node_and_resume() {
    let nodes = agents(&[1024, 1024]).await;
    let infos: Vec<NodeInfo> = nodes.iter().map(|(_, i)| i.clone()).collect();
    let a = Aggregator::start("agg-e", &infos, "500ms", &[]).await;
    let client =
        libgo::client::Client::new(libgo::client::Endpoint::Unix(a.socket.clone()), None).unwrap();
    let mut events = client.events(&["vm.created"], None).await.unwrap();
    // A VM made on each node directly: both events come through, with
    // their nodes, in one stream.
    for (d, _) in &nodes {
        let (code, r) = d
            .req(
                "POST",
                "/api/v1/vms",
                Some(vm_body(&format!("ev-{}", &d.node[d.node.len() - 4..]), 64)),
            )
            .await;
        assert_eq!(code, 201, "{r}");
    }
    let mut got = BTreeSet::new();
    let mut last_seq = 0;
    while got.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        assert!(ev.seq > last_seq);
        last_seq = ev.seq;
        got.insert(ev.node.clone().unwrap());
    }
    assert_eq!(got, infos.iter().map(|i| i.name.clone()).collect());
    drop(events);
    // Missed while away: two more; a resume gets exactly them.
    for (d, _) in &nodes {
        let (code, r) = d
            .req(
                "POST",
                "/api/v1/vms",
                Some(vm_body(&format!("ev2-{}", &d.node[d.node.len() - 4..]), 64)),
            )
            .await;
        assert_eq!(code, 201, "{r}");
    }
    let ws = client
        .websocket(&format!("/api/v1/events?types=vm.created&since={last_seq}"))
        .await
        .unwrap();
    let mut resumed = libgo::client::EventStream::from_socket(ws);
    let mut names = BTreeSet::new();
    while names.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .expect("a missed event")
            .unwrap()
            .unwrap();
        assert!(ev.seq > last_seq, "{ev:?}");
        names.insert(ev.name.clone().unwrap());
    }
    assert!(names.iter().all(|n| n.starts_with("ev2-")), "{names:?}");

    // The same CLI works against the aggregator: nodes, placed creates,
    // moves (refused here with the node's own answer: nothing to move to).
    let cli = |args: &[&str]| common::libgo_cli(&a.socket, a.root.path(), args);
    let (code, out, err) = cli(&["node", "list", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{out}");
    let (code, out, err) = cli(&[
        "vm",
        "create",
        "cli1",
        "--vcpus",
        "1",
        "--memory",
        "64",
        "--disk-size",
        "1",
        "--base-image",
        "base.qcow2",
        "--placement",
        "spread",
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = cli(&["vm", "move", "cli1", "--node", "nowhere"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("nowhere"), "{err}");
    // The aggregator's document: a move names only its node.
    let (_, doc) = a.req("GET", "/openapi.json", None).await;
    let props = &doc["components"]["schemas"]["MigrateRequest"]["properties"];
    assert!(
        props.get("node").is_some() && props.get("target").is_none(),
        "{props}"
    );
}
