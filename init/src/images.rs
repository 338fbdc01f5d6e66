//! The image store in the guest: images baked by `berth build` as one OCI layout, and their
//! layers unpacked once each into a content-addressed directory that overlayfs stacks.
//!
//! Every blob is checked against its digest as it is read, and every layer's uncompressed
//! stream against the image config's `diff_id`, so a corrupted image never runs.
//!
//! Unpacking is a child process of init, never PID 1 itself: decompressing and untarring a
//! layer someone else wrote takes unbounded time, and reads mapped blobs (an I/O error there
//! is a SIGBUS). The child unpacks an image's missing layers within [`UnpackLimits`] and
//! exits; init waits for nothing, kills it past [`UNPACK_TIMEOUT`], and reaps it like any
//! other child. Meanwhile the image's containers wait, as for a pull.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_oci::{ContainerConfig, Descriptor, Digest, Layout, UnpackLimits};
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid};

use crate::event::Event;

/// How long the child unpacking an image's layers may take: ten minutes, time for a few GiB
/// of layers on a slow disk. Past it the child is killed and the image reported as failed.
pub const UNPACK_TIMEOUT: Duration = Duration::from_secs(600);
/// The most of the child's report that init reads (an error message, or its figures).
const MAX_REPORT: usize = 4096;
/// How the child's report of a success begins; anything else is an error message.
const UNPACKED: &str = "unpacked";

/// The OCI layout `berth build` writes into the image: read-only, and outside
/// `/var/lib/berth` so that a data disk mounted there does not hide it.
pub const IMAGE_STORE: &str = "/usr/lib/berth/images";
/// Unpacked layers, one directory per `diff_id`, shared by every image and container.
pub const LAYER_STORE: &str = "/var/lib/berth/layers";

/// An image ready to run: its layers on disk and its default process settings.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// Layer directories, topmost first, as overlayfs' `lowerdir` wants them.
    pub lower_dirs: Vec<PathBuf>,
    pub config: ContainerConfig,
}

/// Images pulled from registries (by berth-pull), an OCI layout too: on the data partition
/// when there is one, so pulls are kept across boots.
pub const PULLED_STORE: &str = "/var/lib/berth/images";

/// Where an image stands when a container asks for it.
#[derive(Debug, Clone)]
pub enum Prepared {
    Ready(PreparedImage),
    /// A child unpacks its layers; ask again once [`ImageCache::on_exit`] took its exit.
    Unpacking,
}

/// An unpack child under way.
#[derive(Debug)]
struct Unpacking {
    pid: Pid,
    /// The read end of the child's report.
    report: OwnedFd,
    started: Instant,
    /// The layers it unpacks (diff_ids), in its order: the first still missing is the one it
    /// was at when it died.
    layers: Vec<Digest>,
    /// The image, once its layers are there.
    image: PreparedImage,
    /// Killed past [`UNPACK_TIMEOUT`].
    killed: bool,
    /// The image was pulled anew meanwhile: this result is not kept.
    stale: bool,
}

/// What a successful unpack child did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Figures {
    layers: u64,
    bytes: u64,
    entries: u64,
}

/// What preparing an image needs: where its blobs are, and which layers are missing.
struct Plan {
    layout: Layout,
    image: PreparedImage,
    missing: Vec<(Descriptor, Digest)>,
}

/// Images prepared so far, by reference; each is prepared once per boot.
#[derive(Debug, Default)]
pub struct ImageCache {
    baked: Option<Layout>,
    pulled: Option<Layout>,
    prepared: HashMap<String, Result<PreparedImage, String>>,
    unpacking: HashMap<String, Unpacking>,
}

impl ImageCache {
    pub fn new() -> ImageCache {
        ImageCache::default()
    }

