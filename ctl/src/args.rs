//! The command line: global flags, one verb and its words. Parsing is pure (no file is read,
//! no terminal asked), so every form is unit-tested; what needs the outside world (a
//! manifest's text, the terminal's size) is fetched later, in `lib.rs`.

use std::path::PathBuf;
use std::time::Duration;

use berth_control::Request;

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Print init's response line as it came instead of a table.
    pub json: bool,
    /// `--socket PATH`; the caller's default when unset.
    pub socket: Option<PathBuf>,
    /// `--timeout SECS`: how long to wait to connect and for the response (not for a stream).
    pub timeout: Option<Duration>,
    pub verb: Verb,
}

/// What to do once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verb {
    /// One request, one response (and a stream for `-f`).
    Ask(Request),
    /// `apply FILE`: the file is read before connecting.
    Apply { file: String },
    /// `exec`: the request, then the process' I/O until it exits.
    Exec(Exec),
    /// `update FILE`: the bundle streamed after the answer, as `exec -i`'s stdin.
    /// `update BUNDLE [--reboot]`: with `reboot`, a staged update is booted at once.
    /// `update --pull REF [--reboot]`: the host fetches the bundle from a registry instead.
    Update { source: UpdateSource, reboot: bool },
    /// `version`, `rollback`: a request whose answer is a process' output, as `exec`'s.
    Relayed(Request),
}

/// Where `update` takes its bundle from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpdateSource {
    /// A file here, streamed to the host.
    File(String),
    /// An OCI artifact the host pulls from a registry.
    Pull(String),
}

/// `exec [-i] [-t] [-u USER] [-e KEY=VAL]... [-w DIR] NAME [--] CMD [ARGS...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Exec {
    pub name: String,
    pub args: Vec<String>,
    pub interactive: bool,
    pub tty: bool,
    pub user: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

/// The verbs and their words, for usage messages (also `berth ctl --help`'s).
pub const VERBS: &str = "\
verbs: ps | inspect NAME | logs [-f] [--tail N] [--since DURATION] NAME | events [-f] [--tail N] | journal [-f] [--tail N]
       | stats | top NAME | dmesg [--tail N] | start NAME | stop NAME | restart NAME
       | exec [-i] [-t] [-u USER] [-e KEY=VAL]... [-w DIR] NAME [--] CMD [ARGS...]
       | apply FILE | update [--reboot] BUNDLE | update [--reboot] --pull REF | version | rollback | images | image ls | image prune
       | reboot | poweroff";

/// The synopsis, for `-h` and a bad command line.
pub(crate) fn usage(program: &str) -> String {
    format!("usage: {program} [--json] [--socket PATH] [--timeout SECS] VERB\n{VERBS}")
}

/// Parses the arguments after the program's name. The error is the message for a bad
/// command line (exit 2).
pub(crate) fn parse(program: &str, args: Vec<String>) -> Result<Options, String> {
    let mut options = Options {
        json: false,
        socket: None,
        timeout: None,
        verb: Verb::Ask(Request::Ps),
    };
    let mut tail = None;
    let mut since_secs = None;
    let mut follow = false;
    let mut words: Vec<String> = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if global_flag(program, &arg, &mut args, &mut options)? {
            continue;
        }
        match arg.as_str() {
            "--tail" => {
                let value = args.next().ok_or("--tail needs a number")?;
                tail = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("--tail {value}: not a number"))?,
                );
            }
            "--since" => {
                let value = args.next().ok_or("--since needs a duration")?;
                since_secs = Some(parse_duration_secs(&value)?);
            }
            "-f" | "--follow" => follow = true,
            // Everything after `exec NAME` is the command: none of it is ours to read.
            "exec" if words.is_empty() => {
                options.verb = Verb::Exec(parse_exec(program, &mut args, &mut options)?);
                return Ok(options);
            }
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
            since_secs,
        },
        Some("events") => Request::Events { tail, follow },
        Some("journal") => Request::Journal { tail, follow },
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
        Some("images") => Request::Images,
        Some("image") => match words.get(1).map(String::as_str) {
            Some("ls") if words.len() == 2 => Request::Images,
            Some("prune") if words.len() == 2 => Request::ImagePrune,
            _ => return Err("`image` takes `ls` or `prune`".to_string()),
        },
        Some("top") => Request::Top {
            name: name(&words)?,
        },
        Some("dmesg") => Request::Dmesg { tail },
        Some("reboot") => Request::Reboot,
        Some("poweroff") => Request::Poweroff,
        Some("version") if words.len() == 1 => {
            options.verb = Verb::Relayed(Request::Version);
            return Ok(options);
        }
        Some("rollback") if words.len() == 1 => {
            options.verb = Verb::Relayed(Request::Rollback);
            return Ok(options);
        }
        Some("update") => {
            let reboot = words.iter().any(|w| w == "--reboot");
            let rest: Vec<&String> = words.iter().skip(1).filter(|w| *w != "--reboot").collect();
            let source = match rest.as_slice() {
                [flag, reference] if *flag == "--pull" => UpdateSource::Pull((*reference).clone()),
                [file] if !file.starts_with('-') => UpdateSource::File((*file).clone()),
                _ => {
                    return Err(
                        "`update` takes one bundle file (update.berth) or --pull REF, and --reboot"
                            .to_string(),
                    )
                }
            };
            options.verb = Verb::Update { source, reboot };
            return Ok(options);
        }
        Some("apply") => match words.as_slice() {
            [_, file] => {
                options.verb = Verb::Apply { file: file.clone() };
                return Ok(options);
            }
            _ => return Err("`apply` takes one manifest file".to_string()),
        },
        Some(other) => return Err(format!("unknown command `{other}`\n{}", usage(program))),
        None => return Err(usage(program)),
    };
    options.verb = Verb::Ask(request);
    Ok(options)
}

