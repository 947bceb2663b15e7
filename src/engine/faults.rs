//! A testing aid, not a feature: `LIBGO_TEST_FAIL_STEP`, read once when the
//! daemon starts, makes chosen operations fail, or be cancelled, right after
//! one of their steps, so that the integration tests can show each step is
//! undone. Both backends use it: the create (or adoption) of a container,
//! the start of a VM.
//!
//! Why a knob at all: the steps themselves are made to fail for real in
//! the tests (a bind source that does not exist fails the engine's create;
//! a command missing from the image or a host port already taken fails its
//! start; a VM with more memory than the host has fails inside QEMU). What
//! nothing real does on demand is fail *between* steps: a cancellation
//! races the engine calls or a QEMU that is up in ~100 ms, and the inspect
//! after a good start, the pinning of a VM's vCPUs or the connection of its
//! monitor do not fail when asked to. And the daemon an integration test
//! runs is built without `cfg(test)`, so a test-only hook would not reach it.
//!
//! The value lists rules `NAME=FAULT`, comma-separated; FAULT is one of
//! [`RULES`]: `fail-after-create`, `fail-after-start`, `cancel-after-create`,
//! `cancel-after-start` (a container create), `fail-after-adopt` (a
//! container adoption, which is no job and cannot be cancelled), or
//! `fail-after-cgroup`, `fail-after-spawn`, `fail-after-monitor`,
//! `fail-after-pin`, `cancel-after-spawn` (a VM start), `crash-after-hotplug`
//! (a disk attach: QEMU has the disk, the definition says it is attaching)
//! and `crash-after-snapshot` (a snapshot is in the image, not yet in the
//! tree), where the daemon exits at once as if killed. Only the container
//! or VM with a listed name is touched, and only by the operation its rule
//! names, so a daemon that inherits the variable by mistake still runs
//! everything else normally; the daemon logs a warning at start whenever
//! rules are set.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::core::JobCtx;
use super::error::{EngineError, Result};
use crate::jobs::Jobs;

/// The environment variable.
pub const ENV: &str = "LIBGO_TEST_FAIL_STEP";

/// The step of an operation after which a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Container create: the engine made the container.
    Create,
    /// Container create: the engine started it.
    Start,
    /// Container adoption: the adoption row was written.
    Adopt,
    /// VM start: the VM's cgroup was made, with its I/O limits (a VM
    /// without limits gets none: the step did nothing).
    Cgroup,
    /// VM start: QEMU was spawned (paused, in that cgroup).
    Spawn,
    /// VM start: QEMU's monitor answered and its watcher runs.
    Monitor,
    /// VM start: the vCPU threads were pinned (or nothing was to pin).
    Pin,
    /// Disk attach: the disk is plugged into the running QEMU.
    Hotplug,
    /// VM snapshot: the snapshot is in the disk image.
    Snapshot,
}

impl After {
    pub fn as_str(self) -> &'static str {
        match self {
            After::Create => "create",
            After::Start => "start",
            After::Adopt => "adopt",
            After::Cgroup => "cgroup",
            After::Spawn => "spawn",
            After::Monitor => "monitor",
            After::Pin => "pin",
            After::Hotplug => "hotplug",
            After::Snapshot => "snapshot",
        }
    }
}

/// What happens at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The step after it fails with an error.
    Fail,
    /// The job is cancelled there, as a client's `DELETE /jobs/{id}` would.
    Cancel,
    /// The daemon exits there at once, as if it were killed.
    Crash,
}

/// Every fault a rule may name, and what it does.
pub const RULES: [(&str, After, Fault); 12] = [
    ("fail-after-create", After::Create, Fault::Fail),
    ("fail-after-start", After::Start, Fault::Fail),
    ("cancel-after-create", After::Create, Fault::Cancel),
    ("cancel-after-start", After::Start, Fault::Cancel),
    ("fail-after-adopt", After::Adopt, Fault::Fail),
    ("fail-after-cgroup", After::Cgroup, Fault::Fail),
    ("fail-after-spawn", After::Spawn, Fault::Fail),
    ("fail-after-monitor", After::Monitor, Fault::Fail),
    ("fail-after-pin", After::Pin, Fault::Fail),
    ("cancel-after-spawn", After::Spawn, Fault::Cancel),
    ("crash-after-hotplug", After::Hotplug, Fault::Crash),
    ("crash-after-snapshot", After::Snapshot, Fault::Crash),
];

/// The rules: container or VM name -> where and how its operation goes wrong.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailSteps(HashMap<String, (After, Fault)>);

