//! The VM record the agent persists, input validation, and every lifecycle
//! rule in one place (`plan`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{EngineError, Result};
use crate::model::{BootSpec, CloneMode, CpuPinning, IoLimits, NetworkSpec, Vm, VmStatus};

/// The host tap device of a VM with tap networking (at most 15 characters).
pub fn tap_name(id: Uuid) -> String {
    format!("lg{}", &id.simple().to_string()[..12])
}

/// Direct-boot files resolved inside a pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResolvedBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
}

/// What the agent stores about a VM (one JSON document per row).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmRecord {
    pub id: Uuid,
    pub name: String,
    pub status: VmStatus,
    pub status_reason: Option<String>,
    pub vcpus: u32,
    pub memory: u64,
    pub disk_size: u64,
    pub base_image: String,
    pub base_path: PathBuf,
    pub clone: CloneMode,
    pub disk_file: PathBuf,
    pub mac_address: String,
    pub cpu_pinning: Option<CpuPinning>,
    pub io_limits: Option<IoLimits>,
    pub boot: Option<BootSpec>,
    pub boot_paths: Option<ResolvedBoot>,
    #[serde(default)]
    pub network: NetworkSpec,
    pub tags: Vec<String>,
    pub template: Option<String>,
    /// A NoCloud `cidata.iso` (user data) sits beside the disk.
    #[serde(default)]
    pub cloud_init: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl VmRecord {
    pub fn to_api(&self, node: &str, pid: Option<u32>) -> Vm {
        Vm {
            id: self.id,
            name: self.name.clone(),
            status: self.status,
            status_reason: self.status_reason.clone(),
            node: node.to_owned(),
            vcpus: self.vcpus,
            memory: self.memory,
            disk_size: self.disk_size,
            base_image: self.base_image.clone(),
            clone: self.clone,
            disk_file: self.disk_file.display().to_string(),
            mac_address: self.mac_address.clone(),
            cpu_pinning: self.cpu_pinning.clone(),
            io_limits: self.io_limits.clone(),
            boot: self.boot.clone(),
            network: self.network.clone(),
            tags: self.tags.clone(),
            template: self.template.clone(),
            cloud_init: self.cloud_init,
            pid,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// A power action or delete, as the lifecycle rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Shutdown,
    Poweroff,
    Reboot,
    Reset,
    Pause,
    Resume,
    Delete,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "stop" => Action::Stop,
            "shutdown" => Action::Shutdown,
            "poweroff" => Action::Poweroff,
            "reboot" => Action::Reboot,
            "reset" => Action::Reset,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Shutdown => "shutdown",
            Action::Poweroff => "poweroff",
            Action::Reboot => "reboot",
            Action::Reset => "reset",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Delete => "delete",
        }
    }
}

/// What to do with an action in a given state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Do the work.
    Proceed,
    /// Already in the target state: answer 200, do nothing.
    AlreadyThere(&'static str),
    /// Not possible in this state: answer 409 with this message.
    Refuse(String),
}

/// All lifecycle rules in one function.
pub fn plan(action: Action, status: VmStatus) -> Plan {
    use Action as A;
    use VmStatus as S;
    let busy = |s: S| Plan::Refuse(format!("VM is {}; try again when it settles", s.as_str()));
    match (action, status) {
        (_, s @ (S::Creating | S::Starting | S::Stopping | S::Rebooting | S::Deleting)) => busy(s),
        (A::Delete, _) => Plan::Proceed,
        (A::Start, S::Running) => Plan::AlreadyThere("VM already running."),
        (A::Start, S::Paused) => Plan::Refuse("VM is paused; resume it instead.".into()),
        (A::Start, S::Stopped | S::Crashed | S::Error) => Plan::Proceed,
        (A::Stop | A::Shutdown | A::Poweroff, S::Stopped) => {
            Plan::AlreadyThere("VM already stopped.")
        }
        // A crashed or failed VM has no process: stopping acknowledges it.
        (A::Stop | A::Poweroff, S::Crashed | S::Error) => Plan::Proceed,
        (A::Shutdown, S::Crashed | S::Error) => Plan::AlreadyThere("VM has no running process."),
        (A::Stop | A::Shutdown | A::Poweroff, S::Running | S::Paused) => Plan::Proceed,
        (A::Reboot, S::Running) => Plan::Proceed,
        (A::Reboot, _) => Plan::Refuse("VM is not running, cannot reboot.".into()),
        (A::Reset, S::Running | S::Paused) => Plan::Proceed,
        (A::Reset, _) => Plan::Refuse("VM is not running, cannot reset.".into()),
        (A::Pause, S::Paused) => Plan::AlreadyThere("VM already paused."),
        (A::Pause, S::Running) => Plan::Proceed,
        (A::Pause, _) => Plan::Refuse("VM is not running, cannot pause.".into()),
        (A::Resume, S::Running) => Plan::AlreadyThere("VM already running."),
        (A::Resume, S::Paused) => Plan::Proceed,
        (A::Resume, _) => Plan::Refuse("VM is not paused, cannot resume.".into()),
    }
}

