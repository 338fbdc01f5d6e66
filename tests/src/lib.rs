//! Helpers for the integration tests: build the guest binaries and images the tests boot,
//! and keep each test's evidence in `target/test-logs/<test>/`.

#![expect(
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a failed check panics"
)]

pub mod dhcp_script;
pub mod events;
pub mod images;
pub mod netns;
pub mod ntp;
pub mod registry;
pub mod syslog;
pub mod terminal;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use berth_arch::Arch;
use berth_image::images::ImageSource;
use berth_image::kernel::default_cache_dir;
use berth_image::{BuildOptions, DiskFormat, DiskOptions, KernelChoice};
use berth_qemu::{DiskBoot, Machine, MachineConfig};

/// How long a guest may take to say it is ready. Generous: CI machines are shared and TCG
/// speed varies; typical figures are 2 s (x86_64) and 2 to 7 s (aarch64).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a guest may take from the power button to QEMU's exit.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// The line init prints when the host is ready.
pub const READY_PATTERN: &str = r"^berth event=ready ";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// A fresh evidence directory for one test: its console logs and manifests go there.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = target_dir().join("test-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The guest packages, built together as `scripts/test` builds them, so that cargo unifies
/// their features the same way and finds that build fresh (one package alone is another
/// feature set: its dependencies would build again, minutes per arch).
pub use berth_image::assemble::GUEST_PACKAGES;

/// A guest binary (static musl, guest profile) for `arch`: every guest package is built once
/// per arch and test process, and `binary` of `package` is taken from that build.
pub fn guest_binary(package: &str, binary: &str, arch: Arch) -> Result<PathBuf, String> {
    static BUILT: Mutex<Vec<Arch>> = Mutex::new(Vec::new());
    if !GUEST_PACKAGES.contains(&package) {
        return Err(format!(
            "{package} is not one of the guest packages {GUEST_PACKAGES:?}"
        ));
    }
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.contains(&arch) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace_root())
            .args(["build", "--quiet", "--profile", "guest"]);
        for package in GUEST_PACKAGES {
            command.args(["-p", package]);
        }
        let status = command
            .args(["--target", arch.rust_target()])
            .status()
            .map_err(|err| format!("cannot run cargo: {err}"))?;
        if !status.success() {
            return Err(format!(
                "building the guest packages for {arch} failed: {status}"
            ));
        }
        built.push(arch);
    }
    Ok(target_dir()
        .join(arch.rust_target())
        .join("guest")
        .join(binary))
}

/// The host `berth` CLI, built once per test process.
pub fn berth_cli() -> Result<PathBuf, String> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--quiet", "-p", "berth-image", "--bin", "berth"])
            .status()
            .map_err(|err| format!("cannot run cargo: {err}"))?;
        if !status.success() {
            return Err(format!("building the berth CLI failed: {status}"));
        }
        *built = true;
    }
    Ok(target_dir().join("debug").join("berth"))
}

pub fn guest_init(arch: Arch) -> Result<PathBuf, String> {
    guest_binary("berth-init", "init", arch)
}

/// Builds an image for `arch` from `manifest` (TOML text) into `<log_dir>/image`, with the
/// busybox test image baked in as `busybox:1.35`.
pub fn build_image(arch: Arch, manifest: &str, log_dir: &Path) -> Result<PathBuf, String> {
    build_image_with_disk(arch, manifest, log_dir, None)
}

/// As [`build_image`], with a disk image too when `disk` says so.
pub fn build_image_with_disk(
    arch: Arch,
    manifest: &str,
    log_dir: &Path,
    disk: Option<DiskOptions>,
) -> Result<PathBuf, String> {
    build_image_with(arch, manifest, log_dir, None, disk)
}

/// As [`build_image`], with another kernel than Debian's default and optionally a disk.
pub fn build_image_with(
    arch: Arch,
    manifest: &str,
    log_dir: &Path,
    kernel: Option<KernelChoice>,
    disk: Option<DiskOptions>,
) -> Result<PathBuf, String> {
    build_image_with_images(arch, manifest, log_dir, kernel, disk, Vec::new())
}

/// As [`build_image_with`], with more images baked in beside `busybox:1.35` (hostile images
/// made by [`images::variant_layout`], say).
pub fn build_image_with_images(
    arch: Arch,
    manifest: &str,
    log_dir: &Path,
    kernel: Option<KernelChoice>,
    disk: Option<DiskOptions>,
    extra_images: Vec<ImageSource>,
) -> Result<PathBuf, String> {
    let options = build_options(arch, manifest, log_dir, kernel, disk, extra_images)?;
    let out = options.out.clone();
    berth_image::build(&options).map_err(|err| format!("berth build: {err}"))?;
    Ok(out)
}

