//! `berth-pull`: pulls one image into a store, or collects a store's garbage, and says how
//! it went in one JSON line on stdout (progress goes to stderr).
//!
//! Exit codes: 0 success, 1 the pull (or collection) failed, 2 bad arguments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_registry::{
    gc, pull, pull_artifact, usage, Arch, AuthFile, Client, ClientConfig, Event, Reference,
    RegistryError,
};
use serde::Serialize;

const USAGE: &str = "\
usage: berth-pull --store DIR --arch x86_64|aarch64 [--insecure HOST[:PORT]]... [--ca FILE]...
                  [--no-bundled-roots] [--auth-file FILE] [--name NAME]
                  [--wait-for-time FILE] REFERENCE
       berth-pull artifact --media-type TYPE [--max-bytes N] (the pull options) REFERENCE
       berth-pull gc --store DIR [--keep REF...]...
       berth-pull usage --store DIR

  --insecure HOST[:PORT]  speak plain HTTP to this registry (HOST alone: any port)
  --ca FILE               also trust the PEM certificates in FILE
  --no-bundled-roots      trust only the --ca certificates, not Mozilla's built-in roots
  --auth-file FILE        credentials, as Docker's config.json holds them (\"auths\")
  --name NAME             the name to store the image under (default: REFERENCE as given)
  --wait-for-time FILE    first wait (30 s at most) until FILE exists: init passes netd's
                          time-synced marker when the clock is only the image's build time
  --keep REF...           the names gc keeps; every other image and unused blob goes
  artifact                fetch the one layer of --media-type that REFERENCE's manifest lists
                          into the store, named by no image; report its path (--max-bytes:
                          refuse a larger one, default 1 GiB)";

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const MIB: f64 = 1024.0 * 1024.0;

/// The one line on stdout: `{"ok":true,...}` with what the command reports, fields in order.
#[derive(Serialize)]
struct Success<T: Serialize> {
    ok: bool,
    #[serde(flatten)]
    report: T,
}

#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    error: &'a str,
}

#[derive(Debug)]
struct PullArgs {
    store: PathBuf,
    arch: Arch,
    insecure: Vec<String>,
    ca_files: Vec<PathBuf>,
    bundled_roots: bool,
    auth_file: Option<PathBuf>,
    name: Option<String>,
    /// A file whose existence says the clock has been set from the network.
    wait_for_time: Option<PathBuf>,
    reference: String,
}

