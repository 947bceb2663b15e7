//! Several agents as one cluster: what aggregators agree on lives in etcd.

pub mod coord;
pub mod etcd;
