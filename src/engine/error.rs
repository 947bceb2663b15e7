//! The engine's one error type. `kind()` is all the API layer needs to pick
//! a status code; the message is shown to the client as is, and a failed
//! host step keeps its cause (`source`) so logs show the whole chain.

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    NotFound,
    Conflict,
    Capacity,
    Unavailable,
    Forbidden,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The named resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The action does not fit the resource's current state.
    #[error("{0}")]
    Conflict(String),
    /// Another operation holds the resource.
    #[error("{what} is busy: job {job_id} ({job_type}) is running")]
    Busy {
        what: String,
        job_id: Uuid,
        job_type: String,
    },
    /// The host cannot hold it: `shortfall` says which resource and by
    /// how much (admission control, `engine::capacity`).
    #[error("{message}")]
    Capacity {
        message: String,
        shortfall: Option<Shortfall>,
    },
    /// A backend (QEMU, KVM) is missing.
    #[error("{0}")]
    Unavailable(String),
    /// The caller may not do this to this resource.
    #[error("{0}")]
    Forbidden(String),
    /// The job was cancelled; what it did was undone.
    #[error("{0}")]
    Cancelled(String),
    /// A step on the host failed: `step` names it, `source` is why.
    #[error("{step}")]
    Internal {
        step: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Invalid(_) => ErrorKind::Invalid,
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Conflict(_) | EngineError::Busy { .. } | EngineError::Cancelled(_) => {
                ErrorKind::Conflict
            }
            EngineError::Capacity { .. } => ErrorKind::Capacity,
            EngineError::Unavailable(_) => ErrorKind::Unavailable,
            EngineError::Forbidden(_) => ErrorKind::Forbidden,
            EngineError::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// A host step that failed because of `err`.
    pub fn internal(
        step: impl Into<String>,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> EngineError {
        EngineError::Internal {
            step: step.into(),
            source: Some(Box::new(err)),
        }
    }

    /// A host step that failed, with no underlying error to carry.
    pub fn failed(step: impl Into<String>) -> EngineError {
        EngineError::Internal {
            step: step.into(),
            source: None,
        }
    }
}

/// Any error, as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error and every cause under it: `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl From<crate::jobs::CancelError> for EngineError {
    fn from(e: crate::jobs::CancelError) -> Self {
        match e {
            crate::jobs::CancelError::NotFound(_) => EngineError::NotFound(e.to_string()),
            crate::jobs::CancelError::Finished(..) => EngineError::Conflict(e.to_string()),
            crate::jobs::CancelError::Store(s) => s.into(),
        }
    }
}

impl From<crate::store::StoreError> for EngineError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::NameTaken(name) => {
                EngineError::Conflict(format!("name already in use: {name}"))
            }
            other => EngineError::internal("state database", other),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A resource admission control counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Memory,
    Vcpus,
    Disk,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Vcpus => "vcpus",
            Resource::Disk => "disk",
        }
    }

    /// The unit of `limit`, `requested` and `available`.
    pub fn unit(self) -> &'static str {
        match self {
            Resource::Memory => "MiB",
            Resource::Vcpus => "vcpus",
            Resource::Disk => "bytes",
        }
    }
}

/// Why a request does not fit: what it asked, the limit, and what of the
/// limit is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    pub resource: Resource,
    pub limit: u64,
    pub requested: u64,
    pub available: u64,
}

impl Shortfall {
    /// The 409 for `what` ("starting VM web-1").
    pub fn refuse(self, what: &str) -> EngineError {
        let u = self.resource.unit();
        let message = match self.resource {
            Resource::Disk => format!(
                "Insufficient capacity: {what} needs {} bytes of disk; the storage holding VM disks has {} bytes free for it.",
                self.requested, self.available
            ),
            r => format!(
                "Insufficient capacity: {what} needs {} {u} of {}; {} of the host's limit of {} {u} are free.",
                self.requested,
                r.as_str(),
                self.available,
                self.limit
            ),
        };
        EngineError::Capacity {
            message,
            shortfall: Some(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_keeps_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = EngineError::internal("creating the VM directory", io);
        assert_eq!(e.to_string(), "creating the VM directory");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(chain(&e), "creating the VM directory: denied");
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(chain(&EngineError::failed("x")), "x");
    }
}