/// Whether `s` is a DNS label: `[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && ok(&b[0])
        && ok(&b[b.len() - 1])
        && b.iter().all(|c| ok(c) || *c == b'-')
}

/// A name derived from an image file name plus a short random suffix.
pub fn generate_name(image: &str) -> String {
    let stem = std::path::Path::new(image)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("vm");
    let stem = stem.split('.').next().unwrap_or("vm");
    let mut base: String = stem
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(50);
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "vm" } else { base };
    format!("{base}-{:04x}", rand::random::<u16>())
}

/// A locally administered MAC in QEMU's 52:54:00 range.
pub fn generate_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Limits a create request is checked against.
pub struct Bounds {
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    pub max_disk_gib: u64,
}

/// Field checks that need no I/O.
/// A create request with its template applied: every field resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSpec {
    pub name: Option<String>,
    pub vcpus: u32,
    pub memory: u64,
    pub disk_size: u64,
    pub base_image: String,
    pub clone: CloneMode,
    pub cpu_pinning: Option<CpuPinning>,
    pub io_limits: Option<IoLimits>,
    pub boot: Option<BootSpec>,
    pub network: NetworkSpec,
    pub tags: Vec<String>,
    pub user_data: Option<String>,
    pub template: Option<String>,
}

/// cloud-init user data larger than this is refused.
pub const MAX_USER_DATA: usize = 64 * 1024;

/// Field checks that need no I/O.
pub fn validate_create(req: &CreateSpec, b: &Bounds) -> Result<()> {
    let invalid = |m: String| Err(EngineError::Invalid(format!("Invalid parameter: {m}")));
    if let Some(name) = &req.name {
        validate_name(name)?;
    }
    if req.vcpus == 0 || req.vcpus > b.max_vcpus {
        return invalid(format!("vcpus must be between 1 and {}.", b.max_vcpus));
    }
    if req.memory < 16 || req.memory > b.max_memory_mib {
        return invalid(format!(
            "memory must be between 16 and {} MiB.",
            b.max_memory_mib
        ));
    }
    if req.disk_size == 0 || req.disk_size > b.max_disk_gib {
        return invalid(format!(
            "disk_size must be between 1 and {} GiB.",
            b.max_disk_gib
        ));
    }
    if req.base_image.is_empty() {
        return invalid("base_image must not be empty.".into());
    }
    validate_tags(&req.tags)?;
    if let Some(l) = &req.io_limits {
        validate_io_limits(l)?;
    }
    if let Some(boot) = &req.boot {
        if let Some(c) = &boot.cmdline {
            if c.len() > 4096 || c.contains('\0') {
                return invalid("boot.cmdline must be at most 4096 bytes.".into());
            }
        }
    }
    if req
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > MAX_USER_DATA)
    {
        return invalid(format!("user_data must be at most {MAX_USER_DATA} bytes."));
    }
    Ok(())
}

/// A resource name: a DNS label that is not a UUID.
pub fn validate_name(name: &str) -> Result<()> {
    if !is_dns_label(name) {
        return Err(EngineError::Invalid(format!(
            "Invalid parameter: name {name:?} must be a DNS label (lowercase letters, digits and '-', at most 63)."
        )));
    }
    if Uuid::parse_str(name).is_ok() {
        return Err(EngineError::Invalid(
            "Invalid parameter: name must not be a UUID.".into(),
        ));
    }
    Ok(())
}

