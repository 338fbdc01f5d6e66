//! The boot sequence, one step per function, in the order they must run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_manifest::{Manifest, ManifestError};
use log::LevelFilter;
use nix::sys::signal::SigmaskHow;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::coldplug::Coldplug;
use crate::event::Event;
use crate::event_loop::EventLoop;
use crate::images::ImageCache;
use crate::kmod::{self, KernelLoader, ModuleLoading};
use crate::mounts::{self, SystemMounter};
use crate::services::{self, Service};
use crate::supervisor::Supervisor;
use crate::watchdog::Watchdog;
use crate::{
    clock, clock_floor, cmdline, config_source, data_partition, host_setup, logger, metadata,
    root_switch, signals, storage,
};

/// Module lists the image builder writes (power-button drivers and the like), in
/// systemd's `modules-load.d` format.
const MODULES_LOAD_DIR: &str = "/etc/modules-load.d";

/// Boots the host and serves events until shutdown. Never returns.
pub fn boot_and_serve() -> ! {
    let init_started = clock::since_kernel_start();
    logger::install(LevelFilter::Info);
    install_panic_hook();

    // Off the initramfs before anything else: containers pivot_root, which rootfs forbids.
    let root_switch_error = root_switch::switch_off_rootfs().err();

    // /proc, /sys and /dev come first: everything after reads or writes them.
    let mount_failures = mounts::mount_early(&mut SystemMounter);
    logger::attach_kmsg();
    Event::new("init-started")
        .field("version", env!("CARGO_PKG_VERSION"))
        .field("kernel_ms", init_started.as_millis())
        .emit();
    for failure in &mount_failures {
        log::error!("{failure}");
    }
    let (params, warnings) = cmdline::read();
    log::set_max_level(params.log_level);
    for warning in warnings {
        log::warn!("{warning}");
    }
    if let Some(err) = root_switch_error {
        log::error!("cannot move the root off the initramfs ({err}); containers cannot start");
    }
    // Before anything stamps a time on state (logs, the machine-id's neighbours, TLS checks
    // by berth-pull): a clock years behind is put at the image's build time.
    clock_floor::apply();

    // Signals are blocked and read through a signalfd before anything can send one.
    let signal_fd = open_signal_fd();
    if let Err(err) = nix::sys::reboot::set_cad_enabled(false) {
        log::warn!("cannot route Ctrl-Alt-Del to init: {err}");
    }

    // The manifest decides the rest; a bad one leaves the host up, degraded, and powered by
    // the same event loop so the power button still works.
    // The image store is opened once: the manifest is checked against it, then the
    // supervisor prepares images from it.
    let mut images = ImageCache::new();
    let mut started_netd: Option<Service> = None;
    // Drivers first: the data partition and the outside configuration sources are devices.
    let mut coldplug = guarded("coldplug", || None, load_modules);
    // State before anything writes it: the machine-id and the containers may live on it.
    guarded(
        "data-partition",
        || (),
        || data_partition::mount(params.data.as_ref(), &mut coldplug),
    );
    if let Some(slot) = &params.slot {
        Event::new("boot-slot").field("slot", slot).emit();
    }
    // init's own cgroup (and netd's, which inherits it) before netd may start.
    host_setup::cgroups();
    // Outside sources report themselves as `config`; the image's own manifest is reported
    // below, once the metadata service (if asked) has not replaced it.
    let mut outside_source = true;
    let outside = guarded(
        "config-source",
        || None,
        || config_source::outside(&mut images, &mut coldplug),
    );
    let manifest = match outside {
        Some((manifest, _)) => Ok(manifest),
        None => {
            let manifest = load_manifest(&params.manifest, &mut images);
            // netd always reads the manifest in use from /run, whatever its source.
            config_source::save(
                &config_source::read_manifest_text(
                    &params.manifest,
                    berth_runtime::FollowLinks::Yes,
                )
                .ok()
                .flatten()
                .unwrap_or_default(),
            );
            // On an EC2 instance the metadata service outranks the baked manifest; it can be
            // asked only once netd has the network up, so netd starts now, on the baked one.
            if metadata::wanted(params.metadata_ec2) {
                let mut netd = netd_service();
                netd.start(std::time::Instant::now());
                started_netd = Some(netd);
                if let Some(from_metadata) = config_source::from_metadata(&mut images) {
                    // netd re-reads the manifest, keeping its leases.
                    if let Some(netd) = &started_netd {
                        netd.signal(nix::sys::signal::Signal::SIGHUP);
                    }
                    Ok(from_metadata)
                } else {
                    outside_source = false;
                    manifest
                }
            } else {
                outside_source = false;
                manifest
            }
        }
    };
    if !outside_source && manifest.is_ok() {
        Event::new("config")
            .field("source", "image")
            .field("origin", params.manifest.display())
            .emit();
    }
    if let (Ok(manifest), Some(coldplug)) = (&manifest, coldplug.as_mut()) {
        load_manifest_modules(manifest, coldplug);
    }
    let hostname = manifest
        .as_ref()
        .map_or(Manifest::DEFAULT_HOSTNAME, Manifest::hostname)
        .to_string();
    if let Err(err) = nix::unistd::sethostname(&hostname) {
        log::error!("cannot set hostname {hostname}: {err}");
    }

    // Storage before anything that writes state: the machine-id and the containers may live
    // on it.
    let failed_mounts = match &manifest {
        Ok(manifest) => guarded(
            "storage",
            || {
                manifest
                    .mounts
                    .iter()
                    .map(|m| PathBuf::from(&m.target.0))
                    .collect()
            },
            || storage::mount_all(&manifest.mounts, &mut coldplug),
        ),
        Err(_) => Vec::new(),
    };
    host_setup::write_hosts(&hostname);
    host_setup::machine_id();
    if let Ok(manifest) = &manifest {
        host_setup::apply_sysctls(manifest);
    }

    let Some(signal_fd) = signal_fd else {
        log::error!("no signalfd: init cannot serve events; idling");
        idle_forever()
    };
    // The network comes up alongside the rest; netd says when its leases are bound.
    let netd = started_netd.unwrap_or_else(|| {
        let mut netd = netd_service();
        netd.start(std::time::Instant::now());
        netd
    });
    // The containers' bridge and NAT drivers load while netd brings the links up: nothing
    // needs them before the first container starts, and DHCP is mostly waiting.
    if let (Ok(manifest), Some(coldplug)) = (&manifest, coldplug.as_mut()) {
        let names: Vec<String> = manifest
            .container_network_modules()
            .iter()
            .map(|m| m.to_string())
            .collect();
        load_named_modules(&names, coldplug);
    }
    let mut event_loop = EventLoop::new(signal_fd, &params, coldplug);
    event_loop.adopt_service(netd);
    // The remote API only when the manifest asks for it; it relays to the control socket,
    // which the event loop serves, so it may start before the loop turns.
    if manifest.as_ref().is_ok_and(|m| m.api.is_some()) {
        let mut apid = daemon_on_run_manifest("apid", services::APID, &[]);
        apid.start(std::time::Instant::now());
        event_loop.adopt_service(apid);
    }
    // The log shipper follows the journal on the control socket too; started before the
    // loop turns, it is connected before most containers print.
    if manifest.as_ref().is_ok_and(|m| m.logs.enabled()) {
        let mut shipper =
            daemon_on_run_manifest("log-shipper", services::APID, &[services::SHIP_LOGS]);
        shipper.start(std::time::Instant::now());
        event_loop.adopt_service(shipper);
    }
    // Armed only now, right before the loop that feeds it first turns; a host whose
    // manifest was refused still has its loop, and the default settings.
    let watchdog_settings = manifest
        .as_ref()
        .map(|m| m.watchdog.clone())
        .unwrap_or_default();
    match Watchdog::arm(&watchdog_settings, !params.test_watchdog_nofeed) {
        Ok(Some(watchdog)) => event_loop.feed_watchdog(watchdog),
        Ok(None) => {}
        Err(err) => {
            log::error!("{err}");
            Event::new("watchdog-failed").field("error", err).emit();
        }
    }
    let now = clock::since_kernel_start();
    match &manifest {
        Ok(_) => Event::new("ready")
            .field("hostname", hostname)
            .field("boot_ms", now.as_millis())
            .field("init_ms", now.saturating_sub(init_started).as_millis())
            .field("power_button", event_loop.power_buttons().count() > 0)
            .emit(),
        Err(err) => Event::new("degraded")
            .field("reason", "manifest")
            .field("boot_ms", now.as_millis())
            .field("error", err)
            .emit(),
    }
    if let Ok(manifest) = &manifest {
        event_loop.supervise(Supervisor::new(manifest, &failed_mounts, images));
    }
    event_loop.serve()
}

