//! One QEMU process running one berth image.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use regex::Regex;

use crate::console::{Console, ConsoleLine};
use crate::qmp::{Qmp, QmpError};

/// How long QEMU gets to open its QMP socket.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// QEMU's ids for the control port's virtio-serial controller and its chardev.
const CONTROL_SERIAL_BUS: &str = "berth-serial";
const CONTROL_CHARDEV: &str = "berthctl";
/// QEMU's id for the serial console's chardev when it is a socket ([`MachineConfig::serial_socket`]).
const SERIAL_CHARDEV: &str = "berth-console";
/// How long QEMU gets to open the serial console's socket.
const SERIAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the rig tries meanwhile.
const SERIAL_CONNECT_RETRY: Duration = Duration::from_millis(20);
/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A disk image booted through the arch's UEFI firmware (OVMF, AAVMF).
#[derive(Debug, Clone)]
pub struct DiskBoot {
    pub image: PathBuf,
    /// QEMU's name for the format: `raw` or `qcow2`.
    pub format: String,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub arch: Arch,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Appended to the kernel command line after the rig's own parameters.
    pub append: Vec<String>,
    /// Passed to QEMU after the rig's own arguments.
    pub extra_args: Vec<String>,
    /// User-mode networking on a virtio NIC.
    pub user_net: bool,
    /// TCP ports of this machine forwarded to the guest over the user-mode network.
    pub host_forwards: Vec<HostForward>,
    /// Where `console.log` goes; created if missing.
    pub log_dir: PathBuf,
    /// Copy the console to this process' stdout as it arrives.
    pub echo_console: bool,
    /// Boot this disk image through UEFI firmware instead of `kernel` and `initrd`.
    pub disk: Option<DiskBoot>,
    /// Run QEMU in this network namespace (a file such as `/run/netns/NAME`), so that its tap
    /// devices are the ones a test made there.
    pub netns: Option<PathBuf>,
    /// Give the guest init's control port (a virtio-serial port named `org.berth.control`,
    /// [`berth_control::PORT_NAME`]) and serve it on this Unix socket, which `berth ctl
    /// --socket` (or any client speaking the control protocol) connects to. A stale socket
    /// left there is removed first. The path must fit a Unix socket address (107 bytes).
    pub control_socket: Option<PathBuf>,
    /// Boot on the plain CPU model of [`Arch::qemu_default_cpu_args`] instead of `max`
    /// (ignored with KVM): kernel modules that need newer CPU features fail there.
    pub default_cpu_model: bool,
    /// Serve the serial console on a Unix socket the rig connects to, instead of QEMU's
    /// stdout: the console is recorded all the same, and [`Machine::write_serial`] can send
    /// the guest bytes on its console line (XOFF and XON, say). QEMU waits for the rig to
    /// connect before it starts the guest, so no line is lost.
    pub serial_socket: bool,
    /// Let a guest reboot restart the guest inside the same QEMU (no `-no-reboot`), so that
    /// what QEMU keeps across a reset (the RTC, the disks) is seen by the next boot; the
    /// console goes on in the same log. Off: a reboot ends QEMU, as the rig's exits expect.
    pub reboot_in_place: bool,
}

impl MachineConfig {
    pub fn new(arch: Arch, kernel: &Path, initrd: &Path, log_dir: &Path) -> MachineConfig {
        MachineConfig {
            arch,
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            memory_mib: crate::machine_defaults::MEMORY_MIB,
            cpus: 1,
            append: Vec::new(),
            extra_args: Vec::new(),
            user_net: true,
            host_forwards: Vec::new(),
            log_dir: log_dir.to_path_buf(),
            echo_console: false,
            netns: None,
            disk: None,
            control_socket: None,
            default_cpu_model: false,
            serial_socket: false,
            reboot_in_place: false,
        }
    }

    /// The kernel command line: console on the arch's serial port, reboot at once on panic
    /// (QEMU's `-no-reboot` turns that into an exit), quiet kernel, then the caller's.
    pub fn kernel_cmdline(&self) -> String {
        let mut params = vec![
            format!("console={}", self.arch.console_device()),
            "panic=-1".to_string(),
            "quiet".to_string(),
        ];
        params.extend(self.append.iter().cloned());
        params.join(" ")
    }