/// I/O limits are 0 (none) or at least 2: cgroups treat 1 inconsistently.
pub fn validate_io_limits(l: &IoLimits) -> Result<()> {
    let fields = [
        ("iops", l.iops),
        ("read_iops", l.read_iops),
        ("write_iops", l.write_iops),
        ("read_bps", l.read_bps),
        ("write_bps", l.write_bps),
    ];
    for (name, v) in fields {
        match v {
            Some(1) => {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: io_limits.{name} must be 0 (no limit) or at least 2."
                )))
            }
            Some(v) if v >= u32::MAX as u64 && name.ends_with("iops") => {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: io_limits.{name} must be below {}.",
                    u32::MAX
                )))
            }
            Some(v) if v >= i64::MAX as u64 => {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: io_limits.{name} is too large."
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// At most 32 tags of 1 to 63 printable characters without ','.
pub fn validate_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 32 {
        return Err(EngineError::Invalid(
            "Invalid parameter: at most 32 tags.".into(),
        ));
    }
    if let Some(tag) = tags
        .iter()
        .find(|t| t.is_empty() || t.len() > 63 || t.chars().any(|c| c.is_control() || c == ','))
    {
        return Err(EngineError::Invalid(format!(
            "Invalid parameter: tag {tag:?} must be 1 to 63 printable characters without ','."
        )));
    }
    Ok(())
}

/// Cores that are online on this host (`/sys/devices/system/cpu/online`).
pub fn online_cpus(sysfs_online: &str) -> Vec<u32> {
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
    fn lifecycle_rules() {
        use Action as A;
        use VmStatus as S;
        assert_eq!(plan(A::Start, S::Stopped), Plan::Proceed);
        assert!(matches!(plan(A::Start, S::Running), Plan::AlreadyThere(_)));
        assert!(matches!(plan(A::Stop, S::Stopped), Plan::AlreadyThere(_)));
        assert!(matches!(plan(A::Pause, S::Paused), Plan::AlreadyThere(_)));
        assert!(matches!(plan(A::Resume, S::Running), Plan::AlreadyThere(_)));
        assert_eq!(
            plan(A::Reboot, S::Stopped),
            Plan::Refuse("VM is not running, cannot reboot.".into())
        );
        assert!(matches!(plan(A::Start, S::Stopping), Plan::Refuse(_)));
        assert_eq!(plan(A::Delete, S::Running), Plan::Proceed);
        assert_eq!(plan(A::Stop, S::Crashed), Plan::Proceed);
        assert!(matches!(plan(A::Reset, S::Stopped), Plan::Refuse(_)));
        assert!(matches!(plan(A::Delete, S::Deleting), Plan::Refuse(_)));
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        let n = generate_name("/pool/Ubuntu_24.04.qcow2");
        assert!(n.starts_with("ubuntu-24-"), "{n}");
        assert!(is_dns_label(&n));
        assert!(is_dns_label(&generate_name("...")));
    }

    fn req() -> CreateSpec {
        CreateSpec {
            name: None,
            vcpus: 1,
            memory: 128,
            disk_size: 1,
            base_image: "base.qcow2".into(),
            clone: CloneMode::Linked,
            cpu_pinning: None,
            io_limits: None,
            boot: None,
            network: NetworkSpec::default(),
            tags: vec![],
            user_data: None,
            template: None,
        }
    }

    #[test]
    fn create_bounds() {
        let b = Bounds {
            max_vcpus: 8,
            max_memory_mib: 1024,
            max_disk_gib: 10,
        };
        assert!(validate_create(&req(), &b).is_ok());
        let bad = |f: fn(&mut CreateSpec)| {
            let mut r = req();
            f(&mut r);
            validate_create(&r, &b).is_err()
        };
        assert!(bad(|r| r.vcpus = 0));
        assert!(bad(|r| r.vcpus = 9));
        assert!(bad(|r| r.memory = 0));
        assert!(bad(|r| r.memory = 1 << 40));
        assert!(bad(|r| r.disk_size = 0));
        assert!(bad(|r| r.disk_size = 11));
        assert!(bad(|r| r.name = Some("Bad_Name".into())));
        assert!(bad(|r| r.name = Some(Uuid::new_v4().to_string())));
        assert!(bad(|r| r.tags = vec!["".into()]));
        assert!(bad(|r| r.user_data = Some("x".repeat(MAX_USER_DATA + 1))));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(online_cpus("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(online_cpus("0\n"), vec![0]);
    }
}
