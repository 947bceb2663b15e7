//! iSCSI targets as this host sees them: SendTargets discovery, the disk LUNs
//! of a target with their exact sizes, and the `iscsi://` URL QEMU's own
//! initiator opens. No kernel initiator is involved: everything goes through
//! libiscsi's command-line tools (`iscsi-ls`, `iscsi-readcapacity16`,
//! `iscsi-inq`, Debian package `libiscsi-bin`).
//!
//! Every call has a hard time limit covering the whole call. A quick TCP
//! connect comes first, so a portal where nothing listens is reported as
//! [`IscsiError::Unreachable`] at once; a tool still running when the time is
//! up is killed, so a target that accepts connections but never answers
//! (stopped, hung) costs the time limit and no more.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::time::Instant;

/// The port of an iSCSI portal when none is given (RFC 7143).
pub const DEFAULT_PORT: u16 = 3260;

/// libiscsi's tools as found on `PATH`; [`Tools`] takes other paths.
pub const ISCSI_LS: &str = "iscsi-ls";
pub const ISCSI_READCAPACITY16: &str = "iscsi-readcapacity16";
pub const ISCSI_INQ: &str = "iscsi-inq";

/// How many LUNs are inspected at once (each inspection is a login).
const LUN_PARALLELISM: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IscsiError {
    /// A portal or target name that is not well formed (never sent anywhere).
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    /// Nothing answered at the portal: the reason says whether the
    /// connection was refused, timed out, or the name did not resolve.
    #[error("iSCSI portal {portal} unreachable: {reason}")]
    Unreachable { portal: Portal, reason: String },
    /// The portal answers but has no such target (or does not show it to us).
    #[error("iSCSI portal {portal} has no target {iqn}")]
    NoSuchTarget { portal: Portal, iqn: String },
    /// The target answered with an error or with something unexpected.
    #[error("iSCSI: {0}")]
    Protocol(String),
    /// A helper binary is missing, died, or printed something unreadable.
    #[error("iSCSI tool: {0}")]
    Tool(String),
}

/// Where an iSCSI target listens: a DNS name or an IP literal, and a port.
/// IPv6 addresses are kept without brackets; [`fmt::Display`] adds them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Portal {
    pub host: String,
    pub port: u16,
}

impl Portal {
    /// A portal from its parts, checked as [`Portal::parse`] checks.
    pub fn new(host: &str, port: u16) -> Result<Portal, IscsiError> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let p = Portal {
            host: host.to_owned(),
            port,
        };
        p.check()?;
        Ok(p)
    }

    /// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address
    /// (then the port is the default one).
    pub fn parse(s: &str) -> Result<Portal, IscsiError> {
        let bad = |why| IscsiError::Invalid {
            what: "portal",
            value: s.to_owned(),
            why,
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or(bad("unclosed '['"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad("only an IPv6 address goes in brackets"));
            }
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or(bad("junk after ']'"))?),
                ),
            }
        } else if s.parse::<Ipv6Addr>().is_ok() {
            (s, None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => parse_port(p).ok_or(bad("the port must be a number from 1 to 65535"))?,
        };
        let p = Portal {
            host: host.to_owned(),
            port,
        };
        p.check().map_err(|e| match e {
            IscsiError::Invalid { why, .. } => bad(why),
            e => e,
        })?;
        Ok(p)
    }

    /// Whether the host is a DNS name or an IP literal and the port is not 0:
    /// the fields are public, so every call checks again before use.
    pub fn check(&self) -> Result<(), IscsiError> {
        let bad = |why| IscsiError::Invalid {
            what: "portal",
            value: self.to_string(),
            why,
        };
        if self.port == 0 {
            return Err(bad("the port must be a number from 1 to 65535"));
        }
        if self.host.parse::<IpAddr>().is_ok() || valid_dns_name(&self.host) {
            Ok(())
        } else {
            Err(bad("the host must be a DNS name or an IP address"))
        }
    }

    /// The portal as libiscsi and QEMU take it: `iscsi://host:port`,
    /// `iscsi://[v6]:port`.
    fn url(&self) -> String {
        format!("iscsi://{self}")
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p != 0)
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner
/// hyphens, up to 63 bytes each and 253 in all; the last label is not all
/// digits (such a name would be read as a broken IPv4 address).
fn valid_dns_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(label_ok)
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Portal {
    type Err = IscsiError;
    fn from_str(s: &str) -> Result<Portal, IscsiError> {
        Portal::parse(s)
    }
}

impl TryFrom<String> for Portal {
    type Error = IscsiError;
    fn try_from(s: String) -> Result<Portal, IscsiError> {
        Portal::parse(&s)
    }
}

