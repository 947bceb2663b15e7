//! Jobs, bulk operations, templates, idempotency, pagination and events,
//! against a real libgod and qemu-img (and QEMU where a VM runs).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{guest_slot, Daemon};
use futures::StreamExt;
use serde_json::{json, Value};

async fn wait_job(d: &Daemon, job: &Value) -> Value {
    let id = job["id"].as_str().unwrap();
    let (code, j) = d
        .req("GET", &format!("/api/v1/jobs/{id}?wait=240"), None)
        .await;
    assert_eq!(code, 200, "{j}");
    assert!(
        j["finished_at"].is_string(),
        "job still running after the wait: {j}"
    );
    j
}

fn vm_dirs(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.state_dir().join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn all_vms(d: &Daemon) -> Vec<Value> {
    let (_, page) = d.req("GET", "/api/v1/vms?limit=200", None).await;
    page["vms"].as_array().unwrap().clone()
}

/// A qemu-img that sleeps before each `create` (linked clone), so bulk jobs
/// take long enough to be cancelled or killed half-way.
fn slow_qemu_img(secs: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("qemu-img");
    let script =
        format!("#!/bin/sh\nif [ \"$1\" = create ]; then sleep {secs}; fi\nexec qemu-img \"$@\"\n");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = wrapper.to_str().unwrap().to_owned();
    (dir, path)
}

#[tokio::test]
async fn bulk_create_from_a_template_then_bulk_delete() {
    let d = Daemon::start().await;
    let (code, t) = d
        .req("POST", "/api/v1/templates", Some(json!({
            "name": "small", "base_image": "base.qcow2", "vcpus": 1, "memory": 64, "disk_size": 1,
            "tags": ["fleet"], "io_limits": {"iops": 100}, "user_data": "#cloud-config\nhostname: fleet\n"
        })))
        .await;
    assert_eq!(code, 201, "{t}");
    assert_eq!(
        d.req("POST", "/api/v1/templates", Some(json!({"name": "small"})))
            .await
            .0,
        409
    );
    let (_, got) = d.req("GET", "/api/v1/templates/small", None).await;
    assert_eq!(got["id"], t["id"]);

    let mut items: Vec<Value> = (0..20)
        .map(|i| json!({"template": "small", "name": format!("b-{i:02}")}))
        .collect();
    items[3]["memory"] = json!(128); // the request overrides the template
    let (code, headers, body) = d
        .raw(
            "POST",
            "/api/v1/vms",
            Some(Value::Array(items).to_string()),
            &[],
        )
        .await
        .unwrap();
    let accepted: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 202, "{accepted}");
    let job = &accepted["job"];
    assert_eq!(
        headers["location"],
        format!("/api/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(job["type"], "vm.bulk_create");
    assert_eq!(job["tasks"].as_array().unwrap().len(), 20);
    let done = wait_job(&d, job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress_percent"], 100);
    for task in done["tasks"].as_array().unwrap() {
        assert_eq!(task["state"], "succeeded", "{task}");
        assert!(task["target"].as_str().unwrap().starts_with("/api/v1/vms/"));
    }
    // Tasks page and drill down.
    let id = done["id"].as_str().unwrap();
    let (_, page) = d
        .req("GET", &format!("/api/v1/jobs/{id}/tasks?limit=8"), None)
        .await;
    assert_eq!(
        (
            page["tasks"].as_array().unwrap().len(),
            page["total_count"].as_u64()
        ),
        (8, Some(20))
    );
    let tok = page["next_page_token"].as_str().unwrap();
    let (_, page2) = d
        .req(
            "GET",
            &format!("/api/v1/jobs/{id}/tasks?limit=8&page_token={tok}"),
            None,
        )
        .await;
    assert_eq!(page2["tasks"][0]["id"], 8);
    let (code, t5) = d
        .req("GET", &format!("/api/v1/jobs/{id}/tasks/5"), None)
        .await;
    assert_eq!((code, t5["description"].as_str()), (200, Some("b-05")));
    assert!(!t5["log"].as_array().unwrap().is_empty());

    let (_, list) = d
        .req("GET", "/api/v1/vms?template=small&limit=200", None)
        .await;
    assert_eq!(list["total_count"], 20);
    for vm in list["vms"].as_array().unwrap() {
        assert_eq!(vm["template"], "small");
        assert_eq!(vm["tags"], json!(["fleet"]));
        assert_eq!(vm["io_limits"]["iops"], 100);
        assert_eq!(vm["cloud_init"], true);
        let want = if vm["name"] == "b-03" { 128 } else { 64 };
        assert_eq!(vm["memory"], want, "{vm}");
        let dir = d.state_dir().join("vms").join(vm["id"].as_str().unwrap());
        assert!(dir.join("root.qcow2").exists() && dir.join("cidata.iso").exists());
    }
    // Bulk delete by name and id: nothing left on disk.
    let vms = list["vms"].as_array().unwrap();
    let mut ids: Vec<String> = vms
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    ids[0] = vms[0]["name"].as_str().unwrap().to_owned();
    let (code, acc) = d
        .req("DELETE", "/api/v1/vms", Some(json!({"vm_ids": ids})))
        .await;
    assert_eq!(code, 202, "{acc}");
    let done = wait_job(&d, &acc["job"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(all_vms(&d).await.is_empty());
    assert!(vm_dirs(&d).is_empty(), "{:?}", vm_dirs(&d));
    // One bad item fails its task only.
    let (_, acc) = d
        .req(
            "DELETE",
            "/api/v1/vms",
            Some(json!({"vm_ids": ["no-such-vm"]})),
        )
        .await;
    let done = wait_job(&d, &acc["job"]).await;
    assert_eq!(done["state"], "failed");
    assert!(done["tasks"][0]["error"]
        .as_str()
        .unwrap()
        .contains("not found"));
    // More than 100 items is 400; templates go in bulk too.
    let many: Vec<Value> = (0..101).map(|_| json!({"template": "small"})).collect();
    assert_eq!(
        d.req("POST", "/api/v1/vms", Some(Value::Array(many)))
            .await
            .0,
        400
    );
    let (code, acc) = d
        .req(
            "DELETE",
            "/api/v1/templates",
            Some(json!({"template_ids": ["small"]})),
        )
        .await;
    assert_eq!(code, 202);
    assert_eq!(wait_job(&d, &acc["job"]).await["state"], "succeeded");
    assert_eq!(d.req("GET", "/api/v1/templates/small", None).await.0, 404);
}

#[tokio::test]
async fn cancelling_a_bulk_create_half_way_keeps_only_finished_vms() {
    let (_w, qemu_img) = slow_qemu_img("0.4");
    let d = Daemon::start_with(&["--qemu-img", &qemu_img, "--bulk-parallelism", "2"]).await;
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("c-{i:02}"), "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}))
        .collect();
    let (code, acc) = d
        .req("POST", "/api/v1/vms", Some(Value::Array(items)))
        .await;
    assert_eq!(code, 202);
    let id = acc["job"]["id"].as_str().unwrap().to_owned();
    // Wait until a few tasks are done, then cancel.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = d.req("GET", &format!("/api/v1/jobs/{id}"), None).await;
        let done = j["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "succeeded")
            .count();
        if done >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, j) = d.req("DELETE", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["state"], "cancelled", "{j}");
    let tasks = j["tasks"].as_array().unwrap();
    let ok: Vec<&str> = tasks
        .iter()
        .filter(|t| t["state"] == "succeeded")
        .map(|t| t["description"].as_str().unwrap())
        .collect();
    assert!(ok.len() >= 3 && ok.len() < 20, "{j}");
    assert!(
        tasks
            .iter()
            .all(|t| t["state"] == "succeeded" || t["state"] == "cancelled"),
        "{j}"
    );
    // Only the VMs whose tasks finished exist; no stray disk.
    tokio::time::sleep(Duration::from_millis(800)).await; // a cancelled qemu-img wrapper finishing its sleep
    let mut names: Vec<String> = all_vms(&d)
        .await
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = ok.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(vm_dirs(&d).len(), want.len(), "{:?}", vm_dirs(&d));
    // A finished job cannot be cancelled.
    let (code, e) = d.req("DELETE", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(
        (code, e["error"]["status"].as_str()),
        (409, Some("RESOURCE_CONFLICT")),
        "{e}"
    );
}

#[tokio::test]
async fn sigkill_during_a_bulk_create_leaves_whole_vms_or_nothing() {
    let (_w, qemu_img) = slow_qemu_img("0.3");
    let mut d = Daemon::start_with(&["--qemu-img", &qemu_img, "--bulk-parallelism", "2"]).await;
    let items: Vec<Value> = (0..12)
        .map(|i| json!({"name": format!("k-{i:02}"), "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}))
        .collect();
    let (code, acc) = d
        .req("POST", "/api/v1/vms", Some(Value::Array(items)))
        .await;
    assert_eq!(code, 202);
    let id = acc["job"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = d.req("GET", &format!("/api/v1/jobs/{id}"), None).await;
        if j["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "succeeded")
            .count()
            >= 2
        {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.extra_args.clear();
    d.spawn().await;
    tokio::time::sleep(Duration::from_millis(800)).await; // orphaned wrappers finish and fail
    let (_, j) = d.req("GET", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("interrupted"));
    let vms = all_vms(&d).await;
    assert!(vms.len() >= 2 && vms.len() < 12, "{}", vms.len());
    for vm in &vms {
        assert_eq!(vm["status"], "stopped", "{vm}");
        let disk = std::path::Path::new(vm["disk_file"].as_str().unwrap());
        assert!(disk.exists(), "{vm}");
    }
    let mut dirs = vm_dirs(&d);
    dirs.sort();
    let mut ids: Vec<String> = vms
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(dirs, ids, "every directory belongs to a whole VM");
    // The whole VMs work.
    assert_eq!(
        d.req("DELETE", &format!("/api/v1/vms/{}", ids[0]), None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn idempotency_keys() {
    let (_w, qemu_img) = slow_qemu_img("1");
    let mut d = Daemon::start_with(&["--qemu-img", &qemu_img]).await;
    let body = json!({"name": "once", "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}).to_string();
    let key = [("idempotency-key", "create-once-1")];
    // A retry while the first still runs gets the same job.
    let first = {
        let body = body.clone();
        let sock = d.socket.clone();
        tokio::spawn(async move {
            let d2 = common::Client::new(sock);
            d2.raw(
                "POST",
                "/api/v1/vms",
                Some(body),
                &[("idempotency-key", "create-once-1")],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, headers, retry) = d
        .raw("POST", "/api/v1/vms", Some(body.clone()), &key)
        .await
        .unwrap();
    let retry: Value = serde_json::from_slice(&retry).unwrap();
    assert_eq!(code, 202, "{retry}");
    assert_eq!(headers["idempotent-replayed"], "true");
    let (code, _, created) = first.await.unwrap().unwrap();
    let created: Value = serde_json::from_slice(&created).unwrap();
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["job_id"], retry["job"]["id"]);
    // A retry after it finished gets the same answer; nothing new is made.
    let (code, headers, again) = d
        .raw("POST", "/api/v1/vms", Some(body.clone()), &key)
        .await
        .unwrap();
    assert_eq!(code, 201);
    assert_eq!(headers["idempotent-replayed"], "true");
    let again: Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(again["id"], created["id"]);
    assert_eq!(all_vms(&d).await.len(), 1);
    // Another body with the same key: 422.
    let other = body.replace("once", "twice");
    let (code, _, e) = d
        .raw("POST", "/api/v1/vms", Some(other.clone()), &key)
        .await
        .unwrap();
    let e: Value = serde_json::from_slice(&e).unwrap();
    assert_eq!(
        (code, e["error"]["status"].as_str()),
        (422, Some("IDEMPOTENCY_MISMATCH")),
        "{e}"
    );
    // Keys survive a restart.
    d.kill(nix::sys::signal::Signal::SIGTERM);
    d.spawn().await;
    let (code, _, again) = d
        .raw("POST", "/api/v1/vms", Some(body), &key)
        .await
        .unwrap();
    let again: Value = serde_json::from_slice(&again).unwrap();
    assert_eq!((code, again["id"].clone()), (201, created["id"].clone()));
    assert_eq!(all_vms(&d).await.len(), 1);
    // DELETE with a key: the second is the first answer, not a 404.
    let del_key = [("idempotency-key", "del-1")];
    let (c1, _, b1) = d
        .raw("DELETE", "/api/v1/vms/once", None, &del_key)
        .await
        .unwrap();
    let (c2, _, b2) = d
        .raw("DELETE", "/api/v1/vms/once", None, &del_key)
        .await
        .unwrap();
    assert_eq!((c1, c2), (200, 200));
    assert_eq!(b1, b2);
    // A bad key is 400.
    let (code, _, _) = d
        .raw(
            "POST",
            "/api/v1/vms",
            Some(other),
            &[("idempotency-key", "")],
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
}

#[tokio::test]
async fn paging_250_vms_while_others_come_and_go() {
    let d = std::sync::Arc::new(Daemon::start().await);
    for batch in 0..3 {
        let n = if batch < 2 { 100 } else { 50 };
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("p-{:03}", batch * 100 + i), "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"}))
            .collect();
        let (code, acc) = d
            .req("POST", "/api/v1/vms", Some(Value::Array(items)))
            .await;
        assert_eq!(code, 202);
        assert_eq!(wait_job(&d, &acc["job"]).await["state"], "succeeded");
    }
    for i in 0..20 {
        let body = json!({"name": format!("churn-{i:03}"), "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"});
        assert_eq!(d.req("POST", "/api/v1/vms", Some(body)).await.0, 201);
    }
    // Another client creates and deletes churn VMs all through the walk.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (d, stop) = (d.clone(), stop.clone());
        tokio::spawn(async move {
            let mut queue: std::collections::VecDeque<usize> = (0..20).collect();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let old = queue.pop_front().unwrap();
                let path = format!("/api/v1/vms/churn-{old:03}");
                assert_eq!(d.req("DELETE", &path, None).await.0, 200);
                let new = 100 + i;
                let body = json!({"name": format!("churn-{new:03}"), "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "base.qcow2"});
                assert_eq!(d.req("POST", "/api/v1/vms", Some(body)).await.0, 201);
                queue.push_back(new);
                i += 1;
            }
            i
        })
    };
    for sort in ["created_at", "name", "-created_at"] {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(t) => format!("/api/v1/vms?limit=40&sort={sort}&page_token={t}"),
                None => format!("/api/v1/vms?limit=40&sort={sort}"),
            };
            let (code, page) = d.req("GET", &path, None).await;
            assert_eq!(code, 200, "{page}");
            assert!(page["vms"].as_array().unwrap().len() <= 40);
            for vm in page["vms"].as_array().unwrap() {
                *seen
                    .entry(vm["name"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        for i in 0..250 {
            assert_eq!(
                seen.get(&format!("p-{i:03}")),
                Some(&1),
                "p-{i:03} with sort {sort}"
            );
        }
        assert!(seen.values().all(|n| *n == 1), "nothing repeats ({sort})");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.await.unwrap();
    assert!(
        rounds > 3,
        "the other client really churned ({rounds} rounds)"
    );
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/vms?limit=200&page_token={t}"),
            None => "/api/v1/vms?limit=200".to_owned(),
        };
        let (_, page) = d.req("GET", &path, None).await;
        names.extend(
            page["vms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned()),
        );
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    let churned: Vec<&String> = names.iter().filter(|n| n.starts_with("churn-")).collect();
    assert_eq!(churned.len(), 20, "{rounds} rounds: {churned:?}");
    assert_eq!(names.len(), 250 + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_and_the_event_stream() {
    let _slot = guest_slot().await;
    let d = Daemon::start_with(&["--stop-timeout", "2"]).await;
    let vm = d.create_fixture_vm("watched", "libgo.ignore_acpi=1").await;
    let id = vm["id"].as_str().unwrap().to_owned();

    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(
        "ws://localhost/api/v1/events?types=vm.&resource=watched",
        stream,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);

    // Async start: 202 at once, the job finishes.
    let (code, headers, body) = d
        .raw(
            "POST",
            &format!("/api/v1/vms/{id}/start"),
            None,
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    let acc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 202, "{acc}");
    assert_eq!(acc["vm"]["id"], id.as_str());
    let loc = headers["location"].to_str().unwrap().to_owned();
    let (_, job) = d.req("GET", &format!("{loc}?wait=60"), None).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["type"], "vm.start");

    // Cancel a stop that waits on a guest ignoring the button: back to running.
    let (code, _, body) = d
        .raw(
            "POST",
            &format!("/api/v1/vms/{id}/stop"),
            Some(json!({"timeout": 120}).to_string()),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    assert_eq!(code, 202);
    let stop_job: Value = serde_json::from_slice(&body).unwrap();
    let stop_id = stop_job["job"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let (code, cancelled) = d
        .req("DELETE", &format!("/api/v1/jobs/{stop_id}"), None)
        .await;
    assert_eq!(
        (code, cancelled["state"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let (_, v) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(v["status"], "running");

    // Forced off; the stream saw it all, in order.
    assert_eq!(
        d.req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
            .await
            .0,
        200
    );
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kinds.ends_with(&["vm.stopped".to_owned()])
        || kinds.iter().filter(|k| *k == "vm.stopped").count() < 1
    {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("events")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let ev: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(ev["id"], id.as_str());
            kinds.push(ev["type"].as_str().unwrap().to_owned());
        }
    }
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} missing in {kinds:?}"))
    };
    assert!(pos("vm.starting") < pos("vm.started"), "{kinds:?}");
    assert!(pos("vm.started") < pos("vm.stopping"), "{kinds:?}");
    assert!(pos("vm.stopping") < pos("vm.stopped"), "{kinds:?}");
    let _ = ws.close(None).await;

    // PATCH with a desired status drives the same lifecycle.
    for (want, status) in [
        ("running", "running"),
        ("paused", "paused"),
        ("running", "running"),
        ("stopped", "stopped"),
    ] {
        let (code, r) = d
            .req(
                "PATCH",
                &format!("/api/v1/vms/{id}"),
                Some(json!({"status": want})),
            )
            .await;
        assert_eq!((code, r["vm_status"].as_str()), (200, Some(status)), "{r}");
    }

    // Plain GET without an upgrade is a clear 400.
    assert_eq!(d.req("GET", "/api/v1/events", None).await.0, 400);
}

#[tokio::test]
async fn a_slow_event_client_is_dropped_with_a_reason() {
    let d = Daemon::start().await;
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/api/v1/events", stream)
        .await
        .unwrap();
    assert_eq!(
        d.req(
            "POST",
            "/api/v1/templates",
            Some(json!({"name": "noisy", "vcpus": 1}))
        )
        .await
        .0,
        201
    );
    // Flood events without reading them.
    for i in 0..1500 {
        let (code, _) = d
            .req(
                "PATCH",
                "/api/v1/templates/noisy",
                Some(json!({"vcpus": 1 + (i % 4)})),
            )
            .await;
        assert_eq!(code, 200);
    }
    // Reading now: queued events, then a close frame saying why.
    let mut close = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while close.is_none() {
        match tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("a close frame")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => close = Some(f),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
    let frame = close.unwrap().expect("a close reason");
    assert_eq!(u16::from(frame.code), 1008);
    assert!(frame.reason.contains("too slow"), "{}", frame.reason);
    assert_eq!(d.req("GET", "/health", None).await.0, 200);
}

#[tokio::test]
async fn full_copy_reports_progress_and_cancel_removes_the_half_copy() {
    let d = Daemon::start().await;
    // A 300 MiB base with real data, so the copy takes a moment.
    let raw = d.image_dir().join("big.raw");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 300M /dev/urandom > {}", raw.display()))
        .status()
        .unwrap();
    assert!(out.success());
    let body = json!({"name": "copy", "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "big.raw", "clone": "full"});
    let (code, _, acc) = d
        .raw(
            "POST",
            "/api/v1/vms",
            Some(body.to_string()),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    assert_eq!(code, 202);
    let acc: Value = serde_json::from_slice(&acc).unwrap();
    assert_eq!(acc["vm"]["status"], "creating");
    let id = acc["job"]["id"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    loop {
        let (_, j) = d.req("GET", &format!("/api/v1/jobs/{id}"), None).await;
        seen.push(j["progress_percent"].as_u64().unwrap());
        if j["finished_at"].is_string() {
            assert_eq!(j["state"], "succeeded", "{j}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen.iter().any(|p| *p > 10 && *p < 90),
        "qemu-img's progress shows: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {seen:?}"
    );

    // The same, cancelled half-way: no VM, no file.
    let body = json!({"name": "copy2", "vcpus": 1, "memory": 64, "disk_size": 1, "base_image": "big.raw", "clone": "full"});
    let (_, _, acc) = d
        .raw(
            "POST",
            "/api/v1/vms",
            Some(body.to_string()),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    let acc: Value = serde_json::from_slice(&acc).unwrap();
    let id = acc["job"]["id"].as_str().unwrap().to_owned();
    let vm_id = acc["vm"]["id"].as_str().unwrap().to_owned();
    loop {
        let (_, j) = d.req("GET", &format!("/api/v1/jobs/{id}"), None).await;
        if j["progress_percent"].as_u64().unwrap() > 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, j) = d.req("DELETE", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!((code, j["state"].as_str()), (200, Some("cancelled")), "{j}");
    assert_eq!(
        d.req("GET", &format!("/api/v1/vms/{vm_id}"), None).await.0,
        404
    );
    assert!(!d.state_dir().join("vms").join(&vm_id).exists());
    // Job lists filter by state and type, newest first, paged.
    let (_, cancelled) = d.req("GET", "/api/v1/jobs?state=cancelled", None).await;
    assert_eq!(cancelled["total_count"], 1);
    let (_, creates) = d
        .req("GET", "/api/v1/jobs?type=vm.create&limit=1", None)
        .await;
    assert_eq!(creates["total_count"], 2);
    assert_eq!(creates["jobs"][0]["id"], id.as_str());
    let tok = creates["next_page_token"].as_str().unwrap();
    let (_, next) = d
        .req(
            "GET",
            &format!("/api/v1/jobs?type=vm.create&limit=1&page_token={tok}"),
            None,
        )
        .await;
    assert_eq!(next["jobs"][0]["state"], "succeeded");
    assert!(next.get("next_page_token").is_none());
}
