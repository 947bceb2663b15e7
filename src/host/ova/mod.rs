//! OVA packages (OVF 1.0 in one tar file): [`write_ova`] packs a
//! streamOptimized VMDK with a descriptor written from plain values and an
//! optional SHA-256 manifest; [`read_ova`] checks a package from VirtualBox,
//! VMware or this module, and extracts its disk.
//!
//! Both stream the disk through a fixed buffer: memory stays bounded
//! whatever its size. Neither leaves a partial file under its final name.

mod ovf;
mod tar;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;

pub use ovf::{descriptor, parse_descriptor, plain_file_name, MAX_DESCRIPTOR};

/// One virtual machine as an OVF descriptor describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfSystem {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk: OvfDisk,
    pub nics: Vec<OvfNic>,
    /// The descriptor's annotation; an empty one reads back as `None`.
    pub description: Option<String>,
}

/// The (first) disk and the file that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfDisk {
    /// The file's name inside the package, e.g. `disk1.vmdk`.
    pub file_href: String,
    /// Bytes of the file; 0 when the descriptor does not say (VirtualBox
    /// leaves it out). [`write_ova`] and [`read_ova`] set the real size.
    pub file_size: u64,
    /// Virtual size of the disk in bytes.
    pub capacity: u64,
    /// Bytes of guest data the disk holds, when known.
    pub populated_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfNic {
    /// The logical network the NIC is connected to.
    pub network: String,
    /// Lower case, colon separated when read back.
    pub mac: Option<String>,
}

/// A package that [`read_ova`] checked and unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedOva {
    pub system: OvfSystem,
    /// The extracted disk, in the destination directory.
    pub disk_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    /// The package, descriptor or arguments are unacceptable.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl OvaError {
    fn io(context: impl Into<String>, source: io::Error) -> OvaError {
        OvaError::Io {
            context: context.into(),
            source,
        }
    }
}

fn invalid(msg: impl Into<String>) -> OvaError {
    OvaError::Invalid(msg.into())
}

/// Chunk of disk data moved at a time.
const CHUNK: usize = 1 << 20;
/// Largest manifest read.
const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Sha1,
    Sha256,
    Sha512,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        match s.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Alg::Sha1),
            "SHA256" => Some(Alg::Sha256),
            "SHA512" => Some(Alg::Sha512),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Alg::Sha1 => "SHA1",
            Alg::Sha256 => "SHA256",
            Alg::Sha512 => "SHA512",
        }
    }
    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Alg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Alg::Sha256 => &digest::SHA256,
            Alg::Sha512 => &digest::SHA512,
        }
    }
}

/// Several digests of one stream at once.
struct Hashers(Vec<(Alg, digest::Context)>);

impl Hashers {
    fn new(algs: &[Alg]) -> Hashers {
        let mut v: Vec<(Alg, digest::Context)> = Vec::new();
        for &a in algs {
            if !v.iter().any(|(b, _)| *b == a) {
                v.push((a, digest::Context::new(a.algorithm())));
            }
        }
        Hashers(v)
    }
    fn update(&mut self, data: &[u8]) {
        for (_, c) in &mut self.0 {
            c.update(data);
        }
    }
    fn finish(self) -> Vec<(Alg, Vec<u8>)> {
        self.0
            .into_iter()
            .map(|(a, c)| (a, c.finish().as_ref().to_vec()))
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// One line of a manifest: `ALG(file)= hex` as VMware writes it, or
/// `ALG (file) = hex` as VirtualBox does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ManifestEntry {
    alg: Alg,
    file: String,
    digest: Vec<u8>,
}

/// The digest lines of a manifest; lines with other attributes (`SIZE`,
/// `MD5`) are skipped, malformed lines refused.
fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, OvaError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            invalid(format!(
                "the manifest's line {} is malformed: {line:?}",
                n + 1
            ))
        };
        let open = line.find('(').ok_or_else(bad)?;
        let attr = line[..open].trim();
        let rest = &line[open + 1..];
        // The file name ends at the last ")" followed by "=": names may
        // themselves hold parentheses.
        let close = rest
            .match_indices(')')
            .map(|(i, _)| i)
            .rfind(|&i| rest[i + 1..].trim_start().starts_with('='))
            .ok_or_else(bad)?;
        let file = &rest[..close];
        let value = rest[close + 1..].trim_start()[1..].trim();
        let Some(alg) = Alg::parse(attr) else {
            continue;
        };
        let digest = unhex(value)
            .filter(|d| d.len() == alg.algorithm().output_len())
            .ok_or_else(bad)?;
        out.push(ManifestEntry {
            alg,
            file: file.to_owned(),
            digest,
        });
    }
    Ok(out)
}

