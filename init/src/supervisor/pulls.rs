//! Images pulled from registries. Each pull is a `berth-pull` process (the `registry/` crate,
//! shipped at [`PULLER`]): TLS, HTTP and the registry protocol stay out of PID 1, which only
//! starts the process, reaps it and reads its one-line JSON result. A pull that fails is
//! tried again with a doubling delay; the containers waiting for it stay in the `pulling`
//! state meanwhile, and every other container goes on as if it were not there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_manifest::{Manifest, RegistrySettings};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::event::Event;
use crate::images::PULLED_STORE;

/// Where `berth build` puts the puller.
pub const PULLER: &str = "/usr/lib/berth/pull";
/// Credentials an operator keeps on the data partition (Docker's `config.json` format).
pub const AUTH_FILE: &str = "/var/lib/berth/registry-auth.json";
/// What init writes for berth-pull from the manifest's `[registries]`.
const RUN_DIR: &str = "/run/berth/registries";
/// The first retry of a failed pull, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// A pull under way.
#[derive(Debug)]
struct Running {
    pid: Pid,
    output: OwnedFd,
    started: Instant,
}

/// The most of berth-pull's result line init reads.
const MAX_RESULT: usize = 64 << 10;

/// A pull that failed, waiting to be tried again.
#[derive(Debug, Clone, Copy)]
struct Failed {
    retry_at: Instant,
    next_delay: Duration,
}

/// Where a reference's pull stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullState {
    /// Never asked for this boot.
    NotStarted,
    Running,
    /// Failed; tried again from the instant given.
    RetryAt(Instant),
    /// Pulled this boot.
    Done,
}

/// The outcome of a finished pull.
#[derive(Debug)]
pub struct Finished {
    pub reference: String,
    pub result: Result<(), String>,
}

#[derive(Debug, Default)]
pub struct Pulls {
    running: HashMap<String, Running>,
    failed: HashMap<String, Failed>,
    done: HashSet<String>,
    registries: BTreeMap<String, RegistrySettings>,
    /// The manifest keeps network time (`[time] servers` is not empty).
    network_time: bool,
}

/// The arch berth-pull chooses from an image index: this init's own.
fn arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else {
        "x86_64"
    }
}

impl Pulls {
    pub fn new(manifest: &Manifest) -> Pulls {
        Pulls {
            registries: manifest.registries.clone(),
            network_time: manifest.time.enabled(),
            ..Pulls::default()
        }
    }

    /// Takes an applied manifest's registry and time settings.
    pub fn adopt(&mut self, manifest: &Manifest) {
        self.registries = manifest.registries.clone();
        self.network_time = manifest.time.enabled();
    }

    /// `--wait-for-time` while the clock is only the floor and network time may still come;
    /// berth-pull does the waiting (bounded), never init.
    fn time_args(&self) -> Vec<String> {
        if self.network_time
            && crate::clock_floor::raised()
            && !super::marker_exists(super::TIME_SYNCED_MARKER)
        {
            vec![
                "--wait-for-time".to_string(),
                super::TIME_SYNCED_MARKER.to_string(),
            ]
        } else {
            Vec::new()
        }
    }

    pub fn state(&self, reference: &str) -> PullState {
        if self.running.contains_key(reference) {
            PullState::Running
        } else if let Some(failed) = self.failed.get(reference) {
            PullState::RetryAt(failed.retry_at)
        } else if self.done.contains(reference) {
            PullState::Done
        } else {
            PullState::NotStarted
        }
    }

