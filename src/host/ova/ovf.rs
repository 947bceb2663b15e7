//! The OVF 1.0 descriptor: written from an [`OvfSystem`], and read back from
//! ours or from what VirtualBox and VMware's ovftool export.
//!
//! Reading matches elements and attributes by local name, so whatever prefix
//! a producer binds to the OVF, RASD or VSSD namespaces is accepted; OVF 2.0
//! `StorageItem` / `EthernetPortItem` are read like `Item`. A document type
//! declaration is refused outright (no entity can be defined, so none can be
//! expanded), and so is any entity reference but the five XML predefines and
//! character references.

use std::collections::HashMap;
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

use super::{OvaError, OvfDisk, OvfNic, OvfSystem};

/// Largest descriptor read: real ones are a few to a few dozen KiB.
pub const MAX_DESCRIPTOR: usize = 1 << 20;

const OVF_NS: &str = "http://schemas.dmtf.org/ovf/envelope/1";
const RASD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
const VSSD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The format URI of a streamOptimized VMDK, as VMware defines it.
pub const VMDK_STREAM_OPTIMIZED: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// Deepest element nesting read (VirtualBox's own section nests about ten).
const MAX_DEPTH: usize = 64;

const RT_CPU: u32 = 3;
const RT_MEMORY: u32 = 4;
const RT_IDE: u32 = 5;
const RT_NIC: u32 = 10;
const RT_DISK: u32 = 17;

/// Escapes text for element content or a double-quoted attribute value.
/// Characters XML 1.0 cannot carry at all (most C0 controls) become U+FFFD;
/// tab, newline and carriage return are written as character references so
/// that attribute-value and line-end normalisation keep them.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// One `Item` of the VirtualHardwareSection; `rasd` lists its RASD elements,
/// which the CIM schema requires in alphabetical order (checked in tests).
fn item(out: &mut String, rasd: &[(&str, String)]) {
    out.push_str("      <Item>\n");
    for (name, value) in rasd {
        let _ = writeln!(out, "        <rasd:{name}>{}</rasd:{name}>", escape(value));
    }
    out.push_str("      </Item>\n");
}

/// The OVF 1.0 descriptor of `s`: one VirtualSystem with its CPUs, memory,
/// one IDE (PIIX4) controller holding the disk, and E1000 NICs — the
/// hardware that both VirtualBox and VMware (hardware version 7 and later)
/// import and that stock Linux kernels drive without extra modules.
pub fn descriptor(s: &OvfSystem) -> String {
    let mut x = String::with_capacity(8 << 10);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<Envelope ovf:version=\"1.0\" xml:lang=\"en-US\" xmlns=\"{OVF_NS}\" \
         xmlns:ovf=\"{OVF_NS}\" xmlns:rasd=\"{RASD_NS}\" xmlns:vssd=\"{VSSD_NS}\" \
         xmlns:xsi=\"{XSI_NS}\">"
    );
    let d = &s.disk;
    x.push_str("  <References>\n");
    let _ = write!(
        x,
        "    <File ovf:href=\"{}\" ovf:id=\"file1\"",
        escape(&d.file_href)
    );
    if d.file_size > 0 {
        let _ = write!(x, " ovf:size=\"{}\"", d.file_size);
    }
    x.push_str("/>\n  </References>\n");

    x.push_str("  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
    let _ = write!(
        x,
        "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" \
         ovf:diskId=\"vmdisk1\" ovf:fileRef=\"file1\" ovf:format=\"{VMDK_STREAM_OPTIMIZED}\"",
        d.capacity
    );
    if let Some(p) = d.populated_size {
        let _ = write!(x, " ovf:populatedSize=\"{p}\"");
    }
    x.push_str("/>\n  </DiskSection>\n");

    let mut networks: Vec<&str> = Vec::new();
    for n in &s.nics {
        if !networks.contains(&n.network.as_str()) {
            networks.push(&n.network);
        }
    }
    if !networks.is_empty() {
        x.push_str("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n");
        for n in &networks {
            let e = escape(n);
            let _ = writeln!(
                x,
                "    <Network ovf:name=\"{e}\">\n      <Description>The {e} network</Description>\n    </Network>"
            );
        }
        x.push_str("  </NetworkSection>\n");
    }

    let name = escape(&s.name);
    let _ = writeln!(x, "  <VirtualSystem ovf:id=\"{name}\">");
    x.push_str("    <Info>A virtual machine</Info>\n");
    let _ = writeln!(x, "    <Name>{name}</Name>");
    if let Some(desc) = s.description.as_deref().filter(|d| !d.is_empty()) {
        let _ = writeln!(
            x,
            "    <AnnotationSection>\n      <Info>A human-readable annotation</Info>\n      \
             <Annotation>{}</Annotation>\n    </AnnotationSection>",
            escape(desc)
        );
    }
    x.push_str(
        "    <OperatingSystemSection ovf:id=\"101\">\n      \
         <Info>The kind of installed guest operating system</Info>\n      \
         <Description>Linux 64-bit</Description>\n    </OperatingSystemSection>\n",
    );
    x.push_str("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n");
    let _ = writeln!(
        x,
        "      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        \
         <vssd:InstanceID>0</vssd:InstanceID>\n        \
         <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>\n        \
         <vssd:VirtualSystemType>vmx-07</vssd:VirtualSystemType>\n      </System>"
    );
    item(
        &mut x,
        &[
            ("AllocationUnits", "hertz * 10^6".into()),
            ("Description", "Number of virtual CPUs".into()),
            ("ElementName", format!("{} virtual CPU(s)", s.cpus)),
            ("InstanceID", "1".into()),
            ("ResourceType", RT_CPU.to_string()),
            ("VirtualQuantity", s.cpus.to_string()),
        ],
    );
    item(
        &mut x,
        &[
            ("AllocationUnits", "byte * 2^20".into()),
            ("Description", "Memory Size".into()),
            ("ElementName", format!("{}MB of memory", s.memory_mib)),
            ("InstanceID", "2".into()),
            ("ResourceType", RT_MEMORY.to_string()),
            ("VirtualQuantity", s.memory_mib.to_string()),
        ],
    );
    item(
        &mut x,
        &[
            ("Address", "0".into()),
            ("Description", "IDE Controller".into()),
            ("ElementName", "ideController0".into()),
            ("InstanceID", "3".into()),
            ("ResourceSubType", "PIIX4".into()),
            ("ResourceType", RT_IDE.to_string()),
        ],
    );
    item(
        &mut x,
        &[
            ("AddressOnParent", "0".into()),
            ("ElementName", "disk1".into()),
            ("HostResource", "ovf:/disk/vmdisk1".into()),
            ("InstanceID", "4".into()),
            ("Parent", "3".into()),
            ("ResourceType", RT_DISK.to_string()),
        ],
    );
    for (i, n) in s.nics.iter().enumerate() {
        let mut rasd = Vec::with_capacity(8);
        if let Some(mac) = n.mac.as_deref().filter(|m| !m.is_empty()) {
            rasd.push(("Address", mac.to_owned()));
        }
        rasd.extend([
            ("AutomaticAllocation", "true".into()),
            ("Connection", n.network.clone()),
            (
                "Description",
                format!("E1000 ethernet adapter on \"{}\"", n.network),
            ),
            ("ElementName", format!("Ethernet {}", i + 1)),
            ("InstanceID", (5 + i).to_string()),
            ("ResourceSubType", "E1000".into()),
            ("ResourceType", RT_NIC.to_string()),
        ]);
        item(&mut x, &rasd);
    }
    x.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    x
}

