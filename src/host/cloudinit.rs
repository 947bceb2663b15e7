//! cloud-init NoCloud seed: an ISO 9660 volume labelled `cidata` holding
//! `meta-data` and `user-data`, built with genisoimage.

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

/// Writes `dest` (an ISO) with the given instance id, hostname and user data.
pub async fn build_seed(
    dest: &Path,
    instance_id: &str,
    hostname: &str,
    user_data: &str,
) -> Result<(), SeedError> {
    let staging = dest.with_extension("d");
    std::fs::create_dir_all(&staging)?;
    std::fs::write(
        staging.join("meta-data"),
        format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n"),
    )?;
    std::fs::write(staging.join("user-data"), user_data)?;
    let out = tokio::process::Command::new("genisoimage")
        .arg("-quiet")
        .arg("-output")
        .arg(dest)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(staging.join("user-data"))
        .arg(staging.join("meta-data"))
        .output()
        .await;
    let _ = std::fs::remove_dir_all(&staging);
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
