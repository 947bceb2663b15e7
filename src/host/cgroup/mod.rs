//! Per-VM cgroups for disk I/O limits, on cgroup v2 (`io.max`) or on cgroup
//! v1 (`blkio.throttle.*`).
//!
//! The cgroup mount root is a parameter (normally `/sys/fs/cgroup`) so tests
//! can run on a fake tree. In a fake tree the control files (`cgroup.procs`,
//! `io.max`, ...) do not appear by themselves after `mkdir`: control files are
//! only ever opened for writing, never created, because on cgroupfs a missing
//! control file means a missing controller and creating it is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::host::blockdev::DevId;

/// Which cgroup hierarchy carries the I/O controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Limits in force for one device; None = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoMax {
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup hierarchy with the io controller under {}: no cgroup.controllers or \
         unified/cgroup.controllers listing io, no blkio/blkio.throttle.read_iops_device",
        root.display()
    )]
    NoIoController { root: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot parse {line:?}", path.display())]
    Parse { path: PathBuf, line: String },
    #[error("cannot remove {}: it still holds processes or child groups", path.display())]
    Busy { path: PathBuf },
    #[error("invalid cgroup name {0:?}: must be one non-empty path component, not . or ..")]
    InvalidName(String),
    #[error("invalid pid {0}: 0 would move the writer itself")]
    InvalidPid(u32),
    #[error("{field} = {value} for {dev} is out of range ({reason})")]
    InvalidLimit {
        dev: DevId,
        field: &'static str,
        value: u64,
        reason: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The v1 throttle file for each limit, in the order they are written.
const V1_FILES: [(&str, Field); 4] = [
    ("blkio.throttle.read_iops_device", Field::ReadIops),
    ("blkio.throttle.write_iops_device", Field::WriteIops),
    ("blkio.throttle.read_bps_device", Field::ReadBps),
    ("blkio.throttle.write_bps_device", Field::WriteBps),
];

#[derive(Debug, Clone, Copy)]
enum Field {
    ReadIops,
    WriteIops,
    ReadBps,
    WriteBps,
}

impl Field {
    const ALL: [Field; 4] = [
        Field::ReadIops,
        Field::WriteIops,
        Field::ReadBps,
        Field::WriteBps,
    ];

    /// The io.max key.
    fn v2_key(self) -> &'static str {
        match self {
            Field::ReadIops => "riops",
            Field::WriteIops => "wiops",
            Field::ReadBps => "rbps",
            Field::WriteBps => "wbps",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::ReadIops => "read_iops",
            Field::WriteIops => "write_iops",
            Field::ReadBps => "read_bps",
            Field::WriteBps => "write_bps",
        }
    }

    fn is_iops(self) -> bool {
        matches!(self, Field::ReadIops | Field::WriteIops)
    }

    fn get(self, m: &IoMax) -> Option<u64> {
        match self {
            Field::ReadIops => m.read_iops,
            Field::WriteIops => m.write_iops,
            Field::ReadBps => m.read_bps,
            Field::WriteBps => m.write_bps,
        }
    }

    fn set(self, m: &mut IoMax, v: Option<u64>) {
        match self {
            Field::ReadIops => m.read_iops = v,
            Field::WriteIops => m.write_iops = v,
            Field::ReadBps => m.read_bps = v,
            Field::WriteBps => m.write_bps = v,
        }
    }
}

/// The I/O-capable cgroup hierarchy of this host and the directory under it
/// where per-VM groups live (`<hierarchy>/<parent>/<name>`).
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: CgroupVersion,
    /// The mount point of the hierarchy with the io controller.
    hierarchy: PathBuf,
    /// One path component under `hierarchy`.
    parent: String,
}

/// One path component that cannot escape its directory.
fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(CgroupError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// Reads a file; Ok(None) when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Writes `line` to an existing control file with one write() call. Never
/// creates the file (see the module doc).
fn write_control(path: &Path, line: &str) -> Result<(), CgroupError> {
    tracing::debug!(path = %path.display(), line = line.trim_end(), "cgroup write");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    let n = f.write(line.as_bytes()).map_err(io_err(path))?;
    if n != line.len() {
        return Err(CgroupError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", line.len()),
            ),
        });
    }
    Ok(())
}

