//! The engine's one error type. `kind()` is all the API layer needs to pick
//! a status code; the message is shown to the client as is.

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
    /// The host cannot hold it.
    #[error("{0}")]
    Capacity(String),
    /// A backend (QEMU, KVM) is missing.
    #[error("{0}")]
    Unavailable(String),
    /// The caller may not do this to this resource.
    #[error("{0}")]
    Forbidden(String),
    /// The job was cancelled; what it did was undone.
    #[error("{0}")]
    Cancelled(String),
    /// A step on the host failed; the message names the step.
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Invalid(_) => ErrorKind::Invalid,
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Conflict(_) | EngineError::Busy { .. } | EngineError::Cancelled(_) => {
                ErrorKind::Conflict
            }
            EngineError::Capacity(_) => ErrorKind::Capacity,
            EngineError::Unavailable(_) => ErrorKind::Unavailable,
            EngineError::Forbidden(_) => ErrorKind::Forbidden,
            EngineError::Internal(_) => ErrorKind::Internal,
        }
    }

    pub fn internal(step: &str, err: impl std::fmt::Display) -> EngineError {
        EngineError::Internal(format!("{step}: {err}"))
    }
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
            other => EngineError::Internal(format!("state database: {other}")),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
