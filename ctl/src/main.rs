//! `berthctl`: the operator's view of a running berth host, over init's control socket
//! (root only). Shipped in every image at `/usr/bin/berthctl`.
//!
//! ```text
//! berthctl [--json] [--socket PATH] ps
//! berthctl [--json] inspect NAME
//! berthctl logs [--tail N] NAME
//! berthctl events [--tail N]
//! berthctl start|stop|restart NAME
//! berthctl reboot|poweroff
//! ```
//!
//! Exit codes: 0 done, 1 init refused or failed (its message on stderr), 2 bad command line,
//! 3 no connection to init.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use berth_control::{
    to_line, ContainerStatus, Envelope, Request, Response, StreamLine, SOCKET, VERSION,
};

const USAGE: &str = "usage: berthctl [--json] [--socket PATH] ps | inspect NAME | logs [-f] [--tail N] NAME | events [-f] [--tail N] | stats | top NAME | dmesg [--tail N] | start NAME | stop NAME | restart NAME | reboot | poweroff";

struct Options {
    json: bool,
    socket: String,
    request: Request,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut json = false;
    let mut socket = SOCKET.to_string();
    let mut tail = None;
    let mut follow = false;
    let mut words = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--socket" => socket = args.next().ok_or("--socket needs a path")?,
            "--tail" => {
                let value = args.next().ok_or("--tail needs a number")?;
                tail = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("--tail {value}: not a number"))?,
                );
            }
            "-f" | "--follow" => follow = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => words.push(arg),
        }
    }
    let name = |words: &[String]| -> Result<String, String> {
        match words {
            [_, name] => Ok(name.clone()),
            _ => Err(format!(
                "`{}` takes one container name",
                words.first().map_or("", String::as_str)
            )),
        }
    };
    let request = match words.first().map(String::as_str) {
        Some("ps") => Request::Ps,
        Some("inspect") => Request::Inspect {
            name: name(&words)?,
        },
        Some("logs") => Request::Logs {
            name: name(&words)?,
            tail,
            follow,
        },
        Some("events") => Request::Events { tail, follow },
        Some("start") => Request::Start {
            name: name(&words)?,
        },
        Some("stop") => Request::Stop {
            name: name(&words)?,
        },
        Some("restart") => Request::Restart {
            name: name(&words)?,
        },
        Some("stats") => Request::Stats,
        Some("top") => Request::Top {
            name: name(&words)?,
        },
        Some("dmesg") => Request::Dmesg { tail },
        Some("reboot") => Request::Reboot,
        Some("poweroff") => Request::Poweroff,
        Some(other) => return Err(format!("unknown command `{other}`\n{USAGE}")),
        None => return Err(USAGE.to_string()),
    };
    Ok(Options {
        json,
        socket,
        request,
    })
}

/// The connection's remaining lines after the response: a followed stream, printed as it
/// comes until init closes it or the reader goes away.
fn follow_stream(reader: &mut impl BufRead, json: bool) {
    let mut line = String::new();
    let stdout = std::io::stdout();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let printed = if json {
            write!(stdout.lock(), "{line}")
        } else {
            match serde_json::from_str::<StreamLine>(line.trim()) {
                Ok(stream) => writeln!(stdout.lock(), "{}", stream.line),
                Err(_) => Ok(()),
            }
        };
        if printed.and_then(|()| stdout.lock().flush()).is_err() {
            return;
        }
        line.clear();
    }
}

fn ask(
    socket: &str,
    request: Request,
) -> Result<(String, Response, BufReader<UnixStream>), String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("cannot reach init at {socket}: {e}"))?;
    let envelope = Envelope {
        v: VERSION,
        request,
    };
    stream
        .write_all(to_line(&envelope).as_bytes())
        .map_err(|e| format!("send to {socket}: {e}"))?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read from {socket}: {e}"))?;
    let response: Response = serde_json::from_str(line.trim())
        .map_err(|e| format!("init's answer does not parse ({e}): {line}"))?;
    Ok((line, response, reader))
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn print_table(containers: &[ContainerStatus]) {
    println!(
        "{:<20} {:<11} {:>8} {:>8} {:>7}  {:<24} {:<10} ADDR",
        "NAME", "STATE", "RESTARTS", "UPTIME", "PID", "IMAGE", "NETWORK"
    );
    for c in containers {
        println!(
            "{:<20} {:<11} {:>8} {:>8} {:>7}  {:<24} {:<10} {}",
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
        );
    }
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let following = matches!(
        options.request,
        Request::Logs { follow: true, .. } | Request::Events { follow: true, .. }
    );
    let (raw, response, mut reader) = match ask(&options.socket, options.request) {
        Ok(answer) => answer,
        Err(message) => {
            eprintln!("berthctl: {message}");
            return ExitCode::from(3);
        }
    };
    if options.json {
        print!("{raw}");
    } else if let Some(containers) = &response.containers {
        print_table(containers);
    } else if let Some(stats) = &response.stats {
        println!(
            "{:<20} {:>12} {:>12} {:>6}",
            "NAME", "MEMORY", "CPU", "PIDS"
        );
        let show = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or_else(|| "-".to_string(), f);
        for s in stats {
            println!(
                "{:<20} {:>12} {:>12} {:>6}",
                s.name,
                show(s.memory_bytes, &|b| format!(
                    "{:.1}MiB",
                    b as f64 / 1_048_576.0
                )),
                show(s.cpu_usec, &|u| format!("{:.2}s", u as f64 / 1e6)),
                show(s.pids, &|p| p.to_string()),
            );
        }
    } else if let Some(lines) = &response.lines {
        for line in lines {
            println!("{line}");
        }
    }
    if response.ok && following {
        let _ = std::io::stdout().flush();
        follow_stream(&mut reader, options.json);
    }
    if response.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "berthctl: {}",
            response.error.as_deref().unwrap_or("init refused")
        );
        ExitCode::FAILURE
    }
}
