//! OVA packages against the real tools: a disk made and compared with
//! `qemu-img`, the archive listed and unpacked by the system `tar` and
//! Python's `tarfile`, digests from `sha256sum`, the descriptor parsed by
//! Python's XML parser; and packages made by those tools read back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use libgo::host::ova::{read_ova, write_ova, OvaError, OvfDisk, OvfNic, OvfSystem};

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 64 MiB qcow2 with three patterned regions, and the same disk as a
/// streamOptimized VMDK.
fn disk(dir: &Path) -> (PathBuf, PathBuf) {
    let qcow = dir.join("src.qcow2");
    let vmdk = dir.join("src.vmdk");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&qcow), "64M"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "write -P 0xa5 32M 512k",
            "-c",
            "write -P 0x11 63M 1M",
            s(&qcow),
        ],
    );
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            s(&qcow),
            s(&vmdk),
        ],
    );
    (qcow, vmdk)
}

fn system() -> OvfSystem {
    OvfSystem {
        name: "web-1".into(),
        cpus: 2,
        memory_mib: 512,
        disk: OvfDisk {
            file_href: "web-1-disk1.vmdk".into(),
            file_size: 0,
            capacity: 64 << 20,
            populated_size: Some(2 << 20),
        },
        nics: vec![
            OvfNic {
                network: "default".into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
            },
            OvfNic {
                network: "storage & backup".into(),
                mac: None,
            },
        ],
        description: Some("packed by the <ova> tests".into()),
    }
}

