//! Just enough tar for OVA packages: a POSIX ustar writer for regular files,
//! and a streaming reader that yields regular-file members and refuses every
//! other kind (links, directories, devices, sparse files).
//!
//! The reader understands what common producers put around a plain member:
//! ustar and GNU headers, base-256 sizes (GNU, for members of 8 GiB and
//! more), pax extended headers (`path` and `size` are honoured, other keys
//! ignored) and GNU long names. Names are returned as they are; whether they
//! are acceptable is the caller's decision.

use std::io::{self, Read, Write};

use super::OvaError;

pub const BLOCK: usize = 512;
/// GNU tar and most others write the archive in records of 20 blocks.
const RECORD: u64 = 20 * BLOCK as u64;
/// Largest pax header or GNU long name read.
const MAX_META: u64 = 64 << 10;

/// Bytes of padding after `size` bytes of data.
pub fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Bytes of padding after an archive of `len` bytes (data and the two
/// zero blocks that end it) to fill its last record.
pub fn trailer_len(len: u64) -> u64 {
    let with_end = len + 2 * BLOCK as u64;
    let total = with_end.div_ceil(RECORD) * RECORD;
    total - len
}

/// `v` as `field.len() - 1` octal digits and a NUL; `None` if it does not fit.
fn octal(field: &mut [u8], v: u64) -> Option<()> {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return None;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Some(())
}

/// A ustar header for a regular file (mode 0644, owner root).
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], OvaError> {
    let mut h = [0u8; BLOCK];
    let n = name.as_bytes();
    if n.is_empty() || n.len() > 100 {
        return Err(OvaError::Invalid(format!(
            "{name:?} does not fit a ustar member name (1 to 100 bytes)"
        )));
    }
    h[..n.len()].copy_from_slice(n);
    let ok = octal(&mut h[100..108], 0o644)
        .and(octal(&mut h[108..116], 0))
        .and(octal(&mut h[116..124], 0))
        .and(octal(&mut h[136..148], mtime.min(0o77777777777)));
    debug_assert!(ok.is_some());
    if octal(&mut h[124..136], size).is_none() {
        // GNU base-256: high bit set, the value big-endian in the rest.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    let _ = octal(&mut h[329..337], 0).and(octal(&mut h[337..345], 0));
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let _ = octal(&mut h[148..155], sum);
    h[155] = b' ';
    Ok(h)
}

/// Writes `n` zero bytes.
pub fn zeros(w: &mut impl Write, n: u64) -> io::Result<()> {
    let z = [0u8; BLOCK];
    let mut left = n;
    while left > 0 {
        let k = left.min(BLOCK as u64) as usize;
        w.write_all(&z[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> OvaError {
    OvaError::Invalid(msg.into())
}

/// A numeric header field: octal (with optional leading spaces and
/// trailing NULs or spaces), or GNU base-256.
fn number(field: &[u8], what: &str) -> Result<u64, OvaError> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return Err(invalid(format!("the archive gives a negative {what}")));
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .map(|v| v + u64::from(b))
                .ok_or_else(|| invalid(format!("the archive's {what} is too large")))?;
        }
        return Ok(v);
    }
    let s = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ')
        .copied()
        .collect::<Vec<u8>>();
    if s.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&s).map_err(|_| invalid(format!("bad {what} in the archive")))?;
    u64::from_str_radix(s, 8).map_err(|_| invalid(format!("bad {what} in the archive: {s:?}")))
}

fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

fn utf8_name(b: &[u8]) -> Result<String, OvaError> {
    String::from_utf8(b.to_vec()).map_err(|_| {
        invalid(format!(
            "a member name is not UTF-8: {:?}",
            String::from_utf8_lossy(b)
        ))
    })
}

/// A regular-file member: its name and size; its data follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub size: u64,
}

/// Reads members one after the other from a stream.
pub struct Reader<R> {
    inner: R,
    /// Data and padding of the current member not yet consumed.
    left: u64,
    /// Data (without padding) of the current member not yet consumed.
    data_left: u64,
    done: bool,
}