impl From<Portal> for String {
    fn from(p: Portal) -> String {
        p.to_string()
    }
}

/// Whether `name` is an iSCSI name in its normalised form (RFC 3720
/// §3.2.6, RFC 3722): `iqn.YYYY-MM.reversed.domain[:anything]` in lower
/// case ASCII letters, digits, `-`, `.` and `:`; `eui.` and 16 hex digits;
/// or `naa.` and 16 or 32 hex digits (RFC 3980). At most 223 bytes. Nothing
/// that would change the meaning of a URL (`/`, `@`, `%`, spaces) passes.
pub fn valid_iqn(name: &str) -> bool {
    if name.is_empty() || name.len() > 223 {
        return false;
    }
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if let Some(h) = name.strip_prefix("eui.") {
        return hex(h, &[16]);
    }
    if let Some(h) = name.strip_prefix("naa.") {
        return hex(h, &[16, 32]);
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return false;
    };
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b);
    if !rest.bytes().all(allowed) {
        return false;
    }
    // The date the naming authority owned the domain: YYYY-MM.
    let d = rest.as_bytes();
    if d.len() < 8
        || !d[..4].iter().all(u8::is_ascii_digit)
        || d[4] != b'-'
        || !d[5..7].iter().all(u8::is_ascii_digit)
        || d[7] != b'.'
        || !matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        )
    {
        return false;
    }
    let (domain, suffix) = match rest[8..].split_once(':') {
        Some((d, s)) => (d, Some(s)),
        None => (&rest[8..], None),
    };
    let domain_ok = domain
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    domain_ok && suffix != Some("")
}

/// One disk of a target (LUNs of other device types are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lun {
    pub id: u32,
    /// Bytes: the number of logical blocks times `block_size`.
    pub size: u64,
    pub block_size: u32,
    /// INQUIRY's vendor and product identification, trimmed.
    pub vendor: String,
    pub product: String,
}

/// The URL QEMU's iscsi block driver opens for a LUN
/// (`iscsi://host:port/iqn/lun`, an IPv6 host in brackets). Pass a portal
/// that passes [`Portal::check`] and a name that passes [`valid_iqn`].
pub fn qemu_url(portal: &Portal, iqn: &str, lun: u32) -> String {
    format!("{}/{iqn}/{lun}", portal.url())
}

/// The binaries used and the initiator name presented to targets.
#[derive(Debug, Clone)]
pub struct Tools {
    pub iscsi_ls: PathBuf,
    pub readcapacity16: PathBuf,
    pub inq: PathBuf,
    /// The initiator name sent at login (the target's ACLs may check it);
    /// `None` leaves each tool's own default.
    pub initiator: Option<String>,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            iscsi_ls: ISCSI_LS.into(),
            readcapacity16: ISCSI_READCAPACITY16.into(),
            inq: ISCSI_INQ.into(),
            initiator: None,
        }
    }
}

/// [`Tools::discover`] with the tools on `PATH`.
pub async fn discover(portal: &Portal, limit: Duration) -> Result<Vec<String>, IscsiError> {
    Tools::default().discover(portal, limit).await
}

/// [`Tools::luns`] with the tools on `PATH`.
pub async fn luns(portal: &Portal, iqn: &str, limit: Duration) -> Result<Vec<Lun>, IscsiError> {
    Tools::default().luns(portal, iqn, limit).await
}

impl Tools {
    /// The names of the targets the portal offers us (SendTargets), in the
    /// order it gives them, each once. `limit` bounds the whole call.
    pub async fn discover(
        &self,
        portal: &Portal,
        limit: Duration,
    ) -> Result<Vec<String>, IscsiError> {
        let until = Instant::now() + limit;
        self.check_args(portal, None)?;
        let addr = probe(portal, until, limit).await?;
        let out = self
            .run(
                &self.iscsi_ls,
                &[format!("iscsi://{addr}")],
                portal,
                until,
                limit,
            )
            .await?;
        let out = out.map_err(|out| classify(&out, portal, None))?;
        let listing = parse_ls(&out.stdout).map_err(IscsiError::Tool)?;
        let mut names: Vec<String> = Vec::new();
        for t in listing {
            if !valid_iqn(&t.iqn) {
                tracing::warn!(%portal, target = %t.iqn, "target name is not a valid iSCSI name: left out");
            } else if !names.contains(&t.iqn) {
                names.push(t.iqn);
            }
        }
        Ok(names)
    }

