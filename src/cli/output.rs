//! What the CLI prints: tables for people, JSON, YAML or CSV for scripts,
//! ids alone with `--quiet`. Every answer is turned into JSON values
//! first, so one printer serves every resource.

use std::io::Write;

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    Json,
    Yaml,
    Csv,
}

/// How a kind of object is shown in a list: its columns (header, field
/// path with `.` between levels) and the field `--quiet` prints.
pub struct View {
    pub cols: &'static [(&'static str, &'static str)],
    pub id: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: Format,
    pub quiet: bool,
}

/// The value at `a.b.c`.
pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// A column's value: `path` names the field; a `bytes:` prefix marks a
/// count of bytes, shown with a binary unit to people (`1.5 GiB`) and as
/// the number to scripts.
fn column(v: &Value, path: &str, human: bool) -> String {
    match path.strip_prefix("bytes:") {
        Some(p) => match field(v, p).as_u64() {
            Some(n) if human => bytes(n),
            _ => cell(field(v, p)),
        },
        None => cell(field(v, path)),
    }
}

/// `n` bytes with a binary unit, three significant digits at most.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{n} B"),
        _ if x >= 100.0 => format!("{x:.0} {}", UNITS[u]),
        _ if x >= 10.0 => format!("{x:.1} {}", UNITS[u]),
        _ => format!("{x:.2} {}", UNITS[u]),
    }
}

/// A value as one table or CSV cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
        other => other.to_string(),
    }
}

pub fn to_value(x: &impl Serialize) -> Value {
    serde_json::to_value(x).unwrap_or(Value::Null)
}

impl Output {
    fn write(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        if !text.ends_with('\n') && !text.is_empty() {
            let _ = out.write_all(b"\n");
        }
    }

    /// A list of objects.
    pub fn list(&self, items: &[Value], view: &View) {
        if self.quiet {
            let ids: String = items
                .iter()
                .map(|i| cell(field(i, view.id)) + "\n")
                .collect();
            return self.write(&ids);
        }
        match self.format {
            Format::Json => self.write(&serde_json::to_string_pretty(items).unwrap_or_default()),
            Format::Yaml => self.write(&serde_norway::to_string(items).unwrap_or_default()),
            Format::Csv => self.write(&csv_text(items, view)),
            Format::Table => {
                let mut t = table();
                t.set_header(view.cols.iter().map(|(h, _)| *h));
                for i in items {
                    t.add_row(view.cols.iter().map(|(_, p)| column(i, p, true)));
                }
                self.write(&render(t));
            }
        }
    }

    /// One object: every field in the table form (nested ones as JSON).
    pub fn one(&self, item: &Value, view: &View) {
        if self.quiet {
            return self.write(&cell(field(item, view.id)));
        }
        match self.format {
            Format::Table => {
                let mut rows = Vec::new();
                flatten("", item, &mut rows);
                let mut t = table();
                for (k, v) in rows {
                    t.add_row(vec![format!("{k}:"), v]);
                }
                self.write(&render(t));
            }
            _ => self.list_one(item, view),
        }
    }

    fn list_one(&self, item: &Value, view: &View) {
        match self.format {
            Format::Json => self.write(&serde_json::to_string_pretty(item).unwrap_or_default()),
            Format::Yaml => self.write(&serde_norway::to_string(item).unwrap_or_default()),
            _ => self.write(&csv_text(std::slice::from_ref(item), view)),
        }
    }

    /// A sentence for people (nothing with `--quiet` or a script format).
    pub fn say(&self, text: &str) {
        if !self.quiet && self.format == Format::Table {
            self.write(text);
        }
    }
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

/// The table's lines, columns two spaces apart, without trailing blanks.
fn render(mut t: Table) -> String {
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t.to_string()
        .lines()
        .map(|l| l.trim_end().to_owned() + "\n")
        .collect()
}

/// An object's fields as `a.b.c` rows; lists of plain values joined.
fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, x) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, rows);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, rows);
            }
        }
        _ => rows.push((prefix.to_owned(), cell(v))),
    }
}

fn csv_text(items: &[Value], view: &View) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(view.cols.iter().map(|(h, _)| h.to_ascii_lowercase()));
    for i in items {
        let _ = w.write_record(view.cols.iter().map(|(_, p)| column(i, p, false)));
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_and_csv() {
        let v =
            json!({"name": "a,b", "tags": ["x", "y"], "n": 3, "o": {"k": 1}, "cpu": {"vcpus": 2}});
        assert_eq!(cell(field(&v, "tags")), "x,y");
        assert_eq!(cell(field(&v, "n")), "3");
        assert_eq!(cell(field(&v, "missing")), "");
        assert_eq!(cell(field(&v, "cpu.vcpus")), "2");
        assert_eq!(cell(field(&v, "o")), r#"{"k":1}"#);
        assert_eq!(column(&json!({"c": 1536}), "bytes:c", true), "1.50 KiB");
        assert_eq!(column(&json!({"c": 1536}), "bytes:c", false), "1536");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(67108864), "64.0 MiB");
        assert_eq!(bytes(270553174016), "252 GiB");
        let view = View {
            cols: &[("NAME", "name"), ("TAGS", "tags")],
            id: "name",
        };
        assert_eq!(
            csv_text(std::slice::from_ref(&v), &view),
            "name,tags\n\"a,b\",\"x,y\"\n"
        );
        let mut rows = Vec::new();
        flatten(
            "",
            &json!({"a": {"b": 1}, "l": [{"x": 2}], "t": ["p", "q"]}),
            &mut rows,
        );
        let keys: Vec<(&str, &str)> = rows.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(keys, [("a.b", "1"), ("l[0].x", "2"), ("t", "p,q")]);
        let mut t = table();
        t.set_header(["NAME", "X"]);
        t.add_row(["long-name", ""]);
        assert_eq!(render(t), "NAME       X\nlong-name\n");
    }
}