/// `read_exact` where running out of input means a truncated archive.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), OvaError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            invalid("the archive is truncated")
        } else {
            OvaError::io("reading the archive", e)
        }
    })
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            left: 0,
            data_left: 0,
            done: false,
        }
    }

    fn skip(&mut self, mut n: u64) -> Result<(), OvaError> {
        let mut buf = [0u8; 8 * BLOCK];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            read_full(&mut self.inner, &mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads one header block; `None` at the end of the archive (a zero
    /// block, or the end of the input right at a block boundary).
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, OvaError> {
        let mut h = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(invalid("the archive is truncated inside a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(OvaError::io("reading the archive", e)),
            }
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        Ok(Some(h))
    }

    fn read_meta(&mut self, size: u64, what: &str) -> Result<Vec<u8>, OvaError> {
        if size > MAX_META {
            return Err(invalid(format!("the archive has a {what} of {size} bytes")));
        }
        let mut v = vec![0u8; size as usize];
        read_full(&mut self.inner, &mut v)?;
        self.skip(padding(size))?;
        Ok(v)
    }

    /// The next regular-file member, its data ready to be read with
    /// [`Reader::read_data`]; whatever was left of the previous one is
    /// skipped. `None` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<Member>, OvaError> {
        if self.done {
            return Ok(None);
        }
        let left = std::mem::take(&mut self.left);
        self.data_left = 0;
        self.skip(left)?;
        let mut long_name: Option<String> = None;
        let mut pax_path: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let Some(h) = self.block()? else {
                self.done = true;
                if long_name.is_some() || pax_path.is_some() || pax_size.is_some() {
                    return Err(invalid("the archive ends after an extended header"));
                }
                return Ok(None);
            };
            let stored = number(&h[148..156], "header checksum")?;
            let unsigned: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            let signed: i64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        i64::from(b as i8)
                    }
                })
                .sum();
            if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
                return Err(invalid(
                    "the archive has a header with a bad checksum (not a tar file, or damaged)",
                ));
            }
            let magic = &h[257..263];
            let ustar = magic == b"ustar\0";
            let gnu = magic == b"ustar ";
            if !ustar && !gnu {
                return Err(invalid(
                    "the archive is not in ustar, pax or GNU tar format",
                ));
            }
            let size = number(&h[124..136], "member size")?;
            let kind = h[156];
            match kind {
                b'x' => {
                    let data = self.read_meta(size, "pax header")?;
                    for (k, v) in pax_records(&data)? {
                        match k.as_str() {
                            "path" => pax_path = Some(v),
                            "size" => {
                                pax_size = Some(v.parse().map_err(|_| {
                                    invalid(format!("bad size in a pax header: {v:?}"))
                                })?)
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                b'g' => {
                    self.read_meta(size, "pax global header")?;
                    continue;
                }
                b'L' => {
                    let data = self.read_meta(size, "GNU long name")?;
                    long_name = Some(utf8_name(cstr(&data))?);
                    continue;
                }
                _ => {}
            }
            let mut name = match (pax_path.take(), long_name.take()) {
                (Some(p), _) => p,
                (None, Some(l)) => l,
                (None, None) => {
                    let base = cstr(&h[..100]);
                    let prefix = if ustar { cstr(&h[345..500]) } else { &[][..] };
                    if prefix.is_empty() {
                        utf8_name(base)?
                    } else {
                        let mut p = prefix.to_vec();
                        p.push(b'/');
                        p.extend_from_slice(base);
                        utf8_name(&p)?
                    }
                }
            };
            let size = pax_size.take().unwrap_or(size);
            let what = match kind {
                b'0' | b'\0' | b'7' => None,
                b'1' => Some("a hard link"),
                b'2' => Some("a symbolic link"),
                b'3' | b'4' => Some("a device"),
                b'5' => Some("a directory"),
                b'6' => Some("a FIFO"),
                b'S' => Some("a sparse file"),
                _ => Some("not a regular file"),
            };
            if let Some(what) = what {
                if name.is_empty() {
                    name = "(no name)".into();
                }
                return Err(invalid(format!(
                    "the archive member {name:?} is {what}; only regular files are accepted"
                )));
            }
            self.left = size
                .checked_add(padding(size))
                .ok_or_else(|| invalid("the archive's member size is too large"))?;
            self.data_left = size;
            return Ok(Some(Member { name, size }));
        }
    }

    /// Reads up to `buf.len()` bytes of the current member's data; 0 at its
    /// end. Stopping short of the end is fine: the next call to
    /// [`Reader::next_member`] skips the rest.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, OvaError> {
        if self.data_left == 0 {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(self.data_left) as usize;
        let n = loop {
            match self.inner.read(&mut buf[..k]) {
                Ok(0) => return Err(invalid("the archive is truncated inside a member")),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(OvaError::io("reading the archive", e)),
            }
        };
        self.data_left -= n as u64;
        self.left -= n as u64;
        Ok(n)
    }

    /// The whole data of the current member, which must be at most `max`
    /// bytes.
    pub fn read_to_vec(&mut self, max: u64, what: &str) -> Result<Vec<u8>, OvaError> {
        if self.data_left > max {
            return Err(invalid(format!(
                "the {what} is {} bytes; at most {max} are accepted",
                self.data_left
            )));
        }
        let mut v = vec![0u8; self.data_left as usize];
        let mut got = 0;
        while got < v.len() {
            got += self.read_data(&mut v[got..])?;
        }
        Ok(v)
    }
}

/// The `key=value` records of a pax extended header.
fn pax_records(mut data: &[u8]) -> Result<Vec<(String, String)>, OvaError> {
    let bad = || invalid("the archive has a malformed pax header");
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = std::str::from_utf8(&data[sp + 1..len - 1]).map_err(|_| bad())?;
        let (k, v) = rec.split_once('=').ok_or_else(bad)?;
        out.push((k.to_owned(), v.to_owned()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, data) in members {
            v.extend_from_slice(&header(name, data.len() as u64, 1_700_000_000).unwrap());
            v.extend_from_slice(data);
            zeros(&mut v, padding(data.len() as u64)).unwrap();
        }
        let t = trailer_len(v.len() as u64);
        zeros(&mut v, t).unwrap();
        v
    }

    #[test]
    fn members_come_back_in_order_with_their_data() {
        let a = archive(&[("a.ovf", b"<x/>"), ("b.vmdk", &[7u8; 1000]), ("e", b"")]);
        assert_eq!(a.len() % RECORD as usize, 0);
        let mut r = Reader::new(&a[..]);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!((m.name.as_str(), m.size), ("a.ovf", 4));
        assert_eq!(r.read_to_vec(100, "x").unwrap(), b"<x/>");
        let m = r.next_member().unwrap().unwrap();
        assert_eq!((m.name.as_str(), m.size), ("b.vmdk", 1000));
        // Left unread: skipped by the next call.
        let m = r.next_member().unwrap().unwrap();
        assert_eq!((m.name.as_str(), m.size), ("e", 0));
        assert!(r.next_member().unwrap().is_none());
        assert!(r.next_member().unwrap().is_none());
    }

    #[test]
    fn sizes_past_the_octal_field_use_base_256() {
        let big = 9u64 << 30;
        let h = header("big.vmdk", big, 0).unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(number(&h[124..136], "size").unwrap(), big);
        let h = header("small", 0o77777777777, 0).unwrap();
        assert_eq!(number(&h[124..136], "size").unwrap(), 0o77777777777);
        assert_eq!(h[124], b'7');
    }

    #[test]
    fn a_damaged_header_or_other_data_is_refused() {
        let mut a = archive(&[("a.ovf", b"<x/>")]);
        a[10] ^= 1;
        let e = Reader::new(&a[..]).next_member().unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let junk = vec![0x1fu8; 2048];
        assert!(Reader::new(&junk[..]).next_member().is_err());
    }

    #[test]
    fn truncation_is_bad_input_not_io() {
        let a = archive(&[("a.ovf", &[1u8; 3000])]);
        let mut r = Reader::new(&a[..1024]);
        r.next_member().unwrap().unwrap();
        let e = r.read_to_vec(10_000, "x").unwrap_err();
        assert!(matches!(e, OvaError::Invalid(_)), "{e:?}");
        let e = Reader::new(&a[..100]).next_member().unwrap_err();
        assert!(matches!(e, OvaError::Invalid(_)), "{e:?}");
    }

    #[test]
    fn links_and_directories_are_refused() {
        for (kind, what) in [
            (b'2', "symbolic link"),
            (b'1', "hard link"),
            (b'5', "directory"),
            (b'3', "device"),
        ] {
            let mut h = header("x", 0, 0).unwrap();
            h[156] = kind;
            h[148..156].fill(b' ');
            let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
            octal(&mut h[148..155], sum).unwrap();
            let e = Reader::new(&h[..]).next_member().unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn pax_records_override_path_and_size() {
        let rec = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            if format!("{len}").len() > 1 {
                len = body.len() + format!("{}", body.len() + 2).len();
            }
            format!("{len}{body}")
        };
        let recs = [
            rec("path", "foo.ovf"),
            rec("size", "10"),
            rec("mtime", "1700000000.5"),
        ]
        .concat();
        let r = pax_records(recs.as_bytes()).unwrap();
        assert_eq!(r[0], ("path".into(), "foo.ovf".into()));
        assert_eq!(r[1], ("size".into(), "10".into()));
        assert!(pax_records(b"99 path=x\n").is_err());
    }
}
