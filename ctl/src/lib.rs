//! The client side of init's control protocol ([`berth_control`], version 1), shared by
//! `berthctl` in the guest (over init's socket, `/run/berth/control.sock`) and `berth ctl` on
//! the host (over the QEMU chardev socket behind the guest's virtio-serial port
//! `org.berth.control`). Both take the same verbs and flags:
//!
//! ```text
//! berthctl [--json] [--socket PATH] [--timeout SECS] ps            # HEALTH is the last column
//! berthctl [--json] inspect NAME
//! berthctl logs [-f] [--tail N] [--since DURATION] NAME             # DURATION: 30s, 10m, 1h30m, 500ms
//! berthctl events [-f] [--tail N]
//! berthctl journal [-f] [--tail N]
//! berthctl stats | top NAME | dmesg [--tail N]
//! berthctl start|stop|restart NAME
//! berthctl exec [-i] [-t] [-u USER] [-e KEY=VAL]... [-w DIR] NAME [--] CMD [ARGS...]
//! berthctl apply FILE
//! berthctl update [--reboot] BUNDLE                                       # berth build --format update's update.berth
//! berthctl version | rollback                                      # the boot slots; the other slot next
//! berthctl reboot|poweroff
//! ```
//!
//! Exit codes: 0 done, 1 init refused or failed (its message on stderr as `PROGRAM: MESSAGE`),
//! 2 bad command line (or `apply`'s file unreadable), 3 no connection to init (or, with
//! `--timeout`, no answer in time). `exec` exits with the process' own code (0 to 255), or 1
//! when the connection ends before it.
//!
//! Every request carries a fresh `id`, and the response is the first line echoing it: on the
//! serial port, lines an earlier session left behind are skipped.

mod args;
mod connection;
mod exec;
mod terminal;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use berth_control::{
    Changes, ContainerStats, ContainerStatus, ErrorCode, ImageInfo, PruneReport, Request, Response,
    StreamLine, WatchdogStatus,
};

pub use crate::args::VERBS;
use crate::args::{Options, UpdateSource, Verb};
use crate::connection::Answered;

/// Exit codes, documented in `docs/control-protocol.md`.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// init refused or failed; its message is on stderr.
    pub const REFUSED: u8 = 1;
    /// A bad command line, or a file it names cannot be read.
    pub const USAGE: u8 = 2;
    /// init cannot be reached (or did not answer within `--timeout`).
    pub const NO_CONNECTION: u8 = 3;
    /// init refused with `not-found`: no such container.
    pub const NOT_FOUND: u8 = 4;
    /// init refused with `conflict`: the container's state refuses it (`start` of a running one).
    pub const CONFLICT: u8 = 5;
    /// init refused with `busy`: too many control clients; try again.
    pub const BUSY: u8 = 6;
}

/// The process' streams as the client uses them; [`run`] passes the real ones, tests their
/// own.
pub struct Io<'a> {
    /// Read only by `exec -i`, on a thread of its own.
    pub stdin: Box<dyn Read + Send>,
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    /// stdin is this process' terminal: `exec -t` sends its size, puts it in raw mode and
    /// forwards its size changes.
    pub terminal: bool,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("terminal", &self.terminal)
            .finish_non_exhaustive()
    }
}

/// Why the client stops before it is done, by exit code.
#[derive(Debug)]
enum Failure {
    /// A bad command line: the message (usage included) goes out bare.
    Usage(String),
    /// Something the command line names is unusable (exit 2).
    Input(String),
    /// init cannot be reached or did not answer (exit 3).
    Connection(String),
    /// init refused, or the conversation broke after its answer (exit 1).
    Refused(String),
    /// init refused with a code that has an exit code of its own.
    Denied { message: String, code: ErrorCode },
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::Input(_) => exit::USAGE,
            Failure::Connection(_) => exit::NO_CONNECTION,
            Failure::Refused(_) => exit::REFUSED,
            Failure::Denied { code, .. } => match code {
                ErrorCode::NotFound => exit::NOT_FOUND,
                ErrorCode::Conflict => exit::CONFLICT,
                ErrorCode::Busy => exit::BUSY,
                ErrorCode::Invalid | ErrorCode::Internal => exit::REFUSED,
            },
        }
    }

    /// init's refusal, with the exit code its `code` calls for.
    fn from_response(response: Response) -> Failure {
        let message = response.error.unwrap_or_else(|| "init refused".to_string());
        match response.code {
            Some(code) => Failure::Denied { message, code },
            None => Failure::Refused(message),
        }
    }
}

