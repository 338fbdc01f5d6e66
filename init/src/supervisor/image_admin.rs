//! `berthctl images` and `berthctl image prune`: what the host's image stores hold, and
//! removing what the running manifest no longer uses. The pulled store's bookkeeping
//! (sizes, garbage collection under the store's lock) is berth-pull's, run to completion
//! here; unpacked layers are init's own.

use std::path::Path;
use std::time::Duration;

use berth_control::{ImageInfo, PruneReport, PullResult};

use super::pulls::PULLER;
use super::Supervisor;
use crate::images::{LAYER_STORE, PULLED_STORE};

/// berth-pull's gc and usage read a few files; one that takes longer is stuck.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs berth-pull to completion and parses its result line.
fn run_puller(args: &[&str]) -> Result<PullResult, String> {
    if !Path::new(PULLED_STORE).join("oci-layout").is_file() {
        return Ok(PullResult {
            ok: true,
            ..PullResult::default()
        });
    }
    let mut command = std::process::Command::new(PULLER);
    command
        .args(args)
        .args(["--store", PULLED_STORE])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    crate::services::start_unblocked(&mut command);
    let child = command
        .spawn()
        .map_err(|e| format!("start {PULLER}: {e}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let output = read_with_deadline(child, pid)?;
    let result = berth_control::parse_pull_result(output.lines().last().unwrap_or_default())?;
    if result.ok {
        Ok(result)
    } else {
        Err(result
            .error
            .unwrap_or_else(|| "berth-pull failed".to_string()))
    }
}

/// The child's stdout, then its exit reaped; killed past [`ADMIN_TIMEOUT`].
fn read_with_deadline(
    mut child: std::process::Child,
    pid: nix::unistd::Pid,
) -> Result<String, String> {
    use std::io::Read;
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
        let fd = std::os::fd::AsFd::as_fd(&stdout);
        crate::control::set_nonblocking(fd);
        let mut buf = [0u8; 8192];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    output.push_str(&String::from_utf8_lossy(buf.get(..n).unwrap_or_default()))
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    Ok(output)
}

impl Supervisor {
    /// Every image on the host: baked ones first, then pulled ones with their sizes.
    pub fn images(&mut self) -> Result<Vec<ImageInfo>, String> {
        let usage = run_puller(&["usage"])?;
        let pulled = usage.images.unwrap_or_default();
        let mut images = Vec::new();
        for reference in self.images.references() {
            let found = pulled.iter().find(|p| p.reference == reference);
            let baked = self.images.is_baked(&reference);
            images.push(ImageInfo {
                source: if baked { "baked" } else { "pulled" }.to_string(),
                digest: found.map(|p| p.digest.clone()),
                unique_bytes: found.map(|p| p.unique_bytes),
                shared_bytes: found.map(|p| p.shared_bytes),
                reference,
            });
        }
        Ok(images)
    }

    /// Removes the pulled images no container uses, then the unpacked layers no image on
    /// the host uses (none of a running container's, which its image keeps).
    pub fn prune_images(&mut self) -> Result<PruneReport, String> {
        let keep: Vec<String> = self
            .containers
            .iter()
            .map(|c| c.config.image.get_ref().clone())
            .collect();
        let mut args = vec!["gc"];
        for reference in &keep {
            args.extend(["--keep", reference.as_str()]);
        }
        let gc = run_puller(&args)?;
        self.images.forget_pulled();
        let in_use = self.images.layers_in_use();
        let mut removed_layers = 0;
        let mut freed_bytes = gc.freed_bytes.unwrap_or_default();
        let algorithms = std::fs::read_dir(LAYER_STORE)
            .into_iter()
            .flatten()
            .flatten();
        for algorithm in algorithms {
            for layer in std::fs::read_dir(algorithm.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let dir = layer.path();
                let hidden = layer.file_name().to_string_lossy().starts_with('.');
                if hidden || in_use.contains(&dir) {
                    continue;
                }
                let size = dir_size(&dir);
                if std::fs::remove_dir_all(&dir).is_ok() {
                    removed_layers += 1;
                    freed_bytes += size;
                }
            }
        }
        let report = PruneReport {
            removed_images: gc.removed_refs.unwrap_or_default(),
            removed_blobs: gc.removed_blobs.map_or(0, |b| b.len()),
            removed_layers,
            freed_bytes,
        };
        crate::event::Event::new("image-pruned")
            .field(
                "images",
                if report.removed_images.is_empty() {
                    "-".to_string()
                } else {
                    report.removed_images.join(",")
                },
            )
            .field("blobs", report.removed_blobs)
            .field("layers", report.removed_layers)
            .field("freed_bytes", report.freed_bytes)
            .emit();
        Ok(report)
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => total += dir_size(&entry.path()),
            Ok(_) => total += entry.metadata().map_or(0, |m| m.len()),
            Err(_) => {}
        }
    }
    total
}
