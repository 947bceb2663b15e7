//! Effects on this machine. Nothing here knows what a VM is; every root path
//! is a parameter so tests can point it at a temporary tree.

pub mod accel;
pub mod blockdev;
pub mod cgroup;
pub mod cloudinit;
pub mod confine;
pub mod iscsi;
pub mod ova;
pub mod pinning;
pub mod pool;
pub mod qemu_img;

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs cannot), which
/// QEMU's `cache=none` needs.
pub fn supports_o_direct(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(format!(".odirect-probe-{}", std::process::id()));
    let ok = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