/// `berthctl` as the guest runs it: this process' arguments, against init's socket.
pub fn run_berthctl() -> ExitCode {
    run(
        "berthctl",
        Path::new(berth_control::SOCKET),
        std::env::args().skip(1).collect(),
    )
}

/// Runs one command line (`args` without the program's name) with this process' streams.
/// `program` prefixes error messages and names the usage (`berthctl`, `berth ctl`);
/// `default_socket` is where init is unless `--socket` says otherwise.
pub fn run(program: &str, default_socket: &Path, args: Vec<String>) -> ExitCode {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    // Unlocked: the stdin thread of `exec` may report on stderr while this one writes.
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let io = Io {
        stdin: Box::new(stdin),
        stdout: &mut stdout,
        stderr: &mut stderr,
        terminal,
    };
    ExitCode::from(run_with(program, default_socket, args, io))
}

/// [`run`] with the given streams; returns the exit code.
pub fn run_with(program: &str, default_socket: &Path, args: Vec<String>, io: Io<'_>) -> u8 {
    let Io {
        stdin,
        stdout,
        stderr,
        terminal,
    } = io;
    let result =
        args::parse(program, args)
            .map_err(Failure::Usage)
            .and_then(|options| match options.verb.clone() {
                Verb::Ask(request) => ask(&options, default_socket, request, stdout),
                Verb::Apply { file } => {
                    let manifest = std::fs::read_to_string(&file)
                        .map_err(|e| Failure::Input(format!("cannot read {file}: {e}")))?;
                    let request = Request::Apply {
                        manifest,
                        file: Some(file),
                    };
                    ask(&options, default_socket, request, stdout)
                }
                Verb::Update { source, reboot } => {
                    let (request, bundle) = match source {
                        UpdateSource::File(file) => {
                            let bundle = std::fs::File::open(&file)
                                .map_err(|e| Failure::Input(format!("cannot read {file}: {e}")))?;
                            let bundle: Box<dyn Read + Send> = Box::new(bundle);
                            (Request::Update { pull: None }, Some(bundle))
                        }
                        UpdateSource::Pull(reference) => (
                            Request::Update {
                                pull: Some(reference),
                            },
                            None,
                        ),
                    };
                    let staged = run_relayed(
                        program,
                        &options,
                        default_socket,
                        request,
                        (bundle, &mut *stdout, &mut *stderr),
                    )?;
                    // Only a staged update is booted: a refused bundle leaves the host up.
                    if reboot && staged == exit::OK {
                        ask(&options, default_socket, Request::Reboot, stdout)
                    } else {
                        Ok(staged)
                    }
                }
                Verb::Relayed(request) => run_relayed(
                    program,
                    &options,
                    default_socket,
                    request,
                    (None, &mut *stdout, &mut *stderr),
                ),
                Verb::Exec(exec) => run_exec(
                    program,
                    &options,
                    default_socket,
                    exec,
                    (stdin, &mut *stdout, &mut *stderr),
                    terminal,
                ),
            });
    match result {
        Ok(code) => code,
        Err(failure) => {
            // The last thing left to say; if stderr is gone there is no one to tell.
            let _ = match &failure {
                Failure::Usage(message) => writeln!(stderr, "{message}"),
                Failure::Input(message)
                | Failure::Connection(message)
                | Failure::Refused(message)
                | Failure::Denied { message, .. } => writeln!(stderr, "{program}: {message}"),
            };
            failure.code()
        }
    }
}

fn socket<'a>(options: &'a Options, default_socket: &'a Path) -> &'a Path {
    options.socket.as_deref().unwrap_or(default_socket)
}

/// One request: prints its response (and, for `-f`, the stream after it).
fn ask(
    options: &Options,
    default_socket: &Path,
    request: Request,
    stdout: &mut dyn Write,
) -> Result<u8, Failure> {
    let following = matches!(
        request,
        Request::Logs { follow: true, .. }
            | Request::Events { follow: true, .. }
            | Request::Journal { .. }
    );
    let Answered {
        raw,
        response,
        mut reader,
        ..
    } = connection::ask(socket(options, default_socket), request, options.timeout)
        .map_err(Failure::Connection)?;
    print_response(&raw, &response, options.json, stdout)
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Refused(format!("cannot write the output: {e}")))?;
    if response.ok && following {
        follow_stream(&mut reader, options.json, stdout);
    }
    if response.ok {
        Ok(exit::OK)
    } else {
        Err(Failure::from_response(response))
    }
}

