//! `libgo vm …`

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::output::{to_value, View};
use super::views::{MOVE_VIEW, STATS_VIEW, VM_VIEW, VOLUME_VIEW};
use super::{assignments, gib, mib, usage, Ctx};
use crate::client::{Client, ListQuery};
use crate::model::*;

const SNAPSHOT_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("CREATED", "created_at"),
        ("PARENT", "parent"),
        ("MEMORY", "vm_state"),
        ("SIZE", "bytes:size"),
        ("DESCRIPTION", "description"),
    ],
    id: "name",
};

const DISK_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("DEVICE", "device"),
        ("POOL", "pool"),
        ("VOLUME", "volume"),
        ("FORMAT", "format"),
        ("CAPACITY", "bytes:capacity"),
        ("ATTACHED", "attached"),
        ("READ-ONLY", "read_only"),
    ],
    id: "name",
};

/// What a VM or a template is made of, as flags.
#[derive(Debug, Args, Default)]
pub struct SpecArgs {
    /// Virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory: MiB, or with a unit (`512M`, `2G`).
    #[arg(long, value_parser = mib)]
    pub memory: Option<u64>,
    /// Root disk: GiB, or with a unit (`10G`, `1T`).
    #[arg(long, value_parser = gib)]
    pub disk_size: Option<u64>,
    /// Base image: a volume name, `pool/volume` or a path inside a pool.
    #[arg(long, visible_alias = "image")]
    pub base_image: Option<String>,
    /// How the disk is made from the base image.
    #[arg(long, value_parser = ["linked", "full", "direct"])]
    pub clone: Option<String>,
    /// Direct kernel boot: the kernel.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Direct kernel boot: the initrd.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<String>,
    /// Direct kernel boot: the kernel command line.
    #[arg(long, requires = "kernel")]
    pub cmdline: Option<String>,
    /// A tag (repeat for several).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// cloud-init user data, from a file (`-` for stdin).
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// Give the VM a display (graphical console, screenshots).
    #[arg(long)]
    pub display: bool,
    /// The NIC: user-mode NAT or a host tap device.
    #[arg(long, value_parser = ["user", "tap"])]
    pub network: Option<String>,
}

impl SpecArgs {
    pub fn spec(&self) -> anyhow::Result<VmSpec> {
        let user_data = match &self.user_data {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(std::io::read_to_string(std::io::stdin())?),
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            ),
        };
        let mut v = serde_json::json!({});
        let set = |v: &mut Value, k: &str, x: Value| {
            if !x.is_null() {
                v[k] = x;
            }
        };
        set(&mut v, "vcpus", to_value(&self.vcpus));
        set(&mut v, "memory", to_value(&self.memory));
        set(&mut v, "disk_size", to_value(&self.disk_size));
        set(&mut v, "base_image", to_value(&self.base_image));
        set(&mut v, "clone", to_value(&self.clone));
        set(&mut v, "user_data", to_value(&user_data));
        if let Some(k) = &self.kernel {
            v["boot"] = serde_json::json!({"kernel": k});
            set(&mut v["boot"], "initrd", to_value(&self.initrd));
            set(&mut v["boot"], "cmdline", to_value(&self.cmdline));
        }
        if !self.tags.is_empty() {
            v["tags"] = to_value(&self.tags);
        }
        if self.display {
            v["display"] = Value::Bool(true);
        }
        if let Some(n) = &self.network {
            v["network"] = serde_json::json!({"mode": n});
        }
        Ok(serde_json::from_value(v)?)
    }
}

