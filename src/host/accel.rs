//! Choosing KVM or TCG. `/dev/kvm` alone proves nothing: some hosts expose a
//! software KVM (kvm_pvm) on which stock kernels do not boot. KVM is chosen
//! only where the hardware modules are loaded or the CPU shows vmx/svm.

use std::path::Path;

/// Whether this host has hardware virtualization that KVM can use.
/// `root` is `/` in production; tests pass a fake tree.
pub fn hardware_kvm(root: &Path) -> bool {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        return false;
    }
    let module = |m: &str| root.join("sys/module").join(m).exists();
    if module("kvm_intel") || module("kvm_amd") {
        return true;
    }
    std::fs::read_to_string(root.join("proc/cpuinfo"))
        .map(|info| {
            info.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, content) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    #[test]
    fn software_kvm_is_not_hardware() {
        let t = tree(&[
            ("dev/kvm", ""),
            ("sys/module/kvm_pvm/x", ""),
            ("proc/cpuinfo", "flags\t: fpu sse2 hypervisor\n"),
        ]);
        assert!(!hardware_kvm(t.path()));
    }

    #[test]
    fn vmx_flag_or_module_means_kvm() {
        let t = tree(&[("dev/kvm", ""), ("proc/cpuinfo", "flags\t: fpu vmx sse2\n")]);
        assert!(hardware_kvm(t.path()));
        let t = tree(&[
            ("dev/kvm", ""),
            ("sys/module/kvm_amd/x", ""),
            ("proc/cpuinfo", ""),
        ]);
        assert!(hardware_kvm(t.path()));
        let t = tree(&[("proc/cpuinfo", "flags\t: vmx\n")]);
        assert!(!hardware_kvm(t.path()), "no /dev/kvm, no KVM");
    }
}