impl FailSteps {
    /// Parses the variable's value; any bad rule refuses the whole value.
    pub fn parse(s: &str) -> std::result::Result<FailSteps, String> {
        let mut rules = HashMap::new();
        for rule in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (name, fault) = rule
                .split_once('=')
                .ok_or_else(|| format!("{rule:?}: expected NAME=FAULT"))?;
            let (name, fault) = (name.trim(), fault.trim());
            if name.is_empty() {
                return Err(format!("{rule:?}: no container or VM name"));
            }
            let Some((_, after, what)) = RULES.iter().find(|(n, _, _)| *n == fault) else {
                let known: Vec<&str> = RULES.iter().map(|(n, _, _)| *n).collect();
                return Err(format!(
                    "{rule:?}: unknown fault {fault:?} (use one of {})",
                    known.join(", ")
                ));
            };
            if rules.insert(name.to_owned(), (*after, *what)).is_some() {
                return Err(format!("{name:?} is listed twice"));
            }
        }
        Ok(FailSteps(rules))
    }

    /// The rules of the environment (none when unset or invalid: an
    /// invalid value is logged and ignored rather than failing the daemon).
    /// Read and logged once per process, whichever engine asks first.
    pub fn from_env() -> FailSteps {
        static RULES_OF_ENV: OnceLock<FailSteps> = OnceLock::new();
        RULES_OF_ENV
            .get_or_init(|| {
                let Ok(value) = std::env::var(ENV) else {
                    return FailSteps::default();
                };
                match FailSteps::parse(&value) {
                    Ok(rules) => {
                        if !rules.0.is_empty() {
                            tracing::warn!(
                                rules = %value,
                                "{ENV} is set: these container creates and VM starts fail on purpose (a testing aid)"
                            );
                        }
                        rules
                    }
                    Err(e) => {
                        tracing::error!("{ENV} ignored: {e}");
                        FailSteps::default()
                    }
                }
            })
            .clone()
    }

    /// The fault to inject into the operation on `name` right after `step`.
    pub fn at(&self, name: &str, step: After) -> Option<Fault> {
        self.0
            .get(name)
            .filter(|(after, _)| *after == step)
            .map(|(_, fault)| *fault)
    }

    /// Applies the rule of `name` at `step` to the job `ctx`: a cancel goes
    /// through the job registry (the caller's next `ctx.check()` stops the
    /// operation, as after a client's cancel); a failure is returned.
    pub(crate) fn inject(&self, name: &str, step: After, jobs: &Jobs, ctx: &JobCtx) -> Result<()> {
        match self.at(name, step) {
            Some(Fault::Cancel) => {
                jobs.cancel(ctx.handle.id())?;
            }
            Some(Fault::Crash) => {
                tracing::error!(
                    "{ENV}: the daemon exits after the {} step on {name}",
                    step.as_str()
                );
                std::process::exit(137);
            }
            _ => {}
        }
        self.fail_after(name, step)
    }

    /// `inject` for an operation that is no job (nothing to cancel).
    pub(crate) fn fail_after(&self, name: &str, step: After) -> Result<()> {
        match self.at(name, step) {
            Some(Fault::Fail) => Err(EngineError::failed(format!(
                "{ENV}: failure injected after the {} step on {name}",
                step.as_str()
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pick_a_name_and_a_step() {
        let f = FailSteps::parse(" a=fail-after-create, b=cancel-after-start ,c=fail-after-adopt")
            .unwrap();
        assert_eq!(f.at("a", After::Create), Some(Fault::Fail));
        assert_eq!(f.at("a", After::Start), None);
        assert_eq!(f.at("b", After::Start), Some(Fault::Cancel));
        assert_eq!(f.at("b", After::Create), None);
        assert_eq!(f.at("c", After::Adopt), Some(Fault::Fail));
        assert_eq!(f.at("d", After::Create), None, "other names are untouched");
        assert_eq!(FailSteps::parse("").unwrap(), FailSteps::default());
    }

    #[test]
    fn vm_start_rules() {
        let f = FailSteps::parse(
            "v1=fail-after-cgroup,v2=fail-after-spawn,v3=fail-after-monitor,\
             v4=fail-after-pin,v5=cancel-after-spawn",
        )
        .unwrap();
        assert_eq!(f.at("v1", After::Cgroup), Some(Fault::Fail));
        assert_eq!(f.at("v2", After::Spawn), Some(Fault::Fail));
        assert_eq!(f.at("v3", After::Monitor), Some(Fault::Fail));
        assert_eq!(f.at("v4", After::Pin), Some(Fault::Fail));
        assert_eq!(f.at("v5", After::Spawn), Some(Fault::Cancel));
        assert_eq!(f.at("v1", After::Spawn), None);
        assert_eq!(f.at("v5", After::Monitor), None);
        let e = f.fail_after("v4", After::Pin).unwrap_err();
        assert!(e.to_string().contains("after the pin step on v4"), "{e}");
        assert!(
            f.fail_after("v5", After::Spawn).is_ok(),
            "a cancel is no error"
        );
    }

    #[test]
    fn every_rule_name_says_what_it_does() {
        for (name, after, fault) in RULES {
            let verb = match fault {
                Fault::Fail => "fail",
                Fault::Cancel => "cancel",
                Fault::Crash => "crash",
            };
            assert_eq!(name, format!("{verb}-after-{}", after.as_str()));
        }
    }

    #[test]
    fn a_bad_rule_refuses_the_whole_value() {
        for bad in [
            "a",
            "=fail-after-create",
            "a=fail-after-stop",
            "a=cancel-after-adopt",
            "a=cancel-after-pin",
            "a=fail-after-create,a=cancel-after-start",
            "a=fail-after-create,b",
        ] {
            assert!(FailSteps::parse(bad).is_err(), "{bad}");
        }
        let e = FailSteps::parse("a=fail-after-stop").unwrap_err();
        assert!(
            e.contains("fail-after-spawn"),
            "the message lists them: {e}"
        );
    }
}