    /// The image named `reference` (`name:tag`): ready when its layers are on disk, or
    /// [`Prepared::Unpacking`] while a child unpacks them (one child per image at a time).
    /// A failed unpack is kept as this image's error for the boot.
    pub fn prepare(&mut self, reference: &str) -> Result<Prepared, String> {
        if let Some(result) = self.prepared.get(reference) {
            return result.clone().map(Prepared::Ready);
        }
        if self.unpacking.contains_key(reference) {
            return Ok(Prepared::Unpacking);
        }
        let plan = match self.plan(reference) {
            Ok(plan) => plan,
            Err(err) => {
                self.prepared
                    .insert(reference.to_string(), Err(err.clone()));
                return Err(err);
            }
        };
        if plan.missing.is_empty() {
            log::info!(
                "image {reference}: {} layers, unpacked already",
                plan.image.lower_dirs.len()
            );
            self.prepared
                .insert(reference.to_string(), Ok(plan.image.clone()));
            return Ok(Prepared::Ready(plan.image));
        }
        let shared = plan
            .missing
            .iter()
            .any(|(_, d)| self.unpacking.values().any(|u| u.layers.contains(d)));
        if shared {
            // Another image's child unpacks a layer of this one: this one is planned again
            // once that child has exited, rather than unpacking the same layer twice.
            return Ok(Prepared::Unpacking);
        }
        // Not kept: a child that could not start (no memory, say) is tried again next time.
        let unpacking = start_unpack(reference, plan)?;
        self.unpacking.insert(reference.to_string(), unpacking);
        Ok(Prepared::Unpacking)
    }

    /// Whether a child unpacks `reference` now, for `berthctl ps`.
    pub fn is_unpacking(&self, reference: &str) -> bool {
        self.unpacking.contains_key(reference)
    }

