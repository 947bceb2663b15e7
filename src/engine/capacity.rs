//! Admission control: whether the host can take a guest, judged against
//! the limits of the configuration (`[capacity]`), before anything is made
//! or started.
//!
//! - Memory: guests with a process (VMs running, paused, starting, ...;
//!   containers running or paused with a memory limit) may together hold
//!   `(MemTotal − reserved_memory_mib) × memory_overcommit`.
//! - vCPUs: VMs with a process may together have `online cores ×
//!   vcpu_overcommit` (a container's CPU quota is a share of time, not a
//!   thread, and is not counted).
//! - Disk: a create needs free space in the directory of VM disks for the
//!   whole virtual size of its disk (a linked clone's overlay can grow that
//!   far, a full copy holds the base's data at once), beside what creates
//!   under way were promised; a disk that grows needs room for the growth.
//!   Disks that exist are not charged for growth they have not made yet:
//!   thin provisioning across VMs stays the operator's call.
//!
//! Memory and vCPUs are checked when a guest gets a process (a VM's start,
//! a container's start, a create that starts it) and when a change raises
//! the share of a guest that has one; a stopped guest holds nothing, so a
//! create is checked for its disk only. The checks are pure functions of figures
//! ([`fits`], [`fits_disk`]); [`Admission`] gathers the figures and takes
//! one lock around check-and-commit, so two starts racing never both pass
//! on the same room.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use uuid::Uuid;

use crate::config::CapacityConfig;
use crate::engine::error::EngineError;
use crate::model::{
    AvailableResources, CapacityLimits, CommittedResources, HostResources, NodeResources,
};
use crate::sync::lock;

pub use crate::engine::error::{Resource, Shortfall};

/// Memory and vCPUs, of a guest or of many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub memory_mib: u64,
    pub vcpus: u64,
}

impl std::ops::Add for Demand {
    type Output = Demand;
    fn add(self, o: Demand) -> Demand {
        Demand {
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            vcpus: self.vcpus.saturating_add(o.vcpus),
        }
    }
}

impl std::iter::Sum for Demand {
    fn sum<I: Iterator<Item = Demand>>(iter: I) -> Demand {
        iter.fold(Demand::default(), |a, b| a + b)
    }
}

/// What the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFigures {
    pub memory_mib: u64,
    pub cpus: u32,
}

impl HostFigures {
    /// `MemTotal` and the online cores of this host.
    pub fn read() -> HostFigures {
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| parse_mem_total_kib(&m))
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| crate::host::pinning::parse_cpu_list(&s).len() as u32)
            .ok()
            .filter(|n| *n > 0)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(|n| n.get() as u32)
            })
            .unwrap_or(1);
        HostFigures { memory_mib, cpus }
    }
}

/// `MemTotal` (kB) of a `/proc/meminfo` text.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The limits of a host, in figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mib: u64,
    pub vcpus: u64,
}

impl Limits {
    pub fn of(cfg: &CapacityConfig, host: HostFigures) -> Limits {
        let usable = host.memory_mib.saturating_sub(cfg.reserved_memory_mib);
        Limits {
            memory_mib: (usable as f64 * cfg.memory_overcommit).floor() as u64,
            vcpus: (host.cpus as f64 * cfg.vcpu_overcommit).floor() as u64,
        }
    }
}

/// Whether `demand` fits beside `committed` within `limits` (memory is
/// judged first). A zero part of `demand` is not judged: a change that
/// adds no vCPU passes on an overcommitted host.
pub fn fits(limits: Limits, committed: Demand, demand: Demand) -> Result<(), Shortfall> {
    let parts = [
        (
            Resource::Memory,
            limits.memory_mib,
            committed.memory_mib,
            demand.memory_mib,
        ),
        (Resource::Vcpus, limits.vcpus, committed.vcpus, demand.vcpus),
    ];
    for (resource, limit, held, asked) in parts {
        let available = limit.saturating_sub(held);
        if asked > 0 && asked > available {
            return Err(Shortfall {
                resource,
                limit,
                requested: asked,
                available,
            });
        }
    }
    Ok(())
}

/// Whether `need` bytes fit in `free` bytes of which `promised` are
/// already promised to creates under way.
pub fn fits_disk(free: u64, promised: u64, need: u64) -> Result<(), Shortfall> {
    let available = free.saturating_sub(promised);
    if need > available {
        return Err(Shortfall {
            resource: Resource::Disk,
            limit: free,
            requested: need,
            available,
        });
    }
    Ok(())
}