    /// The disk LUNs of target `iqn` at `portal`, by LUN number, with their
    /// exact sizes. The controller LUN a target may show (tgtd's LUN 0) and
    /// every other non-disk device are left out. `limit` bounds the whole
    /// call.
    pub async fn luns(
        &self,
        portal: &Portal,
        iqn: &str,
        limit: Duration,
    ) -> Result<Vec<Lun>, IscsiError> {
        let until = Instant::now() + limit;
        self.check_args(portal, Some(iqn))?;
        let addr = probe(portal, until, limit).await?;
        // REPORT LUNS and each LUN's device type: iscsi-ls -s logs in to
        // every target the portal offers, at the portals they advertise.
        let args = vec!["-s".to_owned(), format!("iscsi://{addr}")];
        let out = self
            .run(&self.iscsi_ls, &args, portal, until, limit)
            .await?;
        let mut listing = parse_ls(match &out {
            Ok(o) | Err(o) => &o.stdout,
        })
        .map_err(IscsiError::Tool)?;
        if let Err(failed) = &out {
            // It stops at the first LUN it cannot read, of any target: the
            // sections before the last one it printed are complete.
            listing.pop();
            if listing.iter().all(|t| t.iqn != iqn) {
                return Err(classify(failed, portal, Some(iqn)));
            }
        }
        let mut ids: Vec<u32> = Vec::new();
        let mut found = false;
        for t in listing.iter().filter(|t| t.iqn == iqn) {
            found = true;
            for l in &t.luns {
                if l.kind == "DIRECT_ACCESS" && !l.no_media && !ids.contains(&l.id) {
                    ids.push(l.id);
                }
            }
        }
        if !found {
            return Err(IscsiError::NoSuchTarget {
                portal: portal.clone(),
                iqn: iqn.to_owned(),
            });
        }
        ids.sort_unstable();
        stream::iter(ids)
            .map(|id| self.lun(portal, addr, iqn, id, until, limit))
            .buffered(LUN_PARALLELISM)
            .try_collect()
            .await
    }

    /// Capacity (READ CAPACITY 16) and identity (INQUIRY) of one LUN.
    async fn lun(
        &self,
        portal: &Portal,
        addr: SocketAddr,
        iqn: &str,
        id: u32,
        until: Instant,
        limit: Duration,
    ) -> Result<Lun, IscsiError> {
        let args = [format!("iscsi://{addr}/{iqn}/{id}")];
        let (cap, inq) = tokio::try_join!(
            self.run(&self.readcapacity16, &args, portal, until, limit),
            self.run(&self.inq, &args, portal, until, limit),
        )?;
        let cap = cap.map_err(|out| classify(&out, portal, Some(iqn)))?;
        let inq = inq.map_err(|out| classify(&out, portal, Some(iqn)))?;
        let cap = parse_capacity(&cap.stdout)
            .map_err(|e| IscsiError::Tool(format!("iscsi-readcapacity16 on LUN {id}: {e}")))?;
        let inq = parse_inquiry(&inq.stdout)
            .map_err(|e| IscsiError::Tool(format!("iscsi-inq on LUN {id}: {e}")))?;
        if inq.device_type != "DIRECT_ACCESS" {
            return Err(IscsiError::Protocol(format!(
                "LUN {id} of {iqn} changed its device type to {} while being read",
                inq.device_type
            )));
        }
        Ok(Lun {
            id,
            size: cap.size,
            block_size: cap.block_size,
            vendor: inq.vendor,
            product: inq.product,
        })
    }

    fn check_args(&self, portal: &Portal, iqn: Option<&str>) -> Result<(), IscsiError> {
        portal.check()?;
        for (what, name) in [
            ("target name", iqn),
            ("initiator name", self.initiator.as_deref()),
        ] {
            if let Some(n) = name.filter(|n| !valid_iqn(n)) {
                return Err(IscsiError::Invalid {
                    what,
                    value: n.to_owned(),
                    why: "not an iSCSI name (iqn.YYYY-MM.domain[:name], eui.<16 hex>, naa.<hex>)",
                });
            }
        }
        Ok(())
    }

