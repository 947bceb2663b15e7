//! VM groups: properties, members, create-in-group, start and stop as one
//! job with one task per VM, delete with and without the VMs.

mod common;

use common::{guest_slot, Daemon, BOOT, READY};
use serde_json::{json, Value};

async fn wait_job(d: &Daemon, id: &str) -> Value {
    let (code, job) = d
        .req("GET", &format!("/api/v1/jobs/{id}?wait=120"), None)
        .await;
    assert_eq!(code, 200, "{job}");
    assert_ne!(job["state"], "running", "{job}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_hold_properties_and_members() {
    let d = Daemon::start().await;
    let a = d.create_fixture_vm("ga", "").await;
    let b = d.create_fixture_vm("gb", "").await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    let (code, g) = d
        .req(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "web", "description": "front", "tags": ["prod"], "vms": ["ga", b_id]})),
        )
        .await;
    assert_eq!(code, 201, "{g}");
    assert_eq!(g["vms"], json!([a_id, b_id]));
    assert_eq!(g["description"], "front");

    // Refusals: a bad name, a name taken, an unknown VM, an unknown field.
    for (body, want) in [
        (json!({"name": "Bad_Name"}), 400),
        (json!({"name": "web"}), 409),
        (json!({"name": "other", "vms": ["nope"]}), 404),
        (json!({"name": "other", "colour": "red"}), 400),
        (
            json!({"name": "other", "description": "x".repeat(1025)}),
            400,
        ),
    ] {
        let (code, r) = d.req("POST", "/api/v1/groups", Some(body)).await;
        assert_eq!(code, want, "{r}");
    }
    let (code, _) = d.req("GET", "/api/v1/groups/nope", None).await;
    assert_eq!(code, 404);

    let (code, list) = d.req("GET", "/api/v1/groups?tag=prod", None).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["total_count"], 1);

    // Members, summarized with a link.
    let (code, m) = d.req("GET", "/api/v1/groups/web/vms", None).await;
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["vms"][0]["name"], "ga");
    assert_eq!(m["vms"][0]["status"], "stopped");
    assert_eq!(m["vms"][0]["link"], format!("/api/v1/vms/{a_id}"));

    // PUT changes properties only.
    let (code, g) = d
        .req(
            "PUT",
            "/api/v1/groups/web",
            Some(json!({"description": "front end", "vms": ["gb"]})),
        )
        .await;
    assert_eq!(code, 200, "{g}");
    assert_eq!(g["vms"], json!([b_id]));
    assert_eq!(g["tags"], json!(["prod"]));
    let (code, r) = d
        .req("PUT", "/api/v1/groups/web", Some(json!({"vms": ["ghost"]})))
        .await;
    assert_eq!(code, 404, "{r}");

    // A VM deleted on its own leaves its groups.
    let (code, r) = d.req("DELETE", &format!("/api/v1/vms/{b_id}"), None).await;
    assert_eq!(code, 200, "{r}");
    let (_, g) = d.req("GET", "/api/v1/groups/web", None).await;
    assert_eq!(g["vms"], json!([]));

    // Create in a group, from a template.
    let (code, t) = d
        .req(
            "POST",
            "/api/v1/templates",
            Some(
                json!({"name": "small", "vcpus": 1, "memory": 128, "disk_size": 1,
                "base_image": "base.qcow2"}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/groups/web/vms",
            Some(json!({"name": "gc", "template": "small"})),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    assert_eq!(vm["template"], "small");
    let (_, m) = d.req("GET", "/api/v1/groups/web/vms", None).await;
    assert_eq!(m["vms"][0]["name"], "gc");
    let (code, _) = d
        .req(
            "POST",
            "/api/v1/groups/nope/vms",
            Some(json!({"name": "gd", "template": "small"})),
        )
        .await;
    assert_eq!(code, 404);
    // An empty group has nothing to start.
    let (code, _) = d
        .req("POST", "/api/v1/groups", Some(json!({"name": "empty"})))
        .await;
    assert_eq!(code, 201);
    let (code, r) = d.req("POST", "/api/v1/groups/empty/start", None).await;
    assert_eq!(code, 409, "{r}");

    // Delete without the VMs: they stay.
    let (code, r) = d.req("DELETE", "/api/v1/groups/web", None).await;
    assert_eq!(code, 200, "{r}");
    let (code, _) = d.req("GET", "/api/v1/vms/gc", None).await;
    assert_eq!(code, 200);
    let (code, _) = d.req("GET", "/api/v1/groups/web", None).await;
    assert_eq!(code, 404);

    // Delete with them: a job, one task per VM.
    let (code, _) = d
        .req(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "doomed", "vms": ["ga", "gc"]})),
        )
        .await;
    assert_eq!(code, 201);
    let (code, r) = d
        .req("DELETE", "/api/v1/groups/doomed?delete_vms=maybe", None)
        .await;
    assert_eq!(code, 400, "{r}");
    let (code, r) = d
        .req("DELETE", "/api/v1/groups/doomed?delete_vms=true", None)
        .await;
    assert_eq!(code, 202, "{r}");
    let job = wait_job(&d, r["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["type"], "group.delete");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["tasks"].as_array().unwrap().len(), 2);
    for name in ["ga", "gc"] {
        let (code, _) = d.req("GET", &format!("/api/v1/vms/{name}"), None).await;
        assert_eq!(code, 404, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_starts_and_stops_as_one_job_and_one_failure_stays_its_own() {
    let _slot = guest_slot().await;
    let _slot2 = guest_slot().await;
    let d = Daemon::start_with_env(&[], &[("LIBGO_TEST_FAIL_STEP", "gbad=fail-after-spawn")]).await;
    let mut ids = Vec::new();
    for name in ["g1", "g2"] {
        ids.push(
            d.create_fixture_vm(name, "").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (code, g) = d
        .req(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "pair", "vms": ["g1", "g2"]})),
        )
        .await;
    assert_eq!(code, 201, "{g}");

    // Synchronous: 200 with the finished job.
    let (code, job) = d.req("POST", "/api/v1/groups/pair/start", None).await;
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["type"], "group.start");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["tasks"].as_array().unwrap().len(), 2);
    for id in &ids {
        d.wait_marker(id, READY, 1, BOOT).await;
    }
    let (_, m) = d.req("GET", "/api/v1/groups/pair/vms", None).await;
    assert!(
        m["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["status"] == "running"),
        "{m}"
    );

    // Asynchronous stop: 202, then the job.
    let (code, _, body) = d
        .raw(
            "POST",
            "/api/v1/groups/pair/stop",
            Some(json!({"timeout": 60}).to_string()),
            &[
                ("Prefer", "respond-async"),
                ("Content-Type", "application/json"),
            ],
        )
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 202, "{r}");
    let job = wait_job(&d, r["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    for id in &ids {
        d.wait_marker(id, "LIBGO-POWERDOWN", 1, BOOT).await;
    }

    // One member whose start fails: its task fails, the other starts.
    d.create_fixture_vm("gbad", "").await;
    let (code, _) = d
        .req(
            "PUT",
            "/api/v1/groups/pair",
            Some(json!({"vms": ["gbad", "g1"]})),
        )
        .await;
    assert_eq!(code, 200);
    let (code, job) = d.req("POST", "/api/v1/groups/pair/start", None).await;
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"], "1 of 2 tasks failed", "{job}");
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(tasks[0]["description"], "gbad");
    assert_eq!(tasks[0]["state"], "failed", "{job}");
    assert_eq!(tasks[1]["state"], "succeeded", "{job}");
    d.wait_marker(&ids[0], READY, 2, BOOT).await;
    let (_, bad) = d.req("GET", "/api/v1/vms/gbad", None).await;
    assert_ne!(bad["status"], "running", "{bad}");
    let (code, job) = d
        .req(
            "POST",
            "/api/v1/groups/pair/stop",
            Some(json!({"timeout": 60})),
        )
        .await;
    assert_eq!(code, 200, "{job}");
}
