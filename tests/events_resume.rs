//! A client of `GET /api/v1/events` that reconnects with `?since=` gets
//! exactly what it missed, and `seq` keeps rising across a restart.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

async fn open(d: &Daemon, query: &str) -> Ws {
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(
        format!("ws://localhost/api/v1/events?types=template.{query}"),
        stream,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn next(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn create(d: &Daemon, name: &str) {
    let (code, body) = d
        .req(
            "POST",
            "/api/v1/templates",
            Some(json!({"name": name, "vcpus": 1})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
}

async fn delete(d: &Daemon, name: &str) {
    let (code, body) = d
        .req("DELETE", &format!("/api/v1/templates/{name}"), None)
        .await;
    assert!(code == 200 || code == 204, "{code} {body}");
}

#[tokio::test]
async fn a_reconnecting_client_misses_nothing_and_seq_survives_a_restart() {
    let mut d = Daemon::start().await;
    let mut ws = open(&d, "").await;
    create(&d, "a").await;
    create(&d, "b").await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = next(&mut ws).await;
        assert_eq!(ev["node"], d.node.as_str(), "{ev}");
        seen.push(ev);
    }
    assert_eq!(seen[0]["type"], "template.created");
    assert_eq!(seen[1]["name"], "b");
    let last = seen[1]["seq"].as_u64().unwrap();
    let _ = ws.close(None).await;
    drop(ws);

    // While disconnected.
    delete(&d, "a").await;
    create(&d, "c").await;
    delete(&d, "b").await;

    let mut ws = open(&d, &format!("&since={last}")).await;
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(next(&mut ws).await);
    }
    let got: Vec<(String, String)> = missed
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("template.deleted".to_owned(), "a".to_owned()),
            ("template.created".to_owned(), "c".to_owned()),
            ("template.deleted".to_owned(), "b".to_owned()),
        ],
        "{missed:?}"
    );
    let seqs: Vec<u64> = missed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > last,
        "{seqs:?}"
    );
    // Then live, with nothing sent twice.
    create(&d, "live").await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["type"].as_str(), ev["name"].as_str()),
        (Some("template.created"), Some("live")),
        "{ev}"
    );
    assert!(ev["seq"].as_u64().unwrap() > seqs[2]);
    let newest = ev["seq"].as_u64().unwrap();
    drop(ws);

    // A resume point that is not a seq: the upgrade is refused with 400.
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    match tokio_tungstenite::client_async("ws://localhost/api/v1/events?since=abc", stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("since"), "{body}");
        }
        other => panic!("since=abc: {:?}", other.map(|(_, r)| r.status())),
    }

    // After a restart, seq starts above everything the last run issued, and
    // a resume point from before the restart is told events were lost.
    d.kill(nix::sys::signal::Signal::SIGTERM);
    d.spawn().await;
    let mut ws = open(&d, &format!("&since={newest}")).await;
    let lost = next(&mut ws).await;
    assert_eq!(lost["type"], "events.lost", "{lost}");
    create(&d, "after").await;
    let ev = next(&mut ws).await;
    assert_eq!(ev["name"], "after", "{ev}");
    assert!(ev["seq"].as_u64().unwrap() > newest, "{ev} after {newest}");
}