/// Size and free space of the filesystem of `dir` (free as `f_bavail`:
/// the blocks kept for root are not counted).
pub fn storage(dir: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let unit = st.fragment_size();
    Ok((
        st.blocks().saturating_mul(unit),
        st.blocks_available().saturating_mul(unit),
    ))
}

/// The share of one guest.
pub type Commitments = Vec<(Uuid, Demand)>;
/// What the VMs with a process hold (from the VM registry).
pub type VmSource = Box<dyn Fn() -> Commitments + Send + Sync>;
/// What running containers hold (from the engine); None when it does not
/// answer.
pub type ContainerSource =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Commitments>> + Send>> + Send + Sync>;

/// The admission control of the host: limits, sources of the committed
/// figures, and what admitted operations under way were promised.
pub struct Admission {
    cfg: CapacityConfig,
    lock: tokio::sync::Mutex<()>,
    pending: Arc<Mutex<HashMap<Uuid, Demand>>>,
    pending_disk: Arc<Mutex<HashMap<Uuid, u64>>>,
    vms: OnceLock<VmSource>,
    containers: OnceLock<ContainerSource>,
}

/// Keeps an admitted demand counted while its operation runs (a container
/// being started, a disk being made); dropped when the operation ends,
/// when the guest counts by itself or nothing was made.
#[derive(Debug)]
pub struct Permit {
    pending: PendingSlot,
}

#[derive(Debug)]
enum PendingSlot {
    Demand(Arc<Mutex<HashMap<Uuid, Demand>>>, Uuid),
    Disk(Arc<Mutex<HashMap<Uuid, u64>>>, Uuid),
}

impl Drop for Permit {
    fn drop(&mut self) {
        match &self.pending {
            PendingSlot::Demand(m, id) => {
                lock(m).remove(id);
            }
            PendingSlot::Disk(m, id) => {
                lock(m).remove(id);
            }
        }
    }
}

/// The figures of one moment.
struct Figures {
    limits: Limits,
    host: HostFigures,
    vms: Commitments,
    containers: Option<Commitments>,
    pending: HashMap<Uuid, Demand>,
}

impl Figures {
    /// What everything but `excluding` holds.
    fn committed(&self, excluding: Uuid) -> Demand {
        let containers = self.containers.iter().flatten();
        let pending = self.pending.iter().map(|(id, d)| (*id, *d));
        self.vms
            .iter()
            .chain(containers)
            .copied()
            .chain(pending)
            .filter(|(id, _)| *id != excluding)
            .map(|(_, d)| d)
            .sum()
    }
}

impl Admission {
    pub fn new(cfg: CapacityConfig) -> Admission {
        Admission {
            cfg,
            lock: tokio::sync::Mutex::new(()),
            pending: Arc::default(),
            pending_disk: Arc::default(),
            vms: OnceLock::new(),
            containers: OnceLock::new(),
        }
    }

    /// Where VM commitments come from (the VM engine, once).
    pub fn set_vm_source(&self, source: VmSource) {
        let _ = self.vms.set(source);
    }

    /// Where container commitments come from (the container engine, once).
    pub fn set_container_source(&self, source: ContainerSource) {
        let _ = self.containers.set(source);
    }

