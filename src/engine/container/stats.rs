//! Container statistics: one background stats stream per running
//! container, kept alive by the engine's event stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters as q;
use futures::StreamExt;
use serde_json::Value;

use super::registry::ContainerEngine;
use crate::engine::error::{EngineError, Result};
use crate::engine::sample::{Sample, Samples};
use crate::model::{ContainerStatus, Performance};
use crate::sync::lock;

impl ContainerEngine {
    /// The VM performance shape, from the background stats stream (the
    /// engine takes ~1 s per one-shot call).
    pub async fn stats(&self, key: &str) -> Result<Performance> {
        let c = self.find(key).await?;
        if c.status != ContainerStatus::Running {
            return Err(EngineError::Conflict(format!(
                "Container {} is {}: stats exist only while it runs.",
                c.name,
                c.status.as_str()
            )));
        }
        self.ensure_stats(&c.engine_id);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let samples = lock(&self.inner.state).stats.get(&c.engine_id).cloned();
            if let Some(p) = samples.and_then(|s| s.performance(c.id, 1e9)) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(EngineError::Unavailable(
                    "no stats from the engine yet".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Keeps one streaming stats subscription per running container.
    pub(crate) fn ensure_stats(&self, engine_id: &str) {
        {
            let mut st = lock(&self.inner.state);
            if st.stats.contains_key(engine_id) {
                return;
            }
            st.stats.insert(engine_id.to_owned(), Samples::default());
        }
        let agent = self.clone();
        let id = engine_id.to_owned();
        tokio::spawn(async move {
            let Ok(d) = agent.docker() else {
                lock(&agent.inner.state).stats.remove(&id);
                return;
            };
            let mut stream = d.stats(
                &id,
                Some(q::StatsOptions {
                    stream: true,
                    one_shot: false,
                }),
            );
            while let Some(Ok(st)) = stream.next().await {
                let v = serde_json::to_value(&st).unwrap_or(Value::Null);
                let blk = |op: &str, key: &str| -> u64 {
                    v["blkio_stats"][key]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|e| {
                                    e["op"].as_str().is_some_and(|o| o.eq_ignore_ascii_case(op))
                                })
                                .filter_map(|e| e["value"].as_u64())
                                .sum()
                        })
                        .unwrap_or(0)
                };
                let net = v["networks"].as_object().map(|m| {
                    let sum = |k: &str| m.values().filter_map(|n| n[k].as_u64()).sum::<u64>();
                    [
                        sum("rx_bytes"),
                        sum("tx_bytes"),
                        sum("rx_packets"),
                        sum("tx_packets"),
                    ]
                });
                let sample = Sample {
                    at: Instant::now(),
                    at_str: crate::clock::now(),
                    cpu_ticks: v["cpu_stats"]["cpu_usage"]["total_usage"]
                        .as_u64()
                        .unwrap_or(0),
                    rss_bytes: v["memory_stats"]["usage"].as_u64().unwrap_or(0),
                    rd_bytes: blk("read", "io_service_bytes_recursive"),
                    wr_bytes: blk("write", "io_service_bytes_recursive"),
                    rd_ops: blk("read", "io_serviced_recursive"),
                    wr_ops: blk("write", "io_serviced_recursive"),
                    net,
                };
                let mut st = lock(&agent.inner.state);
                let Some(slot) = st.stats.get_mut(&id) else {
                    return;
                };
                slot.previous = slot.latest.take();
                slot.latest = Some(sample);
            }
            lock(&agent.inner.state).stats.remove(&id);
        });
    }

    /// Follows the engine's events: stats streams for running containers,
    /// libgo events for lifecycle changes. Reconnects when the engine comes back.
    pub(crate) async fn watch_engine(self) {
        loop {
            if let Ok(d) = self.docker() {
                if let Ok(list) = self.list(false).await {
                    for c in list.iter().filter(|c| c.status == ContainerStatus::Running) {
                        self.ensure_stats(&c.engine_id);
                    }
                }
                let filters: HashMap<String, Vec<String>> =
                    [("type".to_string(), vec!["container".to_string()])].into();
                let mut events = d.events(Some(q::EventsOptions {
                    filters: Some(filters),
                    ..Default::default()
                }));
                while let Some(Ok(ev)) = events.next().await {
                    let action = ev.action.unwrap_or_default();
                    let Some(id) = ev.actor.and_then(|a| a.id) else {
                        continue;
                    };
                    match action.as_str() {
                        "start" | "unpause" | "restart" => self.ensure_stats(&id),
                        "die" | "destroy" => {
                            lock(&self.inner.state).stats.remove(&id);
                        }
                        _ => {}
                    }
                    if matches!(
                        action.as_str(),
                        "start" | "die" | "pause" | "unpause" | "oom"
                    ) {
                        if let Ok(doc) = self.inspect(&id).await {
                            let c = self.view(&doc);
                            if c.managed {
                                let kind = if action == "oom" {
                                    "container.oom".to_owned()
                                } else {
                                    format!("container.{}", c.status.as_str())
                                };
                                self.container_event(&kind, &c);
                            }
                        }
                    }
                }
            }
            lock(&self.inner.state).stats.clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Re-export so the API layer names one Bytes type.
pub mod bytes_of {
    pub use hyper::body::Bytes;
}