    /// Runs a tool until it exits or `until`: `Ok(Ok(out))` when it
    /// succeeded, `Ok(Err(out))` when it exited with an error (for the
    /// caller to interpret), `Err` when it could not run or ran out of time
    /// (it is killed then).
    async fn run(
        &self,
        bin: &std::path::Path,
        args: &[String],
        portal: &Portal,
        until: Instant,
        limit: Duration,
    ) -> Result<Result<Output, Output>, IscsiError> {
        let mut cmd = Command::new(bin);
        if let Some(i) = &self.initiator {
            cmd.arg("-i").arg(i);
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| IscsiError::Tool(format!("cannot run {}: {e}", bin.display())))?;
        // Dropping the child on timeout kills it (kill_on_drop).
        let Ok(out) = tokio::time::timeout_at(until, child.wait_with_output()).await else {
            let reason = format!(
                "timed out: the portal accepts connections but {} got no answer within {} ms",
                tool_name(bin),
                limit.as_millis()
            );
            return Err(IscsiError::Unreachable {
                portal: portal.clone(),
                reason,
            });
        };
        let out = out.map_err(|e| IscsiError::Tool(format!("{}: {e}", bin.display())))?;
        let o = Output {
            tool: tool_name(bin),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        };
        Ok(if out.status.success() { Ok(o) } else { Err(o) })
    }
}

/// What a tool left behind.
#[derive(Debug)]
struct Output {
    tool: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn tool_name(bin: &std::path::Path) -> String {
    bin.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| bin.display().to_string())
}

/// Turns a failed tool run into the error it means. libiscsi's tools exit
/// with 10 after printing libiscsi's message on any iSCSI or SCSI error.
fn classify(out: &Output, portal: &Portal, iqn: Option<&str>) -> IscsiError {
    let text = format!("{}\n{}", out.stderr, out.stdout);
    let msg = text.trim().replace('\n', "; ");
    let lower = text.to_ascii_lowercase();
    if lower.contains("connection refused") {
        return IscsiError::Unreachable {
            portal: portal.clone(),
            reason: format!("connection refused ({})", out.tool),
        };
    }
    if let Some(iqn) = iqn {
        if lower.contains("target not found") {
            return IscsiError::NoSuchTarget {
                portal: portal.clone(),
                iqn: iqn.to_owned(),
            };
        }
    }
    match out.code {
        Some(10) => IscsiError::Protocol(format!("{}: {msg}", out.tool)),
        Some(c) => IscsiError::Tool(format!("{} exited with {c}: {msg}", out.tool)),
        None => IscsiError::Tool(format!("{} was killed by a signal: {msg}", out.tool)),
    }
}

/// A TCP connect to the portal, so that a portal where nothing listens
/// gives a clear error at once instead of a tool's confusing one. Returns
/// the address that answered: the tools are given that one, so a name
/// with several addresses works even where only one of them listens
/// (libiscsi tries the first only).
async fn probe(portal: &Portal, until: Instant, limit: Duration) -> Result<SocketAddr, IscsiError> {
    let unreachable = |reason: String| IscsiError::Unreachable {
        portal: portal.clone(),
        reason,
    };
    let timed_out = || {
        unreachable(format!(
            "timed out: no TCP connection within {} ms",
            limit.as_millis()
        ))
    };
    let literal = portal.host.parse::<IpAddr>().ok();
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![(ip, portal.port).into()],
        None => tokio::time::timeout_at(
            until,
            tokio::net::lookup_host((portal.host.as_str(), portal.port)),
        )
        .await
        .map_err(|_| {
            unreachable(format!(
                "timed out resolving {} within {} ms",
                portal.host,
                limit.as_millis()
            ))
        })?
        .map_err(|e| unreachable(format!("cannot resolve {}: {e}", portal.host)))?
        .collect(),
    };
    let mut reasons = Vec::new();
    for addr in addrs {
        match tokio::time::timeout_at(until, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(addr),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                reasons.push(if literal.is_some() {
                    "connection refused".to_owned()
                } else {
                    format!("connection refused at {addr}")
                })
            }
            Ok(Err(e)) => reasons.push(format!("{addr}: {e}")),
            Err(_) => return Err(timed_out()),
        }
    }
    if reasons.is_empty() {
        reasons.push(format!("{} resolves to no address", portal.host));
    }
    Err(unreachable(reasons.join("; ")))
}

/// A target as `iscsi-ls` prints it, with its LUNs when run with `-s`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedTarget {
    iqn: String,
    /// The portal it advertises, with its group tag: `127.0.0.1:3260,1`.
    portal: String,
    luns: Vec<ListedLun>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedLun {
    id: u32,
    /// libiscsi's name of the peripheral device type: `DIRECT_ACCESS`,
    /// `STORAGE_ARRAY_CONTROLLER`, ...
    kind: String,
    no_media: bool,
}

