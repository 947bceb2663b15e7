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