    /// A reaped child: true when it was an unpack child. Its image becomes ready, or its
    /// error is kept for the containers that start it.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let Some(reference) = self
            .unpacking
            .iter()
            .find(|(_, u)| u.pid == pid)
            .map(|(reference, _)| reference.clone())
        else {
            return false;
        };
        let Some(unpacking) = self.unpacking.remove(&reference) else {
            return false;
        };
        let report = read_report(unpacking.report);
        let at = unpacking
            .layers
            .iter()
            .find(|diff_id| !berth_oci::layer_dir(Path::new(LAYER_STORE), diff_id).is_dir());
        let result = outcome(&reference, status, unpacking.killed, at, &report);
        match &result {
            Ok(figures) => Event::new("image-unpacked")
                .field("image", &reference)
                .field("layers", figures.layers)
                .field("bytes", figures.bytes)
                .field("entries", figures.entries)
                .field("duration_ms", unpacking.started.elapsed().as_millis())
                .emit(),
            Err(error) => Event::new("image-unpack-failed")
                .field("image", &reference)
                .field("error", error)
                .emit(),
        }
        if !unpacking.stale {
            let result = result.map(|_| unpacking.image);
            self.prepared.insert(reference, result);
        }
        true
    }

    /// SIGKILL for an unpack child past [`UNPACK_TIMEOUT`]; its exit reports the failure.
    pub fn kill_overdue(&mut self, now: Instant) {
        for (reference, unpacking) in &mut self.unpacking {
            if !unpacking.killed && now >= unpacking.started + UNPACK_TIMEOUT {
                unpacking.killed = true;
                log::warn!(
                    "image {reference}: unpacking for more than {} s; killing process {}",
                    UNPACK_TIMEOUT.as_secs(),
                    unpacking.pid
                );
                let _ = kill(unpacking.pid, Signal::SIGKILL);
            }
        }
    }

    /// When the earliest unpack child is due to be killed, for the event loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.unpacking
            .values()
            .filter(|u| !u.killed)
            .map(|u| u.started + UNPACK_TIMEOUT)
            .min()
    }

    /// The names of the images on the host: baked into the image, then pulled.
    pub fn references(&mut self) -> Vec<String> {
        let mut references = self.baked().map(Layout::references).unwrap_or_default();
        references.extend(self.pulled().map(Layout::references).unwrap_or_default());
        references
    }

    /// Whether the host has `reference`, baked or pulled.
    pub fn has(&mut self, reference: &str) -> bool {
        self.references().iter().any(|r| r == reference)
    }

    /// Whether `reference` was baked into the image (it is never pulled then).
    pub fn is_baked(&mut self, reference: &str) -> bool {
        self.baked()
            .map(Layout::references)
            .is_ok_and(|refs| refs.iter().any(|r| r == reference))
    }

    /// A pull rewrote the pulled store: it is read again, and `reference` prepared anew.
    pub fn pulled_changed(&mut self, reference: &str) {
        self.pulled = None;
        self.prepared.remove(reference);
        if let Some(unpacking) = self.unpacking.get_mut(reference) {
            unpacking.stale = true;
        }
    }

    fn baked(&mut self) -> Result<&Layout, String> {
        if self.baked.is_none() {
            let layout = Layout::open(Path::new(IMAGE_STORE))
                .map_err(|e| format!("image store {IMAGE_STORE}: {e}"))?;
            self.baked = Some(layout);
        }
        self.baked
            .as_ref()
            .ok_or_else(|| format!("image store {IMAGE_STORE} is not open"))
    }

    fn pulled(&mut self) -> Result<&Layout, String> {
        if self.pulled.is_none() {
            let layout = Layout::open(Path::new(PULLED_STORE))
                .map_err(|e| format!("image store {PULLED_STORE}: {e}"))?;
            self.pulled = Some(layout);
        }
        self.pulled
            .as_ref()
            .ok_or_else(|| format!("image store {PULLED_STORE} is not open"))
    }

    /// The store that holds `reference`: the baked one first.
    fn layout(&mut self, reference: &str) -> Result<&Layout, String> {
        if self.is_baked(reference) {
            return self.baked();
        }
        let pulled = self
            .pulled()
            .is_ok_and(|l| l.references().iter().any(|r| r == reference));
        if pulled {
            return self.pulled();
        }
        Err(format!("no image `{reference}` on this host"))
    }

    /// The layer directories (`diff_id`s) every image on the host uses, to tell which
    /// unpacked layers an image prune may remove.
    pub fn layers_in_use(&mut self) -> std::collections::HashSet<PathBuf> {
        let mut dirs = std::collections::HashSet::new();
        for layout in [self.baked().ok().cloned(), self.pulled().ok().cloned()]
            .into_iter()
            .flatten()
        {
            for reference in layout.references() {
                if let Ok(image) = layout.resolve(&reference) {
                    for (_, diff_id) in image.layers() {
                        dirs.insert(berth_oci::layer_dir(Path::new(LAYER_STORE), diff_id));
                    }
                }
            }
        }
        dirs
    }

    /// Forgets every pulled image read so far (after an image prune).
    pub fn forget_pulled(&mut self) {
        self.pulled = None;
        self.prepared.clear();
    }

    /// Resolves `reference` and finds which of its layers are not unpacked yet.
    fn plan(&mut self, reference: &str) -> Result<Plan, String> {
        let layout = self.layout(reference)?.clone();
        let image = layout.resolve(reference).map_err(|e| e.to_string())?;
        let mut lower_dirs = Vec::new();
        let mut missing: Vec<(Descriptor, Digest)> = Vec::new();
        for (descriptor, diff_id) in image.layers() {
            let dir = berth_oci::layer_dir(Path::new(LAYER_STORE), diff_id);
            if !dir.is_dir() && !missing.iter().any(|(_, d)| d == diff_id) {
                missing.push((descriptor.clone(), diff_id.clone()));
            }
            lower_dirs.push(dir);
        }
        // The manifest lists layers bottom first; overlayfs wants the top first.
        lower_dirs.reverse();
        Ok(Plan {
            image: PreparedImage {
                lower_dirs,
                config: image.config.config.clone().unwrap_or_default(),
            },
            layout,
            missing,
        })
    }
}