/// `iscsi-ls [-s]` output:
///
/// ```text
/// Target:iqn.2026-12.test.libgo:one Portal:127.0.0.1:13260,1
/// Lun:0    Type:STORAGE_ARRAY_CONTROLLER
/// Lun:1    Type:DIRECT_ACCESS (Size:63M)
/// ```
///
/// (one `Target:` line per target and advertised portal; the `Size` there
/// is rounded and one block short, so it is not used.)
fn parse_ls(out: &str) -> Result<Vec<ListedTarget>, String> {
    let mut targets: Vec<ListedTarget> = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("Target:") {
            let (iqn, portal) = rest
                .rsplit_once(" Portal:")
                .ok_or_else(|| format!("target line without a portal: {line:?}"))?;
            let iqn = iqn.trim();
            if iqn.is_empty() || iqn.contains(char::is_whitespace) {
                return Err(format!("unreadable target line: {line:?}"));
            }
            targets.push(ListedTarget {
                iqn: iqn.to_owned(),
                portal: portal.trim().to_owned(),
                luns: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("Lun:") {
            let target = targets
                .last_mut()
                .ok_or_else(|| format!("LUN line before any target: {line:?}"))?;
            let mut words = rest.split_whitespace();
            let id = words
                .next()
                .and_then(|w| w.parse::<u32>().ok())
                .ok_or_else(|| format!("unreadable LUN number: {line:?}"))?;
            let kind = words
                .next()
                .and_then(|w| w.strip_prefix("Type:"))
                .filter(|k| !k.is_empty())
                .ok_or_else(|| format!("LUN line without a type: {line:?}"))?;
            target.luns.push(ListedLun {
                id,
                kind: kind.to_owned(),
                no_media: line.contains("(No media loaded)"),
            });
        }
        // Anything else (a libiscsi warning on stdout) says nothing about
        // targets and is skipped.
    }
    Ok(targets)
}

#[derive(Debug, PartialEq, Eq)]
struct Capacity {
    size: u64,
    block_size: u32,
}

/// `iscsi-readcapacity16` output (key:value lines):
///
/// ```text
/// RETURNED LOGICAL BLOCK ADDRESS:131071
/// LOGICAL BLOCK LENGTH IN BYTES:512
/// ...
/// Total size:67108864
/// ```
///
/// The size is (last LBA + 1) × block length; `Total size`, when printed,
/// must agree.
fn parse_capacity(out: &str) -> Result<Capacity, String> {
    let field = |key: &str| -> Result<Option<u64>, String> {
        match out
            .lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("unreadable {key}: {v:?}")),
        }
    };
    let last = field("RETURNED LOGICAL BLOCK ADDRESS")?
        .ok_or("no RETURNED LOGICAL BLOCK ADDRESS in its output")?;
    let block = field("LOGICAL BLOCK LENGTH IN BYTES")?
        .ok_or("no LOGICAL BLOCK LENGTH IN BYTES in its output")?;
    let block_size = u32::try_from(block)
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("impossible block length {block}"))?;
    let size = last
        .checked_add(1)
        .and_then(|n| n.checked_mul(block))
        .ok_or_else(|| format!("capacity overflows: {last} × {block}"))?;
    if let Some(total) = field("Total size")? {
        if total != size {
            return Err(format!(
                "Total size {total} disagrees with ({last} + 1) × {block}"
            ));
        }
    }
    Ok(Capacity { size, block_size })
}

#[derive(Debug, PartialEq, Eq)]
struct Inquiry {
    device_type: String,
    vendor: String,
    product: String,
}