    /// The firmware's writable variable store for this machine: a copy of the template in the
    /// log directory, kept across boots of the same machine as NVRAM is.
    fn efi_vars(&self) -> PathBuf {
        self.log_dir.join(format!("efivars-{}.fd", self.arch))
    }

    fn boot_args(&self) -> Vec<String> {
        match &self.disk {
            None => vec![
                "-kernel".to_string(),
                self.kernel.to_string_lossy().into_owned(),
                "-initrd".to_string(),
                self.initrd.to_string_lossy().into_owned(),
                "-append".to_string(),
                self.kernel_cmdline(),
            ],
            Some(disk) => {
                let (code, _) = self.arch.uefi_firmware();
                vec![
                    "-drive".to_string(),
                    format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
                    "-drive".to_string(),
                    format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        self.efi_vars().display()
                    ),
                    "-drive".to_string(),
                    format!(
                        "if=none,id=disk0,format={},file={}",
                        disk.format,
                        disk.image.display()
                    ),
                    "-device".to_string(),
                    "virtio-blk-pci,drive=disk0,bootindex=0".to_string(),
                ]
            }
        }
    }

    fn qemu_args(&self, qmp_socket: &Path, kvm: bool) -> Vec<String> {
        let serial = serial_args(self.serial_socket.then(|| serial_socket(qmp_socket)));
        let machine_args = if self.default_cpu_model && !kvm {
            self.arch.qemu_default_cpu_args()
        } else {
            self.arch.qemu_machine_args(kvm)
        };
        let mut args: Vec<String> = machine_args.into_iter().map(str::to_string).collect();
        args.extend(
            [
                "-m",
                &self.memory_mib.to_string(),
                "-smp",
                &self.cpus.to_string(),
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp_socket.display()),
            ]
            .map(str::to_string),
        );
        if !self.reboot_in_place {
            args.push("-no-reboot".to_string());
        }
        args.extend(serial);
        args.extend(self.boot_args());
        if self.user_net {
            let mut netdev = "user,id=net0".to_string();
            for forward in &self.host_forwards {
                netdev.push_str(&format!(",hostfwd={forward}"));
            }
            args.extend([
                "-netdev".to_string(),
                netdev,
                "-device".to_string(),
                "virtio-net-pci,netdev=net0,romfile=".to_string(),
            ]);
        }
        if let Some(socket) = &self.control_socket {
            args.extend(control_port_args(socket));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The serial console's socket, beside QMP's in the machine's private directory (short
/// enough for a socket address wherever the log directory is).
fn serial_socket(qmp_socket: &Path) -> PathBuf {
    qmp_socket.with_file_name("serial.sock")
}

/// The serial console: QEMU's stdout, or a Unix socket QEMU listens on and waits for the rig
/// to connect to (`wait=on`) before it starts the guest.
fn serial_args(socket: Option<PathBuf>) -> Vec<String> {
    match socket {
        None => vec!["-serial".to_string(), "stdio".to_string()],
        Some(socket) => vec![
            "-chardev".to_string(),
            format!(
                "socket,id={SERIAL_CHARDEV},path={},server=on,wait=on",
                socket.display()
            ),
            "-serial".to_string(),
            format!("chardev:{SERIAL_CHARDEV}"),
        ],
    }
}

/// A virtio-serial controller with one port, init's control port, whose host end is a Unix
/// socket QEMU listens on (`wait=off`: the guest boots whether or not anyone connects). PCI
/// on both arches, as the NIC is: q35 and aarch64 `virt` both have a PCIe root.
fn control_port_args(socket: &Path) -> Vec<String> {
    vec![
        "-device".to_string(),
        format!("virtio-serial-pci,id={CONTROL_SERIAL_BUS}"),
        "-chardev".to_string(),
        format!(
            "socket,id={CONTROL_CHARDEV},path={},server=on,wait=off",
            socket.display()
        ),
        "-device".to_string(),
        format!(
            "virtserialport,bus={CONTROL_SERIAL_BUS}.0,chardev={CONTROL_CHARDEV},name={}",
            berth_control::PORT_NAME
        ),
    ]
}

/// Makes way for QEMU's control socket: refuses a path too long for a socket address, and
/// removes a socket an earlier run left behind (but nothing else).
fn prepare_control_socket(path: &Path) -> Result<(), RigError> {
    let error = |reason: String| RigError::ControlSocket {
        path: path.to_path_buf(),
        reason,
    };
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(error(format!(
            "the path is {length} bytes, a Unix socket's at most {MAX_SOCKET_PATH}; use a shorter one"
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| error(format!("cannot remove the stale socket: {e}"))),
        Ok(_) => Err(error("something other than a socket is there".to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(error(e.to_string())),
    }
}

/// Connects to the serial console's socket once QEMU has made it.
fn connect_serial(
    path: &Path,
    deadline: Instant,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(SERIAL_CONNECT_RETRY),
        }
    }
}

/// A TCP port of the machine running QEMU forwarded to a guest port, as `docker run -p`
/// reads it: `[ADDRESS:]HOST:GUEST` (ADDRESS, an IPv4 address, defaults to every address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostForward {
    pub address: Option<std::net::Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl std::str::FromStr for HostForward {
    type Err = String;

    fn from_str(text: &str) -> Result<HostForward, String> {
        let bad = |why: &str| format!("`{text}` is not [ADDRESS:]HOST:GUEST: {why}");
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("`{p}` is not a port")))
        };
        let parts: Vec<&str> = text.split(':').collect();
        let (address, host, guest) = match parts.as_slice() {
            [host, guest] => (None, *host, *guest),
            [address, host, guest] => (
                Some(
                    address
                        .parse()
                        .map_err(|_| bad(&format!("`{address}` is not an IPv4 address")))?,
                ),
                *host,
                *guest,
            ),
            _ => return Err(bad("two or three parts separated by `:`")),
        };
        Ok(HostForward {
            address,
            host_port: port(host)?,
            guest_port: port(guest)?,
        })
    }
}

