//! The hardware watchdog (`[watchdog]`): QEMU's i6300esb, armed and fed by init.
//!
//! The i6300esb is a PCI device, so both arches get it with `-device i6300esb` (aarch64's
//! `virt` has no watchdog of its own; its PCIe host takes this one). Its driver is a module
//! of Debian's generic kernels (`linux-image-arm64`, aarch64's default, and
//! `linux-image-amd64`) but not of the cloud amd64 kernel, x86_64's default, so the x86_64
//! tests boot the generic amd64 kernel.

use std::time::Duration;

use berth_arch::Arch;
use berth_image::kernel::{default_cache_dir, Kernel};
use berth_image::KernelChoice;
use berth_qemu::{GuestExit, Machine, MachineConfig};
use berth_tests::{
    berth_ctl_ok, build_image_with, log_dir, machine_config, start_to_ready, wait_line, wait_seen,
    SHUTDOWN_TIMEOUT,
};

/// Short, so a test sees a reset (or its absence) in seconds.
const TIMEOUT_S: u64 = 5;
const WATCHDOG_MANIFEST: &str = "[watchdog]\ntimeout = 5\n";
/// What TCG adds, at worst, between the reset and QEMU's exit being seen.
const RESET_SLACK: Duration = Duration::from_secs(10);

/// A kernel with the i6300esb driver for `arch`.
fn kernel_with_i6300esb(arch: Arch) -> Option<KernelChoice> {
    match arch {
        Arch::X86_64 => {
            let kernel = Kernel::debian(arch, "linux-image-amd64", &default_cache_dir())
                .unwrap_or_else(|e| panic!("the generic amd64 kernel: {e}"));
            Some(KernelChoice::Paths {
                image: kernel.image,
                modules_dir: kernel.modules_dir,
            })
        }
        Arch::Aarch64 => None,
    }
}

/// A guest with an i6300esb, booted with `append` on its command line, up to `ready`; its
/// control port is wired so `ps` can be asked.
fn boot_with_watchdog(arch: Arch, test: &str, append: &[&str]) -> (Machine, MachineConfig) {
    let dir = log_dir(test);
    let image = build_image_with(
        arch,
        WATCHDOG_MANIFEST,
        &dir,
        kernel_with_i6300esb(arch),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    config
        .extra_args
        .extend(["-device".to_string(), "i6300esb".to_string()]);
    config
        .append
        .extend(append.iter().map(|parameter| parameter.to_string()));
    config.control_socket = Some(dir.join("control.sock"));
    (start_to_ready(&config), config)
}

/// With the test parameter init arms the watchdog and never feeds it: QEMU resets the guest
/// within the timeout (QEMU's `WATCHDOG` event, action `reset`), and nothing in the guest
/// asked for a reboot. Seen failing with the parameter ignored by `cmdline.rs`: armed with
/// `feeding=true`.
fn an_unfed_watchdog_resets_the_guest(arch: Arch) {
    let (mut machine, _) = boot_with_watchdog(
        arch,
        &format!("watchdog-nofeed-{arch}"),
        &["berth.test_watchdog_nofeed=1"],
    );
    // Armed before `ready`, which the boot waited for.
    let armed = wait_seen(&machine, r"^berth event=watchdog-armed ");
    let ctx = format!("console: {}", machine.console_log().display());
    assert!(
        armed.contains("device=/dev/watchdog0")
            && armed.contains(&format!("timeout={TIMEOUT_S} "))
            && armed.contains("feeding=false"),
        "{armed}; {ctx}"
    );
    // Not at once, for another reason: the timer runs its course first.
    assert!(
        machine.wait_exit(Duration::from_secs(2)).is_err(),
        "the guest ended right after arming, before the timeout; {ctx}"
    );
    let exit = machine
        .wait_exit(Duration::from_secs(TIMEOUT_S) + RESET_SLACK)
        .unwrap_or_else(|e| panic!("no reset within the timeout: {e}"));
    assert_eq!(
        exit,
        GuestExit::Reboot,
        "a reset ends QEMU as a reboot; {ctx}"
    );
    let watchdog_fired = machine.qmp_events().iter().any(|event| {
        event.get("event").and_then(|e| e.as_str()) == Some("WATCHDOG")
            && event.pointer("/data/action").and_then(|a| a.as_str()) == Some("reset")
    });
    assert!(
        watchdog_fired,
        "QEMU reports the watchdog's reset: {:?}; {ctx}",
        machine.qmp_events()
    );
    let console = machine.console_text();
    assert!(
        !console.contains("berth event=shutdown "),
        "the guest did not ask for it: the hardware reset it; {ctx}"
    );
}

/// Fed, the guest runs three times the timeout without a reset, and `ps` names the watchdog;
/// halted cleanly (the machine stays on), the disarmed watchdog never resets it. Seen failing
/// with the feeding removed from the event loop (reset after the timeout) and with the magic
/// close removed from the shutdown (the kernel's "watchdog did not stop!"; the halted guest
/// stayed up all the same, the kernel stopping this driver at halt).
fn a_fed_watchdog_never_resets_and_a_halt_disarms_it(arch: Arch) {
    let (mut machine, config) = boot_with_watchdog(
        arch,
        &format!("watchdog-fed-{arch}"),
        &["berth.power_button=halt"],
    );
    let armed = wait_seen(&machine, r"^berth event=watchdog-armed ");
    let ctx = format!("console: {}", machine.console_log().display());
    assert!(armed.contains("feeding=true"), "{armed}; {ctx}");
    assert!(
        machine
            .wait_exit(Duration::from_secs(3 * TIMEOUT_S))
            .is_err(),
        "a fed watchdog reset the guest; {ctx}"
    );
    let socket = config.control_socket.clone().unwrap_or_default();
    let ps = berth_ctl_ok(&socket, &["ps"]);
    assert_eq!(
        ps.lines().next(),
        Some("watchdog: /dev/watchdog0 timeout 5s fed"),
        "{ps}"
    );
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_line(
        &mut machine,
        r"^berth event=watchdog-disarmed device=/dev/watchdog0",
    );
    wait_line(&mut machine, r"System halted");
    // The i6300esb driver also has the kernel stop it at halt and reboot
    // (`watchdog_stop_on_reboot`), so the halted guest staying up does not by itself show the
    // magic close; the kernel's complaint at a close without it does.
    assert!(
        !machine.console_text().contains("watchdog did not stop"),
        "init closed the watchdog without the magic close; {ctx}"
    );
    assert!(
        machine
            .wait_exit(Duration::from_secs(3 * TIMEOUT_S))
            .is_err(),
        "the halted guest was reset: the watchdog stayed armed; {ctx}"
    );
    machine
        .quit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn x86_64_an_unfed_watchdog_resets_the_guest() {
    an_unfed_watchdog_resets_the_guest(Arch::X86_64);
}

#[test]
fn aarch64_an_unfed_watchdog_resets_the_guest() {
    an_unfed_watchdog_resets_the_guest(Arch::Aarch64);
}

#[test]
fn x86_64_a_fed_watchdog_never_resets_and_a_halt_disarms_it() {
    a_fed_watchdog_never_resets_and_a_halt_disarms_it(Arch::X86_64);
}

#[test]
fn aarch64_a_fed_watchdog_never_resets_and_a_halt_disarms_it() {
    a_fed_watchdog_never_resets_and_a_halt_disarms_it(Arch::Aarch64);
}
