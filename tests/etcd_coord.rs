//! libgo's coordination records against a real etcd: membership under
//! leases and its watch, lease expiry, the name reservation race, cluster
//! jobs' compare-and-swap and takeover, and a real `libgod` registering
//! itself.

mod common;

use std::time::{Duration, Instant};

use common::etcd::EtcdServer;
use libgo::cluster::coord::{Coord, CoordError, NameOwner, NodeChange, NodeRegistration};
use libgo::cluster::etcd::{Compare, Etcd, EtcdError, EventKind, TxnOp};
use serde_json::json;
use uuid::Uuid;

fn coord(etcd: &EtcdServer) -> Coord {
    // A prefix of its own: tests never see each other's keys.
    Coord::new(
        Etcd::new(&etcd.url()).unwrap(),
        &format!("/t-{}/", Uuid::new_v4().simple()),
    )
}

fn reg(name: &str, token: &str) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        url: format!("https://{name}.lan:8443"),
        fingerprint: Some("AB:CD".into()),
        token: token.into(),
        version: "0.1.0".into(),
    }
}

/// The next membership change, within `within`.
async fn next_change(w: &mut libgo::cluster::coord::NodeWatch, within: Duration) -> NodeChange {
    tokio::time::timeout(within, w.next())
        .await
        .expect("no membership change in time")
        .expect("the watch ended")
        .expect("the watch failed")
}

