//! The VMs this agent knows: the VM engine itself, its registry (in memory,
//! written through to the store), lookups, lists, the per-VM operation slot
//! and the one place a status changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use uuid::Uuid;

use super::lifecycle::{self, VmEvent};
use super::live::Runtime;
use super::record::{self, ResolvedBoot, VmRecord};
use crate::engine::core::Core;
use crate::engine::error::{EngineError, Result};
use crate::engine::faults::FailSteps;
use crate::engine::sample::Sample;
use crate::host::cgroup::Cgroups;
use crate::host::confine::{self, Identity, QemuUser, VmFile};
use crate::host::pool::PoolError;
use crate::host::qemu_img::QemuImg;
use crate::model::{BootSpec, Target, Vm, VmStatus};
use crate::page::{paginate, Page, PageRequest};
use crate::qemu::argv::Accelerator;
use crate::sync::{lock, read, write};

pub(crate) const GIB: u64 = 1 << 30;

/// One VM known to the agent.
pub struct VmEntry {
    pub id: Uuid,
    pub(crate) rec: Mutex<VmRecord>,
    /// The operation holding this VM: (job id, job type).
    op: Mutex<Option<(Uuid, String)>>,
    pub(crate) rt: Mutex<Option<Arc<Runtime>>>,
    /// Bumped on every change of what the VM's representation shows, so a
    /// rendering of it can be reused until the next change.
    rev: std::sync::atomic::AtomicU64,
}