fn pack(dir: &Path, vmdk: &Path, manifest: bool) -> PathBuf {
    let out = dir.join("web-1.ova");
    write_ova(&out, &system(), vmdk, manifest, |_, _| {}).unwrap();
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn invalid(r: Result<libgo::host::ova::ImportedOva, OvaError>) -> String {
    match r {
        Err(OvaError::Invalid(m)) => m,
        other => panic!("expected OvaError::Invalid, got {other:?}"),
    }
}

#[test]
fn tar_lists_ovf_vmdk_mf_and_sha256sum_agrees_with_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (_, vmdk) = disk(dir.path());
    let ova = pack(dir.path(), &vmdk, true);

    let listing = run("tar", &["tvf", s(&ova)]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(names, ["web-1.ovf", "web-1-disk1.vmdk", "web-1.mf"]);
    for l in &lines {
        assert!(l.starts_with("-rw-r--r-- root/root "), "{l}");
    }
    let vmdk_size = std::fs::metadata(&vmdk).unwrap().len();
    assert!(
        lines[1].split_whitespace().nth(2) == Some(vmdk_size.to_string().as_str()),
        "{}",
        lines[1]
    );

    // Unpacked by tar, the digests sha256sum computes are the manifest's.
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run("tar", &["xf", s(&ova), "-C", s(&x)]);
    let mf = std::fs::read_to_string(x.join("web-1.mf")).unwrap();
    let mut want = String::new();
    for f in ["web-1.ovf", "web-1-disk1.vmdk"] {
        let sum = run("sha256sum", &[s(&x.join(f))]);
        want.push_str(&format!(
            "SHA256({f})= {}\n",
            sum.split_whitespace().next().unwrap()
        ));
    }
    assert_eq!(mf, want);
    assert_eq!(
        std::fs::read(x.join("web-1-disk1.vmdk")).unwrap(),
        std::fs::read(&vmdk).unwrap()
    );

    // Python's tarfile sees ustar regular files, mode 0644, owned by 0,
    // the archive padded to whole 10 KiB records.
    let py = r#"
import sys, tarfile
t = tarfile.open(sys.argv[1])
for m in t.getmembers():
    assert m.isreg() and m.mode == 0o644 and m.uid == 0 and m.gid == 0, m
    print(m.name, m.size)
"#;
    let listed = run("python3", &["-c", py, s(&ova)]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert_eq!(std::fs::metadata(&ova).unwrap().len() % 10240, 0);

    // The descriptor is well-formed XML with what importers look for.
    let py = r#"
import sys, xml.dom.minidom
OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
d = xml.dom.minidom.parse(sys.argv[1])
env = d.documentElement
assert env.localName == "Envelope" and env.namespaceURI == OVF, env.tagName
def one(parent, name):
    found = [c for c in parent.childNodes if c.nodeType == c.ELEMENT_NODE and c.localName == name]
    assert len(found) == 1, (name, len(found))
    return found[0]
f = one(one(env, "References"), "File")
assert f.getAttributeNS(OVF, "href") == "web-1-disk1.vmdk"
assert f.getAttributeNS(OVF, "id") == "file1" and int(f.getAttributeNS(OVF, "size")) > 0
disk = one(one(env, "DiskSection"), "Disk")
assert disk.getAttributeNS(OVF, "capacity") == str(64 << 20)
assert disk.getAttributeNS(OVF, "capacityAllocationUnits") == "byte"
assert disk.getAttributeNS(OVF, "fileRef") == "file1"
assert disk.getAttributeNS(OVF, "format").endswith("vmdk.html#streamOptimized")
nets = [n.getAttributeNS(OVF, "name") for n in one(env, "NetworkSection").getElementsByTagNameNS(OVF, "Network")]
assert nets == ["default", "storage & backup"], nets
vs = one(env, "VirtualSystem")
assert vs.getAttributeNS(OVF, "id") == "web-1"
one(vs, "Info"); one(vs, "OperatingSystemSection")
hw = one(vs, "VirtualHardwareSection")
one(hw, "System")
types = []
for item in hw.getElementsByTagNameNS(OVF, "Item"):
    rt = item.getElementsByTagNameNS(RASD, "ResourceType")[0].firstChild.data
    types.append(rt)
    names = [c.localName for c in item.childNodes if c.nodeType == c.ELEMENT_NODE]
    assert names == sorted(names), names
assert types == ["3", "4", "5", "17", "10", "10"], types
print("ok")
"#;
    assert_eq!(
        run("python3", &["-c", py, s(&x.join("web-1.ovf"))]).trim(),
        "ok"
    );
}

#[test]
fn read_ova_gives_back_the_system_and_a_disk_identical_to_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow, vmdk) = disk(dir.path());
    let mut seen = Vec::new();
    let out = dir.path().join("web-1.ova");
    write_ova(&out, &system(), &vmdk, true, |d, t| seen.push((d, t))).unwrap();
    let ova_len = std::fs::metadata(&out).unwrap().len();
    assert_eq!(seen.last(), Some(&(ova_len, ova_len)));

    let dest = dir.path().join("import");
    std::fs::create_dir(&dest).unwrap();
    let got = read_ova(&out, &dest).unwrap();
    let mut want = system();
    want.disk.file_size = std::fs::metadata(&vmdk).unwrap().len();
    assert_eq!(got.system, want);
    assert_eq!(got.disk_path, dest.join("web-1-disk1.vmdk"));
    assert_eq!(files_in(&dest), ["web-1-disk1.vmdk"]);
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "vmdk",
            s(&qcow),
            s(&got.disk_path),
        ],
    );
    // And a disk that differs is told apart, so the comparison means something.
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x01 40M 4k", s(&qcow)],
    );
    let st = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "vmdk"])
        .args([&qcow, &got.disk_path])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1));

    // Without a manifest the package reads the same.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let bare = dir.path().join("bare.ova");
    write_ova(&bare, &system(), &vmdk, false, |_, _| {}).unwrap();
    assert_eq!(run("tar", &["tf", s(&bare)]).lines().count(), 2);
    assert_eq!(read_ova(&bare, &plain).unwrap().system, want);
}

