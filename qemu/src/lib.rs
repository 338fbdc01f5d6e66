//! The QEMU rig: boots a berth image, records its serial console, and talks QMP to it.
//!
//! Tests and benchmarks drive a guest through [`Machine`]: wait for a console line with a
//! deadline, press the power button, wait for QEMU to exit and learn how the guest ended.
//! Every machine writes its whole console to `console.log` in its log directory, and every
//! error names that file, so a failed test leaves its evidence behind.

mod console;
pub mod events;
mod machine;
mod qmp;

pub use console::ConsoleLine;
pub use machine::{kvm_usable, DiskBoot, GuestExit, HostForward, Machine, MachineConfig, RigError};
pub use qmp::Qmp;

/// Defaults shared by the rig and the `berth run` command line.
pub mod machine_defaults {
    /// Guest RAM. The x86_64 cloud kernel alone needs 72 MiB.
    pub const MEMORY_MIB: u32 = 256;
}
