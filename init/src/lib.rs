//! berth's PID 1.
//!
//! The boot sequence reads top to bottom in [`run`]: mount the kernel's filesystems, start
//! logging, read the manifest, set the hostname, load kernel modules, find the power button,
//! say "ready", then serve events until a shutdown is asked for. PID 1 never returns and never
//! panics on purpose: a failed step is logged and the host goes on in a degraded state that
//! still answers the power button, and a panic that slips through is caught at the top of the
//! event loop.

mod boot;
mod boot_entries;
mod clock;
mod clock_floor;
mod cmdline;
mod coldplug;
mod config_source;
mod control;
mod data_partition;
mod esp_mount;
pub mod event;
mod event_loop;
mod helper_child;
mod host_setup;
mod images;
mod journal;
pub mod kmod;
mod logger;
mod metadata;
pub mod mounts;
mod power_button;
mod reap;
mod root_switch;
mod services;
mod shutdown;
mod signals;
mod storage;
pub mod supervisor;
mod update;
pub mod update_helper;
mod watchdog;

/// Runs PID 1. Never returns.
pub fn run() -> ! {
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!("berth init: must run as PID 1 (the kernel's init); refusing to start");
        std::process::exit(1);
    }
    boot::boot_and_serve()
}