/// netd, reading the manifest in use from `/run`.
fn netd_service() -> Service {
    daemon_on_run_manifest("netd", services::NETD, &[])
}

/// One of berth's daemons at `path`, reading the manifest in use from `/run`.
fn daemon_on_run_manifest(name: &'static str, path: &str, first_args: &[&str]) -> Service {
    let args = first_args
        .iter()
        .map(|a| a.to_string())
        .chain([
            "--manifest".to_string(),
            config_source::RUN_MANIFEST.to_string(),
        ])
        .collect();
    Service::new(name, path, args)
}

/// Runs one boot step that reads what outside parties control (disks, their partition
/// tables and filesystems, configuration media, kernel modules) so that a panic in it, ours
/// or a crate's (the `gpt` crate asserts on some crafted tables), costs that step only: the
/// panic hook has logged where, `boot-step-failed` says which step, and boot goes on with
/// `fallback`. The event loop has the same guard around every turn.
fn guarded<T>(step: &str, fallback: impl FnOnce() -> T, run: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(value) => value,
        Err(_) => {
            Event::new("boot-step-failed")
                .field("step", step)
                .field("reason", "panicked")
                .emit();
            fallback()
        }
    }
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error!("init panicked at {location}: {message}");
    }));
}

fn open_signal_fd() -> Option<SignalFd> {
    let handled = signals::handled();
    if let Err(err) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled), None) {
        log::error!("cannot block signals: {err}");
    }
    match SignalFd::with_flags(&handled, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => Some(fd),
        Err(err) => {
            log::error!("cannot open a signalfd: {err}");
            None
        }
    }
}

