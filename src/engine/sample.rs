//! Performance samples of a running instance (VM or container): the two
//! newest are kept, and rates are taken between them.

/// One performance sample of a running instance.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: std::time::Instant,
    pub at_str: String,
    /// utime + stime of the whole QEMU process, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
    /// Guest in bytes, out bytes, in packets, out packets (tap networking).
    pub net: Option<[u64; 4]>,
}

impl Default for Sample {
    fn default() -> Sample {
        Sample {
            at: std::time::Instant::now(),
            at_str: String::new(),
            cpu_ticks: 0,
            rss_bytes: 0,
            rd_bytes: 0,
            wr_bytes: 0,
            rd_ops: 0,
            wr_ops: 0,
            net: None,
        }
    }
}

/// The two newest samples; rates are taken between them.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub latest: Option<Sample>,
    pub previous: Option<Sample>,
}

impl Samples {
    /// The performance figures of the newest sample, rates taken against
    /// the one before (zero with a single sample). `ticks_per_sec` is the
    /// unit of `cpu_ticks` (clock ticks for a process, 1e9 for a container's
    /// nanoseconds); the CPU figure is percent of one core.
    pub fn performance(
        &self,
        id: uuid::Uuid,
        ticks_per_sec: f64,
    ) -> Option<crate::model::Performance> {
        let now = self.latest.as_ref()?;
        let (dt, prev) = match &self.previous {
            Some(p) => (now.at.duration_since(p.at).as_secs_f64().max(1e-3), p),
            None => (0.0, now),
        };
        let rate = |a: u64, b: u64| {
            if dt > 0.0 {
                a.saturating_sub(b) as f64 / dt
            } else {
                0.0
            }
        };
        let cpu = rate(now.cpu_ticks, prev.cpu_ticks) / ticks_per_sec * 100.0;
        let net = |i: usize| now.net.map(|n| n[i]);
        Some(crate::model::Performance {
            id,
            cpu_usage: (cpu * 10.0).round() / 10.0,
            memory_usage: now.rss_bytes >> 20,
            disk_read_bytes: now.rd_bytes,
            disk_write_bytes: now.wr_bytes,
            disk_read_iops: rate(now.rd_ops, prev.rd_ops),
            disk_write_iops: rate(now.wr_ops, prev.wr_ops),
            disk_read_bytes_per_sec: rate(now.rd_bytes, prev.rd_bytes),
            disk_write_bytes_per_sec: rate(now.wr_bytes, prev.wr_bytes),
            network_in_bytes: net(0),
            network_out_bytes: net(1),
            network_in_packets: net(2),
            network_out_packets: net(3),
            sampled_at: now.at_str.clone(),
            interval_secs: dt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn rates_are_taken_between_the_two_newest_samples() {
        let t0 = Instant::now();
        let prev = Sample {
            at: t0,
            cpu_ticks: 100,
            rd_ops: 10,
            rss_bytes: 8 << 20,
            ..Sample::default()
        };
        let now = Sample {
            at: t0 + Duration::from_secs(2),
            cpu_ticks: 300,
            rd_ops: 50,
            rss_bytes: 8 << 20,
            net: Some([1, 2, 3, 4]),
            ..Sample::default()
        };
        let one = Samples {
            latest: Some(now.clone()),
            previous: None,
        };
        let p = one.performance(uuid::Uuid::nil(), 100.0).unwrap();
        assert_eq!(
            (p.cpu_usage, p.disk_read_iops, p.interval_secs),
            (0.0, 0.0, 0.0)
        );
        let two = Samples {
            latest: Some(now),
            previous: Some(prev),
        };
        let p = two.performance(uuid::Uuid::nil(), 100.0).unwrap();
        // 200 ticks of 100 per second over 2 s: one core, 100 %.
        assert_eq!(
            (p.cpu_usage, p.disk_read_iops, p.memory_usage),
            (100.0, 20.0, 8)
        );
        assert_eq!(p.network_out_packets, Some(4));
        assert!(Samples::default()
            .performance(uuid::Uuid::nil(), 1.0)
            .is_none());
    }
}