/// The flags every verb takes, wherever they stand before the command of an `exec`. True
/// when `arg` was one of them.
fn global_flag(
    program: &str,
    arg: &str,
    args: &mut impl Iterator<Item = String>,
    options: &mut Options,
) -> Result<bool, String> {
    match arg {
        "--json" => options.json = true,
        "--socket" => options.socket = Some(args.next().ok_or("--socket needs a path")?.into()),
        "--timeout" => {
            let value = args.next().ok_or("--timeout needs a number of seconds")?;
            let secs = value
                .parse::<u64>()
                .map_err(|_| format!("--timeout {value}: not a number of seconds"))?;
            options.timeout = Some(Duration::from_secs(secs.max(1)));
        }
        "-h" | "--help" => return Err(usage(program)),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The words after `exec`: options up to the container's name, then the command, Docker's
/// way: a `--` right after the name is dropped, and nothing after the name is an option.
fn parse_exec(
    program: &str,
    args: &mut impl Iterator<Item = String>,
    options: &mut Options,
) -> Result<Exec, String> {
    let mut exec = Exec::default();
    let mut name = None;
    let mut options_ended = false;
    while let Some(arg) = args.next() {
        if options_ended || !arg.starts_with('-') || arg == "-" {
            name = Some(arg);
            break;
        }
        if global_flag(program, &arg, args, options)? {
            continue;
        }
        let mut value = |flag: &str, inline: Option<&str>| -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => args
                    .next()
                    .ok_or_else(|| format!("exec: {flag} needs a value")),
            }
        };
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") => (flag, Some(v)),
            _ => (arg.as_str(), None),
        };
        match flag {
            "--" => options_ended = true,
            "--interactive" => exec.interactive = true,
            "--tty" => exec.tty = true,
            "-u" | "--user" => exec.user = Some(value(flag, inline)?),
            "-w" | "--workdir" => exec.workdir = Some(value(flag, inline)?),
            "-e" | "--env" => {
                let pair = value(flag, inline)?;
                if pair.split_once('=').is_none_or(|(key, _)| key.is_empty()) {
                    return Err(format!("exec: {flag} {pair}: expected KEY=VALUE"));
                }
                exec.env.push(pair);
            }
            // `-i`, `-t`, `-it`, `-ti`.
            cluster
                if cluster.strip_prefix('-').is_some_and(|letters| {
                    !letters.is_empty() && letters.chars().all(|c| c == 'i' || c == 't')
                }) =>
            {
                exec.interactive |= cluster.contains('i');
                exec.tty |= cluster.contains('t');
            }
            other => {
                return Err(format!(
                    "exec: unknown option `{other}`\n{}",
                    usage(program)
                ))
            }
        }
    }
    exec.name = name.ok_or("`exec` needs a container name and a command")?;
    let mut command: Vec<String> = args.collect();
    if command.first().is_some_and(|a| a == "--") {
        command.remove(0);
    }
    if command.is_empty() {
        return Err(format!("`exec {}` needs a command to run", exec.name));
    }
    exec.args = command;
    Ok(exec)
}

/// `30s`, `10m`, `1h30m`, `500ms` as whole seconds, rounded up (`500ms` is 1).
pub(crate) fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || format!("--since {text}: expected a duration such as 30s, 10m, 1h30m or 500ms");
    let mut millis: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        millis = number
            .checked_mul(scale)
            .and_then(|m| millis.checked_add(m))
            .ok_or_else(bad)?;
        rest = after;
    }
    Ok(millis.div_ceil(1_000))
}

