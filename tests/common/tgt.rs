//! A private, real iSCSI target for one test: Debian's userspace `tgtd` on
//! a loopback port of its own, with one target whose LUNs are files.
//!
//! Instances run side by side, in one test process or several: each gets a
//! free TCP port and a control number of its own (`tgtd -C N`, N below
//! 32768, claimed with a lock file `/tmp/libgo-test-tgtd-control-N`). tgtd's
//! control socket and its lock, `/var/run/tgtd/socket.N` and
//! `socket.N.lock`, are the only files it writes outside the instance's
//! directory (it writes no pid file unless told to); they are removed on
//! drop.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libgo::host::iscsi::Portal;
use nix::fcntl::{Flock, FlockArg};

pub const TGTD: &str = "/usr/sbin/tgtd";
pub const TGTADM: &str = "/usr/sbin/tgtadm";
/// Where tgtd keeps its control sockets (`socket.N`, `socket.N.lock`).
pub const CONTROL_DIR: &str = "/var/run/tgtd";

/// The one target's id inside its tgtd.
const TID: &str = "1";
const READY_WITHIN: Duration = Duration::from_secs(10);
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// What backs a LUN: a new sparse file of this many bytes in the
/// instance's directory, or an existing file (left in place on drop).
/// tgtd rounds a LUN down to whole 512-byte blocks.
#[derive(Debug, Clone)]
pub enum Backing {
    Size(u64),
    File(PathBuf),
}

/// A running (or stopped) tgtd with target [`Tgt::iqn`] whose LUNs 1, 2, …
/// are the backings given to [`Tgt::start`], in order. Every initiator may
/// log in (`-I ALL`); no CHAP.
pub struct Tgt {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    control: u32,
    iqn: String,
    files: Vec<PathBuf>,
    child: Option<Child>,
    /// Whether tgtd got `control` (its socket files are removed on drop).
    owns_control: bool,
    /// Keeps `control` from other instances of this harness.
    control_lock: Option<Flock<std::fs::File>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// tgtd takes control numbers from 0 to 32767; the system's own tgtd uses 0.
const CONTROL_NUMBERS: std::ops::Range<u32> = 1000..32768;

/// A control number no other instance of this harness uses, in any
/// process: held with a lock file of its own for the instance's life (so
/// its socket files can be removed without racing a newer instance). A
/// tgtd started some other way on that number makes ours exit, and
/// [`Tgt::start`] takes the next one.
fn claim_control() -> (u32, Flock<std::fs::File>) {
    let span = CONTROL_NUMBERS.end - CONTROL_NUMBERS.start;
    let first = std::process::id()
        .wrapping_mul(101)
        .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    for i in 0..span {
        let n = CONTROL_NUMBERS.start + first.wrapping_add(i) % span;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o666)
            .open(format!("/tmp/libgo-test-tgtd-control-{n}"))
            .unwrap();
        if let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            return (n, lock);
        }
    }
    panic!("every tgtd control number is taken");
}

