//! Confinement of guests' QEMU processes: the unprivileged user they run
//! as, the group id each VM gets, the owner and mode of a VM's files, and
//! the checks that this user reaches what QEMU has to open.
//!
//! Every QEMU runs as one system user (`libgo-qemu`), each with a primary
//! group of its own VM (a numeric id from a private range, no `/etc/group`
//! entry) and, as its only supplementary group, `kvm` where that exists.
//! A VM's files belong to `root:<its group>` and give nothing to others,
//! so one VM's QEMU cannot open another VM's disk. The kernel's ptrace
//! check compares groups too, so neither can it reach another QEMU's
//! memory or open files through `/proc`; signals, which the kernel checks
//! by uid alone, are kept to the process itself by [`SignalFilter`].
//! Shared base images, kernels and initrds stay world-readable: QEMU opens
//! them read-only.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How many group ids the private range holds (one per VM).
pub const VM_GID_SLOTS: u32 = 65536;

/// The credentials a confined QEMU runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    /// The primary group: the VM's own.
    pub gid: u32,
    /// Supplementary groups (`kvm` where it exists, nothing else).
    pub groups: Vec<u32>,
}

/// The QEMU user of this host, as found (or made) when the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuUser {
    pub name: String,
    pub uid: u32,
    /// The `kvm` group (access to `/dev/kvm`), where the host has one.
    pub kvm_gid: Option<u32>,
}

impl QemuUser {
    /// The credentials of the QEMU of the VM whose group is `vm_gid`.
    pub fn identity(&self, vm_gid: u32) -> Identity {
        Identity {
            uid: self.uid,
            gid: vm_gid,
            groups: self.kvm_gid.into_iter().collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("cannot look up user {name}: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("cannot create the system user {name}: {detail}")]
    CreateUser { name: String, detail: String },
    #[error("user {name} is root: QEMU must run unprivileged")]
    Privileged { name: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is out of reach of the QEMU user: {} (mode {mode:04o}, owner {owner}:{group}) does not let it {need}",
        path.display(),
        blocker.display()
    )]
    Unreachable {
        path: PathBuf,
        blocker: PathBuf,
        mode: u32,
        owner: u32,
        group: u32,
        need: &'static str,
    },
    #[error("opening tap device {name}: {source}")]
    Tap { name: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConfineError + '_ {
    move |source| ConfineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Finds the QEMU user, creating it as a system user (no home, no login
/// shell, a group of its own name) when it does not exist.
pub fn ensure_user(name: &str) -> Result<QemuUser, ConfineError> {
    let lookup = || {
        nix::unistd::User::from_name(name).map_err(|source| ConfineError::Lookup {
            name: name.to_owned(),
            source,
        })
    };
    let user = match lookup()? {
        Some(u) => u,
        None => {
            create_user(name)?;
            lookup()?.ok_or_else(|| ConfineError::CreateUser {
                name: name.to_owned(),
                detail: "useradd succeeded but the user is not found".into(),
            })?
        }
    };
    if user.uid.is_root() {
        return Err(ConfineError::Privileged {
            name: name.to_owned(),
        });
    }
    let kvm_gid = nix::unistd::Group::from_name("kvm")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    Ok(QemuUser {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        kvm_gid,
    })
}

/// Runs useradd until the user exists: a daemon starting at the same time
/// may hold the lock on the user database (useradd then fails) or make the
/// user first.
fn create_user(name: &str) -> Result<(), ConfineError> {
    let exists = || nix::unistd::User::from_name(name).ok().flatten().is_some();
    let mut detail = String::new();
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if exists() {
                return Ok(());
            }
        }
        let group_exists = nix::unistd::Group::from_name(name).ok().flatten().is_some();
        let mut cmd = std::process::Command::new("useradd");
        cmd.args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "libgo guests (QEMU)",
        ]);
        if group_exists {
            cmd.args(["--gid", name]);
        } else {
            cmd.arg("--user-group");
        }
        let out = cmd
            .arg(name)
            .output()
            .map_err(|e| ConfineError::CreateUser {
                name: name.to_owned(),
                detail: format!("running useradd: {e}"),
            })?;
        if out.status.success() {
            tracing::info!(user = name, "created the system user QEMU runs as");
            return Ok(());
        }
        detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    }
    if exists() {
        return Ok(());
    }
    Err(ConfineError::CreateUser {
        name: name.to_owned(),
        detail,
    })
}

/// The smallest group id of the range at `base` that no VM uses.
pub fn free_gid(base: u32, used: impl IntoIterator<Item = u32>) -> Option<u32> {
    let used: std::collections::HashSet<u32> = used.into_iter().collect();
    (0..VM_GID_SLOTS)
        .map(|i| base + i)
        .find(|g| !used.contains(g))
}

/// A file or directory of one VM, as far as its owner and mode go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFile {
    /// The VM's directory of durable state: QEMU opens files in it by name
    /// but creates nothing there.
    StateDir,
    /// The VM's run directory, where QEMU creates its sockets and pidfile.
    RunDir,
    /// The root disk (a qcow2 overlay or a full copy): read and written.
    Disk,
    /// The cloud-init seed: read only.
    Seed,
    /// The serial console log, appended to across boots.
    ConsoleLog,
}