    /// Serialises admissions: a caller that checks, then makes its guest
    /// count (a VM's status `starting`), holds this in between.
    pub async fn serialize(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    pub fn limits(&self) -> Limits {
        Limits::of(&self.cfg, HostFigures::read())
    }

    async fn figures(&self) -> Figures {
        let host = HostFigures::read();
        let vms = self.vms.get().map(|f| f()).unwrap_or_default();
        let containers = match self.containers.get() {
            Some(f) => f().await,
            None => Some(Vec::new()),
        };
        Figures {
            limits: Limits::of(&self.cfg, host),
            host,
            vms,
            containers,
            pending: lock(&self.pending).clone(),
        }
    }

    /// Whether guest `id` may hold `demand` beside everything else (its
    /// own current share is replaced, not added to). The caller holds
    /// [`Admission::serialize`] until its guest counts by itself.
    pub async fn check(&self, id: Uuid, demand: Demand) -> Result<(), Shortfall> {
        let f = self.figures().await;
        fits(f.limits, f.committed(id), demand)
    }

    /// `check`, then `demand` counted for `id` until the permit is dropped;
    /// for operations whose guest counts only once they have finished.
    pub async fn reserve(&self, id: Uuid, demand: Demand) -> Result<Permit, Shortfall> {
        let _serial = self.serialize().await;
        self.check(id, demand).await?;
        lock(&self.pending).insert(id, demand);
        Ok(Permit {
            pending: PendingSlot::Demand(self.pending.clone(), id),
        })
    }

    /// Promises `need` bytes of the filesystem of `dir` to `what` (guest
    /// `id`) until the permit is dropped.
    pub fn reserve_disk(
        &self,
        id: Uuid,
        what: &str,
        dir: &Path,
        need: u64,
    ) -> Result<Permit, EngineError> {
        let (_, free) = storage(dir)
            .map_err(|e| EngineError::internal(format!("statvfs {}", dir.display()), e))?;
        let mut pending = lock(&self.pending_disk);
        let promised: u64 = pending.values().sum();
        fits_disk(free, promised, need).map_err(|s| s.refuse(what))?;
        pending.insert(id, need);
        Ok(Permit {
            pending: PendingSlot::Disk(self.pending_disk.clone(), id),
        })
    }

    /// The figures `GET /nodes/{node}/resources` shows.
    pub async fn report(&self, node: &str, disks: &Path) -> NodeResources {
        let f = self.figures().await;
        let mut notes = Vec::new();
        if f.containers.is_none() {
            notes.push("the Docker engine did not answer: containers are not counted".to_owned());
        }
        let committed = f.committed(Uuid::nil());
        let (total, free) = storage(disks).unwrap_or_else(|e| {
            notes.push(format!("statvfs {}: {e}", disks.display()));
            (0, 0)
        });
        let promised: u64 = lock(&self.pending_disk).values().sum();
        NodeResources {
            node: node.to_owned(),
            host: HostResources {
                memory_mib: f.host.memory_mib,
                cpus: f.host.cpus,
                storage_path: disks.display().to_string(),
                storage_total_bytes: total,
                storage_free_bytes: free,
            },
            limits: CapacityLimits {
                memory_mib: f.limits.memory_mib,
                vcpus: f.limits.vcpus,
                memory_overcommit: self.cfg.memory_overcommit,
                vcpu_overcommit: self.cfg.vcpu_overcommit,
                reserved_memory_mib: self.cfg.reserved_memory_mib,
            },
            committed: CommittedResources {
                memory_mib: committed.memory_mib,
                vcpus: committed.vcpus,
                vms: f.vms.len(),
                containers: f.containers.as_ref().map_or(0, Vec::len),
                pending: f.pending.len(),
                pending_disk_bytes: promised,
            },
            available: AvailableResources {
                memory_mib: f.limits.memory_mib.saturating_sub(committed.memory_mib),
                vcpus: f.limits.vcpus.saturating_sub(committed.vcpus),
                disk_bytes: free.saturating_sub(promised),
            },
            pools: Vec::new(),
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostFigures = HostFigures {
        memory_mib: 16384,
        cpus: 4,
    };

    fn cfg(mem: f64, cpu: f64, reserved: u64) -> CapacityConfig {
        CapacityConfig {
            memory_overcommit: mem,
            vcpu_overcommit: cpu,
            reserved_memory_mib: reserved,
            count_stopped: false,
        }
    }

    fn d(memory_mib: u64, vcpus: u64) -> Demand {
        Demand { memory_mib, vcpus }
    }

    #[test]
    fn limits_come_from_the_host_less_the_reserve_times_the_ratio() {
        let l = Limits::of(&cfg(1.0, 4.0, 1024), HOST);
        assert_eq!((l.memory_mib, l.vcpus), (15360, 16));
        let l = Limits::of(&cfg(1.5, 1.0, 0), HOST);
        assert_eq!((l.memory_mib, l.vcpus), (24576, 4));
        // A reserve above the host leaves nothing, not an underflow.
        let l = Limits::of(&cfg(1.0, 1.0, 1 << 40), HOST);
        assert_eq!(l.memory_mib, 0);
    }

    #[test]
    fn a_demand_fits_up_to_the_limit_and_not_one_unit_more() {
        let l = Limits::of(&cfg(1.0, 4.0, 1024), HOST);
        assert_eq!(fits(l, d(15000, 10), d(360, 6)), Ok(()));
        assert_eq!(
            fits(l, d(15000, 10), d(361, 1)),
            Err(Shortfall {
                resource: Resource::Memory,
                limit: 15360,
                requested: 361,
                available: 360
            })
        );
        assert_eq!(
            fits(l, d(0, 10), d(128, 7)),
            Err(Shortfall {
                resource: Resource::Vcpus,
                limit: 16,
                requested: 7,
                available: 6
            })
        );
        // The reported defect: 900000 MiB on a 16 GiB host.
        let e = fits(l, Demand::default(), d(900_000, 1)).unwrap_err();
        assert_eq!(
            (e.resource, e.requested, e.available),
            (Resource::Memory, 900_000, 15360)
        );
        // Already over (limits lowered): a demand of nothing more passes,
        // anything more is refused with nothing available.
        assert_eq!(fits(l, d(20000, 20), d(0, 0)), Ok(()));
        assert_eq!(fits(l, d(20000, 0), d(1, 0)).unwrap_err().available, 0);
    }

    #[test]
    fn disk_counts_what_creates_under_way_were_promised() {
        assert_eq!(fits_disk(10 << 30, 0, 10 << 30), Ok(()));
        let e = fits_disk(10 << 30, 4 << 30, 7 << 30).unwrap_err();
        assert_eq!(
            (e.resource, e.limit, e.requested, e.available),
            (Resource::Disk, 10 << 30, 7 << 30, 6 << 30)
        );
        assert_eq!(fits_disk(1, 5, 1).unwrap_err().available, 0);
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24683468 kB\nMemFree:         6149136 kB\n";
        assert_eq!(parse_mem_total_kib(text), Some(24683468));
        assert_eq!(parse_mem_total_kib("nothing"), None);
        assert!(HostFigures::read().memory_mib > 0);
    }

    #[tokio::test]
    async fn racing_reservations_never_both_pass_on_the_same_room() {
        let a = Arc::new(Admission::new(cfg(1.0, 1000.0, 0)));
        let room = a.limits().memory_mib;
        // Two guests of 60% each: whichever comes second is refused.
        let big = d(room * 6 / 10, 1);
        let (x, y) = tokio::join!(
            a.reserve(Uuid::new_v4(), big),
            a.reserve(Uuid::new_v4(), big)
        );
        assert_eq!(x.is_ok() as u8 + y.is_ok() as u8, 1, "exactly one passes");
        // Once the first is done with (dropped), the room is free again.
        drop((x, y));
        assert!(a.reserve(Uuid::new_v4(), big).await.is_ok());
    }

    #[tokio::test]
    async fn sources_are_counted_and_a_guest_replaces_its_own_share() {
        let a = Admission::new(cfg(1.0, 1.0, 0));
        let room = a.limits();
        let running = Uuid::new_v4();
        let half = d(room.memory_mib / 2, 1);
        a.set_vm_source(Box::new(move || vec![(running, half)]));
        a.set_container_source(Box::new(move || {
            Box::pin(async move { Some(vec![(Uuid::new_v4(), d(room.memory_mib / 4, 0))]) })
        }));
        let quarter_and_one = d(room.memory_mib / 4 + 2, 0);
        let e = a.check(Uuid::new_v4(), quarter_and_one).await.unwrap_err();
        assert_eq!(e.resource, Resource::Memory);
        // The running VM growing to 3/4 counts without its old half.
        assert!(a
            .check(running, d(room.memory_mib * 3 / 4, 1))
            .await
            .is_ok());
        let r = a.report("n", Path::new("/")).await;
        assert_eq!(r.committed.vms, 1);
        assert_eq!(r.committed.containers, 1);
        assert_eq!(
            r.committed.memory_mib,
            room.memory_mib / 2 + room.memory_mib / 4
        );
        assert!(r.host.storage_total_bytes > 0);
    }

    #[test]
    fn a_disk_promise_holds_until_its_permit_goes() {
        let a = Admission::new(cfg(1.0, 1.0, 0));
        let dir = tempfile::tempdir().unwrap();
        let (_, free) = storage(dir.path()).unwrap();
        let p = a
            .reserve_disk(Uuid::new_v4(), "a disk", dir.path(), free / 2 + 1)
            .unwrap();
        let e = a
            .reserve_disk(Uuid::new_v4(), "a disk", dir.path(), free / 2 + 1)
            .unwrap_err();
        assert!(matches!(
            e,
            EngineError::Capacity {
                shortfall: Some(Shortfall {
                    resource: Resource::Disk,
                    ..
                }),
                ..
            }
        ));
        drop(p);
        assert!(a
            .reserve_disk(Uuid::new_v4(), "a disk", dir.path(), free / 2 + 1)
            .is_ok());
    }
}
