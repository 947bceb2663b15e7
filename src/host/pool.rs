//! Storage pools: resolving a client's image name or path to a file that is
//! really inside a configured pool, whatever `..` or symlinks it uses.

use std::path::{Component, Path, PathBuf};

use crate::config::PoolConfig;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{what} must be an image name or an absolute path inside a storage pool: {given}")]
    OutsidePools { what: &'static str, given: String },
    #[error("{what} not found: {given}")]
    NotFound { what: &'static str, given: String },
    #[error("{what} is not a regular file: {given}")]
    NotAFile { what: &'static str, given: String },
}

/// Whether `name` can name a volume: a plain file name of letters, digits,
/// `.`, `_` and `-`, not starting with `.` or `-` (so never hidden, never
/// `..`, never an option), at most 255 bytes.
pub fn valid_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A filesystem's size, what is used and what an unprivileged writer may
/// still take, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Space {
    pub capacity: u64,
    pub allocated: u64,
    pub available: u64,
}

/// The space of the filesystem holding `dir`.
pub fn space(dir: &Path) -> std::io::Result<Space> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let unit = st.fragment_size() as u64;
    let capacity = st.blocks() as u64 * unit;
    Ok(Space {
        capacity,
        allocated: capacity.saturating_sub(st.blocks_free() as u64 * unit),
        available: st.blocks_available() as u64 * unit,
    })
}

/// Why a directory cannot hold a new pool.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceError {
    #[error("path must be an absolute path without `.` or `..`: {0}")]
    NotNormal(String),
    #[error("path must be below one of {allowed}: {given}")]
    OutsideParents { given: String, allowed: String },
    #[error("path goes through a symbolic link: {0}")]
    Symlink(String),
    #[error("path exists and is not a directory: {0}")]
    NotADirectory(String),
}

/// Checks that `given` may be a new pool's directory: absolute, normal,
/// strictly below one of `parents`, and with no symbolic link on the way
/// (so it stays where it says it is).
pub fn check_pool_dir(given: &str, parents: &[PathBuf]) -> Result<PathBuf, PlaceError> {
    let path = Path::new(given);
    let normal = path.is_absolute()
        && !given.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !given.ends_with('/')
        && !given.contains("//");
    if !normal {
        return Err(PlaceError::NotNormal(given.to_owned()));
    }
    if !parents.iter().any(|p| path.starts_with(p) && path != p) {
        return Err(PlaceError::OutsideParents {
            given: given.to_owned(),
            allowed: parents
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut at = PathBuf::new();
    for c in path.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(PlaceError::Symlink(at.display().to_string()))
            }
            Ok(m) if !m.is_dir() => {
                return Err(PlaceError::NotADirectory(at.display().to_string()))
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(path.to_owned())
}

/// Prefix of the hidden files of volumes being written.
pub const PARTIAL: &str = ".libgo-";

/// The hidden name a volume is written under.
pub fn hidden(dir: &Path, job: uuid::Uuid, name: &str) -> PathBuf {
    dir.join(format!("{PARTIAL}{}-{name}", job.simple()))
}

/// Makes a whole hidden file visible under `dest`, never over another:
/// synced, then linked (which fails if `dest` exists), then unlinked.
pub fn publish(tmp: &Path, dest: &Path) -> std::io::Result<PathBuf> {
    let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
    sync(tmp)?;
    std::fs::hard_link(tmp, dest)?;
    let _ = std::fs::remove_file(tmp);
    if let Some(dir) = dest.parent() {
        let _ = sync(dir);
    }
    Ok(dest.to_owned())
}

/// Removes the hidden files and directories interrupted writes left.
pub fn remove_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(PARTIAL) {
            continue;
        }
        let path = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match r {
            Ok(()) => {
                tracing::warn!(file = %path.display(), "removed what an interrupted write left")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a partial file")
            }
        }
    }
}

/// Removes `.` and `..` without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn inside(path: &Path, pools: &[PathBuf]) -> bool {
    pools
        .iter()
        .any(|pool| path.starts_with(pool) && path != pool)
}