#[tokio::test(flavor = "multi_thread")]
async fn membership_is_registered_listed_and_watched() {
    let etcd = EtcdServer::start().await;
    let c = coord(&etcd);
    let (none, rev0) = c.nodes().await.unwrap();
    assert!(none.is_empty());
    let mut w = c.watch_nodes(rev0 + 1).await.unwrap();

    let n1 = reg("n1", "secret-1");
    let lease1 = c.register_node(&n1, 10).await.unwrap();
    assert!(lease1.is_alive());
    let n2 = reg("n2", "secret-2");
    let lease2 = c.register_node(&n2, 10).await.unwrap();
    let (nodes, rev) = c.nodes().await.unwrap();
    assert_eq!(nodes, vec![n1.clone(), n2.clone()]);
    assert!(rev > rev0);
    assert_eq!(c.node("n1").await.unwrap(), Some(n1.clone()));
    for want in [&n1, &n2] {
        match next_change(&mut w, Duration::from_secs(5)).await {
            NodeChange::Registered { node, .. } => assert_eq!(&node, want),
            other => panic!("{other:?}"),
        }
    }

    // Another node cannot take a live name.
    let impostor = reg("n1", "another secret");
    assert!(matches!(
        c.register_node(&impostor, 10).await,
        Err(CoordError::NodeTaken(ref n)) if n == "n1"
    ));
    assert_eq!(c.node("n1").await.unwrap(), Some(n1.clone()));

    // The same node (same token) coming back replaces its registration at
    // once, and its old lease is revoked.
    let moved = NodeRegistration {
        url: "https://n1.lan:9443".into(),
        ..n1.clone()
    };
    let lease1b = c.register_node(&moved, 10).await.unwrap();
    assert_ne!(lease1b.id(), lease1.id());
    match next_change(&mut w, Duration::from_secs(5)).await {
        NodeChange::Registered { node, .. } => assert_eq!(node, moved),
        other => panic!("{other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), lease1.lost())
        .await
        .expect("the replaced lease is seen lost");
    assert_eq!(c.node("n1").await.unwrap(), Some(moved.clone()));

    // Revoking ends a registration at once.
    lease2.revoke().await.unwrap();
    match next_change(&mut w, Duration::from_secs(5)).await {
        NodeChange::Gone { name, .. } => assert_eq!(name, "n2"),
        other => panic!("{other:?}"),
    }
    let (nodes, _) = c.nodes().await.unwrap();
    assert_eq!(nodes, vec![moved]);
    assert!(c.register_node(&reg("", "x"), 10).await.is_err());
    assert!(c.register_node(&reg("n3", "x"), 0).await.is_err());
    drop(lease1b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_whose_heartbeat_stops_is_gone_after_its_ttl() {
    let etcd = EtcdServer::start().await;
    let c = coord(&etcd);
    let mut w = c.watch_nodes(0).await.unwrap();
    let lease = c.register_node(&reg("n1", "s"), 2).await.unwrap();
    assert!(matches!(
        next_change(&mut w, Duration::from_secs(5)).await,
        NodeChange::Registered { .. }
    ));
    // Three heartbeats (every ttl/3) keep it past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lease.is_alive());
    assert!(c.node("n1").await.unwrap().is_some());

    // The node dies: no revoke, the heartbeat just stops.
    drop(lease);
    let t0 = Instant::now();
    match next_change(&mut w, Duration::from_secs(6)).await {
        NodeChange::Gone { name, .. } => assert_eq!(name, "n1"),
        other => panic!("{other:?}"),
    }
    let took = t0.elapsed();
    println!(
        "lease expiry: ttl 2 s, the watch saw the registration gone {:.2} s after the heartbeat stopped",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(c.node("n1").await.unwrap().is_none());

    // A lease ended behind the holder's back (here revoked by someone
    // else) is reported lost at its next renewal.
    let lease = c.register_node(&reg("n1", "s"), 3).await.unwrap();
    let t0 = Instant::now();
    c.etcd().lease_revoke(lease.id()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), lease.lost())
        .await
        .expect("the holder learns its lease is gone");
    println!(
        "lease loss: ttl 3 s, the holder saw its revoked lease lost {:.2} s later",
        t0.elapsed().as_secs_f64()
    );
    assert!(!lease.is_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_lost_when_etcd_is_gone_for_a_ttl_and_a_watch_resumes() {
    let mut etcd = EtcdServer::start().await;
    let c = coord(&etcd);
    let lease = c.register_node(&reg("n1", "s"), 2).await.unwrap();
    let mut w = c.watch_nodes(0).await.unwrap();
    c.reserve_name(
        "before",
        &NameOwner {
            node: "n1".into(),
            vm: None,
            by: "a".into(),
        },
    )
    .await
    .unwrap();
    etcd.kill();
    let t0 = Instant::now();
    // The watch ends with an error, once.
    let ended = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("the watch notices etcd is gone");
    assert!(
        matches!(
            ended,
            Some(Err(CoordError::Etcd(EtcdError::Unavailable { .. })))
        ),
        "{ended:?}"
    );
    assert!(w.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(5), lease.lost())
        .await
        .expect("no renewal for a TTL: lost");
    println!(
        "etcd down: the holder of a 2 s lease gave it up {:.2} s after etcd died",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let err = c.nodes().await.unwrap_err();
    assert!(
        matches!(err, CoordError::Etcd(EtcdError::Unavailable { .. })),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(6));

    etcd.restart().await;
    // Resuming from where the watch stopped misses nothing and repeats
    // nothing: the restart's lease expiry (or none yet) and a new node.
    let mut w = c.watch_nodes(w.resume_revision()).await.unwrap();
    let lease2 = c.register_node(&reg("n2", "s2"), 10).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match next_change(&mut w, Duration::from_secs(10)).await {
            NodeChange::Registered { node, .. } => {
                seen.push(format!("+{}", node.name));
                if node.name == "n2" {
                    break;
                }
            }
            NodeChange::Gone { name, .. } => seen.push(format!("-{name}")),
        }
    }
    assert!(!seen.contains(&"+n1".to_owned()), "{seen:?}");
    assert_eq!(seen.last().unwrap(), "+n2");
    drop(lease2);
}

#[tokio::test(flavor = "multi_thread")]
async fn of_concurrent_reservations_of_a_name_exactly_one_wins() {
    let etcd = EtcdServer::start().await;
    let c = coord(&etcd);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let owner = NameOwner {
                node: format!("n{}", i % 3),
                vm: None,
                by: format!("agg-{i}"),
            };
            (c.reserve_name("web", &owner).await.unwrap(), owner)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (won, owner) = t.await.unwrap();
        if won {
            winners.push(owner);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let winner = winners.pop().unwrap();
    assert_eq!(c.name_owner("web").await.unwrap(), Some(winner.clone()));

    // Recording the VM's id: only over the record as it is.
    let vm = Uuid::new_v4();
    let made = NameOwner {
        vm: Some(vm),
        ..winner.clone()
    };
    let stale = NameOwner {
        by: "someone-else".into(),
        ..winner.clone()
    };
    assert!(!c.set_name_owner("web", &stale, &made).await.unwrap());
    assert!(c.set_name_owner("web", &winner, &made).await.unwrap());
    assert!(!c.set_name_owner("web", &winner, &made).await.unwrap());
    assert_eq!(c.name_owner("web").await.unwrap(), Some(made.clone()));

    assert!(c.release_name("web").await.unwrap());
    assert!(!c.release_name("web").await.unwrap());
    assert_eq!(c.name_owner("web").await.unwrap(), None);
    assert!(!c.set_name_owner("web", &made, &winner).await.unwrap());
    assert!(c.reserve_name("web", &winner).await.unwrap());
    // Names that would be paths are keys of their own.
    assert!(c.reserve_name("a/b", &winner).await.unwrap());
    assert!(c.name_owner("a").await.unwrap().is_none());
    assert_eq!(c.name_owner("a/b").await.unwrap(), Some(winner));
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_changed_by_compare_and_swap_and_orphans_are_claimed_once() {
    // On an address of its own, as on a bridge agents in namespaces reach.
    let etcd = EtcdServer::start_on("127.0.0.2").await;
    assert!(etcd.url().starts_with("http://127.0.0.2:"));
    let c = coord(&etcd);
    let a1 = c.register_aggregator("agg-1", 10).await.unwrap();
    let _a2 = c.register_aggregator("agg-2", 10).await.unwrap();
    let _a3 = c.register_aggregator("agg-3", 10).await.unwrap();
    assert!(matches!(
        c.register_aggregator("agg-1", 10).await,
        Err(CoordError::AggregatorTaken(_))
    ));
    assert_eq!(
        c.aggregators().await.unwrap(),
        vec!["agg-1", "agg-2", "agg-3"]
    );
    assert!(c.aggregator_alive("agg-1").await.unwrap());
    assert!(!c.aggregator_alive("agg-9").await.unwrap());

    let id = Uuid::new_v4();
    let done_id = Uuid::new_v4();
    c.create_job(
        id,
        "agg-1",
        &json!({"kind": "migrate", "step": 1, "finished": false}),
    )
    .await
    .unwrap();
    c.create_job(done_id, "agg-1", &json!({"finished": true}))
        .await
        .unwrap();
    assert!(matches!(
        c.create_job(id, "agg-2", &json!({})).await,
        Err(CoordError::JobExists(j)) if j == id
    ));
    let j = c.job(id).await.unwrap().unwrap();
    assert_eq!((j.owner.as_str(), &j.doc["step"]), ("agg-1", &json!(1)));
    assert!(c
        .update_job(
            id,
            j.mod_revision,
            "agg-1",
            &json!({"step": 2, "finished": false})
        )
        .await
        .unwrap());
    // The old revision no longer matches.
    assert!(!c
        .update_job(id, j.mod_revision, "agg-1", &json!({"step": 9}))
        .await
        .unwrap());
    let j = c.job(id).await.unwrap().unwrap();
    assert_eq!(j.doc["step"], 2);
    assert_eq!(c.jobs().await.unwrap().len(), 2);

    // While agg-1 lives its jobs are nobody's to claim.
    assert!(c.orphaned_jobs("agg-2").await.unwrap().is_empty());
    a1.revoke().await.unwrap();
    assert!(!c.aggregator_alive("agg-1").await.unwrap());
    let orphans = c.orphaned_jobs("agg-2").await.unwrap();
    assert_eq!(orphans.len(), 1, "a finished job is no orphan: {orphans:?}");
    assert_eq!(orphans[0].id, id);
    // Two aggregators claim the orphan at once: one gets it.
    let rev = orphans[0].mod_revision;
    let (c2, c3) = (c.clone(), c.clone());
    let (r2, r3) = tokio::join!(
        tokio::spawn(async move { c2.claim_job(id, "agg-2", rev).await.unwrap() }),
        tokio::spawn(async move { c3.claim_job(id, "agg-3", rev).await.unwrap() }),
    );
    let (r2, r3) = (r2.unwrap(), r3.unwrap());
    assert!(r2 ^ r3, "exactly one claim wins: {r2} {r3}");
    let j = c.job(id).await.unwrap().unwrap();
    assert_eq!(j.owner, if r2 { "agg-2" } else { "agg-3" });
    assert_eq!(j.doc["step"], 2, "a claim keeps the document");
    assert!(c.orphaned_jobs("agg-2").await.unwrap().is_empty());
    assert!(c.delete_job(id).await.unwrap());
    assert!(c.job(id).await.unwrap().is_none());
    assert!(!c.claim_job(id, "agg-2", j.mod_revision).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_transactions_and_their_latency() {
    let etcd = EtcdServer::start().await;
    let e = Etcd::new(&etcd.url()).unwrap();
    let key = format!("/t-{}/counter", Uuid::new_v4().simple());
    let r = e
        .txn(
            &[Compare::absent(&key)],
            &[TxnOp::put(&key, b"0".to_vec(), None)],
            &[TxnOp::get(&key)],
        )
        .await
        .unwrap();
    assert!(r.succeeded);
    let again = e
        .txn(&[Compare::absent(&key)], &[], &[TxnOp::get(&key)])
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert!(matches!(
        &again.responses[0],
        libgo::cluster::etcd::TxnResponse::Get(Some(kv)) if kv.value == b"0"
    ));
    assert!(
        e.txn(&[Compare::value(&key, b"0")], &[], &[])
            .await
            .unwrap()
            .succeeded
    );
    // A compare-and-swap increment, timed.
    let mut times = Vec::new();
    for i in 0..200 {
        let kv = e.get(&key).await.unwrap().unwrap();
        let t0 = Instant::now();
        let r = e
            .txn(
                &[Compare::mod_revision(&key, kv.mod_revision)],
                &[TxnOp::put(&key, (i + 1).to_string().into_bytes(), None)],
                &[],
            )
            .await
            .unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(r.succeeded);
    }
    let kv = e.get(&key).await.unwrap().unwrap();
    assert_eq!(kv.value, b"200");
    assert_eq!(kv.version, 201);
    times.sort_by(f64::total_cmp);
    println!(
        "txn (compare-and-swap put) latency over 200: median {:.2} ms, p99 {:.2} ms",
        times[100], times[197]
    );
    // Watch events carry kinds and revisions.
    let mut w = e.watch_prefix(&key, kv.mod_revision).await.unwrap();
    let ev = w.next().await.unwrap().unwrap();
    assert_eq!((ev.kind, ev.revision()), (EventKind::Put, kv.mod_revision));
    assert!(e.delete(&key).await.unwrap());
    let ev = w.next().await.unwrap().unwrap();
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(ev.kv.key, key);
    assert!(!e.delete(&key).await.unwrap());
    assert!(matches!(
        e.put(&key, b"x", Some(12345)).await,
        Err(EtcdError::LeaseGone(12345))
    ));
    assert!(matches!(
        e.lease_keepalive(12345).await,
        Err(EtcdError::LeaseGone(12345))
    ));
    // Nobody listening: unavailable, quickly.
    let port = common::free_port();
    let t0 = Instant::now();
    let err = Etcd::new(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .get("k")
        .await
        .unwrap_err();
    assert!(matches!(err, EtcdError::Unavailable { .. }), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// Polls until the node's registration satisfies `ok`.
async fn wait_registration(
    c: &Coord,
    name: &str,
    within: Duration,
    ok: impl Fn(&Option<NodeRegistration>) -> bool,
) -> Option<NodeRegistration> {
    let deadline = Instant::now() + within;
    loop {
        let r = c.node(name).await.unwrap();
        if ok(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "registration of {name}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn libgod_registers_itself_and_its_lease_ends_with_it() {
    let etcd = EtcdServer::start().await;
    let c = Coord::new(Etcd::new(&etcd.url()).unwrap(), "/libgo/");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut d = common::Daemon::start_with(&["--etcd", &etcd.url(), "--listen", &listen]).await;
    let reg = wait_registration(&c, &d.node, Duration::from_secs(10), Option::is_some)
        .await
        .unwrap();
    assert_eq!(reg.url, format!("https://{listen}"));
    assert_eq!(reg.version, env!("CARGO_PKG_VERSION"));
    // The fingerprint is the served certificate's, and the token works on
    // the node's TLS listener with the admin role (it may list tokens).
    let served = libgo::client::probe_fingerprint("127.0.0.1", port)
        .await
        .unwrap();
    assert_eq!(reg.fingerprint.as_deref(), Some(served.as_str()));
    let client = libgo::client::Client::from_url(&reg.url, reg.fingerprint.as_deref())
        .unwrap()
        .with_token(&reg.token);
    let tokens: serde_json::Value = client
        .request(hyper::Method::GET, "/api/v1/tokens", None::<&()>)
        .await
        .unwrap();
    let cluster: Vec<_> = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "cluster")
        .collect();
    assert_eq!(cluster.len(), 1, "{tokens}");
    assert_eq!(cluster[0]["role"], "admin");
    let bad = libgo::client::Client::from_url(&reg.url, reg.fingerprint.as_deref())
        .unwrap()
        .with_token("lgo_nope_nope");
    let err = bad
        .request::<serde_json::Value>(hyper::Method::GET, "/api/v1/vms", None::<&()>)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    let kept = d.state_dir().join("cluster.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), reg.token);

    // SIGKILL: nobody revokes; the lease (10 s) ends the registration.
    let mut w = c.watch_nodes(0).await.unwrap();
    d.kill(nix::sys::signal::Signal::SIGKILL);
    let t0 = Instant::now();
    match next_change(&mut w, Duration::from_secs(15)).await {
        NodeChange::Gone { name, .. } => assert_eq!(name, d.node),
        other => panic!("{other:?}"),
    }
    println!(
        "libgod killed: its registration (lease ttl 10 s) was gone {:.2} s later",
        t0.elapsed().as_secs_f64()
    );
    assert!(t0.elapsed() < Duration::from_secs(12));

    // Restarted: registered again, with the same token.
    d.spawn().await;
    let again = wait_registration(&c, &d.node, Duration::from_secs(10), Option::is_some)
        .await
        .unwrap();
    assert_eq!(again, reg);

    // A restart before the old lease expires is the same node: it takes
    // its registration back at once rather than waiting out the lease.
    let (_, rev) = c.nodes().await.unwrap();
    let mut changed = c.watch_nodes(rev + 1).await.unwrap();
    d.kill(nix::sys::signal::Signal::SIGKILL);
    assert!(c.node(&d.node).await.unwrap().is_some());
    let t0 = Instant::now();
    d.spawn().await;
    // The registration is replaced (a put), never deleted in between.
    let change = next_change(&mut changed, Duration::from_secs(5)).await;
    assert!(
        matches!(&change, NodeChange::Registered { node, .. } if node.token == reg.token),
        "{change:?}"
    );
    println!(
        "libgod restarted within its lease: registered again {:.2} s later",
        t0.elapsed().as_secs_f64()
    );

    // A clean stop revokes: gone at once.
    d.kill(nix::sys::signal::Signal::SIGTERM);
    assert!(c.node(&d.node).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn libgod_serves_while_etcd_is_down_and_registers_once_it_is_up() {
    let mut etcd = EtcdServer::start().await;
    let c = Coord::new(Etcd::new(&etcd.url()).unwrap(), "/libgo/");
    etcd.kill();
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = common::Daemon::start_with(&["--etcd", &etcd.url(), "--listen", &listen]).await;
    let (status, _) = d.req("GET", "/api/v1/vms", None).await;
    assert_eq!(status, 200);
    etcd.restart().await;
    let t0 = Instant::now();
    let reg = wait_registration(&c, &d.node, Duration::from_secs(15), Option::is_some)
        .await
        .unwrap();
    println!(
        "etcd back: libgod registered {:.2} s later",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(reg.url, format!("https://{listen}"));
    assert!(d.log().contains("cannot register in etcd"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn libgod_refuses_an_etcd_without_a_listener_to_advertise() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_libgod"))
        .args([
            "--etcd",
            "http://127.0.0.1:2379",
            "--socket",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd needs listen"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_libgod"))
        .args([
            "--etcd",
            "http://127.0.0.1:2379",
            "--listen",
            "0.0.0.0:8443",
            "--socket",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("advertise_url"), "{err}");
}