/// What `berth build` is asked for a test image of `manifest` into `<log_dir>/image`: the
/// guest binaries of this tree and the busybox test image beside `extra_images`.
fn build_options(
    arch: Arch,
    manifest: &str,
    log_dir: &Path,
    kernel: Option<KernelChoice>,
    disk: Option<DiskOptions>,
    extra_images: Vec<ImageSource>,
) -> Result<BuildOptions, String> {
    let manifest_path = log_dir.join("manifest.toml");
    std::fs::write(&manifest_path, manifest).map_err(|e| e.to_string())?;
    Ok(BuildOptions {
        arch,
        manifest: manifest_path,
        out: log_dir.join("image"),
        kernel: kernel.unwrap_or_else(|| KernelChoice::DebianDefault {
            cache_dir: default_cache_dir(),
        }),
        init: Some(guest_init(arch)?),
        netd: None,
        berthctl: None,
        puller: Some(guest_binary("berth-registry", "berth-pull", arch)?),
        images: std::iter::once(ImageSource {
            name: Some(images::BUSYBOX.to_string()),
            dir: images::busybox_layout(arch)?,
        })
        .chain(extra_images)
        .collect(),
        extra_modules: Vec::new(),
        disk,
        update_key: None,
    })
}

/// UEFI firmware under TCG takes its time before the kernel starts, aarch64's most.
pub const DISK_READY_TIMEOUT: Duration = Duration::from_secs(240);

/// The rig's configuration for booting `disk` (of `image`) through UEFI.
pub fn disk_machine_config(
    arch: Arch,
    image: &Path,
    disk: &Path,
    format: DiskFormat,
    log_dir: &Path,
) -> MachineConfig {
    let mut config = machine_config(arch, image, log_dir);
    config.disk = Some(DiskBoot {
        image: disk.to_path_buf(),
        format: format.qemu_name().to_string(),
    });
    config
}

/// Boots a disk configuration and waits for `ready`, with the firmware's time allowed.
pub fn boot_disk_to_ready(config: &MachineConfig) -> Machine {
    start_to_ready_within(config, DISK_READY_TIMEOUT)
}

/// Builds `manifest` as an update bundle signed with the secret key file `key`, into
/// `<log_dir>/image`; returns the bundle's path.
pub fn build_update_bundle(
    arch: Arch,
    manifest: &str,
    log_dir: &Path,
    key: &Path,
) -> Result<PathBuf, String> {
    let mut options = build_options(arch, manifest, log_dir, None, None, Vec::new())?;
    options.update_key = Some(key.to_path_buf());
    berth_image::build(&options).map_err(|err| format!("berth build: {err}"))?;
    Ok(options.out.join(berth_update::BUNDLE_FILE))
}

/// The rig configuration to boot an image built by [`build_image`].
pub fn machine_config(arch: Arch, image: &Path, log_dir: &Path) -> MachineConfig {
    MachineConfig::new(arch, &image.join("kernel"), &image.join("initrd"), log_dir)
}

/// Builds and boots `manifest` on `arch`; returns the running machine.
pub fn boot(arch: Arch, manifest: &str, test: &str) -> Result<Machine, String> {
    let dir = log_dir(test);
    let image = build_image(arch, manifest, &dir)?;
    Machine::start(&machine_config(arch, &image, &dir)).map_err(|e| e.to_string())
}