#[derive(Debug, Args)]
pub struct Names {
    /// VMs: names or ids (`REMOTE:NAME` for another remote).
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per command line
pub enum VmCmd {
    /// Create a VM (or several with --count).
    #[command(after_help = "Examples:
  libgo vm create web1 --vcpus 2 --memory 2G --disk-size 10 --base-image debian-12.qcow2
  libgo vm create --template small web2
  libgo vm create web --template small --count 5      # web-1 … web-5, one job
  libgo vm create prod:db1 --template db --async      # prints the job id")]
    Create {
        /// DNS label (generated when left out).
        name: Option<String>,
        /// A template whose values fill what is not given.
        #[arg(long)]
        template: Option<String>,
        /// The node to create it on (an agent takes its own name or `self`).
        #[arg(long)]
        node: Option<String>,
        /// Through an aggregator, without --node: `memory` (the node with the
        /// most free memory) or `spread` (the fewest VMs sharing its tags).
        #[arg(long, value_parser = ["memory", "spread"])]
        placement: Option<String>,
        /// With `--placement spread`: the tag to spread by.
        #[arg(long, requires = "placement")]
        spread_tag: Option<String>,
        /// Create this many (named NAME-1 … NAME-N), as one bulk job.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        count: u32,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// List VMs.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:
  libgo vm list
  libgo vm list --status running --format csv
  libgo vm ls -q                                      # ids only"
    )]
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        template: Option<String>,
        /// `name`, `-name`, `created_at`, `-created_at`.
        #[arg(long)]
        sort: Option<String>,
    },
    /// Show a VM.
    #[command(after_help = "Examples:\n  libgo vm show web1\n  libgo vm show web1 --format json")]
    Show { name: String },
    /// What a VM is configured with and what is in force while it runs
    /// (pinning, memory, I/O limits per layer).
    #[command(after_help = "Examples:\n  libgo vm config web1\n  libgo vm config web1 -f json")]
    Config { name: String },
    /// The latest performance sample of a running VM (CPU, memory, disk,
    /// network).
    #[command(after_help = "Examples:\n  libgo vm stats web1")]
    Stats { name: String },
    /// Start VMs.
    #[command(after_help = "Examples:\n  libgo vm start web1\n  libgo vm start web1 web2 --async")]
    Start(Names),
    /// Stop VMs: ACPI power button, forced off after the timeout.
    #[command(after_help = "Examples:\n  libgo vm stop web1\n  libgo vm stop web1 --timeout 10")]
    Stop {
        #[command(flatten)]
        names: Names,
        /// Seconds before forcing.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Shut VMs down gracefully (never forced).
    #[command(after_help = "Examples:\n  libgo vm shutdown web1 --timeout 120")]
    Shutdown {
        #[command(flatten)]
        names: Names,
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Force VMs off at once.
    #[command(after_help = "Examples:\n  libgo vm poweroff web1")]
    Poweroff(Names),
    /// Reboot VMs gracefully (a reset after the timeout).
    #[command(after_help = "Examples:\n  libgo vm reboot web1")]
    Reboot {
        #[command(flatten)]
        names: Names,
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Hard-reset VMs.
    #[command(after_help = "Examples:\n  libgo vm reset web1")]
    Reset(Names),
    /// Pause VMs' vCPUs.
    #[command(after_help = "Examples:\n  libgo vm pause web1")]
    Pause(Names),
    /// Resume paused VMs.
    #[command(after_help = "Examples:\n  libgo vm resume web1")]
    Resume(Names),
    /// Delete VMs (forced off first), with their disks.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo vm delete web1\n  libgo vm rm web1 web2"
    )]
    Delete(Names),
    /// Change a VM: KEY=VALUE pairs of `PATCH /vms/{id}`.
    #[command(after_help = "Examples:
  libgo vm set web1 vcpus=4 memory=4096
  libgo vm set web1 tags=web,prod io_limits.iops=500
  libgo vm set web1 status=paused")]
    Set {
        name: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Attach the terminal to a VM's serial console (Ctrl-a q detaches).
    #[command(after_help = "Examples:
  libgo vm console web1
  echo 'uname -a' | libgo vm console web1 --linger 3   # from a pipe")]
    Console {
        name: String,
        /// From a pipe: after the end of stdin, leave once the output has
        /// been quiet this many seconds.
        #[arg(long, default_value_t = 1.0)]
        linger: f64,
    },
    /// Save a PNG of a VM's display.
    #[command(after_help = "Examples:\n  libgo vm screenshot web1 -o web1.png")]
    Screenshot {
        name: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Snapshots of a VM.
    #[command(
        subcommand,
        visible_alias = "snapshots",
        after_help = "Examples:\n  libgo vm snapshot list web1\n  libgo vm snapshot create web1 before-upgrade"
    )]
    Snapshot(SnapshotCmd),
    /// Extra disks of a VM.
    #[command(
        subcommand,
        visible_alias = "disks",
        after_help = "Examples:\n  libgo vm disk list web1\n  libgo vm disk attach web1 --name data --size 20"
    )]
    Disk(DiskCmd),
    /// Move a VM to another node (through an aggregator): cold when it is
    /// stopped, live when it runs.
    #[command(after_help = "Examples:
  libgo vm move web1 --node n2
  libgo vm move web1 --node n2 --max-bandwidth 100M")]
    Move {
        name: String,
        /// The node to move it to.
        #[arg(long)]
        node: String,
        /// Refuse to move a running VM (a stopped one always moves cold,
        /// a running one live).
        #[arg(long)]
        cold: bool,
        /// Caps the disk and memory streams, per second (`100M`, `1G`).
        #[arg(long)]
        max_bandwidth: Option<String>,
    },
    /// Copy a VM's disk into a volume (qcow2, raw, vmdk, vdi, ova).
    #[command(after_help = "Examples:
  libgo vm export web1 --disk-format ova
  libgo vm export web1 --disk-format qcow2 --compress --pool backups --name web1.qcow2")]
    Export {
        name: String,
        /// The volume's format.
        #[arg(long = "disk-format", value_parser = ["qcow2", "raw", "vmdk", "vdi", "ova"])]
        disk_format: String,
        #[arg(long)]
        compress: bool,
        #[arg(long)]
        pool: Option<String>,
        /// The volume's name.
        #[arg(long = "name")]
        volume: Option<String>,
        /// Export this snapshot instead.
        #[arg(long)]
        snapshot: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List a VM's snapshots.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  libgo vm snapshot list web1"
    )]
    List { vm: String },
    /// Take a snapshot (with --memory: the running guest's state too).
    #[command(
        after_help = "Examples:\n  libgo vm snapshot create web1 before-upgrade\n  libgo vm snapshot create web1 live --memory"
    )]
    Create {
        vm: String,
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        memory: bool,
    },
    /// Delete a snapshot.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo vm snapshot delete web1 before-upgrade"
    )]
    Delete { vm: String, name: String },
    /// Bring the VM back to a snapshot.
    #[command(after_help = "Examples:\n  libgo vm snapshot revert web1 before-upgrade")]
    Revert { vm: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum DiskCmd {
    /// List a VM's extra disks.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  libgo vm disk list web1"
    )]
    List { vm: String },
    /// Show one disk.
    #[command(after_help = "Examples:\n  libgo vm disk show web1 data")]
    Show { vm: String, disk: String },
    /// Attach a new disk (--size) or an existing volume (--volume).
    #[command(
        after_help = "Examples:\n  libgo vm disk attach web1 --name data --size 20\n  libgo vm disk attach web1 --volume shared.qcow2 --read-only"
    )]
    Attach {
        vm: String,
        #[arg(long)]
        name: Option<String>,
        /// GiB of a new qcow2 volume.
        #[arg(long, value_parser = gib, conflicts_with = "volume")]
        size: Option<u64>,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        read_only: bool,
    },
    /// Detach a disk (its volume stays).
    #[command(after_help = "Examples:\n  libgo vm disk detach web1 data")]
    Detach { vm: String, disk: String },
    /// Detach a disk and remove a volume made for it.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  libgo vm disk delete web1 data"
    )]
    Delete { vm: String, disk: String },
}

