//! The CLI's remotes, kept in `config.toml` (mode 0600) in
//! `$LIBGO_CONFIG_DIR`, else `$XDG_CONFIG_HOME/libgo`, else
//! `~/.config/libgo`. The remote `local` is always there: the agent's
//! admin socket.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::client::{Client, Endpoint, DEFAULT_SOCKET};

pub const LOCAL: &str = "local";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// `unix:///path`, `https://host:port` or `http://127.0.0.1:port`.
    pub url: String,
    /// Bearer token (an API token or a login session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The pinned certificate fingerprint of an `https` remote (`AB:CD:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Remote {
    pub fn local() -> Remote {
        Remote {
            url: format!("unix://{DEFAULT_SOCKET}"),
            ..Remote::default()
        }
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        let endpoint: Endpoint = self.url.parse()?;
        let mut c = Client::new(endpoint, self.fingerprint.as_deref())?;
        if let Some(t) = &self.token {
            c = c.with_token(t.clone());
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The remote used when none is named (default `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_remote: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// The directory of `config.toml`.
pub fn dir() -> anyhow::Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("LIBGO_CONFIG_DIR") {
        return Ok(d);
    }
    if let Some(d) = var("XDG_CONFIG_HOME") {
        return Ok(d.join("libgo"));
    }
    match var("HOME") {
        Some(h) => Ok(h.join(".config").join("libgo")),
        None => bail!("no configuration directory: set LIBGO_CONFIG_DIR or HOME"),
    }
}

pub fn path() -> anyhow::Result<PathBuf> {
    Ok(dir()?.join("config.toml"))
}

impl Config {
    pub fn load() -> anyhow::Result<Config> {
        let p = path()?;
        match std::fs::read_to_string(&p) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the file whole (a new file renamed over the old), mode 0600:
    /// it holds tokens.
    pub fn save(&self) -> anyhow::Result<()> {
        let p = path()?;
        let d = p.parent().expect("a file in a directory");
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        let tmp = p.with_extension("toml.tmp");
        let text = toml::to_string_pretty(self)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    /// A remote by name (`local` unless configured otherwise).
    pub fn remote(&self, name: &str) -> Option<Remote> {
        match self.remotes.get(name) {
            Some(r) => Some(r.clone()),
            None if name == LOCAL => Some(Remote::local()),
            None => None,
        }
    }

    pub fn default_name(&self) -> &str {
        self.default_remote.as_deref().unwrap_or(LOCAL)
    }

    /// Every remote, `local` included.
    pub fn all(&self) -> BTreeMap<String, Remote> {
        let mut all = self.remotes.clone();
        all.entry(LOCAL.into()).or_insert_with(Remote::local);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_round_trips_and_local_is_always_there() {
        let mut c = Config::default();
        assert_eq!(c.default_name(), "local");
        assert_eq!(c.remote("local").unwrap().url, "unix:///run/libgo.sock");
        assert!(c.remote("prod").is_none());
        c.remotes.insert(
            "prod".into(),
            Remote {
                url: "https://node1:8443".into(),
                token: Some("lgo_x_y".into()),
                fingerprint: Some("AB:CD".into()),
            },
        );
        c.default_remote = Some("prod".into());
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        assert_eq!(c.all().len(), 2);
        assert!(toml::from_str::<Config>("typo = 1").is_err());
    }
}
