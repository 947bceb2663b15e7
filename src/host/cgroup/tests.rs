//! Tests of the cgroup code on fake trees in temporary directories, plus one
//! run against the real kernel when root.

use super::*;
use std::fs;

const VDA: DevId = DevId {
    major: 254,
    minor: 0,
};

fn touch(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn cat(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// A v2 tree with io available at the root, `libgo/vm1` already made,
/// and empty control files as the kernel would provide.
fn v2_tree() -> (tempfile::TempDir, Cgroups) {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    touch(&r.join("cgroup.controllers"), "cpuset cpu io memory pids\n");
    touch(&r.join("cgroup.subtree_control"), "");
    touch(&r.join("libgo/cgroup.subtree_control"), "");
    touch(&r.join("libgo/vm1/io.max"), "");
    touch(&r.join("libgo/vm1/cgroup.procs"), "");
    let cg = Cgroups::detect(r, "libgo").unwrap();
    (t, cg)
}

fn v1_tree() -> (tempfile::TempDir, Cgroups) {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("blkio");
    for (file, _) in V1_FILES {
        touch(&b.join(file), "");
        touch(&b.join("libgo/vm1").join(file), "");
    }
    touch(&b.join("libgo/vm1/cgroup.procs"), "");
    let cg = Cgroups::detect(t.path(), "libgo").unwrap();
    (t, cg)
}

#[test]
fn detect_v2_at_root() {
    let t = tempfile::tempdir().unwrap();
    touch(
        &t.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    let cg = Cgroups::detect(t.path(), "libgo").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V2);
    assert_eq!(cg.group_path("vm1"), t.path().join("libgo/vm1"));
}

#[test]
fn detect_v2_at_unified() {
    let t = tempfile::tempdir().unwrap();
    // A hybrid host whose blkio is still on v1 but io is on v2 wins v2.
    touch(&t.path().join("unified/cgroup.controllers"), "memory io\n");
    touch(&t.path().join("blkio/blkio.throttle.read_iops_device"), "");
    let cg = Cgroups::detect(t.path(), "libgo").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V2);
    assert_eq!(cg.group_path("vm1"), t.path().join("unified/libgo/vm1"));
}

#[test]
fn detect_v1() {
    let t = tempfile::tempdir().unwrap();
    // This machine: unified exists without io (only e.g. hugetlb).
    touch(&t.path().join("unified/cgroup.controllers"), "hugetlb\n");
    touch(&t.path().join("blkio/blkio.throttle.read_iops_device"), "");
    let cg = Cgroups::detect(t.path(), "libgo").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V1);
    assert_eq!(cg.group_path("vm1"), t.path().join("blkio/libgo/vm1"));
}

#[test]
fn detect_none() {
    let t = tempfile::tempdir().unwrap();
    assert!(matches!(
        Cgroups::detect(t.path(), "libgo"),
        Err(CgroupError::NoIoController { .. })
    ));
    // "iommu" or "io_x" is not "io"; blkio without throttling is not enough.
    touch(&t.path().join("cgroup.controllers"), "cpu iommu io_x\n");
    fs::create_dir_all(t.path().join("blkio")).unwrap();
    let err = Cgroups::detect(t.path(), "libgo").unwrap_err();
    assert!(matches!(err, CgroupError::NoIoController { .. }));
    assert!(err.to_string().contains(&t.path().display().to_string()));
}

#[test]
fn names_are_one_component() {
    let t = tempfile::tempdir().unwrap();
    touch(&t.path().join("cgroup.controllers"), "io\n");
    for bad in ["", ".", "..", "a/b", "/abs"] {
        assert!(matches!(
            Cgroups::detect(t.path(), bad),
            Err(CgroupError::InvalidName(_))
        ));
    }
    let cg = Cgroups::detect(t.path(), "libgo").unwrap();
    assert!(matches!(
        cg.create("../x"),
        Err(CgroupError::InvalidName(_))
    ));
    assert!(matches!(cg.remove(".."), Err(CgroupError::InvalidName(_))));
    assert!(matches!(
        cg.add_process("vm1", 0),
        Err(CgroupError::InvalidPid(0))
    ));
}

