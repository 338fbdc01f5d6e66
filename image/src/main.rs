//! `berth`: build berth images and boot them. See the README for the commands and
//! `docs/building.md` for the exit codes.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use berth_arch::Arch;
use berth_image::assemble::{self, BuildError, BuildOptions, DiskOptions, KernelChoice};
use berth_image::disk::DiskFormat;
use berth_image::images::ImageSource;
use berth_image::kernel::default_cache_dir;
use berth_image::kernel_build;
use berth_image::run::{self, RunOptions, RunOutcome};
use berth_image::run_container::{run_container, RunContainerOptions};
use berth_qemu::GuestExit;
use clap::{ArgGroup, Parser, Subcommand};

/// Exit codes, documented in `docs/building.md`.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const INVALID_MANIFEST: u8 = 3;
    pub const GUEST_REBOOTED: u8 = 10;
    pub const GUEST_PANICKED: u8 = 11;
    pub const GUEST_OTHER: u8 = 12;
    pub const TIMEOUT: u8 = 124;
}

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Build and boot berth container-host images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a manifest and build a bootable image (kernel + initrd) from it.
    Build {
        /// Guest architecture: x86_64 or aarch64.
        #[arg(long, default_value = "x86_64")]
        arch: Arch,
        /// The manifest (TOML).
        #[arg(long)]
        manifest: PathBuf,
        /// Output directory: gets `kernel`, `initrd` and `image.json`.
        #[arg(long)]
        out: PathBuf,
        /// A kernel image to use instead of Debian's default: with --modules, a modular kernel;
        /// alone, one with its drivers built in (as `berth kernel build` makes it).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The kernel's `/lib/modules/<release>` directory (with modules.dep).
        #[arg(long, requires = "kernel")]
        modules: Option<PathBuf>,
        /// The init binary (a static musl build); found next to `berth` by default.
        #[arg(long)]
        init: Option<PathBuf>,
        /// A netd binary of its own (a static musl build); by default netd is a name of
        /// init's binary, which holds it.
        #[arg(long)]
        netd: Option<PathBuf>,
        /// A berthctl binary of its own (a static musl build); by default berthctl is a name
        /// of init's binary, which holds it.
        #[arg(long)]
        berthctl: Option<PathBuf>,
        /// The berth-pull binary (a static musl build), shipped when a container may pull
        /// its image; found next to `berth` by default.
        #[arg(long)]
        puller: Option<PathBuf>,
        /// An image to bake in: `NAME:TAG=PATH`, PATH an OCI layout directory, an
        /// `oci-archive` tarball or a `docker save` archive; or a layout `DIR` alone to use its
        /// own `org.opencontainers.image.ref.name`. Repeat for more images.
        #[arg(long = "image", value_name = "NAME:TAG=PATH")]
        images: Vec<ImageSource>,
        /// A kernel module to ship beyond the default set; coldplug loads it when its hardware
        /// is present. Repeat for more.
        #[arg(long = "module", value_name = "NAME")]
        modules_extra: Vec<String>,
        /// Also write a bootable GPT disk image for UEFI (`raw`: `disk.raw`, `qcow2`:
        /// `disk.qcow2`): an EFI system partition with systemd-boot and boot slots A and B,
        /// and a data partition; and/or (`update`) a signed update bundle `update.berth`,
        /// which needs --sign-key. Repeat, or separate with commas.
        #[arg(long, value_enum, value_delimiter = ',')]
        format: Vec<OutputFormat>,
        /// The secret key (`berth key generate`) that signs the update bundle.
        #[arg(long, value_name = "FILE")]
        sign_key: Option<PathBuf>,
        /// The disk image's data partition, in MiB (grown to the disk's end at first boot).
        #[arg(long, default_value_t = 256, value_name = "MIB")]
        data_size: u64,
    },
    /// Keys that sign update bundles.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Sample images: `berth image busybox --arch A --out DIR`, the demo's.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The remote API's certificates.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
    },
    /// berth's own kernel.
    Kernel {
        #[command(subcommand)]
        command: KernelCommand,
    },
    /// Boot a built image under QEMU, console on this terminal. Ctrl-C presses the power
    /// button.
    Run {
        /// The directory `berth build --out` wrote.
        dir: PathBuf,
        /// Guest architecture; read from the image by default.
        #[arg(long)]
        arch: Option<Arch>,
        /// Guest RAM in MiB.
        #[arg(long, default_value_t = berth_qemu::machine_defaults::MEMORY_MIB)]
        memory: u32,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Stop QEMU after this many seconds (exit code 124).
        #[arg(long)]
        timeout: Option<u64>,
        /// Extra kernel command-line parameters.
        #[arg(long)]
        append: Vec<String>,
        /// Forward a TCP port of this machine to the guest, as `docker run -p` reads it:
        /// `[ADDRESS:]HOST:GUEST` (`8080:80`). Repeatable.
        #[arg(long, short = 'p', value_name = "[ADDRESS:]HOST:GUEST")]
        publish: Vec<berth_qemu::HostForward>,
        /// Extra QEMU arguments, after `--`.
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Operate a guest that `berth run` (or the QEMU rig) boots, over its control port: the
    /// verbs, flags, output and exit codes of berthctl (`berth ctl --image DIR ps`, `berth ctl
    /// --image DIR exec -it web sh`); errors are prefixed `berth ctl:`.
    #[command(
        group(ArgGroup::new("port").required(true).args(["socket", "image", "endpoint"])),
        after_help = berth_ctl::VERBS
    )]
    Ctl {
        /// The control port's Unix socket (QEMU's chardev).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The image directory `berth run` boots: its control.sock.
        #[arg(long, value_name = "DIR")]
        image: Option<PathBuf>,
        /// A host's remote API (berth-apid, `[api]`), over mutual TLS.
        #[arg(long, value_name = "HOST:PORT", requires = "server_trust")]
        endpoint: Option<String>,
        /// With --endpoint: the CA that signed the server's certificate (PEM).
        #[arg(long, value_name = "FILE", group = "server_trust")]
        ca: Option<PathBuf>,
        /// With --endpoint, instead of --ca: the SHA-256 of the server's certificate, for a
        /// key berth-apid generated (`api-key-generated sha256=` on the host's console).
        #[arg(long, value_name = "HEX", group = "server_trust")]
        server_sha256: Option<String>,
        /// With --endpoint: this client's certificate (PEM), signed by the API's client CA.
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// With --endpoint: this client's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
        /// With --endpoint: the name the server's certificate must hold (HOST by default).
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
        /// The verb and its arguments, exactly as berthctl takes them, global flags
        /// (`--json`, `--timeout SECS`) included.
        #[arg(
            value_name = "VERB",
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },
    /// Run one container on this host from a plain root filesystem, with the runtime and
    /// defaults init uses in the guest (needs root). Exits with the container's exit code.
    RunContainer {
        /// The container's root filesystem (a directory).
        #[arg(long)]
        rootfs: PathBuf,
        /// The container's name and hostname.
        #[arg(long, default_value = "run-container")]
        name: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Make an Ed25519 key pair for update bundles: `update.key` (secret, mode 0600, for
    /// `berth build --sign-key`) and `update.pub` (for a manifest's `[update] keys`).
    Generate {
        /// The directory to write both files into (created; existing keys are kept).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Debian's busybox-static as an OCI layout tagged `1.35` (packed by umoci), in
    /// `OUT/layout`: bake it with `berth build --image busybox:1.35=OUT/layout`.
    Busybox {
        #[arg(long, default_value = "x86_64")]
        arch: Arch,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ApiCommand {
    /// Make certificates for berth-apid and its clients.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// A new CA: `ca.pem` (a manifest's `[api] ca`, and `berth ctl --ca`) and `ca.key`.
    Ca {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = berth_image::api_cert::DEFAULT_CA_DAYS)]
        days: i64,
    },
    /// A server certificate (`server.pem`, `server.key`: `[api] cert` and `key`) naming the
    /// host's DNS names and addresses.
    Server {
        /// The directory holding `ca.pem` and `ca.key`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// A DNS name or IP address clients reach the host by (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = berth_image::api_cert::DEFAULT_DAYS)]
        days: i64,
    },
    /// A client certificate (`client.pem`, `client.key`: `berth ctl --cert` and `--key`).
    Client {
        /// The directory holding `ca.pem` and `ca.key`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Who the client is (the certificate's common name).
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = berth_image::api_cert::DEFAULT_DAYS)]
        days: i64,
    },
}

