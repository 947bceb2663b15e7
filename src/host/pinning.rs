//! Thread CPU affinity: pinning a process's threads with sched_setaffinity
//! and reading back what is in force from /proc.

use std::path::Path;

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("core {0} is beyond what this host can address")]
    CoreOutOfRange(u32),
    #[error("sched_setaffinity on thread {tid}: {source}")]
    Set { tid: u32, source: nix::Error },
}

/// Restricts thread `tid` to `cores`.
pub fn pin_thread(tid: u32, cores: &[u32]) -> Result<(), PinError> {
    let mut set = CpuSet::new();
    for &c in cores {
        set.set(c as usize)
            .map_err(|_| PinError::CoreOutOfRange(c))?;
    }
    let pid = Pid::from_raw(i32::try_from(tid).map_err(|_| PinError::CoreOutOfRange(0))?);
    sched_setaffinity(pid, &set).map_err(|source| PinError::Set { tid, source })
}

/// The thread ids of process `pid` (`<proc>/<pid>/task`).
pub fn threads(proc: &Path, pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir(proc.join(pid.to_string()).join("task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// `Cpus_allowed_list` of a thread, e.g. "0-1" or "3".
pub fn allowed_list(proc: &Path, pid: u32, tid: u32) -> Option<String> {
    let status = std::fs::read_to_string(
        proc.join(pid.to_string())
            .join("task")
            .join(tid.to_string())
            .join("status"),
    )
    .ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// Formats cores as a kernel-style list: [0,1,2,5] -> "0-2,5".
pub fn format_list(cores: &[u32]) -> String {
    let mut sorted = cores.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Parses a kernel CPU list (`/sys/devices/system/cpu/online`: `0-3,6`).
pub fn parse_cpu_list(sysfs_online: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in sysfs_online.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_formatted_like_the_kernel() {
        assert_eq!(format_list(&[0, 1, 2, 5]), "0-2,5");
        assert_eq!(format_list(&[3]), "3");
        assert_eq!(format_list(&[1, 0]), "0-1");
        assert_eq!(format_list(&[]), "");
    }

    #[test]
    fn pinning_a_real_thread_shows_in_proc() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let proc = Path::new("/proc");
        let tids = threads(proc, pid);
        assert_eq!(tids, vec![pid]);
        pin_thread(pid, &[0]).unwrap();
        assert_eq!(allowed_list(proc, pid, pid).as_deref(), Some("0"));
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let all = parse_cpu_list(&online);
        pin_thread(pid, &all).unwrap();
        assert_eq!(allowed_list(proc, pid, pid), Some(format_list(&all)));
        assert!(matches!(
            pin_thread(pid, &[100_000]),
            Err(PinError::CoreOutOfRange(_))
        ));
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list("0\n"), vec![0]);
    }
}