/// Checks the manifest's digests of `file` against `have`; `rehash` gives
/// the digest for an algorithm that was not computed while reading.
fn verify(
    manifest: &[ManifestEntry],
    file: &str,
    have: &[(Alg, Vec<u8>)],
    mut rehash: impl FnMut(Alg) -> Result<Vec<u8>, OvaError>,
) -> Result<(), OvaError> {
    let entries: Vec<&ManifestEntry> = manifest.iter().filter(|e| e.file == file).collect();
    if entries.is_empty() {
        return Err(invalid(format!(
            "the manifest has no SHA1, SHA256 or SHA512 digest of {file:?}"
        )));
    }
    for e in entries {
        let got = match have.iter().find(|(a, _)| *a == e.alg) {
            Some((_, d)) => d.clone(),
            None => rehash(e.alg)?,
        };
        if got != e.digest {
            return Err(invalid(format!(
                "{file:?} does not match the manifest: its {} digest is {}, the manifest says {}",
                e.alg.name(),
                hex(&got),
                hex(&e.digest)
            )));
        }
    }
    Ok(())
}

/// A file being written under a temporary name, removed unless
/// [`Staged::commit`] renames it.
struct Staged {
    path: PathBuf,
    committed: bool,
}

impl Staged {
    fn create(dir: &Path, name: &str) -> Result<(Staged, File), OvaError> {
        let path = dir.join(format!(
            ".{name}.{}.{:016x}.part",
            std::process::id(),
            rand::random::<u64>()
        ));
        let f = File::options()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| OvaError::io(format!("creating {}", path.display()), e))?;
        Ok((
            Staged {
                path,
                committed: false,
            },
            f,
        ))
    }

    /// Renames to `dest` and makes the rename durable.
    fn commit(mut self, dest: &Path) -> Result<(), OvaError> {
        std::fs::rename(&self.path, dest).map_err(|e| {
            OvaError::io(
                format!("renaming {} to {}", self.path.display(), dest.display()),
                e,
            )
        })?;
        self.committed = true;
        if let Some(dir) = dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| OvaError::io(format!("syncing {}", dir.display()), e))?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The directory `p` is in (`.` for a bare file name).
fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// VMDK sparse-extent header fields read here (little endian).
const VMDK_MAGIC: &[u8; 4] = b"KDMV";
const VMDK_FLAG_COMPRESSED: u32 = 1 << 16;
const VMDK_FLAG_MARKERS: u32 = 1 << 17;
const VMDK_DEFLATE: u16 = 1;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Whether a VMDK header (its first 512 bytes) is a streamOptimized
/// extent: sparse magic, compressed grains with markers, deflate.
fn is_stream_optimized(h: &[u8; 512]) -> bool {
    let flags = le32(h, 8);
    &h[..4] == VMDK_MAGIC
        && flags & VMDK_FLAG_COMPRESSED != 0
        && flags & VMDK_FLAG_MARKERS != 0
        && u16::from_le_bytes([h[77], h[78]]) == VMDK_DEFLATE
}

