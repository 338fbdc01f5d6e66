//! The two slots' systemd-boot loader entries on the ESP, and which one boots next.
//!
//! systemd-boot (Debian 12's, 252) sorts entries before it picks the first that matches
//! loader.conf's `default berth-*`: entries whose boot counter is spent (`+0-N`, "bad") go
//! last, then, among entries with a `sort-key`, the highest `version` goes first. So every
//! berth entry carries `sort-key berth` and `version <generation>`, and staging a slot gives
//! it the next generation and a counter (`berth-b+3.conf`): it boots first; systemd-boot
//! renames it at each try (`berth-b+2-1.conf`, ...); once blessed (renamed to
//! `berth-b.conf`) it stays first, and if its tries run out it sorts last and the other slot
//! boots. Which slot is newer never depends on its letter. (systemd's `boot.c`,
//! `config_entry_compare` and `config_default_entry_select`, tag v252.)

use std::path::{Path, PathBuf};

/// loader.conf as berth writes it: no menu, the first entry in systemd-boot's order.
pub const LOADER_CONF: &str = "default berth-*\ntimeout 0\nconsole-mode keep\n";

/// A berth entry's file name: its slot and its boot counter (`+left` or `+left-done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub slot: char,
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

impl EntryName {
    /// Reads `berth-a.conf`, `berth-b+3.conf`, `berth-b+2-1.conf`.
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_prefix("berth-")?.strip_suffix(".conf")?;
        let (slot, counter) = match stem.split_once('+') {
            Some((slot, counter)) => (slot, Some(counter)),
            None => (stem, None),
        };
        let slot = match slot {
            "a" => 'a',
            "b" => 'b',
            _ => return None,
        };
        let (tries_left, tries_done) = match counter {
            None => (None, None),
            Some(counter) => {
                let (left, done) = match counter.split_once('-') {
                    Some((left, done)) => (left, Some(done.parse().ok()?)),
                    None => (counter, None),
                };
                (Some(left.parse().ok()?), done)
            }
        };
        Some(EntryName {
            slot,
            tries_left,
            tries_done,
        })
    }

    /// Its tries are spent: systemd-boot no longer picks it while another entry is good.
    pub fn is_bad(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// A berth entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub name: EntryName,
    pub text: String,
}

impl Entry {
    /// The entry's `version` line, 0 without one (an image from before generations).
    pub fn generation(&self) -> u64 {
        generation_of(&self.text)
    }
}