/// Reads, parses and validates the manifest, including that every image it names is in the
/// image store: the same checks `berth build` makes.
fn load_manifest(path: &Path, images: &mut ImageCache) -> Result<Manifest, ManifestError> {
    let manifest = config_source::read_manifest_text(path, berth_runtime::FollowLinks::Yes)
        .and_then(|text| text.ok_or_else(|| "no such file".to_string()))
        .map_err(|message| ManifestError::Read {
            file: path.to_path_buf(),
            source: std::io::Error::other(message),
        })
        .and_then(|text| {
            let manifest = Manifest::parse(&text, path)?;
            manifest.check_images(&text, path, &images.references())?;
            Ok(manifest)
        });
    match &manifest {
        Ok(_) => log::info!("manifest {} loaded", path.display()),
        Err(
            err @ ManifestError::Invalid {
                file,
                line,
                column,
                field,
                message,
            },
        ) => {
            log::error!("{err}");
            Event::new("manifest-invalid")
                .field("file", file.display())
                .field("line", line)
                .field("column", column)
                .field("field", field)
                .field("error", message)
                .emit();
        }
        Err(err) => log::error!("{err}"),
    }
    manifest
}

/// The manifest's `[boot] modules` and what its links need, once the manifest is known.
fn load_manifest_modules(manifest: &Manifest, coldplug: &mut Coldplug) {
    let names: Vec<String> = manifest
        .boot_modules()
        .map(|m| m.canonical())
        .chain(manifest.link_modules().into_iter().map(str::to_string))
        .collect();
    load_named_modules(&names, coldplug);
}

fn load_named_modules(names: &[String], coldplug: &mut Coldplug) {
    for name in names {
        if let Err(err) = coldplug.loading().load(name) {
            log::error!("module {name}: {err}");
        }
    }
}

/// Loads the image's own module lists, then drivers for the hardware that is there. None
/// when the kernel's module index cannot be read.
fn load_modules() -> Option<Coldplug> {
    // A kernel with its drivers built in (berth's own) has no module tree at all.
    let has_modules = nix::sys::utsname::uname()
        .is_ok_and(|uts| Path::new("/lib/modules").join(uts.release()).exists());
    if !has_modules {
        log::info!("no module tree for this kernel: its drivers are built in");
        return None;
    }
    let index = match kmod::index_for_running_kernel() {
        Ok(index) => index,
        Err(err) => {
            log::error!("no kernel modules can be loaded: {err}");
            return None;
        }
    };
    let names = modules_load_d(Path::new(MODULES_LOAD_DIR));
    let started = std::time::Instant::now();
    let mut loading = ModuleLoading::new(index, KernelLoader);
    let mut failed = 0usize;
    for name in &names {
        if let Err(err) = loading.load(name) {
            failed += 1;
            log::error!("module {name}: {err}");
        }
    }
    log::info!(
        "modules: {} requested, {failed} failed, in {} ms",
        names.len(),
        started.elapsed().as_millis()
    );
    let mut coldplug = Coldplug::new(loading);
    coldplug.scan();
    Some(coldplug)
}

fn modules_load_d(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "conf"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|text| kmod::parse_modules_load(&text))
        .collect()
}

fn idle_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        crate::shutdown::reap_exited();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::panic, reason = "the step under test panics on purpose")]
    fn a_step_that_panics_gives_its_fallback_and_boot_goes_on() {
        let value: u32 = guarded("test", || 7, || panic!("a crafted partition table"));
        assert_eq!(value, 7);
        assert_eq!(guarded("test", || 7, || 1), 1);
    }
}
