//! `berth-update`: the processes init starts for updates, this binary under that name, so
//! that the bundle, which is outside input until its signature is checked, is parsed here
//! and never in PID 1, and the ESP's reads and writes, which may block on the disk, never
//! stall the event loop. Each leaves its result in a file under /run for init.
//!
//! - `berth-update stage --slot S --key K... [--pull REF [--pull-option O]...]`: writes a
//!   verified bundle (on stdin, relayed by init for `berthctl update`, or fetched from a
//!   registry by berth-pull for `berthctl update --pull`) into slot S, the one not running.
//! - `berth-update check --slot S`: how the boot of slot S came about (`trial`,
//!   `rolled-back FROM` or `committed`), read from the ESP's loader entries.
//! - `berth-update bless --slot S`: commits slot S (its entry loses its boot counter).
//! - `berth-update version --slot S`: both slots, their image versions and states, S
//!   marked running (`berthctl version`).
//! - `berth-update rollback --slot S`: makes slot S, the one not running, the next to boot
//!   (`berthctl rollback`).
//!
//! The order makes a cut at any point harmless: the parts are streamed into memory (/run)
//! while the bundle is verified, and the ESP is not touched until the whole bundle is; then
//! the parts go to temporary names in the inactive slot (synced) and are renamed over its
//! files; last, the slot's loader entry is written with a boot counter and the next
//! generation (see `boot_entries`). Until that last rename, the next boot is the running
//! slot, unchanged.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::boot_entries::{boot_kind, BootKind};
use crate::esp_mount::MountedEsp;
/// Where the bundle's parts wait, in memory, until the whole bundle is verified.
const STAGING_DIR: &str = "/run/berth/update-staging";
/// Tries systemd-boot gives a newly staged slot before it falls back to the other.
pub const BOOT_TRIES: u32 = 3;
/// Where `berth.test_update_pause` announces its pause: the console, since the stager's own
/// stdout and stderr go to the `berthctl update` client.
const CONSOLE: &str = "/dev/console";

/// The largest bundle `--pull` fetches: its parts wait in memory (/run) while it is
/// verified, so a registry must not be able to ask for more than a kernel and an initrd.
const PULL_MAX_BYTES: u64 = 256 << 20;

/// What `stage` was asked: the slot to write, the keys to accept, and where the bundle
/// comes from (stdin, or the artifact `pull` names with berth-pull's `pull_options`).
#[derive(Debug)]
struct StageArgs {
    slot: char,
    keys: Vec<berth_update::PublicKey>,
    pull: Option<String>,
    pull_options: Vec<String>,
}

/// A staged bundle: its version, and how long the stager took to receive and verify it and
/// then to write it into the slot (`update-staged`'s `verify_ms` and `write_ms`).
#[derive(Debug)]
struct Staged {
    version: String,
    verify: Duration,
    write: Duration,
}

/// The `berth-update` program (see the module doc).
pub fn run() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("stage") => run_stage(&args),
        Some("check") => report(
            crate::update::CHECK_FILE,
            slot_arg(&args).and_then(check).map(|kind| match kind {
                BootKind::Trial => "trial".to_string(),
                BootKind::RolledBack { from } => format!("rolled-back {from}"),
                BootKind::Committed => "committed".to_string(),
            }),
        ),
        Some("version") => match slot_arg(&args).and_then(describe) {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                std::process::ExitCode::FAILURE
            }
        },
        Some("rollback") => match slot_arg(&args).and_then(roll_back) {
            Ok(slot) => {
                println!("slot {slot} boots next: `berthctl reboot` to start it");
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("rollback refused: {err}");
                std::process::ExitCode::FAILURE
            }
        },
        Some("bless") => report(
            crate::update::BLESS_FILE,
            slot_arg(&args)
                .and_then(bless)
                .map(|blessed| if blessed { "blessed" } else { "not-counted" }.to_string()),
        ),
        _ => {
            eprintln!(
                "usage: berth-update stage|check|bless|version|rollback --slot a|b [--key KEY]..."
            );
            std::process::ExitCode::from(2)
        }
    }
}

