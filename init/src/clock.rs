//! Time since the kernel started, the clock every boot figure is measured on.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Time since the kernel started booting (CLOCK_BOOTTIME), or zero if the clock is unreadable.
pub fn since_kernel_start() -> Duration {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}
