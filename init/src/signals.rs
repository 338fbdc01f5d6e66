//! What PID 1 does with each signal it receives. The signal table of
//! `docs/control-protocol.md` mirrors this one.

use nix::sys::signal::{SigSet, Signal};

use crate::shutdown::ShutdownAction;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// Reap every exited child and orphan.
    Reap,
    Shutdown(ShutdownAction),
    /// The host side of the control's serial port connected or went away.
    ControlPort,
    /// Received and logged, nothing else (yet).
    Log,
}

/// The signal table. The kernel sends SIGINT on Ctrl-Alt-Del once init has turned the
/// three-finger salute off (`reboot(LINUX_REBOOT_CMD_CAD_OFF)`), and systemd's habits give the
/// rest: SIGTERM reboots, SIGUSR1 halts, SIGUSR2 and SIGPWR power off.
pub const SIGNAL_TABLE: &[(Signal, SignalAction)] = &[
    (Signal::SIGCHLD, SignalAction::Reap),
    (
        Signal::SIGINT,
        SignalAction::Shutdown(ShutdownAction::Reboot),
    ),
    (
        Signal::SIGTERM,
        SignalAction::Shutdown(ShutdownAction::Reboot),
    ),
    (
        Signal::SIGUSR1,
        SignalAction::Shutdown(ShutdownAction::Halt),
    ),
    (
        Signal::SIGUSR2,
        SignalAction::Shutdown(ShutdownAction::PowerOff),
    ),
    (
        Signal::SIGPWR,
        SignalAction::Shutdown(ShutdownAction::PowerOff),
    ),
    (Signal::SIGHUP, SignalAction::Log),
    (Signal::SIGIO, SignalAction::ControlPort),
];

/// Every signal in the table, to block and read through a signalfd.
pub fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for (signal, _) in SIGNAL_TABLE {
        set.add(*signal);
    }
    set
}

pub fn action_for(signal: Signal) -> SignalAction {
    SIGNAL_TABLE
        .iter()
        .find(|(s, _)| *s == signal)
        .map_or(SignalAction::Log, |(_, action)| *action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_documented_behaviour() {
        use ShutdownAction::*;
        assert_eq!(action_for(Signal::SIGINT), SignalAction::Shutdown(Reboot));
        assert_eq!(action_for(Signal::SIGTERM), SignalAction::Shutdown(Reboot));
        assert_eq!(action_for(Signal::SIGUSR1), SignalAction::Shutdown(Halt));
        assert_eq!(
            action_for(Signal::SIGUSR2),
            SignalAction::Shutdown(PowerOff)
        );
        assert_eq!(action_for(Signal::SIGPWR), SignalAction::Shutdown(PowerOff));
        assert_eq!(action_for(Signal::SIGCHLD), SignalAction::Reap);
        assert!(handled().contains(Signal::SIGPWR));
    }
}
