//! Disk images through `qemu-img`: inspect, clone (linked or full), resize.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ImgError {
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("qemu-img {op} failed: {stderr}")]
    Failed { op: &'static str, stderr: String },
    #[error("qemu-img info gave unreadable output: {0}")]
    Parse(String),
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    #[serde(rename = "backing-filename", default)]
    pub backing_file: Option<String>,
    /// Internal snapshots (qcow2), oldest first.
    #[serde(default)]
    pub snapshots: Vec<InternalSnapshot>,
}

/// An internal snapshot of a qcow2 image, as `qemu-img info` shows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct InternalSnapshot {
    pub name: String,
    /// Bytes of guest memory and device state saved with it (0: disk only).
    #[serde(rename = "vm-state-size", default)]
    pub vm_state_size: u64,
    /// When it was taken, seconds since the epoch.
    #[serde(rename = "date-sec", default)]
    pub date_sec: i64,
}

/// `qemu-img info` answers kept per version of a file (its size and
/// modification time), so a file is asked about once until it changes.
#[derive(Default)]
pub struct InfoCache {
    seen: std::sync::Mutex<std::collections::HashMap<PathBuf, (FileStamp, ImageInfo)>>,
}

type FileStamp = (u64, std::time::SystemTime);

impl InfoCache {
    pub async fn info(&self, img: &QemuImg, path: &Path) -> Result<ImageInfo, ImgError> {
        let stamp = std::fs::metadata(path)
            .and_then(|m| Ok((m.len(), m.modified()?)))
            .ok();
        if let Some(stamp) = stamp {
            if let Some((s, info)) = crate::sync::lock(&self.seen).get(path) {
                if *s == stamp {
                    return Ok(info.clone());
                }
            }
        }
        let info = img.info(path).await?;
        if let Some(stamp) = stamp {
            crate::sync::lock(&self.seen).insert(path.to_owned(), (stamp, info.clone()));
        }
        Ok(info)
    }
}

/// One `qemu-img convert`.
#[derive(Debug, Clone)]
pub struct Convert<'a> {
    pub src: &'a Path,
    /// Given when known, so a raw file is never probed as something else.
    pub src_format: Option<&'a str>,
    pub dest: &'a Path,
    /// `qcow2`, `raw`, `vmdk`, `vdi`.
    pub format: &'a str,
    /// Further arguments: `-c`, `-o subformat=streamOptimized`, `-l NAME`.
    pub options: &'a [&'a str],
}

#[derive(Debug, Clone)]
pub struct QemuImg {
    binary: PathBuf,
}

impl QemuImg {
    pub fn new(binary: impl Into<PathBuf>) -> QemuImg {
        QemuImg {
            binary: binary.into(),
        }
    }