pub fn generation_of(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("version "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The image version an entry records (`# berth-version V`, a comment to systemd-boot).
pub fn image_version_of(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix(IMAGE_VERSION_LINE))
        .map(str::trim)
}

const IMAGE_VERSION_LINE: &str = "# berth-version ";

/// `template` (an entry's text) with `sort-key berth`, `version generation` and, when given,
/// the image version, whatever it held of them before.
pub fn with_generation(template: &str, generation: u64, image_version: Option<&str>) -> String {
    let image_version = image_version.or_else(|| image_version_of(template));
    let mut text: String = template
        .lines()
        .filter(|l| {
            !l.starts_with("version ")
                && !l.starts_with("sort-key ")
                && !l.starts_with(IMAGE_VERSION_LINE)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("sort-key berth\nversion {generation}\n"));
    if let Some(version) = image_version {
        text.push_str(&format!("{IMAGE_VERSION_LINE}{version}\n"));
    }
    text
}

/// An entry's text for `slot` made from the other slot's: its files and `berth.slot=`.
pub fn for_slot(template: &str, from: char, to: char) -> String {
    template
        .replace(&format!("/berth/{from}/"), &format!("/berth/{to}/"))
        .replace(&format!("berth.slot={from}"), &format!("berth.slot={to}"))
        .replace(
            &format!("(slot {})", from.to_ascii_uppercase()),
            &format!("(slot {})", to.to_ascii_uppercase()),
        )
}

/// The other slot.
pub fn other_slot(slot: char) -> char {
    if slot == 'a' {
        'b'
    } else {
        'a'
    }
}

/// The berth entries in `esp`'s `loader/entries`, bounded in size (the ESP is the host's
/// own disk, yet a torn write must not cost more than a refused update).
pub fn read_entries(esp: &Path) -> Result<Vec<Entry>, String> {
    let dir = esp.join("loader").join("entries");
    let listing = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut entries = Vec::new();
    for item in listing.flatten() {
        let file = item.file_name().to_string_lossy().to_ascii_lowercase();
        let Some(name) = EntryName::parse(&file) else {
            continue;
        };
        let path = item.path();
        let text =
            berth_runtime::read_regular_file(&path, 16 << 10, berth_runtime::FollowLinks::No)
                .map(|bytes| String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        entries.push(Entry { path, name, text });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// Makes `slot` the one systemd-boot tries next, `tries` times: its entry (whatever counter
/// it had) is replaced by `berth-<slot>+<tries>.conf` with the next generation, and
/// loader.conf names no fixed entry. The slot's files must already be in place.
pub fn stage_entry(esp: &Path, slot: char, tries: u32, image_version: &str) -> Result<(), String> {
    let entries = read_entries(esp)?;
    let next = entries.iter().map(Entry::generation).max().unwrap_or(0) + 1;
    let template = entries
        .iter()
        .find(|e| e.name.slot == slot)
        .map(|e| e.text.clone())
        .or_else(|| {
            let other = other_slot(slot);
            entries
                .iter()
                .find(|e| e.name.slot == other)
                .map(|e| for_slot(&e.text, other, slot))
        })
        .ok_or("the ESP has no berth loader entry to start from")?;
    let dir = esp.join("loader").join("entries");
    // Not `.conf` and starting with `.`: systemd-boot skips it if a cut leaves it there.
    let temporary = dir.join(format!(".berth-{slot}.new"));
    write_synced(
        &temporary,
        with_generation(&template, next, Some(image_version)).as_bytes(),
    )?;
    for old in entries.iter().filter(|e| e.name.slot == slot) {
        std::fs::remove_file(&old.path).map_err(|e| format!("{}: {e}", old.path.display()))?;
    }
    let staged = dir.join(format!("berth-{slot}+{tries}.conf"));
    std::fs::rename(&temporary, &staged).map_err(|e| format!("{}: {e}", staged.display()))?;
    write_loader_conf(esp)
}

/// How the running boot came about, from the entries on the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootKind {
    /// The booted slot's entry still has a boot counter: an update on trial.
    Trial,
    /// The other slot's entry is newer and its tries are spent: systemd-boot fell back to
    /// the booted slot.
    RolledBack { from: char },
    /// Neither: a committed slot.
    Committed,
}

/// What booting `slot` means, given the ESP's `entries`.
pub fn boot_kind(entries: &[Entry], slot: char) -> BootKind {
    let booted = entries.iter().find(|e| e.name.slot == slot);
    if booted.is_some_and(|e| e.name.tries_left.is_some()) {
        return BootKind::Trial;
    }
    let other = other_slot(slot);
    let booted_generation = booted.map_or(0, Entry::generation);
    match entries.iter().find(|e| e.name.slot == other) {
        Some(e) if e.name.is_bad() && e.generation() > booted_generation => {
            BootKind::RolledBack { from: other }
        }
        _ => BootKind::Committed,
    }
}

/// Blesses `slot`: its counted entry is renamed to `berth-<slot>.conf`, so systemd-boot
/// stops counting and keeps booting it (its generation is the highest). False when it had
/// no counter.
pub fn bless(esp: &Path, slot: char) -> Result<bool, String> {
    let entries = read_entries(esp)?;
    let Some(counted) = entries
        .iter()
        .find(|e| e.name.slot == slot && e.name.tries_left.is_some())
    else {
        return Ok(false);
    };
    let blessed = esp
        .join("loader")
        .join("entries")
        .join(format!("berth-{slot}.conf"));
    std::fs::rename(&counted.path, &blessed).map_err(|e| format!("{}: {e}", blessed.display()))?;
    Ok(true)
}

/// `berthctl rollback`: makes `slot` (the one not running) the newest, committed, so the
/// next boot starts it. Refused for a slot whose tries were spent: it never proved itself.
pub fn roll_back_to(esp: &Path, slot: char) -> Result<(), String> {
    let entries = read_entries(esp)?;
    let target = entries
        .iter()
        .find(|e| e.name.slot == slot)
        .ok_or_else(|| format!("slot {slot} has no loader entry"))?;
    if target.name.is_bad() {
        return Err(format!(
            "slot {slot} failed its boot tries: rolling back to it would boot a failed update"
        ));
    }
    let next = entries.iter().map(Entry::generation).max().unwrap_or(0) + 1;
    let dir = esp.join("loader").join("entries");
    let temporary = dir.join(format!(".berth-{slot}.new"));
    write_synced(
        &temporary,
        with_generation(&target.text, next, None).as_bytes(),
    )?;
    std::fs::remove_file(&target.path).map_err(|e| format!("{}: {e}", target.path.display()))?;
    let committed = dir.join(format!("berth-{slot}.conf"));
    std::fs::rename(&temporary, &committed).map_err(|e| format!("{}: {e}", committed.display()))?;
    write_loader_conf(esp)
}

/// `berthctl version`: a line per slot, the running one marked, newest first (the order
/// systemd-boot tries them in, a failed slot last).
pub fn describe(entries: &[Entry], running: char) -> Vec<String> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.name.is_bad(), std::cmp::Reverse(e.generation())));
    sorted
        .iter()
        .map(|e| {
            let state = match (e.name.tries_left, e.name.is_bad()) {
                (_, true) => "failed".to_string(),
                (Some(left), false) => format!("on-trial tries_left={left}"),
                (None, _) => "committed".to_string(),
            };
            format!(
                "slot={} version={} generation={} state={state}{}",
                e.name.slot,
                image_version_of(&e.text).unwrap_or("unknown"),
                e.generation(),
                if e.name.slot == running {
                    " running"
                } else {
                    ""
                }
            )
        })
        .collect()
}

/// Rewrites loader.conf as [`LOADER_CONF`] when it says anything else (an image from before
/// generations named `default berth-a.conf`, which would pin slot a).
fn write_loader_conf(esp: &Path) -> Result<(), String> {
    let path = esp.join("loader").join("loader.conf");
    let current = std::fs::read(&path).unwrap_or_default();
    if current == LOADER_CONF.as_bytes() {
        return Ok(());
    }
    let temporary = esp.join("loader").join(".loader.conf.new");
    write_synced(&temporary, LOADER_CONF.as_bytes())?;
    std::fs::rename(&temporary, &path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn entry_names_carry_slot_and_counter() {
        assert_eq!(
            EntryName::parse("berth-a.conf"),
            Some(EntryName {
                slot: 'a',
                tries_left: None,
                tries_done: None
            })
        );
        let trial = EntryName::parse("berth-b+2-1.conf").unwrap();
        assert_eq!((trial.tries_left, trial.tries_done), (Some(2), Some(1)));
        assert!(!trial.is_bad());
        let bad = EntryName::parse("berth-b+0-3.conf").unwrap();
        assert!(bad.is_bad());
        for other in [
            "berth-c.conf",
            "berth-a+x.conf",
            "loader.conf",
            "berth-a.conf.new",
        ] {
            assert_eq!(EntryName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_generation_replaces_the_old_one() {
        let text = "title berth (slot A)\nlinux /berth/a/vmlinuz\nversion 4\nsort-key x\n";
        let staged = with_generation(text, 5, Some("2.0"));
        assert_eq!(image_version_of(&staged), Some("2.0"));
        assert_eq!(
            image_version_of(&with_generation(&staged, 6, None)),
            Some("2.0")
        );
        assert_eq!(generation_of(&staged), 5);
        assert_eq!(
            staged.lines().filter(|l| l.starts_with("version ")).count(),
            1
        );
        assert!(staged.contains("sort-key berth\n"));
        assert_eq!(generation_of("title old\n"), 0);
    }

    #[test]
    fn an_entry_for_the_other_slot_names_its_files() {
        let a = "title berth (slot A)\nlinux /berth/a/vmlinuz\ninitrd /berth/a/initrd\noptions quiet berth.slot=a\n";
        let b = for_slot(a, 'a', 'b');
        assert_eq!(
            b,
            "title berth (slot B)\nlinux /berth/b/vmlinuz\ninitrd /berth/b/initrd\noptions quiet berth.slot=b\n"
        );
    }

    fn entry(file: &str, generation: u64) -> Entry {
        Entry {
            path: PathBuf::from(file),
            name: EntryName::parse(file).unwrap(),
            text: format!("sort-key berth\nversion {generation}\n"),
        }
    }

    #[test]
    fn a_boot_is_a_trial_a_fallback_or_committed() {
        let trial = [entry("berth-a.conf", 1), entry("berth-b+2-1.conf", 2)];
        assert_eq!(boot_kind(&trial, 'b'), BootKind::Trial);
        // The last try: systemd-boot counted it down to zero before booting it.
        let last = [entry("berth-a.conf", 1), entry("berth-b+0-3.conf", 2)];
        assert_eq!(boot_kind(&last, 'b'), BootKind::Trial);
        assert_eq!(boot_kind(&last, 'a'), BootKind::RolledBack { from: 'b' });
        let blessed = [entry("berth-a.conf", 1), entry("berth-b.conf", 2)];
        assert_eq!(boot_kind(&blessed, 'b'), BootKind::Committed);
        // An old failure under a newer committed slot is history, not a fallback.
        let old = [entry("berth-a.conf", 3), entry("berth-b+0-3.conf", 2)];
        assert_eq!(boot_kind(&old, 'a'), BootKind::Committed);
    }

    #[test]
    fn staging_gives_the_slot_the_next_generation_and_a_counter() {
        let esp = std::env::temp_dir().join(format!("berth-entries-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&esp);
        let entries = esp.join("loader").join("entries");
        std::fs::create_dir_all(&entries).unwrap();
        let a = "title berth (slot A)\nlinux /berth/a/vmlinuz\noptions berth.slot=a\nsort-key berth\nversion 1\n";
        std::fs::write(entries.join("berth-a.conf"), a).unwrap();
        std::fs::write(entries.join("berth-b+0-3.conf"), for_slot(a, 'a', 'b')).unwrap();
        std::fs::write(
            esp.join("loader").join("loader.conf"),
            "default berth-a.conf\n",
        )
        .unwrap();

        stage_entry(&esp, 'b', 3, "2.0").unwrap();

        let found = read_entries(&esp).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|e| e.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["berth-a.conf", "berth-b+3.conf"]);
        let b = found.iter().find(|e| e.name.slot == 'b').unwrap();
        assert_eq!(b.generation(), 2);
        assert!(b.text.contains("berth.slot=b"));
        assert_eq!(
            std::fs::read_to_string(esp.join("loader").join("loader.conf")).unwrap(),
            LOADER_CONF
        );
        assert!(bless(&esp, 'b').unwrap());
        assert!(entries.join("berth-b.conf").exists());
        assert!(!bless(&esp, 'b').unwrap(), "blessed once");
        assert_eq!(
            describe(&read_entries(&esp).unwrap(), 'b'),
            [
                "slot=b version=2.0 generation=2 state=committed running",
                "slot=a version=unknown generation=1 state=committed"
            ]
        );

        roll_back_to(&esp, 'a').unwrap();
        let after = read_entries(&esp).unwrap();
        let a = after.iter().find(|e| e.name.slot == 'a').unwrap();
        assert_eq!(a.generation(), 3);
        assert_eq!(boot_kind(&after, 'a'), BootKind::Committed);
        let _ = std::fs::remove_dir_all(&esp);
    }
}
