//! `libgo remote …`: the agents this CLI talks to, like incus's remotes.

use std::io::{BufRead, IsTerminal, Write};

use clap::Subcommand;
use serde_json::json;

use super::config::{Remote, LOCAL};
use super::output::View;
use super::{usage, Ctx};
use crate::client::{normalize_fingerprint, probe_fingerprint, Endpoint};

const REMOTE_VIEW: View = View {
    cols: &[
        ("NAME", "name"),
        ("URL", "url"),
        ("TOKEN", "token"),
        ("FINGERPRINT", "fingerprint"),
        ("DEFAULT", "default"),
    ],
    id: "name",
};

#[derive(Debug, Subcommand)]
pub enum RemoteCmd {
    /// Add a remote; an https one's certificate fingerprint is shown and
    /// pinned (asked on a terminal, --accept-certificate otherwise).
    #[command(after_help = "Examples:
  libgo remote add prod https://node1:8443 --token lgo_…
  libgo remote add prod https://node1:8443 --token lgo_… --accept-certificate
  libgo remote add prod https://node1:8443 --fingerprint AB:CD:… --token lgo_…
  LIBGO_PASSWORD=… libgo remote add prod https://node1:8443 --user alice --accept-certificate
  libgo remote add other unix:///run/other-libgo.sock")]
    Add {
        name: String,
        /// `https://host:port`, `unix:///path` or `http://127.0.0.1:port`.
        url: String,
        /// Bearer token (an API token, `lgo_…`).
        #[arg(
            long,
            env = "LIBGO_TOKEN",
            hide_env_values = true,
            conflicts_with = "user"
        )]
        token: Option<String>,
        /// Log in as this user instead (the password from LIBGO_PASSWORD
        /// or stdin); the session is stored and lasts the agent's session
        /// time (8 h by default).
        #[arg(long)]
        user: Option<String>,
        /// Trust the certificate the server shows without asking.
        #[arg(long)]
        accept_certificate: bool,
        /// The fingerprint the server's certificate must have (as its
        /// agent logs it at start); refused if it shows another.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Make it the default remote.
        #[arg(long)]
        default: bool,
    },
    /// List remotes.
    #[command(visible_alias = "ls", after_help = "Examples:\n  libgo remote list")]
    List,
    /// Remove a remote.
    #[command(visible_aliases = ["rm", "delete"], after_help = "Examples:\n  libgo remote remove prod")]
    Remove { name: String },
    /// Make a remote the default.
    #[command(
        visible_alias = "use",
        after_help = "Examples:\n  libgo remote switch prod\n  libgo remote switch local"
    )]
    Switch { name: String },
    /// Show a remote (default: the default one).
    #[command(after_help = "Examples:\n  libgo remote show prod")]
    Show { name: Option<String> },
}

fn ask(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} (y/n) ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

fn row(name: &str, r: &Remote, default: &str) -> serde_json::Value {
    json!({
        "name": name,
        "url": r.url,
        "token": if r.token.is_some() { "yes" } else { "" },
        "fingerprint": r.fingerprint.clone().unwrap_or_default(),
        "default": name == default,
    })
}

pub async fn run(mut ctx: Ctx, cmd: RemoteCmd) -> anyhow::Result<()> {
    match cmd {
        RemoteCmd::Add {
            name,
            url,
            token,
            user,
            accept_certificate,
            fingerprint,
            default,
        } => {
            if name == LOCAL || name.is_empty() || name.contains(':') || name.contains('/') {
                return Err(usage(format!("{name:?} cannot name a remote")));
            }
            if ctx.config.remotes.contains_key(&name) {
                return Err(usage(format!(
                    "a remote named {name:?} exists; remove it first"
                )));
            }
            let endpoint: Endpoint = url.parse()?;
            let mut remote = Remote {
                url: endpoint.to_string(),
                token,
                fingerprint: None,
            };
            if let Endpoint::Https { host, port } = &endpoint {
                let seen = probe_fingerprint(host, *port).await?;
                match fingerprint.as_deref().map(normalize_fingerprint).transpose()? {
                    Some(want) if want != seen => anyhow::bail!(
                        "the certificate of {endpoint} has the fingerprint {seen}, not {want}: refused"
                    ),
                    Some(_) => {}
                    None => {
                        eprintln!("Certificate fingerprint of {endpoint}: {seen}");
                        let ok = if accept_certificate {
                            true
                        } else if std::io::stdin().is_terminal() {
                            ask("Trust this certificate?")?
                        } else {
                            return Err(usage(
                                "not a terminal: check the fingerprint, then pass --accept-certificate or --fingerprint",
                            ));
                        };
                        if !ok {
                            anyhow::bail!("certificate not trusted; remote not added");
                        }
                    }
                }
                remote.fingerprint = Some(seen);
            }
            if let Some(user) = user {
                let password = match std::env::var("LIBGO_PASSWORD") {
                    Ok(p) if !p.is_empty() => p,
                    _ => {
                        eprint!("Password for {user}: ");
                        super::resources::read_password()?
                    }
                };
                let session = remote.client()?.login(&user, &password).await?;
                remote.token = Some(session.token);
            }
            // A remote that does not take the credentials is not kept.
            let client = remote.client()?;
            let me = client.whoami().await?;
            ctx.config.remotes.insert(name.clone(), remote);
            if default {
                ctx.config.default_remote = Some(name.clone());
            }
            ctx.config.save()?;
            ctx.out.say(&format!(
                "Remote {name} added ({endpoint}, as {} with role {}).",
                me.caller,
                me.role.as_str()
            ));
        }
        RemoteCmd::List => {
            let default = ctx.config.default_name().to_owned();
            let rows: Vec<_> = ctx
                .config
                .all()
                .iter()
                .map(|(n, r)| row(n, r, &default))
                .collect();
            ctx.out.list(&rows, &REMOTE_VIEW);
        }
        RemoteCmd::Remove { name } => {
            if ctx.config.remotes.remove(&name).is_none() {
                return Err(usage(format!("no remote named {name:?}")));
            }
            if ctx.config.default_remote.as_deref() == Some(name.as_str()) {
                ctx.config.default_remote = None;
            }
            ctx.config.save()?;
            ctx.out.say(&format!("Remote {name} removed."));
        }
        RemoteCmd::Switch { name } => {
            if ctx.config.remote(&name).is_none() {
                return Err(usage(format!("no remote named {name:?}")));
            }
            ctx.config.default_remote = (name != LOCAL).then(|| name.clone());
            ctx.config.save()?;
            ctx.out.say(&format!("Default remote: {name}."));
        }
        RemoteCmd::Show { name } => {
            let default = ctx.config.default_name().to_owned();
            let name = name.unwrap_or_else(|| default.clone());
            let r = ctx
                .config
                .remote(&name)
                .ok_or_else(|| usage(format!("no remote named {name:?}")))?;
            ctx.out.one(&row(&name, &r, &default), &REMOTE_VIEW);
        }
    }
    Ok(())
}