impl std::fmt::Display for HostForward {
    /// QEMU's `hostfwd=` value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let address = self.address.map(|a| a.to_string()).unwrap_or_default();
        write!(f, "tcp:{address}:{}-:{}", self.host_port, self.guest_port)
    }
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered itself off.
    PowerOff,
    /// The guest asked for a reboot (QEMU runs with `-no-reboot`, so it exits).
    Reboot,
    /// The kernel panicked.
    Panic,
    /// QEMU exited for another reason (killed, quit over QMP, crashed).
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("cannot create log directory {}: {source}", path.display())]
    LogDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot copy the UEFI variable store {}: {source} (scripts/setup installs ovmf and qemu-efi-aarch64)", path.display())]
    Firmware {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {}: {reason}", path.display())]
    ControlSocket { path: PathBuf, reason: String },
    #[error("cannot start {binary}: {source} (is QEMU installed? scripts/setup installs it)")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: {source}; console log: {}", console_log.display())]
    Qmp {
        #[source]
        source: QmpError,
        console_log: PathBuf,
    },
    #[error("no console line matched `{pattern}` within {timeout:?}{}; console log: {}", if *exited { " (QEMU exited)" } else { "" }, console_log.display())]
    Timeout {
        pattern: String,
        timeout: Duration,
        exited: bool,
        console_log: PathBuf,
    },
    #[error("the guest's kernel panicked while waiting for `{pattern}`: {line}; console log: {}", console_log.display())]
    GuestPanicked {
        pattern: String,
        line: String,
        console_log: PathBuf,
    },
    #[error("serial console socket {}: {source}", path.display())]
    SerialSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this machine's serial console is QEMU's stdout, not a socket (MachineConfig::serial_socket)")]
    NoSerialSocket,
    #[error("QEMU did not exit within {timeout:?}; console log: {}", console_log.display())]
    StillRunning {
        timeout: Duration,
        console_log: PathBuf,
    },
}

/// True when KVM can run a guest of `arch` here: the device opens and the CPU has
/// virtualisation extensions (on the build machines `/dev/kvm` exists without them).
pub fn kvm_usable(arch: Arch) -> bool {
    if Arch::host() != Some(arch) {
        return false;
    }
    let device_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpu_has_extensions = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    device_opens && (cpu_has_extensions || arch == Arch::Aarch64)
}

