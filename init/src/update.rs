//! `berthctl update`, init's side: starts the staging process (this binary as
//! `berth-update stage`, see [`crate::update_helper`]) with the other slot and the accepted
//! keys, relays the bundle to it like `exec -i`'s stdin, and reports how it ended
//! (`update-staged slot= version= verify_ms= write_ms=`, `update-refused slot= error=`). One
//! update at a time.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::control::{exec_io, RelayIo};
use crate::event::Event;
use crate::supervisor::ExecIo;

/// Where the staging process leaves its result for init: `staged VERSION` or
/// `refused REASON`, one line (on /run, which no container sees).
pub const RESULT_FILE: &str = "/run/berth/update-result";
/// `berth-update check`'s answer: `trial`, `rolled-back FROM`, `committed` or `failed ...`.
pub const CHECK_FILE: &str = "/run/berth/update-check";
/// `berth-update bless`'s answer: `blessed`, `not-counted` or `failed ...`.
pub const BLESS_FILE: &str = "/run/berth/update-bless";
/// The most of a result file init reads.
const RESULT_LIMIT: u64 = 4096;

/// The staging process running now, 0 when none.
static STAGING: AtomicI32 = AtomicI32::new(0);
/// The slot it writes, as a byte (`a` or `b`).
static STAGING_SLOT: AtomicI32 = AtomicI32::new(0);

/// Why `update`, `version` or `rollback` was refused before any helper ran; each carries the
/// control protocol's error code (`code`), which berthctl turns into its exit code.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("this host did not boot from a berth disk image (no berth.slot= on its command line): it has no boot slots")]
    NoSlots,
    #[error("this host accepts no update: its manifest's [update] keys is empty")]
    NoKeys,
    #[error("`{}` is not an image reference (as in registry.example.com/berth/host:2.0)", .0.escape_debug())]
    NotAReference(String),
    /// berth-pull's options for the reference's registry (`[registries]`) cannot be written.
    #[error("{0}")]
    PullOptions(String),
    /// The pipes or the terminal to relay through.
    #[error("{0}")]
    Relay(String),
    #[error("cannot pass a pipe to the berth-update helper: {0}")]
    Pipe(#[source] std::io::Error),
    #[error("cannot start berth-update {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl UpdateError {
    pub fn code(&self) -> berth_control::ErrorCode {
        use berth_control::ErrorCode;
        match self {
            UpdateError::Busy(_) => ErrorCode::Busy,
            UpdateError::NoSlots | UpdateError::NoKeys => ErrorCode::Conflict,
            UpdateError::NotAReference(_) => ErrorCode::Invalid,
            UpdateError::PullOptions(_)
            | UpdateError::Relay(_)
            | UpdateError::Pipe(_)
            | UpdateError::Spawn { .. } => ErrorCode::Internal,
        }
    }
}

/// `berthctl update --pull`: the artifact to fetch and berth-pull's registry options for it.
#[derive(Debug)]
pub struct Pull {
    pub reference: String,
    pub options: Vec<String>,
}

/// Refuses what cannot be an image reference before it goes anywhere near berth-pull's
/// command line: it starts with a letter or a digit, so that it is never taken for an
/// option, and holds only the characters references are made of.
pub fn check_reference(reference: &str) -> Result<(), UpdateError> {
    let well_formed = reference.len() <= 512
        && reference
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@".contains(c));
    if well_formed {
        Ok(())
    } else {
        Err(UpdateError::NotAReference(reference.to_string()))
    }
}