/// Checks that an extracted disk is a self-contained sparse VMDK: not a
/// text descriptor (whose extents could name any file on this machine) and
/// not a delta whose embedded descriptor points at a parent.
fn check_disk(f: &mut File, name: &str) -> Result<(), OvaError> {
    let ioe = |e| OvaError::io(format!("reading the extracted {name}"), e);
    let mut h = [0u8; 512];
    f.seek(SeekFrom::Start(0)).map_err(ioe)?;
    let n = read_up_to(f, &mut h).map_err(ioe)?;
    if h[..n].starts_with(b"# Disk DescriptorFile") {
        return Err(invalid(format!(
            "the disk {name:?} is a VMDK text descriptor, which may name other files"
        )));
    }
    if n < 512 {
        return Err(invalid(format!(
            "the disk {name:?} is too short to be a VMDK"
        )));
    }
    if &h[..4] != VMDK_MAGIC {
        return Err(invalid(format!("the disk {name:?} is not a sparse VMDK")));
    }
    let (off, len) = (le64(&h, 28), le64(&h, 36));
    if off != 0 && len != 0 {
        if len > 2048 {
            return Err(invalid(format!(
                "the disk {name:?} has an oversized embedded descriptor"
            )));
        }
        let mut d = vec![0u8; (len * 512) as usize];
        f.seek(SeekFrom::Start(off * 512)).map_err(ioe)?;
        let n = read_up_to(f, &mut d).map_err(ioe)?;
        let text = String::from_utf8_lossy(&d[..n]);
        for line in text.lines() {
            let line = line.trim();
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            let parent = (k == "parentCID" && !v.eq_ignore_ascii_case("ffffffff"))
                || k == "parentFileNameHint";
            if parent {
                return Err(invalid(format!(
                    "the disk {name:?} is a delta of another disk ({line}), which is not accepted"
                )));
            }
        }
    }
    f.seek(SeekFrom::Start(0)).map_err(ioe)?;
    Ok(())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Packs `vmdk` (a streamOptimized VMDK) into the OVA `out`: the
/// descriptor `<name>.ovf` first, then the disk as `system.disk.file_href`,
/// then, with `with_manifest`, `<name>.mf` holding the SHA-256 of both.
///
/// The descriptor's file size is taken from `vmdk` itself. The disk is read
/// once, through a 1 MiB buffer, and hashed on the way. `progress(done,
/// total)` is told the bytes of the archive written so far and its final
/// size. The archive is written beside `out` under a temporary name, synced
/// and renamed, so `out` is either the whole package or untouched.
pub fn write_ova(
    out: &Path,
    system: &OvfSystem,
    vmdk: &Path,
    with_manifest: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<(), OvaError> {
    let ovf_name = format!("{}.ovf", system.name);
    let mf_name = format!("{}.mf", system.name);
    let href = system.disk.file_href.as_str();
    for (what, n) in [("VM name", system.name.as_str()), ("disk file name", href)] {
        if !plain_file_name(n) {
            return Err(invalid(format!("the {what} {n:?} cannot be a file name")));
        }
    }
    if mf_name.len() > 100 || href.len() > 100 {
        return Err(invalid(
            "member names in an OVA are at most 100 bytes (ustar)",
        ));
    }
    if href == ovf_name || href == mf_name {
        return Err(invalid(format!(
            "the disk file name {href:?} collides with the descriptor or manifest"
        )));
    }
    if system.cpus == 0 || system.memory_mib == 0 || system.disk.capacity == 0 {
        return Err(invalid("CPUs, memory and disk capacity must not be 0"));
    }

    let mut src =
        File::open(vmdk).map_err(|e| OvaError::io(format!("opening {}", vmdk.display()), e))?;
    let meta = src
        .metadata()
        .map_err(|e| OvaError::io(format!("inspecting {}", vmdk.display()), e))?;
    if !meta.is_file() {
        return Err(invalid(format!("{} is not a regular file", vmdk.display())));
    }
    let size = meta.len();
    let mut h = [0u8; 512];
    if read_up_to(&mut src, &mut h)
        .map_err(|e| OvaError::io(format!("reading {}", vmdk.display()), e))?
        < 512
        || !is_stream_optimized(&h)
    {
        return Err(invalid(format!(
            "{} is not a streamOptimized VMDK",
            vmdk.display()
        )));
    }
    src.seek(SeekFrom::Start(0))
        .map_err(|e| OvaError::io(format!("reading {}", vmdk.display()), e))?;

    let mut sys = system.clone();
    sys.disk.file_size = size;
    let xml = descriptor(&sys);
    let ovf_digest = digest::digest(&digest::SHA256, xml.as_bytes());

    let block = tar::BLOCK as u64;
    let mf_len = |name: &str| format!("SHA256({name})= {}\n", "0".repeat(64)).len() as u64;
    let mf_size = mf_len(&ovf_name) + mf_len(href);
    let mut body = block + xml.len() as u64 + tar::padding(xml.len() as u64);
    body += block + size + tar::padding(size);
    if with_manifest {
        body += block + mf_size + tar::padding(mf_size);
    }
    let total = body + tar::trailer_len(body);

    let dir = parent_dir(out);
    let out_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ova".into());
    let (staged, file) = Staged::create(dir, &out_name)?;
    let werr = |e| OvaError::io(format!("writing {}", staged.path.display()), e);
    let mut w = BufWriter::with_capacity(CHUNK, file);
    let mtime = now();
    let mut done = 0u64;

    let put = |w: &mut BufWriter<File>, data: &[u8], done: &mut u64| -> io::Result<()> {
        w.write_all(data)?;
        *done += data.len() as u64;
        Ok(())
    };
    put(
        &mut w,
        &tar::header(&ovf_name, xml.len() as u64, mtime)?,
        &mut done,
    )
    .map_err(werr)?;
    put(&mut w, xml.as_bytes(), &mut done).map_err(werr)?;
    tar::zeros(&mut w, tar::padding(xml.len() as u64)).map_err(werr)?;
    done += tar::padding(xml.len() as u64);
    progress(done, total);

    put(&mut w, &tar::header(href, size, mtime)?, &mut done).map_err(werr)?;
    let mut hasher = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    let rerr = |e| OvaError::io(format!("reading {}", vmdk.display()), e);
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        let n = read_up_to(&mut src, &mut buf[..k]).map_err(rerr)?;
        if n == 0 {
            return Err(OvaError::io(
                format!("reading {}", vmdk.display()),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while being packed",
                ),
            ));
        }
        hasher.update(&buf[..n]);
        put(&mut w, &buf[..n], &mut done).map_err(werr)?;
        left -= n as u64;
        progress(done, total);
    }
    if read_up_to(&mut src, &mut buf[..1]).map_err(rerr)? != 0 {
        return Err(OvaError::io(
            format!("reading {}", vmdk.display()),
            io::Error::other("the file grew while being packed"),
        ));
    }
    tar::zeros(&mut w, tar::padding(size)).map_err(werr)?;
    done += tar::padding(size);

    if with_manifest {
        let mf = format!(
            "SHA256({ovf_name})= {}\nSHA256({href})= {}\n",
            hex(ovf_digest.as_ref()),
            hex(hasher.finish().as_ref())
        );
        debug_assert_eq!(mf.len() as u64, mf_size);
        put(
            &mut w,
            &tar::header(&mf_name, mf.len() as u64, mtime)?,
            &mut done,
        )
        .map_err(werr)?;
        put(&mut w, mf.as_bytes(), &mut done).map_err(werr)?;
        tar::zeros(&mut w, tar::padding(mf.len() as u64)).map_err(werr)?;
        done += tar::padding(mf.len() as u64);
    }
    let t = tar::trailer_len(done);
    tar::zeros(&mut w, t).map_err(werr)?;
    done += t;
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    drop(file);
    debug_assert_eq!(done, total);
    staged.commit(out)?;
    progress(done, total);
    Ok(())
}