    /// When a failed pull that some container still waits for (`wanted`) is due again, for
    /// the event loop's timeout; never sooner than `floor`. A retry nobody waits for any more
    /// (its container was removed or stopped) sets no timer, and one that is due but cannot
    /// start yet (no network) is looked at again at `floor`, not at once: either would make
    /// `poll` return immediately on every turn.
    pub fn next_deadline<'a>(
        &self,
        wanted: impl IntoIterator<Item = &'a str>,
        floor: Instant,
    ) -> Option<Instant> {
        wanted
            .into_iter()
            .filter_map(|reference| self.failed.get(reference))
            .map(|f| f.retry_at.max(floor))
            .min()
    }

    /// The registry and time options a pull of `reference` gets.
    pub fn options(&self, reference: &str) -> Result<Vec<String>, String> {
        let mut options = self.registry_args(reference)?;
        options.extend(self.time_args());
        Ok(options)
    }

    /// Starts pulling `reference`; an error is a pull that could not even start.
    pub fn start(&mut self, reference: &str) -> Result<(), String> {
        if self.running.contains_key(reference) {
            return Ok(());
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("create a pipe: {e}"))?;
        // init reads the result once berth-pull has exited, never waiting for more.
        crate::helper_child::set_nonblocking(&read)
            .map_err(|e| format!("make the pipe non-blocking: {e}"))?;
        let mut command = std::process::Command::new(PULLER);
        command
            .args(["--store", PULLED_STORE, "--arch", arch()])
            .args(self.registry_args(reference)?)
            .args(self.time_args())
            .arg(reference)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(write));
        crate::services::start_unblocked(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("start {PULLER}: {e}"))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        Event::new("image-pulling")
            .field("image", reference)
            .field("pid", pid)
            .emit();
        self.running.insert(
            reference.to_string(),
            Running {
                pid,
                output: read,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// berth-pull's flags for the registry `reference` names: plain HTTP, a CA, credentials.
    fn registry_args(&self, reference: &str) -> Result<Vec<String>, String> {
        let mut args = Vec::new();
        let host = berth_manifest::registry_of(reference);
        let settings = host.and_then(|h| self.registries.get(h).map(|s| (h, s)));
        if let Some((host, settings)) = settings {
            if settings.insecure {
                args.extend(["--insecure".to_string(), host.to_string()]);
            }
            std::fs::create_dir_all(RUN_DIR).map_err(|e| format!("create {RUN_DIR}: {e}"))?;
            let file_name = host.replace([':', '/'], "_");
            if let Some(ca) = &settings.ca {
                let path = Path::new(RUN_DIR).join(format!("{file_name}.pem"));
                std::fs::write(&path, ca).map_err(|e| format!("write {}: {e}", path.display()))?;
                args.extend(["--ca".to_string(), path.display().to_string()]);
            }
            if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
                let path = Path::new(RUN_DIR).join(format!("{file_name}.auth.json"));
                write_private(&path, &auth_file(host, user.get_ref(), password))?;
                args.extend(["--auth-file".to_string(), path.display().to_string()]);
                return Ok(args);
            }
        }
        if Path::new(AUTH_FILE).is_file() {
            args.extend(["--auth-file".to_string(), AUTH_FILE.to_string()]);
        }
        Ok(args)
    }

    /// A reaped child: `Some` when it was a pull.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus) -> Option<Finished> {
        let reference = self
            .running
            .iter()
            .find(|(_, r)| r.pid == pid)
            .map(|(reference, _)| reference.clone())?;
        let running = self.running.remove(&reference)?;
        let output = crate::helper_child::read_available(running.output, MAX_RESULT);
        let result = outcome(status, &output);
        match &result {
            Ok(fields) => {
                self.failed.remove(&reference);
                self.done.insert(reference.clone());
                let mut event = Event::new("image-pulled").field("image", &reference);
                for (key, value) in fields {
                    event = event.field(key, value);
                }
                event
                    .field("duration_ms", running.started.elapsed().as_millis())
                    .emit();
            }
            Err(_) => self.record_failure(&reference, Instant::now()),
        }
        Some(Finished {
            reference,
            result: result.map(drop),
        })
    }

    /// How long until a failed pull is tried again.
    pub fn retry_in(&self, reference: &str) -> Duration {
        self.failed.get(reference).map_or(Duration::ZERO, |f| {
            f.retry_at.saturating_duration_since(Instant::now())
        })
    }

    /// A pull that could not even start is tried again later, as a failed one is.
    pub fn failed_to_start(&mut self, reference: &str, now: Instant) {
        self.record_failure(reference, now);
    }

    fn record_failure(&mut self, reference: &str, now: Instant) {
        let delay = self
            .failed
            .get(reference)
            .map_or(FIRST_RETRY, |f| f.next_delay);
        self.failed.insert(
            reference.to_string(),
            Failed {
                retry_at: now + delay,
                next_delay: (delay * 2).min(MAX_RETRY),
            },
        );
    }
}