/// Starts the staging process for the slot that is not running, the bundle relayed from the
/// client or, with `pull`, fetched by the staging process through berth-pull. Returns its
/// PID, its ends of the pipes (for the caller to close) and init's ends to relay.
pub fn start(
    settings: &berth_manifest::Update,
    pull: Option<Pull>,
) -> Result<(Pid, ExecIo, RelayIo), UpdateError> {
    if STAGING.load(Ordering::Relaxed) != 0 {
        return Err(UpdateError::Busy("another update is being staged"));
    }
    let booted = booted_slot()?;
    if settings.keys.is_empty() {
        return Err(UpdateError::NoKeys);
    }
    let target = crate::boot_entries::other_slot(booted);
    let (process, relay) = exec_io(pull.is_none(), false, None).map_err(UpdateError::Relay)?;
    let _ = std::fs::remove_file(RESULT_FILE);
    let mut command = helper_command(&["stage", "--slot", &target.to_string()]);
    let stdin = if pull.is_some() {
        Stdio::null()
    } else {
        Stdio::from(clone(&process.stdin)?)
    };
    command
        .stdin(stdin)
        .stdout(Stdio::from(clone(&process.stdout)?))
        .stderr(Stdio::from(clone(&process.stderr)?));
    for key in &settings.keys {
        command.arg("--key").arg(key.0.to_string());
    }
    if let Some(pull) = &pull {
        command.arg("--pull").arg(&pull.reference);
        for option in &pull.options {
            command.arg("--pull-option").arg(option);
        }
    }
    let child = command.spawn().map_err(|source| UpdateError::Spawn {
        what: "stage",
        source,
    })?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    STAGING.store(pid.as_raw(), Ordering::Relaxed);
    STAGING_SLOT.store(i32::from(target as u8), Ordering::Relaxed);
    let mut staging = Event::new("update-staging")
        .field("slot", target)
        .field("pid", pid);
    if let Some(pull) = &pull {
        staging = staging.field("pull", &pull.reference);
    }
    staging.emit();
    Ok((pid, process, relay))
}

/// The slot the boot loader started, from `berth.slot=`.
fn booted_slot() -> Result<char, UpdateError> {
    match crate::cmdline::read().0.slot.as_deref() {
        Some("a") => Ok('a'),
        Some("b") => Ok('b'),
        _ => Err(UpdateError::NoSlots),
    }
}

/// `berthctl version` and `berthctl rollback`: `berth-update version` (for the running slot)
/// or `rollback` (to the other), its output relayed to the client as `exec`'s is.
pub fn start_relayed(rollback: bool) -> Result<(Pid, ExecIo, RelayIo), UpdateError> {
    if STAGING.load(Ordering::Relaxed) != 0 {
        return Err(UpdateError::Busy("an update is being staged"));
    }
    let booted = booted_slot()?;
    let (subcommand, slot) = if rollback {
        ("rollback", crate::boot_entries::other_slot(booted))
    } else {
        ("version", booted)
    };
    let (process, relay) = exec_io(false, false, None).map_err(UpdateError::Relay)?;
    let child = helper_command(&[subcommand, "--slot", &slot.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(clone(&process.stdout)?))
        .stderr(Stdio::from(clone(&process.stderr)?))
        .spawn()
        .map_err(|source| UpdateError::Spawn {
            what: subcommand,
            source,
        })?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    if rollback {
        Event::new("update-rollback-asked").field("to", slot).emit();
    }
    Ok((pid, process, relay))
}

/// `berth-update ARGS` as a child of init: its own process group, no environment, and the
/// signals init blocks for its signalfd unblocked.
fn helper_command(args: &[&str]) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("berth-update")
        .args(args)
        .env_clear()
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sigprocmask(2), which is async-signal-safe; it touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            // init blocks the signals it reads through its signalfd; the child must not
            // inherit that, or shutdown's SIGTERM would never end it.
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
    command
}

/// Starts `berth-update SUBCOMMAND --slot SLOT` with no stdio, its answer due in `file`.
fn spawn_helper(subcommand: &str, slot: char, file: &str) -> Result<Pid, String> {
    let _ = std::fs::remove_file(file);
    let child = helper_command(&[subcommand, "--slot", &slot.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start berth-update {subcommand}: {e}"))?;
    Ok(Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)))
}

/// A result file's one line, bounded; empty when there is none.
fn read_result(file: &str) -> String {
    berth_runtime::read_regular_file(
        std::path::Path::new(file),
        RESULT_LIMIT,
        berth_runtime::FollowLinks::No,
    )
    .ok()
    .flatten()
    .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
    .unwrap_or_default()
}

fn clone(fd: &std::os::fd::OwnedFd) -> Result<std::os::fd::OwnedFd, UpdateError> {
    fd.try_clone().map_err(UpdateError::Pipe)
}