/// The disk as extracted under its temporary name, with its digests.
struct Extracted {
    staged: Staged,
    file: File,
    size: u64,
    digests: Vec<(Alg, Vec<u8>)>,
}

/// Reads the OVA `ova`: its first member must be the `.ovf` descriptor
/// (at most [`MAX_DESCRIPTOR`] bytes); the disk file it names is extracted
/// into `dest_dir` under that name, which must not exist yet. Every member
/// must be a regular file with a plain name (no directories, no `..`, no
/// links or devices). A manifest (`.mf`, before or after the disk) must
/// hold a matching SHA1, SHA256 or SHA512 digest of the descriptor and of
/// the disk. The disk must be a self-contained sparse VMDK.
///
/// Nothing is left in `dest_dir` unless every check passed. The extracted
/// disk is untrusted data all the same: convert it with an explicit
/// `-f vmdk`.
pub fn read_ova(ova: &Path, dest_dir: &Path) -> Result<ImportedOva, OvaError> {
    let f = File::open(ova).map_err(|e| OvaError::io(format!("opening {}", ova.display()), e))?;
    let mut tar = tar::Reader::new(BufReader::with_capacity(CHUNK, f));
    let check_name = |name: &str| {
        if plain_file_name(name) {
            Ok(())
        } else {
            Err(invalid(format!(
                "the package holds {name:?}; members must be plain file names"
            )))
        }
    };

    let first = tar
        .next_member()?
        .ok_or_else(|| invalid("the package is an empty archive"))?;
    check_name(&first.name)?;
    if !first.name.to_ascii_lowercase().ends_with(".ovf") {
        return Err(invalid(format!(
            "the first member of an OVA must be its .ovf descriptor; this one starts with {:?}",
            first.name
        )));
    }
    let ovf_bytes = tar.read_to_vec(MAX_DESCRIPTOR as u64, "descriptor")?;
    let xml =
        std::str::from_utf8(&ovf_bytes).map_err(|_| invalid("the descriptor is not UTF-8"))?;
    let mut system = parse_descriptor(xml)?;
    let href = system.disk.file_href.clone();
    let ovf_digests = {
        let mut h = Hashers::new(&[Alg::Sha1, Alg::Sha256, Alg::Sha512]);
        h.update(&ovf_bytes);
        h.finish()
    };

    let dest = dest_dir.join(&href);
    if dest.symlink_metadata().is_ok() {
        return Err(OvaError::io(
            format!("extracting {href:?}"),
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", dest.display()),
            ),
        ));
    }

    let mut names = vec![first.name.clone()];
    let mut manifest: Option<Vec<ManifestEntry>> = None;
    let mut disk: Option<Extracted> = None;
    while let Some(m) = tar.next_member()? {
        check_name(&m.name)?;
        if names.contains(&m.name) {
            return Err(invalid(format!("the package holds {:?} twice", m.name)));
        }
        names.push(m.name.clone());
        if m.name == href {
            // Hash with what the manifest uses when it came first; else with
            // what VMware and VirtualBox write, SHA256 and SHA1.
            let algs: Vec<Alg> = match &manifest {
                Some(mf) => mf
                    .iter()
                    .filter(|e| e.file == href)
                    .map(|e| e.alg)
                    .collect(),
                None => vec![Alg::Sha256, Alg::Sha1],
            };
            let mut hashers = Hashers::new(&algs);
            let (staged, file) = Staged::create(dest_dir, &href)?;
            let werr = |e| OvaError::io(format!("writing {}", staged.path.display()), e);
            let mut w = BufWriter::with_capacity(CHUNK, file);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = tar.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                hashers.update(&buf[..n]);
                w.write_all(&buf[..n]).map_err(werr)?;
            }
            let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
            disk = Some(Extracted {
                staged,
                file,
                size: m.size,
                digests: hashers.finish(),
            });
        } else if m.name.to_ascii_lowercase().ends_with(".mf") {
            if manifest.is_some() {
                return Err(invalid("the package holds more than one manifest"));
            }
            let text = tar.read_to_vec(MAX_MANIFEST, "manifest")?;
            let text = String::from_utf8(text).map_err(|_| invalid("the manifest is not UTF-8"))?;
            manifest = Some(parse_manifest(&text)?);
        }
        // Anything else (a certificate, other files) is not needed here.
    }

    let Some(Extracted {
        staged,
        mut file,
        size,
        digests: disk_digests,
    }) = disk
    else {
        return Err(invalid(format!(
            "the package has no member {href:?}, the disk its descriptor names"
        )));
    };
    if system.disk.file_size != 0 && system.disk.file_size != size {
        return Err(invalid(format!(
            "the descriptor says {href:?} has {} bytes; the package holds {size}",
            system.disk.file_size
        )));
    }
    system.disk.file_size = size;
    if let Some(mf) = &manifest {
        verify(mf, &first.name, &ovf_digests, |_| unreachable_digest())?;
        verify(mf, &href, &disk_digests, |alg| {
            let mut h = Hashers::new(&[alg]);
            let ioe = |e| OvaError::io(format!("reading {}", staged.path.display()), e);
            file.seek(SeekFrom::Start(0)).map_err(ioe)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf).map_err(ioe)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(h.finish().remove(0).1)
        })?;
    }
    check_disk(&mut file, &href)?;
    file.sync_all()
        .map_err(|e| OvaError::io(format!("syncing {}", staged.path.display()), e))?;
    drop(file);
    if dest.symlink_metadata().is_ok() {
        return Err(OvaError::io(
            format!("extracting {href:?}"),
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", dest.display()),
            ),
        ));
    }
    staged.commit(&dest)?;
    Ok(ImportedOva {
        system,
        disk_path: dest,
    })
}