fn invalid(msg: impl Into<String>) -> OvaError {
    OvaError::Invalid(msg.into())
}

/// What one hardware item said: its RASD (or SASD/EPASD) children by local
/// name, first occurrence kept, and whether it belongs to a named
/// deployment configuration (`ovf:configuration`).
#[derive(Default, Debug)]
struct RawItem {
    fields: HashMap<String, String>,
    configured: bool,
}

impl RawItem {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(|s| s.trim())
    }
    fn resource_type(&self) -> Option<u32> {
        self.get("ResourceType").and_then(|t| t.parse().ok())
    }
}

#[derive(Default, Debug)]
struct RawFile {
    href: String,
    size: Option<String>,
    compressed: bool,
    chunked: bool,
}

#[derive(Default, Debug)]
struct RawDisk {
    id: String,
    file_ref: Option<String>,
    capacity: String,
    units: Option<String>,
    populated: Option<String>,
    format: Option<String>,
}

#[derive(Default)]
struct Raw {
    files: Vec<(String, RawFile)>,
    disks: Vec<RawDisk>,
    systems: usize,
    system_id: Option<String>,
    name: Option<String>,
    annotation: Option<String>,
    items: Vec<RawItem>,
}

/// Where the reader is, by the local names of the open elements.
fn path_is(stack: &[String], want: &[&str]) -> bool {
    stack.len() == want.len() && stack.iter().zip(want).all(|(a, b)| a == b)
}

fn ends_with(stack: &[String], want: &[&str]) -> bool {
    stack.len() >= want.len()
        && stack[stack.len() - want.len()..]
            .iter()
            .zip(want)
            .all(|(a, b)| a == b)
}

fn local(name: &[u8]) -> String {
    let l = match name.iter().rposition(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    };
    String::from_utf8_lossy(l).into_owned()
}

/// The attributes of `e` by local name. An attribute in the OVF namespace
/// (or unprefixed) wins over a same-named one from another vocabulary, so a
/// `vmw:id` next to `ovf:id` cannot shadow it.
fn attrs(
    reader: &NsReader<&[u8]>,
    e: &BytesStart<'_>,
) -> Result<HashMap<String, String>, OvaError> {
    let mut out: HashMap<String, (bool, String)> = HashMap::new();
    for a in e.attributes() {
        let a = a.map_err(|e| invalid(format!("the descriptor is not well-formed XML: {e}")))?;
        let key = a.key;
        if key.as_namespace_binding().is_some() {
            continue;
        }
        let (ns, l) = reader.resolver().resolve_attribute(key);
        let ours = match ns {
            ResolveResult::Unbound => true,
            ResolveResult::Bound(Namespace(n)) => n == OVF_NS.as_bytes(),
            ResolveResult::Unknown(_) => false,
        };
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| invalid(format!("the descriptor has a bad attribute value: {e}")))?
            .into_owned();
        let l = String::from_utf8_lossy(l.as_ref()).into_owned();
        match out.get(&l) {
            Some((true, _)) => {}
            Some((false, _)) if !ours => {}
            _ => {
                out.insert(l, (ours, value));
            }
        }
    }
    Ok(out.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

/// The value of an entity reference: the five predefined ones and numeric
/// character references; anything else would need a DTD, which is refused.
fn entity(name: &str) -> Result<char, OvaError> {
    Ok(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let n = if let Some(h) = name.strip_prefix("#x") {
                u32::from_str_radix(h, 16).ok()
            } else if let Some(d) = name.strip_prefix('#') {
                d.parse().ok()
            } else {
                return Err(invalid(format!(
                    "the descriptor uses the undefined entity &{name};"
                )));
            };
            n.and_then(char::from_u32).ok_or_else(|| {
                invalid(format!(
                    "the descriptor has a bad character reference &{name};"
                ))
            })?
        }
    })
}

