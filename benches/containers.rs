//! Container create+start through libgo against the same two calls made
//! straight to the engine's socket, alternating, same machine, same run.
//! `cargo bench --bench containers` (`LIBGO_BENCH_RUNS`, default 20).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use common::{median, raw_request, Daemon};
use serde_json::{json, Value};

const ENGINE: &str = "/var/run/docker.sock";

async fn engine(method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (code, _, bytes) = raw_request(
        Path::new(ENGINE),
        method,
        &format!("/v1.41{path}"),
        body.map(|b| b.to_string()),
        &[],
    )
    .await
    .unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("LIBGO_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let d = Daemon::start().await;
    // The image: a busybox-static root filesystem imported through libgo.
    let tar = common::busybox_rootfs_tar(&["sleep"]);
    let image = "libgo-bench/busybox:1";
    {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(format!("http://x/api/v1/images/import?image={image}"))
            .header("host", "x")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(tar)))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 201);
        let _ = resp.into_body().collect().await;
    }

    let (mut via_libgo, mut direct) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let (code, c) = d
            .req("POST", "/api/v1/containers", Some(json!({"name": format!("bench-l{i}"), "image": image, "command": ["sleep", "600"], "start": true})))
            .await;
        via_libgo.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(code, 201, "{c}");

        let t = Instant::now();
        let (code, c2) = engine(
            "POST",
            &format!("/containers/create?name=bench-d{i}"),
            Some(json!({"Image": image, "Cmd": ["sleep", "600"]})),
        )
        .await;
        assert_eq!(code, 201, "{c2}");
        let id = c2["Id"].as_str().unwrap().to_owned();
        let (code, _) = engine("POST", &format!("/containers/{id}/start"), None).await;
        direct.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(code, 204);

        assert_eq!(
            d.req(
                "DELETE",
                &format!(
                    "/api/v1/containers/{}?force=true",
                    c["id"].as_str().unwrap()
                ),
                None
            )
            .await
            .0,
            200
        );
        engine("DELETE", &format!("/containers/{id}?force=true"), None).await;
    }
    let (l, e) = (median(via_libgo), median(direct));
    println!("container create+start, medians of {runs} alternating runs\n");
    println!("| figure | libgo | engine socket | ratio |");
    println!("| --- | --- | --- | --- |");
    println!("| create + start (ms) | {l:.1} | {e:.1} | {:.2} |", l / e);
    let _ = d
        .req(
            "DELETE",
            "/api/v1/images/libgo-bench%2Fbusybox:1?force=true",
            None,
        )
        .await;
}
