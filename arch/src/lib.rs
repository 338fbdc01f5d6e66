//! The one place that knows how x86_64 and aarch64 differ.
//!
//! Every other crate asks an [`Arch`] for the value it needs (Rust target, kernel package,
//! QEMU machine, console device, power-button drivers) instead of branching on the arch itself,
//! so supporting a third arch means editing this file alone.

use std::fmt;
use std::str::FromStr;

/// A guest architecture berth builds and boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// An arch name that berth does not support.
#[derive(Debug, thiserror::Error)]
#[error("unknown arch `{0}`: expected one of x86_64, aarch64")]
pub struct UnknownArch(String);

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The arch of the machine this program runs on, if berth supports it.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The Rust target every guest binary is built for: static musl.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// Debian's name for the arch, as used in `pkg:arch`.
    pub fn debian_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The ELF `e_machine` of binaries for this arch (EM_X86_64, EM_AARCH64).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// The Debian metapackage of the default kernel.
    ///
    /// x86_64 takes the cloud kernel: it boots fastest and has the ACPI button as a module.
    /// aarch64 takes the generic kernel, not the cloud one: under direct kernel boot QEMU's
    /// `virt` machine wires its power button as a `gpio-keys` device, and only the generic
    /// kernel builds that driver (`CONFIG_KEYBOARD_GPIO=m`; the cloud kernel leaves it unset).
    /// It also reaches `/init` sooner here (7.6 s against 9.8 s under TCG with `-cpu max`).
    pub fn default_kernel_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux-image-cloud-amd64",
            Arch::Aarch64 => "linux-image-arm64",
        }
    }

    /// Kernel modules init must load for the power button to reach it as `KEY_POWER`.
    pub fn power_button_modules(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["button", "evdev"],
            Arch::Aarch64 => &["gpio_keys", "evdev"],
        }
    }

    /// The serial console the kernel and init write to.
    pub fn console_device(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// Where UEFI looks for a boot loader on removable media (and on a disk with no boot
    /// entry of its own): the path berth's ESP puts systemd-boot at.
    pub fn efi_removable_path(self) -> &'static str {
        match self {
            Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Aarch64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// systemd-boot in Debian's `systemd-boot-efi` package for this arch.
    pub fn systemd_boot_path(self) -> &'static str {
        match self {
            Arch::X86_64 => "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            Arch::Aarch64 => "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        }
    }

    /// UEFI firmware for QEMU from Debian's `ovmf` and `qemu-efi-aarch64`: the code (read
    /// only) and a variable store template (copied per machine).
    pub fn uefi_firmware(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            Arch::Aarch64 => (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            ),
        }
    }

    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// Machine and CPU flags. Under TCG the CPU is `max`; on aarch64 with the cheap
    /// implementation-defined pointer authentication, since emulating the architected QARMA
    /// cipher makes the kernel boot four times slower (measured: ready at 7.0 s against
    /// 1.7 s) while the guest sees the same features. With KVM the host's CPU is used.
    /// Machine and CPU flags for a guest on an older, plainer CPU than `max`, so that
    /// what `max` hides is seen: on x86_64 QEMU's own default model (`qemu64`, no SSE4.2, so
    /// `crc32c-intel` refuses to load); on aarch64 `cortex-a57`, the oldest 64-bit model,
    /// since the virt board's default (`cortex-a15`) is 32-bit and cannot run an arm64
    /// kernel.
    pub fn qemu_default_cpu_args(self) -> Vec<&'static str> {
        match self {
            Arch::X86_64 => vec!["-M", "q35"],
            Arch::Aarch64 => vec!["-M", "virt", "-cpu", "cortex-a57"],
        }
    }

    pub fn qemu_machine_args(self, kvm: bool) -> Vec<&'static str> {
        match (self, kvm) {
            (Arch::X86_64, false) => vec!["-M", "q35", "-cpu", "max"],
            (Arch::X86_64, true) => vec!["-M", "q35,accel=kvm", "-cpu", "host"],
            (Arch::Aarch64, false) => vec!["-M", "virt", "-cpu", "max,pauth-impdef=on"],
            (Arch::Aarch64, true) => vec!["-M", "virt,accel=kvm", "-cpu", "host"],
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(UnknownArch(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings_and_round_trips() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().ok(), Some(arch));
            assert_eq!(arch.debian_arch().parse::<Arch>().ok(), Some(arch));
        }
        assert!("riscv64".parse::<Arch>().is_err());
    }
}