#[test]
fn create_v2_enables_io_top_down() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    touch(&r.join("cgroup.controllers"), "cpu io memory\n");
    touch(&r.join("cgroup.subtree_control"), "");
    // Parent exists (the kernel would give it cgroup.subtree_control).
    touch(&r.join("libgo/cgroup.subtree_control"), "memory\n");
    let cg = Cgroups::detect(r, "libgo").unwrap();
    let dir = cg.create("vm1").unwrap();
    assert_eq!(dir, r.join("libgo/vm1"));
    assert!(dir.is_dir());
    assert_eq!(cat(&r.join("cgroup.subtree_control")), "+io\n");
    assert_eq!(cat(&r.join("libgo/cgroup.subtree_control")), "+io\n");

    // Already enabled: untouched. Idempotent.
    fs::write(r.join("cgroup.subtree_control"), "cpu io memory\n").unwrap();
    fs::write(r.join("libgo/cgroup.subtree_control"), "io\n").unwrap();
    assert_eq!(cg.create("vm1").unwrap(), dir);
    assert_eq!(cat(&r.join("cgroup.subtree_control")), "cpu io memory\n");
    assert_eq!(cat(&r.join("libgo/cgroup.subtree_control")), "io\n");
}

#[test]
fn create_v2_missing_subtree_control_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    touch(&t.path().join("cgroup.controllers"), "io\n");
    let cg = Cgroups::detect(t.path(), "libgo").unwrap();
    let err = cg.create("vm1").unwrap_err();
    assert!(err.to_string().contains("cgroup.subtree_control"), "{err}");
}

#[test]
fn create_v1_makes_dirs_only() {
    let (t, cg) = v1_tree();
    let dir = cg.create("vm2").unwrap();
    assert_eq!(dir, t.path().join("blkio/libgo/vm2"));
    assert!(dir.is_dir());
    assert_eq!(cg.create("vm2").unwrap(), dir);
    assert!(!t.path().join("blkio/cgroup.subtree_control").exists());
}

#[test]
fn create_refuses_a_file_in_the_way() {
    let (t, cg) = v1_tree();
    touch(&t.path().join("blkio/libgo/vm3"), "");
    assert!(matches!(cg.create("vm3"), Err(CgroupError::Io { .. })));
}

#[test]
fn procs_and_add_process() {
    let (t, cg) = v2_tree();
    let procs = t.path().join("libgo/vm1/cgroup.procs");
    cg.add_process("vm1", 4242).unwrap();
    assert_eq!(cat(&procs), "4242\n");
    fs::write(&procs, "4242\n4243\n").unwrap();
    assert_eq!(cg.procs("vm1").unwrap(), vec![4242, 4243]);
    fs::write(&procs, "").unwrap();
    assert_eq!(cg.procs("vm1").unwrap(), Vec::<u32>::new());
    fs::write(&procs, "12\nx\n").unwrap();
    assert!(matches!(cg.procs("vm1"), Err(CgroupError::Parse { .. })));
    // Missing group: the error names cgroup.procs.
    let err = cg.procs("nope").unwrap_err();
    assert!(err.to_string().contains("nope/cgroup.procs"), "{err}");
}

