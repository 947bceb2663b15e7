//! The Debian package: built by scripts/package.sh, installed with
//! `dpkg -i` on this machine, libgod started as the unit would start it
//! (by hand: no systemd here, the test plays its part over NOTIFY_SOCKET),
//! driven, stopped, removed (guests' disks stay) and purged (state goes).
//! The sample configuration is checked against the code's defaults.
//!
//! The package is built from the binaries of this test build (the debug
//! profile): the test checks the package's layout and maintainer scripts,
//! which do not depend on the profile, and a release build would take
//! minutes more. `scripts/package.sh` alone makes the release package.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/libgod.toml");

/// The sample configuration parses, and says the code's defaults.
#[test]
fn the_sample_config_holds_the_defaults() {
    let parsed = libgo::config::Config::from_file(Path::new(SAMPLE)).unwrap();
    let default = libgo::config::Config::default();
    assert_eq!(format!("{parsed:#?}"), format!("{default:#?}"));
}

/// Every key of the configuration (and of its tables) appears in the
/// sample, set or as a commented example.
#[test]
fn the_sample_config_names_every_key() {
    let text = std::fs::read_to_string(SAMPLE).unwrap();
    let default = format!("{:#?}", libgo::config::Config::default());
    let mut missing = Vec::new();
    for line in default.lines() {
        // `    key: value,` at the top level, 8 spaces in a table.
        let indent = line.len() - line.trim_start().len();
        if indent != 4 && indent != 8 {
            continue;
        }
        let Some((key, _)) = line.trim_start().split_once(": ") else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let named = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} ="))
                || l == format!("[{key}]")
                || l == format!("[[{key}]]")
        });
        if !named {
            missing.push(key.to_owned());
        }
    }
    assert!(missing.is_empty(), "not in {SAMPLE}: {missing:?}");
    // The commented example, uncommented, is a valid pool at its place.
    let uncommented: String = text
        .lines()
        .map(|l| {
            if l.starts_with("# [[storage_pools]]")
                || l.starts_with("# name =")
                || l.starts_with("# path =")
            {
                &l[2..]
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg: libgo::config::Config = toml::from_str(&uncommented).unwrap();
    assert_eq!(cfg.storage_pools.len(), 1);
    assert_eq!(
        format!("{:?}", cfg.connections),
        format!("{:?}", libgo::config::Config::default().connections),
        "the example swallowed the keys after it"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", "libgo"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

fn exists(cmd: &str, name: &str) -> bool {
    Command::new("getent")
        .args([cmd, name])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Puts the machine back whatever happens: the daemon stopped, the package
/// purged, and the group the package created removed if it was not there
/// before. The libgo-qemu user stays when it was there already (every
/// libgod of the suite makes it at its first start).
struct Restore {
    daemon: Option<std::process::Child>,
    had_group: bool,
    had_user: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if installed() {
            let _ = Command::new("dpkg").args(["--purge", "libgo"]).output();
        }
        if !self.had_group {
            let _ = Command::new("groupdel").arg("libgo").output();
        }
        if !self.had_user {
            let _ = Command::new("userdel").arg("libgo-qemu").output();
        }
    }
}

/// The binaries this test build made, linked into a directory of their own
/// (the target directory may hold others; debug binaries are large).
fn bin_dir(into: &Path) -> PathBuf {
    let dir = into.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_libgod"), dir.join("libgod")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_libgo-aggregator"),
        dir.join("libgo-aggregator"),
    )
    .unwrap();
    if let Some(cli) = option_env!("CARGO_BIN_EXE_libgo") {
        std::os::unix::fs::symlink(cli, dir.join("libgo")).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_package_installs_serves_and_goes_away_cleanly() {
    // Never twice at once: there is one dpkg database and one /run/libgo.sock.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/libgo-test-package.lock")
        .unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    // What the package owns must be free: no other test uses these paths.
    assert!(
        !installed(),
        "the libgo package is installed on this machine"
    );
    for p in [
        "/var/lib/libgo",
        "/etc/libgo",
        "/run/libgo.sock",
        "/run/libgo-ro.sock",
    ] {
        assert!(!Path::new(p).exists(), "{p} exists: not a clean machine");
    }
    let mut restore = Restore {
        daemon: None,
        had_group: exists("group", "libgo"),
        had_user: exists("passwd", "libgo-qemu"),
    };

    // Build.
    let work = tempfile::tempdir().unwrap();
    let bins = bin_dir(work.path());
    let with_cli = bins.join("libgo").exists();
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(work.path())
        .output()
        .unwrap();
    let lint = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "package.sh: {}\n{lint}", out.status);
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    eprintln!(
        "package built in {:?}: {}",
        started.elapsed(),
        deb.display()
    );
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("libgo_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
    );
    // lintian's errors (E:) are defects of the package.
    let errors: Vec<&str> = lint.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian:\n{lint}");
    let control = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    for dep in ["qemu-system-x86", "qemu-utils", "adduser", "libc6"] {
        assert!(
            control
                .lines()
                .any(|l| l.starts_with("Depends:") && l.contains(dep)),
            "{control}"
        );
    }
    assert!(
        control.lines().any(|l| l.starts_with("Recommends:")
            && l.contains("docker.io")
            && l.contains("openvswitch-switch")),
        "{control}"
    );

    // Install.
    run(Command::new("dpkg").arg("-i").arg(&deb));
    let mut files = vec![
        "/usr/bin/libgod",
        "/usr/bin/libgo-aggregator",
        "/lib/systemd/system/libgo-aggregator.service",
        "/usr/share/doc/libgo/examples/aggregator.toml",
        "/usr/share/man/man8/libgo-aggregator.8.gz",
        "/lib/systemd/system/libgod.service",
        "/usr/lib/tmpfiles.d/libgo.conf",
        "/etc/libgo/libgod.toml",
        "/usr/share/doc/libgo/copyright",
    ];
    if with_cli {
        files.extend([
            "/usr/bin/libgo",
            "/usr/share/bash-completion/completions/libgo",
            "/usr/share/zsh/vendor-completions/_libgo",
            "/usr/share/fish/vendor_completions.d/libgo.fish",
            "/usr/share/man/man1/libgo.1.gz",
        ]);
    }
    for f in &files {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    assert!(exists("group", "libgo"), "no libgo group");
    assert!(exists("passwd", "libgo-qemu"), "no libgo-qemu user");
    let state = std::fs::metadata("/var/lib/libgo").unwrap();
    assert_eq!(state.mode() & 0o7777, 0o751);
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "libgo"]));
    assert!(conffiles.contains("/etc/libgo/libgod.toml"), "{conffiles}");
    // Enabled as dh_installsystemd would (no systemd needed to record it).
    assert!(Path::new("/etc/systemd/system/multi-user.target.wants/libgod.service").exists());

    // Installed again over itself (postinst sees the old version, as on an
    // upgrade): the administrator's configuration is kept.
    let mut conf = std::fs::read_to_string("/etc/libgo/libgod.toml").unwrap();
    conf.push_str("# changed by the administrator\n");
    std::fs::write("/etc/libgo/libgod.toml", &conf).unwrap();
    run(Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .stdin(Stdio::null()));
    assert_eq!(
        std::fs::read_to_string("/etc/libgo/libgod.toml").unwrap(),
        conf
    );

    // Start libgod as the unit does, with the test as its service manager.
    let images = Path::new("/var/lib/libgo/images");
    std::fs::copy(
        common::fixtures().join("base.qcow2"),
        images.join("base.qcow2"),
    )
    .unwrap();
    let notify_path = work.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = std::fs::File::create(work.path().join("libgod.log")).unwrap();
    let daemon = Command::new("/usr/bin/libgod")
        .args(["--config", "/etc/libgo/libgod.toml"])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(daemon.id() as i32);
    restore.daemon = Some(daemon);
    let log = || std::fs::read_to_string(work.path().join("libgod.log")).unwrap_or_default();
    let mut buf = [0u8; 512];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 ({e}):\n{}", log()));
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // The socket as the configuration says: /run/libgo.sock, 0660, group libgo.
    let sock = std::fs::metadata("/run/libgo.sock").unwrap();
    assert_eq!(sock.mode() & 0o777, 0o660);
    let gid = nix::unistd::Group::from_name("libgo").unwrap().unwrap().gid;
    assert_eq!(sock.gid(), gid.as_raw());

    // Drive it: with the installed client when the package has one (at its
    // default socket, with a HOME of the test's so root's stays untouched),
    // over the socket otherwise.
    let socket = Path::new("/run/libgo.sock");
    let cli = |args: &[&str]| {
        run(Command::new("/usr/bin/libgo")
            .args(args)
            .env("HOME", work.path())
            .env_remove("LIBGO_REMOTE"))
    };
    let mut ids = Vec::new();
    for name in ["pkg-kept", "pkg-deleted"] {
        if with_cli {
            let id = cli(&[
                "vm",
                "create",
                name,
                "--vcpus",
                "1",
                "--memory",
                "128M",
                "--disk-size",
                "1G",
                "--base-image",
                "base.qcow2",
                "--quiet",
            ]);
            ids.push(id.trim().to_owned());
            continue;
        }
        let (code, _, body) = common::raw_request(
            socket,
            "POST",
            "/api/v1/vms",
            Some(
                serde_json::json!({
                    "name": name, "vcpus": 1, "memory": 128, "disk_size": 1,
                    "base_image": "base.qcow2",
                })
                .to_string(),
            ),
            &[],
        )
        .await
        .unwrap();
        let vm: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(code, 201, "{vm}\n{}", log());
        ids.push(vm["id"].as_str().unwrap().to_owned());
    }
    if with_cli {
        let list = cli(&["vm", "list"]);
        assert!(
            list.contains("pkg-kept") && list.contains("pkg-deleted"),
            "{list}"
        );
        cli(&["vm", "delete", "pkg-deleted"]);
        let list = cli(&["vm", "list"]);
        assert!(
            list.contains("pkg-kept") && !list.contains("pkg-deleted"),
            "{list}"
        );
    } else {
        let (code, _, body) = common::raw_request(
            socket,
            "DELETE",
            &format!("/api/v1/vms/{}", ids[1]),
            None,
            &[],
        )
        .await
        .unwrap();
        assert!(
            (200..300).contains(&code),
            "{code} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (code, _, body) = common::raw_request(socket, "GET", "/api/v1/vms", None, &[])
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{listed}");
    assert!(
        listed.contains(&ids[0]) && !listed.contains(&ids[1]),
        "{listed}"
    );
    let kept_dir = Path::new("/var/lib/libgo/vms").join(&ids[0]);
    let disks: Vec<PathBuf> = std::fs::read_dir(&kept_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "qcow2"))
        .collect();
    assert!(!disks.is_empty(), "no disk in {}", kept_dir.display());

    // Stop it as systemd would.
    kill(pid, Signal::SIGTERM).unwrap();
    let n = notify.recv(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let status = restore.daemon.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}\n{}", log());
    assert!(!socket.exists(), "the socket outlived the daemon");

    // Remove: the programs go, the guests' disks and the configuration stay.
    run(Command::new("dpkg").args(["-r", "libgo"]));
    assert!(!Path::new("/usr/bin/libgod").exists());
    assert!(!Path::new("/usr/bin/libgo-aggregator").exists());
    assert!(!Path::new("/usr/bin/libgo").exists());
    assert!(!Path::new("/lib/systemd/system/libgod.service").exists());
    for d in &disks {
        assert!(d.exists(), "{} removed with the package", d.display());
    }
    assert!(Path::new("/etc/libgo/libgod.toml").exists());
    assert!(installed(), "dpkg forgot the configuration files");

    // Purge: the state, the configuration and the enablement go too.
    run(Command::new("dpkg").args(["--purge", "libgo"]));
    assert!(!installed());
    for p in [
        "/var/lib/libgo",
        "/etc/libgo",
        "/run/libgo",
        "/etc/systemd/system/multi-user.target.wants/libgod.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/libgod.service.dsh-also",
    ] {
        assert!(!Path::new(p).exists(), "{p} survived the purge");
    }
    // System users stay, as Debian does.
    assert!(exists("group", "libgo"));
}
