//! Every rule of a VM's life in one place: which actions a status allows
//! (`plan`), which status each event leads to (`next`, the transition
//! table every status write goes through), what a restart of the daemon
//! makes of a status it finds (`recover`), and the outcome of an action.

use crate::model::VmStatus;

/// A power action or delete, as the lifecycle rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Start,
    Stop,
    Shutdown,
    Poweroff,
    Reboot,
    Reset,
    Pause,
    Resume,
    Delete,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Start,
        Action::Stop,
        Action::Shutdown,
        Action::Poweroff,
        Action::Reboot,
        Action::Reset,
        Action::Pause,
        Action::Resume,
        Action::Delete,
    ];

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s && *a != Action::Delete)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Shutdown => "shutdown",
            Action::Poweroff => "poweroff",
            Action::Reboot => "reboot",
            Action::Reset => "reset",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Delete => "delete",
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The action did what it names.
    Done(Action),
    /// Nothing to do: the VM already was in the status the action leads to.
    AlreadyThere(VmStatus),
    /// A stop of a VM whose QEMU was gone: acknowledged, now stopped.
    Acknowledged,
    /// A shutdown of a VM without a process: nothing to do.
    NoProcess,
    /// The guest ignored the power button for `after_secs`: a stop forced
    /// it off, a reboot reset it.
    Forced { action: Action, after_secs: u64 },
}

/// What to do with an action in a given status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Do the work.
    Proceed,
    /// Already there: answer with this outcome, do nothing.
    Skip(Outcome),
    /// Not possible in this status.
    Refuse(String),
}

/// Which actions each status allows.
pub fn plan(action: Action, status: VmStatus) -> Plan {
    use Action as A;
    use VmStatus as S;
    let busy = |s: S| Plan::Refuse(format!("VM is {}; try again when it settles", s.as_str()));
    let already = |s: S| Plan::Skip(Outcome::AlreadyThere(s));
    match (action, status) {
        (_, s @ (S::Creating | S::Starting | S::Stopping | S::Rebooting | S::Deleting)) => busy(s),
        (A::Delete, _) => Plan::Proceed,
        (A::Start, S::Running) => already(S::Running),
        (A::Start, S::Paused) => Plan::Refuse("VM is paused; resume it instead.".into()),
        (A::Start, S::Stopped | S::Crashed | S::Error) => Plan::Proceed,
        (A::Stop | A::Shutdown | A::Poweroff, S::Stopped) => already(S::Stopped),
        // A crashed or failed VM has no process: stopping acknowledges it.
        (A::Stop | A::Poweroff, S::Crashed | S::Error) => Plan::Proceed,
        (A::Shutdown, S::Crashed | S::Error) => Plan::Skip(Outcome::NoProcess),
        (A::Stop | A::Shutdown | A::Poweroff, S::Running | S::Paused) => Plan::Proceed,
        (A::Reboot, S::Running) => Plan::Proceed,
        (A::Reboot, _) => Plan::Refuse("VM is not running, cannot reboot.".into()),
        (A::Reset, S::Running | S::Paused) => Plan::Proceed,
        (A::Reset, _) => Plan::Refuse("VM is not running, cannot reset.".into()),
        (A::Pause, S::Paused) => already(S::Paused),
        (A::Pause, S::Running) => Plan::Proceed,
        (A::Pause, _) => Plan::Refuse("VM is not running, cannot pause.".into()),
        (A::Resume, S::Running) => already(S::Running),
        (A::Resume, S::Paused) => Plan::Proceed,
        (A::Resume, _) => Plan::Refuse("VM is not paused, cannot resume.".into()),
    }
}