/// A Docker `config.json` with one registry's credentials.
fn auth_file(host: &str, user: &str, password: &str) -> String {
    let token = berth_control::encode_bytes(format!("{user}:{password}").as_bytes());
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "{{\"auths\":{{\"{}\":{{\"auth\":\"{token}\"}}}}}}\n",
        quote(host)
    )
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// The figures of a successful pull from berth-pull's JSON line, or its error.
fn outcome(status: WaitStatus, output: &str) -> Result<Vec<(&'static str, String)>, String> {
    let line = output.lines().last().unwrap_or_default();
    let value = berth_control::parse_pull_result(line).ok();
    match (status, value) {
        (WaitStatus::Exited(_, 0), Some(result)) if result.ok => Ok(vec![
            ("digest", result.digest.unwrap_or_default()),
            ("layers", result.layers.unwrap_or_default().to_string()),
            ("bytes", result.bytes.unwrap_or_default().to_string()),
            (
                "downloaded",
                result.downloaded.unwrap_or_default().to_string(),
            ),
        ]),
        (_, Some(result)) => Err(result
            .error
            .unwrap_or_else(|| "berth-pull failed without a message".to_string())),
        (status, None) => Err(format!("berth-pull ended with {status:?} and no result")),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_pull_result_line_becomes_event_fields_or_the_error() {
        let pid = Pid::from_raw(9);
        let ok = r#"{"ok":true,"reference":"r","name":"n","digest":"sha256:ab","layers":2,"bytes":10,"downloaded":4}"#;
        let fields = outcome(WaitStatus::Exited(pid, 0), ok).unwrap();
        assert_eq!(
            fields.first().unwrap(),
            &("digest", "sha256:ab".to_string())
        );
        let failed = r#"{"ok":false,"error":"digest mismatch for sha256:ab"}"#;
        assert_eq!(
            outcome(WaitStatus::Exited(pid, 1), failed).unwrap_err(),
            "digest mismatch for sha256:ab"
        );
        assert!(outcome(WaitStatus::Exited(pid, 1), "").is_err());
    }

    #[test]
    fn only_wanted_retries_set_a_timer_and_never_one_in_the_past() {
        let mut pulls = Pulls::default();
        let now = Instant::now();
        pulls.failed_to_start("gone:1", now);
        pulls.failed_to_start("wanted:1", now);
        let floor = now + Duration::from_millis(200);
        // Nobody waits for either: no timer at all.
        assert_eq!(pulls.next_deadline([], floor), None);
        // A wanted retry in the future is its own time.
        let later = pulls.next_deadline(["wanted:1"], now).unwrap();
        assert_eq!(later, now + FIRST_RETRY);
        // One that is already due is looked at again at the floor, not at once.
        let long_after = now + FIRST_RETRY + Duration::from_secs(60);
        assert_eq!(
            pulls.next_deadline(["wanted:1"], long_after),
            Some(long_after)
        );
    }

    #[test]
    fn credentials_become_a_docker_auth_file() {
        assert_eq!(
            auth_file("10.0.2.2:5001", "u", "p"),
            "{\"auths\":{\"10.0.2.2:5001\":{\"auth\":\"dTpw\"}}}\n"
        );
    }
}
