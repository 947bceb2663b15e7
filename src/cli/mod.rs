//! The `libgo` command line: every resource of the API with the verbs
//! people know from incus and docker, remotes like incus's, output for
//! people or scripts. Exit codes: 0 done, 1 the server or the job said no
//! (its message on stderr), 2 a usage error.

pub mod config;
pub mod console;
pub mod output;
mod remote;
mod resources;
mod views;
mod vm;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;

use crate::client::{Client, ClientError, Endpoint};
use crate::model::{Accepted, Job};
use config::Config;
use output::{Format, Output};

const EXAMPLES: &str = "Examples:
  libgo vm create web1 --vcpus 2 --memory 1024 --disk-size 10 --base-image debian.qcow2
  libgo vm start web1
  libgo vm list --format json
  libgo remote add prod https://node1:8443 --token lgo_...
  libgo vm show prod:web1                 # web1 on the remote prod
  LIBGO_HOST=unix:///run/libgo.sock libgo job list";

#[derive(Debug, Parser)]
#[command(
    name = "libgo",
    version,
    about = "Command line client of the libgo agent (VMs on QEMU, containers on Docker)",
    after_help = EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    /// The remote to talk to (see `libgo remote list`); a `NAME:` prefix
    /// on a resource does the same for that resource.
    #[arg(long, global = true, env = "LIBGO_REMOTE")]
    pub remote: Option<String>,
    /// Output format.
    #[arg(long, short = 'f', global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print ids only.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// For calls that run as jobs: print the job id and return at once.
    #[arg(long = "async", global = true)]
    pub asynchronous: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// `libgo node …`.
