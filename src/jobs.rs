//! Jobs: a durable record of every mutating operation (who, what, target,
//! outcome). Issue #4 grows this into tasks, progress and cancellation.

use uuid::Uuid;

use crate::model::{Job, JobState};
use crate::store::{Store, StoreError};

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

fn state_str(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// Records a new running job.
pub fn start(
    store: &Store,
    kind: &str,
    target: Option<String>,
    caller: &str,
) -> Result<Job, StoreError> {
    let job = Job {
        id: Uuid::new_v4(),
        kind: kind.to_owned(),
        state: JobState::Running,
        progress_percent: 0,
        target,
        requested_by: caller.to_owned(),
        error: None,
        created_at: now(),
        finished_at: None,
    };
    store.put_job(job.id, state_str(job.state), &job.created_at, &job)?;
    Ok(job)
}

/// Records the outcome of a job.
pub fn finish(store: &Store, job: &mut Job, error: Option<String>) -> Result<(), StoreError> {
    job.state = if error.is_some() {
        JobState::Failed
    } else {
        JobState::Succeeded
    };
    if error.is_none() {
        job.progress_percent = 100;
    }
    job.error = error;
    job.finished_at = Some(now());
    store.put_job(job.id, state_str(job.state), &job.created_at, job)
}

/// After a restart: jobs that were running when the daemon died failed.
pub fn fail_interrupted(store: &Store) -> Result<usize, StoreError> {
    let running: Vec<Job> = store.jobs_in_state(&["running", "queued"])?;
    for mut job in running.iter().cloned() {
        finish(
            store,
            &mut job,
            Some("interrupted: libgod stopped while the job ran".into()),
        )?;
    }
    Ok(running.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mut a = start(&store, "vm.start", Some("/api/v1/vms/x".into()), "uid:0").unwrap();
        let b = start(&store, "vm.stop", None, "uid:0").unwrap();
        finish(&store, &mut a, None).unwrap();
        assert_eq!(fail_interrupted(&store).unwrap(), 1);
        let b: Job = store.get_job(b.id).unwrap().unwrap();
        assert_eq!(b.state, JobState::Failed);
        let a: Job = store.get_job(a.id).unwrap().unwrap();
        assert_eq!((a.state, a.progress_percent), (JobState::Succeeded, 100));
        assert!(now().ends_with('Z'));
    }
}