#[test]
fn a_flipped_byte_in_the_disk_fails_the_digest_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_, vmdk) = disk(dir.path());
    let ova = pack(dir.path(), &vmdk, true);
    let mut bytes = std::fs::read(&ova).unwrap();
    // The disk's data starts after the descriptor and the disk's header.
    let ovf_len = u64::from_str_radix(
        std::str::from_utf8(&bytes[124..135])
            .unwrap()
            .trim_end_matches('\0'),
        8,
    )
    .unwrap() as usize;
    let disk_at = 512 + ovf_len.div_ceil(512) * 512 + 512;
    assert_eq!(&bytes[disk_at..disk_at + 4], b"KDMV");
    let vmdk_len = std::fs::metadata(&vmdk).unwrap().len() as usize;
    bytes[disk_at + vmdk_len / 2] ^= 0x01;
    std::fs::write(&ova, &bytes).unwrap();

    let dest = dir.path().join("import");
    std::fs::create_dir(&dest).unwrap();
    let m = invalid(read_ova(&ova, &dest));
    assert!(
        m.contains("web-1-disk1.vmdk") && m.contains("does not match the manifest"),
        "{m}"
    );
    assert!(files_in(&dest).is_empty(), "{:?}", files_in(&dest));
}

/// Builds a tar with Python's `tarfile`: `spec` lines are
/// `file NAME SOURCE`, `symlink NAME TARGET` or `dir NAME`.
fn python_tar(out: &Path, format: &str, spec: &[String]) {
    let py = r#"
import sys, tarfile, io
out, fmt = sys.argv[1], getattr(tarfile, sys.argv[2])
with tarfile.open(out, "w", format=fmt) as t:
    for line in sys.argv[3:]:
        kind, name, *rest = line.split("\t")
        if kind == "file":
            t.add(rest[0], arcname=name)
        else:
            i = tarfile.TarInfo(name)
            i.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.DIRTYPE
            if rest:
                i.linkname = rest[0]
            t.addfile(i)
"#;
    let mut args = vec!["-c", py, s(out), format];
    args.extend(spec.iter().map(String::as_str));
    run("python3", &args);
}

#[test]
fn escaping_names_links_and_a_late_descriptor_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, vmdk) = disk(dir.path());
    let ova = pack(dir.path(), &vmdk, true);
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run("tar", &["xf", s(&ova), "-C", s(&x)]);
    let ovf = x.join("web-1.ovf");
    let disk = x.join("web-1-disk1.vmdk");
    let file = |name: &str, src: &Path| format!("file\t{name}\t{}", s(src));

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                file("web-1.ovf", &ovf),
                file("../x", &ovf),
                file("web-1-disk1.vmdk", &disk),
            ],
            "\"../x\"",
        ),
        (
            vec![
                file("web-1.ovf", &ovf),
                file("web-1-disk1.vmdk/../../x", &disk),
            ],
            "plain file names",
        ),
        (
            vec![file("web-1.ovf", &ovf), file("/tmp/abs.vmdk", &disk)],
            "plain file names",
        ),
        (
            vec![
                file("web-1.ovf", &ovf),
                "symlink\tweb-1-disk1.vmdk\t/etc/passwd".into(),
            ],
            "symbolic link",
        ),
        (
            vec![file("web-1.ovf", &ovf), "dir\tsub".into()],
            "directory",
        ),
        (
            vec![file("web-1-disk1.vmdk", &disk), file("web-1.ovf", &ovf)],
            "first member",
        ),
    ];
    for (i, (spec, want)) in cases.iter().enumerate() {
        let bad = dir.path().join(format!("bad{i}.ova"));
        python_tar(&bad, "GNU_FORMAT", spec);
        let dest = dir.path().join(format!("dest{i}"));
        std::fs::create_dir(&dest).unwrap();
        let m = invalid(read_ova(&bad, &dest));
        assert!(m.contains(want), "case {i}: {m:?} should mention {want:?}");
        assert!(
            files_in(&dest).is_empty(),
            "case {i}: {:?}",
            files_in(&dest)
        );
    }
    // The system tar, with the disk first.
    let late = dir.path().join("late.ova");
    run(
        "tar",
        &[
            "cf",
            s(&late),
            "-C",
            s(&x),
            "web-1-disk1.vmdk",
            "web-1.ovf",
            "web-1.mf",
        ],
    );
    let dest = dir.path().join("late");
    std::fs::create_dir(&dest).unwrap();
    assert!(invalid(read_ova(&late, &dest)).contains("first member"));
}