#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// List the nodes.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  libgo node list\n  libgo node ls --remote cluster --format json"
    )]
    List,
    /// One node, with its capacity.
    #[command(
        after_help = "Examples:\n  libgo node show self\n  libgo node show n1 --format yaml"
    )]
    Show {
        /// A node name (`self` on an agent).
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Virtual machines.
    #[command(
        subcommand,
        visible_alias = "vms",
        after_help = "Examples:\n  libgo vm list\n  libgo vm create web1 --template small\n  libgo vm start web1\n  libgo vm console web1"
    )]
    Vm(vm::VmCmd),
    /// Containers (and their engine volumes).
    #[command(
        subcommand,
        visible_alias = "containers",
        after_help = "Examples:\n  libgo container list\n  libgo container create alpine:3 --name app1 --start -- sleep 1000\n  libgo container exec app1 -- ls /"
    )]
    Container(resources::ContainerCmd),
    /// VM templates.
    #[command(
        subcommand,
        visible_alias = "templates",
        after_help = "Examples:\n  libgo template list\n  libgo template create small --vcpus 1 --memory 512 --disk-size 5 --base-image debian-12.qcow2"
    )]
    Template(resources::TemplateCmd),
    /// Container images.
    #[command(
        subcommand,
        visible_alias = "images",
        after_help = "Examples:\n  libgo image list\n  libgo image pull alpine:3"
    )]
    Image(resources::ImageCmd),
    /// Container networks.
    #[command(
        subcommand,
        visible_alias = "networks",
        after_help = "Examples:\n  libgo network list\n  libgo network create backend"
    )]
    Network(resources::NetworkCmd),
    /// Volumes of storage pools (disk images).
    #[command(
        subcommand,
        visible_alias = "volumes",
        after_help = "Examples:\n  libgo volume list\n  libgo volume create data.qcow2 --size 20"
    )]
    Volume(resources::VolumeCmd),
    /// Storage pools.
    #[command(
        subcommand,
        visible_alias = "pools",
        after_help = "Examples:\n  libgo pool list\n  libgo pool show default"
    )]
    Pool(resources::PoolCmd),
    /// Jobs: what mutating calls run as.
    #[command(
        subcommand,
        visible_alias = "jobs",
        after_help = "Examples:\n  libgo job list --state running\n  libgo job wait 9e1f…"
    )]
    Job(resources::JobCmd),
    /// Groups of VMs.
    #[command(
        subcommand,
        visible_alias = "groups",
        after_help = "Examples:\n  libgo group create web --vm web1 --vm web2\n  libgo group start web"
    )]
    Group(resources::GroupCmd),
    /// Users of the TCP listener.
    #[command(
        subcommand,
        visible_alias = "users",
        after_help = "Examples:\n  libgo user list\n  echo 's3cret-pass' | libgo user create alice --role operator"
    )]
    User(resources::UserCmd),
    /// API tokens.
    #[command(
        subcommand,
        visible_alias = "tokens",
        after_help = "Examples:\n  libgo token create aggregator --role viewer\n  libgo token list"
    )]
    Token(resources::TokenCmd),
    /// Agents this CLI talks to.
    #[command(
        subcommand,
        visible_alias = "remotes",
        after_help = "Examples:\n  libgo remote add prod https://node1:8443 --token lgo_…\n  libgo remote list\n  libgo remote switch prod"
    )]
    Remote(remote::RemoteCmd),
    /// The nodes: the agent itself, or every node behind an aggregator.
    #[command(after_help = "Examples:\n  libgo node list\n  libgo node show self --format yaml")]
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// The agent: version, node, accelerator, capacity.
    #[command(after_help = "Examples:\n  libgo info\n  libgo info --remote prod --format yaml")]
    Info,
    /// The audit trail: every mutating call, newest first (admins).
    #[command(
        after_help = "Examples:\n  libgo audit\n  libgo audit --actor user:alice --outcome denied\n  libgo audit --target vms/web1 -f json"
    )]
    Audit {
        /// `uid:0`, `user:alice`, `token:<id>`, `anonymous`.
        #[arg(long)]
        actor: Option<String>,
        /// A collection and id: `vms/web1`.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, value_parser = ["succeeded", "denied", "failed"])]
        outcome: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Who the agent takes this caller for.
    #[command(after_help = "Examples:\n  libgo whoami\n  libgo whoami --remote prod")]
    Whoami,
    /// Follow the agent's events (one JSON object per line).
    #[command(
        after_help = "Examples:\n  libgo events\n  libgo events --type vm.started,vm.stopped\n  libgo events --resource web1"
    )]
    Events {
        /// Type prefixes, comma-separated (`vm.`, `job.finished`).
        #[arg(long = "type")]
        types: Option<String>,
        /// A resource id or name.
        #[arg(long)]
        resource: Option<String>,
    },
    /// Print shell completions.
    #[command(
        after_help = "Examples:\n  libgo completion bash > /etc/bash_completion.d/libgo\n  libgo completion zsh > ~/.zfunc/_libgo\n  libgo completion fish > ~/.config/fish/completions/libgo.fish"
    )]
    Completion { shell: clap_complete::Shell },
    /// Write man pages: `libgo.1` to stdout, or one page per command into a
    /// directory.
    #[command(
        after_help = "Examples:\n  libgo man | man -l -\n  libgo man --dir /usr/share/man/man1"
    )]
    Man {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// A usage error found after parsing (exit code 2, as clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

/// What every command reaches: the configuration, the output, the flags.
pub struct Ctx {
    pub config: Config,
    pub remote: Option<String>,
    pub out: Output,
    pub asynchronous: bool,
}

impl Ctx {
    /// The remote and the rest of `arg` when it is `NAME:rest` and `NAME`
    /// is a remote (an image `alpine:3` is left alone).
    pub fn split<'a>(&self, arg: &'a str) -> (Option<String>, &'a str) {
        if let Some((name, rest)) = arg.split_once(':') {
            if !rest.is_empty() && self.config.remote(name).is_some() {
                return (Some(name.to_owned()), rest);
            }
        }
        (None, arg)
    }

    /// The client for a remote by name, or the default one: `--remote`,
    /// then `LIBGO_HOST` (with `LIBGO_TOKEN`, `LIBGO_FINGERPRINT`), then
    /// the configured default, then the local socket.
    pub fn client_for(&self, name: Option<&str>) -> anyhow::Result<Client> {
        if let Some(n) = name.or(self.remote.as_deref()) {
            return self
                .config
                .remote(n)
                .ok_or_else(|| usage(format!("no remote named {n:?} (see `libgo remote list`)")))?
                .client();
        }
        if let Some(host) = std::env::var("LIBGO_HOST").ok().filter(|h| !h.is_empty()) {
            let endpoint: Endpoint = host.parse().context("LIBGO_HOST")?;
            let fp = std::env::var("LIBGO_FINGERPRINT").ok();
            let mut c = Client::new(endpoint, fp.as_deref())?;
            if let Some(t) = std::env::var("LIBGO_TOKEN").ok().filter(|t| !t.is_empty()) {
                c = c.with_token(t);
            }
            return Ok(c);
        }
        let n = self.config.default_name();
        self.config
            .remote(n)
            .ok_or_else(|| anyhow::anyhow!("the default remote {n:?} is not configured"))?
            .client()
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_for(None)
    }

    /// The client a resource argument names, and the resource itself.
    pub fn target(&self, arg: &str) -> anyhow::Result<(Client, String)> {
        let (remote, rest) = self.split(arg);
        Ok((self.client_for(remote.as_deref())?, rest.to_owned()))
    }

    /// After a `202`: the job id alone with `--async`, otherwise the job
    /// followed to its end with a progress bar on a terminal. `None` when
    /// it was left running; an error when it did not succeed.
    pub async fn job(
        &self,
        client: &Client,
        accepted: Accepted,
        label: &str,
    ) -> anyhow::Result<Option<Job>> {
        if self.asynchronous {
            if self.out.quiet || self.out.format != Format::Table {
                self.out
                    .one(&output::to_value(&accepted.job), &resources::JOB_VIEW);
            } else {
                println!("{}", accepted.job.id);
            }
            return Ok(None);
        }
        self.follow(client, accepted, label).await
    }

    /// The job followed to its end (whatever `--async` says).
    pub async fn follow(
        &self,
        client: &Client,
        accepted: Accepted,
        label: &str,
    ) -> anyhow::Result<Option<Job>> {
        let id = accepted.job.id;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(100);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos:>3}% {elapsed}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            b.set_message(label.to_owned());
            b
        });
        let result = client
            .follow_job(id, |p| {
                if let Some(b) = &bar {
                    b.set_position(p.into());
                }
            })
            .await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(Some(result?))
    }
}