/// Whether a whitespace-separated controller list names `io`.
fn lists_io(text: &str) -> bool {
    text.split_whitespace().any(|c| c == "io")
}

/// mkdir that accepts an existing directory.
fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

impl Cgroups {
    /// Detects the hierarchy that has the io controller under `root`
    /// (normally /sys/fs/cgroup): `root/cgroup.controllers` listing `io` ->
    /// v2 at root; `root/unified/cgroup.controllers` listing `io` -> v2 at
    /// root/unified; `root/blkio` with `blkio.throttle.read_iops_device` -> v1
    /// at root/blkio. Else Err(NoIoController). `parent` is one path
    /// component (e.g. "libgo").
    pub fn detect(root: &Path, parent: &str) -> Result<Cgroups, CgroupError> {
        check_name(parent)?;
        let found = |version, hierarchy: PathBuf| {
            tracing::debug!(?version, hierarchy = %hierarchy.display(), "cgroup io hierarchy");
            Ok(Cgroups {
                version,
                hierarchy,
                parent: parent.to_owned(),
            })
        };
        for dir in [root.to_path_buf(), root.join("unified")] {
            if let Some(text) = read_optional(&dir.join("cgroup.controllers"))? {
                if lists_io(&text) {
                    return found(CgroupVersion::V2, dir);
                }
            }
        }
        let blkio = root.join("blkio");
        if blkio.join("blkio.throttle.read_iops_device").is_file() {
            return found(CgroupVersion::V1, blkio);
        }
        Err(CgroupError::NoIoController {
            root: root.to_path_buf(),
        })
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// `<hierarchy>/<parent>/<name>`. The name is not checked here; every
    /// operation that touches the tree refuses names that are not one plain
    /// path component.
    pub fn group_path(&self, name: &str) -> PathBuf {
        self.hierarchy.join(&self.parent).join(name)
    }

    fn checked_group(&self, name: &str) -> Result<PathBuf, CgroupError> {
        check_name(name)?;
        Ok(self.group_path(name))
    }

    /// Adds `+io` to `dir/cgroup.subtree_control` unless already listed.
    fn enable_io(dir: &Path) -> Result<(), CgroupError> {
        let path = dir.join("cgroup.subtree_control");
        if lists_io(&read(&path)?) {
            return Ok(());
        }
        write_control(&path, "+io\n")
    }

    /// Creates the group (idempotent) and returns its directory. On v2,
    /// first enables `+io` in `cgroup.subtree_control` of the hierarchy root
    /// and of `<parent>` (skipped where already enabled).
    pub fn create(&self, name: &str) -> Result<PathBuf, CgroupError> {
        let group = self.checked_group(name)?;
        let parent = self.hierarchy.join(&self.parent);
        match self.version {
            CgroupVersion::V2 => {
                Self::enable_io(&self.hierarchy)?;
                mkdir(&parent)?;
                Self::enable_io(&parent)?;
            }
            CgroupVersion::V1 => mkdir(&parent)?,
        }
        mkdir(&group)?;
        Ok(group)
    }

    /// Moves a whole process (all its threads) into the group by writing
    /// its pid to `cgroup.procs`.
    pub fn add_process(&self, name: &str, pid: u32) -> Result<(), CgroupError> {
        if pid == 0 {
            return Err(CgroupError::InvalidPid(pid));
        }
        let path = self.checked_group(name)?.join("cgroup.procs");
        write_control(&path, &format!("{pid}\n"))
    }

    /// Pids in the group (`cgroup.procs`).
    pub fn procs(&self, name: &str) -> Result<Vec<u32>, CgroupError> {
        let path = self.checked_group(name)?.join("cgroup.procs");
        let text = read(&path)?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.parse().map_err(|_| CgroupError::Parse {
                    path: path.clone(),
                    line: l.to_owned(),
                })
            })
            .collect()
    }

    /// Refuses values the kernel would store as something else (so that
    /// `read_io` gives back what was set): 0 means "no limit" on v1 and is
    /// refused on v2; 1 is refused by v2 on some kernels (4.18 to 6.9);
    /// iops are clamped to u32::MAX, which then reads back as unlimited;
    /// u64::MAX bytes/s is "max".
    fn validate(dev: DevId, limits: &IoMax) -> Result<(), CgroupError> {
        for field in Field::ALL {
            let Some(value) = field.get(limits) else {
                continue;
            };
            let bad = |reason| {
                Err(CgroupError::InvalidLimit {
                    dev,
                    field: field.name(),
                    value,
                    reason,
                })
            };
            if value < 2 {
                return bad("must be at least 2; use None for no limit");
            }
            if field.is_iops() && value >= u64::from(u32::MAX) {
                return bad("iops must be below 4294967295");
            }
            if value == u64::MAX {
                return bad("use None for no limit");
            }
        }
        Ok(())
    }

    /// Sets the limits for `dev` (a whole disk, see
    /// [`crate::host::blockdev::whole_disk_of`]). v1: writes "MAJ:MIN N" to the
    /// four `blkio.throttle.*_device` files, N = 0 (rule removed) for None;
    /// the four writes are not atomic, so on error some may have been applied.
    /// v2: writes one line "MAJ:MIN riops=N wiops=N rbps=N wbps=N" to
    /// `io.max`, "max" for None.
    pub fn set_io(&self, name: &str, dev: DevId, limits: &IoMax) -> Result<(), CgroupError> {
        Self::validate(dev, limits)?;
        let group = self.checked_group(name)?;
        match self.version {
            CgroupVersion::V1 => {
                for (file, field) in V1_FILES {
                    let n = field.get(limits).unwrap_or(0);
                    write_control(&group.join(file), &format!("{dev} {n}\n"))?;
                }
                Ok(())
            }
            CgroupVersion::V2 => {
                let mut line = dev.to_string();
                for field in Field::ALL {
                    match field.get(limits) {
                        Some(n) => line.push_str(&format!(" {}={n}", field.v2_key())),
                        None => line.push_str(&format!(" {}=max", field.v2_key())),
                    }
                }
                line.push('\n');
                write_control(&group.join("io.max"), &line)
            }
        }
    }

    /// Reads back what is in force for `dev`. A device with no rule gives
    /// `IoMax::default()`.
    pub fn read_io(&self, name: &str, dev: DevId) -> Result<IoMax, CgroupError> {
        let group = self.checked_group(name)?;
        let key = dev.to_string();
        let mut out = IoMax::default();
        match self.version {
            CgroupVersion::V1 => {
                for (file, field) in V1_FILES {
                    let path = group.join(file);
                    let text = read(&path)?;
                    for line in text.lines() {
                        let mut words = line.split_whitespace();
                        if words.next() != Some(key.as_str()) {
                            continue;
                        }
                        let bad = || CgroupError::Parse {
                            path: path.clone(),
                            line: line.to_owned(),
                        };
                        let n: u64 = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
                        if words.next().is_some() {
                            return Err(bad());
                        }
                        // The kernel never lists 0 (no rule); a fake tree may.
                        field.set(&mut out, (n != 0).then_some(n));
                    }
                }
            }
            CgroupVersion::V2 => {
                let path = group.join("io.max");
                let text = read(&path)?;
                for line in text.lines() {
                    let mut words = line.split_whitespace();
                    if words.next() != Some(key.as_str()) {
                        continue;
                    }
                    let bad = || CgroupError::Parse {
                        path: path.clone(),
                        line: line.to_owned(),
                    };
                    for word in words {
                        let (k, v) = word.split_once('=').ok_or_else(bad)?;
                        let Some(field) = Field::ALL.into_iter().find(|f| f.v2_key() == k) else {
                            // Keys a future kernel may add.
                            continue;
                        };
                        let v = match v {
                            "max" => None,
                            n => Some(n.parse::<u64>().map_err(|_| bad())?),
                        };
                        field.set(&mut out, v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes the group (rmdir). Ok if it does not exist; Err(Busy) while it
    /// still holds processes (or child groups).
    pub fn remove(&self, name: &str) -> Result<(), CgroupError> {
        let group = self.checked_group(name)?;
        match std::fs::remove_dir(&group) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                Err(CgroupError::Busy { path: group })
            }
            Err(e) => Err(io_err(&group)(e)),
        }
    }
}

#[cfg(test)]
mod tests;
