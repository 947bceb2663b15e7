//! The host's iSCSI layer against a real target (a private tgtd on
//! loopback): discovery, LUNs and their sizes, QEMU's iscsi:// driver
//! reading and writing a LUN, and quick, clear errors when nothing answers.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tgt::{Backing, Tgt};
use libgo::host::iscsi::{self, IscsiError, Lun, Portal};

const MIB: u64 = 1 << 20;
/// A generous limit: the calls that must fail fast are timed separately.
const LIMIT: Duration = Duration::from_secs(10);
/// How long a refused connection may take to become an error.
const FAST: Duration = Duration::from_secs(2);

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
}

fn qemu_io(image: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(image).output().expect("run qemu-io");
    assert!(out.status.success(), "qemu-io: {out:?}");
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_unreachable(e: &IscsiError, portal: &Portal, why: &str) {
    match e {
        IscsiError::Unreachable { portal: p, reason } => {
            assert_eq!(p, portal);
            assert!(
                reason.contains(why),
                "reason {reason:?} does not say {why:?}"
            );
        }
        e => panic!("expected Unreachable ({why}), got {e:?}"),
    }
}

#[tokio::test]
async fn discovery_finds_each_target_at_its_own_portal() {
    let a = Tgt::start(&[Backing::Size(8 * MIB)]);
    let b = Tgt::start(&[Backing::Size(8 * MIB)]);
    assert_ne!(a.portal(), b.portal());
    let t0 = Instant::now();
    let names = iscsi::discover(&a.portal(), LIMIT).await.unwrap();
    eprintln!("discover against a live target: {:?}", t0.elapsed());
    assert_eq!(names, [a.iqn()]);
    assert_eq!(
        iscsi::discover(&b.portal(), LIMIT).await.unwrap(),
        [b.iqn()]
    );
    // A host name works as well as an address.
    let by_name = Portal::parse(&format!("localhost:{}", a.addr().port())).unwrap();
    assert_eq!(iscsi::discover(&by_name, LIMIT).await.unwrap(), [a.iqn()]);
    assert_eq!(
        iscsi::luns(&by_name, a.iqn(), LIMIT).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn luns_are_the_disks_with_the_exact_sizes_of_their_files() {
    let sizes = [64 * MIB, 10 * MIB + 3 * 512];
    let t = Tgt::start(&sizes.map(Backing::Size));
    // A LUN of 4 KiB blocks at a number that leaves a gap.
    let big_blocks = tempfile::NamedTempFile::new().unwrap();
    big_blocks.as_file().set_len(12 * MIB).unwrap();
    t.tgtadm(&[
        "--lld",
        "iscsi",
        "--op",
        "new",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "5",
        "-b",
        big_blocks.path().to_str().unwrap(),
        "--blocksize",
        "4096",
    ]);

    let t0 = Instant::now();
    let luns = iscsi::luns(&t.portal(), t.iqn(), LIMIT).await.unwrap();
    eprintln!("luns (3 disks) against a live target: {:?}", t0.elapsed());
    let file_size = |lun| std::fs::metadata(t.lun_file(lun)).unwrap().len();
    let disk = |id, size, block_size| Lun {
        id,
        size,
        block_size,
        vendor: "IET".into(),
        product: "VIRTUAL-DISK".into(),
    };
    // No LUN 0: tgtd's controller is not a disk.
    assert_eq!(
        luns,
        [
            disk(1, file_size(1), 512),
            disk(2, file_size(2), 512),
            disk(5, 12 * MIB, 4096),
        ]
    );
    assert_eq!(file_size(1), 64 * MIB);
    assert_eq!(file_size(2), 10 * MIB + 1536);

    let e = iscsi::luns(&t.portal(), "iqn.2026-12.test.libgo:nobody", LIMIT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, IscsiError::NoSuchTarget { iqn, .. } if iqn == "iqn.2026-12.test.libgo:nobody"),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_target_without_disks_has_no_luns() {
    let t = Tgt::start(&[]);
    assert_eq!(
        iscsi::discover(&t.portal(), LIMIT).await.unwrap(),
        [t.iqn()]
    );
    assert_eq!(iscsi::luns(&t.portal(), t.iqn(), LIMIT).await.unwrap(), []);
}

#[tokio::test]
async fn qemu_reads_the_size_of_a_lun_through_its_url() {
    let t = Tgt::start(&[Backing::Size(8 * MIB), Backing::Size(24 * MIB)]);
    let url = iscsi::qemu_url(&t.portal(), t.iqn(), 2);
    assert_eq!(url, format!("iscsi://{}/{}/2", t.addr(), t.iqn()));
    let out = qemu_img(&["info", "--output=json", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"], 24 * MIB, "{info}");
}

#[tokio::test]
async fn ipv6_loopback_portal_end_to_end() {
    let t = Tgt::start_on(IpAddr::V6(Ipv6Addr::LOCALHOST), &[Backing::Size(16 * MIB)]);
    let portal = t.portal();
    assert_eq!(portal.host, "::1");
    assert_eq!(Portal::parse(&t.addr().to_string()).unwrap(), portal);
    assert_eq!(iscsi::discover(&portal, LIMIT).await.unwrap(), [t.iqn()]);
    let luns = iscsi::luns(&portal, t.iqn(), LIMIT).await.unwrap();
    assert_eq!(luns.len(), 1);
    assert_eq!(luns[0].size, 16 * MIB);
    let url = iscsi::qemu_url(&portal, t.iqn(), 1);
    assert!(url.starts_with("iscsi://[::1]:"), "{url}");
    let out = qemu_img(&["info", "--output=json", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"], 16 * MIB);
}

#[tokio::test]
async fn qemu_img_convert_writes_an_image_onto_a_lun() {
    let dir = tempfile::tempdir().unwrap();
    // The LUN starts full of 0xff, so zeros must really be written too.
    let lun_file = dir.path().join("lun.raw");
    std::fs::write(&lun_file, vec![0xffu8; (16 * MIB) as usize]).unwrap();
    let t = Tgt::start(&[Backing::File(lun_file.clone())]);
    let url = iscsi::qemu_url(&t.portal(), t.iqn(), 1);

    let src = dir.path().join("src.qcow2");
    let src_s = src.to_str().unwrap();
    let out = qemu_img(&["create", "-q", "-f", "qcow2", src_s, "16M"]);
    assert!(out.status.success(), "{}", text(&out));
    qemu_io(&src, &["write -P 0xab 1M 2M", "write -P 0x5a 9M 64k"]);

    // Before: they differ (so the comparison below can fail).
    let out = qemu_img(&["compare", src_s, &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let t0 = Instant::now();
    let out = qemu_img(&["convert", "-O", "raw", src_s, &url]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("qemu-img convert of 16 MiB onto a LUN: {:?}", t0.elapsed());

    let out = qemu_img(&["compare", src_s, &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Images are identical"),
        "{}",
        text(&out)
    );
    // What went over iSCSI is in the file behind the LUN.
    let out = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        src_s,
        lun_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // A LUN cannot grow: an image larger than the LUN is refused.
    let big = dir.path().join("big.qcow2");
    let big_s = big.to_str().unwrap();
    assert!(qemu_img(&["create", "-q", "-f", "qcow2", big_s, "32M"])
        .status
        .success());
    let out = qemu_img(&["convert", "-O", "raw", big_s, &url]);
    assert!(!out.status.success());
    assert!(text(&out).contains("Cannot grow"), "{}", text(&out));
}

#[tokio::test]
async fn a_stopped_target_is_unreachable_at_once_and_comes_back() {
    let mut t = Tgt::start(&[Backing::Size(8 * MIB)]);
    let portal = t.portal();
    assert_eq!(iscsi::luns(&portal, t.iqn(), LIMIT).await.unwrap().len(), 1);
    t.stop();
    assert!(!t.running());

    let t0 = Instant::now();
    let e = iscsi::discover(&portal, LIMIT).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("discover, target stopped: {took:?}: {e}");
    assert_unreachable(&e, &portal, "connection refused");
    assert!(took < FAST, "{took:?}");

    let t0 = Instant::now();
    let e = iscsi::luns(&portal, t.iqn(), LIMIT).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("luns, target stopped: {took:?}: {e}");
    assert_unreachable(&e, &portal, "connection refused");
    assert!(took < FAST, "{took:?}");

    t.start_again();
    let luns = iscsi::luns(&portal, t.iqn(), LIMIT).await.unwrap();
    assert_eq!(luns.len(), 1);
    assert_eq!(luns[0].size, 8 * MIB);
}

#[tokio::test]
async fn a_portal_where_nothing_listens_is_unreachable_at_once() {
    let portal = Portal::new("127.0.0.1", common::free_port()).unwrap();
    for _ in 0..2 {
        let t0 = Instant::now();
        let e = iscsi::discover(&portal, LIMIT).await.unwrap_err();
        assert_unreachable(&e, &portal, "connection refused");
        assert!(t0.elapsed() < FAST, "{:?}", t0.elapsed());
        let t0 = Instant::now();
        let e = iscsi::luns(&portal, "iqn.2026-12.test.libgo:x", LIMIT)
            .await
            .unwrap_err();
        assert_unreachable(&e, &portal, "connection refused");
        assert!(t0.elapsed() < FAST, "{:?}", t0.elapsed());
    }
    // The message names the portal and the cause.
    let e = iscsi::discover(&portal, LIMIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&portal.to_string()) && e.contains("refused"),
        "{e}"
    );
}

/// A target that accepts connections but never answers (its tgtd is
/// stopped with SIGSTOP): the call ends at its limit, saying it timed out,
/// and the tool it ran is killed.
#[tokio::test]
async fn a_hung_target_times_out_at_the_limit_and_leaves_no_tool_behind() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let t = Tgt::start(&[Backing::Size(8 * MIB)]);
    let portal = t.portal();
    let pid = Pid::from_raw(t.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let limit = Duration::from_millis(1500);

    let t0 = Instant::now();
    let e = iscsi::discover(&portal, limit).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("discover, target hung, limit {limit:?}: {took:?}: {e}");
    assert_unreachable(&e, &portal, "timed out");
    assert!(
        took >= limit && took < limit + Duration::from_secs(1),
        "{took:?}"
    );

    let t0 = Instant::now();
    let e = iscsi::luns(&portal, t.iqn(), limit).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("luns, target hung, limit {limit:?}: {took:?}: {e}");
    assert_unreachable(&e, &portal, "timed out");
    assert!(
        took >= limit && took < limit + Duration::from_secs(1),
        "{took:?}"
    );

    // The tools' command lines carry the portal URL; tgtd's does not.
    let url = format!("iscsi://{portal}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = common::processes_carrying(&url);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The target itself is fine once it runs again.
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(iscsi::discover(&portal, LIMIT).await.unwrap(), [t.iqn()]);
}