impl VmEntry {
    pub(crate) fn new(rec: VmRecord) -> Arc<VmEntry> {
        Arc::new(VmEntry {
            id: rec.id,
            rec: Mutex::new(rec),
            op: Mutex::new(None),
            rt: Mutex::new(None),
            rev: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn record(&self) -> VmRecord {
        lock(&self.rec).clone()
    }

    pub fn status(&self) -> VmStatus {
        lock(&self.rec).status
    }

    pub(crate) fn runtime(&self) -> Option<Arc<Runtime>> {
        lock(&self.rt).clone()
    }

    /// The revision of the VM's representation.
    pub fn rev(&self) -> u64 {
        self.rev.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the representation changed (after the change is made).
    pub(crate) fn touch(&self) {
        self.rev.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(crate) fn busy_op(&self) -> Option<(Uuid, String)> {
        lock(&self.op).clone()
    }
}

/// Holds a VM's operation slot; frees it when dropped.
pub struct OpGuard {
    entry: Arc<VmEntry>,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        *lock(&self.entry.op) = None;
    }
}

/// The VMs by id, and in creation order (the default order of lists).
#[derive(Default)]
pub(crate) struct Registry {
    by_id: HashMap<Uuid, Arc<VmEntry>>,
    by_created: BTreeMap<(String, Uuid), Arc<VmEntry>>,
}

impl Registry {
    pub(crate) fn insert(&mut self, entry: Arc<VmEntry>) {
        let key = (lock(&entry.rec).created_at.clone(), entry.id);
        self.by_created.insert(key, entry.clone());
        self.by_id.insert(entry.id, entry);
    }

    pub(crate) fn remove(&mut self, id: Uuid) {
        if let Some(e) = self.by_id.remove(&id) {
            let key = (lock(&e.rec).created_at.clone(), id);
            self.by_created.remove(&key);
        }
    }
}

/// What the VM engine owns besides the shared core.
pub struct VmShared {
    pub(crate) core: Arc<Core>,
    pub(crate) img: QemuImg,
    pub(crate) accel: Accelerator,
    pub(crate) disk_cache: &'static str,
    /// The io/blkio cgroup hierarchy, where the host has one and the
    /// configuration enforces limits there.
    pub(crate) cgroups: Option<Cgroups>,
    pub(crate) vms: RwLock<Registry>,
    /// `qemu-img info` of base images, by path, valid while the file's
    /// size and modification time stay the same.
    pub(crate) base_info: crate::host::qemu_img::InfoCache,
    /// Failures to inject on purpose into starts (a testing aid; empty
    /// unless `LIBGO_TEST_FAIL_STEP` was set when the daemon started).
    pub(crate) faults: FailSteps,
    /// The user QEMU runs as; None: QEMU runs as root (`qemu_user = ""`).
    pub(crate) qemu_user: Option<QemuUser>,
    /// Serial console hubs of the VMs with console clients.
    pub(crate) consoles: Arc<super::console_hub::Consoles>,
    /// VMs arriving from another agent (`POST /migrations`): not listed,
    /// not found by id or name, until their move completes.
    pub(crate) incoming: Mutex<HashMap<Uuid, Arc<super::migrate::Incoming>>>,
}

/// The QEMU backend. Cheap to clone.
#[derive(Clone)]
pub struct VmEngine {
    pub(crate) inner: Arc<VmShared>,
}

/// What `/metrics` shows of one VM.
pub struct VmMetrics {
    pub id: Uuid,
    pub name: String,
    pub status: VmStatus,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub sample: Option<Sample>,
}

/// Filters and order of a VM list.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub status: Option<VmStatus>,
    pub name: Option<String>,
    pub tag: Option<String>,
    pub template: Option<String>,
    pub node: Option<String>,
    pub sort: SortField,
}

impl ListQuery {
    /// No filter: every VM of this node is listed.
    fn is_unfiltered(&self) -> bool {
        self.status.is_none()
            && self.name.is_none()
            && self.tag.is_none()
            && self.template.is_none()
    }
}

/// What a VM list is sorted by (the direction is the page request's).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    #[default]
    CreatedAt,
    Name,
}

/// Finds (or makes) the QEMU user when QEMU is confined, and opens the
/// way to each VM's directories: the daemon's own state, run and default
/// pool directories get search permission for others (never listing);
/// whatever else stands in the way is reported, since QEMU could not start.
fn confine_qemu(cfg: &crate::config::Config) -> anyhow::Result<Option<QemuUser>> {
    use anyhow::Context;
    if cfg.qemu_user.is_empty() {
        tracing::warn!("qemu_user is empty: guests' QEMU runs as root");
        return Ok(None);
    }
    let user = confine::ensure_user(&cfg.qemu_user)?;
    let vms = [cfg.state_dir.join("vms"), cfg.run_dir.join("vms")];
    for dir in [&cfg.state_dir, &cfg.run_dir, &cfg.image_dir]
        .into_iter()
        .chain(&vms)
    {
        confine::make_searchable(dir)?;
    }
    let who = user.identity(cfg.qemu_gid_base);
    for dir in &vms {
        confine::check_reach(dir, &who, confine::SEARCH).with_context(|| {
            format!(
                "QEMU runs as {} and must pass through {}: make every directory above it searchable (o+x), or set qemu_user = \"\"",
                user.name,
                dir.display()
            )
        })?;
    }
    tracing::info!(user = %user.name, uid = user.uid, kvm_gid = ?user.kvm_gid, "guests' QEMU runs unprivileged");
    Ok(Some(user))
}

pub(crate) fn pool_err(e: PoolError) -> EngineError {
    match e {
        PoolError::NotFound { what, given } => {
            let what = if what == "base image" {
                "Base image"
            } else {
                what
            };
            EngineError::NotFound(format!("{what} not found: {given}."))
        }
        other => EngineError::Invalid(other.to_string()),
    }
}

impl VmEngine {
    /// Chooses the accelerator and the disk cache mode, finds the cgroup
    /// hierarchy, then settles what a stop of the daemon left half-done and
    /// re-adopts every guest that still runs. `host_root` is `/` but in tests.
    pub async fn open(core: Arc<Core>, host_root: &Path) -> anyhow::Result<VmEngine> {
        use crate::config::{Accel, IoLayer};
        let cfg = &core.cfg;
        std::fs::create_dir_all(cfg.state_dir.join("vms"))?;
        std::fs::create_dir_all(cfg.run_dir.join("vms"))?;
        let accel = match cfg.accel {
            Accel::Kvm => Accelerator::Kvm,
            Accel::Tcg => Accelerator::Tcg,
            Accel::Auto if crate::host::accel::hardware_kvm(host_root) => Accelerator::Kvm,
            Accel::Auto => Accelerator::Tcg,
        };
        let disk_cache = if crate::host::supports_o_direct(&cfg.state_dir.join("vms")) {
            "none"
        } else {
            tracing::warn!(dir = %cfg.state_dir.display(), "no O_DIRECT here (tmpfs?): disks use cache=writeback");
            "writeback"
        };
        let cgroups = if cfg.io_throttle.contains(&IoLayer::Cgroup) {
            match Cgroups::detect(&cfg.cgroup_root, &cfg.cgroup_parent) {
                Ok(cg) => {
                    tracing::info!(version = ?cg.version(), "I/O limits enforced in cgroups");
                    Some(cg)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no cgroup I/O enforcement");
                    None
                }
            }
        } else {
            None
        };
        let qemu_user = confine_qemu(cfg)?;
        if let (Accelerator::Kvm, Some(user)) = (accel, &qemu_user) {
            // QEMU opens /dev/kvm itself, as its user: through the kvm group.
            let who = user.identity(cfg.qemu_gid_base);
            let kvm = host_root.join("dev/kvm");
            confine::check_reach(&kvm, &who, confine::READ | confine::WRITE).map_err(|e| {
                anyhow::anyhow!(
                    "KVM is in use and QEMU runs as {}, which cannot open {}: {e}; give it to group kvm with mode 0660, or set accel = \"tcg\"",
                    user.name,
                    kvm.display()
                )
            })?;
        }
        let engine = VmEngine {
            inner: Arc::new(VmShared {
                img: QemuImg::new(cfg.qemu_img_binary.clone()),
                core: core.clone(),
                accel,
                disk_cache,
                cgroups,
                vms: RwLock::new(Registry::default()),
                base_info: Default::default(),
                faults: FailSteps::from_env(),
                qemu_user,
                consoles: Default::default(),
                incoming: Default::default(),
            }),
        };
        {
            let vms = Arc::downgrade(&engine.inner);
            core.admission.set_vm_source(Box::new(move || {
                vms.upgrade()
                    .map(|inner| VmEngine { inner }.commitments())
                    .unwrap_or_default()
            }));
        }
        engine.recover().await?;
        Ok(engine)
    }

    pub(crate) fn core(&self) -> &Core {
        &self.inner.core
    }

    /// What each VM with a QEMU process (or starting one; every VM with
    /// `capacity.count_stopped`) holds: the
    /// larger of what it was started with and what it is configured for
    /// (a change waiting for the next start was admitted against that).
    pub(crate) fn commitments(&self) -> crate::engine::capacity::Commitments {
        let entries: Vec<Arc<VmEntry>> = read(&self.inner.vms).by_id.values().cloned().collect();
        let count_stopped = self.core().cfg.capacity.count_stopped;
        entries
            .iter()
            .filter_map(|e| {
                let rt = e.runtime();
                let (boot, threads) = rt
                    .as_ref()
                    .map(|rt| (rt.boot_memory, lock(&rt.vcpu_tids).len() as u64))
                    .unwrap_or_default();
                let r = lock(&e.rec);
                let holds = matches!(
                    r.status,
                    VmStatus::Starting
                        | VmStatus::Running
                        | VmStatus::Paused
                        | VmStatus::Stopping
                        | VmStatus::Rebooting
                );
                (rt.is_some() || holds || count_stopped).then(|| {
                    (
                        e.id,
                        crate::engine::capacity::Demand {
                            memory_mib: r.memory.max(boot),
                            vcpus: (r.vcpus as u64).max(threads),
                        },
                    )
                })
            })
            .collect()
    }

    /// The credentials of the QEMU of the VM whose group is `gid` (None:
    /// QEMU runs as root).
    pub(crate) fn qemu_identity(&self, gid: u32) -> Option<Identity> {
        self.inner.qemu_user.as_ref().map(|u| u.identity(gid))
    }

    /// The VM's group id, given now if it has none yet: the smallest of
    /// the range that no other VM holds, chosen and recorded under the
    /// registry's lock, so two VMs never share one.
    pub(crate) fn assign_gid(&self, entry: &VmEntry) -> Result<u32> {
        let map = write(&self.inner.vms);
        if let Some(gid) = lock(&entry.rec).qemu_gid {
            return Ok(gid);
        }
        let arriving: Vec<u32> = lock(&self.inner.incoming)
            .values()
            .filter(|i| i.entry.id != entry.id)
            .filter_map(|i| lock(&i.entry.rec).qemu_gid)
            .collect();
        let used = map
            .by_id
            .values()
            .filter(|e| e.id != entry.id)
            .filter_map(|e| lock(&e.rec).qemu_gid)
            .chain(arriving);
        let gid = confine::free_gid(self.core().cfg.qemu_gid_base, used).ok_or_else(|| {
            EngineError::Conflict(format!(
                "every one of the {} VM group ids is in use",
                confine::VM_GID_SLOTS
            ))
        })?;
        let mut rec = lock(&entry.rec);
        rec.qemu_gid = Some(gid);
        self.core()
            .store
            .update_vm(rec.id, rec.status.as_str(), &*rec)?;
        drop(rec);
        drop(map);
        Ok(gid)
    }

    /// Gives the VM's files to `root:<its group>` with their modes (see
    /// `host::confine`): its state directory, disk, cloud-init seed and
    /// console log (made empty if missing, so QEMU appends to a file it
    /// cannot re-create), and its run directory when it exists. Idempotent:
    /// every start does it again, which also brings the files of a VM made
    /// before confinement, or restored from a backup, into line.
    pub(crate) fn own_files(&self, rec: &VmRecord, gid: u32) -> Result<()> {
        let err = |e| EngineError::internal("giving the VM's files to its group", e);
        confine::own(&self.state_dir(rec.id), gid, VmFile::StateDir).map_err(err)?;
        if rec.disk_file.exists() {
            confine::own(&rec.disk_file, gid, VmFile::Disk).map_err(err)?;
        }
        if rec.cloud_init {
            confine::own(
                &self.state_dir(rec.id).join("cidata.iso"),
                gid,
                VmFile::Seed,
            )
            .map_err(err)?;
        }
        let log = self.state_dir(rec.id).join("console.log");
        confine::own_or_create(&log, gid, VmFile::ConsoleLog).map_err(err)?;
        let run = self.run_dir(rec.id);
        if run.exists() {
            confine::own(&run, gid, VmFile::RunDir).map_err(err)?;
        }
        Ok(())
    }

    /// Whether QEMU, as this host runs it, can read `path` (a base image,
    /// kernel or initrd named by a request). The file is there: what keeps
    /// QEMU out is the host's state (its permissions), a 409.
    pub(crate) fn check_readable(&self, path: &Path, field: &str) -> Result<()> {
        let Some(who) = self.qemu_identity(self.core().cfg.qemu_gid_base) else {
            return Ok(());
        };
        confine::check_reach(path, &who, confine::READ)
            .map_err(|e| EngineError::Conflict(format!("{field}: {e}")))
    }

    /// A direct boot's kernel and initrd, resolved in the active pools and
    /// readable by QEMU (which opens them itself, as its own user).
    pub(crate) fn resolve_boot(
        &self,
        pools: &[crate::config::PoolConfig],
        boot: Option<&BootSpec>,
    ) -> Result<Option<ResolvedBoot>> {
        let Some(b) = boot else {
            return Ok(None);
        };
        let kernel =
            crate::host::pool::resolve(pools, &b.kernel, "boot.kernel").map_err(pool_err)?;
        self.check_readable(&kernel, "boot.kernel")?;
        let initrd = match b.initrd.as_deref() {
            None => None,
            Some(i) => {
                let path = crate::host::pool::resolve(pools, i, "boot.initrd").map_err(pool_err)?;
                self.check_readable(&path, "boot.initrd")?;
                Some(path)
            }
        };
        Ok(Some(ResolvedBoot { kernel, initrd }))
    }

    pub fn accel(&self) -> Accelerator {
        self.inner.accel
    }

    pub fn count(&self) -> usize {
        read(&self.inner.vms).by_id.len()
    }

    pub(crate) fn state_dir(&self, id: Uuid) -> PathBuf {
        self.core().cfg.state_dir.join("vms").join(id.to_string())
    }
    pub(crate) fn run_dir(&self, id: Uuid) -> PathBuf {
        self.core().cfg.run_dir.join("vms").join(id.to_string())
    }

    /// Finds a VM by UUID or name. Neither form: invalid; unknown: not found.
    pub fn find(&self, key: &str) -> Result<Arc<VmEntry>> {
        let map = read(&self.inner.vms);
        if let Ok(id) = Uuid::parse_str(key) {
            return map
                .by_id
                .get(&id)
                .cloned()
                .ok_or_else(|| EngineError::NotFound(format!("VM not found: {key}.")));
        }
        if !record::is_dns_label(key) {
            return Err(EngineError::Invalid(
                "Invalid UUID format: expected a VM id or name.".into(),
            ));
        }
        map.by_id
            .values()
            .find(|e| lock(&e.rec).name == key)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("VM not found: {key}.")))
    }