impl VmFile {
    /// The mode of the file; its owner is root and its group the VM's.
    /// Nothing is given to others.
    pub fn mode(self) -> u32 {
        match self {
            VmFile::StateDir => 0o750,
            VmFile::RunDir => 0o770,
            VmFile::Disk | VmFile::ConsoleLog => 0o660,
            VmFile::Seed => 0o640,
        }
    }

    fn is_dir(self) -> bool {
        matches!(self, VmFile::StateDir | VmFile::RunDir)
    }
}

/// Gives `path` to `root:gid` with the mode of `kind`. Symlinks are not
/// followed: the file itself is changed, through its descriptor.
pub fn own(path: &Path, gid: u32, kind: VmFile) -> Result<(), ConfineError> {
    let mut flags = nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC;
    if kind.is_dir() {
        flags |= nix::libc::O_DIRECTORY;
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(io_err(path))?;
    set_owner(&f, gid, kind.mode()).map_err(io_err(path))
}

fn set_owner(f: &File, gid: u32, mode: u32) -> io::Result<()> {
    std::os::unix::fs::fchown(f, Some(0), Some(gid))?;
    f.set_permissions(Permissions::from_mode(mode))
}

/// `own` for a file that may not exist yet (made empty first).
pub fn own_or_create(path: &Path, gid: u32, kind: VmFile) -> Result<(), ConfineError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(kind.mode())
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path))?;
    set_owner(&f, gid, kind.mode()).map_err(io_err(path))
}