/// The descriptor is hashed with every supported algorithm up front.
fn unreachable_digest() -> Result<Vec<u8>, OvaError> {
    Err(invalid("the manifest uses an unsupported digest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that pass for a streamOptimized VMDK: its header, then data.
    fn fake_vmdk(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        v[..512].fill(0);
        v[..4].copy_from_slice(VMDK_MAGIC);
        v[4..8].copy_from_slice(&3u32.to_le_bytes());
        v[8..12].copy_from_slice(&0x0003_0003u32.to_le_bytes());
        v[77..79].copy_from_slice(&VMDK_DEFLATE.to_le_bytes());
        v
    }

    fn system(href: &str) -> OvfSystem {
        OvfSystem {
            name: "vm1".into(),
            cpus: 1,
            memory_mib: 256,
            disk: OvfDisk {
                file_href: href.into(),
                file_size: 0,
                capacity: 1 << 30,
                populated_size: None,
            },
            nics: vec![OvfNic {
                network: "default".into(),
                mac: None,
            }],
            description: None,
        }
    }

    /// A tar of `members` as they are given, for packages this module would
    /// not write.
    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, data) in members {
            v.extend_from_slice(&tar::header(name, data.len() as u64, 0).unwrap());
            v.extend_from_slice(data);
            tar::zeros(&mut v, tar::padding(data.len() as u64)).unwrap();
        }
        tar::zeros(&mut v, 1024).unwrap();
        v
    }

    fn digest_hex(alg: Alg, data: &[u8]) -> String {
        hex(digest::digest(alg.algorithm(), data).as_ref())
    }

    fn invalid_msg(r: Result<ImportedOva, OvaError>) -> String {
        match r {
            Err(OvaError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn only_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn manifests_in_vmware_and_virtualbox_styles() {
        let a = "0".repeat(64);
        let b = "AB".repeat(20);
        let text = format!(
            "SHA256(x.ovf)= {a}\r\nSHA1 (disk (1).vmdk) = {b}\n\nSIZE (x.ovf) = 12\nMD5(x.ovf)= 00\n"
        );
        let m = parse_manifest(&text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].alg, m[0].file.as_str()), (Alg::Sha256, "x.ovf"));
        assert_eq!(m[0].digest, vec![0u8; 32]);
        assert_eq!((m[1].alg, m[1].file.as_str()), (Alg::Sha1, "disk (1).vmdk"));
        assert_eq!(m[1].digest, vec![0xab; 20]);
        assert!(parse_manifest("SHA256(x.ovf)= abc\n").is_err());
        assert!(parse_manifest("garbage\n").is_err());
        assert!(parse_manifest(&format!("SHA1(x)= {a}\n")).is_err());
    }

    #[test]
    fn write_then_read_gives_back_the_system_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let vmdk = dir.path().join("src.vmdk");
        let data = fake_vmdk(3 * CHUNK + 1234);
        std::fs::write(&vmdk, &data).unwrap();
        let out = dir.path().join("vm1.ova");
        let sys = system("vm1-disk1.vmdk");
        let mut calls = Vec::new();
        write_ova(&out, &sys, &vmdk, true, |d, t| calls.push((d, t))).unwrap();
        let len = std::fs::metadata(&out).unwrap().len();
        assert_eq!(len % 10240, 0);
        let (last, total) = *calls.last().unwrap();
        assert_eq!((last, total), (len, len));
        assert!(calls
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 == total));
        assert!(calls.len() >= 4, "{calls:?}");
        // Nothing but the package is left beside it.
        assert_eq!(only_files(dir.path()), ["src.vmdk", "vm1.ova"]);

        let dest = dir.path().join("in");
        std::fs::create_dir(&dest).unwrap();
        let got = read_ova(&out, &dest).unwrap();
        let mut want = sys.clone();
        want.disk.file_size = data.len() as u64;
        assert_eq!(got.system, want);
        assert_eq!(got.disk_path, dest.join("vm1-disk1.vmdk"));
        assert_eq!(std::fs::read(&got.disk_path).unwrap(), data);
        assert_eq!(only_files(&dest), ["vm1-disk1.vmdk"]);

        // The disk is not extracted twice over an existing file.
        let e = read_ova(&out, &dest).unwrap_err();
        assert!(
            matches!(&e, OvaError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{e:?}"
        );
    }

    #[test]
    fn write_refuses_what_cannot_make_a_package() {
        let dir = tempfile::tempdir().unwrap();
        let vmdk = dir.path().join("src.vmdk");
        std::fs::write(&vmdk, fake_vmdk(4096)).unwrap();
        let out = dir.path().join("x.ova");
        let w = |s: &OvfSystem, v: &Path| write_ova(&out, s, v, true, |_, _| {});
        assert!(matches!(
            w(&system("../d.vmdk"), &vmdk),
            Err(OvaError::Invalid(_))
        ));
        assert!(matches!(
            w(&system("vm1.ovf"), &vmdk),
            Err(OvaError::Invalid(_))
        ));
        assert!(matches!(
            w(&system(&"d".repeat(101)), &vmdk),
            Err(OvaError::Invalid(_))
        ));
        let mut s = system("d.vmdk");
        s.name = "a/b".into();
        assert!(matches!(w(&s, &vmdk), Err(OvaError::Invalid(_))));
        // A monolithicSparse VMDK (no compressed grains) or a qcow2.
        let mut sparse = fake_vmdk(4096);
        sparse[8..12].copy_from_slice(&3u32.to_le_bytes());
        let other = dir.path().join("sparse.vmdk");
        std::fs::write(&other, sparse).unwrap();
        let e = w(&system("d.vmdk"), &other).unwrap_err();
        assert!(e.to_string().contains("streamOptimized"), "{e}");
        assert!(matches!(
            w(&system("d.vmdk"), &dir.path().join("missing")),
            Err(OvaError::Io { .. })
        ));
        assert_eq!(only_files(dir.path()), ["sparse.vmdk", "src.vmdk"]);
    }

    fn package(manifest: Option<(usize, String)>, disk: &[u8]) -> Vec<u8> {
        let xml = descriptor(&system("d.vmdk"));
        let mut members: Vec<(&str, &[u8])> = vec![("vm1.ovf", xml.as_bytes()), ("d.vmdk", disk)];
        let mf;
        if let Some((at, text)) = manifest {
            mf = text;
            members.insert(at, ("vm1.mf", mf.as_bytes()));
        }
        tar_of(&members)
    }

    fn read_bytes(ova: &[u8]) -> (tempfile::TempDir, Result<ImportedOva, OvaError>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.ova");
        std::fs::write(&p, ova).unwrap();
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let r = read_ova(&p, &dest);
        if r.is_err() {
            assert!(only_files(&dest).is_empty(), "{:?}", only_files(&dest));
        }
        (dir, r)
    }

    #[test]
    fn manifests_from_other_producers_are_checked() {
        let disk = fake_vmdk(5000);
        let xml = descriptor(&system("d.vmdk"));
        for (alg, at) in [
            (Alg::Sha1, 2),
            (Alg::Sha256, 1),
            (Alg::Sha512, 2),
            (Alg::Sha512, 1),
        ] {
            let text = format!(
                "{n} (vm1.ovf) = {}\n{n} (d.vmdk) = {}\n",
                digest_hex(alg, xml.as_bytes()),
                digest_hex(alg, &disk),
                n = alg.name()
            );
            let (_d, r) = read_bytes(&package(Some((at, text.clone())), &disk));
            r.unwrap_or_else(|e| panic!("{alg:?} at {at}: {e}"));
            let mut bad = disk.clone();
            bad[4000] ^= 0x40;
            let (_d, r) = read_bytes(&package(Some((at, text)), &bad));
            let m = invalid_msg(r);
            assert!(m.contains("does not match the manifest"), "{m}");
        }
        // A manifest that leaves the disk out protects nothing.
        let text = format!(
            "SHA256(vm1.ovf)= {}\n",
            digest_hex(Alg::Sha256, xml.as_bytes())
        );
        let (_d, r) = read_bytes(&package(Some((2, text)), &disk));
        assert!(invalid_msg(r).contains("no SHA1, SHA256 or SHA512 digest of \"d.vmdk\""));
        // The descriptor is covered too.
        let text = format!(
            "SHA256(vm1.ovf)= {}\nSHA256(d.vmdk)= {}\n",
            "1".repeat(64),
            digest_hex(Alg::Sha256, &disk)
        );
        let (_d, r) = read_bytes(&package(Some((2, text)), &disk));
        assert!(invalid_msg(r).contains("\"vm1.ovf\" does not match"));
        // No manifest: nothing to check against.
        let (_d, r) = read_bytes(&package(None, &disk));
        r.unwrap();
    }

    #[test]
    fn unsafe_or_malformed_packages_are_refused() {
        let disk = fake_vmdk(2048);
        let xml = descriptor(&system("d.vmdk"));
        let x = xml.as_bytes();
        type Members<'a> = Vec<(&'a str, &'a [u8])>;
        let cases: Vec<(Members, &str)> = vec![
            (vec![("../x", b"a"), ("vm1.ovf", x)], "plain file name"),
            (
                vec![("vm1.ovf", x), ("../x", b"a"), ("d.vmdk", &disk)],
                "plain file name",
            ),
            (
                vec![("vm1.ovf", x), ("/etc/x", b"a"), ("d.vmdk", &disk)],
                "plain file name",
            ),
            (
                vec![("vm1.ovf", x), ("sub/d.vmdk", &disk)],
                "plain file name",
            ),
            (vec![("d.vmdk", &disk), ("vm1.ovf", x)], "first member"),
            (vec![("vm1.ovf", x)], "no member \"d.vmdk\""),
            (
                vec![("vm1.ovf", x), ("d.vmdk", &disk), ("d.vmdk", &disk)],
                "twice",
            ),
            (
                vec![
                    ("vm1.ovf", x),
                    (
                        "d.vmdk",
                        b"# Disk DescriptorFile\nRW 1 FLAT \"/dev/sda\" 0\n",
                    ),
                ],
                "text descriptor",
            ),
            (vec![("vm1.ovf", x), ("d.vmdk", &[0u8; 100])], "too short"),
            (vec![("vm1.ovf", b"<Envelope/>")], "VirtualSystem"),
            (vec![], "empty"),
        ];
        for (members, want) in cases {
            let (_d, r) = read_bytes(&tar_of(&members));
            let m = invalid_msg(r);
            assert!(m.contains(want), "{m:?} should mention {want:?}");
        }
        // The size the descriptor states must be the member's.
        let mut sys = system("d.vmdk");
        sys.disk.file_size = 999;
        let xml = descriptor(&sys);
        let (_d, r) = read_bytes(&tar_of(&[("vm1.ovf", xml.as_bytes()), ("d.vmdk", &disk)]));
        assert!(invalid_msg(r).contains("999"));
        // A delta disk would pull in a parent from this machine.
        let mut delta = fake_vmdk(4096);
        delta[28..36].copy_from_slice(&1u64.to_le_bytes());
        delta[36..44].copy_from_slice(&1u64.to_le_bytes());
        let desc =
            b"# Disk DescriptorFile\nparentCID=12345678\nparentFileNameHint=\"/var/lib/x.vmdk\"\n";
        delta[512..512 + desc.len()].copy_from_slice(desc);
        delta[512 + desc.len()..1024].fill(0);
        let (_d, r) = read_bytes(&tar_of(&[("vm1.ovf", x), ("d.vmdk", &delta)]));
        assert!(invalid_msg(r).contains("delta"));
        // Oversized descriptor: refused from its header, before reading it.
        let huge = vec![b' '; MAX_DESCRIPTOR + 1];
        let (_d, r) = read_bytes(&tar_of(&[("vm1.ovf", &huge)]));
        assert!(invalid_msg(r).contains("at most"));
        // Truncated in the middle of the disk.
        let whole = tar_of(&[("vm1.ovf", x), ("d.vmdk", &disk)]);
        let (_d, r) = read_bytes(&whole[..whole.len() - 1024 - 600]);
        assert!(invalid_msg(r).contains("truncated"));
    }
}
