//! Creating VMs: a request (plus its template) resolved into a record, then
//! the disk cloned and grown, the cloud-init seed written and the row
//! committed, each step undone if a later one fails or the job is cancelled.

use std::path::Path;
use uuid::Uuid;

use super::lifecycle::VmEvent;
use super::record::{self as vm, CreateSpec, VmRecord};
use super::registry::{pool_err, VmEngine, VmEntry, GIB};
use crate::engine::core::{JobCtx, JobTarget, Requester, Submitted};
use crate::engine::error::{EngineError, Result};
use crate::host::pool;
use crate::model::{CloneMode, CreateVmRequest, Vm, VmStatus};
use crate::rollback::Rollback;

/// A create request resolved and checked: ready to run.
pub struct CreatePlan {
    pub rec: VmRecord,
    pub base_format: String,
    pub cloud_init: Option<crate::model::CloudInit>,
    /// Room for the disk, promised until the create has finished.
    pub(crate) disk_room: Option<crate::engine::capacity::Permit>,
    /// Memory and vCPUs, promised until the create has finished (with
    /// `capacity.count_stopped`, after which the VM counts by itself).
    pub(crate) room: Option<crate::engine::capacity::Permit>,
}

/// A base image named in an iSCSI pool: the LUN's URL and size.
struct LunBase {
    url: String,
    size: u64,
}