/// A running guest.
#[derive(Debug)]
pub struct Machine {
    child: Child,
    console: Arc<Console>,
    qmp: Qmp,
    console_log: PathBuf,
    qmp_dir: PathBuf,
    control_socket: Option<PathBuf>,
    /// The serial console's socket, when the config asked for one: written to by
    /// [`Machine::write_serial`].
    serial: Option<std::os::unix::net::UnixStream>,
    /// Index of the console line after the last one `wait_for_line` matched.
    cursor: usize,
    exit_status: Option<ExitStatus>,
    /// When QEMU was started, for [`DURATIONS_ENV`].
    started: Instant,
    /// When the rig saw QEMU gone, for [`DURATIONS_ENV`]: a machine a test keeps until its
    /// end (the first of several boots, say) must not count the later boots' time.
    ended: Option<Instant>,
}

/// When set, each machine appends `<seconds>\t<log directory>` to the file it names as it
/// goes away (the directory relative to the file's folder, [`duration_name`]): `scripts/test`
/// prints the slowest boots of the run from it.
pub const DURATIONS_ENV: &str = "BERTH_TEST_DURATIONS";

fn private_socket_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    // Unix socket paths are limited to 108 bytes, so the socket lives in a short temp path
    // rather than in the (possibly deep) log directory.
    std::env::temp_dir().join(format!(
        "berth-qmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Machine {
    /// Starts QEMU and connects QMP. The console is recorded from the first byte.
    pub fn start(config: &MachineConfig) -> Result<Machine, RigError> {
        let log_dir_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RigError::LogDir { path, source }
        };
        std::fs::create_dir_all(&config.log_dir).map_err(log_dir_error(&config.log_dir))?;
        if config.disk.is_some() && !config.efi_vars().exists() {
            let (_, template) = config.arch.uefi_firmware();
            std::fs::copy(template, config.efi_vars()).map_err(|source| RigError::Firmware {
                path: PathBuf::from(template),
                source,
            })?;
        }
        let console_log = config.log_dir.join("console.log");
        let log = File::create(&console_log).map_err(log_dir_error(&console_log))?;
        let qmp_dir = private_socket_dir();
        std::fs::create_dir_all(&qmp_dir).map_err(log_dir_error(&qmp_dir))?;
        let qmp_socket = qmp_dir.join("qmp.sock");
        if let Some(socket) = &config.control_socket {
            prepare_control_socket(socket)?;
        }

        let kvm = kvm_usable(config.arch);
        let binary = config.arch.qemu_binary();
        let mut command = Command::new(binary);
        command
            .args(config.qemu_args(&qmp_socket, kvm))
            .stdin(Stdio::null())
            .stdout(match config.serial_socket {
                // Nothing else of QEMU's goes to stdout.
                true => Stdio::null(),
                false => Stdio::piped(),
            })
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C in the terminal reaches the rig, which presses
            // the power button, instead of killing QEMU mid-write.
            .process_group(0);
        let netns = match &config.netns {
            Some(path) => Some(File::open(path).map_err(|source| RigError::Netns {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2)
        // and setns(2), which are async-signal-safe; it reads the namespace's descriptor,
        // opened before the fork, and touches no other memory shared with the parent.
        unsafe {
            command.pre_exec(move || {
                // QEMU dies with the rig, so a killed test leaves no stray guest behind.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)?;
                if let Some(netns) = &netns {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| RigError::Spawn {
            binary: binary.to_string(),
            source,
        })?;
        let console = Arc::new(Console::default());
        let serial = match config.serial_socket {
            true => {
                let path = serial_socket(&qmp_socket);
                let connected = connect_serial(&path, Instant::now() + SERIAL_CONNECT_TIMEOUT)
                    .and_then(|stream| Ok((stream.try_clone()?, stream)));
                match connected {
                    Ok((reader, writer)) => {
                        console.spawn_reader(reader, log, config.echo_console, started);
                        Some(writer)
                    }
                    Err(source) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(RigError::SerialSocket { path, source });
                    }
                }
            }
            false => {
                if let Some(stdout) = child.stdout.take() {
                    console.spawn_reader(stdout, log, config.echo_console, started);
                }
                None
            }
        };
        let qmp = match Qmp::connect(&qmp_socket, Instant::now() + QMP_CONNECT_TIMEOUT) {
            Ok(qmp) => qmp,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RigError::Qmp {
                    source,
                    console_log,
                });
            }
        };
        Ok(Machine {
            child,
            console,
            qmp,
            console_log,
            qmp_dir,
            control_socket: config.control_socket.clone(),
            serial,
            cursor: 0,
            exit_status: None,
            started,
            ended: None,
        })
    }

    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// The Unix socket QEMU serves init's control port on, when the config asked for one:
    /// what `berth ctl --socket` takes. It is there once [`Machine::start`] returns; init
    /// answers once it has opened its end of the port (until then QEMU leaves what a client
    /// sends in the socket).
    pub fn control_socket(&self) -> Option<&Path> {
        self.control_socket.as_deref()
    }

    /// Sends `bytes` to the guest on its serial console line, as a terminal on the line
    /// would: XOFF (0x13) stops the guest's output on a console tty with IXON (the default),
    /// XON (0x11) starts it again. Only with [`MachineConfig::serial_socket`].
    pub fn write_serial(&mut self, bytes: &[u8]) -> Result<(), RigError> {
        use std::io::Write;
        let serial = self.serial.as_mut().ok_or(RigError::NoSerialSocket)?;
        serial
            .write_all(bytes)
            .map_err(|source| RigError::SerialSocket {
                path: self.qmp_dir.join("serial.sock"),
                source,
            })
    }

    /// Every console line so far.
    pub fn console_lines(&self) -> Vec<ConsoleLine> {
        self.console.lines()
    }

    /// The whole console so far, as text.
    pub fn console_text(&self) -> String {
        self.console
            .lines()
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the next console line (after the previous match) that matches `pattern`.
    pub fn wait_for_line(
        &mut self,
        pattern: &Regex,
        timeout: Duration,
    ) -> Result<ConsoleLine, RigError> {
        let deadline = Instant::now() + timeout;
        match self
            .console
            .wait_for(self.cursor, deadline, |line| pattern.is_match(line))
        {
            Some((index, line)) => {
                self.cursor = index + 1;
                Ok(line)
            }
            None => match self.console.fatal_line(self.cursor) {
                Some(line) => Err(RigError::GuestPanicked {
                    pattern: pattern.to_string(),
                    line,
                    console_log: self.console_log.clone(),
                }),
                None => Err(RigError::Timeout {
                    pattern: pattern.to_string(),
                    timeout,
                    exited: self.child.try_wait().ok().flatten().is_some(),
                    console_log: self.console_log.clone(),
                }),
            },
        }
    }

    /// Every QMP event QEMU sent so far (`WATCHDOG`, `SHUTDOWN`, ...), in order.
    pub fn qmp_events(&self) -> Vec<serde_json::Value> {
        self.qmp.events()
    }

    /// Sends a QMP command.
    pub fn qmp(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RigError> {
        self.qmp
            .execute(command, arguments)
            .map_err(|source| RigError::Qmp {
                source,
                console_log: self.console_log.clone(),
            })
    }

    /// For a guest that stopped answering: asks its kernel to print, on the console, what
    /// each task is doing (SysRq `9` to raise the console's log level, then `w` for blocked
    /// tasks, `t` for all of them, `l` for what each CPU runs), and returns the vCPUs'
    /// registers as QEMU sees them, sampled a few times (a RIP that stays in user space with
    /// a CPU that never idles is a busy loop).
    ///
    /// The keys go through the x86_64 `q35` machine's PS/2 keyboard; the kernel acts on them
    /// only with `sysrq_always_enabled` on its command line ([`MachineConfig::append`]), which
    /// a test that wants the dump adds. Waits a few seconds for the kernel to print.
    pub fn dump_guest_state(&mut self) -> String {
        let mut report = String::new();
        for sample in 0..3 {
            let registers = self.qmp(
                "human-monitor-command",
                Some(serde_json::json!({ "command-line": "info registers" })),
            );
            let text = registers
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .unwrap_or_else(|e| e.to_string());
            // The CPU, its instruction pointer, flags and privilege level (`CPL=3`: user space).
            let first_lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("CPU#") || l.starts_with("RIP=") || l.starts_with("PC="))
                .collect();
            report.push_str(&format!(
                "registers, sample {sample}:\n{}\n",
                first_lines.join("\n")
            ));
            std::thread::sleep(Duration::from_millis(200));
        }
        for key in ["9", "w", "t", "l"] {
            let keys =
                ["alt", "sysrq", key].map(|k| serde_json::json!({ "type": "qcode", "data": k }));
            if let Err(err) = self.qmp("send-key", Some(serde_json::json!({ "keys": keys }))) {
                report.push_str(&format!("SysRq {key}: {err}\n"));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        report.push_str(&format!(
            "the kernel's task dump is in {}\n",
            self.console_log.display()
        ));
        report
    }

    /// Presses the power button (ACPI on x86_64, gpio-keys on aarch64 `virt`).
    pub fn press_power_button(&mut self) -> Result<(), RigError> {
        self.qmp("system_powerdown", None).map(drop)
    }

    /// True once QEMU has exited.
    pub fn has_exited(&mut self) -> bool {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().ok().flatten();
            if self.exit_status.is_some() {
                self.ended.get_or_insert_with(Instant::now);
            }
        }
        self.exit_status.is_some()
    }

    /// Waits for QEMU to exit by itself and says how the guest ended.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<GuestExit, RigError> {
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return Err(RigError::StillRunning {
                    timeout,
                    console_log: self.console_log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The console reader drains what QEMU wrote before exiting.
        self.console
            .wait_closed(Instant::now() + Duration::from_secs(2));
        if self
            .console_text()
            .contains(crate::console::KERNEL_PANIC_MARKER)
        {
            return Ok(GuestExit::Panic);
        }
        Ok(match self.qmp.shutdown_reason().as_deref() {
            Some("guest-shutdown") => GuestExit::PowerOff,
            Some("guest-reset") => GuestExit::Reboot,
            Some("guest-panic") => GuestExit::Panic,
            Some(other) => GuestExit::Other(other.to_string()),
            None => GuestExit::Other(format!(
                "QEMU exited ({}) with no SHUTDOWN event",
                self.exit_status
                    .map_or_else(|| "unknown status".to_string(), |s| s.to_string())
            )),
        })
    }

    /// Asks QEMU to quit over QMP (the guest gets no say) and waits for it to exit.
    pub fn quit(&mut self, timeout: Duration) -> Result<GuestExit, RigError> {
        // QEMU may close the socket before it answers; its exit is what counts.
        let _ = self.qmp("quit", None);
        self.wait_exit(timeout)
    }

    /// Stops QEMU now, as pulling the plug would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exit_status = Some(status);
            self.ended.get_or_insert_with(Instant::now);
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.exit_status.is_none() {
            self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.qmp_dir);
        if let Some(socket) = &self.control_socket {
            let _ = std::fs::remove_file(socket);
        }
        self.record_duration();
    }
}

impl Machine {
    /// Appends this machine's life to the file [`DURATIONS_ENV`] names, if any.
    fn record_duration(&self) {
        use std::io::Write;
        let Some(path) = std::env::var_os(DURATIONS_ENV) else {
            return;
        };
        let name = duration_name(&self.console_log, Path::new(&path));
        let lived = self
            .ended
            .map_or_else(|| self.started.elapsed(), |ended| ended - self.started);
        let line = format!("{:.1}\t{name}\n", lived.as_secs_f64());
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = appended {
            eprintln!(
                "cannot record the boot's duration in {}: {err}",
                path.to_string_lossy()
            );
        }
    }
}

/// How a boot is named in the durations file: its log directory relative to the file's own
/// folder when it lies below it (`disk-persistence-aarch64/boot-1`, since several tests boot
/// machines whose folders are all `boot-1`), else the directory's last component.
fn duration_name(console_log: &Path, durations: &Path) -> String {
    let Some(dir) = console_log.parent() else {
        return "?".to_string();
    };
    durations
        .parent()
        .and_then(|root| dir.strip_prefix(root).ok())
        .filter(|relative| !relative.as_os_str().is_empty())
        .or_else(|| dir.file_name().map(Path::new))
        .map_or_else(|| "?".to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
#[expect(clippy::panic, clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn published_ports_read_as_docker_run_p_and_become_hostfwd() {
        let forward = |text: &str| text.parse::<HostForward>().map(|f| f.to_string());
        assert_eq!(forward("8080:80").as_deref(), Ok("tcp::8080-:80"));
        assert_eq!(
            forward("127.0.0.1:8080:80").as_deref(),
            Ok("tcp:127.0.0.1:8080-:80")
        );
        for bad in ["80", "0:80", "8080:x", "a.b:1:2", "1:2:3:4"] {
            assert!(forward(bad).is_err(), "{bad}");
        }
        let mut config = MachineConfig::new(
            Arch::X86_64,
            Path::new("/k"),
            Path::new("/i"),
            Path::new("/l"),
        );
        config.host_forwards = vec![forward_of("8080:80"), forward_of("2222:22")];
        let args = config.qemu_args(Path::new("/q"), false);
        assert!(
            args.iter()
                .any(|a| a == "user,id=net0,hostfwd=tcp::8080-:80,hostfwd=tcp::2222-:22"),
            "{args:?}"
        );
    }

    fn forward_of(text: &str) -> HostForward {
        text.parse().unwrap_or_else(|e: String| panic!("{e}"))
    }

    #[test]
    fn a_boot_is_named_by_its_log_directory_below_the_durations_file() {
        let durations = Path::new("/t/test-logs/durations.tsv");
        let named = |log: &str| duration_name(Path::new(log), durations);
        assert_eq!(named("/t/test-logs/boot-x86_64/console.log"), "boot-x86_64");
        assert_eq!(
            named("/t/test-logs/disk-persistence-aarch64/boot-1/console.log"),
            "disk-persistence-aarch64/boot-1"
        );
        assert_eq!(named("/elsewhere/suite/boot-1/console.log"), "boot-1");
    }

    #[test]
    fn the_control_port_is_a_virtio_serial_port_on_a_unix_socket() {
        for arch in Arch::ALL {
            let mut config =
                MachineConfig::new(arch, Path::new("k"), Path::new("i"), Path::new("/tmp/log"));
            let qmp = Path::new("/tmp/qmp.sock");
            assert!(!config
                .qemu_args(qmp, false)
                .iter()
                .any(|a| a.contains("virtserialport")));
            config.control_socket = Some(PathBuf::from("out/control.sock"));
            let args = config.qemu_args(qmp, false).join(" ");
            assert!(
                args.contains(concat!(
                    "-device virtio-serial-pci,id=berth-serial ",
                    "-chardev socket,id=berthctl,path=out/control.sock,server=on,wait=off ",
                    "-device virtserialport,bus=berth-serial.0,chardev=berthctl,name=org.berth.control"
                )),
                "{arch}: {args}"
            );
        }
    }

    #[test]
    fn the_serial_console_is_stdout_unless_a_socket_is_asked_for() {
        let mut config = MachineConfig::new(
            Arch::X86_64,
            Path::new("k"),
            Path::new("i"),
            Path::new("/l"),
        );
        let qmp = Path::new("/tmp/berth-qmp-1-0/qmp.sock");
        let args = config.qemu_args(qmp, false).join(" ");
        assert!(args.contains("-serial stdio"), "{args}");
        config.serial_socket = true;
        let args = config.qemu_args(qmp, false).join(" ");
        assert!(!args.contains("stdio"), "{args}");
        assert!(
            args.contains(concat!(
                "-chardev socket,id=berth-console,path=/tmp/berth-qmp-1-0/serial.sock,",
                "server=on,wait=on -serial chardev:berth-console"
            )),
            "{args}"
        );
    }

    #[test]
    fn a_control_socket_path_must_fit_and_only_a_socket_is_replaced() {
        let long = PathBuf::from(format!("/tmp/{}/control.sock", "d".repeat(100)));
        let err = prepare_control_socket(&long).unwrap_err().to_string();
        assert!(err.contains("a Unix socket's at most 107"), "{err}");

        let dir = std::env::temp_dir().join(format!("berth-rig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        prepare_control_socket(&socket).unwrap();
        assert!(!socket.exists(), "the stale socket is gone");
        prepare_control_socket(&socket).unwrap();
        std::fs::write(&socket, "not a socket").unwrap();
        let err = prepare_control_socket(&socket).unwrap_err().to_string();
        assert!(err.contains("something other than a socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