fn read_raw(xml: &str) -> Result<Raw, OvaError> {
    let mut reader = NsReader::from_reader(xml.as_bytes());
    {
        let c = reader.config_mut();
        c.expand_empty_elements = true;
        c.check_end_names = true;
    }
    let mut raw = Raw::default();
    let mut stack: Vec<String> = Vec::new();
    // Text of the element being collected, and which it is.
    let mut text: Option<String> = None;
    let mut item: Option<RawItem> = None;
    let mut seen_root = false;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| invalid(format!("the descriptor is not well-formed XML: {e}")))?;
        match ev {
            Event::DocType(_) => {
                return Err(invalid(
                    "the descriptor has a document type declaration (DTD), which is not accepted",
                ))
            }
            Event::Start(e) => {
                let name = local(e.name().as_ref());
                if stack.is_empty() {
                    if seen_root {
                        return Err(invalid("the descriptor has more than one root element"));
                    }
                    seen_root = true;
                    if name != "Envelope" {
                        return Err(invalid(format!(
                            "the descriptor's root element is <{name}>, not an OVF <Envelope>"
                        )));
                    }
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(invalid("the descriptor nests elements too deeply"));
                }
                stack.push(name);
                let s = &stack[..];
                if path_is(s, &["Envelope", "References", "File"]) {
                    let a = attrs(&reader, &e)?;
                    let id = a.get("id").cloned().unwrap_or_default();
                    raw.files.push((
                        id,
                        RawFile {
                            href: a.get("href").cloned().unwrap_or_default(),
                            size: a.get("size").cloned(),
                            compressed: a
                                .get("compression")
                                .is_some_and(|c| !c.trim().is_empty() && c.trim() != "identity"),
                            chunked: a.contains_key("chunkSize"),
                        },
                    ));
                } else if path_is(s, &["Envelope", "DiskSection", "Disk"]) {
                    let a = attrs(&reader, &e)?;
                    raw.disks.push(RawDisk {
                        id: a.get("diskId").cloned().unwrap_or_default(),
                        file_ref: a.get("fileRef").cloned(),
                        capacity: a.get("capacity").cloned().unwrap_or_default(),
                        units: a.get("capacityAllocationUnits").cloned(),
                        populated: a.get("populatedSize").cloned(),
                        format: a.get("format").cloned(),
                    });
                } else if s.last().is_some_and(|l| l == "VirtualSystem") {
                    raw.systems += 1;
                    if raw.systems == 1 {
                        raw.system_id = attrs(&reader, &e)?.get("id").cloned();
                    }
                } else if raw.systems == 1
                    && (ends_with(s, &["VirtualSystem", "Name"])
                        || ends_with(s, &["VirtualSystem", "AnnotationSection", "Annotation"]))
                {
                    text = Some(String::new());
                } else if raw.systems == 1
                    && s.len() >= 2
                    && s[s.len() - 2] == "VirtualHardwareSection"
                    && matches!(
                        s[s.len() - 1].as_str(),
                        "Item" | "StorageItem" | "EthernetPortItem"
                    )
                {
                    let a = attrs(&reader, &e)?;
                    item = Some(RawItem {
                        fields: HashMap::new(),
                        configured: a.contains_key("configuration"),
                    });
                } else if item.is_some()
                    && s.len() >= 2
                    && matches!(
                        s[s.len() - 2].as_str(),
                        "Item" | "StorageItem" | "EthernetPortItem"
                    )
                {
                    text = Some(String::new());
                }
            }
            Event::End(_) => {
                let Some(name) = stack.pop() else {
                    return Err(invalid("the descriptor is not well-formed XML"));
                };
                if let Some(t) = text.take() {
                    if let Some(it) = item.as_mut() {
                        if stack.last().is_some_and(|p| {
                            matches!(p.as_str(), "Item" | "StorageItem" | "EthernetPortItem")
                        }) {
                            it.fields.entry(name.clone()).or_insert(t);
                        } else {
                            // Text of a deeper element inside an item: ignored.
                        }
                    } else if name == "Name" {
                        raw.name.get_or_insert(t);
                    } else if name == "Annotation" {
                        raw.annotation.get_or_insert(t);
                    }
                } else if item.is_some()
                    && matches!(name.as_str(), "Item" | "StorageItem" | "EthernetPortItem")
                    && stack.last().is_some_and(|p| p == "VirtualHardwareSection")
                {
                    raw.items.extend(item.take());
                }
            }
            Event::Text(t) => {
                if let Some(buf) = text.as_mut() {
                    let t = t
                        .xml10_content()
                        .map_err(|e| invalid(format!("the descriptor is not UTF-8: {e}")))?;
                    buf.push_str(&t);
                    if buf.len() > MAX_DESCRIPTOR {
                        return Err(invalid("the descriptor is too large"));
                    }
                }
            }
            Event::CData(t) => {
                if let Some(buf) = text.as_mut() {
                    let t = t
                        .decode()
                        .map_err(|e| invalid(format!("the descriptor is not UTF-8: {e}")))?;
                    buf.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                let name = r
                    .decode()
                    .map_err(|e| invalid(format!("the descriptor is not UTF-8: {e}")))?;
                let c = entity(&name)?;
                if let Some(buf) = text.as_mut() {
                    buf.push(c);
                }
            }
            // Expanded into Start and End by the configuration above.
            Event::Empty(_) => return Err(invalid("the descriptor could not be read")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() || !seen_root {
        return Err(invalid("the descriptor ends before its <Envelope> closes"));
    }
    Ok(raw)
}

/// The number of bytes one unit of a DMTF programmatic unit stands for:
/// `byte`, `byte * 2^20`, `byte * 10^6`, `byte * 1024`, and the CIM names
/// `KiloBytes`, `MegaBytes`, `GigaBytes`, `TeraBytes` (binary multiples, as
/// VirtualBox and VMware mean them).
fn unit_bytes(units: &str) -> Option<u64> {
    let u: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let named = match u.as_str() {
        "b" | "byte" | "bytes" => Some(1),
        "kb" | "kib" | "kilobyte" | "kilobytes" => Some(1 << 10),
        "mb" | "mib" | "megabyte" | "megabytes" => Some(1 << 20),
        "gb" | "gib" | "gigabyte" | "gigabytes" => Some(1 << 30),
        "tb" | "tib" | "terabyte" | "terabytes" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let rest = u.strip_prefix("bytes").or_else(|| u.strip_prefix("byte"))?;
    let mut total: u64 = 1;
    for factor in rest.strip_prefix('*')?.split('*') {
        let f = match factor.split_once('^') {
            Some((base, exp)) => {
                let base: u64 = base.parse().ok()?;
                let exp: u32 = exp.parse().ok()?;
                base.checked_pow(exp)?
            }
            None => factor.parse().ok()?,
        };
        total = total.checked_mul(f)?;
    }
    (total > 0).then_some(total)
}

fn number(what: &str, s: &str) -> Result<u64, OvaError> {
    let s = s.trim();
    if s.starts_with("${") {
        return Err(invalid(format!(
            "the descriptor's {what} refers to a property ({s}), which is not supported"
        )));
    }
    s.parse()
        .map_err(|_| invalid(format!("the descriptor's {what} is not a number: {s:?}")))
}

/// Quantity × units in bytes.
fn bytes(what: &str, quantity: &str, units: Option<&str>, default: u64) -> Result<u64, OvaError> {
    let q = number(what, quantity)?;
    let mult = match units.map(str::trim).filter(|u| !u.is_empty()) {
        None => default,
        Some(u) => unit_bytes(u)
            .ok_or_else(|| invalid(format!("the descriptor's {what} has unknown units {u:?}")))?,
    };
    q.checked_mul(mult)
        .ok_or_else(|| invalid(format!("the descriptor's {what} is too large")))
}

/// A MAC address as six hex octets separated by `:` or `-`, normalised to
/// lower case with colons.
fn mac(s: &str) -> Result<String, OvaError> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(invalid(format!(
            "the descriptor gives a NIC the address {s:?}, which is not a MAC address"
        )));
    }
    Ok(parts.join(":").to_ascii_lowercase())
}

/// Whether `name` can be used as one file name: not empty, no path
/// separator (`/` or `\\`), not `.` or `..`, no control character (which
/// would also break a manifest line), at most 255 bytes.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// Picks, among `items` of one resource type, those outside any deployment
/// configuration first.
fn first_of(items: &[RawItem], rt: u32) -> Option<&RawItem> {
    let mut of: Vec<&RawItem> = items
        .iter()
        .filter(|i| i.resource_type() == Some(rt))
        .collect();
    of.sort_by_key(|i| i.configured);
    of.first().copied()
}

/// Reads a descriptor written by [`descriptor`], VirtualBox or VMware: the
/// first virtual system's name, CPUs, memory, first disk and NICs.
pub fn parse_descriptor(xml: &str) -> Result<OvfSystem, OvaError> {
    if xml.len() > MAX_DESCRIPTOR {
        return Err(invalid(format!(
            "the descriptor is {} bytes; at most {MAX_DESCRIPTOR} are accepted",
            xml.len()
        )));
    }
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let raw = read_raw(xml)?;
    match raw.systems {
        0 => return Err(invalid("the descriptor has no VirtualSystem")),
        1 => {}
        n => {
            return Err(invalid(format!(
                "the descriptor has {n} virtual systems; only single-machine packages are accepted"
            )))
        }
    }
    let name = raw
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .or(raw.system_id.as_deref().map(str::trim))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("the descriptor's VirtualSystem has no name or id"))?
        .to_owned();

    let cpu = first_of(&raw.items, RT_CPU)
        .ok_or_else(|| invalid("the descriptor has no CPU item (ResourceType 3)"))?;
    let cpus = number("CPU count", cpu.get("VirtualQuantity").unwrap_or(""))?;
    let cpus = u32::try_from(cpus)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| invalid(format!("the descriptor asks for {cpus} CPUs")))?;

    let mem = first_of(&raw.items, RT_MEMORY)
        .ok_or_else(|| invalid("the descriptor has no memory item (ResourceType 4)"))?;
    // RASD's default for memory is not stated; producers that omit the
    // units mean MiB.
    let mem_bytes = bytes(
        "memory size",
        mem.get("VirtualQuantity").unwrap_or(""),
        mem.get("AllocationUnits"),
        1 << 20,
    )?;
    if mem_bytes == 0 {
        return Err(invalid("the descriptor asks for no memory"));
    }
    let memory_mib = mem_bytes.div_ceil(1 << 20);

    // The disk: the one the first disk drive item attaches, else the first
    // of the DiskSection.
    let attached = raw
        .items
        .iter()
        .filter(|i| i.resource_type() == Some(RT_DISK))
        .filter_map(|i| i.get("HostResource"))
        .filter_map(|h| {
            let h = h.strip_prefix("ovf:").unwrap_or(h);
            h.strip_prefix("/disk/")
        })
        .find_map(|id| raw.disks.iter().find(|d| d.id == id));
    let disk = attached
        .or(raw.disks.first())
        .ok_or_else(|| invalid("the descriptor has no disk"))?;
    let format = disk.format.as_deref().unwrap_or("").trim();
    if !format.contains("vmdk.html") {
        return Err(invalid(format!(
            "the disk's format is {format:?}; only VMDK disks are accepted"
        )));
    }
    let capacity = bytes("disk capacity", &disk.capacity, disk.units.as_deref(), 1)?;
    if capacity == 0 {
        return Err(invalid("the descriptor gives the disk no capacity"));
    }
    let populated_size = disk
        .populated
        .as_deref()
        .map(|p| number("disk populatedSize", p))
        .transpose()?;
    let file_ref = disk
        .file_ref
        .as_deref()
        .ok_or_else(|| invalid("the disk has no fileRef: a blank disk cannot be imported"))?;
    let (_, file) = raw
        .files
        .iter()
        .find(|(id, _)| id == file_ref)
        .ok_or_else(|| {
            invalid(format!(
                "the disk refers to file {file_ref:?}, which References does not list"
            ))
        })?;
    if file.compressed || file.chunked {
        return Err(invalid(format!(
            "the disk file {:?} is compressed or chunked, which is not supported",
            file.href
        )));
    }
    if !plain_file_name(&file.href) {
        return Err(invalid(format!(
            "the disk file {:?} is not a plain file name",
            file.href
        )));
    }
    let file_size = file
        .size
        .as_deref()
        .map(|s| number("disk file size", s))
        .transpose()?
        .unwrap_or(0);

    let mut nics = Vec::new();
    for it in raw
        .items
        .iter()
        .filter(|i| i.resource_type() == Some(RT_NIC))
    {
        nics.push(OvfNic {
            network: it.get("Connection").unwrap_or("").to_owned(),
            mac: it
                .get("Address")
                .filter(|a| !a.is_empty())
                .map(mac)
                .transpose()?,
        });
    }

    Ok(OvfSystem {
        name,
        cpus,
        memory_mib,
        disk: OvfDisk {
            file_href: file.href.clone(),
            file_size,
            capacity,
            populated_size,
        },
        nics,
        description: raw.annotation.filter(|a| !a.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OvfSystem {
        OvfSystem {
            name: "web-1".into(),
            cpus: 2,
            memory_mib: 1536,
            disk: OvfDisk {
                file_href: "web-1-disk1.vmdk".into(),
                file_size: 123_456,
                capacity: 64 << 20,
                populated_size: Some(1 << 20),
            },
            nics: vec![
                OvfNic {
                    network: "default".into(),
                    mac: Some("52:54:00:12:34:56".into()),
                },
                OvfNic {
                    network: "back & <end>".into(),
                    mac: None,
                },
                OvfNic {
                    network: "default".into(),
                    mac: None,
                },
            ],
            description: Some("A \"web\" server\nfor <tests> & 'more'".into()),
        }
    }

    #[test]
    fn our_descriptor_reads_back_the_same() {
        let s = sample();
        assert_eq!(parse_descriptor(&descriptor(&s)).unwrap(), s);
        let bare = OvfSystem {
            nics: vec![],
            description: None,
            disk: OvfDisk {
                file_size: 0,
                populated_size: None,
                ..s.disk.clone()
            },
            ..s.clone()
        };
        let x = descriptor(&bare);
        assert!(!x.contains("NetworkSection") && !x.contains("AnnotationSection"));
        assert!(!x.contains("ovf:size") && !x.contains("populatedSize"));
        assert_eq!(parse_descriptor(&x).unwrap(), bare);
    }

    #[test]
    fn our_descriptor_has_the_sections_in_schema_order() {
        let x = descriptor(&sample());
        let at = |needle: &str| x.find(needle).unwrap_or_else(|| panic!("{needle} missing"));
        let order = [
            "<References>",
            "<DiskSection>",
            "<NetworkSection>",
            "<VirtualSystem ",
            "<Name>",
            "<AnnotationSection>",
            "<OperatingSystemSection ovf:id=\"101\">",
            "<VirtualHardwareSection>",
            "<System>",
            "<Item>",
        ];
        for w in order.windows(2) {
            assert!(at(w[0]) < at(w[1]), "{} should come before {}", w[0], w[1]);
        }
        // One Network per distinct network, in order of first use.
        assert_eq!(x.matches("<Network ").count(), 2);
        assert!(x.contains("<Network ovf:name=\"back &amp; &lt;end&gt;\">"));
        assert!(x.contains(
            "ovf:capacity=\"67108864\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk1\" \
             ovf:fileRef=\"file1\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\" \
             ovf:populatedSize=\"1048576\""
        ));
        assert!(x.contains(
            "<File ovf:href=\"web-1-disk1.vmdk\" ovf:id=\"file1\" ovf:size=\"123456\"/>"
        ));
        assert!(x.contains("<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"));
        assert!(x.contains("<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>"));
        assert!(x.contains("<rasd:Address>52:54:00:12:34:56</rasd:Address>"));
    }

    /// The CIM classes are sequences: RASD and VSSD elements must come in
    /// alphabetical order, and an Item may not repeat one.
    #[test]
    fn rasd_and_vssd_elements_are_in_alphabetical_order() {
        let x = descriptor(&sample());
        let mut blocks = 0;
        for (open, close, prefix) in [
            ("<Item>", "</Item>", "<rasd:"),
            ("<System>", "</System>", "<vssd:"),
        ] {
            let mut rest = x.as_str();
            while let Some(i) = rest.find(open) {
                let body = &rest[i..i + rest[i..].find(close).unwrap()];
                let names: Vec<&str> = body
                    .match_indices(prefix)
                    .map(|(j, _)| {
                        let n = &body[j + prefix.len()..];
                        &n[..n.find('>').unwrap()]
                    })
                    .collect();
                assert!(!names.is_empty());
                let mut sorted = names.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(names, sorted, "in {body}");
                blocks += 1;
                rest = &rest[i + open.len()..];
            }
        }
        // System, CPU, memory, controller, disk and three NICs.
        assert_eq!(blocks, 8);
    }

    #[test]
    fn text_is_escaped_and_unrepresentable_characters_replaced() {
        let mut s = sample();
        s.name = "a&b<c>\"d'".into();
        s.description = Some("tab\there\r\nbell\u{7}".into());
        let x = descriptor(&s);
        assert!(x.contains("<Name>a&amp;b&lt;c&gt;&quot;d&apos;</Name>"));
        assert!(!x.contains('\u{7}'));
        let back = parse_descriptor(&x).unwrap();
        assert_eq!(back.name, s.name);
        assert_eq!(
            back.description.as_deref(),
            Some("tab\there\r\nbell\u{fffd}")
        );
    }

    #[test]
    fn plain_file_names() {
        for ok in ["disk1.vmdk", "web-1 (copy).vmdk", "..vmdk", "ünï.vmdk"] {
            assert!(plain_file_name(ok), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a\\b",
            "a\nb",
            "a\0b",
            long.as_str(),
        ] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn units_of_memory_and_capacity() {
        for (u, want) in [
            ("byte", 1),
            ("bytes", 1),
            ("byte * 2^20", 1 << 20),
            ("byte*2^30", 1 << 30),
            ("byte * 1024", 1024),
            ("byte * 10^6", 1_000_000),
            ("byte * 2^10 * 2^10", 1 << 20),
            ("KiloBytes", 1 << 10),
            ("MegaBytes", 1 << 20),
            ("GigaBytes", 1 << 30),
            ("MB", 1 << 20),
        ] {
            assert_eq!(unit_bytes(u), Some(want), "{u}");
        }
        for u in [
            "hertz * 10^6",
            "furlongs",
            "byte * 2^99",
            "byte *",
            "byte * x",
        ] {
            assert_eq!(unit_bytes(u), None, "{u}");
        }
    }

    /// A descriptor as VirtualBox 7 exports it in "OVF 1.0" mode: MegaBytes,
    /// capacity without units and without a file size, HostResource without
    /// the `ovf:` scheme, SATA controller, and its own vbox:Machine section
    /// (which has elements named like OVF ones and must be ignored).
    const VIRTUALBOX: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="debian12-disk001.vmdk"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="21474836480" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="4b8ac2a0-5a8e-4d43-9a35-7b1b2a9b0c11"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
    <Network ovf:name="HostOnly">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="debian12">
    <Info>A virtual machine</Info>
    <AnnotationSection>
      <Info>A human-readable annotation</Info>
      <Annotation>Build box &amp; test runner</Annotation>
    </AnnotationSection>
    <OperatingSystemSection ovf:id="96">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>debian12</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>2 virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>2048 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>2048 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>ideController0</rasd:Caption>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>ideController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:Caption>sound</rasd:Caption>
        <rasd:Description>Sound Card</rasd:Description>
        <rasd:ElementName>sound</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>ensoniq1371</rasd:ResourceSubType>
        <rasd:ResourceType>35</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>cdrom1</rasd:Caption>
        <rasd:Description>CD-ROM Drive</rasd:Description>
        <rasd:ElementName>cdrom1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'HostOnly'</rasd:Caption>
        <rasd:Connection>HostOnly</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'HostOnly'</rasd:ElementName>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:ResourceSubType>virtio</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.19-linux" uuid="{0c7a3a3e-1c44-4a55-8a0f-2f5f3c1d6e21}" name="debian12" OSType="Debian_64" snapshotFolder="Snapshots" lastStateChange="2024-03-02T10:11:12Z">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Description>not the annotation</Description>
      <Hardware>
        <CPU count="2">
          <PAE enabled="false"/>
          <LongMode enabled="true"/>
        </CPU>
        <Memory RAMSize="2048"/>
        <Network>
          <Adapter slot="0" enabled="true" MACAddress="0800273C4F21" type="82540EM">
            <NAT localhost-reachable="true"/>
          </Adapter>
          <Adapter slot="1" enabled="true" MACAddress="080027A1B2C3" type="virtio">
            <HostOnlyInterface name="vboxnet0"/>
          </Adapter>
        </Network>
        <StorageControllers>
          <StorageController name="SATA" type="AHCI" PortCount="1" useHostIOCache="false" Bootable="true" IDE0MasterEmulationPort="0" IDE0SlaveEmulationPort="1" IDE1MasterEmulationPort="2" IDE1SlaveEmulationPort="3">
            <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">
              <Image uuid="{4b8ac2a0-5a8e-4d43-9a35-7b1b2a9b0c11}"/>
            </AttachedDevice>
          </StorageController>
        </StorageControllers>
      </Hardware>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"#;

    #[test]
    fn a_virtualbox_descriptor() {
        let s = parse_descriptor(VIRTUALBOX).unwrap();
        assert_eq!(
            s,
            OvfSystem {
                name: "debian12".into(),
                cpus: 2,
                memory_mib: 2048,
                disk: OvfDisk {
                    file_href: "debian12-disk001.vmdk".into(),
                    file_size: 0,
                    capacity: 20 << 30,
                    populated_size: None,
                },
                nics: vec![
                    OvfNic {
                        network: "NAT".into(),
                        mac: None
                    },
                    OvfNic {
                        network: "HostOnly".into(),
                        mac: None
                    },
                ],
                description: Some("Build box & test runner".into()),
            }
        );
    }

    /// A descriptor as VMware's ovftool exports a vSphere VM: capacity in
    /// GiB, populatedSize, a second (NVRAM) file, ParaVirtual SCSI, vmw:
    /// extensions inside items, MACs in upper case, the annotation after the
    /// hardware, and a comment before the root.
    const OVFTOOL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by VMware ovftool 4.4.3 (build-18663434), UTC time: 2023-05-11T09:12:44.512Z-->
<Envelope vmw:buildId="build-18663434" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="web01-file1.nvram" ovf:id="file2" ovf:size="8684"/>
    <File ovf:href="web01-disk1.vmdk" ovf:id="file1" ovf:size="1073291776"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="2845835264"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
    <Network ovf:name="Backend &amp; Storage">
      <Description>The Backend &amp; Storage network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web01">
    <Info>A virtual machine</Info>
    <Name>web01</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian GNU/Linux 11 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>web01</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>4 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>4</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">2</vmw:CoresPerSocket>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>8192MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>8192</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>SATA Controller 0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>CD/DVD drive 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceSubType>vmware.cdrom.remotepassthrough</rasd:ResourceSubType>
        <rasd:ResourceType>15</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.exclusive" vmw:value="false"/>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.writeThrough" vmw:value="false"/>
      </Item>
      <Item>
        <rasd:Address>00:50:56:AB:12:34</rasd:Address>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on &quot;VM Network&quot;</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="160"/>
        <vmw:Config ovf:required="false" vmw:key="wakeOnLanEnabled" vmw:value="true"/>
      </Item>
      <Item>
        <rasd:Address>00-50-56-ab-56-78</rasd:Address>
        <rasd:AddressOnParent>8</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>Backend &amp; Storage</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on &quot;Backend &amp; Storage&quot;</rasd:Description>
        <rasd:ElementName>Network adapter 2</rasd:ElementName>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>Video card</rasd:ElementName>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:ResourceType>24</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="videoRamSizeInKB" vmw:value="4096"/>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
    </VirtualHardwareSection>
    <AnnotationSection ovf:required="false">
      <Info>A human-readable annotation</Info>
      <Annotation>Front-end web server</Annotation>
    </AnnotationSection>
  </VirtualSystem>
</Envelope>
"#;

    #[test]
    fn an_ovftool_descriptor() {
        let s = parse_descriptor(OVFTOOL).unwrap();
        assert_eq!(
            s,
            OvfSystem {
                name: "web01".into(),
                cpus: 4,
                memory_mib: 8192,
                disk: OvfDisk {
                    file_href: "web01-disk1.vmdk".into(),
                    file_size: 1_073_291_776,
                    capacity: 16 << 30,
                    populated_size: Some(2_845_835_264),
                },
                nics: vec![
                    OvfNic {
                        network: "VM Network".into(),
                        mac: Some("00:50:56:ab:12:34".into())
                    },
                    OvfNic {
                        network: "Backend & Storage".into(),
                        mac: Some("00:50:56:ab:56:78".into())
                    },
                ],
                description: Some("Front-end web server".into()),
            }
        );
    }

    /// OVF 2.0 as VirtualBox writes it: StorageItem and EthernetPortItem
    /// with their own prefixes, memory in bytes.
    #[test]
    fn other_prefixes_and_ovf2_item_kinds() {
        let x = r#"<?xml version="1.0"?>
<o:Envelope xmlns:o="http://schemas.dmtf.org/ovf/envelope/2" xmlns:r="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:s="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData.xsd" xmlns:e="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData.xsd">
  <o:References><o:File o:id="f" o:href="d.vmdk" o:size="42"/></o:References>
  <o:DiskSection><o:Info>x</o:Info>
    <o:Disk o:capacity="512" o:capacityAllocationUnits="byte * 2^20" o:diskId="d1" o:fileRef="f" o:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </o:DiskSection>
  <o:VirtualSystem o:id="two">
    <o:Info>x</o:Info>
    <o:VirtualHardwareSection><o:Info>x</o:Info>
      <o:Item><r:InstanceID>1</r:InstanceID><r:ResourceType>3</r:ResourceType><r:VirtualQuantity>1</r:VirtualQuantity></o:Item>
      <o:Item><r:AllocationUnits>byte</r:AllocationUnits><r:InstanceID>2</r:InstanceID><r:ResourceType>4</r:ResourceType><r:VirtualQuantity>536870912</r:VirtualQuantity></o:Item>
      <o:StorageItem><s:HostResource>/disk/d1</s:HostResource><s:InstanceID>3</s:InstanceID><s:ResourceType>17</s:ResourceType></o:StorageItem>
      <o:EthernetPortItem><e:Address>0a:0b:0c:0d:0e:0f</e:Address><e:Connection><![CDATA[lan & wan]]></e:Connection><e:InstanceID>4</e:InstanceID><e:ResourceType>10</e:ResourceType></o:EthernetPortItem>
    </o:VirtualHardwareSection>
  </o:VirtualSystem>
</o:Envelope>"#;
        let s = parse_descriptor(x).unwrap();
        assert_eq!((s.name.as_str(), s.cpus, s.memory_mib), ("two", 1, 512));
        assert_eq!(s.disk.capacity, 512 << 20);
        assert_eq!(s.disk.file_size, 42);
        assert_eq!(
            s.nics,
            vec![OvfNic {
                network: "lan & wan".into(),
                mac: Some("0a:0b:0c:0d:0e:0f".into())
            }]
        );
    }

    fn err(x: &str) -> String {
        match parse_descriptor(x) {
            Err(OvaError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn dtds_and_undefined_entities_are_refused() {
        let xxe = OVFTOOL.replacen(
            "<Envelope",
            "<!DOCTYPE Envelope [<!ENTITY x SYSTEM \"file:///etc/hostname\">]>\n<Envelope",
            1,
        );
        assert!(err(&xxe).contains("DTD"));
        let xxe = xxe.replace("<Name>web01</Name>", "<Name>&x;</Name>");
        assert!(err(&xxe).contains("DTD"));
        let undefined = OVFTOOL.replace("<Name>web01</Name>", "<Name>&x;</Name>");
        assert!(err(&undefined).contains("entity"));
        let in_attr = OVFTOOL.replace("ovf:id=\"web01\"", "ovf:id=\"&x;\"");
        assert!(matches!(
            parse_descriptor(&in_attr),
            Err(OvaError::Invalid(_))
        ));
        // Character references are fine.
        let chars = OVFTOOL.replace("<Name>web01</Name>", "<Name>&#119;eb&#x30;1</Name>");
        assert_eq!(parse_descriptor(&chars).unwrap().name, "web01");
    }

    #[test]
    fn bad_descriptors_are_refused_with_a_reason() {
        let big = format!("{}<!--{}-->", OVFTOOL, "x".repeat(MAX_DESCRIPTOR));
        assert!(err(&big).contains("at most"));
        assert!(err("<Envelope><References>").contains("Envelope"));
        assert!(err("not xml at all").contains("Envelope"));
        assert!(err("<Html/>").contains("not an OVF"));
        assert!(err(&OVFTOOL.replace("</Name>", "</Nome>")).contains("well-formed"));
        let two = OVFTOOL.replace(
            "</Envelope>",
            "<VirtualSystem ovf:id=\"b\"><Info>x</Info></VirtualSystem></Envelope>",
        );
        assert!(err(&two).contains("2 virtual systems"));
        let qcow = OVFTOOL.replace(
            "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
            "http://www.gnome.org/~markmc/qcow-image-format.html",
        );
        assert!(err(&qcow).contains("only VMDK"));
        let escape = OVFTOOL.replace("web01-disk1.vmdk", "../../etc/passwd");
        assert!(err(&escape).contains("plain file name"));
        let gz = OVFTOOL.replace(
            "ovf:id=\"file1\" ovf:size",
            "ovf:id=\"file1\" ovf:compression=\"gzip\" ovf:size",
        );
        assert!(err(&gz).contains("compressed"));
        let prop = OVFTOOL.replace("ovf:capacity=\"16\"", "ovf:capacity=\"${disk.size}\"");
        assert!(err(&prop).contains("property"));
        let furlongs = OVFTOOL.replace("byte * 2^20", "furlongs");
        assert!(err(&furlongs).contains("units"));
        let no_cpu = OVFTOOL.replace(
            "<rasd:ResourceType>3</rasd:ResourceType>",
            "<rasd:ResourceType>1</rasd:ResourceType>",
        );
        assert!(err(&no_cpu).contains("CPU"));
        let zero = OVFTOOL.replace(
            "<rasd:VirtualQuantity>4</rasd:VirtualQuantity>",
            "<rasd:VirtualQuantity>0</rasd:VirtualQuantity>",
        );
        assert!(err(&zero).contains("0 CPUs"));
        let mac = OVFTOOL.replace("00:50:56:AB:12:34", "00:50:56:AB:12");
        assert!(err(&mac).contains("MAC"));
        let no_file = OVFTOOL.replace("ovf:fileRef=\"file1\"", "ovf:fileRef=\"file9\"");
        assert!(err(&no_file).contains("file9"));
    }

    #[test]
    fn items_of_a_deployment_configuration_yield_to_plain_ones() {
        let x = OVFTOOL.replace(
            "      <Item>\n        <rasd:AllocationUnits>hertz",
            "      <Item ovf:configuration=\"large\">\n        <rasd:InstanceID>90</rasd:InstanceID>\n        \
             <rasd:ResourceType>3</rasd:ResourceType>\n        <rasd:VirtualQuantity>16</rasd:VirtualQuantity>\n      \
             </Item>\n      <Item>\n        <rasd:AllocationUnits>hertz",
        );
        assert_eq!(parse_descriptor(&x).unwrap().cpus, 4);
    }
}
