//! What `stats`, `top` and `dmesg` read: the containers' cgroups and the kernel's log.

use berth_control::ContainerStats;

/// A container's cgroup, as the supervisor makes it.
fn cgroup_of(name: &str) -> std::path::PathBuf {
    std::path::Path::new(crate::supervisor::CGROUP_PARENT).join(name)
}

pub fn cgroup_stats(name: &str) -> ContainerStats {
    let dir = cgroup_of(name);
    let number = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    };
    let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
    ContainerStats {
        name: name.to_string(),
        memory_bytes: number("memory.current"),
        cpu_usec,
        pids: number("pids.current"),
    }
}

/// `PID COMMAND` of each process in the container's cgroup.
pub fn top(name: &str) -> Vec<String> {
    let procs = std::fs::read_to_string(cgroup_of(name).join("cgroup.procs")).unwrap_or_default();
    let mut lines = vec!["PID COMMAND".to_string()];
    for pid in procs.lines().filter(|l| !l.is_empty()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let command = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        lines.push(format!("{pid} {command}"));
    }
    lines
}

/// The kernel log's records as `[seconds] message`, the last `tail` of them.
pub fn dmesg(tail: Option<usize>) -> Vec<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut record = vec![0u8; 8192];
    // Each read returns one record; EAGAIN ends the buffer, EPIPE means one was overwritten.
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(record.get(..n).unwrap_or_default());
                let (header, message) = text.split_once(';').unwrap_or(("", &text));
                let micros: u64 = header
                    .split(',')
                    .nth(2)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let message = message.lines().next().unwrap_or_default();
                lines.push(format!(
                    "[{:>5}.{:06}] {message}",
                    micros / 1_000_000,
                    micros % 1_000_000
                ));
            }
            Err(err) if err.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
    lines.split_off(skip.min(lines.len()))
}
