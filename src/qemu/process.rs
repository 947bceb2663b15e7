//! Starting a QEMU detached from the daemon and finding it again later.
//!
//! QEMU runs in its own session and process group, so signals aimed at
//! `libgod` (terminal, systemd with `KillMode=process`) never reach a guest.
//! Its pidfile and its `/proc/<pid>/cmdline`, which carries `-uuid <id>`, are
//! how a restarted daemon re-adopts it.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use uuid::Uuid;

use crate::host::confine::{Identity, SignalFilter};

/// Spawns `binary argv...` in a new session; stdout and stderr append to
/// `log`. With `cgroup_procs` (a cgroup's `cgroup.procs`), the child joins
/// that cgroup before it executes, so it never runs outside it. Each of
/// `keep_fds` (open in the caller) stays open in the child under its
/// number. With `identity`, the child then drops to those credentials
/// (supplementary groups, group, user), so the binary never runs as root.
pub fn spawn(
    binary: &Path,
    argv: &[String],
    log: &Path,
    cgroup_procs: Option<&Path>,
    keep_fds: &[RawFd],
    identity: Option<&Identity>,
) -> io::Result<tokio::process::Child> {
    use std::os::unix::ffi::OsStrExt;
    let procs = cgroup_procs
        .map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()))
        .transpose()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let log_err = log_file.try_clone()?;
    let keep: Vec<RawFd> = keep_fds.to_vec();
    let creds: Option<(nix::libc::uid_t, nix::libc::gid_t, Vec<nix::libc::gid_t>)> =
        identity.map(|i| (i.uid, i.gid, i.groups.clone()));
    let mut filter = identity.and_then(|_| SignalFilter::new());
    let mut cmd = std::process::Command::new(binary);
    cmd.args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err));
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, open, write, close, fcntl,
    // setgroups, setresgid, setresuid, getpid, prctl, seccomp) on memory
    // prepared before the fork (`procs`, `keep`, `creds`, `filter` are
    // moved in whole; the filter's pid is written in place); it allocates
    // nothing and takes no lock. The cgroup is joined while still root; the
    // credentials are dropped last, groups before the user (after setresuid
    // the process could no longer change its groups).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if let Some(procs) = &procs {
                join_cgroup(procs)?;
            }
            for fd in &keep {
                inherit_fd(*fd)?;
            }
            if let Some((uid, gid, groups)) = &creds {
                drop_privileges(*uid, *gid, groups)?;
            }
            if let Some(filter) = &mut filter {
                filter.set_pid(std::process::id());
                install_filter(filter.program())?;
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd.spawn()
}