/// Resolves `given` (a file name in a pool, `pool-name/file`, or an absolute
/// path) to the canonical path of an existing regular file inside a pool.
pub fn resolve(
    pools: &[PoolConfig],
    given: &str,
    what: &'static str,
) -> Result<PathBuf, PoolError> {
    let outside = || PoolError::OutsidePools {
        what,
        given: given.to_owned(),
    };
    if given.is_empty() || given.contains('\0') {
        return Err(outside());
    }
    let lexical_pools: Vec<PathBuf> = pools.iter().map(|p| normalize(&p.path)).collect();
    let given_path = Path::new(given);
    let candidates: Vec<PathBuf> = if given_path.is_absolute() {
        vec![normalize(given_path)]
    } else {
        // "pool/file" names a pool; a bare name is looked up in every pool.
        let mut c = Vec::new();
        if let Some((pool_name, rest)) = given.split_once('/') {
            if let Some(pool) = pools.iter().find(|p| p.name == pool_name) {
                c.push(normalize(&pool.path.join(rest)));
            }
        }
        c.extend(pools.iter().map(|p| normalize(&p.path.join(given_path))));
        c
    };
    if candidates.iter().any(|c| !inside(c, &lexical_pools)) {
        return Err(outside());
    }
    let Some(found) = candidates.iter().find(|c| c.exists()) else {
        return Err(PoolError::NotFound {
            what,
            given: given.to_owned(),
        });
    };
    // Follow symlinks: the real file must still be inside a (real) pool.
    let real = found.canonicalize().map_err(|_| PoolError::NotFound {
        what,
        given: given.to_owned(),
    })?;
    let real_pools: Vec<PathBuf> = pools
        .iter()
        .filter_map(|p| p.path.canonicalize().ok())
        .collect();
    if !inside(&real, &real_pools) {
        return Err(outside());
    }
    if !real.is_file() {
        return Err(PoolError::NotAFile {
            what,
            given: given.to_owned(),
        });
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Vec<PoolConfig>) {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let outside = dir.path().join("outside");
        for d in [&a, &b, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(a.join("base.qcow2"), "x").unwrap();
        std::fs::write(b.join("other.qcow2"), "x").unwrap();
        std::fs::write(outside.join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), a.join("escape")).unwrap();
        std::os::unix::fs::symlink(a.join("base.qcow2"), b.join("link-in")).unwrap();
        std::fs::create_dir(a.join("sub")).unwrap();
        let pools = vec![
            PoolConfig {
                name: "default".into(),
                path: a,
            },
            PoolConfig {
                name: "fast".into(),
                path: b,
            },
        ];
        (dir, pools)
    }

    #[test]
    fn names_and_paths_inside_pools_resolve() {
        let (dir, pools) = setup();
        let base = dir.path().join("a/base.qcow2").canonicalize().unwrap();
        assert_eq!(resolve(&pools, "base.qcow2", "image").unwrap(), base);
        assert_eq!(
            resolve(&pools, base.to_str().unwrap(), "image").unwrap(),
            base
        );
        assert!(resolve(&pools, "other.qcow2", "image").is_ok());
        assert!(resolve(&pools, "fast/other.qcow2", "image").is_ok());
        // A symlink that stays inside the pools is fine.
        assert_eq!(resolve(&pools, "link-in", "image").unwrap(), base);
    }

    #[test]
    fn volume_names_are_plain_file_names() {
        for ok in ["base.qcow2", "a", "disk_1-x.raw", "_x"] {
            assert!(valid_volume_name(ok), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in ["", ".", "..", ".hidden", "-o", "a/b", "a b", "a\0", &long] {
            assert!(!valid_volume_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn pool_dirs_stay_below_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("pools");
        std::fs::create_dir(&parent).unwrap();
        std::os::unix::fs::symlink("/etc", parent.join("link")).unwrap();
        std::fs::write(parent.join("file"), "x").unwrap();
        let parents = vec![parent.clone()];
        let p = |s: &str| format!("{}/{s}", parent.display());
        assert_eq!(check_pool_dir(&p("a"), &parents), Ok(parent.join("a")));
        assert_eq!(check_pool_dir(&p("a/b"), &parents), Ok(parent.join("a/b")));
        assert!(matches!(
            check_pool_dir(&p("../x"), &parents),
            Err(PlaceError::NotNormal(_))
        ));
        assert!(matches!(
            check_pool_dir("rel", &parents),
            Err(PlaceError::NotNormal(_))
        ));
        assert!(matches!(
            check_pool_dir(&p("a/"), &parents),
            Err(PlaceError::NotNormal(_))
        ));
        assert!(matches!(
            check_pool_dir(parent.to_str().unwrap(), &parents),
            Err(PlaceError::OutsideParents { .. })
        ));
        assert!(matches!(
            check_pool_dir("/etc/x", &parents),
            Err(PlaceError::OutsideParents { .. })
        ));
        assert!(matches!(
            check_pool_dir(&p("link/x"), &parents),
            Err(PlaceError::Symlink(_))
        ));
        assert!(matches!(
            check_pool_dir(&p("file"), &parents),
            Err(PlaceError::NotADirectory(_))
        ));
        assert!(space(&parent).unwrap().capacity > 0);
    }

    #[test]
    fn escapes_are_400_and_missing_files_404() {
        let (dir, pools) = setup();
        let out = |r: Result<PathBuf, PoolError>| matches!(r, Err(PoolError::OutsidePools { .. }));
        assert!(out(resolve(&pools, "../outside/secret", "image")));
        assert!(out(resolve(&pools, "escape", "image")));
        assert!(out(resolve(&pools, "/etc/passwd", "image")));
        let sneaky = format!("{}/a/../outside/secret", dir.path().display());
        assert!(out(resolve(&pools, &sneaky, "image")));
        assert!(out(resolve(&pools, "", "image")));
        assert!(matches!(
            resolve(&pools, "nope.qcow2", "image"),
            Err(PoolError::NotFound { .. })
        ));
        assert!(matches!(
            resolve(&pools, "sub", "image"),
            Err(PoolError::NotAFile { .. })
        ));
    }
}
