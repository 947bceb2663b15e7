//! cloud-init (NoCloud) against the fixture guest, which reads its `cidata`
//! seed at boot the way cloud-init would (fixtures/README.md).

mod common;

use std::time::Duration;

use common::{fixture_cmdline, guest_slot, Daemon, BOOT, READY};
use serde_json::{json, Value};

async fn create(d: &Daemon, name: &str, cloud_init: Value) -> String {
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": name, "vcpus": 1, "memory": 128, "disk_size": 1,
                "base_image": "base.qcow2",
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": fixture_cmdline()},
                "cloud_init": cloud_init,
            })),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    assert_eq!(vm["cloud_init"], true);
    vm["id"].as_str().unwrap().to_owned()
}

async fn action(d: &Daemon, id: &str, action: &str) {
    let (code, r) = d
        .req("POST", &format!("/api/v1/vms/{id}/{action}"), None)
        .await;
    assert_eq!(code, 200, "{action}: {r}");
}

const SCRIPT: &str = "#!/bin/sh\necho seeded > /tmp/seeded\necho SCRIPT-RAN-ONE\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_reads_its_seed_and_a_patch_rewrites_it() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let id = create(&d, "seeded-vm", json!({"user_data": SCRIPT})).await;
    action(&d, &id, "start").await;
    d.wait_marker(&id, READY, 1, BOOT).await;
    assert_eq!(
        d.wait_marker(&id, "LIBGO-HOSTNAME", 1, BOOT).await,
        "LIBGO-HOSTNAME seeded-vm"
    );
    d.wait_marker(&id, "SCRIPT-RAN-ONE", 1, BOOT).await;
    assert_eq!(
        d.wait_marker(&id, "LIBGO-USERDATA", 1, BOOT).await,
        "LIBGO-USERDATA 0"
    );
    let (rc, out) = d
        .guest_cmd(
            &id,
            "cat /etc/hostname; hostname; cat /tmp/seeded",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(rc, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["seeded-vm", "seeded-vm", "seeded"], "{out}");

    // A change while it runs: rewritten now, read at the next start.
    let script2 = "#!/bin/sh\necho SCRIPT-RAN-TWO\nexit 3\n";
    let (code, r) = d
        .req(
            "PATCH",
            &format!("/api/v1/vms/{id}"),
            Some(json!({"cloud_init": {"user_data": script2}})),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["applies"], "next_start", "{r}");
    assert_eq!(
        r["changes"],
        json!([{"field": "cloud_init", "applies": "next_start"}])
    );
    action(&d, &id, "stop").await;

    // And on the stopped VM: the seed is regenerated before the start.
    let script3 = "#!/bin/sh\necho SCRIPT-RAN-THREE\n";
    let (code, r) = d
        .req(
            "PATCH",
            &format!("/api/v1/vms/{id}"),
            Some(json!({"cloud_init": {"user_data": script3}})),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    action(&d, &id, "start").await;
    d.wait_marker(&id, READY, 2, BOOT).await;
    d.wait_marker(&id, "SCRIPT-RAN-THREE", 1, BOOT).await;
    assert_eq!(
        d.wait_marker(&id, "LIBGO-HOSTNAME", 2, BOOT).await,
        "LIBGO-HOSTNAME seeded-vm"
    );
    assert_eq!(d.marker_count(&id, "SCRIPT-RAN-TWO"), 0);

    // null removes the seed: no new markers at the next boot.
    let (code, r) = d
        .req(
            "PATCH",
            &format!("/api/v1/vms/{id}"),
            Some(json!({"cloud_init": null})),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    action(&d, &id, "stop").await;
    action(&d, &id, "start").await;
    d.wait_marker(&id, READY, 3, BOOT).await;
    let text = d.console_text(&id);
    let third = text.rsplit("LIBGO-DISK").next().unwrap();
    assert!(!third.contains("LIBGO-HOSTNAME"), "{text}");
    let (_, vm) = d.req("GET", &format!("/api/v1/vms/{id}"), None).await;
    assert_eq!(vm["cloud_init"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_data_and_templates_shape_the_seed() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    // A template's cloud_init; the request's meta_data wins over the
    // defaults, the template's user_data is kept.
    let (code, t) = d
        .req(
            "POST",
            "/api/v1/templates",
            Some(json!({"name": "seedy", "cloud_init": {
                "user_data": "#!/bin/sh\necho FROM-TEMPLATE\n",
                "network_config": {"version": 2, "ethernets": {}}
            }})),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "meta-vm", "template": "seedy", "vcpus": 1, "memory": 128,
                "disk_size": 1, "base_image": "base.qcow2",
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": fixture_cmdline()},
                "cloud_init": {"meta_data": {"local-hostname": "chosen-name", "zone": "a"}},
            })),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    action(&d, &id, "start").await;
    d.wait_marker(&id, READY, 1, BOOT).await;
    assert_eq!(
        d.wait_marker(&id, "LIBGO-HOSTNAME", 1, BOOT).await,
        "LIBGO-HOSTNAME chosen-name"
    );
    d.wait_marker(&id, "FROM-TEMPLATE", 1, BOOT).await;
    let (rc, out) = d
        .guest_cmd(
            &id,
            "hostname; cat /run/cidata/meta-data; cat /run/cidata/network-config",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(rc, 0, "{out}");
    assert!(out.starts_with("chosen-name"), "{out}");
    assert!(out.contains(&format!("instance-id: \"{id}\"")), "{out}");
    assert!(out.contains("zone: \"a\""), "{out}");
    assert!(out.contains("\"version\":2"), "{out}");

    // The short form still works, and a bad type is 400.
    let (code, r) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "x", "vcpus": 1, "memory": 128, "disk_size": 1,
                "base_image": "base.qcow2", "cloud_init": {"network_config": 3}}),
            ),
        )
        .await;
    assert_eq!(code, 400, "{r}");
    let (code, r) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "short", "vcpus": 1, "memory": 128, "disk_size": 1,
                "base_image": "base.qcow2", "user_data": "#cloud-config\n"}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{r}");
    assert_eq!(r["cloud_init"], true);
}