/// Every page of a VM list.
async fn all_vms(c: &Client, mut q: ListQuery) -> anyhow::Result<Vec<Vm>> {
    let mut out = Vec::new();
    q.limit = Some(200);
    loop {
        let page = c.vms(&q).await?;
        out.extend(page.vms);
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Runs a power action on each VM.
async fn action(
    ctx: &Ctx,
    names: &[String],
    action: &str,
    timeout: Option<u64>,
) -> anyhow::Result<()> {
    for arg in names {
        let (c, name) = ctx.target(arg)?;
        let accepted = c.vm_action_async(&name, action, timeout).await?;
        if ctx
            .job(&c, accepted, &format!("{action} {name}"))
            .await?
            .is_some()
        {
            let vm = c.vm(&name).await?;
            if ctx.out.format == super::Format::Table && !ctx.out.quiet {
                println!("{}: {}", vm.name, vm.status.as_str());
            } else {
                ctx.out.one(&to_value(&vm), &VM_VIEW);
            }
        }
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: VmCmd) -> anyhow::Result<()> {
    match cmd {
        VmCmd::Create {
            name,
            template,
            node,
            placement,
            spread_tag,
            count,
            spec,
        } => {
            let placement = placement.map(|p| crate::model::PlacementPolicy {
                strategy: if p == "spread" {
                    crate::model::PlacementStrategy::Spread
                } else {
                    crate::model::PlacementStrategy::Memory
                },
                tag: spread_tag.clone(),
            });
            let (c, name) = match &name {
                Some(n) => {
                    let (c, n) = ctx.target(n)?;
                    (c, Some(n))
                }
                None => (ctx.client()?, None),
            };
            let spec = spec.spec()?;
            let req = |name: Option<String>| CreateVmRequest {
                name,
                template: template.clone(),
                node: node.clone(),
                placement: placement.clone(),
                spec: spec.clone(),
            };
            if count == 1 {
                let accepted = c.create_vm_async(&req(name)).await?;
                let label = format!(
                    "create {}",
                    accepted
                        .vm
                        .as_ref()
                        .map(|v| v.name.as_str())
                        .unwrap_or("vm")
                );
                if let Some(job) = ctx.job(&c, accepted, &label).await? {
                    let id = job
                        .target
                        .ok_or_else(|| anyhow::anyhow!("the job names no VM"))?
                        .id();
                    ctx.out
                        .one(&to_value(&c.vm(&id.to_string()).await?), &VM_VIEW);
                }
            } else {
                let reqs: Vec<_> = (1..=count)
                    .map(|i| req(name.as_ref().map(|n| format!("{n}-{i}"))))
                    .collect();
                let accepted = c.create_vms(&reqs).await?;
                if let Some(job) = ctx
                    .job(&c, accepted, &format!("create {count} VMs"))
                    .await?
                {
                    let mut vms = Vec::new();
                    for t in job.tasks.iter().filter_map(|t| t.target) {
                        vms.push(to_value(&c.vm(&t.id().to_string()).await?));
                    }
                    ctx.out.list(&vms, &VM_VIEW);
                }
            }
        }
        VmCmd::List {
            status,
            tag,
            template,
            sort,
        } => {
            let mut q = ListQuery {
                sort,
                ..Default::default()
            };
            for (k, v) in [("status", status), ("tag", tag), ("template", template)] {
                if let Some(v) = v {
                    q = q.filter(k, v);
                }
            }
            let vms = all_vms(&ctx.client()?, q).await?;
            ctx.out
                .list(&vms.iter().map(to_value).collect::<Vec<_>>(), &VM_VIEW);
        }
        VmCmd::Show { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(&to_value(&c.vm(&name).await?), &VM_VIEW);
        }
        VmCmd::Config { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out.one(&to_value(&c.vm_config(&name).await?), &VM_VIEW);
        }
        VmCmd::Stats { name } => {
            let (c, name) = ctx.target(&name)?;
            ctx.out
                .one(&to_value(&c.vm_performance(&name).await?), &STATS_VIEW);
        }
        VmCmd::Start(n) => action(ctx, &n.names, "start", None).await?,
        VmCmd::Stop { names, timeout } => action(ctx, &names.names, "stop", timeout).await?,
        VmCmd::Shutdown { names, timeout } => {
            action(ctx, &names.names, "shutdown", timeout).await?
        }
        VmCmd::Poweroff(n) => action(ctx, &n.names, "poweroff", None).await?,
        VmCmd::Reboot { names, timeout } => action(ctx, &names.names, "reboot", timeout).await?,
        VmCmd::Reset(n) => action(ctx, &n.names, "reset", None).await?,
        VmCmd::Pause(n) => action(ctx, &n.names, "pause", None).await?,
        VmCmd::Resume(n) => action(ctx, &n.names, "resume", None).await?,
        VmCmd::Delete(n) => {
            for arg in &n.names {
                let (c, name) = ctx.target(arg)?;
                let accepted = c.delete_vm_async(&name).await?;
                if ctx
                    .job(&c, accepted, &format!("delete {name}"))
                    .await?
                    .is_some()
                {
                    ctx.out.say(&format!("VM {name} deleted."));
                }
            }
        }
        VmCmd::Set { name, pairs } => {
            let (c, name) = ctx.target(&name)?;
            let body: PatchVmRequest = serde_json::from_value(assignments(&pairs, &["tags"])?)
                .map_err(|e| usage(format!("cannot set that: {e}")))?;
            let r = c.patch_vm(&name, &body).await?;
            ctx.out.say(&r.message);
            if ctx.out.format != super::Format::Table || ctx.out.quiet {
                ctx.out.one(
                    &to_value(&r),
                    &View {
                        cols: &[("ID", "id"), ("APPLIES", "applies")],
                        id: "id",
                    },
                );
            }
        }
        VmCmd::Console { name, linger } => {
            let (c, name) = ctx.target(&name)?;
            let linger =
                Duration::try_from_secs_f64(linger).map_err(|e| usage(format!("--linger: {e}")))?;
            super::console::attach(&c, &name, linger).await?;
        }
        VmCmd::Screenshot { name, output } => {
            let (c, name) = ctx.target(&name)?;
            let png = c.vm_screenshot(&name).await?;
            std::fs::write(&output, &png)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", output.display()))?;
            ctx.out.say(&format!(
                "Wrote {} ({} bytes).",
                output.display(),
                png.len()
            ));
        }
        VmCmd::Snapshot(s) => snapshot(ctx, s).await?,
        VmCmd::Disk(d) => disk(ctx, d).await?,
        VmCmd::Move {
            name,
            node,
            cold,
            max_bandwidth,
        } => {
            let (c, name) = ctx.target(&name)?;
            let max_bandwidth = max_bandwidth
                .map(|b| mib(&b).map(|m| m << 20))
                .transpose()
                .map_err(|e| usage(format!("--max-bandwidth: {e}")))?;
            let req = crate::model::MigrateRequest {
                node: node.clone(),
                live: cold.then_some(false),
                target: None,
                max_bandwidth,
            };
            let accepted = c.migrate_vm_async(&name, &req).await?;
            if let Some(job) = ctx
                .job(&c, accepted, &format!("move {name} to {node}"))
                .await?
            {
                let shown = job.result.clone().unwrap_or_else(|| to_value(&job));
                ctx.out.one(&shown, &MOVE_VIEW);
            }
        }
        VmCmd::Export {
            name,
            disk_format: format,
            compress,
            pool,
            volume,
            snapshot,
        } => {
            let (c, name) = ctx.target(&name)?;
            // The volume's name is chosen here when not given (the agent's
            // own pattern, `<vm>-<UTC time>.<format>`), so that the result
            // can be shown once the job is done.
            let volume = match volume {
                Some(v) => v,
                None => {
                    let vm = c.vm(&name).await?;
                    let now = time::OffsetDateTime::now_utc().format(
                        time::macros::format_description!(
                            "[year][month][day]T[hour][minute][second]Z"
                        ),
                    )?;
                    format!("{}-{now}.{format}", vm.name)
                }
            };
            let req = ExportVmRequest {
                format: serde_json::from_value(Value::String(format))?,
                compress,
                pool: pool.clone(),
                name: Some(volume.clone()),
                snapshot,
            };
            let accepted = c.export_vm_async(&name, &req).await?;
            if ctx
                .job(&c, accepted, &format!("export {name}"))
                .await?
                .is_some()
            {
                let pool = pool.unwrap_or_else(|| "default".into());
                let vol = c.pool_volume(&pool, &volume).await?;
                ctx.out.one(&to_value(&vol), &VOLUME_VIEW);
            }
        }
    }
    Ok(())
}

async fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::List { vm } => {
            let (c, vm) = ctx.target(&vm)?;
            let list = c.snapshots(&vm).await?;
            ctx.out.list(
                &list.snapshots.iter().map(to_value).collect::<Vec<_>>(),
                &SNAPSHOT_VIEW,
            );
        }
        SnapshotCmd::Create {
            vm,
            name,
            description,
            memory,
        } => {
            let (c, vm) = ctx.target(&vm)?;
            let req = CreateSnapshotRequest {
                name: name.clone(),
                description,
                memory,
            };
            let accepted = c.create_snapshot_async(&vm, &req).await?;
            if ctx
                .job(&c, accepted, &format!("snapshot {vm}"))
                .await?
                .is_some()
            {
                ctx.out
                    .one(&to_value(&c.snapshot(&vm, &name).await?), &SNAPSHOT_VIEW);
            }
        }
        SnapshotCmd::Delete { vm, name } => {
            let (c, vm) = ctx.target(&vm)?;
            c.delete_snapshot(&vm, &name).await?;
            ctx.out.say(&format!("Snapshot {name} of {vm} deleted."));
        }
        SnapshotCmd::Revert { vm, name } => {
            let (c, vm) = ctx.target(&vm)?;
            c.revert_snapshot(&vm, &name).await?;
            ctx.out.say(&format!("{vm} reverted to {name}."));
        }
    }
    Ok(())
}

async fn disk(ctx: &Ctx, cmd: DiskCmd) -> anyhow::Result<()> {
    match cmd {
        DiskCmd::List { vm } => {
            let (c, vm) = ctx.target(&vm)?;
            let list = c.disks(&vm).await?;
            ctx.out.list(
                &list.disks.iter().map(to_value).collect::<Vec<_>>(),
                &DISK_VIEW,
            );
        }
        DiskCmd::Show { vm, disk } => {
            let (c, vm) = ctx.target(&vm)?;
            ctx.out
                .one(&to_value(&c.disk(&vm, &disk).await?), &DISK_VIEW);
        }
        DiskCmd::Attach {
            vm,
            name,
            size,
            volume,
            pool,
            read_only,
        } => {
            let (c, vm) = ctx.target(&vm)?;
            let req = AttachDiskRequest {
                name,
                size,
                pool,
                volume,
                read_only,
                io_limits: None,
            };
            ctx.out
                .one(&to_value(&c.attach_disk(&vm, &req).await?), &DISK_VIEW);
        }
        DiskCmd::Detach { vm, disk } => {
            let (c, vm) = ctx.target(&vm)?;
            ctx.out
                .one(&to_value(&c.detach_disk(&vm, &disk).await?), &DISK_VIEW);
        }
        DiskCmd::Delete { vm, disk } => {
            let (c, vm) = ctx.target(&vm)?;
            c.delete_disk(&vm, &disk).await?;
            ctx.out.say(&format!("Disk {disk} of {vm} deleted."));
        }
    }
    Ok(())
}