/// Runs the CLI; answers the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(u) = e.downcast_ref::<Usage>() {
                eprintln!("error: {u}");
                return ExitCode::from(2);
            }
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Api { body, .. }) => {
                    eprintln!("Error: {}", body.error.message)
                }
                _ => eprintln!("Error: {e:#}"),
            }
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // These two read no configuration: they run in package builds, where
    // there may be no home directory.
    match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "libgo", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { dir } => return man(dir),
        _ => {}
    }
    let ctx = Ctx {
        config: Config::load()?,
        remote: cli.remote,
        out: Output {
            format: cli.format,
            quiet: cli.quiet,
        },
        asynchronous: cli.asynchronous,
    };
    match cli.command {
        Command::Vm(c) => vm::run(&ctx, c).await,
        Command::Container(c) => resources::container(&ctx, c).await,
        Command::Template(c) => resources::template(&ctx, c).await,
        Command::Image(c) => resources::image(&ctx, c).await,
        Command::Network(c) => resources::network(&ctx, c).await,
        Command::Volume(c) => resources::volume(&ctx, c).await,
        Command::Pool(c) => resources::pool(&ctx, c).await,
        Command::Job(c) => resources::job(&ctx, c).await,
        Command::Group(c) => resources::group(&ctx, c).await,
        Command::User(c) => resources::user(&ctx, c).await,
        Command::Token(c) => resources::token(&ctx, c).await,
        Command::Remote(c) => remote::run(ctx, c).await,
        Command::Node { cmd } => {
            let c = ctx.client()?;
            let view = output::View {
                cols: &[
                    ("NAME", "name"),
                    ("STATUS", "status"),
                    ("VMS", "vms"),
                    ("CPUS", "resources.host.cpus"),
                    ("FREE MEM MiB", "resources.available.memory_mib"),
                    ("LAST SEEN", "last_seen"),
                ],
                id: "name",
            };
            match cmd {
                NodeCmd::List => {
                    let nodes = c.nodes().await?;
                    let items: Vec<_> = nodes.nodes.iter().map(output::to_value).collect();
                    ctx.out.list(&items, &view);
                }
                NodeCmd::Show { name } => {
                    ctx.out.one(&output::to_value(&c.node(&name).await?), &view)
                }
            }
            Ok(())
        }
        Command::Info => {
            let c = ctx.client()?;
            let mut v = output::to_value(&c.health().await?);
            if let Ok(n) = c.node_resources().await {
                v["resources"] = output::to_value(&n);
            }
            ctx.out.one(
                &v,
                &output::View {
                    cols: &[
                        ("NODE", "node"),
                        ("VERSION", "version"),
                        ("ACCEL", "accel"),
                        ("VMS", "vms"),
                    ],
                    id: "node",
                },
            );
            Ok(())
        }
        Command::Audit {
            actor,
            target,
            outcome,
            limit,
        } => resources::audit(&ctx, actor, target, outcome, limit).await,
        Command::Whoami => {
            let me = ctx.client()?.whoami().await?;
            ctx.out.one(
                &output::to_value(&me),
                &output::View {
                    cols: &[
                        ("CALLER", "caller"),
                        ("ROLE", "role"),
                        ("TRANSPORT", "transport"),
                    ],
                    id: "caller",
                },
            );
            Ok(())
        }
        Command::Events { types, resource } => {
            let types: Vec<&str> = types
                .as_deref()
                .map(|t| t.split(',').collect())
                .unwrap_or_default();
            let mut s = ctx.client()?.events(&types, resource.as_deref()).await?;
            while let Some(ev) = s.next().await {
                println!("{}", serde_json::to_string(&ev?)?);
            }
            Ok(())
        }
        Command::Completion { .. } | Command::Man { .. } => unreachable!("answered above"),
    }
}

