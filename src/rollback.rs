//! An undo stack: each step that changes the host pushes its undo; if the
//! operation fails (or panics, or its future is dropped) before `disarm`,
//! the undos run in reverse order, so a failed step leaves nothing behind.
//!
//! Most undos are quick and synchronous (remove a file, kill a pid). Some
//! need the runtime (an engine call that removes a container): those are
//! pushed with `push_async`, and the operation's error path awaits
//! `unwind()`, so it ends only once its clean-up has finished. A stack that
//! is merely dropped (a panic, a dropped future) cannot be awaited: it
//! hands the rest of its undos, in order, to a task of their own.

use std::future::Future;
use std::pin::Pin;

type SyncUndo = Box<dyn FnOnce() + Send>;
type AsyncUndo = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Undo {
    Now(SyncUndo),
    Later(AsyncUndo),
}

#[derive(Default)]
pub struct Rollback {
    steps: Vec<(&'static str, Undo)>,
}

impl Rollback {
    pub fn new() -> Rollback {
        Rollback::default()
    }

    /// Registers how to undo the step just done.
    pub fn push(&mut self, what: &'static str, undo: impl FnOnce() + Send + 'static) {
        self.steps.push((what, Undo::Now(Box::new(undo))));
    }

    /// Registers an undo that has to wait on something (an engine call).
    /// The future does nothing until the stack unwinds.
    pub fn push_async(
        &mut self,
        what: &'static str,
        undo: impl Future<Output = ()> + Send + 'static,
    ) {
        self.steps.push((what, Undo::Later(Box::pin(undo))));
    }

    /// The operation succeeded: keep everything.
    pub fn disarm(mut self) {
        self.steps.clear();
    }

    /// The operation failed: undoes every step now, newest first, and
    /// returns once the last undo has finished. Each async undo runs as a
    /// task of its own, so an unwind that is itself abandoned half-way
    /// still finishes the undo in flight (and `Drop` takes the rest).
    pub async fn unwind(mut self) {
        while let Some((what, undo)) = self.steps.pop() {
            tracing::debug!(step = what, "rolling back");
            match undo {
                Undo::Now(f) => f(),
                Undo::Later(f) => {
                    if let Err(e) = tokio::spawn(f).await {
                        tracing::error!(step = what, error = %e, "undo failed");
                    }
                }
            }
        }
    }
}

/// Runs `steps` newest first, awaiting each async one.
async fn run_in_order(mut steps: Vec<(&'static str, Undo)>) {
    while let Some((what, undo)) = steps.pop() {
        tracing::debug!(step = what, "rolling back");
        match undo {
            Undo::Now(f) => f(),
            Undo::Later(f) => f.await,
        }
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        let mut steps = std::mem::take(&mut self.steps);
        if steps.iter().any(|(_, u)| matches!(u, Undo::Later(_))) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // Nobody can wait for a drop: the rest of the stack keeps its
                // order on a task of its own.
                rt.spawn(run_in_order(steps));
                return;
            }
        }
        while let Some((what, undo)) = steps.pop() {
            tracing::debug!(step = what, "rolling back");
            match undo {
                Undo::Now(f) => f(),
                Undo::Later(_) => {
                    tracing::error!(step = what, "no runtime left to undo this step")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn undoes_in_reverse_unless_disarmed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut rb = Rollback::new();
            for i in 0..3 {
                let log = log.clone();
                rb.push("step", move || log.lock().unwrap().push(i));
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut rb = Rollback::new();
        let l = log.clone();
        rb.push("step", move || l.lock().unwrap().push(99));
        rb.disarm();
        assert_eq!(log.lock().unwrap().len(), 3);
    }

    /// A stack of sync and async undos, where each async one yields first
    /// (as an engine call would).
    fn mixed(log: &Arc<Mutex<Vec<u32>>>) -> Rollback {
        let mut rb = Rollback::new();
        for i in 0..4u32 {
            let log = log.clone();
            if i % 2 == 0 {
                rb.push("sync", move || log.lock().unwrap().push(i));
            } else {
                rb.push_async("async", async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    log.lock().unwrap().push(i);
                });
            }
        }
        rb
    }

    #[tokio::test]
    async fn unwind_returns_after_the_last_undo_in_reverse_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        mixed(&log).unwind().await;
        assert_eq!(*log.lock().unwrap(), vec![3, 2, 1, 0]);
    }

    #[tokio::test]
    async fn a_dropped_stack_still_undoes_async_steps_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        drop(mixed(&log));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while log.lock().unwrap().len() < 4 {
            assert!(tokio::time::Instant::now() < deadline, "undos did not run");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(*log.lock().unwrap(), vec![3, 2, 1, 0]);
    }

    #[tokio::test]
    async fn a_disarmed_stack_runs_no_async_undo() {
        let log = Arc::new(Mutex::new(Vec::new()));
        mixed(&log).disarm();
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert!(log.lock().unwrap().is_empty());
    }
}