    pub(crate) fn insert(&self, entry: Arc<VmEntry>) {
        write(&self.inner.vms).insert(entry);
    }

    pub(crate) fn forget(&self, id: Uuid) {
        write(&self.inner.vms).remove(id);
    }

    pub(crate) fn entries(&self) -> Vec<Arc<VmEntry>> {
        read(&self.inner.vms).by_created.values().cloned().collect()
    }

    pub fn to_api(&self, entry: &VmEntry) -> Vm {
        let pid = entry.runtime().map(|rt| rt.pid);
        lock(&entry.rec).to_api(&self.core().node, pid)
    }

    /// Every VM, oldest first.
    pub fn all(&self) -> Vec<Vm> {
        self.entries().iter().map(|e| self.to_api(e)).collect()
    }

    /// Every file a VM holds open or depends on, with the VM and how it
    /// uses it: the base image of a linked clone (or of a VM still being
    /// made), the boot kernel and initrd.
    pub fn volume_users(&self) -> Vec<(PathBuf, crate::model::VolumeUser)> {
        let mut out = Vec::new();
        for e in self.entries() {
            let r = lock(&e.rec);
            let user = |role: &str| crate::model::VolumeUser {
                id: r.id,
                name: r.name.clone(),
                role: role.into(),
            };
            if r.clone == crate::model::CloneMode::Linked || r.status == VmStatus::Creating {
                out.push((r.base_path.clone(), user("base_image")));
            }
            if r.clone == crate::model::CloneMode::Direct {
                out.push((r.disk_file.clone(), user("disk")));
            }
            for d in &r.disks {
                out.push((d.path.clone(), user("disk")));
            }
            if let Some(b) = &r.boot_paths {
                out.push((b.kernel.clone(), user("kernel")));
                if let Some(i) = &b.initrd {
                    out.push((i.clone(), user("initrd")));
                }
            }
        }
        out
    }