/// `libgo.1` to stdout, or every page (`libgo-vm-create.1`, …) into `dir`.
fn man(dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        None => {
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
        }
    }
    Ok(())
}

/// `key=value` pairs as a JSON object: `a.b=1` nests, a value that is JSON
/// (`2`, `true`, `null`, `[1]`) is taken as such, `tags=a,b` is a list.
pub fn assignments(pairs: &[String], lists: &[&str]) -> anyhow::Result<Value> {
    let mut root = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| usage(format!("{p:?} is not KEY=VALUE")))?;
        let value = if lists.contains(&k) {
            Value::Array(
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.into()))
                    .collect(),
            )
        } else {
            serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()))
        };
        let mut map = &mut root;
        let parts: Vec<&str> = k.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            let entry = map
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
            map = entry
                .as_object_mut()
                .ok_or_else(|| usage(format!("{k}: {part} is set twice")))?;
        }
        map.insert(parts[parts.len() - 1].to_owned(), value);
    }
    Ok(Value::Object(root))
}

/// A size in MiB: `512`, `512M`, `2G`, `1T`.
pub fn mib(s: &str) -> Result<u64, String> {
    size(
        s,
        &[
            ("", 1),
            ("m", 1),
            ("mib", 1),
            ("g", 1024),
            ("gib", 1024),
            ("t", 1 << 20),
            ("tib", 1 << 20),
        ],
    )
}

/// A size in GiB: `10`, `10G`, `1T`.
pub fn gib(s: &str) -> Result<u64, String> {
    size(
        s,
        &[("", 1), ("g", 1), ("gib", 1), ("t", 1024), ("tib", 1024)],
    )
}

fn size(s: &str, units: &[(&str, u64)]) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let (_, mult) = units
        .iter()
        .find(|(u, _)| *u == unit)
        .ok_or_else(|| format!("unknown unit in {s:?}"))?;
    n.checked_mul(*mult)
        .ok_or_else(|| format!("too large: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples() {
        fn walk(c: &clap::Command, path: &str) {
            let path = format!("{path} {}", c.get_name());
            if c.get_name() != "help" {
                let help = c
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("Examples:"), "{path} has no examples");
            }
            for s in c.get_subcommands() {
                walk(s, &path);
            }
        }
        walk(&Cli::command(), "");
    }

    #[test]
    fn no_command_shadows_a_global_option() {
        fn walk(c: &clap::Command, globals: &[String]) {
            for a in c.get_arguments() {
                assert!(
                    !globals.contains(&a.get_id().to_string()),
                    "{} redefines --{}",
                    c.get_name(),
                    a.get_id()
                );
            }
            for s in c.get_subcommands() {
                walk(s, globals);
            }
        }
        let root = Cli::command();
        let globals: Vec<String> = root
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(globals.contains(&"format".to_owned()));
        for s in root.get_subcommands() {
            walk(s, &globals);
        }
    }

    #[test]
    fn assignments_nest_and_type_their_values() {
        let v = assignments(
            &[
                "vcpus=2".into(),
                "io_limits.iops=100".into(),
                "tags=a,b".into(),
                "name=x".into(),
            ],
            &["tags"],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"vcpus": 2, "io_limits": {"iops": 100}, "tags": ["a", "b"], "name": "x"})
        );
        assert!(assignments(&["novalue".into()], &[]).is_err());
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(mib("512"), Ok(512));
        assert_eq!(mib("2G"), Ok(2048));
        assert_eq!(gib("10"), Ok(10));
        assert_eq!(gib("1T"), Ok(1024));
        assert!(gib("10M").is_err());
        assert!(mib("x").is_err());
    }
}
