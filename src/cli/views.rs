//! Table views shared by several commands: which fields are columns, and
//! which one `-q` prints.

use super::output::View;

pub const VM_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("STATUS", "status"),
        ("VCPUS", "vcpus"),
        ("MEMORY", "memory"),
        ("DISK", "disk_size"),
        ("NODE", "node"),
        ("ID", "id"),
    ],
    id: "id",
};

pub const STATS_VIEW: View = View {
    cols: &[
        ("CPU%", "cpu_usage"),
        ("MEMORY", "memory_usage"),
        ("READ B/S", "disk_read_bytes_per_sec"),
        ("WRITE B/S", "disk_write_bytes_per_sec"),
        ("SAMPLED", "sampled_at"),
    ],
    id: "id",
};

pub const VOLUME_VIEW: View = View {
    cols: &[
        ("POOL", "pool"),
        ("NAME", "name"),
        ("FORMAT", "format"),
        ("CAPACITY", "bytes:capacity"),
        ("ALLOCATION", "bytes:allocation"),
        ("STATE", "state"),
    ],
    id: "name",
};

/// A move's result.
pub const MOVE_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("NODE", "node"),
        ("MODE", "mode"),
        ("DOWNTIME MS", "downtime_ms"),
        ("TOTAL MS", "total_ms"),
        ("BYTES", "bytes_sent"),
    ],
    id: "id",
};
