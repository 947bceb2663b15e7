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
