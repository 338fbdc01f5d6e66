//! berth's guest binary. As PID 1 it is init (everything lives in `berth_init::run`). The
//! same file is netd and berthctl too, chosen by the name it is started under, as busybox
//! does: the image installs `/usr/lib/berth/netd` and `/usr/bin/berthctl` as links to `/init`.
//! One static binary carries one copy of std, serde, toml, the manifest model and netlink
//! instead of three, and the initrd, which the kernel keeps in RAM, is about 3 MB smaller.

use std::process::ExitCode;

fn main() -> ExitCode {
    // By name only, not by PID: `berthctl` is often PID 1 of a container (a shell's last
    // command is exec'd), and the kernel starts berth's init as `/init`.
    let program = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&program).file_name();
    if name == Some("netd".as_ref()) {
        return berth_netd::run();
    }
    if name == Some("berthctl".as_ref()) {
        return berth_ctl::run_berthctl();
    }
    berth_init::run()
}