/// What happens to a VM; each event leads to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmEvent {
    /// Its disk and row exist: the create is done.
    Created,
    /// A start began: QEMU is being launched, paused.
    Start,
    /// The guest runs (after a start, a resume or a reboot).
    Run,
    /// A start failed before the guest ran; the VM goes back to stopped.
    StartFailed,
    /// A start of a crashed VM failed: it stays crashed.
    StartFailedAgain,
    /// The guest was paused (by a call or by QEMU).
    Pause,
    /// A stop or power-off began.
    Stop,
    /// A graceful stop gave up (timeout, cancel): the guest still runs.
    StopAbandoned,
    /// QEMU exited as asked, or the guest powered itself off.
    Exited,
    /// A stop of a VM without a process: acknowledged.
    Acknowledge,
    /// A reboot began.
    Reboot,
    /// QEMU exited unasked.
    Crash,
    /// The monitor is gone but QEMU is not, or a restart found QEMU deaf.
    Fail,
    /// A delete began.
    Delete,
    /// A restart of the daemon found QEMU running the guest.
    AdoptRunning,
    /// A restart of the daemon found QEMU with the guest paused.
    AdoptPaused,
    /// A VM moved here live (`POST /migrations/{id}/complete`): its guest,
    /// received while the VM was still `creating` (and unlisted), runs.
    /// A VM moved here cold is `Created` like any other.
    MigratedIn,
}

impl VmEvent {
    pub const ALL: [VmEvent; 17] = [
        VmEvent::Created,
        VmEvent::Start,
        VmEvent::Run,
        VmEvent::StartFailed,
        VmEvent::StartFailedAgain,
        VmEvent::Pause,
        VmEvent::Stop,
        VmEvent::StopAbandoned,
        VmEvent::Exited,
        VmEvent::Acknowledge,
        VmEvent::Reboot,
        VmEvent::Crash,
        VmEvent::Fail,
        VmEvent::Delete,
        VmEvent::AdoptRunning,
        VmEvent::AdoptPaused,
        VmEvent::MigratedIn,
    ];
}

/// An event that the current status does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VM is {}: {event:?} is not possible now", from.as_str())]
pub struct InvalidTransition {
    pub from: VmStatus,
    pub event: VmEvent,
}

/// The transition table: the status `event` leads to from `from`.
pub fn next(from: VmStatus, event: VmEvent) -> Result<VmStatus, InvalidTransition> {
    use VmEvent as E;
    use VmStatus as S;
    let to = match (event, from) {
        (E::Created, S::Creating) => S::Stopped,
        (E::MigratedIn, S::Creating) => S::Running,
        (E::Start, S::Stopped | S::Crashed | S::Error) => S::Starting,
        (E::Run, S::Starting | S::Paused | S::Rebooting | S::Stopping | S::Running) => S::Running,
        (E::StartFailed, S::Starting) => S::Stopped,
        (E::StartFailedAgain, S::Starting) => S::Crashed,
        (E::Pause, S::Running | S::Paused) => S::Paused,
        (E::Stop, S::Running | S::Paused | S::Rebooting | S::Stopping | S::Error) => S::Stopping,
        (E::StopAbandoned, S::Stopping) => S::Running,
        (
            E::Exited,
            S::Starting | S::Running | S::Paused | S::Stopping | S::Rebooting | S::Stopped,
        ) => S::Stopped,
        (E::Acknowledge, S::Crashed | S::Error | S::Stopped) => S::Stopped,
        (E::Reboot, S::Running) => S::Rebooting,
        (E::Crash, S::Starting | S::Running | S::Paused | S::Stopping | S::Rebooting) => S::Crashed,
        (E::Crash, S::Crashed | S::Error) => S::Crashed,
        (E::Fail, s) if s != S::Creating && s != S::Deleting => S::Error,
        (E::Delete, s) if s != S::Creating => S::Deleting,
        (E::AdoptRunning, s) if s != S::Creating && s != S::Deleting => S::Running,
        (E::AdoptPaused, s) if s != S::Creating && s != S::Deleting => S::Paused,
        _ => return Err(InvalidTransition { from, event }),
    };
    Ok(to)
}

/// The name of the event published for a status change, if any.
pub fn event_name(from: VmStatus, to: VmStatus) -> Option<&'static str> {
    use VmStatus as S;
    Some(match (from, to) {
        (_, S::Starting) => "vm.starting",
        (S::Paused, S::Running) => "vm.resumed",
        (S::Rebooting, S::Running) => "vm.rebooted",
        (_, S::Running) => "vm.started",
        (_, S::Stopping) => "vm.stopping",
        (S::Creating, S::Stopped) => "vm.created",
        (_, S::Stopped) => "vm.stopped",
        (_, S::Paused) => "vm.paused",
        (_, S::Rebooting) => "vm.rebooting",
        (_, S::Crashed) => "vm.crashed",
        (_, S::Error) => "vm.error",
        (_, S::Deleting) => "vm.deleting",
        (_, S::Creating) => return None,
    })
}

