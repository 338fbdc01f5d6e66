//! `berth run`: boot a built image under QEMU with the console on this terminal.
//!
//! Ctrl-C presses the guest's power button, so the guest shuts down cleanly; a second Ctrl-C
//! pulls the plug. The guest always gets init's control port, served on
//! [`control_socket`]`(dir)` for `berth ctl --image DIR`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_qemu::{GuestExit, Machine, MachineConfig, RigError};

use crate::assemble::{read_metadata, BuildError};

/// How often the run loop looks at QEMU and at Ctrl-C.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A guest silent this long is said to be still starting.
const SILENCE_NOTE: Duration = Duration::from_secs(5);
/// The control port's socket, in the image's directory.
const CONTROL_SOCKET: &str = "control.sock";

/// Where `berth run DIR` serves the guest's control port: `DIR/control.sock`.
pub fn control_socket(dir: &Path) -> PathBuf {
    dir.join(CONTROL_SOCKET)
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dir: PathBuf,
    /// Overrides the arch recorded in `image.json`.
    pub arch: Option<Arch>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Option<Duration>,
    pub append: Vec<String>,
    /// `--publish`: TCP ports of this machine forwarded to the guest.
    pub publish: Vec<berth_qemu::HostForward>,
    pub qemu_args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Exited(GuestExit),
    TimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{} is not a berth image: {source}", dir.display())]
    NotAnImage {
        dir: PathBuf,
        #[source]
        source: Box<BuildError>,
    },
    #[error("image.json names an unknown arch: {0}")]
    Arch(#[from] berth_arch::UnknownArch),
    #[error(transparent)]
    Rig(#[from] RigError),
    #[error("cannot catch Ctrl-C: {0}")]
    Signal(#[source] std::io::Error),
}

/// What `berth run` says once the guest is ready: how to reach it.
fn what_to_try(dir: &Path, publish: &[berth_qemu::HostForward]) -> String {
    let ctl = format!("berth ctl --image {}", dir.display());
    let mut text = format!(
        "berth: the host is ready. From another terminal:\n  \
         {ctl} ps                  # the containers\n  \
         {ctl} journal -f          # events and every container's output\n  \
         {ctl} exec -it NAME sh    # a shell in a container"
    );
    for forward in publish {
        let host = forward
            .address
            .map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string());
        text.push_str(&format!(
            "\n  http://{host}:{}/    # the guest's port {}",
            forward.host_port, forward.guest_port
        ));
    }
    text.push_str("\n  Ctrl-C here presses the power button; a second one stops QEMU.");
    text
}

pub fn run(options: &RunOptions) -> Result<RunOutcome, RunError> {
    let metadata = read_metadata(&options.dir).map_err(|source| RunError::NotAnImage {
        dir: options.dir.clone(),
        source: Box::new(source),
    })?;
    let arch = match options.arch {
        Some(arch) => arch,
        None => metadata.arch.parse()?,
    };
    let mut config = MachineConfig::new(
        arch,
        &options.dir.join(&metadata.kernel),
        &options.dir.join(&metadata.initrd),
        &options.dir.join("run"),
    );
    // A disk image, when the build wrote one, boots the way a server or cloud VM boots it:
    // through UEFI firmware, systemd-boot and the active slot.
    if let Some(disk) = &metadata.disk {
        config.disk = Some(berth_qemu::DiskBoot {
            image: options.dir.join(disk),
            format: if disk.ends_with(".qcow2") {
                "qcow2"
            } else {
                "raw"
            }
            .to_string(),
        });
    }
    config.memory_mib = options.memory_mib;
    config.cpus = options.cpus;
    config.append = options.append.clone();
    config.extra_args = options.qemu_args.clone();
    config.host_forwards = options.publish.clone();
    for forward in &options.publish {
        eprintln!(
            "berth: port {}{} here goes to the guest's port {}",
            forward.address.map(|a| format!("{a}:")).unwrap_or_default(),
            forward.host_port,
            forward.guest_port
        );
    }
    config.echo_console = true;
    let socket = control_socket(&options.dir);
    config.control_socket = Some(socket.clone());
    eprintln!(
        "berth: control port on {} (berth ctl --image {} ps)",
        socket.display(),
        options.dir.display()
    );

    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(RunError::Signal)?;

    eprintln!(
        "berth: booting {arch} under QEMU ({}); its console follows",
        if berth_qemu::kvm_usable(arch) {
            "KVM"
        } else {
            "TCG, without KVM: seconds before the kernel's first line"
        }
    );
    let mut machine = Machine::start(&config)?;
    let started = Instant::now();
    let mut silence_said = false;
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let mut power_button_pressed = false;
    let mut ready_said = false;
    while !machine.has_exited() {
        if !silence_said && started.elapsed() > SILENCE_NOTE && machine.console_lines().is_empty() {
            eprintln!(
                "berth: no console line after {} s: the firmware and the kernel are still starting",
                SILENCE_NOTE.as_secs()
            );
            silence_said = true;
        }
        if !ready_said
            && machine
                .console_lines()
                .iter()
                .any(|l| l.text.starts_with("berth event=ready "))
        {
            eprintln!("{}", what_to_try(&options.dir, &options.publish));
            ready_said = true;
        }
        if interrupted.swap(false, Ordering::SeqCst) {
            if power_button_pressed {
                eprintln!("berth: second Ctrl-C: stopping QEMU");
                machine.kill();
                break;
            }
            eprintln!("berth: Ctrl-C: pressing the power button (again to pull the plug)");
            machine.press_power_button()?;
            power_button_pressed = true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!("berth: timeout reached: stopping QEMU");
            machine.kill();
            return Ok(RunOutcome::TimedOut);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(RunOutcome::Exited(
        machine.wait_exit(Duration::from_secs(5))?,
    ))
}
