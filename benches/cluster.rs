//! Cluster figures: three agents each in its own network namespace on a
//! test bridge, 300 VMs on each, one aggregator in front.
//! - what the aggregator adds to a forwarded call (`GET /vms/{id}` through
//!   it against the same call straight to the node, both over kept-alive
//!   connections);
//! - a list of 3 × 300 VMs through the aggregator (one page of 200, the
//!   walk of every page) against one node's own page of 200;
//! - the time to mark a node whose link is cut unreachable, and to see it
//!   back;
//! - a live move of a running 256 MiB guest between two namespaces:
//!   downtime and total time.
//!
//! `cargo bench --bench cluster` (`LIBGO_BENCH_VMS_PER_NODE` changes 300).
//! Writes `benches/results/cluster.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::agg::{Aggregator, NodeInfo};
use common::netns::{NetAgent, TestNet};
use common::{median, ticks};
use serde_json::{json, Value};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)]
}

async fn fill(agent: &NetAgent, n: usize) {
    let mut made = 0;
    while made < n {
        let k = (n - made).min(100);
        let items: Vec<Value> = (made..made + k)
            .map(|i| json!({"name": format!("{}-vm{i:04}", &agent.name[..2]), "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}))
            .collect();
        let (code, acc) = agent
            .daemon
            .req("POST", "/api/v1/vms", Some(Value::Array(items)))
            .await;
        assert_eq!(code, 202, "{acc}");
        let id = acc["job"]["id"].as_str().unwrap();
        let (_, job) = agent
            .daemon
            .req("GET", &format!("/api/v1/jobs/{id}?wait=300"), None)
            .await;
        assert_eq!(job["state"], "succeeded", "{job}");
        made += k;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let per_node: usize = std::env::var("LIBGO_BENCH_VMS_PER_NODE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let net = TestNet::new(3);
    // Nodes keep their default rate limits: the aggregator's token is
    // `unlimited` (the aggregator applies the budgets itself).
    let (a0, a1, a2) = tokio::join!(
        NetAgent::start(&net, 0, &[]),
        NetAgent::start(&net, 1, &[]),
        NetAgent::start(&net, 2, &[])
    );
    let agents = [a0, a1, a2];
    let t = Instant::now();
    for a in &agents {
        fill(a, per_node).await;
    }
    eprintln!(
        "{} VMs made in {:.1} s",
        3 * per_node,
        t.elapsed().as_secs_f64()
    );
    let infos: Vec<NodeInfo> = agents.iter().map(NodeInfo::from).collect();
    let agg = Aggregator::start("bench", &infos, "1s", &[]).await;
    agg.wait_for("/api/v1/nodes", Duration::from_secs(30), |l| {
        l["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["vms"].as_u64() == Some(per_node as u64))
    })
    .await;

    // Forwarded call: the same read, straight and through the aggregator.
    let (_, list) = agents[1]
        .daemon
        .req("GET", "/api/v1/vms?limit=50", None)
        .await;
    let ids: Vec<String> = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    let direct_client = agents[1].client();
    let agg_client =
        libgo::client::Client::new(libgo::client::Endpoint::Unix(agg.socket.clone()), None)
            .unwrap();
    let rounds = 300;
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let id = &ids[i % ids.len()];
        let t = Instant::now();
        direct_client.vm(id).await.unwrap();
        direct.push(ms(t.elapsed()));
        let t = Instant::now();
        agg_client.vm(id).await.unwrap();
        through.push(ms(t.elapsed()));
    }
    let (dm, tm) = (median(direct.clone()), median(through.clone()));

    // Lists of 3 × per_node.
    let mut first = Vec::new();
    let mut walk = Vec::new();
    let mut node_page = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (code, l) = agg.req("GET", "/api/v1/vms?limit=200", None).await;
        first.push(ms(t.elapsed()));
        assert_eq!(code, 200);
        assert_eq!(l["total_count"].as_u64(), Some(3 * per_node as u64));
        let t = Instant::now();
        let mut token: Option<String> = None;
        let mut seen = 0;
        loop {
            let path = match &token {
                Some(tk) => format!("/api/v1/vms?limit=200&page_token={tk}"),
                None => "/api/v1/vms?limit=200".to_owned(),
            };
            let (_, l) = agg.req("GET", &path, None).await;
            seen += l["vms"].as_array().unwrap().len();
            match l["next_page_token"].as_str() {
                Some(tk) => token = Some(tk.to_owned()),
                None => break,
            }
        }
        walk.push(ms(t.elapsed()));
        assert_eq!(seen, 3 * per_node);
        let t = Instant::now();
        let _ = direct_client
            .vms(&libgo::client::ListQuery {
                limit: Some(200),
                ..Default::default()
            })
            .await
            .unwrap();
        node_page.push(ms(t.elapsed()));
    }

    // A cut link: how long until unreachable, and until back.
    let (mut down, mut up) = (Vec::new(), Vec::new());
    let victim = agents[2].name.clone();
    for _ in 0..3 {
        net.cut(2);
        let t = Instant::now();
        agg.wait_for(
            &format!("/api/v1/nodes/{victim}"),
            Duration::from_secs(10),
            |n| n["status"] == "unreachable",
        )
        .await;
        down.push(ms(t.elapsed()));
        net.restore(2);
        let t = Instant::now();
        agg.wait_for(
            &format!("/api/v1/nodes/{victim}"),
            Duration::from_secs(30),
            |n| n["status"] == "online",
        )
        .await;
        up.push(ms(t.elapsed()));
    }

    // Live moves of a running 256 MiB guest, back and forth.
    let (code, vm) = agg
        .req("POST", "/api/v1/vms", Some(json!({
            "name": "mover", "vcpus": 1, "memory": 256, "disk_size": 1, "base_image": "base.qcow2", "node": agents[0].name,
            "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": common::fixture_cmdline()},
        })))
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let (code, r) = agg.req("POST", "/api/v1/vms/mover/start", None).await;
    assert_eq!(code, 200, "{r}");
    agents[0]
        .daemon
        .wait_marker(&id, common::READY, 1, common::BOOT)
        .await;
    agents[0].daemon.start_ticking(&id).await;
    let mut moves = Vec::new();
    for k in 0..4 {
        let to = &agents[if k % 2 == 0 { 1 } else { 0 }];
        let (code, r) = agg
            .req(
                "POST",
                "/api/v1/vms/mover/migrate",
                Some(json!({"node": to.name, "live": true})),
            )
            .await;
        assert_eq!(code, 200, "{r}");
        moves.push((
            r["downtime_ms"].as_u64().unwrap(),
            r["total_ms"].as_u64().unwrap(),
            r["bytes_sent"].as_u64().unwrap(),
        ));
        // Still counting where it landed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let before = ticks(&to.daemon.console_text(&id)).len();
        while ticks(&to.daemon.console_text(&id)).len() < before + 3 {
            assert!(Instant::now() < deadline, "no ticks after move {k}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = agg.req("POST", "/api/v1/vms/mover/poweroff", None).await;

    let mut out = String::new();
    out.push_str(&format!(
        "# Cluster figures\n\nThree agents, each in its own network namespace on a test bridge (TLS, admin tokens, pinned certificates), {per_node} VMs on each, one `libgo-aggregator` in front (poll interval 1 s). TCG, 2 cores.\n\n"
    ));
    out.push_str("| figure | median | p99 / spread |\n| --- | --- | --- |\n");
    out.push_str(&format!(
        "| `GET /vms/{{id}}` straight to the node (TLS, kept alive) | {dm:.2} ms | {:.2} ms |\n",
        p99(direct.clone())
    ));
    out.push_str(&format!("| the same through the aggregator (its socket, then TLS kept alive) | {tm:.2} ms | {:.2} ms |\n", p99(through.clone())));
    out.push_str(&format!(
        "| **added by the aggregator per forwarded call** | **{:.2} ms** | |\n",
        tm - dm
    ));
    out.push_str(&format!(
        "| one node's own page of 200 | {:.1} ms | |\n",
        median(node_page.clone())
    ));
    out.push_str(&format!(
        "| first page of 200 of {} VMs through the aggregator | {:.1} ms | |\n",
        3 * per_node,
        median(first.clone())
    ));
    out.push_str(&format!(
        "| walk of all {} VMs (pages of 200) through the aggregator | {:.1} ms | |\n",
        3 * per_node,
        median(walk.clone())
    ));
    out.push_str(&format!(
        "| cut link to `unreachable` | {:.0} ms | {:?} ms |\n",
        median(down.clone()),
        down.iter().map(|d| d.round() as u64).collect::<Vec<_>>()
    ));
    out.push_str(&format!(
        "| link back to `online` | {:.0} ms | {:?} ms |\n",
        median(up.clone()),
        up.iter().map(|d| d.round() as u64).collect::<Vec<_>>()
    ));
    let dts: Vec<f64> = moves.iter().map(|m| m.0 as f64).collect();
    let tts: Vec<f64> = moves.iter().map(|m| m.1 as f64).collect();
    out.push_str(&format!(
        "| live move of a 256 MiB guest: downtime | {:.0} ms | {:?} ms |\n",
        median(dts),
        moves.iter().map(|m| m.0).collect::<Vec<_>>()
    ));
    out.push_str(&format!(
        "| live move of a 256 MiB guest: total | {:.0} ms | {:?} ms |\n",
        median(tts),
        moves.iter().map(|m| m.1).collect::<Vec<_>>()
    ));
    out.push_str(&format!(
        "| bytes sent per move (1 GiB disk mirrored whole + memory) | {} | |\n",
        moves[0].2
    ));
    println!("{out}");
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results")).unwrap();
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/cluster.md"),
        out,
    )
    .unwrap();
}