/// Forks the child that unpacks `plan`'s missing layers.
fn start_unpack(reference: &str, plan: Plan) -> Result<Unpacking, String> {
    let cannot = |e: nix::Error| format!("image `{reference}`: cannot start unpacking: {e}");
    // Non-blocking: init never waits on the child's report, it reads what is there.
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(cannot)?;
    // SAFETY: init is single-threaded, so no lock (the allocator's, the logger's) is held by
    // another thread at the fork that the child could wait on forever. The child runs only
    // `unpack_child`, which never returns into init's code: it ends in `_exit`.
    match unsafe { nix::unistd::fork() }.map_err(cannot)? {
        ForkResult::Child => unpack_child(reference, &plan, write),
        ForkResult::Parent { child } => {
            drop(write);
            Event::new("image-unpacking")
                .field("image", reference)
                .field("pid", child)
                .field("layers", plan.missing.len())
                .emit();
            Ok(Unpacking {
                pid: child,
                report: read,
                started: Instant::now(),
                layers: plan.missing.into_iter().map(|(_, d)| d).collect(),
                image: plan.image,
                killed: false,
                stale: false,
            })
        }
    }
}

/// The unpack child: unpacks, writes its report (figures or error) and exits, 0 on success.
fn unpack_child(reference: &str, plan: &Plan, report: OwnedFd) -> ! {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        crate::helper_child::detach_from_init(report.as_raw_fd());
        unpack_missing(reference, plan)
    }));
    let (code, text) = match outcome {
        Ok(Ok(figures)) => (0, report_line(&figures)),
        Ok(Err(message)) => (1, message),
        Err(_) => (
            1,
            format!("image `{reference}`: the unpack process panicked"),
        ),
    };
    let bounded = text.get(..MAX_REPORT).unwrap_or(text.as_str());
    let _ = std::fs::File::from(report).write_all(bounded.as_bytes());
    crate::helper_child::exit(code)
}

/// Unpacks `plan`'s missing layers, bottom first, within the default [`UnpackLimits`].
fn unpack_missing(reference: &str, plan: &Plan) -> Result<Figures, String> {
    let limits = UnpackLimits::default();
    let mut figures = Figures::default();
    for (descriptor, diff_id) in &plan.missing {
        let blob = plan
            .layout
            .map_descriptor(descriptor)
            .map_err(|e| format!("image `{reference}`: layer {diff_id}: {e}"))?;
        // The error names the layer (`layer sha256:...: reason`).
        let stats = berth_oci::unpack_layer_into_store_with_limits(
            &blob,
            &descriptor.media_type,
            diff_id,
            Path::new(LAYER_STORE),
            &limits,
        )
        .map_err(|e| format!("image `{reference}`: {e}"))?;
        if let Some(stats) = stats {
            figures.layers += 1;
            figures.bytes += stats.bytes;
            figures.entries += stats.entries;
        }
    }
    Ok(figures)
}

fn report_line(figures: &Figures) -> String {
    format!(
        "{UNPACKED} layers={} bytes={} entries={}\n",
        figures.layers, figures.bytes, figures.entries
    )
}

fn parse_report(text: &str) -> Option<Figures> {
    let mut words = text.split_whitespace();
    if words.next() != Some(UNPACKED) {
        return None;
    }
    let mut figures = Figures::default();
    for word in words {
        let (key, value) = word.split_once('=')?;
        let value = value.parse().ok()?;
        match key {
            "layers" => figures.layers = value,
            "bytes" => figures.bytes = value,
            "entries" => figures.entries = value,
            _ => {}
        }
    }
    Some(figures)
}

/// What the child wrote, without waiting for more: it has exited, so the pipe holds all.
fn read_report(report: OwnedFd) -> String {
    crate::helper_child::read_available(report, MAX_REPORT)
        .trim()
        .to_string()
}

