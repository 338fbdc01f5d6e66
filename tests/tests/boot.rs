//! The foundation: an image boots on each arch, says it is ready, and powers off cleanly on
//! the power button.

use berth_arch::Arch;
use berth_qemu::GuestExit;
use berth_tests::{boot, boot_to_ready, pattern, READY_PATTERN, READY_TIMEOUT, SHUTDOWN_TIMEOUT};

const MANIFEST: &str = "hostname = \"boot-test\"\n";

fn boots_to_ready_and_powers_off_on_the_button(arch: Arch) {
    let test = format!("boot-{arch}");
    let mut machine = boot(arch, MANIFEST, &test).unwrap_or_else(|e| panic!("{e}"));
    let ready = machine
        .wait_for_line(&pattern(READY_PATTERN), READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready.text.contains("hostname=boot-test"),
        "ready line names the manifest's hostname: {}",
        ready.text
    );
    assert!(
        ready.text.contains("power_button=true"),
        "init found the power button before ready: {}; console: {}",
        ready.text,
        machine.console_log().display()
    );
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    machine
        .wait_for_line(
            &pattern(r"^berth event=shutdown action=poweroff reason=power-button"),
            SHUTDOWN_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = machine
        .wait_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        exit,
        GuestExit::PowerOff,
        "QEMU exits by itself with a clean power-off; console: {}",
        machine.console_log().display()
    );
    let console = machine.console_text();
    assert!(
        !console.contains("Kernel panic"),
        "no kernel panic; console: {}",
        machine.console_log().display()
    );
    assert!(console.contains("berth event=shutdown-complete action=poweroff"));
}

#[test]
fn x86_64_boots_to_ready_and_powers_off_on_the_button() {
    boots_to_ready_and_powers_off_on_the_button(Arch::X86_64);
}

#[test]
fn aarch64_boots_to_ready_and_powers_off_on_the_button() {
    boots_to_ready_and_powers_off_on_the_button(Arch::Aarch64);
}

#[test]
fn qmp_quit_ends_the_guest_without_a_guest_shutdown() {
    let mut machine = boot_to_ready(Arch::X86_64, MANIFEST, "boot-qmp-quit");
    let exit = machine
        .quit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::Other("host-qmp-quit".to_string()));
    assert!(!machine.console_text().contains("event=shutdown "));
}