/// Leaves `result` (or `failed REASON`) in `file` for init, and exits by it.
fn report(file: &str, result: Result<String, String>) -> std::process::ExitCode {
    match result {
        Ok(text) => {
            let _ = std::fs::write(file, format!("{text}\n"));
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            let _ = std::fs::write(file, format!("failed {}\n", err.replace('\n', " ")));
            eprintln!("berth-update: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn slot_arg(args: &[String]) -> Result<char, String> {
    match args {
        [_, flag, slot] if flag == "--slot" && (slot == "a" || slot == "b") => {
            Ok(if slot == "a" { 'a' } else { 'b' })
        }
        _ => Err("expected --slot a|b".to_string()),
    }
}

fn check(slot: char) -> Result<BootKind, String> {
    let esp = MountedEsp::mount(MsFlags::MS_RDONLY)?;
    crate::boot_entries::read_entries(esp.path()).map(|e| boot_kind(&e, slot))
}

fn describe(running: char) -> Result<Vec<String>, String> {
    let esp = MountedEsp::mount(MsFlags::MS_RDONLY)?;
    crate::boot_entries::read_entries(esp.path())
        .map(|entries| crate::boot_entries::describe(&entries, running))
}

fn roll_back(slot: char) -> Result<char, String> {
    let esp = MountedEsp::mount(MsFlags::empty())?;
    let done = crate::boot_entries::roll_back_to(esp.path(), slot);
    nix::unistd::sync();
    done.map(|()| slot)
}

fn bless(slot: char) -> Result<bool, String> {
    let esp = MountedEsp::mount(MsFlags::empty())?;
    let blessed = crate::boot_entries::bless(esp.path(), slot);
    nix::unistd::sync();
    blessed
}

fn run_stage(args: &[String]) -> std::process::ExitCode {
    match parse_args(args).and_then(|a| stage(&a)) {
        Ok(staged) => {
            let _ = std::fs::write(
                crate::update::RESULT_FILE,
                format!(
                    "staged {} {} {}\n",
                    staged.version,
                    staged.verify.as_millis(),
                    staged.write.as_millis()
                ),
            );
            println!("staged slot={} version={}", slot_of(args), staged.version);
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            let reason = err.replace('\n', " ");
            let _ = std::fs::write(crate::update::RESULT_FILE, format!("refused {reason}\n"));
            eprintln!("update refused: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn slot_of(args: &[String]) -> String {
    parse_args(args)
        .map(|a| a.slot.to_string())
        .unwrap_or_default()
}

fn parse_args(args: &[String]) -> Result<StageArgs, String> {
    let mut words = args.iter();
    if words.next().map(String::as_str) != Some("stage") {
        return Err("usage: berth-update stage --slot a|b --key KEY...".into());
    }
    let mut slot = None;
    let mut keys = Vec::new();
    let mut pull = None;
    let mut pull_options = Vec::new();
    while let Some(word) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{word} needs a value"))?;
        match word.as_str() {
            "--slot" => {
                slot = match value.as_str() {
                    "a" => Some('a'),
                    "b" => Some('b'),
                    other => return Err(format!("no slot `{other}`")),
                }
            }
            "--key" => keys.push(berth_update::PublicKey::parse(value).map_err(|e| e.to_string())?),
            "--pull" => pull = Some(value.clone()),
            "--pull-option" => pull_options.push(value.clone()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(StageArgs {
        slot: slot.ok_or("--slot is missing")?,
        keys,
        pull,
        pull_options,
    })
}

fn stage(args: &StageArgs) -> Result<Staged, String> {
    let started = Instant::now();
    if args.keys.is_empty() {
        return Err("this host accepts no update: its manifest's [update] keys is empty".into());
    }
    // The bundle is verified whole into memory (/run) before the ESP is even mounted: a
    // refused bundle leaves the ESP byte for byte as it was.
    let staging = PathBuf::from(STAGING_DIR);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{STAGING_DIR}: {e}"))?;
    let result = verify_into(&staging, args).and_then(|version| {
        let verify = started.elapsed();
        let pause = crate::cmdline::read().0.test_update_pause;
        let esp = MountedEsp::mount(MsFlags::empty())?;
        let written = install(esp.path(), &staging, args.slot, &version, pause);
        nix::unistd::sync();
        drop(esp);
        written.map(|()| Staged {
            version,
            verify,
            write: started.elapsed().saturating_sub(verify),
        })
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Reads the bundle (from stdin, or pulled) into `staging`, verified; returns its version.
fn verify_into(staging: &Path, args: &StageArgs) -> Result<String, String> {
    let arch = std::env::consts::ARCH;
    let bundle: Box<dyn io::Read> = match &args.pull {
        Some(reference) => {
            let path = pull_bundle(reference, &args.pull_options)?;
            Box::new(File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => Box::new(io::stdin().lock()),
    };
    let verified = berth_update::read_bundle(bundle, &args.keys, arch, |part| {
        if file_of_part(&part.name).is_empty() {
            return Err(io::Error::other(format!("unknown part `{}`", part.name)));
        }
        File::create(staging.join(file_of_part(&part.name)))
    })
    .map_err(|e| e.to_string())?;
    for part in ["kernel", "initrd"] {
        if !verified.header.parts.iter().any(|p| p.name == part) {
            return Err(format!("the bundle has no `{part}`"));
        }
    }
    Ok(verified.header.version)
}

/// berth-pull's one line on stdout, as much of it as `stage` reads.
#[derive(Debug, serde::Deserialize)]
struct PullLine {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    digest: Option<String>,
}

/// Fetches the update bundle `reference` names (an OCI artifact with a layer of
/// [`berth_control::UPDATE_MEDIA_TYPE`]) into the image store with berth-pull, whose
/// progress lines go to this process' stderr and so to the client; the blob's path. The
/// blob is only digest-checked here: its signature is checked as it is read, as a streamed
/// bundle's is.
fn pull_bundle(reference: &str, options: &[String]) -> Result<PathBuf, String> {
    use crate::supervisor::PULLER;
    if !Path::new(PULLER).is_file() {
        return Err(format!(
            "this image has no {PULLER} to pull with (built without [update] keys?)"
        ));
    }
    let output = std::process::Command::new(PULLER)
        .arg("artifact")
        .args(["--store", crate::images::PULLED_STORE])
        .args(["--arch", std::env::consts::ARCH])
        .args(["--media-type", berth_control::UPDATE_MEDIA_TYPE])
        .args(["--max-bytes", &PULL_MAX_BYTES.to_string()])
        .args(options)
        .arg(reference)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {PULLER}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: PullLine = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("{PULLER} said nothing usable ({})", output.status))?;
    match (line.ok, line.path) {
        (true, Some(path)) => {
            println!(
                "pulled {reference} ({})",
                line.digest.as_deref().unwrap_or("?")
            );
            Ok(path)
        }
        // berth-pull's errors name the reference already.
        _ => Err(line
            .error
            .unwrap_or_else(|| format!("pulling {reference} failed"))),
    }
}

/// Copies the verified parts into `slot` on the ESP (temporary names, synced, renamed), then
/// makes the slot the one to try next. `pause` (`berth.test_update_pause`, tests only) stops
/// it after the first part's temporary file.
fn install(
    esp: &Path,
    staging: &Path,
    slot: char,
    version: &str,
    pause: Option<Duration>,
) -> Result<(), String> {
    let slot_dir = esp.join("berth").join(slot.to_string());
    std::fs::create_dir_all(&slot_dir).map_err(|e| format!("{}: {e}", slot_dir.display()))?;
    for part in ["kernel", "initrd"] {
        let file = file_of_part(part);
        let temporary = slot_dir.join(format!("{file}.new"));
        copy_synced(&staging.join(file), &temporary)?;
        if let (Some(pause), "kernel") = (pause, part) {
            pause_half_written(slot, &temporary, pause);
        }
    }
    for part in ["kernel", "initrd"] {
        let file = file_of_part(part);
        let to = slot_dir.join(file);
        std::fs::rename(slot_dir.join(format!("{file}.new")), &to)
            .map_err(|e| format!("{}: {e}", to.display()))?;
    }
    crate::boot_entries::stage_entry(esp, slot, BOOT_TRIES, version)
}

/// `berth.test_update_pause`: with the slot half written and that much on the disk (synced),
/// says so on the console, in one write, and waits for a test to cut the power.
fn pause_half_written(slot: char, written: &Path, pause: Duration) {
    nix::unistd::sync();
    let line = format!(
        "berth-update: test pause: slot {slot} half written ({} synced; the initrd, the renames and the loader entry not yet), waiting {} ms (berth.test_update_pause)\n",
        written.display(),
        pause.as_millis()
    );
    let console = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(CONSOLE);
    if let Ok(mut console) = console {
        let _ = console.write_all(line.as_bytes());
    }
    std::thread::sleep(pause);
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), String> {
    let mut source = File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut target = File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    io::copy(&mut source, &mut target)
        .and_then(|_| target.flush())
        .and_then(|()| target.sync_all())
        .map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(())
}

/// The file a part becomes in its slot.
fn file_of_part(name: &str) -> &'static str {
    match name {
        "kernel" => "vmlinuz",
        "initrd" => "initrd",
        _ => "",
    }
}