    async fn run(&self, op: &'static str, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, ImgError> {
        let out = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| ImgError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(ImgError::Failed {
                op,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// `qemu-img info` (with `-U`, so images in use can be inspected).
    pub async fn info(&self, image: &Path) -> Result<ImageInfo, ImgError> {
        let out = self
            .run(
                "info",
                &[
                    "info".as_ref(),
                    "-U".as_ref(),
                    "--output=json".as_ref(),
                    image.as_os_str(),
                ],
            )
            .await?;
        serde_json::from_slice(&out).map_err(|e| ImgError::Parse(e.to_string()))
    }

    /// A qcow2 overlay of `base` (whose format is `base_format`) with a
    /// virtual size of `bytes`, in one qemu-img call.
    pub async fn create_linked(
        &self,
        base: &Path,
        base_format: &str,
        dest: &Path,
        bytes: u64,
    ) -> Result<(), ImgError> {
        let size = bytes.to_string();
        self.run(
            "create",
            &[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-b".as_ref(),
                base.as_os_str(),
                "-F".as_ref(),
                base_format.as_ref(),
                dest.as_os_str(),
                size.as_ref(),
            ],
        )
        .await
        .map(|_| ())
    }

    /// A full, independent qcow2 copy of `base`.
    pub async fn copy_full(&self, base: &Path, dest: &Path) -> Result<(), ImgError> {
        self.run(
            "convert",
            &[
                "convert".as_ref(),
                "-q".as_ref(),
                "-O".as_ref(),
                "qcow2".as_ref(),
                base.as_os_str(),
                dest.as_os_str(),
            ],
        )
        .await
        .map(|_| ())
    }

    /// A full copy that reports qemu-img's own progress (`-p`) and stops,
    /// killing qemu-img, when `cancel` fires (the caller removes `dest`).
    pub async fn copy_full_progress(
        &self,
        base: &Path,
        dest: &Path,
        cancel: tokio_util::sync::CancellationToken,
        progress: impl Fn(f32),
    ) -> Result<(), ImgError> {
        let job = Convert {
            src: base,
            src_format: None,
            dest,
            format: "qcow2",
            options: &[],
        };
        self.convert(&job, cancel, progress).await
    }

    /// `qemu-img convert -p` as described by `job`, reporting qemu-img's
    /// own progress and killing it when `cancel` fires (the caller removes
    /// what it wrote).
    pub async fn convert(
        &self,
        job: &Convert<'_>,
        cancel: tokio_util::sync::CancellationToken,
        progress: impl Fn(f32),
    ) -> Result<(), ImgError> {
        use tokio::io::AsyncReadExt;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["convert", "-p"]);
        if let Some(f) = job.src_format {
            cmd.args(["-f", f]);
        }
        cmd.args(["-O", job.format]).args(job.options);
        let mut child = cmd
            .arg(job.src)
            .arg(job.dest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ImgError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| ImgError::Parse("no stdout".into()))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| ImgError::Parse("no stderr".into()))?;
        let err_task = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        let mut buf = [0u8; 512];
        let mut pending = String::new();
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = child.kill().await;
                    return Err(ImgError::Failed { op: "convert", stderr: "cancelled".into() });
                }
                n = stdout.read(&mut buf) => n.unwrap_or(0),
            };
            if n == 0 {
                break;
            }
            pending.push_str(&String::from_utf8_lossy(&buf[..n]));
            // Progress lines look like "    (42.00/100%)" ended by \r.
            while let Some(end) = pending.find(['\r', '\n']) {
                let line: String = pending.drain(..=end).collect();
                if let Some(pct) = parse_progress(&line) {
                    progress(pct);
                }
            }
        }
        let status = child.wait().await.map_err(|source| ImgError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        })?;
        let stderr = err_task.await.unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(ImgError::Failed {
                op: "convert",
                stderr: stderr.trim().to_owned(),
            })
        }
    }

    /// A new empty image of `format` (`qcow2`, `raw`) and `bytes`.
    pub async fn create(&self, dest: &Path, format: &str, bytes: u64) -> Result<(), ImgError> {
        let size = bytes.to_string();
        self.run(
            "create",
            &[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                format.as_ref(),
                dest.as_os_str(),
                size.as_ref(),
            ],
        )
        .await
        .map(|_| ())
    }

    /// Grows `image` to `bytes`.
    pub async fn resize(&self, image: &Path, bytes: u64) -> Result<(), ImgError> {
        let size = bytes.to_string();
        self.run(
            "resize",
            &[
                "resize".as_ref(),
                "-q".as_ref(),
                image.as_os_str(),
                size.as_ref(),
            ],
        )
        .await
        .map(|_| ())
    }
}

impl QemuImg {
    /// Takes an internal snapshot `tag` of a qcow2 image nobody has open.
    pub async fn snapshot_create(&self, image: &Path, tag: &str) -> Result<(), ImgError> {
        self.snapshot("snapshot create", "-c", image, tag).await
    }

    /// Puts the disk back as it was at snapshot `tag` (image not in use).
    pub async fn snapshot_apply(&self, image: &Path, tag: &str) -> Result<(), ImgError> {
        self.snapshot("snapshot apply", "-a", image, tag).await
    }

    /// Drops snapshot `tag` (image not in use).
    pub async fn snapshot_delete(&self, image: &Path, tag: &str) -> Result<(), ImgError> {
        self.snapshot("snapshot delete", "-d", image, tag).await
    }

    async fn snapshot(
        &self,
        op: &'static str,
        flag: &str,
        image: &Path,
        tag: &str,
    ) -> Result<(), ImgError> {
        self.run(
            op,
            &[
                "snapshot".as_ref(),
                flag.as_ref(),
                tag.as_ref(),
                image.as_os_str(),
            ],
        )
        .await
        .map(|_| ())
    }
}

