//! The power button: an input device that reports `KEY_POWER`.
//!
//! On x86_64 it is ACPI's "Power Button" (driver `button`), on aarch64 `virt` a `gpio-keys`
//! device. Both reach userspace through evdev; devices are found by what they can report,
//! never by a fixed event number, since the numbering depends on probe order.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// `KEY_POWER` from `linux/input-event-codes.h`.
const KEY_POWER: u32 = 116;
/// `EV_KEY` event type.
const EV_KEY: u16 = 1;
/// Key event value for a press (0 is release, 2 auto-repeat).
const KEY_PRESSED: i32 = 1;
/// `struct input_event` on 64-bit Linux: a 16-byte timeval, then type, code and value.
const INPUT_EVENT_SIZE: usize = 24;
/// Bits per word of the capability bitmaps in sysfs (an `unsigned long`).
const BITMAP_WORD_BITS: u32 = 64;
/// Events read per `read(2)`.
const EVENTS_PER_READ: usize = 16;

pub const SYS_CLASS_INPUT: &str = "/sys/class/input";

/// An open input device that can report the power key.
#[derive(Debug)]
pub struct PowerButton {
    pub node: String,
    pub name: String,
    pub file: File,
    /// Why reading it failed for good (the device was removed): the event loop drops it,
    /// since a removed evdev node polls ready forever and would spin the loop.
    pub gone: Option<String>,
}

/// True when a sysfs key-capability bitmap (`ffff 0 ...`, most significant word first)
/// has `bit` set.
fn bitmap_has(bitmap: &str, bit: u32) -> bool {
    let word_from_end = (bit / BITMAP_WORD_BITS) as usize;
    bitmap
        .split_whitespace()
        .rev()
        .nth(word_from_end)
        .and_then(|word| u64::from_str_radix(word, 16).ok())
        .is_some_and(|word| word & (1 << (bit % BITMAP_WORD_BITS)) != 0)
}

/// Opens every `eventN` device under `sys_input` that reports `KEY_POWER` and is not in
/// `known`.
pub fn find_new(sys_input: &Path, known: &HashSet<String>) -> Vec<PowerButton> {
    let Ok(entries) = std::fs::read_dir(sys_input) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let node = entry.file_name().to_string_lossy().into_owned();
        if !node.starts_with("event") || known.contains(&node) {
            continue;
        }
        let device = entry.path().join("device");
        let keys = std::fs::read_to_string(device.join("capabilities/key")).unwrap_or_default();
        if !bitmap_has(&keys, KEY_POWER) {
            continue;
        }
        let name = std::fs::read_to_string(device.join("name"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        match open_event_node(&entry.path(), &node) {
            Ok(file) => found.push(PowerButton {
                node,
                name,
                file,
                gone: None,
            }),
            Err(err) => log::warn!("power button {node} ({name}) cannot be opened: {err}"),
        }
    }
    found
}

/// Opens `/dev/input/<node>`, creating the node from sysfs' `dev` if devtmpfs has not.
fn open_event_node(sys_entry: &Path, node: &str) -> std::io::Result<File> {
    let dev_path = PathBuf::from("/dev/input").join(node);
    let open = || {
        OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&dev_path)
    };
    match open() {
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let numbers = std::fs::read_to_string(sys_entry.join("dev"))?;
            let (major, minor) = numbers
                .trim()
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| std::io::Error::other(format!("bad dev numbers `{numbers}`")))?;
            std::fs::create_dir_all("/dev/input")?;
            mknod(
                &dev_path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                makedev(major, minor),
            )?;
            open()
        }
        other => other,
    }
}

impl PowerButton {
    /// Drains pending events; true if the power key was pressed among them.
    pub fn pressed(&mut self) -> bool {
        let mut buf = [0u8; INPUT_EVENT_SIZE * EVENTS_PER_READ];
        let mut pressed = false;
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return pressed,
                Ok(n) => pressed |= contains_power_press(buf.get(..n).unwrap_or_default()),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => return pressed,
                Err(err) => {
                    self.gone = Some(err.to_string());
                    return pressed;
                }
            }
        }
    }
}

fn contains_power_press(events: &[u8]) -> bool {
    events.chunks_exact(INPUT_EVENT_SIZE).any(|event| {
        let field = |range: std::ops::Range<usize>| event.get(range).unwrap_or_default();
        let kind = field(16..18).try_into().map(u16::from_ne_bytes);
        let code = field(18..20).try_into().map(u16::from_ne_bytes);
        let value = field(20..24).try_into().map(i32::from_ne_bytes);
        matches!((kind, code, value), (Ok(EV_KEY), Ok(c), Ok(KEY_PRESSED)) if u32::from(c) == KEY_POWER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::unwrap_used, reason = "tests")]
    fn a_button_whose_reads_fail_is_marked_gone() {
        // Reading a directory fails (EISDIR) as reading a removed evdev node does (ENODEV).
        let mut button = PowerButton {
            node: "event9".into(),
            name: "test".into(),
            file: File::open("/").unwrap(),
            gone: None,
        };
        assert!(!button.pressed());
        assert!(button.gone.is_some());
    }

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut bytes = vec![0u8; 16];
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(code.to_ne_bytes());
        bytes.extend(value.to_ne_bytes());
        bytes
    }

    #[test]
    fn finds_key_power_in_capability_bitmaps() {
        // ACPI "Power Button" on q35: only KEY_POWER (bit 116 = word 1, bit 52).
        assert!(bitmap_has("10000000000000 0", KEY_POWER));
        // An AT keyboard has many keys but is checked bit by bit.
        assert!(!bitmap_has("0 0", KEY_POWER));
        assert!(!bitmap_has("", KEY_POWER));
    }

    #[test]
    fn a_press_is_seen_and_a_release_is_not() {
        let mut events = event(EV_KEY, 116, 0);
        assert!(!contains_power_press(&events));
        events.extend(event(0, 0, 0));
        events.extend(event(EV_KEY, 116, 1));
        assert!(contains_power_press(&events));
        assert!(!contains_power_press(&event(EV_KEY, 115, 1)));
    }
}