/// Builds and boots `manifest` on `arch` and waits for the ready line; panics (failing the
/// test) with the console log's path otherwise.
pub fn boot_to_ready(arch: Arch, manifest: &str, test: &str) -> Machine {
    let mut machine = boot(arch, manifest, test).unwrap_or_else(|e| panic!("{e}"));
    machine
        .wait_for_line(&pattern(READY_PATTERN), READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    machine
}

/// Starts a machine a test configured itself (extra NICs, a network namespace) and waits for
/// the ready line; panics with the console log's path otherwise.
pub fn start_to_ready(config: &MachineConfig) -> Machine {
    start_to_ready_within(config, READY_TIMEOUT)
}

fn start_to_ready_within(config: &MachineConfig, timeout: Duration) -> Machine {
    let mut machine = Machine::start(config).unwrap_or_else(|e| panic!("{e}"));
    machine
        .wait_for_line(&pattern(READY_PATTERN), timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    machine
}

/// How long a guest may take to print a line a test waits for after boot.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits for the next console line matching `regex`; panics with the console log's path.
pub fn wait_line(machine: &mut Machine, regex: &str) -> String {
    machine
        .wait_for_line(&pattern(regex), LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"))
        .text
}

/// Waits until some console line, anywhere since boot, matches `regex`: for lines of
/// several containers whose order is not fixed.
pub fn wait_seen(machine: &Machine, regex: &str) -> String {
    let pattern = pattern(regex);
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    loop {
        if let Some(line) = machine
            .console_lines()
            .into_iter()
            .find(|l| pattern.is_match(&l.text))
        {
            return line.text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no console line matched `{regex}` within {LINE_TIMEOUT:?}; console log: {}",
            machine.console_log().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback TCP port nothing listens on right now (bound, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
}

/// A regex that the tests' patterns are known to be valid for.
pub fn pattern(text: &str) -> regex::Regex {
    regex::Regex::new(text).unwrap_or_else(|err| panic!("bad test pattern {text}: {err}"))
}

/// Serves `body` to every HTTP request on an ephemeral loopback port, from a thread that ends
/// with the test; returns the port.
pub fn serve_on_loopback(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

/// Builds `manifest` for `arch` and boots it with the control port (`org.berth.control`)
/// wired to a socket in the test's evidence folder; waits for ready. Returns the machine and
/// the socket `berth ctl --socket` talks to.
pub fn boot_with_control_port(arch: Arch, manifest: &str, test: &str) -> (Machine, PathBuf) {
    let dir = log_dir(test);
    let image = build_image(arch, manifest, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    let socket = dir.join("control.sock");
    config.control_socket = Some(socket.clone());
    (start_to_ready(&config), socket)
}

/// `berth ctl --socket SOCKET ARGS...` on the test machine, with stdin from /dev/null.
pub fn berth_ctl(socket: &Path, args: &[&str]) -> std::process::Output {
    // A guest that never answers fails the test instead of hanging the suite.
    let args: Vec<&str> = ["--timeout", "60"].iter().chain(args).copied().collect();
    berth_ctl_command(socket, &args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run berth ctl: {e}"))
}

/// Waits for `child` (stdout and stderr piped, or not) to exit within `limit` and collects
/// its output; past the limit it is killed and the test fails naming `what`. Every wait on a
/// client of the guest has a bound, so a guest that stops answering fails its test instead
/// of hanging the suite.
pub fn output_within(
    mut child: std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    fn read_all(source: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut source) = source {
                let _ = source.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not end within {limit:?}");
            }
            Err(err) => panic!("{what}: {err}"),
        }
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// QEMU arguments for a guest that looks like an EC2 instance: user networking on the
/// link-local range, the metadata address `169.254.169.254:80` forwarded to `port` on the
/// test machine's loopback, and the DMI vendor an EC2 instance has.
pub fn ec2_machine_args(port: u16) -> Vec<String> {
    vec![
        "-netdev".to_string(),
        format!(
            "user,id=net0,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,\
             guestfwd=tcp:169.254.169.254:80-cmd:busybox nc 127.0.0.1 {port}"
        ),
        "-device".to_string(),
        "virtio-net-pci,netdev=net0,romfile=".to_string(),
        "-smbios".to_string(),
        "type=1,manufacturer=Amazon EC2".to_string(),
    ]
}

/// The `berth ctl` command line, for tests that wire its stdio themselves.
pub fn berth_ctl_command(socket: &Path, args: &[&str]) -> Command {
    let cli = berth_cli().unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(cli);
    command.arg("ctl").arg("--socket").arg(socket).args(args);
    command
}

/// stdout of a `berth ctl` call that must succeed.
pub fn berth_ctl_ok(socket: &Path, args: &[&str]) -> String {
    let out = berth_ctl(socket, args);
    assert!(
        out.status.success(),
        "berth ctl {args:?}: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `ps` row of `name`, as whitespace-separated columns.
pub fn ps_row(socket: &Path, name: &str) -> Vec<String> {
    berth_ctl_ok(socket, &["ps"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The PID column of `name`'s `ps` row, when it runs.
pub fn ps_pid(socket: &Path, name: &str) -> Option<u32> {
    ps_row(socket, name).get(4).and_then(|p| p.parse().ok())
}

/// `berth ctl ps` with a short client timeout, and how long it took: for tests that show
/// init answers while something tries to hold it.
pub fn timed_ps(socket: &Path) -> (Duration, std::process::Output) {
    let started = std::time::Instant::now();
    let out = berth_ctl_command(socket, &["--timeout", "10", "ps"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run berth ctl: {e}"));
    (started.elapsed(), out)
}