/// The output of a process init starts for `request` (`update`, `version`, `rollback`),
/// with `input` streamed up as its stdin (`update`'s bundle), until its exit code, which
/// becomes ours.
fn run_relayed(
    program: &str,
    options: &Options,
    default_socket: &Path,
    request: Request,
    (input, stdout, stderr): (Option<Box<dyn Read + Send>>, &mut dyn Write, &mut dyn Write),
) -> Result<u8, Failure> {
    let Answered {
        response,
        mut reader,
        writer,
        ..
    } = connection::ask(socket(options, default_socket), request, options.timeout)
        .map_err(Failure::Connection)?;
    if !response.ok {
        return Err(Failure::from_response(response));
    }
    let writer: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(writer));
    let code = exec::relay(program, &mut reader, writer, input, stdout, stderr)
        .map_err(Failure::Refused)?;
    Ok(u8::try_from(code).unwrap_or(exit::REFUSED))
}

/// `exec`: the request, then the process' I/O until its exit code, which becomes ours.
fn run_exec(
    program: &str,
    options: &Options,
    default_socket: &Path,
    exec: args::Exec,
    (stdin, stdout, stderr): (Box<dyn Read + Send>, &mut dyn Write, &mut dyn Write),
    terminal: bool,
) -> Result<u8, Failure> {
    let on_terminal = exec.tty && terminal;
    let request = Request::Exec {
        name: exec.name,
        args: exec.args,
        interactive: exec.interactive,
        tty: exec.tty,
        tty_size: if on_terminal { terminal::size() } else { None },
        user: exec.user,
        env: exec.env,
        workdir: exec.workdir,
    };
    let Answered {
        response,
        mut reader,
        writer,
        ..
    } = connection::ask(socket(options, default_socket), request, options.timeout)
        .map_err(Failure::Connection)?;
    if !response.ok {
        return Err(Failure::from_response(response));
    }
    let writer: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(writer));
    // Raw mode only once init has said yes, so that its refusal prints as usual, and only
    // with -i too, as Docker does: without it nothing would carry a Ctrl-C anywhere. Dropped
    // (the terminal restored) on every way out of this function.
    let raw = match on_terminal && exec.interactive {
        true => Some(terminal::RawMode::enter().map_err(Failure::Refused)?),
        false => None,
    };
    let resizes = match on_terminal {
        true => Some(
            terminal::follow_resizes(raw.as_ref(), Arc::clone(&writer))
                .map_err(Failure::Refused)?,
        ),
        false => None,
    };
    let stdin = exec.interactive.then_some(stdin);
    let result = exec::relay(program, &mut reader, writer, stdin, stdout, stderr);
    if let Some(resizes) = resizes {
        resizes.close();
    }
    drop(raw);
    let code = result.map_err(Failure::Refused)?;
    Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
}

/// The connection's remaining lines after the response: a followed stream, printed as it
/// comes until init closes it or the reader goes away.
fn follow_stream(reader: &mut impl BufRead, json: bool, stdout: &mut dyn Write) {
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let printed = if json {
            write!(stdout, "{line}")
        } else {
            match serde_json::from_str::<StreamLine>(line.trim()) {
                Ok(StreamLine {
                    container: Some(container),
                    line,
                    ..
                }) => writeln!(stdout, "{container} | {line}"),
                Ok(stream) => writeln!(stdout, "{}", stream.line),
                Err(_) => Ok(()),
            }
        };
        if printed.and_then(|()| stdout.flush()).is_err() {
            return;
        }
        line.clear();
    }
}