    /// Every VM with its latest sample, from memory.
    pub fn metrics(&self) -> Vec<VmMetrics> {
        self.entries()
            .iter()
            .map(|e| {
                let (name, status, vcpus, memory_mib) = {
                    let r = lock(&e.rec);
                    (r.name.clone(), r.status, r.vcpus, r.memory)
                };
                VmMetrics {
                    id: e.id,
                    name,
                    status,
                    vcpus,
                    memory_mib,
                    sample: e.runtime().and_then(|rt| lock(&rt.samples).latest.clone()),
                }
            })
            .collect()
    }

    /// Lists VMs with filters, one keyset page at a time (stable under
    /// inserts and deletes: the cursor is the last (sort key, id) returned).
    /// Only the page's VMs are returned; the rest are only counted.
    pub fn list(
        &self,
        q: &ListQuery,
        page: &PageRequest<(String, Uuid)>,
    ) -> Page<Arc<VmEntry>, (String, Uuid)> {
        let node = &self.core().node;
        if q.node.as_ref().is_some_and(|n| n != node) {
            return Page {
                items: Vec::new(),
                next: None,
                total: 0,
            };
        }
        let matches = |r: &VmRecord| {
            q.status.is_none_or(|s| r.status == s)
                && q.name.as_ref().is_none_or(|n| &r.name == n)
                && q.tag.as_ref().is_none_or(|t| r.tags.contains(t))
                && q.template
                    .as_ref()
                    .is_none_or(|t| r.template.as_ref() == Some(t))
        };
        let map = read(&self.inner.vms);
        let page = match q.sort {
            SortField::CreatedAt => {
                let unfiltered = q.is_unfiltered();
                let keep = |e: &Arc<VmEntry>| unfiltered || matches(&lock(&e.rec));
                let total = if unfiltered {
                    map.by_created.len()
                } else {
                    map.by_created.values().filter(|e| keep(e)).count()
                };
                crate::page::paginate_map(&map.by_created, keep, total, page).map(Arc::clone)
            }
            SortField::Name => {
                let mut rows: Vec<((String, Uuid), &Arc<VmEntry>)> = map
                    .by_created
                    .values()
                    .filter_map(|e| {
                        let r = lock(&e.rec);
                        matches(&r).then(|| ((r.name.clone(), e.id), e))
                    })
                    .collect();
                rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                if page.descending {
                    rows.reverse();
                }
                paginate(rows, |(k, _)| k.clone(), page).map(|(_, e)| e.clone())
            }
        };
        drop(map);
        page
    }

