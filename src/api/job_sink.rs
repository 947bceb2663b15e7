//! How the idempotency layer learns which job a request started: the
//! layer sets a sink for the request, the answer helpers offer it the job.

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::sync::lock;

/// Told the id of the first job a request starts.
pub struct JobSink {
    seen: Mutex<bool>,
    record: Box<dyn Fn(Uuid) + Send + Sync>,
}

impl JobSink {
    pub fn new(record: impl Fn(Uuid) + Send + Sync + 'static) -> Arc<JobSink> {
        Arc::new(JobSink {
            seen: Mutex::new(false),
            record: Box::new(record),
        })
    }

    pub fn offer(&self, id: Uuid) {
        let mut seen = lock(&self.seen);
        if !*seen {
            *seen = true;
            (self.record)(id);
        }
    }
}

tokio::task_local! {
    /// Set by the idempotency middleware, so that a retry of a request
    /// whose job still runs can be pointed at that job.
    pub static JOB_SINK: Arc<JobSink>;
}
