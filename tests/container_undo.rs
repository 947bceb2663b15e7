//! A container create that fails at any of its steps leaves nothing behind:
//! no container in the engine, no row in the state database, the job failed
//! (or cancelled) and only ended once the clean-up was done, the container
//! in no listing. Real failures where the engine can be made to fail (a bind
//! source that does not exist, a name already taken, a command missing from
//! the image, a host port already bound); the daemon's testing knob
//! `LIBGO_TEST_FAIL_STEP` for the points between steps that nothing real
//! fails on demand (see src/engine/faults.rs).
//! Needs dockerd on /var/run/docker.sock (scripts/test.sh starts one).

mod common;

use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

const IMAGE: &str = "libgo-test/busybox:undo";

/// The knob's rules: only creates of these names go wrong, so every daemon
/// of this test binary can carry them.
const FAULTS: &str = "undo-fail-created=fail-after-create,undo-fail-started=fail-after-start,\
                      undo-cancel-created=cancel-after-create,undo-cancel-started=cancel-after-start,\
                      undo-fail-adopt=fail-after-adopt";

/// A daemon with the knob set (once for the whole process, before any
/// daemon is spawned) and the test image in the engine.
async fn daemon() -> Daemon {
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        std::env::set_var("LIBGO_TEST_FAIL_STEP", FAULTS);
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("rootfs.tar");
        std::fs::write(&tar, common::busybox_rootfs_tar(&["sh", "sleep", "true"])).unwrap();
        let out = Command::new("docker")
            .arg("import")
            .arg(&tar)
            .arg(IMAGE)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    Daemon::start().await
}

/// Tests that use the shared engine hold this lock shared (the test that
/// stops and starts the engine holds it exclusively).
fn engine_lock() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/libgo-test-docker.lock")
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// Removes containers a previous, interrupted run may have left.
fn leftovers(names: &[&str]) {
    for n in names {
        let _ = Command::new("docker").args(["rm", "-f", n]).output();
    }
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success(), text)
}

/// The engine ids of the containers carrying libgo id `id`, stopped or not.
fn labelled(id: &str) -> String {
    let (ok, ids) = docker(&[
        "ps",
        "-a",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=io.libgo.id={id}"),
    ]);
    assert!(ok);
    ids
}

fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn create_body(name: &str, extra: Value) -> Value {
    let mut body =
        json!({"name": name, "image": IMAGE, "command": ["sleep", "300"], "start": true});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// The finished `container.create` job of `name` (a synchronous answer
/// comes only after its job is recorded as finished).
async fn create_job(d: &Daemon, name: &str) -> Value {
    let (code, jobs) = d
        .req("GET", "/api/v1/jobs?type=container.create&limit=200", None)
        .await;
    assert_eq!(code, 200, "{jobs}");
    jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["tasks"][0]["description"] == name)
        .unwrap_or_else(|| panic!("no create job for {name}: {jobs}"))
        .clone()
}

/// Checks the API's answer to a failed create: the status and the reason.
fn assert_error(name: &str, (code, body): &(u16, Value), want: u16, says: &str) {
    assert_eq!(*code, want, "{name}: {body}");
    assert_eq!(body["error"]["code"], want, "{name}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{name}: {says:?} not in {body}");
}