#[derive(Debug)]
enum Command {
    Help,
    Pull(PullArgs),
    Artifact {
        pull: PullArgs,
        media_type: String,
        max_bytes: u64,
    },
    Gc {
        store: PathBuf,
        keep: Vec<String>,
    },
    Usage {
        store: PathBuf,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(message) => {
            say(&format!("{message}\n{USAGE}"));
            print_line(&failure(&message));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Pull(args) => run_pull(args).map(success),
        Command::Artifact {
            pull,
            media_type,
            max_bytes,
        } => run_artifact(pull, &media_type, max_bytes).map(success),
        Command::Gc { store, keep } => gc(&store, &keep).map(success),
        Command::Usage { store } => usage(&store).map(success),
    };
    match result {
        Ok(line) => {
            print_line(&line);
            ExitCode::SUCCESS
        }
        Err(error) => {
            let message = error.to_string();
            say(&message);
            print_line(&failure(&message));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn success<T: Serialize>(report: T) -> String {
    serialize(&Success { ok: true, report })
}

fn failure(error: &str) -> String {
    serialize(&Failure { ok: false, error })
}

/// Structs of strings, numbers and digests always serialise; should one ever not, the line
/// still says the command failed.
fn serialize(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| {
        format!(r#"{{"ok":false,"error":"cannot write the report as JSON: {error}"}}"#)
    })
}

/// The longest a pull waits for network time before it goes on with the clock it has.
const TIME_WAIT: Duration = Duration::from_secs(30);
const TIME_POLL: Duration = Duration::from_millis(250);

/// Waits until `marker` exists, [`TIME_WAIT`] at most, saying so: a clock at the image's build
/// time may be months behind, and a registry's certificate issued since then would look not
/// yet valid. A clock still unset after the wait is a risk to name, not a reason to give up.
fn wait_for_time(marker: &Path) {
    if marker.exists() {
        return;
    }
    say(&format!(
        "the clock is only the image's build time: waiting up to {} s for network time",
        TIME_WAIT.as_secs()
    ));
    let started = Instant::now();
    while !marker.exists() {
        if started.elapsed() >= TIME_WAIT {
            say(&format!(
                "no network time after {} s: pulling anyway; certificates newer than the image may be refused",
                TIME_WAIT.as_secs()
            ));
            return;
        }
        std::thread::sleep(TIME_POLL);
    }
    say(&format!(
        "network time came after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

/// The reference and a client with the registry options; waits for network time first when
/// asked.
fn client_for(args: &PullArgs) -> Result<(Reference, Client), RegistryError> {
    let reference = Reference::parse(&args.reference)?;
    if let Some(marker) = &args.wait_for_time {
        wait_for_time(marker);
    }
    let auth = match &args.auth_file {
        Some(path) => AuthFile::load(path)?,
        None => AuthFile::default(),
    };
    let client = Client::new(ClientConfig {
        insecure: args.insecure.clone(),
        ca_files: args.ca_files.clone(),
        bundled_roots: args.bundled_roots,
        auth,
        ..ClientConfig::default()
    })?;
    Ok((reference, client))
}

fn run_artifact(
    args: PullArgs,
    media_type: &str,
    max_bytes: u64,
) -> Result<berth_registry::ArtifactReport, RegistryError> {
    let (reference, mut client) = client_for(&args)?;
    say(&format!("artifact {reference} ({media_type})"));
    let mut progress_said: Option<Instant> = None;
    pull_artifact(
        &mut client,
        &args.store,
        &reference,
        args.arch,
        media_type,
        max_bytes,
        &mut |event| print_event(&args.reference, event, &mut progress_said),
    )
}

fn run_pull(args: PullArgs) -> Result<berth_registry::PullReport, RegistryError> {
    let (reference, mut client) = client_for(&args)?;
    let name = args.name.unwrap_or_else(|| args.reference.clone());
    say(&format!("{reference} as {name} for {}", args.arch));
    let mut progress_said: Option<Instant> = None;
    pull(
        &mut client,
        &args.store,
        &reference,
        &name,
        args.arch,
        &mut |event| print_event(&name, event, &mut progress_said),
    )
}

/// A download's progress as an event line, at most once a second: the console is the
/// guest's, and a fast registry would fill it.
const PROGRESS_EVENT_INTERVAL: Duration = Duration::from_secs(1);

fn print_event(image: &str, event: Event, progress_said: &mut Option<Instant>) {
    let line = match event {
        Event::Manifest {
            digest,
            platform,
            layers,
            bytes,
        } => format!(
            "manifest {digest} {platform}, {layers} layers, {}",
            mib(bytes)
        ),
        Event::BlobPresent { digest, size } => format!("present {digest} {}", mib(size)),
        Event::BlobStart {
            digest,
            size,
            offset: 0,
        } => format!("pulling {digest} {}", mib(size)),
        Event::BlobStart {
            digest,
            size,
            offset,
        } => format!("resuming {digest} at {} of {}", mib(offset), mib(size)),
        Event::BlobProgress { digest, done, size } => {
            if progress_said.is_some_and(|at| at.elapsed() < PROGRESS_EVENT_INTERVAL) {
                return;
            }
            *progress_said = Some(Instant::now());
            let line = berth_event::Event::new("image-pull-progress")
                .field("image", image)
                .field("digest", digest)
                .field("done", done)
                .field("size", size)
                .finish();
            let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
            return;
        }
        Event::BlobDone { digest, size } => format!("stored {digest} {}", mib(size)),
        Event::Restart { digest, reason } => format!("restarting {digest} from zero: {reason}"),
        Event::Retry {
            what,
            attempt,
            attempts,
            delay,
            error,
        } => format!(
            "retrying {what} in {:.1} s (try {} of {attempts}): {error}",
            delay.as_secs_f64(),
            attempt + 1
        ),
    };
    say(&line);
}

/// One line on stderr, which is the guest's console: written whole in one call, so that
/// init's own console lines cannot land in the middle of it (`eprintln!` writes its pieces
/// one by one to an unbuffered stderr).
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("berth-pull: {line}\n").as_bytes());
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    // Nothing is left to tell anyone when stdout itself is gone.
    let _ignored = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Splits `--flag=value` into flag and value; other arguments pass as they are.
fn split_flag(arg: &str) -> (&str, Option<&str>) {
    match arg.strip_prefix("--").and_then(|_| arg.split_once('=')) {
        Some((flag, value)) => (flag, Some(value)),
        None => (arg, None),
    }
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("gc") => parse_gc(args.get(1..).unwrap_or_default()),
        Some("usage") => parse_usage(args.get(1..).unwrap_or_default()),
        Some("artifact") => parse_artifact(args.get(1..).unwrap_or_default()),
        _ => parse_pull(args),
    }
}

/// The arguments one at a time, with flag values taken from `--flag=value` or the next one.
struct Args<'a> {
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Args<'a> {
    fn new(args: &'a [String]) -> Args<'a> {
        Args { rest: args.iter() }
    }

    /// The next argument, split into flag and inline value.
    fn next(&mut self) -> Option<(&'a str, Option<&'a str>)> {
        self.rest.next().map(|arg| split_flag(arg))
    }

    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<&'a str, String> {
        match inline {
            Some(value) => Ok(value),
            None => self
                .rest
                .next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value")),
        }
    }

    /// Values after a flag up to the next `--flag`.
    fn values(&mut self, inline: Option<&'a str>) -> Vec<String> {
        let mut values: Vec<String> = inline.map(str::to_string).into_iter().collect();
        while let Some(next) = self.rest.as_slice().first() {
            if next.starts_with("--") {
                break;
            }
            values.push(next.clone());
            self.rest.next();
        }
        values
    }
}

fn parse_pull(args: &[String]) -> Result<Command, String> {
    let mut args = Args::new(args);
    let mut store = None;
    let mut arch = None;
    let mut insecure = Vec::new();
    let mut ca_files = Vec::new();
    let mut bundled_roots = true;
    let mut auth_file = None;
    let mut name = None;
    let mut wait_for_time = None;
    let mut reference = None;
    while let Some((flag, inline)) = args.next() {
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--store" => store = Some(PathBuf::from(args.value(flag, inline)?)),
            "--arch" => {
                let value = args.value(flag, inline)?;
                arch = Some(
                    Arch::parse(value)
                        .ok_or_else(|| format!("--arch `{value}`: expected x86_64 or aarch64"))?,
                );
            }
            "--insecure" => insecure.push(args.value(flag, inline)?.to_string()),
            "--ca" => ca_files.push(PathBuf::from(args.value(flag, inline)?)),
            "--no-bundled-roots" => bundled_roots = false,
            "--auth-file" => auth_file = Some(PathBuf::from(args.value(flag, inline)?)),
            "--name" => name = Some(args.value(flag, inline)?.to_string()),
            "--wait-for-time" => wait_for_time = Some(PathBuf::from(args.value(flag, inline)?)),
            other if other.starts_with('-') => return Err(format!("unknown option `{other}`")),
            positional => {
                if let Some(first) = &reference {
                    return Err(format!(
                        "one REFERENCE only: got `{first}` and `{positional}`"
                    ));
                }
                reference = Some(positional.to_string());
            }
        }
    }
    Ok(Command::Pull(PullArgs {
        store: store.ok_or("--store DIR is required")?,
        arch: arch.ok_or("--arch x86_64|aarch64 is required")?,
        insecure,
        ca_files,
        bundled_roots,
        auth_file,
        name,
        wait_for_time,
        reference: reference.ok_or("REFERENCE is required")?,
    }))
}

/// The largest artifact taken unless `--max-bytes` says: an update bundle is tens of MiB.
const ARTIFACT_MAX_BYTES: u64 = 1 << 30;

fn parse_artifact(args: &[String]) -> Result<Command, String> {
    let mut media_type = None;
    let mut max_bytes = ARTIFACT_MAX_BYTES;
    let mut rest = Vec::new();
    let mut args = Args::new(args);
    while let Some((flag, inline)) = args.next() {
        match flag {
            "--media-type" => media_type = Some(args.value(flag, inline)?.to_string()),
            "--max-bytes" => {
                let value = args.value(flag, inline)?;
                max_bytes = value
                    .parse()
                    .map_err(|_| format!("--max-bytes `{value}`: expected a number of bytes"))?;
            }
            _ => {
                // Given back whole to the pull options' parser.
                rest.push(match inline {
                    Some(value) => format!("{flag}={value}"),
                    None => flag.to_string(),
                });
            }
        }
    }
    match parse_pull(&rest)? {
        Command::Pull(pull) => Ok(Command::Artifact {
            pull,
            media_type: media_type.ok_or("artifact: --media-type TYPE is required")?,
            max_bytes,
        }),
        other => Ok(other),
    }
}

fn parse_gc(args: &[String]) -> Result<Command, String> {
    let mut args = Args::new(args);
    let mut store = None;
    let mut keep = Vec::new();
    while let Some((flag, inline)) = args.next() {
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--store" => store = Some(PathBuf::from(args.value(flag, inline)?)),
            "--keep" => keep.extend(args.values(inline)),
            other => return Err(format!("gc: unexpected argument `{other}`")),
        }
    }
    Ok(Command::Gc {
        store: store.ok_or("gc: --store DIR is required")?,
        keep,
    })
}

fn parse_usage(args: &[String]) -> Result<Command, String> {
    let mut args = Args::new(args);
    let mut store = None;
    while let Some((flag, inline)) = args.next() {
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--store" => store = Some(PathBuf::from(args.value(flag, inline)?)),
            other => return Err(format!("usage: unexpected argument `{other}`")),
        }
    }
    Ok(Command::Usage {
        store: store.ok_or("usage: --store DIR is required")?,
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, String> {
        let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        parse_args(&args)
    }

    #[test]
    fn pull_arguments() {
        let command = parse(
            "--store /s --arch aarch64 --insecure 10.0.2.2:5000 --insecure=localhost \
             --ca /a.pem --no-bundled-roots --auth-file /auth.json --name web 10.0.2.2:5000/web:1",
        )
        .unwrap();
        let Command::Pull(args) = command else {
            panic!("{command:?}")
        };
        assert_eq!(args.store, PathBuf::from("/s"));
        assert_eq!(args.arch, Arch::Aarch64);
        assert_eq!(args.insecure, ["10.0.2.2:5000", "localhost"]);
        assert_eq!(args.ca_files, [PathBuf::from("/a.pem")]);
        assert!(!args.bundled_roots);
        assert_eq!(args.auth_file, Some(PathBuf::from("/auth.json")));
        assert_eq!(args.name.as_deref(), Some("web"));
        assert_eq!(args.reference, "10.0.2.2:5000/web:1");
    }

    #[test]
    fn artifact_arguments() {
        let command = parse(
            "artifact --store /s --media-type application/x --arch x86_64 --max-bytes=100 \
             --insecure 10.0.2.2:5000 10.0.2.2:5000/host:2",
        )
        .unwrap();
        let Command::Artifact {
            pull,
            media_type,
            max_bytes,
        } = command
        else {
            panic!("{command:?}")
        };
        assert_eq!((media_type.as_str(), max_bytes), ("application/x", 100));
        assert_eq!(pull.store, PathBuf::from("/s"));
        assert_eq!(pull.insecure, ["10.0.2.2:5000"]);
        assert_eq!(pull.reference, "10.0.2.2:5000/host:2");
        let missing = parse("artifact --store /s --arch x86_64 r:1").unwrap_err();
        assert!(missing.contains("--media-type"), "{missing}");
    }

    #[test]
    fn gc_and_usage_arguments() {
        let Command::Gc { store, keep } = parse("gc --store /s --keep a b:1 --keep=c").unwrap()
        else {
            panic!()
        };
        assert_eq!(store, PathBuf::from("/s"));
        assert_eq!(keep, ["a", "b:1", "c"]);
        let Command::Gc { keep, .. } = parse("gc --store /s").unwrap() else {
            panic!()
        };
        assert!(keep.is_empty());
        assert!(matches!(
            parse("usage --store /s").unwrap(),
            Command::Usage { .. }
        ));
    }

    #[test]
    fn bad_arguments_say_what_is_missing() {
        let cases = [
            ("--arch x86_64 nginx", "--store DIR is required"),
            ("--store /s nginx", "--arch x86_64|aarch64 is required"),
            ("--store /s --arch x86_64", "REFERENCE is required"),
            ("--store /s --arch mips nginx", "--arch `mips`"),
            ("--store /s --arch x86_64 a b", "one REFERENCE only"),
            (
                "--store /s --arch x86_64 --bogus a",
                "unknown option `--bogus`",
            ),
            ("--store", "--store needs a value"),
            ("gc --keep a", "gc: --store DIR is required"),
            ("gc --store /s extra", "unexpected argument `extra`"),
        ];
        for (line, expected) in cases {
            let message = parse(line).unwrap_err();
            assert!(message.contains(expected), "`{line}`: {message}");
        }
    }
}
