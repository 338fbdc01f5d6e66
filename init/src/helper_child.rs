//! Children of init that do untrusted or slow work for it (unpacking layers, asking the
//! metadata service): forked from PID 1, cut loose from it, and ended with `_exit`, so that
//! whatever they meet costs a child process, never PID 1.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::ForkResult;

/// The nice value of a helper child: containers and init's own work come first.
const HELPER_NICE: i32 = 10;

/// Cuts the child loose from PID 1: its own session (a `kill(0, ...)` to init's process group
/// must not reach it, nor one from it reach init), the signals init blocks for its signalfd
/// unblocked (so shutdown's SIGTERM ends it), no descriptor of init's but `keep` (a control
/// connection held open here would keep its client waiting), and a lower priority.
pub fn detach_from_init(keep: RawFd) {
    let _ = nix::unistd::setsid();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    close_descriptors_but(keep);
    // SAFETY: setpriority(2) changes this process's nice value and touches no memory.
    let _ = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, HELPER_NICE) };
}

/// Closes every descriptor above stderr except `keep`.
fn close_descriptors_but(keep: RawFd) {
    let Ok(keep) = nix::libc::c_uint::try_from(keep) else {
        return;
    };
    let close_range = |first: nix::libc::c_uint, last: nix::libc::c_uint| {
        if first <= last {
            // SAFETY: close_range(2) only closes descriptors. Nothing in this process uses
            // them again: the child goes on with `keep` and what it opens itself, and ends in
            // `_exit`, so no owner of a closed descriptor closes it a second time.
            let _ = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, first, last, 0) };
        }
    };
    close_range(3, keep.saturating_sub(1));
    close_range(keep.saturating_add(1), nix::libc::c_uint::MAX);
}

/// Ends a helper child at once with `code`.
pub fn exit(code: i32) -> ! {
    // SAFETY: `_exit` ends this process at once, without running exit handlers or
    // destructors: those of this copy of init's memory are init's, not the child's.
    unsafe { nix::libc::_exit(code) }
}

/// Runs `work` in a helper child and waits for its text answer, at most `limit` bytes of it,
/// until `deadline`: for the boot, before the event loop serves anything. Past the deadline
/// the child is killed. The answer is what `work` returned, or why there is none.
pub fn run_until(
    what: &str,
    deadline: Instant,
    limit: usize,
    work: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    let cannot = |e: nix::Error| format!("{what}: cannot start a helper process: {e}");
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(cannot)?;
    // SAFETY: init is single-threaded, so no lock (the allocator's, the logger's) is held by
    // another thread at the fork that the child could wait on forever. The child runs only
    // `work` and ends in `_exit`, never returning into init's code.
    match unsafe { nix::unistd::fork() }.map_err(cannot)? {
        ForkResult::Child => {
            drop(read);
            let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
                detach_from_init(write.as_raw_fd());
                work()
            }));
            let (code, text) = match answer {
                Ok(Ok(text)) => (0, text),
                Ok(Err(text)) => (1, text),
                Err(_) => (1, format!("{what}: the helper process panicked")),
            };
            let bounded = text.get(..limit).unwrap_or(text.as_str());
            let mut file = std::fs::File::from(write);
            // The pipe is non-blocking: a large answer is written as the parent reads it.
            let _ = set_blocking(&file);
            let _ = file.write_all(bounded.as_bytes());
            exit(code)
        }
        ForkResult::Parent { child } => {
            drop(write);
            let (answer, finished) = read_until(read, deadline, limit);
            if !finished {
                let _ = kill(child, Signal::SIGKILL);
            }
            let status = waitpid(child, None);
            if !finished {
                return Err(format!("{what}: no answer in time; given up"));
            }
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(answer),
                _ => Err(answer),
            }
        }
    }
}

/// What an exited child left in the pipe `read`, at most `limit` bytes, without waiting for
/// more: `read` must be non-blocking, so that a descriptor the child passed on (a grandchild
/// still holding the write end) cannot make init wait for an end of file.
pub fn read_available(read: OwnedFd, limit: usize) -> String {
    let mut bytes = Vec::new();
    // A read that would block ends it, with what came before kept.
    let _ = std::fs::File::from(read)
        .take(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sets O_NONBLOCK on one end of a pipe (the other end, a child's stdout, stays blocking).
pub fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop)
}

fn set_blocking(file: &std::fs::File) -> nix::Result<()> {
    let flags = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) & !OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop)
}

/// Reads `read` until end of file (true) or `deadline` (false), keeping `limit` bytes.
fn read_until(read: OwnedFd, deadline: Instant, limit: usize) -> (String, bool) {
    let mut file = std::fs::File::from(read);
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&kept).into_owned(), false);
        }
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&file),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return (String::from_utf8_lossy(&kept).into_owned(), false),
        }
        match file.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&kept).into_owned(), true),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (String::from_utf8_lossy(&kept).into_owned(), true),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::time::Duration;

    /// berth-pull's result read after it exited, while something (a grandchild) still holds
    /// the pipe's write end: what is there comes back at once, and no end of file is waited
    /// for. Seen hanging with the blocking `read_to_string` init used for pulls.
    #[test]
    fn what_an_exited_child_left_is_read_without_waiting_for_the_end() {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(&read).unwrap();
        let mut held_open = std::fs::File::from(write);
        held_open.write_all(b"{\"ok\":true}\n").unwrap();
        let started = Instant::now();
        assert_eq!(read_available(read, 64), "{\"ok\":true}\n");
        assert!(started.elapsed() < Duration::from_secs(1));
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(&read).unwrap();
        std::fs::File::from(write).write_all(&[b'x'; 100]).unwrap();
        assert_eq!(read_available(read, 10).len(), 10, "bounded");
        drop(held_open);
    }

    #[test]
    fn the_answer_comes_back_and_a_child_past_its_deadline_is_killed() {
        let soon = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            run_until("t", soon, 64, || Ok("fine".into())).unwrap(),
            "fine"
        );
        assert_eq!(
            run_until("t", soon, 64, || Err("bad".into())).unwrap_err(),
            "bad"
        );
        let bounded = run_until("t", soon, 4, || Ok("0123456789".into())).unwrap();
        assert_eq!(bounded, "0123");
        let started = Instant::now();
        let stuck = run_until("t", started + Duration::from_millis(300), 64, || {
            std::thread::sleep(Duration::from_secs(30));
            Ok(String::new())
        });
        assert!(stuck.unwrap_err().contains("no answer in time"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
