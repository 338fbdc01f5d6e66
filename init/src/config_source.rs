//! Where the manifest comes from, first found wins: QEMU's `fw_cfg` (`opt/berth/manifest`),
//! a NoCloud seed (a vfat or iso9660 volume labelled `cidata` whose `user-data` is a berth
//! manifest), then the manifest baked into the image. Each outside source is validated whole
//! before it is used; a bad one is reported (`config-invalid`) and the next one tried, so a bad
//! seed never half-configures a host. On an EC2 instance (or with `berth.metadata=ec2`) the
//! instance metadata service comes third, asked once netd has the network online. The source
//! used is one `config` event.

use std::path::{Path, PathBuf};

use berth_blockdev::{find, DeviceSpec, SYS_CLASS_BLOCK};
use berth_manifest::{Manifest, ManifestError};
use berth_runtime::FollowLinks;

use crate::coldplug::{self, Coldplug};
use crate::event::Event;
use crate::images::ImageCache;

/// The most of a manifest init reads, from any source: manifests are a few KiB; more is
/// refused rather than held in PID 1's memory (EC2 itself caps user data at 16 KiB).
pub const MANIFEST_LIMIT: u64 = 1 << 20;

/// Reads a manifest's text from `path`: a regular file (a FIFO, device or, with
/// [`FollowLinks::No`], a symbolic link is refused with its path, never read) of at most
/// [`MANIFEST_LIMIT`] bytes, in UTF-8. `None` when there is no such file.
pub fn read_manifest_text(path: &Path, follow: FollowLinks) -> Result<Option<String>, String> {
    let Some(bytes) = berth_runtime::read_regular_file(path, MANIFEST_LIMIT, follow)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| format!("{}: not UTF-8 text ({e})", path.display()))
}

const FW_CFG_MANIFEST: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/berth/manifest/raw";
/// The manifest taken from outside the image, for netd and for the operator to read.
pub const RUN_MANIFEST: &str = "/run/berth/manifest.toml";
const CIDATA_MOUNT: &str = "/run/berth/cidata";

/// A manifest read from an outside source, named as error messages name it.
struct Candidate {
    source: &'static str,
    origin: PathBuf,
    text: String,
}

fn from_fw_cfg() -> Option<Candidate> {
    let text = match read_manifest_text(Path::new(FW_CFG_MANIFEST), FollowLinks::Yes) {
        Ok(text) => text?,
        Err(err) => {
            Event::new("config-invalid")
                .field("source", "fw_cfg")
                .field("error", err)
                .emit();
            return None;
        }
    };
    Some(Candidate {
        source: "fw_cfg",
        origin: PathBuf::from("fw_cfg:opt/berth/manifest"),
        text,
    })
}

fn from_nocloud(coldplug: &mut Option<Coldplug>) -> Option<Candidate> {
    // vfat labels are upper case as mkfs.vfat writes them; iso9660 keeps what genisoimage got.
    let device = ["cidata", "CIDATA"].into_iter().find_map(|label| {
        find(
            &DeviceSpec::Label(label.to_string()),
            Path::new(SYS_CLASS_BLOCK),
            Path::new("/dev"),
        )
    })?;
    let fstype = device.fs.as_ref()?.fstype.clone();
    if let Some(coldplug) = coldplug.as_mut() {
        coldplug::load_filesystem(coldplug.loading(), &fstype);
    }
    if let Err(err) = std::fs::create_dir_all(CIDATA_MOUNT) {
        log::error!("create {CIDATA_MOUNT}: {err}");
        return None;
    }
    let mounted = nix::mount::mount(
        Some(&device.node),
        CIDATA_MOUNT,
        Some(fstype.as_str()),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    );
    if let Err(err) = mounted {
        Event::new("config-invalid")
            .field("source", "nocloud")
            .field("error", format!("mount {}: {err}", device.node.display()))
            .emit();
        return None;
    }
    // The seed is someone else's medium: its user-data may be a link (Rock Ridge) to a
    // device or FIFO of the host, or far too large.
    let text = read_manifest_text(&Path::new(CIDATA_MOUNT).join("user-data"), FollowLinks::No)
        .and_then(|text| text.ok_or_else(|| "no such file".to_string()));
    let _ = nix::mount::umount(CIDATA_MOUNT);
    match text {
        Ok(text) => Some(Candidate {
            source: "nocloud",
            origin: PathBuf::from(format!("{}:user-data", device.node.display())),
            text,
        }),
        Err(err) => {
            Event::new("config-invalid")
                .field("source", "nocloud")
                .field(
                    "error",
                    format!("{}: no user-data: {err}", device.node.display()),
                )
                .emit();
            None
        }
    }
}

fn validate(candidate: &Candidate, images: &mut ImageCache) -> Result<Manifest, ManifestError> {
    let manifest = Manifest::parse(&candidate.text, &candidate.origin)?;
    manifest.check_images(&candidate.text, &candidate.origin, &images.references())?;
    Ok(manifest)
}

/// Saves the manifest in use where netd reads it.
pub fn save(text: &str) {
    let saved =
        std::fs::create_dir_all("/run/berth").and_then(|()| std::fs::write(RUN_MANIFEST, text));
    if let Err(err) = saved {
        log::error!("save {RUN_MANIFEST}: {err}");
    }
}

/// The manifest in the instance's EC2 user data, once the network is online; None when there
/// is none or it is refused (reported).
pub fn from_metadata(images: &mut ImageCache) -> Option<Manifest> {
    let deadline = std::time::Instant::now() + METADATA_NETWORK_TIMEOUT;
    while !Path::new(NETWORK_ONLINE_MARKER).exists() {
        if std::time::Instant::now() >= deadline {
            Event::new("config-invalid")
                .field("source", "ec2")
                .field("error", "the network did not come online")
                .emit();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let text = match crate::metadata::user_data() {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(err) => {
            Event::new("config-invalid")
                .field("source", "ec2")
                .field("error", err)
                .emit();
            return None;
        }
    };
    let candidate = Candidate {
        source: "ec2",
        origin: PathBuf::from("ec2:latest/user-data"),
        text,
    };
    accept(candidate, images)
}

/// How long the metadata source waits for netd's first lease.
const METADATA_NETWORK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// netd's marker of the network being online.
const NETWORK_ONLINE_MARKER: &str = "/run/berth/network-online";

/// Validates `candidate`; when good, saves it for netd and reports the source.
fn accept(candidate: Candidate, images: &mut ImageCache) -> Option<Manifest> {
    match validate(&candidate, images) {
        Ok(manifest) => {
            save(&candidate.text);
            Event::new("config")
                .field("source", candidate.source)
                .field("origin", candidate.origin.display())
                .emit();
            Some(manifest)
        }
        Err(err) => {
            log::error!("{err}");
            Event::new("config-invalid")
                .field("source", candidate.source)
                .field("error", err)
                .emit();
            None
        }
    }
}

/// The first valid outside manifest, with the path it was saved to; None when there is none
/// (the image's own manifest is then the one).
pub fn outside(
    images: &mut ImageCache,
    coldplug: &mut Option<Coldplug>,
) -> Option<(Manifest, PathBuf)> {
    // In order, each read only when the ones before it gave nothing usable.
    for source in 0..2 {
        let candidate = match source {
            0 => from_fw_cfg(),
            _ => from_nocloud(coldplug),
        };
        let Some(candidate) = candidate else {
            continue;
        };
        if let Some(manifest) = accept(candidate, images) {
            return Some((manifest, PathBuf::from(RUN_MANIFEST)));
        }
    }
    None
}