#[cfg(test)]
#[expect(clippy::panic, clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn parse_words(line: &str) -> Result<Options, String> {
        parse(
            "berthctl",
            line.split_whitespace().map(str::to_string).collect(),
        )
    }

    fn exec(line: &str) -> Exec {
        match parse_words(line) {
            Ok(Options {
                verb: Verb::Exec(exec),
                ..
            }) => exec,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn update_takes_a_bundle_and_reboot_before_or_after_it() {
        for line in ["update --reboot b.berth", "update b.berth --reboot"] {
            assert!(matches!(
                parse_words(line).unwrap().verb,
                Verb::Update { source: UpdateSource::File(ref file), reboot: true } if file == "b.berth"
            ));
        }
        assert_eq!(
            parse_words("update --pull 10.0.2.2:5000/host:2 --reboot")
                .unwrap()
                .verb,
            Verb::Update {
                source: UpdateSource::Pull("10.0.2.2:5000/host:2".to_string()),
                reboot: true
            }
        );
        assert!(parse_words("update --pull").is_err());
        assert!(parse_words("update --pull a b").is_err());
        assert!(matches!(
            parse_words("update b.berth").unwrap().verb,
            Verb::Update { reboot: false, .. }
        ));
        assert!(parse_words("update --reboot").is_err());
        assert!(parse_words("update a b").is_err());
    }

    #[test]
    fn exec_takes_the_command_with_or_without_a_double_dash() {
        let with = exec("exec web -- sh -c true");
        assert_eq!(with.name, "web");
        assert_eq!(with.args, strings(&["sh", "-c", "true"]));
        assert!(!with.interactive && !with.tty);
        let without = exec("exec web sh -c true");
        assert_eq!(without, with);
        // After the name nothing is an option, not even ours.
        let flags = exec("exec web ls -f --json -- -it");
        assert_eq!(flags.args, strings(&["ls", "-f", "--json", "--", "-it"]));
        let dashed = exec("exec web -- -- x");
        assert_eq!(dashed.args, strings(&["--", "x"]));
    }

    #[test]
    fn exec_options_come_before_the_name() {
        let e = exec("exec -it -u 1000:1000 -e A=1 --env B=two=2 -w /tmp web id -u");
        assert!(e.interactive && e.tty);
        assert_eq!(e.user.as_deref(), Some("1000:1000"));
        assert_eq!(e.env, strings(&["A=1", "B=two=2"]));
        assert_eq!(e.workdir.as_deref(), Some("/tmp"));
        assert_eq!(e.args, strings(&["id", "-u"]));
        let split = exec("exec -t -i --user=root --workdir=/ web sh");
        assert!(split.interactive && split.tty);
        assert_eq!(split.user.as_deref(), Some("root"));
        assert_eq!(split.workdir.as_deref(), Some("/"));
        assert!(exec("exec -ti web sh").tty);
        assert!(exec("exec --interactive web sh").interactive);
        let global = parse_words("--json exec --socket /s -i web cat").unwrap();
        assert!(global.json);
        assert_eq!(global.socket, Some(PathBuf::from("/s")));
    }

    #[test]
    fn exec_refuses_what_it_cannot_run() {
        assert!(parse_words("exec web")
            .unwrap_err()
            .contains("needs a command"));
        assert!(parse_words("exec web --")
            .unwrap_err()
            .contains("needs a command"));
        assert!(parse_words("exec").unwrap_err().contains("container name"));
        assert!(parse_words("exec -x web sh")
            .unwrap_err()
            .contains("unknown option `-x`"));
        assert!(parse_words("exec -e NOEQUALS web sh")
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(parse_words("exec -u")
            .unwrap_err()
            .contains("-u needs a value"));
    }

    #[test]
    fn since_takes_go_style_durations_rounded_up_to_seconds() {
        for (text, secs) in [
            ("30s", 30),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("500ms", 1),
            ("1s500ms", 2),
            ("0s", 0),
            ("2d", 172_800),
        ] {
            assert_eq!(parse_duration_secs(text), Ok(secs), "{text}");
        }
        for bad in [
            "",
            "10",
            "m",
            "1x",
            "1h30",
            "-5s",
            "1.5h",
            "99999999999999999999h",
        ] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
        match parse_words("logs --since 10m --tail 5 web").unwrap().verb {
            Verb::Ask(Request::Logs {
                name,
                tail,
                since_secs,
                follow,
            }) => {
                assert_eq!(
                    (name.as_str(), tail, since_secs, follow),
                    ("web", Some(5), Some(600), false)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_words("logs --since soon web")
            .unwrap_err()
            .contains("--since soon"));
    }

    #[test]
    fn the_existing_verbs_parse_as_before() {
        assert_eq!(parse_words("ps").unwrap().verb, Verb::Ask(Request::Ps));
        assert_eq!(
            parse_words("logs -f --tail 0 counter").unwrap().verb,
            Verb::Ask(Request::Logs {
                name: "counter".to_string(),
                tail: Some(0),
                follow: true,
                since_secs: None
            })
        );
        assert_eq!(
            parse_words("apply /etc/m.toml").unwrap().verb,
            Verb::Apply {
                file: "/etc/m.toml".to_string()
            }
        );
        assert!(parse_words("apply")
            .unwrap_err()
            .contains("one manifest file"));
        assert!(parse_words("stop")
            .unwrap_err()
            .contains("one container name"));
        assert!(parse_words("frobnicate")
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse_words("").unwrap_err().starts_with("usage: berthctl"));
        assert_eq!(
            parse_words("--timeout 5 ps").unwrap().timeout,
            Some(Duration::from_secs(5))
        );
    }
}
