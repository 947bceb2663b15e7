//! cloud-init NoCloud seed: an ISO 9660 volume labelled `cidata` holding
//! `meta-data`, `user-data` and, when given, `network-config`, built with
//! genisoimage.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("writing the seed files: {0}")]
    Io(#[from] std::io::Error),
    #[error("genisoimage is not installed (apt-get install genisoimage)")]
    Missing,
    #[error("genisoimage failed: {0}")]
    Failed(String),
}

/// The files of a seed.
pub struct Seed<'a> {
    pub meta_data: &'a str,
    pub user_data: &'a str,
    pub network_config: Option<&'a str>,
}

/// Writes `dest` (an ISO) with the given instance id, hostname and user data.
pub async fn build_seed(
    dest: &Path,
    instance_id: &str,
    hostname: &str,
    user_data: &str,
) -> Result<(), SeedError> {
    let meta_data = format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n");
    write_seed(
        dest,
        &Seed {
            meta_data: &meta_data,
            user_data,
            network_config: None,
        },
    )
    .await
}

/// Writes `dest` (an ISO) with the given files. The ISO is made beside it
/// and renamed over it, so a QEMU holding the old one keeps reading it.
pub async fn write_seed(dest: &Path, seed: &Seed<'_>) -> Result<(), SeedError> {
    let staging = dest.with_extension("d");
    let fresh = dest.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    std::fs::write(staging.join("meta-data"), seed.meta_data)?;
    std::fs::write(staging.join("user-data"), seed.user_data)?;
    let mut files = vec![staging.join("user-data"), staging.join("meta-data")];
    if let Some(n) = seed.network_config {
        std::fs::write(staging.join("network-config"), n)?;
        files.push(staging.join("network-config"));
    }
    let out = tokio::process::Command::new("genisoimage")
        .arg("-quiet")
        .arg("-output")
        .arg(&fresh)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .args(&files)
        .output()
        .await;
    let _ = std::fs::remove_dir_all(&staging);
    let out = match out {
        Ok(o) if o.status.success() => {
            std::fs::rename(&fresh, dest)?;
            Ok(o)
        }
        other => {
            let _ = std::fs::remove_file(&fresh);
            other
        }
    };
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SeedError::Missing),
        Err(e) => Err(SeedError::Io(e)),
        Ok(o) if !o.status.success() => Err(SeedError::Failed(
            String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_seed_is_an_iso_labelled_cidata_with_the_user_data() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("cidata.iso");
        build_seed(
            &iso,
            "i-1",
            "web-1",
            "#cloud-config\nruncmd: [echo hello-seed]\n",
        )
        .await
        .unwrap();
        let bytes = std::fs::read(&iso).unwrap();
        // The primary volume descriptor at 32 KiB carries the label.
        assert_eq!(&bytes[32768 + 1..32768 + 6], b"CD001");
        assert_eq!(&bytes[32768 + 40..32768 + 46], b"cidata");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("hello-seed") && text.contains("local-hostname: web-1"));
        assert!(!dir.path().join("cidata.d").exists());
    }
}