#[test]
fn packages_from_other_tars_and_manifest_styles_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow, vmdk) = disk(dir.path());
    let ova = pack(dir.path(), &vmdk, false);
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run("tar", &["xf", s(&ova), "-C", s(&x)]);
    // VirtualBox writes "SHA1 (file) = hex", as sha1sum --tag does, last;
    // ovftool writes its manifest right after the descriptor.
    let tagged = |tool: &str| {
        let out = Command::new(tool)
            .args(["--tag", "web-1.ovf", "web-1-disk1.vmdk"])
            .current_dir(&x)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    std::fs::write(x.join("sha1.mf"), tagged("sha1sum")).unwrap();
    std::fs::write(x.join("sha512.mf"), tagged("sha512sum")).unwrap();

    let mut n = 0;
    let mut check = |ova: &Path| {
        n += 1;
        let dest = dir.path().join(format!("dest{n}"));
        std::fs::create_dir(&dest).unwrap();
        let got = read_ova(ova, &dest).unwrap_or_else(|e| panic!("{}: {e}", ova.display()));
        assert_eq!(got.system.cpus, 2);
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "vmdk",
                s(&qcow),
                s(&got.disk_path),
            ],
        );
    };
    for format in ["gnu", "ustar", "pax"] {
        let out = dir.path().join(format!("{format}.ova"));
        run(
            "tar",
            &[
                &format!("--format={format}"),
                "-cf",
                s(&out),
                "-C",
                s(&x),
                "web-1.ovf",
                "web-1-disk1.vmdk",
                "sha1.mf",
            ],
        );
        check(&out);
    }
    let out = dir.path().join("sha512-second.ova");
    run(
        "tar",
        &[
            "cf",
            s(&out),
            "-C",
            s(&x),
            "web-1.ovf",
            "sha512.mf",
            "web-1-disk1.vmdk",
        ],
    );
    check(&out);
    let py = dir.path().join("python-pax.ova");
    python_tar(
        &py,
        "PAX_FORMAT",
        &[
            format!("file\tweb-1.ovf\t{}", s(&x.join("web-1.ovf"))),
            format!("file\tweb-1-disk1.vmdk\t{}", s(&x.join("web-1-disk1.vmdk"))),
        ],
    );
    check(&py);

    // A SHA1 manifest that does not match, from a VirtualBox-style package.
    let sums = std::fs::read_to_string(x.join("sha1.mf")).unwrap();
    let wrong: String = sums
        .lines()
        .map(|l| match l.strip_prefix("SHA1 (web-1-disk1.vmdk) = ") {
            Some(_) => format!("SHA1 (web-1-disk1.vmdk) = {}\n", "0".repeat(40)),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(wrong, sums);
    std::fs::write(x.join("sha1.mf"), wrong).unwrap();
    let out = dir.path().join("wrong.ova");
    run(
        "tar",
        &[
            "cf",
            s(&out),
            "-C",
            s(&x),
            "web-1.ovf",
            "web-1-disk1.vmdk",
            "sha1.mf",
        ],
    );
    let dest = dir.path().join("wrong");
    std::fs::create_dir(&dest).unwrap();
    assert!(invalid(read_ova(&out, &dest)).contains("SHA1 digest"));
}

/// Packing and unpacking time for a disk of the fixture's size (64 MiB
/// virtual), printed for the record; the bound only catches pathologies.
#[test]
fn packing_a_64_mib_disk_is_quick() {
    let dir = tempfile::tempdir().unwrap();
    let (_, vmdk) = disk(dir.path());
    let out = dir.path().join("t.ova");
    let t = Instant::now();
    write_ova(&out, &system(), &vmdk, true, |_, _| {}).unwrap();
    let pack = t.elapsed();
    let dest = dir.path().join("d");
    std::fs::create_dir(&dest).unwrap();
    let t = Instant::now();
    read_ova(&out, &dest).unwrap();
    let unpack = t.elapsed();
    eprintln!(
        "ova: {} byte vmdk packed in {pack:?}, checked and unpacked in {unpack:?}",
        std::fs::metadata(&vmdk).unwrap().len()
    );
    assert!(pack.as_secs() < 30 && unpack.as_secs() < 30);
}
