//! `GET /metrics` in the Prometheus text format: per-VM counters from the
//! samplers' memory (never a QMP call), the API's request counts and latency
//! histograms, job counts and the daemon's own memory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::engine::sample::Sample;
use crate::engine::Agent;

const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Name, type, help and value (from a sample and the clock tick rate).
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Sample, f64) -> Option<f64>,
);

const VM_SERIES: [Series; 10] = [
    (
        "libgo_vm_cpu_seconds_total",
        "counter",
        "CPU time of the VM's QEMU process.",
        |s, tck| Some(s.cpu_ticks as f64 / tck),
    ),
    (
        "libgo_vm_memory_resident_bytes",
        "gauge",
        "Resident memory of the VM's QEMU process.",
        |s, _| Some(s.rss_bytes as f64),
    ),
    (
        "libgo_vm_disk_read_bytes_total",
        "counter",
        "Bytes the guest read from its disk.",
        |s, _| Some(s.rd_bytes as f64),
    ),
    (
        "libgo_vm_disk_written_bytes_total",
        "counter",
        "Bytes the guest wrote to its disk.",
        |s, _| Some(s.wr_bytes as f64),
    ),
    (
        "libgo_vm_disk_read_ops_total",
        "counter",
        "Read operations of the guest's disk.",
        |s, _| Some(s.rd_ops as f64),
    ),
    (
        "libgo_vm_disk_write_ops_total",
        "counter",
        "Write operations of the guest's disk.",
        |s, _| Some(s.wr_ops as f64),
    ),
    (
        "libgo_vm_network_receive_bytes_total",
        "counter",
        "Bytes the guest received (tap networking).",
        |s, _| s.net.map(|n| n[0] as f64),
    ),
    (
        "libgo_vm_network_transmit_bytes_total",
        "counter",
        "Bytes the guest sent (tap networking).",
        |s, _| s.net.map(|n| n[1] as f64),
    ),
    (
        "libgo_vm_network_receive_packets_total",
        "counter",
        "Packets the guest received (tap networking).",
        |s, _| s.net.map(|n| n[2] as f64),
    ),
    (
        "libgo_vm_network_transmit_packets_total",
        "counter",
        "Packets the guest sent (tap networking).",
        |s, _| s.net.map(|n| n[3] as f64),
    ),
];

/// Request counters and latency histograms of the API.
#[derive(Default)]
pub struct HttpMetrics {
    requests: Mutex<HashMap<(String, String, u16), u64>>,
    latency: Mutex<HashMap<(String, String), Histogram>>,
}

use crate::sync::lock;

impl HttpMetrics {
    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        *lock(&self.requests)
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        let mut lat = lock(&self.latency);
        let h = lat
            .entry((method.to_owned(), route.to_owned()))
            .or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
    }
}

/// Middleware: counts every request by method, route template and status.
pub async fn track(State(state): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    // `/vms/{id}` is labelled `/vms/:id`: braces inside label values trip
    // some Prometheus text parsers.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().replace('{', ":").replace('}', ""))
        .unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let resp = next.run(req).await;
    state.observe(
        &method,
        &route,
        resp.status().as_u16(),
        t.elapsed().as_secs_f64(),
    );
    resp
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric. Reads only memory and one small SQLite query.
pub fn render(agent: &Agent, http: &HttpMetrics) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let vms = agent.vms.metrics();
    let tck = crate::engine::vm::resources::clock_ticks() as f64;

    head(
        &mut o,
        "libgo_vm_info",
        "gauge",
        "One series per VM, 1 for its current status.",
    );
    for v in &vms {
        let _ = writeln!(
            o,
            "libgo_vm_info{{id=\"{}\",name=\"{}\",status=\"{}\"}} 1",
            v.id,
            esc(&v.name),
            v.status.as_str()
        );
    }
    head(
        &mut o,
        "libgo_vm_running",
        "gauge",
        "1 if the VM's QEMU process runs.",
    );
    for v in &vms {
        let _ = writeln!(
            o,
            "libgo_vm_running{{id=\"{}\",name=\"{}\"}} {}",
            v.id,
            esc(&v.name),
            u8::from(v.sample.is_some())
        );
    }
    head(&mut o, "libgo_vm_vcpus", "gauge", "Configured vCPUs.");
    for v in &vms {
        let _ = writeln!(
            o,
            "libgo_vm_vcpus{{id=\"{}\",name=\"{}\"}} {}",
            v.id,
            esc(&v.name),
            v.vcpus
        );
    }
    head(
        &mut o,
        "libgo_vm_memory_configured_bytes",
        "gauge",
        "Configured memory.",
    );
    for v in &vms {
        let _ = writeln!(
            o,
            "libgo_vm_memory_configured_bytes{{id=\"{}\",name=\"{}\"}} {}",
            v.id,
            esc(&v.name),
            v.memory_mib << 20
        );
    }
    let sampled: Vec<_> = vms
        .iter()
        .filter_map(|v| v.sample.as_ref().map(|s| (v, s)))
        .collect();
    for (name, kind, help, get) in VM_SERIES {
        head(&mut o, name, kind, help);
        for (v, s) in &sampled {
            if let Some(x) = get(s, tck) {
                let _ = writeln!(o, "{name}{{id=\"{}\",name=\"{}\"}} {x}", v.id, esc(&v.name));
            }
        }
    }

    head(
        &mut o,
        "libgo_http_requests_total",
        "counter",
        "API requests by method, route and status.",
    );
    for ((m, r, c), n) in lock(&http.requests).iter() {
        let _ = writeln!(
            o,
            "libgo_http_requests_total{{method=\"{m}\",route=\"{}\",code=\"{c}\"}} {n}",
            esc(r)
        );
    }
    head(
        &mut o,
        "libgo_http_request_duration_seconds",
        "histogram",
        "API request latency.",
    );
    for ((m, r), h) in lock(&http.latency).iter() {
        let r = esc(r);
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(o, "libgo_http_request_duration_seconds_bucket{{method=\"{m}\",route=\"{r}\",le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(o, "libgo_http_request_duration_seconds_bucket{{method=\"{m}\",route=\"{r}\",le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(
            o,
            "libgo_http_request_duration_seconds_sum{{method=\"{m}\",route=\"{r}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            o,
            "libgo_http_request_duration_seconds_count{{method=\"{m}\",route=\"{r}\"}} {}",
            h.count
        );
    }
    head(
        &mut o,
        "libgo_jobs",
        "gauge",
        "Jobs recorded, by type and state.",
    );
    for (kind, state, n) in agent.store().job_counts().unwrap_or_default() {
        let _ = writeln!(
            o,
            "libgo_jobs{{type=\"{}\",state=\"{state}\"}} {n}",
            esc(&kind)
        );
    }
    head(
        &mut o,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of libgod.",
    );
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let _ = writeln!(o, "process_resident_memory_bytes {}", rss * 1024);
    o
}

/// Prometheus metrics.
///
/// The agent's metrics in Prometheus text format 0.0.4: HTTP requests, jobs, VMs and their
/// resources.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state.agent, &state.http),
    )
}
