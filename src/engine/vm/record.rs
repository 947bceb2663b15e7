//! The VM record the agent persists and the checks of its fields.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::error::{EngineError, Result};
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
    /// `qcow2`, or `raw` for a VM on a raw volume or LUN (`Direct`).
    #[serde(default = "qcow2")]
    pub disk_format: String,
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
    /// A display device (VGA, VNC on a Unix socket in the run directory).
    #[serde(default)]
    pub display: bool,
    /// What the seed was made from (absent for VMs made before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_config: Option<crate::model::CloudInit>,
    /// The group of the VM's files and of its QEMU (from the private range
    /// `qemu_gid_base`); given at create, or at the first start of a VM
    /// made before QEMU was confined.
    #[serde(default)]
    pub qemu_gid: Option<u32>,
    /// The snapshot the disk last came from (taken or reverted to): the
    /// parent of the next one.
    #[serde(default)]
    pub current_snapshot: Option<String>,
    /// Extra disks, in port order.
    #[serde(default)]
    pub disks: Vec<DiskRecord>,
    pub created_at: String,
    pub updated_at: String,
}

/// Where an attach or detach stands: a step cut by a stop of the daemon is
/// finished (detach) or undone (attach) at the next start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    Attaching,
    Attached,
    Detaching { delete_volume: bool },
}

/// An extra disk as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskRecord {
    pub name: String,
    pub pool: String,
    pub volume: String,
    /// The volume's file.
    pub path: PathBuf,
    pub format: String,
    pub read_only: bool,
    pub io_limits: Option<IoLimits>,
    /// The volume was made for this disk.
    pub owned: bool,
    pub state: DiskState,
}

fn qcow2() -> String {
    "qcow2".into()
}

impl VmRecord {
    /// Whether the root disk can hold internal snapshots.
    pub fn snapshots_possible(&self) -> bool {
        self.disk_format == "qcow2"
    }

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
            display: self.display,
            screenshot: self
                .display
                .then(|| format!("/api/v1/vms/{}/screenshot", self.id)),
            stale: false,
            pid,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
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

/// The sizes a VM may have on this host (from the configuration).
pub struct Bounds {
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    pub max_disk_gib: u64,
}

impl Bounds {
    pub fn of(cfg: &crate::config::Config) -> Bounds {
        Bounds {
            max_vcpus: cfg.max_vcpus,
            max_memory_mib: cfg.max_memory_mib,
            max_disk_gib: cfg.max_disk_gib,
        }
    }

    /// The one check of VM sizes: creates, templates and updates use it
    /// for whichever of the three they carry.
    pub fn check(
        &self,
        vcpus: Option<u32>,
        memory: Option<u64>,
        disk_size: Option<u64>,
    ) -> Result<()> {
        let invalid = |m: String| Err(EngineError::Invalid(format!("Invalid parameter: {m}")));
        if vcpus.is_some_and(|v| v == 0 || v > self.max_vcpus) {
            return invalid(format!("vcpus must be between 1 and {}.", self.max_vcpus));
        }
        if memory.is_some_and(|m| !(MIN_MEMORY_MIB..=self.max_memory_mib).contains(&m)) {
            return invalid(format!(
                "memory must be between {MIN_MEMORY_MIB} and {} MiB.",
                self.max_memory_mib
            ));
        }
        if disk_size.is_some_and(|d| d == 0 || d > self.max_disk_gib) {
            return invalid(format!(
                "disk_size must be between 1 and {} GiB.",
                self.max_disk_gib
            ));
        }
        Ok(())
    }
}

/// The smallest memory a VM may have (MiB).
pub const MIN_MEMORY_MIB: u64 = 16;

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
    pub cloud_init: Option<crate::model::CloudInit>,
    pub template: Option<String>,
    /// A display device (`VmSpec::display`).
    pub display: bool,
}

/// cloud-init user data longer than this (in characters) is refused.
pub const MAX_USER_DATA: usize = 64 * 1024;

/// Field checks that need no I/O.
pub fn validate_create(req: &CreateSpec, b: &Bounds) -> Result<()> {
    let invalid = |m: String| Err(EngineError::Invalid(format!("Invalid parameter: {m}")));
    if let Some(name) = &req.name {
        validate_name(name)?;
    }
    b.check(Some(req.vcpus), Some(req.memory), Some(req.disk_size))?;
    if req.base_image.is_empty() {
        return invalid("base_image must not be empty.".into());
    }
    validate_tags(&req.tags)?;
    if let Some(l) = &req.io_limits {
        validate_io_limits(l)?;
    }
    if let Some(boot) = &req.boot {
        if let Some(c) = &boot.cmdline {
            if c.chars().count() > 4096 || c.contains('\0') {
                return invalid(
                    "boot.cmdline must be at most 4096 characters, without NUL.".into(),
                );
            }
        }
    }
    if let Some(c) = &req.cloud_init {
        validate_cloud_init(c)?;
    }
    Ok(())
}

/// Each file of a seed is at most `MAX_USER_DATA` characters.
pub fn validate_cloud_init(c: &crate::model::CloudInit) -> Result<()> {
    let too_long = |what: &str| {
        Err(EngineError::Invalid(format!(
            "Invalid parameter: {what} must be at most {MAX_USER_DATA} characters."
        )))
    };
    if c.user_data
        .as_ref()
        .is_some_and(|u| u.chars().count() > MAX_USER_DATA)
    {
        return too_long("user_data");
    }
    if c.meta_data_file("", "").chars().count() > MAX_USER_DATA {
        return too_long("cloud_init.meta_data");
    }
    if c.network_config_file()
        .is_some_and(|n| n.chars().count() > MAX_USER_DATA)
    {
        return too_long("cloud_init.network_config");
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

/// At most 32 tags of 1 to 63 characters, none a control character or ','.
pub fn validate_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 32 {
        return Err(EngineError::Invalid(
            "Invalid parameter: at most 32 tags.".into(),
        ));
    }
    if let Some(tag) = tags.iter().find(|t| {
        t.is_empty() || t.chars().count() > 63 || t.chars().any(|c| c.is_control() || c == ',')
    }) {
        return Err(EngineError::Invalid(format!(
            "Invalid parameter: tag {tag:?} must be 1 to 63 printable characters without ','."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            cloud_init: None,
            display: false,
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
        assert!(bad(|r| r.cloud_init = Some(crate::model::CloudInit {
            user_data: Some("x".repeat(MAX_USER_DATA + 1)),
            ..Default::default()
        })));
        // Lengths are in characters, as the OpenAPI document counts them.
        assert!(!bad(|r| r.cloud_init = Some(crate::model::CloudInit {
            user_data: Some("é".repeat(MAX_USER_DATA)),
            ..Default::default()
        })));
        assert!(!bad(|r| r.tags = vec!["é".repeat(63)]));
        assert!(bad(|r| r.tags = vec!["é".repeat(64)]));
        assert!(bad(|r| r.tags = vec!["a\u{85}b".into()]));
    }
}