/// A child exited: when it is the staging process, says how the update went.
pub fn on_exit(pid: Pid, status: WaitStatus) {
    if STAGING.load(Ordering::Relaxed) != pid.as_raw() {
        return;
    }
    STAGING.store(0, Ordering::Relaxed);
    let slot = u8::try_from(STAGING_SLOT.load(Ordering::Relaxed))
        .map(char::from)
        .unwrap_or('?');
    let result = read_result(RESULT_FILE);
    let exited_ok = matches!(status, WaitStatus::Exited(_, 0));
    match result.split_once(' ') {
        Some(("staged", staged)) if exited_ok => match parse_staged(staged) {
            Some((version, verify_ms, write_ms)) => Event::new("update-staged")
                .field("slot", slot)
                .field("version", version)
                .field("verify_ms", verify_ms)
                .field("write_ms", write_ms)
                .emit(),
            None => Event::new("update-refused")
                .field("slot", slot)
                .field("error", format!("the staging process left `{result}`"))
                .emit(),
        },
        Some(("refused", reason)) => {
            Event::new("update-refused")
                .field("slot", slot)
                .field("error", reason)
                .emit();
        }
        _ => {
            Event::new("update-refused")
                .field("slot", slot)
                .field("error", format!("the staging process ended: {status:?}"))
                .emit();
        }
    }
}

/// The staging process's `staged VERSION VERIFY_MS WRITE_MS`, after `staged `.
fn parse_staged(staged: &str) -> Option<(&str, u64, u64)> {
    let mut words = staged.split_whitespace();
    let version = words
        .next()
        .filter(|v| berth_update::check_version(v).is_ok())?;
    let verify_ms = words.next()?.parse().ok()?;
    let write_ms = words.next()?.parse().ok()?;
    words
        .next()
        .is_none()
        .then_some((version, verify_ms, write_ms))
}

/// Where the boot of a slot stands with respect to its update: a state machine whose
/// effects (starting helpers, emitting events, rebooting) the event loop performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trial {
    /// Not booted from a disk slot, or settled: nothing to do.
    Settled,
    /// `berth-update check` runs.
    Checking { pid: Pid, slot: char },
    /// Booted on trial, running: committed once proven, or rebooted at `deadline`.
    Running { slot: char, deadline: Instant },
    /// `berth-update bless` runs.
    Blessing { pid: Pid, slot: char },
}

/// What the loop must do for a [`Trial`] now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialStep {
    Nothing,
    /// Start `berth-update bless` for the slot.
    Bless(char),
    /// The deadline passed with these still unproven: reboot.
    Reboot {
        waiting_for: Vec<String>,
    },
}

impl Trial {
    /// At boot: checks the slot the boot loader started (`berth.slot=`), if any.
    pub fn start(slot: Option<&str>) -> Trial {
        let slot = match slot {
            Some("a") => 'a',
            Some("b") => 'b',
            _ => return Trial::Settled,
        };
        match spawn_helper("check", slot, CHECK_FILE) {
            Ok(pid) => Trial::Checking { pid, slot },
            Err(err) => {
                log::warn!("update check: {err}");
                Trial::Settled
            }
        }
    }

    /// When the loop must look again.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            Trial::Running { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The step due now, given what the supervisor has not yet proved (`None`: no
    /// supervisor, nothing to prove but the boot itself).
    pub fn step(&self, unproven: Vec<String>, now: Instant) -> TrialStep {
        let Trial::Running { slot, deadline } = *self else {
            return TrialStep::Nothing;
        };
        if unproven.is_empty() {
            TrialStep::Bless(slot)
        } else if now >= deadline {
            TrialStep::Reboot {
                waiting_for: unproven,
            }
        } else {
            TrialStep::Nothing
        }
    }

    /// Performs `step`'s effect that starts a helper; the new state.
    pub fn bless(self, slot: char) -> Trial {
        match spawn_helper("bless", slot, BLESS_FILE) {
            Ok(pid) => Trial::Blessing { pid, slot },
            Err(err) => {
                Event::new("update-commit-failed")
                    .field("slot", slot)
                    .field("error", err)
                    .emit();
                Trial::Settled
            }
        }
    }

