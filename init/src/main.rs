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
    if name == Some("berth-update".as_ref()) {
        return berth_init::update_helper::run();
    }
    if let Some(signal) = name.and_then(power_verb_signal) {
        return ask_init(signal);
    }
    berth_init::run()
}

/// The signal that asks init for the shutdown `/sbin/poweroff`, `/sbin/reboot` or
/// `/sbin/halt` names (init's signal table); the kernel runs `/sbin/poweroff` for an
/// orderly power-off it wants (a thermal trip, `orderly_poweroff`).
fn power_verb_signal(name: &std::ffi::OsStr) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    match name.to_str()? {
        "poweroff" => Some(Signal::SIGUSR2),
        "reboot" => Some(Signal::SIGTERM),
        "halt" => Some(Signal::SIGUSR1),
        _ => None,
    }
}

fn ask_init(signal: nix::sys::signal::Signal) -> ExitCode {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), signal) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cannot send {signal} to init (PID 1): {err}");
            ExitCode::FAILURE
        }
    }
}