    /// Takes the VM's operation slot for job `job_id` of type `kind`.
    pub fn claim(&self, entry: &Arc<VmEntry>, job_id: Uuid, kind: &str) -> Result<OpGuard> {
        let mut op = lock(&entry.op);
        if let Some((job_id, job_type)) = op.clone() {
            return Err(EngineError::Busy {
                what: format!("VM {}", entry.id),
                job_id,
                job_type,
            });
        }
        let present = read(&self.inner.vms).by_id.contains_key(&entry.id);
        if !present {
            return Err(EngineError::NotFound(format!(
                "VM not found: {}.",
                entry.id
            )));
        }
        *op = Some((job_id, kind.to_owned()));
        Ok(OpGuard {
            entry: entry.clone(),
        })
    }

    /// The one place a VM's status changes: `event` must be valid in the
    /// current status (the transition table in `lifecycle`); the new status
    /// is persisted and published. An invalid transition changes nothing and
    /// is refused as a conflict.
    pub(crate) fn transition(
        &self,
        entry: &VmEntry,
        event: VmEvent,
        reason: Option<String>,
    ) -> Result<VmStatus> {
        let (old, new, name) = {
            let mut rec = lock(&entry.rec);
            let old = rec.status;
            let new = lifecycle::next(old, event).map_err(|e| {
                tracing::warn!(vm_id = %rec.id, from = old.as_str(), ?event, "refused status change");
                EngineError::Conflict(e.to_string())
            })?;
            if old == new && rec.status_reason == reason {
                return Ok(new);
            }
            rec.status = new;
            rec.status_reason = reason;
            rec.updated_at = crate::clock::now();
            if let Err(e) = self.core().store.update_vm(rec.id, new.as_str(), &*rec) {
                tracing::error!(vm_id = %rec.id, error = %e, "cannot persist VM status");
            }
            tracing::info!(vm_id = %rec.id, name = %rec.name, status = new.as_str(), "status");
            (old, new, rec.name.clone())
        };
        entry.touch();
        if old != new {
            if let Some(kind) = lifecycle::event_name(old, new) {
                self.publish(kind, entry.id, name, new);
            }
        }
        Ok(new)
    }

    /// `transition` for the paths that cannot do anything about a refusal
    /// (watchers, clean-up): the refusal is logged and the status stays.
    pub(crate) fn settle(&self, entry: &VmEntry, event: VmEvent, reason: Option<String>) {
        let _ = self.transition(entry, event, reason);
    }

    pub(crate) fn publish(&self, kind: &str, id: Uuid, name: String, status: VmStatus) {
        self.core().events.emit(
            kind,
            Target::Vm(id),
            Some(name),
            Some(status.as_str().into()),
        );
    }

    pub(crate) fn unique_mac(&self) -> String {
        let map = read(&self.inner.vms);
        loop {
            let mac = record::generate_mac();
            if !map.by_id.values().any(|e| lock(&e.rec).mac_address == mac) {
                return mac;
            }
        }
    }
}