    /// A child exited: when it is this trial's helper, the next state. `commit_timeout`
    /// bounds a trial that begins now.
    pub fn on_exit(self, pid: Pid, now: Instant, commit_timeout: Duration) -> Option<Trial> {
        match self {
            Trial::Checking { pid: helper, slot } if helper == pid => {
                let answer = read_result(CHECK_FILE);
                Event::new("update-checked")
                    .field("slot", slot)
                    .field("result", &answer)
                    .emit();
                Some(match answer.split_once(' ').unwrap_or((&answer, "")) {
                    ("trial", _) => {
                        Event::new("update-trial")
                            .field("slot", slot)
                            .field("commit_timeout_ms", commit_timeout.as_millis())
                            .emit();
                        Trial::Running {
                            slot,
                            deadline: now + commit_timeout,
                        }
                    }
                    ("rolled-back", from) => {
                        Event::new("update-rolled-back")
                            .field("from", from)
                            .field("to", slot)
                            .field("reason", "boot-tries-spent")
                            .emit();
                        Trial::Settled
                    }
                    ("committed", _) => Trial::Settled,
                    _ => {
                        log::warn!("update check of slot {slot}: {answer}");
                        Trial::Settled
                    }
                })
            }
            Trial::Blessing { pid: helper, slot } if helper == pid => {
                let answer = read_result(BLESS_FILE);
                if answer == "blessed" {
                    Event::new("update-committed").field("slot", slot).emit();
                } else {
                    Event::new("update-commit-failed")
                        .field("slot", slot)
                        .field("error", answer)
                        .emit();
                }
                Some(Trial::Settled)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulled_update_names_a_reference_never_an_option() {
        for good in [
            "10.0.2.2:5000/berth/host:2",
            "registry.example.com/berth/host@sha256:0a1b",
            "host:2.0-rc_1",
        ] {
            assert!(check_reference(good).is_ok(), "{good}");
        }
        for bad in [
            "--insecure=evil.example",
            "-x",
            "",
            "host:2 --store /",
            "host\n2",
        ] {
            assert!(check_reference(bad).is_err(), "{bad:?}");
        }
        let refused = check_reference("host\n2")
            .err()
            .map(|e| (e.code(), e.to_string()));
        assert_eq!(
            refused,
            Some((
                berth_control::ErrorCode::Invalid,
                "`host\\n2` is not an image reference (as in registry.example.com/berth/host:2.0)"
                    .to_string()
            ))
        );
    }

    #[test]
    fn refusals_carry_the_code_berthctl_exits_by() {
        use berth_control::ErrorCode;
        assert_eq!(UpdateError::Busy("x").code(), ErrorCode::Busy);
        assert_eq!(UpdateError::NoSlots.code(), ErrorCode::Conflict);
        assert_eq!(UpdateError::NoKeys.code(), ErrorCode::Conflict);
        assert_eq!(
            UpdateError::Relay("no pipe".into()).code(),
            ErrorCode::Internal
        );
    }

    #[test]
    fn a_staged_result_carries_version_and_timings() {
        assert_eq!(parse_staged("2.0 812 1450"), Some(("2.0", 812, 1450)));
        assert_eq!(parse_staged("2.0"), None);
        assert_eq!(parse_staged("2.0 1 2 3"), None);
        assert_eq!(parse_staged("bad/version 1 2"), None);
    }

    #[test]
    fn a_trial_is_blessed_once_proven_and_rebooted_past_its_deadline() {
        let now = Instant::now();
        let trial = Trial::Running {
            slot: 'b',
            deadline: now + Duration::from_secs(60),
        };
        assert_eq!(trial.step(vec!["web".into()], now), TrialStep::Nothing);
        assert_eq!(trial.step(Vec::new(), now), TrialStep::Bless('b'));
        assert_eq!(
            trial.step(vec!["web".into()], now + Duration::from_secs(61)),
            TrialStep::Reboot {
                waiting_for: vec!["web".into()]
            }
        );
        assert_eq!(trial.next_deadline(), Some(now + Duration::from_secs(60)));
        assert_eq!(Trial::Settled.step(Vec::new(), now), TrialStep::Nothing);
    }

    #[test]
    fn only_its_own_helper_moves_a_trial() {
        let checking = Trial::Checking {
            pid: Pid::from_raw(4242),
            slot: 'a',
        };
        assert_eq!(
            checking.on_exit(Pid::from_raw(7), Instant::now(), Duration::from_secs(1)),
            None
        );
    }
}
