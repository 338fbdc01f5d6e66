//! The client's own terminal during `exec -t`: its size, raw mode (restored on every way
//! out), and its size changes (SIGWINCH) forwarded to the guest's pseudo-terminal.

use std::io::Write;
use std::sync::{Arc, Mutex};

use berth_control::{to_line, ExecInput, TtySize, VERSION};
use nix::sys::termios::{self, SetArg, Termios};
use signal_hook::consts::{SIGHUP, SIGTERM, SIGWINCH};
use signal_hook::iterator::{Handle, Signals};

nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::libc::winsize);

/// The size of the terminal on stdin, if stdin is one.
pub(crate) fn size() -> Option<TtySize> {
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points at a
    // live, properly aligned `winsize` owned by this frame; fd 0 is only read.
    let result = unsafe { tiocgwinsz(nix::libc::STDIN_FILENO, &mut size) };
    match result {
        Ok(_) if size.ws_row > 0 && size.ws_col > 0 => Some(TtySize {
            rows: size.ws_row,
            cols: size.ws_col,
        }),
        _ => None,
    }
}

/// stdin's terminal in raw mode (no echo, no line editing, Ctrl-C a byte for the guest)
/// until this is dropped, which puts back the settings it found.
#[derive(Debug)]
pub(crate) struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub(crate) fn enter() -> Result<RawMode, String> {
        let stdin = std::io::stdin();
        let saved =
            termios::tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal: {e}"))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| format!("cannot put the terminal in raw mode: {e}"))?;
        Ok(RawMode { saved })
    }

    fn saved(&self) -> Termios {
        self.saved.clone()
    }
}

fn restore(saved: &Termios) {
    // Nothing more can be done if the terminal refuses its own settings back.
    let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore(&self.saved);
    }
}

/// Forwards each SIGWINCH as a `resize` on `writer`; in raw mode, also catches SIGTERM and
/// SIGHUP to restore the terminal before dying of the signal as if it had no handler.
/// Closing the handle stops it.
pub(crate) fn follow_resizes(
    raw: Option<&RawMode>,
    writer: Arc<Mutex<dyn Write + Send>>,
) -> Result<Handle, String> {
    let saved = raw.map(RawMode::saved);
    let watched: &[i32] = match saved {
        Some(_) => &[SIGWINCH, SIGTERM, SIGHUP],
        None => &[SIGWINCH],
    };
    let mut signals =
        Signals::new(watched).map_err(|e| format!("cannot watch the terminal's size: {e}"))?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal != SIGWINCH {
                if let Some(saved) = &saved {
                    restore(saved);
                }
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                continue;
            }
            let Some(size) = size() else { continue };
            let line = to_line(&ExecInput {
                v: VERSION,
                resize: Some(size),
                ..ExecInput::default()
            });
            let sent = match writer.lock() {
                Ok(mut w) => w.write_all(line.as_bytes()).and_then(|()| w.flush()),
                Err(_) => return,
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(handle)
}