fn loopback_port(host: IpAddr) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tgt {
    /// A target on 127.0.0.1 with these LUNs.
    pub fn start(luns: &[Backing]) -> Tgt {
        Tgt::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), luns)
    }

    /// A target on a loopback address (127.0.0.1 or ::1) with these LUNs.
    pub fn start_on(host: IpAddr, luns: &[Backing]) -> Tgt {
        assert!(host.is_loopback(), "tests keep to loopback, not {host}");
        let dir = tempfile::Builder::new()
            .prefix("tgt")
            .tempdir_in("/tmp")
            .unwrap();
        let mut files = Vec::new();
        for (i, b) in luns.iter().enumerate() {
            match b {
                Backing::Size(n) => {
                    let f = dir.path().join(format!("lun{}.img", i + 1));
                    std::fs::File::create(&f).unwrap().set_len(*n).unwrap();
                    files.push(f);
                }
                Backing::File(f) => files.push(f.clone()),
            }
        }
        let mut t = Tgt {
            dir,
            addr: SocketAddr::new(host, 0),
            control: 0,
            iqn: format!(
                "iqn.2026-12.test.libgo:t{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            files,
            child: None,
            owns_control: false,
            control_lock: None,
        };
        // A port picked free can be taken before tgtd binds it, and a
        // control number can be held by a stray tgtd: try again then.
        let mut errors = Vec::new();
        for _ in 0..5 {
            t.addr.set_port(loopback_port(host));
            let (control, lock) = claim_control();
            t.control = control;
            t.control_lock = Some(lock);
            match t.spawn() {
                Ok(()) => {
                    t.configure();
                    return t;
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("tgtd did not start:\n{}", errors.join("\n---\n"));
    }

    /// Starts tgtd again after [`Tgt::stop`] or [`Tgt::kill`]: same port,
    /// control number, target name and LUN files.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "tgtd is running");
        self.spawn()
            .unwrap_or_else(|e| panic!("tgtd did not start again: {e}"));
        self.configure();
    }

    /// Runs tgtd and waits until it answers on its control socket and
    /// listens on exactly our portal.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("tgtd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let portal = self.portal().to_string();
        let child = Command::new(TGTD)
            .arg("-f")
            .arg("--iscsi")
            .arg(format!("portal={portal}"))
            .arg("-C")
            .arg(self.control.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {TGTD} (scripts/setup.sh installs tgt): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        let fail = |t: &mut Tgt, why: String| {
            let pid = t.pid();
            t.kill();
            t.release_control();
            Err(format!(
                "tgtd {pid} (-C {}, portal {portal}): {why}\n{}",
                t.control,
                t.log()
            ))
        };
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // Another tgtd holding this control number makes it exit
                // here: its socket files are not ours to remove.
                self.child = None;
                return Err(format!("tgtd exited at start ({status}):\n{}", self.log()));
            }
            if let Ok(out) = self.tgtadm_output(&["--op", "show", "--mode", "system"]) {
                if out.contains("State: ready") {
                    break;
                }
            }
            if Instant::now() > deadline {
                return fail(self, format!("no answer within {READY_WITHIN:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.owns_control = true;
        // tgtd that cannot bind the portal it was given falls back to
        // 0.0.0.0:3260 and [::]:3260 instead of exiting: never keep that.
        let portals = self
            .tgtadm_output(&["--lld", "iscsi", "--op", "show", "--mode", "portal"])
            .unwrap_or_else(|e| e);
        let want = format!("Portal: {portal},1");
        if portals.trim() != want {
            return fail(self, format!("listens on {portals:?}, not {want:?}"));
        }
        Ok(())
    }

    fn configure(&self) {
        self.tgtadm(&[
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", TID, "-T", &self.iqn,
        ]);
        for (i, f) in self.files.iter().enumerate() {
            let lun = (i + 1).to_string();
            let path = f.to_str().unwrap();
            self.tgtadm(&[
                "--lld",
                "iscsi",
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                TID,
                "--lun",
                &lun,
                "-b",
                path,
            ]);
        }
        self.tgtadm(&[
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", TID, "-I", "ALL",
        ]);
    }

    /// `tgtadm -C <ours> ARGS`; its stdout, or why it failed.
    pub fn tgtadm_output(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(TGTADM)
            .arg("-C")
            .arg(self.control.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {TGTADM}: {e}"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "tgtadm {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `tgtadm -C <ours> ARGS`, which must succeed.
    pub fn tgtadm(&self, args: &[&str]) -> String {
        self.tgtadm_output(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    pub fn portal(&self) -> Portal {
        Portal::new(&self.addr.ip().to_string(), self.addr.port()).unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn iqn(&self) -> &str {
        &self.iqn
    }

    /// The file behind LUN `lun` (1-based).
    pub fn lun_file(&self, lun: u32) -> &Path {
        &self.files[lun as usize - 1]
    }

    /// The pid of the running tgtd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("tgtd running").id()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tgtd.log")).unwrap_or_default()
    }

    /// Stops tgtd the orderly way and waits for it to exit: tgtd ignores
    /// SIGTERM and refuses `--op delete --mode system` while a target
    /// exists, so the target goes first, forced even with initiators logged
    /// in. SIGKILL if it is still there after a few seconds.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let _ = self.tgtadm_output(&[
            "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", TID, "--force",
        ]);
        let _ = self.tgtadm_output(&["--op", "delete", "--mode", "system"]);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Removes the control socket files of our tgtd, once it is gone.
    fn release_control(&mut self) {
        if std::mem::take(&mut self.owns_control) {
            for f in [
                format!("socket.{}", self.control),
                format!("socket.{}.lock", self.control),
            ] {
                let _ = std::fs::remove_file(Path::new(CONTROL_DIR).join(f));
            }
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        self.kill();
        self.release_control();
        // The directory and the LUN files made in it go with `dir`.
    }
}