/// `iscsi-inq` output (standard INQUIRY data, key:value lines; vendor and
/// product come padded with spaces):
///
/// ```text
/// Peripheral Device Type:DIRECT_ACCESS
/// Vendor:IET
/// Product:VIRTUAL-DISK
/// ```
fn parse_inquiry(out: &str) -> Result<Inquiry, String> {
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    Ok(Inquiry {
        device_type: field("Peripheral Device Type")
            .filter(|t| !t.is_empty())
            .ok_or("no Peripheral Device Type in its output")?,
        vendor: field("Vendor").unwrap_or_default(),
        product: field("Product").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from libiscsi-bin 1.19.0 against tgt 1.0.85 (Debian 12).
    const LS: &str = "Target:iqn.2026-12.test.libgo:empty Portal:127.0.0.1:13260,1\n\
                      Target:iqn.2026-12.test.libgo:one Portal:127.0.0.1:13260,1\n";
    const LS_LUNS: &str = "Target:iqn.2026-12.test.libgo:empty Portal:127.0.0.1:13260,1\n\
Lun:0    Type:STORAGE_ARRAY_CONTROLLER\n\
Target:iqn.2026-12.test.libgo:one Portal:127.0.0.1:13260,1\n\
Lun:0    Type:STORAGE_ARRAY_CONTROLLER\n\
Lun:1    Type:DIRECT_ACCESS (Size:63M)\n\
Lun:3    Type:DIRECT_ACCESS (Size:31M)\n";
    const LS_V6: &str = "Target:iqn.2026-12.test.libgo:six Portal:[::1]:13262,1\n\
Lun:0    Type:STORAGE_ARRAY_CONTROLLER\n\
Lun:1    Type:DIRECT_ACCESS (Size:63M)\n";
    const CAP_512: &str = "RETURNED LOGICAL BLOCK ADDRESS:131071\n\
LOGICAL BLOCK LENGTH IN BYTES:512\n\
P_TYPE:0 PROT_EN:0\n\
P_I_EXPONENT:0 LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3\n\
LBPME:0 LBPRZ:0\n\
LOWEST ALIGNED LOGICAL BLOCK ADDRESS:0\n\
Total size:67108864\n";
    const CAP_4K: &str = "RETURNED LOGICAL BLOCK ADDRESS:8191\n\
LOGICAL BLOCK LENGTH IN BYTES:4096\n\
P_TYPE:0 PROT_EN:0\n\
P_I_EXPONENT:0 LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:0\n\
LBPME:0 LBPRZ:0\n\
LOWEST ALIGNED LOGICAL BLOCK ADDRESS:0\n\
Total size:33554432\n";
    const INQ_DISK: &str = "Peripheral Qualifier:CONNECTED\n\
Peripheral Device Type:DIRECT_ACCESS\n\
Removable:0\n\
Version:5 ANSI INCITS 408-2005 (SPC-3)\n\
NormACA:0\n\
HiSup:1\n\
ReponseDataFormat:2\n\
SCCS:0\n\
ACC:0\n\
TPGS:0\n\
3PC:0\n\
Protect:0\n\
EncServ:0\n\
MultiP:0\n\
SYNC:0\n\
CmdQue:1\n\
Vendor:IET     \n\
Product:VIRTUAL-DISK    \n\
Revision:0001\n\
Version Descriptor:04c0 SBC-3\n\
Version Descriptor:0960 iSCSI\n\
Version Descriptor:0300 SPC-3\n";
    const INQ_CONTROLLER: &str = "Peripheral Qualifier:CONNECTED\n\
Peripheral Device Type:STORAGE_ARRAY_CONTROLLER\n\
Removable:0\n\
Vendor:IET     \n\
Product:Controller      \n\
Revision:0001\n";

    fn p(s: &str) -> Portal {
        Portal::parse(s).unwrap()
    }

    #[test]
    fn portals_parse() {
        assert_eq!(
            p("127.0.0.1:13260"),
            Portal {
                host: "127.0.0.1".into(),
                port: 13260
            }
        );
        assert_eq!(p("127.0.0.1").port, 3260);
        assert_eq!(p("san-1.example.org:3261").host, "san-1.example.org");
        assert_eq!(p("Storage").host, "Storage");
        assert_eq!(
            p("[::1]:3262"),
            Portal {
                host: "::1".into(),
                port: 3262
            }
        );
        assert_eq!(p("[fd00::7]").port, 3260);
        assert_eq!(p("fd00::7").host, "fd00::7");
        assert_eq!(p("fd00::7").port, 3260);
        assert_eq!(Portal::new("[::1]", 5).unwrap().host, "::1");
        assert_eq!(
            Portal::new("10.0.0.1", 5).unwrap().to_string(),
            "10.0.0.1:5"
        );
        for bad in [
            "",
            ":3260",
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            "host:32 60",
            "a b",
            "host/x",
            "user@host",
            "user%pw@host:3260",
            "[127.0.0.1]:3260",
            "[::1",
            "[::1]3260",
            "[::1]:",
            "fe80::1%eth0",
            "[fe80::1%eth0]:3260",
            "-host",
            "host-.example",
            "a..b",
            "1.2.3",
            "256.1.1.1",
            "host:3260:1",
            "iscsi://host",
            "x\n",
        ] {
            assert!(Portal::parse(bad).is_err(), "{bad:?} was taken");
        }
        assert!(Portal::new("a/b", 3260).is_err());
        assert!(Portal::new("h", 0).is_err());
        let raw = Portal {
            host: "a@b".into(),
            port: 1,
        };
        assert!(raw.check().is_err());
    }

    #[test]
    fn portals_display_and_serde_round_trip() {
        for s in ["127.0.0.1:3260", "[::1]:13262", "san.example:3261"] {
            assert_eq!(p(s).to_string(), s);
            let json = serde_json::to_string(&p(s)).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Portal>(&json).unwrap(), p(s));
        }
        assert!(serde_json::from_str::<Portal>("\"a b\"").is_err());
    }

    #[test]
    fn iscsi_names() {
        for ok in [
            "iqn.2026-12.test.libgo:one",
            "iqn.1992-01.com.example",
            "iqn.1992-01.com.example:storage:disk2.sys1.xyz",
            "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
            "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls",
            "eui.02004567A425678D",
            "eui.02004567a425678d",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert!(valid_iqn(ok), "{ok} refused");
        }
        // 223 bytes is the most a name may have.
        let longest = format!("iqn.2026-12.test.libgo:{}", "a".repeat(200));
        assert_eq!(longest.len(), 223);
        assert!(valid_iqn(&longest));
        let long = format!("{longest}a");
        for bad in [
            "",
            "iqn.",
            "iqn.2026-12",
            "iqn.2026-12.",
            "iqn.2026-13.test.libgo",
            "iqn.2026-00.test.libgo",
            "iqn.26-12.test.libgo",
            "iqn.2026-1.test.libgo",
            "iqn.2026-12.test..libgo",
            "iqn.2026-12.test.libgo:",
            "iqn.2026-12.test.libgo:a/b",
            "iqn.2026-12.test.libgo:a b",
            "iqn.2026-12.test.libgo:a@b",
            "iqn.2026-12.test.libgo:a%b",
            "iqn.2026-12.test.libgo:a_b",
            "iqn.2026-12.Test.libgo",
            "IQN.2026-12.test.libgo",
            "iqn.2026-12.test.libgo:é",
            "eui.02004567A425678",
            "eui.02004567A425678DZ",
            "eui.02004567A425678G",
            "naa.1234",
            "ign.2026-12.test.libgo",
            long.as_str(),
        ] {
            assert!(!valid_iqn(bad), "{bad:?} taken");
        }
    }

    #[test]
    fn urls_for_qemu() {
        assert_eq!(
            qemu_url(&p("127.0.0.1:13260"), "iqn.2026-12.test.libgo:one", 1),
            "iscsi://127.0.0.1:13260/iqn.2026-12.test.libgo:one/1"
        );
        assert_eq!(
            qemu_url(&p("::1"), "iqn.2026-12.test.libgo:six", 7),
            "iscsi://[::1]:3260/iqn.2026-12.test.libgo:six/7"
        );
        assert_eq!(p("[::1]:13262").url(), "iscsi://[::1]:13262");
    }

    #[test]
    fn ls_output() {
        let t = parse_ls(LS).unwrap();
        assert_eq!(
            t.iter().map(|t| t.iqn.as_str()).collect::<Vec<_>>(),
            ["iqn.2026-12.test.libgo:empty", "iqn.2026-12.test.libgo:one"]
        );
        assert_eq!(t[1].portal, "127.0.0.1:13260,1");
        assert!(t.iter().all(|t| t.luns.is_empty()));

        let t = parse_ls(LS_LUNS).unwrap();
        assert_eq!(t.len(), 2);
        let lun = |id, kind: &str| ListedLun {
            id,
            kind: kind.into(),
            no_media: false,
        };
        assert_eq!(t[0].luns, [lun(0, "STORAGE_ARRAY_CONTROLLER")]);
        assert_eq!(
            t[1].luns,
            [
                lun(0, "STORAGE_ARRAY_CONTROLLER"),
                lun(1, "DIRECT_ACCESS"),
                lun(3, "DIRECT_ACCESS")
            ]
        );

        let t = parse_ls(LS_V6).unwrap();
        assert_eq!(t[0].portal, "[::1]:13262,1");
        assert_eq!(t[0].luns.len(), 2);

        assert_eq!(parse_ls("").unwrap(), []);
        let t = parse_ls(
            "Target:iqn.2026-12.a.b Portal:10.0.0.1:3260,1\nLun:2    Type:MMC (No media loaded)\n",
        )
        .unwrap();
        assert!(t[0].luns[0].no_media);
        // Noise lines are skipped; broken target or LUN lines are errors.
        assert_eq!(parse_ls("skipping link-local address\n").unwrap(), []);
        assert!(parse_ls("Lun:1    Type:DIRECT_ACCESS\n").is_err());
        assert!(parse_ls("Target:iqn.2026-12.a.b\n").is_err());
        assert!(parse_ls("Target:iqn.2026-12.a.b Portal:x\nLun:x Type:DIRECT_ACCESS\n").is_err());
        assert!(parse_ls("Target:iqn.2026-12.a.b Portal:x\nLun:1\n").is_err());
    }

    #[test]
    fn capacity_output() {
        assert_eq!(
            parse_capacity(CAP_512).unwrap(),
            Capacity {
                size: 64 << 20,
                block_size: 512
            }
        );
        assert_eq!(
            parse_capacity(CAP_4K).unwrap(),
            Capacity {
                size: 32 << 20,
                block_size: 4096
            }
        );
        // Without the total line the computed size stands; a total that
        // disagrees, a missing field or a zero block length are errors.
        let no_total: String = CAP_512
            .lines()
            .filter(|l| !l.starts_with("Total"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_capacity(&no_total).unwrap().size, 64 << 20);
        assert!(parse_capacity(&CAP_512.replace("67108864", "67108863")).is_err());
        assert!(parse_capacity(&CAP_512.replace("BYTES:512", "BYTES:0")).is_err());
        assert!(parse_capacity(&CAP_512.replace("RETURNED", "X")).is_err());
        assert!(parse_capacity("").is_err());
        assert!(parse_capacity(&CAP_512.replace(":131071", ":18446744073709551615")).is_err());
    }

    #[test]
    fn inquiry_output() {
        assert_eq!(
            parse_inquiry(INQ_DISK).unwrap(),
            Inquiry {
                device_type: "DIRECT_ACCESS".into(),
                vendor: "IET".into(),
                product: "VIRTUAL-DISK".into()
            }
        );
        assert_eq!(
            parse_inquiry(INQ_CONTROLLER).unwrap().device_type,
            "STORAGE_ARRAY_CONTROLLER"
        );
        assert!(parse_inquiry("Vendor:IET\n").is_err());
    }

    #[test]
    fn tool_failures_are_classified() {
        let portal = p("127.0.0.1:1");
        let out = |stderr: &str, code| Output {
            tool: "iscsi-ls".into(),
            code,
            stdout: String::new(),
            stderr: stderr.into(),
        };
        let refused = out(
            "discoveryconnect_cb: connection failed : iscsi_service: socket error Connection refused(111).",
            Some(10),
        );
        assert!(matches!(
            classify(&refused, &portal, None),
            IscsiError::Unreachable { reason, .. } if reason.contains("refused")
        ));
        let missing = out(
            "Login Failed. Failed to log in to target. Status: Target not found(515)",
            Some(10),
        );
        assert!(matches!(
            classify(&missing, &portal, Some("iqn.2026-12.a.b")),
            IscsiError::NoSuchTarget { iqn, .. } if iqn == "iqn.2026-12.a.b"
        ));
        let sense = out(
            "Login Failed. SENSE KEY:ILLEGAL_REQUEST(5) ASCQ:LOGICAL_UNIT_NOT_SUPPORTED(0x2500)",
            Some(10),
        );
        assert!(matches!(
            classify(&sense, &portal, Some("iqn.2026-12.a.b")),
            IscsiError::Protocol(m) if m.contains("LOGICAL_UNIT_NOT_SUPPORTED")
        ));
        assert!(matches!(
            classify(&out("boom", Some(1)), &portal, None),
            IscsiError::Tool(_)
        ));
        assert!(matches!(
            classify(&out("", None), &portal, None),
            IscsiError::Tool(m) if m.contains("signal")
        ));
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_before_anything_runs() {
        let tools = Tools {
            iscsi_ls: "/nonexistent/iscsi-ls".into(),
            ..Tools::default()
        };
        let raw = Portal {
            host: "x y".into(),
            port: 3260,
        };
        let limit = Duration::from_secs(1);
        assert!(matches!(
            tools.discover(&raw, limit).await,
            Err(IscsiError::Invalid { what: "portal", .. })
        ));
        assert!(matches!(
            tools
                .luns(&p("127.0.0.1:1"), "iqn.2026-12.a.b:x/y", limit)
                .await,
            Err(IscsiError::Invalid {
                what: "target name",
                ..
            })
        ));
        let bad_initiator = Tools {
            initiator: Some("me".into()),
            ..Tools::default()
        };
        assert!(matches!(
            bad_initiator.discover(&p("127.0.0.1:1"), limit).await,
            Err(IscsiError::Invalid {
                what: "initiator name",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_missing_tool_is_a_tool_error() {
        // Something must listen for the probe to pass.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let portal = Portal::new("127.0.0.1", l.local_addr().unwrap().port()).unwrap();
        let tools = Tools {
            iscsi_ls: "/nonexistent/iscsi-ls".into(),
            ..Tools::default()
        };
        let e = tools
            .discover(&portal, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, IscsiError::Tool(m) if m.contains("/nonexistent/iscsi-ls")),
            "{e}"
        );
    }
}