/// What `berth build --format` writes beside the kernel and initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// A raw GPT disk image, `disk.raw`.
    Raw,
    /// A qcow2 disk image, `disk.qcow2`.
    Qcow2,
    /// A signed update bundle, `update.berth`.
    Update,
}

#[derive(Debug, Subcommand)]
enum KernelCommand {
    /// Build a kernel for a container host from Debian's linux-source-6.1 and berth's
    /// configuration fragment (kernel/*.config), cached; writes `vmlinuz`, `kernel.release` and
    /// `config` into --out, for `berth build --kernel <out>/vmlinuz`.
    Build {
        #[arg(long, default_value = "x86_64")]
        arch: Arch,
        #[arg(long)]
        out: PathBuf,
    },
    /// Configure only, and check that every symbol of the fragment keeps its value.
    Check {
        #[arg(long, default_value = "x86_64")]
        arch: Arch,
    },
}

/// Writes a new key pair into `out`; returns the public key.
fn generate_key(out: &Path) -> Result<berth_update::PublicKey, berth_update::UpdateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| berth_update::UpdateError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let secret = berth_update::generate_key_pair()?;
    let public = secret.public_key();
    let public_path = out.join(berth_update::PUBLIC_KEY_FILE);
    if public_path.exists() {
        return Err(berth_update::UpdateError::Io {
            path: public_path,
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    secret.write(&out.join(berth_update::SECRET_KEY_FILE))?;
    std::fs::write(&public_path, format!("{public}\n")).map_err(io(&public_path))?;
    Ok(public)
}

fn report(err: &dyn Error) {
    eprintln!("berth: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Ctl {
            endpoint: Some(address),
            ca,
            server_sha256,
            cert,
            key,
            server_name,
            args,
            ..
        } => {
            use berth_image::remote::ServerTrust;
            let trust = match (ca, server_sha256) {
                (Some(ca), _) => ServerTrust::Ca(ca),
                (None, Some(hex)) => match ServerTrust::pinned(&hex) {
                    Ok(trust) => trust,
                    Err(err) => {
                        eprintln!("berth ctl: {err}");
                        return ExitCode::from(2);
                    }
                },
                (None, None) => {
                    eprintln!("berth ctl: --endpoint needs --ca or --server-sha256");
                    return ExitCode::from(2);
                }
            };
            berth_image::remote::run_ctl(
                &berth_image::remote::Endpoint {
                    address,
                    trust,
                    client: cert.zip(key),
                    server_name,
                },
                args,
            )
        }
        Command::Api {
            command: ApiCommand::Cert { command },
        } => {
            use berth_image::api_cert::{make_ca, make_certificate_for_days, Role};
            let result = match command {
                CertCommand::Ca { out, days } => make_ca(&out, days),
                CertCommand::Server {
                    ca,
                    names,
                    out,
                    days,
                } => make_certificate_for_days(&ca, Role::Server, &names, &out, days),
                CertCommand::Client {
                    ca,
                    name,
                    out,
                    days,
                } => make_certificate_for_days(&ca, Role::Client, &[name], &out, days),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("berth api cert: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl {
            socket,
            image,
            args,
            ..
        } => {
            // clap makes sure exactly one of the three is given.
            let socket = socket
                .or_else(|| image.as_deref().map(run::control_socket))
                .unwrap_or_default();
            berth_ctl::run("berth ctl", &socket, args)
        }
        Command::Build {
            arch,
            manifest,
            out,
            kernel,
            modules,
            init,
            netd,
            berthctl,
            puller,
            images,
            modules_extra,
            format,
            sign_key,
            data_size,
        } => {
            let disk_formats: Vec<DiskFormat> = format
                .iter()
                .filter_map(|f| match f {
                    OutputFormat::Raw => Some(DiskFormat::Raw),
                    OutputFormat::Qcow2 => Some(DiskFormat::Qcow2),
                    OutputFormat::Update => None,
                })
                .collect();
            if disk_formats.len() > 1 {
                eprintln!("berth: error: --format takes one disk format, raw or qcow2, not both");
                return ExitCode::from(exit::FAILURE);
            }
            let wants_update = format.contains(&OutputFormat::Update);
            if wants_update != sign_key.is_some() {
                eprintln!(
                    "berth: error: {}",
                    if wants_update {
                        "--format update needs --sign-key FILE (make one with `berth key generate --out DIR`)"
                    } else {
                        "--sign-key is for --format update"
                    }
                );
                return ExitCode::from(exit::FAILURE);
            }
            let kernel = match (kernel, modules) {
                (Some(image), modules_dir) => KernelChoice::Paths { image, modules_dir },
                _ => KernelChoice::DebianDefault {
                    cache_dir: default_cache_dir(),
                },
            };
            let options = BuildOptions {
                arch,
                manifest,
                out,
                kernel,
                init,
                netd,
                berthctl,
                puller,
                images,
                extra_modules: modules_extra,
                disk: disk_formats.first().map(|&format| DiskOptions {
                    format,
                    data_mib: data_size,
                }),
                update_key: sign_key,
            };
            // Binaries given by path are the caller's business; found ones may be stale.
            if options.init.is_none() {
                for (binary, newer) in assemble::stale_guest_binaries(arch) {
                    eprintln!(
                        "berth: warning: {} is older than {}: rebuild the guest binaries with `{}`",
                        binary.display(),
                        newer.display(),
                        assemble::guest_build_command(arch)
                    );
                }
            }
            match assemble::build(&options) {
                Ok(metadata) => {
                    println!(
                        "berth: built {} image with kernel {} ({} modules) in {}",
                        metadata.arch,
                        metadata.kernel_release,
                        metadata.modules.len(),
                        options.out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    report(&err);
                    match err {
                        BuildError::Manifest(_) => ExitCode::from(exit::INVALID_MANIFEST),
                        _ => ExitCode::from(exit::FAILURE),
                    }
                }
            }
        }
        Command::Image {
            command: ImageCommand::Busybox { arch, out },
        } => match berth_image::sample::busybox_layout(arch, &out, |_| Ok(())) {
            Ok(layout) => {
                println!("{}", layout.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("berth image busybox: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Key {
            command: KeyCommand::Generate { out },
        } => match generate_key(&out) {
            Ok(public) => {
                println!("{public}");
                eprintln!(
                    "berth: wrote {} (secret: keep it off the hosts) and {}; put the line above in a manifest's [update] keys",
                    out.join(berth_update::SECRET_KEY_FILE).display(),
                    out.join(berth_update::PUBLIC_KEY_FILE).display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                report(&err);
                ExitCode::from(exit::FAILURE)
            }
        },
        Command::RunContainer {
            rootfs,
            name,
            command,
        } => {
            let options = RunContainerOptions {
                rootfs,
                name,
                args: command,
            };
            match run_container(&options) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(exit::FAILURE)),
                Err(err) => {
                    report(&err);
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
        Command::Kernel {
            command: KernelCommand::Build { arch, out },
        } => match kernel_build::build(arch, &default_cache_dir(), &out) {
            Ok(built) => {
                println!(
                    "berth: built kernel {} for {arch} in {}",
                    built.release,
                    built.image.display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                report(&err);
                ExitCode::FAILURE
            }
        },
        Command::Kernel {
            command: KernelCommand::Check { arch },
        } => match kernel_build::configure(arch, &default_cache_dir()) {
            Ok((_, mismatches)) if mismatches.is_empty() => {
                println!("berth: every symbol of the {arch} fragment kept its value");
                ExitCode::SUCCESS
            }
            Ok((_, mismatches)) => {
                report(&kernel_build::KernelBuildError::FragmentNotKept(mismatches));
                ExitCode::FAILURE
            }
            Err(err) => {
                report(&err);
                ExitCode::FAILURE
            }
        },
        Command::Run {
            dir,
            arch,
            memory,
            cpus,
            timeout,
            append,
            publish,
            qemu_args,
        } => {
            let options = RunOptions {
                dir,
                arch,
                memory_mib: memory,
                cpus,
                timeout: timeout.map(Duration::from_secs),
                append,
                publish,
                qemu_args,
            };
            match run::run(&options) {
                Ok(RunOutcome::Exited(GuestExit::PowerOff)) => ExitCode::SUCCESS,
                Ok(RunOutcome::Exited(GuestExit::Reboot)) => ExitCode::from(exit::GUEST_REBOOTED),
                Ok(RunOutcome::Exited(GuestExit::Panic)) => ExitCode::from(exit::GUEST_PANICKED),
                Ok(RunOutcome::Exited(GuestExit::Other(how))) => {
                    eprintln!("berth: guest ended: {how}");
                    ExitCode::from(exit::GUEST_OTHER)
                }
                Ok(RunOutcome::TimedOut) => ExitCode::from(exit::TIMEOUT),
                Err(err) => {
                    report(&err);
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn ctl_args(line: &[&str]) -> (Option<PathBuf>, Option<PathBuf>, Vec<String>) {
        match Cli::try_parse_from(line).map(|cli| cli.command) {
            Ok(Command::Ctl {
                socket,
                image,
                args,
                ..
            }) => (socket, image, args),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn ctl_passes_the_verb_and_its_arguments_through_untouched() {
        let (socket, image, args) = ctl_args(&[
            "berth", "ctl", "--image", "out", "exec", "-it", "web", "--", "sh", "-c", "exit 3",
        ]);
        assert_eq!((socket, image), (None, Some(PathBuf::from("out"))));
        assert_eq!(args, ["exec", "-it", "web", "--", "sh", "-c", "exit 3"]);
        let (socket, _, args) = ctl_args(&[
            "berth", "ctl", "--socket", "/s", "--json", "logs", "-f", "--since", "1m", "web",
        ]);
        assert_eq!(socket, Some(PathBuf::from("/s")));
        assert_eq!(args, ["--json", "logs", "-f", "--since", "1m", "web"]);
        let (_, _, args) = ctl_args(&["berth", "ctl", "--image", "out", "ps", "--help"]);
        assert_eq!(args, ["ps", "--help"]);
    }

    #[test]
    fn ctl_needs_exactly_one_way_to_the_port() {
        assert!(Cli::try_parse_from(["berth", "ctl", "ps"]).is_err());
        assert!(
            Cli::try_parse_from(["berth", "ctl", "--socket", "s", "--image", "d", "ps"]).is_err()
        );
        assert!(Cli::try_parse_from(["berth", "ctl", "--image", "d"]).is_err());
    }
}
