//! A testing aid, not a feature: `LIBGO_TEST_FAIL_STEP`, read once when the
//! daemon starts, makes the create (or adoption) of chosen containers fail,
//! or be cancelled, right after one of its steps, so that the integration
//! tests can show each step is undone.
//!
//! Why a knob at all: the engine's own steps are made to fail for real in
//! the tests (a bind source that does not exist fails the engine's create;
//! a command missing from the image or a host port already taken fails its
//! start). What nothing real does on demand is fail *between* steps: a
//! cancellation races the engine calls, and the inspect after a good start
//! (or after an adoption row is written) does not fail when asked to. And the daemon an integration test runs is
//! built without `cfg(test)`, so a test-only hook would not reach it.
//!
//! The value lists rules `NAME=FAULT`, comma-separated; FAULT is one of
//! `fail-after-create`, `fail-after-start`, `cancel-after-create`,
//! `cancel-after-start` (a create) or `fail-after-adopt` (an adoption, which
//! is no job and cannot be cancelled). Only containers with a listed name
//! are touched, so a daemon that inherits the variable by mistake still
//! creates every other container normally; the daemon logs a warning at
//! start whenever rules are set.

use std::collections::HashMap;

/// The environment variable.
pub const ENV: &str = "LIBGO_TEST_FAIL_STEP";

/// The step of a create after which a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// The engine made the container.
    Create,
    /// The engine started it.
    Start,
    /// The adoption row was written.
    Adopt,
}

impl After {
    pub fn as_str(self) -> &'static str {
        match self {
            After::Create => "create",
            After::Start => "start",
            After::Adopt => "adopt",
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
}

/// The rules: container name -> where and how its create goes wrong.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailSteps(HashMap<String, (After, Fault)>);

impl FailSteps {
    /// Parses the variable's value; any bad rule refuses the whole value.
    pub fn parse(s: &str) -> Result<FailSteps, String> {
        let mut rules = HashMap::new();
        for rule in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (name, fault) = rule
                .split_once('=')
                .ok_or_else(|| format!("{rule:?}: expected NAME=FAULT"))?;
            let (name, fault) = (name.trim(), fault.trim());
            if name.is_empty() {
                return Err(format!("{rule:?}: no container name"));
            }
            let what = match fault {
                "fail-after-create" => (After::Create, Fault::Fail),
                "fail-after-start" => (After::Start, Fault::Fail),
                "cancel-after-create" => (After::Create, Fault::Cancel),
                "cancel-after-start" => (After::Start, Fault::Cancel),
                "fail-after-adopt" => (After::Adopt, Fault::Fail),
                other => {
                    return Err(format!(
                        "{rule:?}: unknown fault {other:?} (use fail-after-create, \
                         fail-after-start, cancel-after-create, cancel-after-start \
                         or fail-after-adopt)"
                    ))
                }
            };
            if rules.insert(name.to_owned(), what).is_some() {
                return Err(format!("{name:?} is listed twice"));
            }
        }
        Ok(FailSteps(rules))
    }

    /// The rules of the environment (none when unset or invalid: an
    /// invalid value is logged and ignored rather than failing the daemon).
    pub fn from_env() -> FailSteps {
        let Ok(value) = std::env::var(ENV) else {
            return FailSteps::default();
        };
        match FailSteps::parse(&value) {
            Ok(rules) => {
                if !rules.0.is_empty() {
                    tracing::warn!(
                        rules = %value,
                        "{ENV} is set: these container creates fail on purpose (a testing aid)"
                    );
                }
                rules
            }
            Err(e) => {
                tracing::error!("{ENV} ignored: {e}");
                FailSteps::default()
            }
        }
    }

    /// The fault to inject into the operation on `name` right after `step`.
    pub fn at(&self, name: &str, step: After) -> Option<Fault> {
        self.0
            .get(name)
            .filter(|(after, _)| *after == step)
            .map(|(_, fault)| *fault)
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
    fn a_bad_rule_refuses_the_whole_value() {
        for bad in [
            "a",
            "=fail-after-create",
            "a=fail-after-stop",
            "a=cancel-after-adopt",
            "a=fail-after-create,a=cancel-after-start",
            "a=fail-after-create,b",
        ] {
            assert!(FailSteps::parse(bad).is_err(), "{bad}");
        }
    }
}