#[test]
fn v2_set_and_read_io() {
    let (t, cg) = v2_tree();
    let io_max = t.path().join("libgo/vm1/io.max");
    let lim = IoMax {
        read_iops: Some(50),
        write_bps: Some(1_048_576),
        ..IoMax::default()
    };
    cg.set_io("vm1", VDA, &lim).unwrap();
    assert_eq!(
        cat(&io_max),
        "254:0 riops=50 wiops=max rbps=max wbps=1048576\n"
    );
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), lim);

    // What the kernel shows: its own key order, other devices listed.
    fs::write(
        &io_max,
        "8:0 rbps=1 wbps=max riops=max wiops=7\n254:0 rbps=max wbps=1048576 riops=50 wiops=max\n",
    )
    .unwrap();
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), lim);
    assert_eq!(
        cg.read_io("vm1", DevId { major: 8, minor: 0 }).unwrap(),
        IoMax {
            read_bps: Some(1),
            write_iops: Some(7),
            ..IoMax::default()
        }
    );

    cg.set_io("vm1", VDA, &IoMax::default()).unwrap();
    assert_eq!(
        cat(&io_max),
        "254:0 riops=max wiops=max rbps=max wbps=max\n"
    );
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), IoMax::default());
    // The kernel drops the line of a device with no rule.
    fs::write(&io_max, "").unwrap();
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), IoMax::default());

    fs::write(&io_max, "254:0 rbps=lots\n").unwrap();
    assert!(matches!(
        cg.read_io("vm1", VDA),
        Err(CgroupError::Parse { .. })
    ));
}

#[test]
fn v1_set_and_read_io() {
    let (t, cg) = v1_tree();
    let g = t.path().join("blkio/libgo/vm1");
    let lim = IoMax {
        read_iops: Some(50),
        write_bps: Some(1_048_576),
        ..IoMax::default()
    };
    cg.set_io("vm1", VDA, &lim).unwrap();
    assert_eq!(
        cat(&g.join("blkio.throttle.read_iops_device")),
        "254:0 50\n"
    );
    assert_eq!(
        cat(&g.join("blkio.throttle.write_iops_device")),
        "254:0 0\n"
    );
    assert_eq!(cat(&g.join("blkio.throttle.read_bps_device")), "254:0 0\n");
    assert_eq!(
        cat(&g.join("blkio.throttle.write_bps_device")),
        "254:0 1048576\n"
    );
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), lim);

    // What the kernel shows: only devices with a rule, any number of them.
    fs::write(
        g.join("blkio.throttle.read_iops_device"),
        "8:0 9\n254:0 50\n",
    )
    .unwrap();
    fs::write(g.join("blkio.throttle.write_iops_device"), "8:0 3\n").unwrap();
    fs::write(g.join("blkio.throttle.read_bps_device"), "").unwrap();
    fs::write(g.join("blkio.throttle.write_bps_device"), "254:0 1048576\n").unwrap();
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), lim);

    cg.set_io("vm1", VDA, &IoMax::default()).unwrap();
    for (file, _) in V1_FILES {
        assert_eq!(cat(&g.join(file)), "254:0 0\n", "{file}");
    }
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), IoMax::default());

    fs::write(g.join("blkio.throttle.read_bps_device"), "254:0\n").unwrap();
    let err = cg.read_io("vm1", VDA).unwrap_err();
    assert!(
        err.to_string().contains("blkio.throttle.read_bps_device"),
        "{err}"
    );
}

#[test]
fn set_io_refuses_values_that_would_not_round_trip() {
    let (t, cg) = v2_tree();
    let io_max = t.path().join("libgo/vm1/io.max");
    for lim in [
        IoMax {
            read_iops: Some(0),
            ..IoMax::default()
        },
        IoMax {
            write_bps: Some(1),
            ..IoMax::default()
        },
        IoMax {
            write_iops: Some(u64::from(u32::MAX)),
            ..IoMax::default()
        },
        IoMax {
            read_bps: Some(u64::MAX),
            ..IoMax::default()
        },
    ] {
        assert!(matches!(
            cg.set_io("vm1", VDA, &lim),
            Err(CgroupError::InvalidLimit { .. })
        ));
    }
    assert_eq!(cat(&io_max), "");
    let big = IoMax {
        read_bps: Some(u64::MAX - 1),
        write_iops: Some(u64::from(u32::MAX) - 1),
        ..IoMax::default()
    };
    cg.set_io("vm1", VDA, &big).unwrap();
    assert_eq!(cg.read_io("vm1", VDA).unwrap(), big);
}

