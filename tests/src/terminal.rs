//! A client of the guest on a pseudo-terminal of the test machine, as an operator's `exec -it`
//! runs: its stdin, stdout and stderr on the pty's slave, the test reading and typing on the
//! master.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `command` on a new pty; returns it and the master side, non-blocking.
pub fn spawn_on_pty(mut command: Command) -> (Child, File) {
    let pty = nix::pty::openpty(None, None).unwrap_or_else(|e| panic!("{e}"));
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap_or_else(|e| panic!("{e}")));
    let child = command
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    drop(pty.slave);
    let master = File::from(pty.master);
    let flags =
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).unwrap_or_else(|e| panic!("{e}"));
    let _ = nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    );
    (child, master)
}

/// Reads the terminal into `seen` until it holds `wanted`; 30 s at most.
pub fn read_until(master: &mut File, seen: &mut String, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !seen.contains(wanted) {
        assert!(
            Instant::now() < deadline,
            "no `{wanted}` on the terminal: {seen:?}"
        );
        match master.read(&mut buf) {
            Ok(0) => panic!("the terminal closed before `{wanted}`: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(buf.get(..n).unwrap_or_default())),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(err) => panic!("read the terminal: {err}; {seen:?}"),
        }
    }
}

/// Waits (30 s at most) for `child` to end, draining the terminal meanwhile; its exit code.
pub fn wait_exit(child: &mut Child, master: &mut File, seen: &str) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the terminal's client did not end: {seen:?}"
        );
        let _ = master.read(&mut [0u8; 4096]);
        std::thread::sleep(Duration::from_millis(50));
    }
}
