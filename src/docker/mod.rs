//! The container backend: the Docker Engine API on its Unix socket (never
//! the CLI). Connections are made per call, so an engine that restarts is
//! picked up again without restarting the agent; an engine that is not there
//! is `Unavailable` (HTTP 503) for container calls only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use bollard::errors::Error as BollardError;
use bollard::Docker;

/// Label carrying the name of the agent (node) that created a container.
pub const LABEL_AGENT: &str = "io.libgo.agent";
/// Label carrying the libgo id (UUID) of a container.
pub const LABEL_ID: &str = "io.libgo.id";
/// Label carrying the libgo tags, comma-separated.
pub const LABEL_TAGS: &str = "io.libgo.tags";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker engine is not available at {socket}: {reason}")]
    Unavailable { socket: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the Docker engine failed: {0}")]
    Engine(String),
}

/// A handle on the engine's socket.
pub struct DockerBackend {
    socket: PathBuf,
    client: Mutex<Option<Docker>>,
}

impl DockerBackend {
    pub fn new(socket: PathBuf) -> DockerBackend {
        DockerBackend {
            socket,
            client: Mutex::new(None),
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> DockerError {
        DockerError::Unavailable {
            socket: self.socket.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// A client for the engine (API 1.41, which every supported engine speaks).
    pub fn client(&self) -> Result<Docker, DockerError> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if !self.socket.exists() {
            *c = None;
            return Err(self.unavailable("socket missing"));
        }
        if let Some(d) = c.as_ref() {
            return Ok(d.clone());
        }
        let path = self.socket.to_string_lossy().into_owned();
        let d = Docker::connect_with_unix(
            &path,
            120,
            &bollard::ClientVersion {
                major_version: 1,
                minor_version: 41,
            },
        )
        .map_err(|e| self.unavailable(e))?;
        *c = Some(d.clone());
        Ok(d)
    }

    /// Maps an engine error to the agent's kinds: a connection problem is
    /// `Unavailable`, the engine's 404/409/400 keep their meaning.
    pub fn map(&self, what: &str, e: BollardError) -> DockerError {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => match status_code {
                404 => DockerError::NotFound(format!("{what}: {message}")),
                409 => DockerError::Conflict(format!("{what}: {message}")),
                // What the engine keeps for itself (its predefined networks
                // `bridge`, `host`, `none`, `default`): refused by its state.
                403 => DockerError::Conflict(format!("{what}: {message}")),
                // A valid request that meets the engine's state: a name or id
                // prefix that several objects match, an image without a
                // default command, an unpause of what is not paused.
                _ if STATE_CONFLICTS.iter().any(|m| message.contains(m)) => {
                    DockerError::Conflict(format!("{what}: {message}"))
                }
                // A bind mount of a host path that is not there: a missing
                // resource, like a missing image.
                _ if message.contains("bind source path does not exist") => {
                    DockerError::NotFound(format!("{what}: {message}"))
                }
                400 => DockerError::Invalid(format!("{what}: {message}")),
                304 => DockerError::Conflict(format!("{what}: already in that state")),
                _ => DockerError::Engine(format!("{what}: {message}")),
            },
            // A build step or a pull that failed inside the engine.
            BollardError::DockerStreamError { error } => {
                DockerError::Invalid(format!("{what}: {error}"))
            }
            BollardError::SocketNotFoundError(_)
            | BollardError::HyperResponseError { .. }
            | BollardError::IOError { .. }
            | BollardError::RequestTimeoutError => self.unavailable(format!("{what}: {e}")),
            other => {
                let text = other.to_string();
                if text.contains("onnect") || text.contains("broken pipe") {
                    self.unavailable(format!("{what}: {text}"))
                } else {
                    DockerError::Engine(format!("{what}: {text}"))
                }
            }
        }
    }
}

/// Engine refusals that are about the state of what a request names.
const STATE_CONFLICTS: [&str; 5] = [
    "is ambiguous",
    "No command specified",
    // The container's program cannot be run (missing or not executable):
    // a start or a restart meets what the container is, not a bad request.
    "unable to start container process",
    "is not paused",
    "is already paused",
];

/// A stable UUID for a container libgo did not create, from its engine id.
pub fn foreign_id(engine_id: &str) -> uuid::Uuid {
    let hex: String = engine_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    uuid::Uuid::from_bytes(bytes)
}

/// Whether `s` looks like an engine container id (12 to 64 hex digits).
pub fn is_engine_id(s: &str) -> bool {
    (12..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A container, volume or network name as the engine accepts it:
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 255 bytes. Everything that reaches
/// an engine path is checked first: `..`, `/`, `%`, `?` never get there.
pub fn check_name(what: &str, s: &str) -> Result<(), DockerError> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DockerError::Invalid(format!(
            "Invalid {what} {:?}: letters, digits, '_', '.' and '-', starting with a letter or digit.",
            clip(s)
        )))
    }
}

/// An image reference the engine takes in every use: an id (`sha256:` and
/// 64 hex digits), or a name (`check_image_name`). The OpenAPI document's
/// pattern for image references says the same.
pub fn check_image_ref(s: &str) -> Result<(), DockerError> {
    if is_image_id(s) || is_image_name(s) {
        Ok(())
    } else {
        Err(DockerError::Invalid(format!(
            "Invalid image reference {:?}.",
            clip(s)
        )))
    }
}

/// An image name to pull, push, import, build or tag as:
/// `[host[:port]/]path[:tag]`. Path components are runs of 1 to 63
/// lowercase letters and digits joined by single `.`, `_` or `-`; a first
/// component of several that has a `.` or a port is a registry host (labels
/// of lowercase letters, digits and inner `-`); a tag is 1 to 128 of
/// `[A-Za-z0-9_.-]`, not starting with `.` or `-`; at most 200 in all; the
/// name `sha256` is the engine's own.
pub fn check_image_name(s: &str) -> Result<(), DockerError> {
    if is_image_name(s) {
        Ok(())
    } else {
        Err(DockerError::Invalid(format!(
            "Invalid image name {:?}: [host[:port]/]path[:tag], lowercase.",
            clip(s)
        )))
    }
}

fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn is_image_name(s: &str) -> bool {
    // The engine counts 255 for the name with its registry ("docker.io/..."
    // when none is given): 200 leaves room for that.
    if s.is_empty() || s.len() > 200 {
        return false;
    }
    let last = s.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match s[last..].find(':') {
        Some(i) => (&s[..last + i], Some(&s[last + i + 1..])),
        None => (s, None),
    };
    if name == "sha256" {
        return false;
    }
    if let Some(t) = tag {
        let b = t.as_bytes();
        if b.is_empty()
            || b.len() > 128
            || !(b[0].is_ascii_alphanumeric() || b[0] == b'_')
            || !b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        {
            return false;
        }
    }
    let comps: Vec<&str> = name.split('/').collect();
    comps.iter().enumerate().all(|(i, c)| {
        if i == 0 && comps.len() > 1 {
            is_registry_host(c) || runs(c, b"_-", 63)
        } else {
            runs(c, b"._-", 63)
        }
    })
}

/// `host[:port]`: dot-separated labels of lowercase letters and digits with
/// inner `-`, and a port of 1 to 5 digits.
fn is_registry_host(c: &str) -> bool {
    let (host, port) = match c.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && host.split('.').all(|label| runs(label, b"-", usize::MAX))
}

/// Runs of 1 to `max` lowercase letters and digits joined by single `seps`.
fn runs(s: &str, seps: &[u8], max: usize) -> bool {
    s.split(|c: char| c.is_ascii() && seps.contains(&(c as u8)))
        .all(|run| {
            !run.is_empty()
                && run.len() <= max
                && run
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// A client's text shown back in an error, at most 64 characters.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Environment as the engine wants it (`K=V`).
pub fn env_list(env: &HashMap<String, String>) -> Vec<String> {
    let mut v: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_ids_are_stable_uuids() {
        let id = "4f1c2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
        assert_eq!(foreign_id(id), foreign_id(id));
        assert_eq!(
            foreign_id(id).to_string(),
            "4f1c2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7"
        );
        assert!(is_engine_id(&id[..12]));
        assert!(!is_engine_id("web-1"));
    }

    #[test]
    fn image_references_the_engine_takes() {
        let id = format!("sha256:{}", "ab".repeat(32));
        for ok in [
            "busybox",
            "libgo-test/busybox:1",
            "localhost:5000/a/b:v1.0_x",
            "registry.example.com/team/app",
            "a.b_c-d",
            "0e83920ffb3a",
            &id,
        ] {
            assert!(check_image_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "a..b",
            "a/../b",
            "..",
            "a/",
            "/a",
            "a:",
            "a:.x",
            "a:b/c",
            "a@sha256:12",
            &format!("app@{id}"),
            &"a".repeat(64),
            &format!("a/{}", "0".repeat(64)),
            &format!("a:{}", "t".repeat(129)),
            &"a.".repeat(128),
            "a%2fb",
        ] {
            assert!(check_image_ref(bad).is_err(), "{bad}");
        }
        // A port only on the first of several components, a host with a
        // dot never with '_', and the id form is not a name.
        assert!(check_image_ref("a:1/b").is_ok());
        assert!(check_image_ref("a/b:1/c").is_err());
        assert!(check_image_ref("a_b.c/d").is_err());
        assert!(check_image_ref("a_b/c.d").is_ok());
        assert!(check_image_name(&id).is_err());
        assert!(check_image_name("sha256:1").is_err());
        assert!(check_image_name("libgo/app:1").is_ok());
    }

    #[test]
    fn env_is_sorted_k_equals_v() {
        let env: HashMap<String, String> = [
            ("B".to_string(), "2".to_string()),
            ("A".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(env_list(&env), vec!["A=1", "B=2"]);
    }

    #[test]
    fn a_missing_socket_is_unavailable() {
        let b = DockerBackend::new("/nonexistent/docker.sock".into());
        assert!(matches!(b.client(), Err(DockerError::Unavailable { .. })));
    }

    #[test]
    fn a_program_that_cannot_start_is_a_conflict_not_an_engine_failure() {
        let b = DockerBackend::new("/nonexistent/docker.sock".into());
        let restart = BollardError::DockerResponseServerError {
            status_code: 500,
            message: "Cannot restart container 57: failed to create shim task: OCI runtime \
                      create failed: runc create failed: unable to start container process: \
                      exec: \"x\": executable file not found in $PATH"
                .into(),
        };
        assert!(matches!(
            b.map("restart c", restart),
            DockerError::Conflict(_)
        ));
        let other = BollardError::DockerResponseServerError {
            status_code: 500,
            message: "disk full".into(),
        };
        assert!(matches!(b.map("restart c", other), DockerError::Engine(_)));
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn names_and_image_refs_that_could_leave_their_path_are_refused() {
        for ok in ["web", "web_1.a-b", "0abc"] {
            assert!(check_name("volume", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../containers/abc",
            "a/b",
            "a%2fb",
            "a?b",
            "-a",
            ".a",
            "a b",
            "a\0",
        ] {
            assert!(check_name("volume", bad).is_err(), "{bad:?}");
        }
        for ok in [
            "busybox",
            "libgo-test/busybox:1",
            "localhost:5000/a/b:tag",
            &format!("sha256:{}", "0123abcd".repeat(8)),
        ] {
            assert!(check_image_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../containers/abc/kill?",
            "a/../b",
            "/a",
            "a//b",
            "a/./b",
            "a?b",
            "a%2fb",
            "a b",
            "a#b",
        ] {
            assert!(check_image_ref(bad).is_err(), "{bad:?}");
        }
    }
}