/// The response as the operator reads it: the raw line with `--json`, else a table, the
/// lines, or what `apply` changed.
fn print_response(
    raw: &str,
    response: &Response,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if json {
        write!(out, "{raw}")
    } else if let Some(containers) = &response.containers {
        if let Some(watchdog) = &response.watchdog {
            print_watchdog(watchdog, out)?;
        }
        print_table(containers, out)
    } else if let Some(stats) = &response.stats {
        print_stats(stats, out)
    } else if let Some(images) = &response.images {
        print_images(images, out)
    } else if let Some(prune) = &response.prune {
        print_prune(prune, out)
    } else if let Some(lines) = &response.lines {
        lines.iter().try_for_each(|line| writeln!(out, "{line}"))
    } else if let Some(changes) = &response.changes {
        print_changes(changes, out)
    } else {
        Ok(())
    }
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The line above `ps`'s table on a host with an armed watchdog (none without one, so the
/// table of such hosts reads as before).
fn print_watchdog(watchdog: &WatchdogStatus, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "watchdog: {} timeout {}s {}",
        watchdog.device,
        watchdog.timeout_s,
        if watchdog.feeding {
            "fed"
        } else {
            "NOT FED (berth.test_watchdog_nofeed)"
        }
    )
}

/// `ps` and `inspect`. Columns only ever go at the end, so scripts that count them keep
/// working.
fn print_table(containers: &[ContainerStatus], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:<11} {:>8} {:>8} {:>7}  {:<24} {:<10} {:<18} HEALTH",
        "NAME", "STATE", "RESTARTS", "UPTIME", "PID", "IMAGE", "NETWORK", "ADDR"
    )?;
    for c in containers {
        writeln!(
            out,
            "{:<20} {:<11} {:>8} {:>8} {:>7}  {:<24} {:<10} {:<18} {}",
            c.name,
            c.state,
            c.restarts,
            c.uptime_s.map(duration).unwrap_or_else(|| "-".to_string()),
            c.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".to_string()),
            c.image,
            c.network,
            c.addr.as_deref().unwrap_or("-"),
            c.health.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}

fn print_images(images: &[ImageInfo], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<48} {:<20} {:>10} {:>10} {:>10} SOURCE",
        "REFERENCE", "DIGEST", "SIZE", "UNIQUE", "SHARED"
    )?;
    let size = |b: Option<u64>| {
        b.map_or_else(
            || "-".to_string(),
            |b| format!("{:.1}MiB", b as f64 / 1_048_576.0),
        )
    };
    for image in images {
        let digest = image
            .digest
            .as_deref()
            .map_or("-".to_string(), |d| d.chars().take(19).collect());
        let total = image
            .unique_bytes
            .zip(image.shared_bytes)
            .map(|(unique, shared)| unique + shared);
        writeln!(
            out,
            "{:<48} {:<20} {:>10} {:>10} {:>10} {}",
            image.reference,
            digest,
            size(total),
            size(image.unique_bytes),
            size(image.shared_bytes),
            image.source
        )?;
    }
    Ok(())
}

fn print_prune(prune: &PruneReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "removed: {}", prune.removed_images.join(" "))?;
    writeln!(
        out,
        "blobs: {} layers: {}",
        prune.removed_blobs, prune.removed_layers
    )?;
    writeln!(out, "freed: {} bytes", prune.freed_bytes)
}

fn print_stats(stats: &[ContainerStats], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>12} {:>12} {:>6}",
        "NAME", "MEMORY", "CPU", "PIDS"
    )?;
    let show = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or_else(|| "-".to_string(), f);
    for s in stats {
        writeln!(
            out,
            "{:<20} {:>12} {:>12} {:>6}",
            s.name,
            show(s.memory_bytes, &|b| format!(
                "{:.1}MiB",
                b as f64 / 1_048_576.0
            )),
            show(s.cpu_usec, &|u| format!("{:.2}s", u as f64 / 1e6)),
            show(s.pids, &|p| p.to_string()),
        )?;
    }
    Ok(())
}

/// `apply`: one line per kind of change, names separated by spaces (`added: a b`); `next
/// boot:` only when something outside the containers changed.
fn print_changes(changes: &Changes, out: &mut dyn Write) -> std::io::Result<()> {
    let mut line = |label: &str, names: &[String]| -> std::io::Result<()> {
        write!(out, "{label}:")?;
        names.iter().try_for_each(|name| write!(out, " {name}"))?;
        writeln!(out)
    };
    line("added", &changes.added)?;
    line("removed", &changes.removed)?;
    line("changed", &changes.changed)?;
    line("unchanged", &changes.unchanged)?;
    if !changes.next_boot.is_empty() {
        line("next boot", &changes.next_boot)?;
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests;