impl VmEngine {
    /// Applies the template, checks every field and resolves every path.
    /// Everything that can be refused is refused here, before any job.
    pub async fn prepare_create(&self, req: CreateVmRequest) -> Result<CreatePlan> {
        let node = &self.inner.core.node;
        if let Some(asked) = req.node.as_deref().filter(|n| *n != "self" && n != node) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: node {asked:?}: this agent is node {node} (the aggregator places VMs on other nodes)."
            )));
        }
        let spec = self.apply_template(req)?;
        let cfg = &self.inner.core.cfg;
        vm::validate_create(&spec, &vm::Bounds::of(cfg))?;
        if let Some(pin) = &spec.cpu_pinning {
            super::resources::check_pinning(pin)?;
        }
        let pools = self.core().pools.active_dirs();
        self.core().pools.check_named_active(&spec.base_image)?;
        let direct = spec.clone == CloneMode::Direct;
        let lun = self.lun_base(&spec.base_image).await?;
        if lun.is_some() && !direct {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: {} is an iSCSI LUN: a VM runs on it directly (clone \"direct\").",
                spec.base_image
            )));
        }
        let base_path = match &lun {
            Some(l) => std::path::PathBuf::from(&l.url),
            None => pool::resolve(&pools, &spec.base_image, "base image").map_err(pool_err)?,
        };
        if direct {
            if let Some((_, u)) = self.volume_users().into_iter().find(|(p, _)| {
                *p == base_path || p.canonicalize().ok().as_ref() == Some(&base_path)
            }) {
                return Err(EngineError::Conflict(format!(
                    "{} is in use by VM {} ({}) as its {}; a VM runs directly only on a volume nothing else uses.",
                    spec.base_image, u.name, u.id, u.role
                )));
            }
        }
        let boot_paths = self.resolve_boot(&pools, spec.boot.as_ref())?;
        // QEMU opens the base image itself, as its own user.
        if lun.is_none() && !direct {
            self.check_readable(&base_path, "base_image")?;
        }
        let info = match &lun {
            Some(l) => crate::host::qemu_img::ImageInfo {
                format: "raw".into(),
                virtual_size: l.size,
                actual_size: l.size,
                backing_file: None,
                snapshots: Vec::new(),
            },
            None => self.base_info(&base_path).await.map_err(|e| {
                EngineError::Invalid(format!(
                    "base image {} is not a disk image: {e}",
                    spec.base_image
                ))
            })?,
        };
        if direct && info.format != "qcow2" && info.format != "raw" {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: a VM runs directly on a qcow2 or raw volume; {} is {}.",
                spec.base_image, info.format
            )));
        }
        // A VM on its volume has the volume's size.
        let disk_size = if direct {
            info.virtual_size.div_ceil(GIB).max(1)
        } else {
            spec.disk_size
        };
        if !direct && spec.disk_size.saturating_mul(GIB) < info.virtual_size {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: disk_size {} GiB is smaller than the base image ({} bytes, {:.2} GiB); disks only grow.",
                spec.disk_size,
                info.virtual_size,
                info.virtual_size as f64 / GIB as f64
            )));
        }
        if let Some(name) = &spec.name {
            if self.find(name).is_ok() {
                return Err(EngineError::Conflict(format!(
                    "name already in use: {name}"
                )));
            }
        }
        let id = Uuid::new_v4();
        // The disk may grow to its whole virtual size (a full copy also
        // holds the base's data at once): that much must be free, beside
        // what creates under way were promised.
        let disk_room = if direct {
            None
        } else {
            Some(self.core().admission.reserve_disk(
                id,
                &format!("a disk of {} GiB", spec.disk_size),
                &self.core().cfg.state_dir.join("vms"),
                spec.disk_size.saturating_mul(GIB),
            )?)
        };
        let room = if self.core().cfg.capacity.count_stopped {
            let demand = crate::engine::capacity::Demand {
                memory_mib: spec.memory,
                vcpus: u64::from(spec.vcpus),
            };
            Some(
                self.core()
                    .admission
                    .reserve(id, demand)
                    .await
                    .map_err(|s| s.refuse("this create"))?,
            )
        } else {
            None
        };
        let name = spec.name.clone().unwrap_or_else(|| {
            vm::generate_name(spec.template.as_deref().unwrap_or(&spec.base_image))
        });
        let now = crate::clock::now();
        let dir = self.state_dir(id);
        Ok(CreatePlan {
            rec: VmRecord {
                id,
                name,
                status: VmStatus::Creating,
                status_reason: None,
                vcpus: spec.vcpus,
                memory: spec.memory,
                disk_size,
                base_image: spec.base_image,
                base_path: base_path.clone(),
                clone: spec.clone,
                disk_file: if direct {
                    base_path.clone()
                } else {
                    dir.join("root.qcow2")
                },
                disk_format: if direct {
                    info.format.clone()
                } else {
                    "qcow2".into()
                },
                mac_address: self.unique_mac(),
                cpu_pinning: spec.cpu_pinning,
                io_limits: spec.io_limits.filter(|l| *l != Default::default()),
                boot: spec.boot,
                boot_paths,
                network: spec.network,
                tags: spec.tags,
                template: spec.template,
                cloud_init: spec.cloud_init.is_some(),
                cloud_init_config: spec.cloud_init.clone(),
                display: spec.display,
                qemu_gid: None,
                current_snapshot: None,
                disks: Vec::new(),
                created_at: now.clone(),
                updated_at: now,
            },
            base_format: info.format,
            cloud_init: spec.cloud_init,
            disk_room,
            room,
        })
    }

    /// Creates one VM as a job.
    pub async fn create(
        &self,
        req: CreateVmRequest,
        requester: &Requester,
    ) -> Result<Submitted<Vm>> {
        self.create_then(req, requester, |_, _| {}).await
    }

    /// Creates one VM as a job, then runs `then` in that job with the new
    /// VM (a step that cannot undo the create, such as joining a group).
    pub async fn create_then(
        &self,
        req: CreateVmRequest,
        requester: &Requester,
        then: impl FnOnce(&Vm, &JobCtx) + Send + 'static,
    ) -> Result<Submitted<Vm>> {
        let plan = self.prepare_create(req).await?;
        let (handle, ctx) = self.core().start_single(
            Uuid::new_v4(),
            "vm.create",
            JobTarget::Vm(plan.rec.id),
            plan.rec.name.clone(),
            requester,
        )?;
        let engine = self.clone();
        let preview = plan.rec.to_api(&self.core().node, None);
        Ok(self
            .inner
            .core
            .spawn_job(handle, Some(preview), async move {
                let vm = engine.create_run(plan, &ctx).await?;
                then(&vm, &ctx);
                Ok(vm)
            }))
    }

    /// The steps of a create. The row comes first (status `creating`): a
    /// crash from there on is undone at the next start, and the name is
    /// reserved atomically.
    pub(crate) async fn create_run(&self, plan: CreatePlan, ctx: &JobCtx) -> Result<Vm> {
        let CreatePlan {
            rec,
            base_format,
            cloud_init,
            disk_room: _disk_room,
            room: _room,
        } = plan;
        let store = &self.core().store;
        let mut rb = Rollback::new();
        ctx.check()?;
        store.insert_vm(
            rec.id,
            &rec.name,
            rec.status.as_str(),
            &rec.created_at,
            &rec,
        )?;
        let entry = VmEntry::new(rec.clone());
        self.insert(entry.clone());
        {
            let store = self.core().store.clone();
            let engine = self.clone();
            let id = rec.id;
            rb.push("row", move || {
                engine.forget(id);
                let _ = store.delete_vm(id);
            });
        }
        ctx.progress(10);
        let dir = self.state_dir(rec.id);
        let gid = self.assign_gid(&entry)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the VM directory", e))?;
        {
            let dir = dir.clone();
            rb.push("dir", move || {
                let _ = std::fs::remove_dir_all(&dir);
            });
        }
        // Closed to others before anything is written in it.
        crate::host::confine::own(&dir, gid, crate::host::confine::VmFile::StateDir)
            .map_err(|e| EngineError::internal("giving the VM directory to its group", e))?;
        ctx.check()?;
        let img = &self.inner.img;
        match rec.clone {
            CloneMode::Linked => {
                ctx.log(format!("linked clone of {}", rec.base_path.display()));
                img.create_linked(
                    &rec.base_path,
                    &base_format,
                    &rec.disk_file,
                    rec.disk_size * GIB,
                )
                .await
                .map_err(|e| {
                    EngineError::internal(
                        format!("Failed to clone base image {}", rec.base_image),
                        e,
                    )
                })?
            }
            CloneMode::Direct => {
                ctx.log(format!("runs on {} itself", rec.base_path.display()));
            }
            CloneMode::Full => {
                ctx.log(format!("full copy of {}", rec.base_path.display()));
                let token = ctx.handle.token();
                let result = img
                    .copy_full_progress(&rec.base_path, &rec.disk_file, token, |pct| {
                        ctx.progress(10 + (pct * 0.8) as u8)
                    })
                    .await;
                ctx.check()?;
                result.map_err(|e| {
                    EngineError::internal(
                        format!("Failed to copy base image {}", rec.base_image),
                        e,
                    )
                })?
            }
        }
        ctx.progress(90);
        ctx.check()?;
        // A linked clone got its size when it was made; a full copy grows now.
        if rec.clone == CloneMode::Full {
            img.resize(&rec.disk_file, rec.disk_size * GIB)
                .await
                .map_err(|e| EngineError::internal("Failed to resize the disk", e))?;
        }
        if let Some(c) = &cloud_init {
            self.write_seed(&rec, c).await?;
        }
        let rec = entry.record();
        self.own_files(&rec, gid)?;
        ctx.check()?;
        // Listed (as `creating`) since its row exists; done now.
        self.transition(&entry, VmEvent::Created, None)?;
        rb.disarm();
        ctx.log("created");
        Ok(self.to_api(&entry))
    }

    /// Writes the VM's `cidata.iso` from its cloud-init configuration:
    /// `instance-id` the VM's id and `local-hostname` its name unless the
    /// meta data gives them.
    pub(crate) async fn write_seed(
        &self,
        rec: &VmRecord,
        c: &crate::model::CloudInit,
    ) -> Result<()> {
        let meta_data = c.meta_data_file(&rec.id.to_string(), &rec.name);
        let network_config = c.network_config_file();
        crate::host::cloudinit::write_seed(
            &self.state_dir(rec.id).join("cidata.iso"),
            &crate::host::cloudinit::Seed {
                meta_data: &meta_data,
                user_data: c.user_data.as_deref().unwrap_or_default(),
                network_config: network_config.as_deref(),
            },
        )
        .await
        .map_err(|e| EngineError::internal("Failed to write the cloud-init seed", e))
    }

    /// `qemu-img info` of a base image, asked once per version of the file.
    async fn base_info(
        &self,
        path: &Path,
    ) -> std::result::Result<crate::host::qemu_img::ImageInfo, crate::host::qemu_img::ImgError>
    {
        self.inner.base_info.info(&self.inner.img, path).await
    }

    /// The LUN a base image names when it is `pool/lun-<n>` of an iSCSI
    /// pool (asked of its storage server now).
    async fn lun_base(&self, given: &str) -> Result<Option<LunBase>> {
        let Some((pool, volume)) = given.split_once('/') else {
            return Ok(None);
        };
        let Some(def) = self.core().pools.get(pool) else {
            return Ok(None);
        };
        if def.kind != crate::model::PoolType::Iscsi {
            return Ok(None);
        }
        let lun: u32 = volume
            .strip_prefix("lun-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "Volume not found: {volume} in storage pool {pool}."
                ))
            })?;
        let portal = crate::host::iscsi::Portal::parse(&def.host)
            .map_err(|e| EngineError::Invalid(format!("Invalid parameter: {e}.")))?;
        let luns =
            crate::host::iscsi::luns(&portal, &def.target, std::time::Duration::from_secs(5))
                .await
                .map_err(|e| {
                    EngineError::Unavailable(format!("Storage server unavailable: {e}"))
                })?;
        let found = luns.iter().find(|l| l.id == lun).ok_or_else(|| {
            EngineError::NotFound(format!(
                "Volume not found: {volume} in storage pool {pool}."
            ))
        })?;
        Ok(Some(LunBase {
            url: crate::host::iscsi::qemu_url(&portal, &def.target, lun),
            size: found.size,
        }))
    }

    /// A request merged over its template: the request's fields win.
    fn apply_template(&self, req: CreateVmRequest) -> Result<CreateSpec> {
        let (spec, template) = match &req.template {
            Some(key) => {
                let t = self.find_template(key)?;
                (req.spec.or(&t.spec), Some(t.name))
            }
            None => (req.spec, None),
        };
        // Without a template the request itself is incomplete; with one,
        // the template it names lacks the field too (its state, a conflict).
        let missing = |f: &str| match &template {
            None => EngineError::Invalid(format!(
                "Invalid parameter: {f} is required (in the request or its template)."
            )),
            Some(t) => EngineError::Conflict(format!(
                "{f} is required: neither the request nor template {t} gives it."
            )),
        };
        let cloud_init = spec.cloud_init();
        Ok(CreateSpec {
            name: req.name,
            vcpus: spec.vcpus.ok_or_else(|| missing("vcpus"))?,
            memory: spec.memory.ok_or_else(|| missing("memory"))?,
            disk_size: spec.disk_size.ok_or_else(|| missing("disk_size"))?,
            base_image: spec.base_image.ok_or_else(|| missing("base_image"))?,
            clone: spec.clone.unwrap_or_default(),
            cpu_pinning: spec.cpu_pinning,
            io_limits: spec.io_limits,
            boot: spec.boot,
            network: spec.network.unwrap_or_default(),
            tags: spec.tags.unwrap_or_default(),
            cloud_init,
            display: spec.display.unwrap_or(false),
            template,
        })
    }
}

/// Shared by the bulk path: a plan's description for its task.
pub(crate) fn describe(req: &CreateVmRequest, i: usize) -> String {
    req.name.clone().unwrap_or_else(|| format!("item {i}"))
}