/// Everything a failed create must leave: `job` ended in `state` with the
/// clean-up logged; the container it made, if it made one, is gone from the
/// engine; none carries its id; no listing shows it; no row of it remains.
async fn assert_undone(d: &Daemon, name: &str, job: &Value, state: &str) {
    assert_eq!(job["state"], state, "{name}: {job}");
    assert!(job["finished_at"].is_string(), "{name}: {job}");
    assert!(job["error"].is_string(), "{name}: {job}");
    let id = job["target"]
        .as_str()
        .and_then(|t| t.strip_prefix("/api/v1/containers/"))
        .unwrap_or_else(|| panic!("{name}: no container target: {job}"))
        .to_owned();
    let log: Vec<&str> = job["tasks"][0]["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .map(|l| l.split_once(' ').map_or(l, |(_at, line)| line))
        .collect();
    assert!(
        log.iter().any(|l| l.starts_with("undoing the create")),
        "{name}: {log:?}"
    );
    // When the engine made the container, that very container is gone (the
    // job reports it finished only after the removal).
    if let Some(engine_id) = log.iter().find_map(|l| l.strip_prefix("created ")) {
        let (exists, _) = docker(&["inspect", "--type", "container", engine_id]);
        assert!(!exists, "{name}: container {engine_id} is still there");
    }
    assert_eq!(labelled(&id), "", "{name}: a container still carries {id}");

    let (code, e) = d
        .req("GET", &format!("/api/v1/containers/{id}"), None)
        .await;
    assert_eq!(code, 404, "{name}: {e}");
    for path in ["/api/v1/containers", "/api/v1/containers?all=true"] {
        let (code, list) = d.req("GET", path, None).await;
        assert_eq!(code, 200, "{list}");
        assert!(
            !list["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id.as_str()),
            "{name}: {path} lists it: {list}"
        );
    }
    let (_, stats) = d
        .req("GET", &format!("/api/v1/containers/{id}/stats"), None)
        .await;
    assert_eq!(stats["error"]["code"], 404, "{name}: {stats}");

    let db = rusqlite::Connection::open(d.state_dir().join("libgo.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM adopted"), 0, "{name}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE state IN ('running', 'queued')"
        ),
        0,
        "{name}: a job is still running"
    );
    let stored: String = db
        .query_row(
            "SELECT state FROM jobs WHERE id = ?1",
            [job["id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, state, "{name}: the stored job");
}

/// Creates `body` with `Prefer: respond-async` and waits for its job; the
/// job's end is the moment the clean-up must be complete.
async fn create_async(d: &Daemon, body: &Value) -> Value {
    let (code, _, accepted) = d
        .raw(
            "POST",
            "/api/v1/containers",
            Some(body.to_string()),
            &[("prefer", "respond-async")],
        )
        .await
        .unwrap();
    let accepted: Value = serde_json::from_slice(&accepted).unwrap();
    assert_eq!(code, 202, "{accepted}");
    let job_id = accepted["job"]["id"].as_str().unwrap();
    let (code, job) = d
        .req("GET", &format!("/api/v1/jobs/{job_id}?wait=120"), None)
        .await;
    assert_eq!(code, 200, "{job}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_the_engine_refuses_leaves_nothing_and_touches_nothing_else() {
    let foreign = format!("undo-taken-{}", std::process::id());
    leftovers(&["undo-bad-mount", &foreign]);
    let _engine = engine_lock();
    let d = daemon().await;

    // Step 1, the engine's create, fails for real: a bind source that does
    // not exist.
    let name = "undo-bad-mount";
    let r = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(create_body(
                name,
                json!({"mounts": [{"source": "/no/such/libgo/dir", "target": "/data"}]}),
            )),
        )
        .await;
    // A missing host path is a missing resource: 404.
    assert_error(name, &r, 404, "bind source path does not exist");
    assert_undone(&d, name, &create_job(&d, name).await, "failed").await;
    let (exists, _) = docker(&["inspect", "--type", "container", name]);
    assert!(!exists);

    // A name the engine already has: refused, and the undo does not remove
    // the container that holds the name (libgo did not make it).
    let (ok, holder) = docker(&["create", "--name", &foreign, IMAGE, "sleep", "300"]);
    assert!(ok);
    let r = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(create_body(&foreign, json!({}))),
        )
        .await;
    assert_error(&foreign, &r, 409, "already in use");
    assert_undone(&d, &foreign, &create_job(&d, &foreign).await, "failed").await;
    let (still, _) = docker(&["inspect", "--type", "container", &holder]);
    assert!(still, "the container holding the name is untouched");
    leftovers(&[&foreign]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_removes_the_container_it_made() {
    leftovers(&["undo-no-command", "undo-port-taken"]);
    let _engine = engine_lock();
    let d = daemon().await;

    // Step 2, the start, fails for real: the command is not in the image.
    let name = "undo-no-command";
    let r = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(create_body(name, json!({"command": ["/no/such/command"]}))),
        )
        .await;
    // A program the image does not hold meets the image's content: a 409,
    // like a start of an existing container (a valid request is never a 400).
    assert_error(name, &r, 409, "no such file or directory");
    let job = create_job(&d, name).await;
    assert_undone(&d, name, &job, "failed").await;

    // ... and again: the host port is already bound on 127.0.0.1. Asked
    // asynchronously, so the job's own end is what is checked.
    let name = "undo-port-taken";
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let job = create_async(
        &d,
        &create_body(
            name,
            json!({"ports": [{"container_port": 80, "host_port": port}]}),
        ),
    )
    .await;
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("address already in use"),
        "{job}"
    );
    assert_undone(&d, name, &job, "failed").await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_each_step_is_undone() {
    leftovers(&["undo-fail-created", "undo-fail-started", "undo-control"]);
    let _engine = engine_lock();
    let d = daemon().await;

    // Right after the engine's create (the start never happens).
    let name = "undo-fail-created";
    let r = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(create_body(name, json!({}))),
        )
        .await;
    assert_error(name, &r, 500, "failure injected after the create step");
    assert_undone(&d, name, &create_job(&d, name).await, "failed").await;

    // Right after a good start: the running container is stopped and gone
    // by the time the job ends.
    let name = "undo-fail-started";
    let job = create_async(&d, &create_body(name, json!({}))).await;
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("failure injected after the start step"),
        "{job}"
    );
    assert_undone(&d, name, &job, "failed").await;

    // A name the knob does not list is created as usual.
    let (code, c) = d
        .req(
            "POST",
            "/api/v1/containers",
            Some(create_body("undo-control", json!({}))),
        )
        .await;
    assert_eq!((code, c["status"].as_str()), (201, Some("running")), "{c}");
    let (code, _) = d
        .req("DELETE", "/api/v1/containers/undo-control?force=true", None)
        .await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_each_step_is_undone() {
    leftovers(&["undo-cancel-created", "undo-cancel-started"]);
    let _engine = engine_lock();
    let d = daemon().await;
    for name in ["undo-cancel-created", "undo-cancel-started"] {
        let r = d
            .req(
                "POST",
                "/api/v1/containers",
                Some(create_body(name, json!({}))),
            )
            .await;
        assert_error(name, &r, 409, "was cancelled");
        assert_undone(&d, name, &create_job(&d, name).await, "cancelled").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_delete_of_an_adopted_container_forgets_it() {
    let name = format!("undo-adopted-{}", std::process::id());
    leftovers(&[&name]);
    let _engine = engine_lock();
    let d = daemon().await;
    let (ok, engine_id) = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "300"]);
    assert!(ok);
    let (code, a) = d
        .req("POST", &format!("/api/v1/containers/{name}/adopt"), None)
        .await;
    assert_eq!((code, a["managed"].as_bool()), (200, Some(true)), "{a}");
    let db = rusqlite::Connection::open(d.state_dir().join("libgo.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM adopted"), 1);
    let (code, r) = d
        .req("DELETE", &format!("/api/v1/containers/{name}"), None)
        .await;
    assert_eq!(code, 409, "running: needs force: {r}");
    let (code, r) = d
        .req(
            "DELETE",
            &format!("/api/v1/containers/{name}?force=true"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let (exists, _) = docker(&["inspect", "--type", "container", &engine_id]);
    assert!(!exists);
    assert_eq!(count(&db, "SELECT count(*) FROM adopted"), 0);
    let (code, e) = d
        .req("GET", &format!("/api/v1/containers/{name}"), None)
        .await;
    assert_eq!(code, 404, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adoption_that_fails_after_its_row_forgets_the_row() {
    let name = "undo-fail-adopt";
    leftovers(&[name]);
    let _engine = engine_lock();
    let d = daemon().await;
    let (ok, engine_id) = docker(&["run", "-d", "--name", name, IMAGE, "sleep", "300"]);
    assert!(ok);
    let r = d
        .req("POST", &format!("/api/v1/containers/{name}/adopt"), None)
        .await;
    assert_error(name, &r, 500, "failure injected after the adopt step");
    let db = rusqlite::Connection::open(d.state_dir().join("libgo.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM adopted"),
        0,
        "the row went again"
    );
    let (code, c) = d
        .req("GET", &format!("/api/v1/containers/{name}"), None)
        .await;
    assert_eq!((code, c["managed"].as_bool()), (200, Some(false)), "{c}");
    let (_, mine) = d.req("GET", "/api/v1/containers", None).await;
    assert!(
        !mine["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name),
        "{mine}"
    );
    // The undo is of libgo's record only: the container itself stays.
    let (running, state) = docker(&["inspect", "-f", "{{.State.Status}}", &engine_id]);
    assert!(running && state == "running", "{state}");
    leftovers(&[name]);
}