/// The figures of a finished unpack child, or the error that names the image, the layer it
/// was at (`at`) and the reason.
fn outcome(
    reference: &str,
    status: WaitStatus,
    killed: bool,
    at: Option<&Digest>,
    report: &str,
) -> Result<Figures, String> {
    let layer = at.map_or_else(|| "-".to_string(), Digest::to_string);
    if killed {
        return Err(format!(
            "image `{reference}`: layer {layer}: unpacking took longer than {} s; killed",
            UNPACK_TIMEOUT.as_secs()
        ));
    }
    match status {
        WaitStatus::Exited(_, 0) => parse_report(report).ok_or_else(|| {
            format!("image `{reference}`: the unpack process ended without its figures")
        }),
        WaitStatus::Exited(_, _) if !report.is_empty() => Err(report.to_string()),
        WaitStatus::Exited(_, code) => Err(format!(
            "image `{reference}`: layer {layer}: the unpack process exited with {code}"
        )),
        WaitStatus::Signaled(_, signal, _) => Err(format!(
            "image `{reference}`: layer {layer}: the unpack process was killed by {signal}"
        )),
        other => Err(format!(
            "image `{reference}`: layer {layer}: the unpack process ended: {other:?}"
        )),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::sha256_of(b"layer")
    }

    #[test]
    fn the_childs_report_becomes_figures_or_an_error_naming_image_and_layer() {
        let pid = Pid::from_raw(7);
        let figures = Figures {
            layers: 2,
            bytes: 4096,
            entries: 12,
        };
        let line = report_line(&figures);
        assert_eq!(
            outcome(
                "web:1",
                WaitStatus::Exited(pid, 0),
                false,
                None,
                line.trim()
            ),
            Ok(figures)
        );
        let error =
            "image `web:1`: layer sha256:ab: cannot read the tar stream: corrupt deflate stream";
        assert_eq!(
            outcome("web:1", WaitStatus::Exited(pid, 1), false, None, error),
            Err(error.to_string())
        );
        let layer = digest();
        let killed = outcome(
            "web:1",
            WaitStatus::Signaled(pid, Signal::SIGKILL, false),
            true,
            Some(&layer),
            "",
        )
        .unwrap_err();
        assert!(killed.contains("web:1"), "{killed}");
        assert!(killed.contains(&layer.to_string()), "{killed}");
        assert!(killed.contains("longer than 600 s"), "{killed}");
        let bus = outcome(
            "web:1",
            WaitStatus::Signaled(pid, Signal::SIGBUS, false),
            false,
            Some(&layer),
            "",
        )
        .unwrap_err();
        assert!(
            bus.contains("SIGBUS") && bus.contains(&layer.to_string()),
            "{bus}"
        );
        // Exit 0 without figures is no success.
        assert!(outcome("web:1", WaitStatus::Exited(pid, 0), false, None, "").is_err());
    }

    /// A real child (a `sleep`) stands in for an unpack child: past its time it is killed,
    /// its exit is taken, and the image's error is kept for the next start.
    #[test]
    #[expect(
        clippy::zombie_processes,
        reason = "waitpid reaps it, as init's loop would"
    )]
    fn an_overdue_child_is_killed_and_its_image_fails() {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        drop(write);
        let started = Instant::now();
        let mut cache = ImageCache::new();
        cache.unpacking.insert(
            "slow:1".to_string(),
            Unpacking {
                pid,
                report: read,
                started,
                layers: vec![digest()],
                image: PreparedImage {
                    lower_dirs: Vec::new(),
                    config: ContainerConfig::default(),
                },
                killed: false,
                stale: false,
            },
        );
        assert!(cache.is_unpacking("slow:1"));
        assert_eq!(cache.next_deadline(), Some(started + UNPACK_TIMEOUT));
        cache.kill_overdue(started + UNPACK_TIMEOUT - Duration::from_secs(1));
        assert!(!cache.unpacking.values().any(|u| u.killed), "not yet due");
        cache.kill_overdue(started + UNPACK_TIMEOUT);
        assert_eq!(cache.next_deadline(), None, "no timer once killed");
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        assert!(matches!(
            status,
            WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ));
        assert!(!cache.on_exit(Pid::from_raw(pid.as_raw() + 100_000), status));
        assert!(cache.on_exit(pid, status));
        assert!(!cache.is_unpacking("slow:1"));
        // The failure is kept for the next start.
        let error = cache.prepare("slow:1").unwrap_err();
        assert!(error.contains("longer than"), "{error}");
        assert!(error.contains(&digest().to_string()), "{error}");
    }
}