#[test]
fn missing_control_file_is_not_created() {
    let (t, cg) = v2_tree();
    fs::remove_file(t.path().join("libgo/vm1/io.max")).unwrap();
    let err = cg.set_io("vm1", VDA, &IoMax::default()).unwrap_err();
    assert!(err.to_string().contains("io.max"), "{err}");
    assert!(!t.path().join("libgo/vm1/io.max").exists());
}

#[test]
fn remove_group() {
    let t = tempfile::tempdir().unwrap();
    touch(&t.path().join("blkio/blkio.throttle.read_iops_device"), "");
    let cg = Cgroups::detect(t.path(), "libgo").unwrap();
    let dir = cg.create("vm1").unwrap();
    cg.remove("vm1").unwrap();
    assert!(!dir.exists());
    cg.remove("vm1").unwrap();
    // Something inside (on a real cgroupfs: processes or child groups).
    fs::create_dir_all(dir.join("child")).unwrap();
    assert!(cg.remove("vm1").is_err());
}

/// On this host's real cgroupfs, as root. Cleans up in Drop.
#[test]
fn real_kernel() {
    use crate::host::blockdev::whole_disk_of;
    use std::process::{Child, Command};

    struct Guard {
        cg: Cgroups,
        name: &'static str,
        child: Option<Child>,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            for _ in 0..50 {
                match self.cg.remove(self.name) {
                    Err(CgroupError::Busy { .. }) => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
            if let Some(parent) = self.cg.group_path(self.name).parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }

    if !nix::unistd::geteuid().is_root() {
        eprintln!("real_kernel: skipped, needs root");
        return;
    }
    let root = Path::new("/sys/fs/cgroup");
    let parent = format!("libgo-test-{}", std::process::id());
    let cg = Cgroups::detect(root, &parent).unwrap();
    eprintln!(
        "real_kernel: {:?} at {}",
        cg.version(),
        cg.hierarchy.display()
    );
    let mut g = Guard {
        cg,
        name: "vm1",
        child: None,
    };
    let parent_dir = g.cg.hierarchy.join(&parent);

    let dir = g.cg.create(g.name).unwrap();
    assert!(dir.is_dir());
    assert_eq!(g.cg.create(g.name).unwrap(), dir);

    let child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    g.child = Some(child);
    g.cg.add_process(g.name, pid).unwrap();
    assert!(g.cg.procs(g.name).unwrap().contains(&pid));
    assert!(matches!(g.cg.remove(g.name), Err(CgroupError::Busy { .. })));

    // /tmp is on a disk here; hosts with a tmpfs /tmp fall back to the
    // source tree's filesystem.
    let dev = whole_disk_of(Path::new("/tmp"), Path::new("/sys"))
        .or_else(|| whole_disk_of(Path::new(env!("CARGO_MANIFEST_DIR")), Path::new("/sys")))
        .expect("neither /tmp nor the source tree is on a block device sysfs knows");
    eprintln!("real_kernel: disk {dev}");

    let lim = IoMax {
        read_iops: Some(50),
        write_bps: Some(1_048_576),
        ..IoMax::default()
    };
    g.cg.set_io(g.name, dev, &lim).unwrap();
    assert_eq!(g.cg.read_io(g.name, dev).unwrap(), lim);
    let show = |g: &Guard| {
        let files: Vec<&str> = match g.cg.version() {
            CgroupVersion::V1 => V1_FILES.iter().map(|(f, _)| *f).collect(),
            CgroupVersion::V2 => vec!["io.max"],
        };
        for f in files {
            let p = g.cg.group_path(g.name).join(f);
            eprintln!("real_kernel: {} = {:?}", p.display(), cat(&p));
        }
    };
    show(&g);

    g.cg.set_io(g.name, dev, &IoMax::default()).unwrap();
    assert_eq!(g.cg.read_io(g.name, dev).unwrap(), IoMax::default());
    show(&g);

    let mut child = g.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    g.cg.remove(g.name).unwrap();
    assert!(!dir.exists());
    fs::remove_dir(&parent_dir).unwrap();
    assert!(!parent_dir.exists());
}
