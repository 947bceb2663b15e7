//! An undo stack: each step that changes the host pushes its undo; if the
//! operation fails (or panics, or its future is dropped) before `disarm`,
//! the undos run in reverse order, so a failed step leaves nothing behind.

type Undo = Box<dyn FnOnce() + Send>;

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
        self.steps.push((what, Box::new(undo)));
    }

    /// The operation succeeded: keep everything.
    pub fn disarm(mut self) {
        self.steps.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        while let Some((what, undo)) = self.steps.pop() {
            tracing::debug!(step = what, "rolling back");
            undo();
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
}
