//! Which block device holds a file, as the `MAJ:MIN` of the whole disk, which
//! is what the cgroup I/O throttles (`io.max`, `blkio.throttle.*`) accept:
//! the kernel refuses rules on a partition.
//!
//! Sysfs is a parameter (normally `/sys`) so tests can use a fake tree.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for DevId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevId {
    /// Splits a raw `st_dev` (glibc/Linux encoding).
    fn from_raw(raw: u64) -> DevId {
        // Both halves are masked to 32 bits by the decoders.
        DevId {
            major: (nix::sys::stat::major(raw) & u64::from(u32::MAX)) as u32,
            minor: (nix::sys::stat::minor(raw) & u64::from(u32::MAX)) as u32,
        }
    }
}

/// Parses "MAJ:MIN" as found in sysfs `dev` files (surrounding whitespace allowed).
fn parse_dev(text: &str) -> Option<DevId> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(DevId {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// The whole disk (not the partition) that holds `path`: `stat(path).st_dev`
/// resolved through [`whole_disk`]. None when `path` cannot be stat'ed or its
/// filesystem is not on a block device sysfs knows (tmpfs, overlayfs, NFS,
/// and also btrfs, whose `st_dev` is an anonymous `0:N` number).
pub fn whole_disk_of(path: &Path, sys: &Path) -> Option<DevId> {
    let meta = std::fs::metadata(path).ok()?;
    whole_disk(DevId::from_raw(meta.dev()), sys)
}

/// The whole disk for `dev`: `dev` itself when `<sys>/dev/block/MAJ:MIN` is a
/// disk; for a partition (the entry has a `partition` file), the number in the
/// `dev` file of the parent directory of the resolved entry. None when sysfs
/// has no entry for `dev` or the parent cannot be read.
pub fn whole_disk(dev: DevId, sys: &Path) -> Option<DevId> {
    let entry = sys.join("dev/block").join(dev.to_string());
    if !entry.exists() {
        return None;
    }
    if !entry.join("partition").exists() {
        return Some(dev);
    }
    let real = std::fs::canonicalize(&entry).ok()?;
    let disk = real.parent()?;
    let text = std::fs::read_to_string(disk.join("dev")).ok()?;
    let found = parse_dev(&text);
    if found.is_none() {
        tracing::debug!(dev = %dev, disk = %disk.display(), "unreadable dev file of parent disk");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// sys/devices/virtual/block/vda (254:0) with partition vda1 (254:1),
    /// linked from sys/dev/block like the kernel does (relative links).
    fn fake_sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let disk = sys.join("devices/pci0000:00/virtio1/block/vda");
        fs::create_dir_all(disk.join("vda1")).unwrap();
        fs::write(disk.join("dev"), "254:0\n").unwrap();
        fs::write(disk.join("vda1/dev"), "254:1\n").unwrap();
        fs::write(disk.join("vda1/partition"), "1\n").unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        symlink(
            "../../devices/pci0000:00/virtio1/block/vda",
            sys.join("dev/block/254:0"),
        )
        .unwrap();
        symlink(
            "../../devices/pci0000:00/virtio1/block/vda/vda1",
            sys.join("dev/block/254:1"),
        )
        .unwrap();
        t
    }

    #[test]
    fn display_and_parse() {
        let d = DevId {
            major: 254,
            minor: 0,
        };
        assert_eq!(d.to_string(), "254:0");
        assert_eq!(parse_dev(" 254:0\n"), Some(d));
        assert_eq!(parse_dev("254"), None);
        assert_eq!(parse_dev("a:b"), None);
    }

    #[test]
    fn raw_dev_split() {
        // makedev(254, 0) and makedev(259, 65536) in the glibc encoding.
        assert_eq!(
            DevId::from_raw(0xfe00),
            DevId {
                major: 254,
                minor: 0
            }
        );
        let raw = nix::sys::stat::makedev(259, 65_536);
        assert_eq!(
            DevId::from_raw(raw),
            DevId {
                major: 259,
                minor: 65_536
            }
        );
    }

    #[test]
    fn partition_resolves_to_parent_disk() {
        let t = fake_sys();
        let part = DevId {
            major: 254,
            minor: 1,
        };
        assert_eq!(
            whole_disk(part, t.path()),
            Some(DevId {
                major: 254,
                minor: 0
            })
        );
    }

    #[test]
    fn whole_disk_is_itself() {
        let t = fake_sys();
        let disk = DevId {
            major: 254,
            minor: 0,
        };
        assert_eq!(whole_disk(disk, t.path()), Some(disk));
    }

    #[test]
    fn missing_entry_is_none() {
        let t = fake_sys();
        assert_eq!(
            whole_disk(
                DevId {
                    major: 0,
                    minor: 42
                },
                t.path()
            ),
            None
        );
        assert_eq!(
            whole_disk(
                DevId {
                    major: 254,
                    minor: 0
                },
                &t.path().join("nope")
            ),
            None
        );
    }

    #[test]
    fn partition_with_unreadable_parent_is_none() {
        let t = fake_sys();
        fs::remove_file(t.path().join("devices/pci0000:00/virtio1/block/vda/dev")).unwrap();
        assert_eq!(
            whole_disk(
                DevId {
                    major: 254,
                    minor: 1
                },
                t.path()
            ),
            None
        );
    }

    #[test]
    fn whole_disk_of_unstatable_or_virtual_is_none() {
        let t = fake_sys();
        assert_eq!(
            whole_disk_of(&t.path().join("does-not-exist"), t.path()),
            None
        );
        // procfs has an anonymous device number that sysfs never lists.
        assert_eq!(whole_disk_of(Path::new("/proc"), Path::new("/sys")), None);
    }
}