/// Adds search permission for others to a directory of the daemon's own
/// (its state and run directories), so that QEMU can pass through to its
/// VM's directory; nothing else changes (no listing).
pub fn make_searchable(dir: &Path) -> Result<(), ConfineError> {
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o001 == 0 {
        std::fs::set_permissions(dir, Permissions::from_mode(mode | 0o001)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// The owner, group and mode bits of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
}

/// Read, write and search (execute) permission bits.
pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const SEARCH: u32 = 1;

/// Whether `who` may do `want` on `node`, judged by its mode bits as the
/// kernel does (owner class, else group class, else others).
pub fn allowed(node: Node, who: &Identity, want: u32) -> bool {
    if who.uid == 0 {
        return true;
    }
    let bits = if node.owner == who.uid {
        node.mode >> 6
    } else if node.group == who.gid || who.groups.contains(&node.group) {
        node.mode >> 3
    } else {
        node.mode
    } & 0o7;
    bits & want == want
}

/// Checks that `who` can search every directory above `path` and do
/// `want` on `path` itself (mode bits only; ACLs are not read).
pub fn check_reach(path: &Path, who: &Identity, want: u32) -> Result<(), ConfineError> {
    let real = path.canonicalize().map_err(io_err(path))?;
    let need = |bits: u32| match bits {
        SEARCH => "search it",
        READ => "read it",
        _ => "read and write it",
    };
    let mut chain: Vec<(&Path, u32)> = real.ancestors().skip(1).map(|a| (a, SEARCH)).collect();
    chain.reverse();
    chain.push((&real, want));
    for (p, bits) in chain {
        let m = std::fs::metadata(p).map_err(io_err(p))?;
        let node = Node {
            mode: m.mode() & 0o7777,
            owner: m.uid(),
            group: m.gid(),
        };
        if !allowed(node, who, bits) {
            return Err(ConfineError::Unreachable {
                path: path.to_owned(),
                blocker: p.to_owned(),
                mode: node.mode,
                owner: node.owner,
                group: node.group,
                need: need(bits),
            });
        }
    }
    Ok(())
}

/// Creates tap device `name` (with virtio-net headers) and answers its
/// descriptor, to be handed to QEMU: an unprivileged QEMU cannot create a
/// tap itself. The device lives as long as a descriptor of it is open.
pub fn open_tap(name: &str) -> Result<OwnedFd, ConfineError> {
    use nix::libc;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let err = |source| ConfineError::Tap {
        name: name.to_owned(),
        source,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(err(io::Error::from(io::ErrorKind::InvalidInput)));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq`
    // lays out (name, flags, padding to its 40 bytes); `req` outlives the
    // call and the descriptor is open.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let fd = std::os::fd::IntoRawFd::into_raw_fd(tun);
    // SAFETY: `fd` was just released from the `File` that owned it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A seccomp filter that lets a confined QEMU signal only itself.
///
/// Every QEMU shares the uid `libgo-qemu`, and the kernel lets a process
/// signal any other of the same uid (`kill(2)` compares user ids only):
/// without this, one compromised QEMU could kill the others. `kill`,
/// `tgkill`, `rt_sigqueueinfo` and `rt_tgsigqueueinfo` are allowed only
/// towards the process's own pid (and `kill(0, …)`, its own process group:
/// it leads one of its own); `tkill`, `pidfd_open` and `pidfd_send_signal`
/// (which could name another process by thread id or pidfd) are refused
/// with EPERM; a system call of another architecture ends the process.
/// QEMU's own `-sandbox` filter is added on top of this one.
#[derive(Debug, Clone)]
pub struct SignalFilter {
    prog: Vec<nix::libc::sock_filter>,
    /// Where the program compares a target with the process's pid.
    pid_slot: usize,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

impl SignalFilter {
    /// The filter for this architecture (x86_64 and aarch64: both little
    /// endian, where the low half of an argument is at its offset).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn new() -> Option<SignalFilter> {
        use nix::libc::{self, sock_filter};
        const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
        const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const RET_K: u16 = 0x06; // BPF_RET | BPF_K
                                 // Offsets in `struct seccomp_data`.
        const NR: u32 = 0;
        const ARCH: u32 = 4;
        const ARG0: u32 = 16;
        const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
        let deny = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let ld = |k| sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k,
        };
        let ret = |k| sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k,
        };
        // Jumps are written with absolute targets and made relative below.
        let jeq = |k: i64, jt: u8, jf: u8| sock_filter {
            code: JEQ_K,
            jt,
            jf,
            k: k as u32,
        };
        const TARGET: u8 = 12;
        const DENY: u8 = 15;
        const ALLOW_OWN: u8 = 16;
        let abs = [
            /* 0 */ ld(ARCH),
            /* 1 */ jeq(AUDIT_ARCH as i64, 3, 2),
            /* 2 */ ret(libc::SECCOMP_RET_KILL_PROCESS),
            /* 3 */ ld(NR),
            /* 4 */ jeq(libc::SYS_kill, TARGET, 5),
            /* 5 */ jeq(libc::SYS_tgkill, TARGET, 6),
            /* 6 */ jeq(libc::SYS_rt_sigqueueinfo, TARGET, 7),
            /* 7 */ jeq(libc::SYS_rt_tgsigqueueinfo, TARGET, 8),
            /* 8 */ jeq(libc::SYS_tkill, DENY, 9),
            /* 9 */ jeq(libc::SYS_pidfd_open, DENY, 10),
            /* 10 */ jeq(libc::SYS_pidfd_send_signal, DENY, 11),
            /* 11 */ ret(ALLOW),
            /* 12 */ ld(ARG0),
            /* 13 */ jeq(0, ALLOW_OWN, 14), // the pid, set in the child
            /* 14 */ jeq(0, ALLOW_OWN, DENY),
            /* 15 */ ret(deny),
            /* 16 */ ret(ALLOW),
        ];
        let prog = abs
            .iter()
            .enumerate()
            .map(|(i, insn)| {
                let mut insn = *insn;
                if insn.code == JEQ_K {
                    insn.jt -= i as u8 + 1;
                    insn.jf -= i as u8 + 1;
                }
                insn
            })
            .collect();
        Some(SignalFilter { prog, pid_slot: 13 })
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn new() -> Option<SignalFilter> {
        None
    }

    /// Writes the process's own pid into the program: done in the forked
    /// child (no allocation), whose pid the parent cannot know before.
    pub fn set_pid(&mut self, pid: u32) {
        self.prog[self.pid_slot].k = pid;
    }

    /// The program, for `seccomp(SECCOMP_SET_MODE_FILTER)`.
    pub fn program(&self) -> &[nix::libc::sock_filter] {
        &self.prog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: u32 = 990;
    const VM_A: u32 = 0x7000_0000;
    const VM_B: u32 = 0x7000_0001;
    const KVM: u32 = 104;

    fn qemu_of(gid: u32) -> Identity {
        QemuUser {
            name: "libgo-qemu".into(),
            uid: UID,
            kvm_gid: Some(KVM),
        }
        .identity(gid)
    }

    fn vm_node(kind: VmFile, gid: u32) -> Node {
        Node {
            mode: kind.mode(),
            owner: 0,
            group: gid,
        }
    }

    #[test]
    fn a_vm_file_is_its_own_qemu_s_and_no_one_else_s() {
        let all = [
            VmFile::StateDir,
            VmFile::RunDir,
            VmFile::Disk,
            VmFile::Seed,
            VmFile::ConsoleLog,
        ];
        for kind in all {
            assert_eq!(kind.mode() & 0o007, 0, "{kind:?} gives nothing to others");
            let other = qemu_of(VM_B);
            for want in [READ, WRITE, SEARCH] {
                assert!(!allowed(vm_node(kind, VM_A), &other, want), "{kind:?}");
            }
        }
        let own = qemu_of(VM_A);
        assert!(allowed(vm_node(VmFile::Disk, VM_A), &own, READ | WRITE));
        assert!(allowed(vm_node(VmFile::ConsoleLog, VM_A), &own, WRITE));
        assert!(allowed(vm_node(VmFile::Seed, VM_A), &own, READ));
        assert!(!allowed(vm_node(VmFile::Seed, VM_A), &own, WRITE));
        // QEMU makes its sockets in the run directory, nothing beside its disk.
        assert!(allowed(vm_node(VmFile::RunDir, VM_A), &own, WRITE | SEARCH));
        assert!(allowed(vm_node(VmFile::StateDir, VM_A), &own, SEARCH));
        assert!(!allowed(vm_node(VmFile::StateDir, VM_A), &own, WRITE));
    }

    #[test]
    fn mode_bits_are_judged_by_class() {
        let q = qemu_of(VM_A);
        let base = Node {
            mode: 0o644,
            owner: 0,
            group: 0,
        };
        assert!(allowed(base, &q, READ));
        assert!(!allowed(base, &q, WRITE));
        let private = Node {
            mode: 0o640,
            ..base
        };
        assert!(!allowed(private, &q, READ));
        // The owner class wins even when it grants less than others.
        let odd = Node {
            mode: 0o004,
            owner: UID,
            group: 0,
        };
        assert!(!allowed(odd, &q, READ));
        // Supplementary groups count: kvm opens /dev/kvm.
        let kvm = Node {
            mode: 0o660,
            owner: 0,
            group: KVM,
        };
        assert!(allowed(kvm, &q, READ | WRITE));
        let searchable = Node {
            mode: 0o711,
            ..base
        };
        assert!(allowed(searchable, &q, SEARCH));
        assert!(!allowed(searchable, &q, READ));
        assert!(allowed(
            private,
            &Identity {
                uid: 0,
                gid: 0,
                groups: vec![]
            },
            WRITE
        ));
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn the_signal_filter_jumps_stay_inside_the_program() {
        let mut f = SignalFilter::new().unwrap();
        f.set_pid(4242);
        let prog = f.program();
        assert_eq!(prog[13].k, 4242);
        for (i, insn) in prog.iter().enumerate() {
            if insn.code == 0x15 {
                for off in [insn.jt, insn.jf] {
                    assert!(i + 1 + (off as usize) < prog.len(), "jump out at {i}");
                }
            }
        }
        // Every path ends in a return.
        assert_eq!(prog.last().unwrap().code, 0x06);
    }

    #[test]
    fn gids_are_the_smallest_free_in_the_range() {
        assert_eq!(free_gid(VM_A, []), Some(VM_A));
        assert_eq!(free_gid(VM_A, [VM_A, VM_A + 2]), Some(VM_A + 1));
        let full: Vec<u32> = (0..VM_GID_SLOTS).map(|i| VM_A + i).collect();
        assert_eq!(free_gid(VM_A, full), None);
    }

    #[test]
    fn ownership_is_set_on_the_file_not_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.qcow2");
        std::fs::write(&disk, "x").unwrap();
        own(&disk, VM_A, VmFile::Disk).unwrap();
        let m = std::fs::metadata(&disk).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o660, 0, VM_A));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&disk, &link).unwrap();
        assert!(own(&link, VM_B, VmFile::Disk).is_err());
        assert_eq!(std::fs::metadata(&disk).unwrap().gid(), VM_A);
        let log = dir.path().join("console.log");
        own_or_create(&log, VM_A, VmFile::ConsoleLog).unwrap();
        own_or_create(&log, VM_A, VmFile::ConsoleLog).unwrap();
        let m = std::fs::metadata(&log).unwrap();
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o660, VM_A));
        own(dir.path(), VM_A, VmFile::StateDir).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().mode() & 0o7777,
            0o750
        );
    }

    #[test]
    fn reach_is_checked_along_the_whole_path() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pool");
        std::fs::create_dir(&sub).unwrap();
        let img = sub.join("base.qcow2");
        std::fs::write(&img, "x").unwrap();
        std::fs::set_permissions(&img, Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&sub, Permissions::from_mode(0o755)).unwrap();
        let q = qemu_of(VM_A);
        check_reach(&img, &q, READ).unwrap();
        std::fs::set_permissions(&sub, Permissions::from_mode(0o750)).unwrap();
        match check_reach(&img, &q, READ) {
            Err(ConfineError::Unreachable { blocker, need, .. }) => {
                assert_eq!(blocker, sub.canonicalize().unwrap());
                assert_eq!(need, "search it");
            }
            other => panic!("{other:?}"),
        }
        make_searchable(&sub).unwrap();
        assert_eq!(std::fs::metadata(&sub).unwrap().mode() & 0o7777, 0o751);
        check_reach(&img, &q, READ).unwrap();
        assert!(check_reach(&img, &q, WRITE).is_err());
    }
}