fn parse_progress(line: &str) -> Option<f32> {
    let inner = line.trim().strip_prefix('(')?;
    inner.split('/').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (42.50/100%)\r"), Some(42.5));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100.0));
        assert_eq!(parse_progress("junk"), None);
    }

    #[tokio::test]
    async fn full_copy_reports_progress_and_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let img = QemuImg::new("qemu-img");
        let raw = dir.path().join("base.raw");
        std::fs::write(&raw, vec![1u8; 8 << 20]).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let dest = dir.path().join("copy.qcow2");
        img.copy_full_progress(
            &raw,
            &dest,
            tokio_util::sync::CancellationToken::new(),
            |p| seen.lock().unwrap().push(p),
        )
        .await
        .unwrap();
        assert_eq!(seen.lock().unwrap().last().copied(), Some(100.0));
        assert_eq!(img.info(&dest).await.unwrap().virtual_size, 8 << 20);
        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        let err = img
            .copy_full_progress(&raw, &dir.path().join("c2.qcow2"), cancel, |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cancelled"));
    }

    fn have_qemu_img() -> bool {
        std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok()
    }

    #[tokio::test]
    async fn linked_and_full_clones_grow_and_report_their_backing() {
        if !have_qemu_img() {
            panic!("qemu-img is required (apt-get install qemu-utils)");
        }
        let dir = tempfile::tempdir().unwrap();
        let img = QemuImg::new("qemu-img");
        let base = dir.path().join("base.qcow2");
        img.copy_full(&dir.path().join("missing.raw"), &base)
            .await
            .unwrap_err();
        // A 1 MiB raw base converted to qcow2.
        let raw = dir.path().join("base.raw");
        std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
        img.copy_full(&raw, &base).await.unwrap();
        let info = img.info(&base).await.unwrap();
        assert_eq!(
            (info.format.as_str(), info.virtual_size),
            ("qcow2", 1 << 20)
        );

        let linked = dir.path().join("linked.qcow2");
        img.create_linked(&base, "qcow2", &linked, 1 << 29)
            .await
            .unwrap();
        assert_eq!(img.info(&linked).await.unwrap().virtual_size, 1 << 29);
        img.resize(&linked, 1 << 30).await.unwrap();
        let info = img.info(&linked).await.unwrap();
        assert_eq!(info.virtual_size, 1 << 30);
        assert_eq!(info.backing_file.as_deref(), Some(base.to_str().unwrap()));

        let err = img.info(&dir.path().join("missing")).await.unwrap_err();
        assert!(matches!(err, ImgError::Failed { op: "info", .. }));
    }

    /// Internal snapshots: taken, listed, applied (the data comes back),
    /// deleted; an unknown tag is an error.
    #[tokio::test]
    async fn internal_snapshots_take_apply_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let img = QemuImg::new("qemu-img");
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, vec![1u8; 1 << 20]).unwrap();
        let disk = dir.path().join("d.qcow2");
        img.copy_full(&raw, &disk).await.unwrap();
        img.snapshot_create(&disk, "before").await.unwrap();
        // Change the disk's first bytes (qemu-io ships with qemu-img).
        let status = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 9 0 64k"])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        let info = img.info(&disk).await.unwrap();
        assert_eq!(info.snapshots.len(), 1, "{info:?}");
        assert_eq!(info.snapshots[0].name, "before");
        assert_eq!(info.snapshots[0].vm_state_size, 0);
        assert!(info.snapshots[0].date_sec > 0);
        let read = |img: &QemuImg| {
            let out = dir.path().join("out.raw");
            let img = img.clone();
            let disk = disk.clone();
            async move {
                img.run(
                    "convert",
                    &[
                        "convert".as_ref(),
                        "-O".as_ref(),
                        "raw".as_ref(),
                        disk.as_os_str(),
                        out.as_os_str(),
                    ],
                )
                .await
                .unwrap();
                std::fs::read(&out).unwrap()[0]
            }
        };
        assert_eq!(read(&img).await, 9);
        img.snapshot_apply(&disk, "before").await.unwrap();
        assert_eq!(read(&img).await, 1);
        assert!(img.snapshot_apply(&disk, "nope").await.is_err());
        img.snapshot_delete(&disk, "before").await.unwrap();
        assert!(img.info(&disk).await.unwrap().snapshots.is_empty());
    }
}