/// Clears close-on-exec on `fd`, so the executed binary inherits it.
///
/// # Safety
/// Only raw system calls: callable between fork and exec.
unsafe fn inherit_fd(fd: RawFd) -> io::Result<()> {
    use nix::libc;
    // SAFETY: fcntl on a descriptor number; an invalid one fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs a seccomp filter on the calling process (no new privileges
/// first, as an unprivileged process must).
///
/// # Safety
/// Only raw system calls: callable between fork and exec.
unsafe fn install_filter(prog: &[nix::libc::sock_filter]) -> io::Result<()> {
    use nix::libc;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel
    // copies the program and only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the supplementary groups, then real, effective and saved group and
/// user ids, of the calling process.
///
/// # Safety
/// Only raw system calls: callable between fork and exec.
unsafe fn drop_privileges(
    uid: nix::libc::uid_t,
    gid: nix::libc::gid_t,
    groups: &[nix::libc::gid_t],
) -> io::Result<()> {
    use nix::libc;
    // SAFETY: `groups` points at `groups.len()` initialised gids.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain system calls on integers.
    if unsafe { libc::setresgid(gid, gid, gid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs` ("0" names the writer, in both cgroup versions).
///
/// # Safety
/// Only raw system calls: callable between fork and exec.
unsafe fn join_cgroup(procs: &std::ffi::CStr) -> io::Result<()> {
    use nix::libc;
    // SAFETY: `procs` is a valid NUL-terminated path; the descriptor is
    // closed on every path below.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writes one byte from a static buffer to the open descriptor.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` was opened above and is not used after this.
    unsafe { libc::close(fd) };
    if n != 1 {
        return Err(err);
    }
    Ok(())
}

/// Reads a pidfile written by QEMU's `-pidfile`.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) process whose command line carries `id`.
pub fn is_qemu_of(pid: u32, id: Uuid) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let id = id.to_string();
    let carries_id = cmdline.split(|b| *b == 0).any(|arg| arg == id.as_bytes());
    carries_id && is_alive(pid)
}

/// The live processes whose arguments carry both `id` and `pidfile`: what
/// was launched for that VM, found without its pidfile (QEMU before it has
/// written it, or a launcher named as the QEMU binary that has yet to exec
/// QEMU with those arguments).
pub fn launched_for(id: Uuid, pidfile: &Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    let id = id.to_string();
    let pidfile = pidfile.as_os_str().as_bytes();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut carries_id = false;
            let mut carries_pidfile = false;
            for arg in cmdline.split(|b| *b == 0) {
                carries_id |= arg == id.as_bytes();
                carries_pidfile |= arg == pidfile;
            }
            carries_id && carries_pidfile
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the last ')' (the command name may hold spaces).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    kill(Pid::from_raw(pid), sig).map_err(io::Error::from)
}

/// SIGKILL to what was launched as `pid`: its whole process group when it
/// still leads the one `spawn` made for it (a launcher's children go too,
/// so they neither outlive it nor keep its cgroup busy), else `pid` alone.
pub fn kill_launch(pid: u32) -> io::Result<()> {
    let raw = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let leads = nix::unistd::getpgid(Some(Pid::from_raw(raw))).is_ok_and(|g| g.as_raw() == raw);
    if leads {
        nix::sys::signal::killpg(Pid::from_raw(raw), Signal::SIGKILL).map_err(io::Error::from)
    } else {
        signal(pid, Signal::SIGKILL)
    }
}

/// Polls until `pid` is gone or `timeout` passes; true if it is gone.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    let Ok(data) = std::fs::read(path) else {
        return String::new();
    };
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_process_has_its_own_session_and_is_found_by_its_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let log = dir.path().join("log");
        let mut child = spawn(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo started; exec sleep 30".into(),
                id.to_string(),
            ],
            &log,
            None,
            &[],
            None,
        )
        .unwrap();
        let pid = child.id().unwrap();
        let sid = nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).unwrap();
        assert_eq!(sid.as_raw(), pid as i32, "QEMU must lead its own session");
        // sh exec'd sleep: its argv no longer carries the id.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_qemu_of(pid, id) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!is_qemu_of(pid, id));
        assert!(is_alive(pid));
        signal(pid, Signal::SIGKILL).unwrap();
        child.wait().await.unwrap();
        assert!(wait_gone(pid, Duration::from_secs(2)).await);
        assert_eq!(log_tail(&log, 100), "started");
    }

    #[tokio::test]
    async fn a_launch_is_found_by_its_uuid_and_pidfile() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let pidfile = dir.path().join("qemu.pid");
        let other = dir.path().join("other.pid");
        let log = dir.path().join("log");
        let args = |p: &Path| -> Vec<String> {
            vec![
                "-c".into(),
                // Two commands: the shell cannot exec the first (its
                // arguments would go).
                "sleep 30; :".into(),
                "sh".into(),
                "-uuid".into(),
                id.to_string(),
                "-pidfile".into(),
                p.display().to_string(),
            ]
        };
        let mut mine = spawn(Path::new("/bin/sh"), &args(&pidfile), &log, None, &[], None).unwrap();
        let mut theirs = spawn(Path::new("/bin/sh"), &args(&other), &log, None, &[], None).unwrap();
        let pid = mine.id().unwrap();
        // The shell's own fork for `sleep` carries the same arguments for a
        // moment before it executes, so it may be found too.
        let found = launched_for(id, &pidfile);
        assert!(found.contains(&pid), "{found:?}");
        assert!(!found.contains(&theirs.id().unwrap()), "{found:?}");
        assert!(launched_for(Uuid::new_v4(), &pidfile).is_empty());
        for c in [&mut mine, &mut theirs] {
            c.start_kill().unwrap();
            c.wait().await.unwrap();
        }
        assert!(launched_for(id, &pidfile).is_empty());
    }

    /// The live processes of process group `pgid`.
    fn group(pgid: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    // pid (comm) state ppid pgrp ...
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse().ok())
                        == Some(pgid)
                })
            })
            .filter(|pid| is_alive(*pid))
            .collect()
    }

    #[tokio::test]
    async fn killing_a_launch_takes_its_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "sleep 30 & sleep 30; :".into()],
            &dir.path().join("log"),
            None,
            &[],
            None,
        )
        .unwrap();
        let pid = child.id().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while group(pid).len() < 3 {
            assert!(std::time::Instant::now() < deadline, "{:?}", group(pid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill_launch(pid).unwrap();
        child.wait().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !group(pid).is_empty() {
            assert!(std::time::Instant::now() < deadline, "{:?}", group(pid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A `/proc/<pid>/status` line's values.
    fn status_line(pid: u32, key: &str) -> Vec<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_confined_launch_runs_with_its_credentials_and_keeps_its_fds() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (it changes credentials)");
        }
        let dir = tempfile::tempdir().unwrap();
        let (keep, _other_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&keep);
        let who = Identity {
            uid: 65534,
            gid: 0x7000_0005,
            groups: vec![0x7000_0006],
        };
        let mut child = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "exec sleep 30".into()],
            &dir.path().join("log"),
            None,
            &[fd],
            Some(&who),
        )
        .unwrap();
        let pid = child.id().unwrap();
        assert_eq!(status_line(pid, "Uid:"), vec![65534; 4]);
        assert_eq!(status_line(pid, "Gid:"), vec![0x7000_0005; 4]);
        assert_eq!(status_line(pid, "Groups:"), vec![0x7000_0006]);
        assert!(
            Path::new(&format!("/proc/{pid}/fd/{fd}")).exists(),
            "the kept descriptor is inherited"
        );
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_confined_launch_may_signal_itself_only() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (it changes credentials)");
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let as_vm = |gid| Identity {
            uid: 65534,
            gid,
            groups: vec![],
        };
        // Same uid as the shell below, another VM's group.
        let mut other = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "exec sleep 30".into()],
            &log,
            None,
            &[],
            Some(&as_vm(0x7000_0007)),
        )
        .unwrap();
        let target = other.id().unwrap();
        let script = format!(
            "kill -0 {target} 2>/dev/null; echo other=$?; kill -0 $$; echo self=$?; \
             grep -E '^(Seccomp|NoNewPrivs):' /proc/$$/status | tr -s ' \\t' ' '"
        );
        let mut probe = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), script],
            &log,
            None,
            &[],
            Some(&as_vm(0x7000_0008)),
        )
        .unwrap();
        probe.wait().await.unwrap();
        let out = std::fs::read_to_string(&log).unwrap();
        assert!(out.contains("other=1"), "{out}");
        assert!(out.contains("self=0"), "{out}");
        assert!(out.contains("Seccomp: 2"), "{out}");
        assert!(out.contains("NoNewPrivs: 1"), "{out}");
        assert!(is_alive(target), "the other process was not signalled");
        other.start_kill().unwrap();
        other.wait().await.unwrap();
    }

    #[test]
    fn pidfile_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        assert_eq!(read_pidfile(&p), None);
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pidfile(&p), Some(1234));
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(read_pidfile(&p), None);
    }
}