/// What a restart of the daemon does with a VM it finds in a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Finish what was asked: remove the VM (a create never reported done,
    /// or a delete that was asked for).
    Remove,
    /// QEMU runs: re-adopt it; its own run state says running or paused.
    Adopt,
    /// QEMU runs but the guest never ran (a start cut short while QEMU was
    /// still paused before its first instruction): kill it, then `event`.
    Discard(VmEvent),
    /// No QEMU: apply this event (with a reason), or nothing.
    Settle(Option<VmEvent>),
}

/// The recovery rule for each status, with or without a live QEMU
/// (`never_ran`: QEMU is alive but still in its pre-launch pause).
pub fn recover(status: VmStatus, qemu_alive: bool, never_ran: bool) -> Recovery {
    use VmStatus as S;
    match (status, qemu_alive) {
        (S::Creating | S::Deleting, _) => Recovery::Remove,
        // A start cut short: its job failed, the guest never ran.
        (S::Starting, true) if never_ran => Recovery::Discard(VmEvent::StartFailed),
        (S::Starting, false) => Recovery::Settle(Some(VmEvent::StartFailed)),
        (_, true) => Recovery::Adopt,
        // A stop or power-off was asked for and QEMU is gone: it stopped.
        (S::Stopping, false) => Recovery::Settle(Some(VmEvent::Exited)),
        // The guest was running (or rebooting) and QEMU went away unasked.
        (S::Running | S::Paused | S::Rebooting, false) => Recovery::Settle(Some(VmEvent::Crash)),
        (S::Stopped | S::Crashed | S::Error, false) => Recovery::Settle(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUSES: [VmStatus; 10] = [
        VmStatus::Creating,
        VmStatus::Stopped,
        VmStatus::Starting,
        VmStatus::Running,
        VmStatus::Paused,
        VmStatus::Stopping,
        VmStatus::Rebooting,
        VmStatus::Deleting,
        VmStatus::Crashed,
        VmStatus::Error,
    ];

    #[test]
    fn lifecycle_rules() {
        use Action as A;
        use VmStatus as S;
        assert_eq!(plan(A::Start, S::Stopped), Plan::Proceed);
        assert_eq!(
            plan(A::Start, S::Running),
            Plan::Skip(Outcome::AlreadyThere(S::Running))
        );
        assert!(matches!(plan(A::Stop, S::Stopped), Plan::Skip(_)));
        assert!(matches!(plan(A::Pause, S::Paused), Plan::Skip(_)));
        assert!(matches!(plan(A::Resume, S::Running), Plan::Skip(_)));
        assert_eq!(
            plan(A::Reboot, S::Stopped),
            Plan::Refuse("VM is not running, cannot reboot.".into())
        );
        assert!(matches!(plan(A::Start, S::Stopping), Plan::Refuse(_)));
        assert_eq!(plan(A::Delete, S::Running), Plan::Proceed);
        assert_eq!(plan(A::Stop, S::Crashed), Plan::Proceed);
        assert!(matches!(plan(A::Reset, S::Stopped), Plan::Refuse(_)));
        assert!(matches!(plan(A::Delete, S::Deleting), Plan::Refuse(_)));
        assert_eq!(Action::parse("delete"), None);
        assert_eq!(Action::parse("reboot"), Some(A::Reboot));
    }

    /// Walks every (status, event) pair against the expected table.
    #[test]
    fn every_status_event_pair() {
        use VmEvent as E;
        use VmStatus as S;
        let expected = |s: S, e: E| -> Option<S> {
            let settled = !matches!(s, S::Creating | S::Deleting);
            match e {
                E::Created => (s == S::Creating).then_some(S::Stopped),
                E::Start => matches!(s, S::Stopped | S::Crashed | S::Error).then_some(S::Starting),
                E::Run => matches!(
                    s,
                    S::Starting | S::Paused | S::Rebooting | S::Stopping | S::Running
                )
                .then_some(S::Running),
                E::StartFailed => (s == S::Starting).then_some(S::Stopped),
                E::StartFailedAgain => (s == S::Starting).then_some(S::Crashed),
                E::Pause => matches!(s, S::Running | S::Paused).then_some(S::Paused),
                E::Stop => matches!(
                    s,
                    S::Running | S::Paused | S::Rebooting | S::Stopping | S::Error
                )
                .then_some(S::Stopping),
                E::StopAbandoned => (s == S::Stopping).then_some(S::Running),
                E::Exited => (s.has_process() || s == S::Stopped).then_some(S::Stopped),
                E::Acknowledge => {
                    matches!(s, S::Crashed | S::Error | S::Stopped).then_some(S::Stopped)
                }
                E::Reboot => (s == S::Running).then_some(S::Rebooting),
                E::Crash => {
                    (s.has_process() || matches!(s, S::Crashed | S::Error)).then_some(S::Crashed)
                }
                E::Fail => settled.then_some(S::Error),
                E::Delete => (s != S::Creating).then_some(S::Deleting),
                E::AdoptRunning => settled.then_some(S::Running),
                E::AdoptPaused => settled.then_some(S::Paused),
                E::MigratedIn => (s == S::Creating).then_some(S::Running),
            }
        };
        let mut pairs = 0;
        for s in STATUSES {
            for e in VmEvent::ALL {
                pairs += 1;
                assert_eq!(next(s, e).ok(), expected(s, e), "{s:?} + {e:?}");
                if let Err(err) = next(s, e) {
                    assert_eq!((err.from, err.event), (s, e));
                }
            }
        }
        assert_eq!(pairs, 170);
    }

    /// A proceeding action never starts from a status whose first event is
    /// refused by the table.
    #[test]
    fn plans_agree_with_the_table() {
        for s in STATUSES {
            for a in Action::ALL {
                if plan(a, s) != Plan::Proceed {
                    continue;
                }
                let first = match a {
                    Action::Start => VmEvent::Start,
                    Action::Stop | Action::Poweroff if !s.has_process() => VmEvent::Acknowledge,
                    Action::Stop | Action::Shutdown | Action::Poweroff => VmEvent::Stop,
                    Action::Reboot => VmEvent::Reboot,
                    Action::Reset | Action::Resume => VmEvent::Run,
                    Action::Pause => VmEvent::Pause,
                    Action::Delete => VmEvent::Delete,
                };
                assert!(next(s, first).is_ok(), "{a:?} from {s:?}");
            }
        }
    }

    #[test]
    fn recovery_of_every_status() {
        use Recovery as R;
        use VmStatus as S;
        for s in STATUSES {
            for alive in [false, true] {
                for never_ran in [false, true] {
                    let r = recover(s, alive, never_ran && alive);
                    // Whatever the rule, its event is valid from the status.
                    if let R::Settle(Some(e)) | R::Discard(e) = r {
                        assert!(next(s, e).is_ok(), "{s:?} {r:?}");
                    }
                }
            }
        }
        // The case seen under load: a stop in flight, QEMU gone -> stopped.
        assert_eq!(
            recover(S::Stopping, false, false),
            R::Settle(Some(VmEvent::Exited))
        );
        assert_eq!(recover(S::Stopping, true, false), R::Adopt);
        assert_eq!(
            recover(S::Starting, true, true),
            R::Discard(VmEvent::StartFailed)
        );
        assert_eq!(recover(S::Starting, true, false), R::Adopt);
        assert_eq!(
            recover(S::Starting, false, false),
            R::Settle(Some(VmEvent::StartFailed))
        );
        assert_eq!(recover(S::Rebooting, true, false), R::Adopt);
        assert_eq!(
            recover(S::Rebooting, false, false),
            R::Settle(Some(VmEvent::Crash))
        );
        assert_eq!(
            recover(S::Running, false, false),
            R::Settle(Some(VmEvent::Crash))
        );
        assert_eq!(recover(S::Deleting, true, false), R::Remove);
        assert_eq!(recover(S::Creating, false, false), R::Remove);
        assert_eq!(recover(S::Stopped, false, false), R::Settle(None));
    }
}
