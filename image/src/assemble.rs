//! `berth build`: validate the manifest, then write `kernel`, `initrd` and `image.json`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use berth_arch::Arch;
use berth_kmod::{module_name_of, IndexError, ModuleIndex};
use berth_manifest::{Manifest, ManifestError, BUILD_TIME_PATH, MANIFEST_PATH};
use serde::{Deserialize, Serialize};

use crate::disk::{write_disk, DiskError, DiskFormat, DiskLayout, DATA_NAME};
use crate::elf::{self, ElfError};
use crate::images::{self, ImageError, ImageSource};
use crate::initramfs::Initramfs;
use crate::kernel::{Kernel, KernelError};
use crate::module_files::{self, Codec};

/// The module list init loads before the manifest's, in `modules-load.d` format.
const IMAGE_MODULES_LOAD: &str = "/etc/modules-load.d/berth.conf";
/// Drivers every image with containers needs: their root filesystems are overlays.
const CONTAINER_MODULES: &[&str] = &["overlay"];
/// What every image ships for coldplug and for init to load on demand: virtual and common
/// server hardware, the filesystems `[[mount]]` takes, and what container networking needs.
/// A name the kernel lacks (or builds in) is skipped; `--module` adds more.
pub const DEFAULT_MODULES: &[&str] = &[
    // Virtual machines.
    "virtio_pci",
    "virtio_mmio",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_console",
    "qemu_fw_cfg",
    "vmxnet3",
    "ena",
    // Disks and filesystems.
    "nvme",
    "ahci",
    "sd_mod",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "isofs",
    // Common server NICs.
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "r8169",
    "tg3",
    // Hardware watchdogs init arms and feeds ([watchdog]): QEMU's (PCI, both arches).
    "i6300esb",
    // Containers and their networks.
    "overlay",
    "bridge",
    "veth",
    "8021q",
    "bonding",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_nat",
    "nf_nat",
];
/// Where netd goes in the image (init's `services::NETD`).
const NETD_PATH: &str = "/usr/lib/berth/netd";
/// Where berth-pull goes (init's `supervisor::pulls::PULLER`), when a container may pull.
const PULLER_PATH: &str = "/usr/lib/berth/pull";
/// Where berth-apid goes (init's `services::APID`), when the manifest has `[api]` or
/// `[logs] forward`.
const APID_PATH: &str = "/usr/lib/berth/apid";
/// Where berthctl goes in the image, on the containers' usual PATH.
const BERTHCTL_PATH: &str = "/usr/bin/berthctl";
/// Where the kernel (`orderly_poweroff`, `orderly_reboot`) and operators' habits look for
/// the power verbs: each a link to init's binary, which asks PID 1 for that shutdown.
const POWER_VERB_PATHS: &[&str] = &["/sbin/poweroff", "/sbin/reboot", "/sbin/halt"];
/// Index files copied into the image next to the modules.
const MODULE_INDEX_FILES: &[&str] = &["modules.builtin", "modules.softdep"];
/// What the image's description file is called in the output directory.
pub const IMAGE_METADATA_FILE: &str = "image.json";

/// Which kernel to put in the image.
#[derive(Debug, Clone)]
pub enum KernelChoice {
    /// The arch's default Debian kernel, fetched into the cache.
    DebianDefault { cache_dir: PathBuf },
    /// A kernel image and its `/lib/modules/<release>` directory; without one, a kernel with
    /// everything built in (no modules shipped, none loaded).
    Paths {
        image: PathBuf,
        modules_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub arch: Arch,
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub kernel: KernelChoice,
    /// The init binary; found next to the `berth` executable when not given.
    pub init: Option<PathBuf>,
    /// A netd binary of its own; by default netd is a name of init's binary.
    pub netd: Option<PathBuf>,
    /// A berthctl binary of its own; by default berthctl is a name of init's binary.
    pub berthctl: Option<PathBuf>,
    /// The berth-pull binary, shipped only when a container may pull its image; found next
    /// to the `berth` executable when not given.
    pub puller: Option<PathBuf>,
    /// OCI image layouts to bake into the image store.
    pub images: Vec<ImageSource>,
    /// Kernel modules to ship beyond [`DEFAULT_MODULES`] (coldplug loads them when their
    /// hardware is there).
    pub extra_modules: Vec<String>,
    /// Also write a bootable GPT disk image (UEFI, two slots, a data partition).
    pub disk: Option<DiskOptions>,
    /// Also write a signed update bundle (`update.berth`), signed with this secret key file.
    pub update_key: Option<PathBuf>,
}

/// `--format raw|qcow2` and `--data-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskOptions {
    pub format: DiskFormat,
    /// The data partition's size in MiB; init grows it to the end of a larger disk.
    pub data_mib: u64,
}

/// What `berth build` wrote, as recorded in `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageMetadata {
    pub arch: String,
    pub kernel_release: String,
    pub kernel: String,
    pub initrd: String,
    /// Modules shipped in the initrd.
    pub modules: Vec<String>,
    /// Images in the image store, by the names manifests use.
    #[serde(default)]
    pub images: Vec<String>,
    /// The disk image, when one was written (`disk.raw` or `disk.qcow2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// The image's version (`[update] version`, or `unversioned`).
    #[serde(default = "unversioned")]
    pub version: String,
    /// The update bundle, when one was written (`update.berth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
}

/// The version of an image whose manifest names none.
pub const UNVERSIONED: &str = "unversioned";

fn unversioned() -> String {
    UNVERSIONED.to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("module index of kernel {release}: {source}")]
    ModuleIndex {
        release: String,
        #[source]
        source: IndexError,
    },
    #[error("--module {name}: kernel {release} has no such module")]
    UnknownModule { name: String, release: String },
    #[error("no {binary} binary (package {package}) for {arch}; looked at {}. In a source checkout, build the guest binaries with `{}`; or install berth with scripts/install; or pass --{binary}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), guest_build_command(*arch))]
    GuestBinaryNotFound {
        binary: &'static str,
        package: &'static str,
        arch: Arch,
        tried: Vec<PathBuf>,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("update bundle: {0}")]
    Update(#[from] berth_update::UpdateError),
    #[error("{manifest}: [{table}] {field}: cannot read {}: {source}", path.display(), manifest = manifest.display())]
    ApiFile {
        manifest: PathBuf,
        table: &'static str,
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or compress kernel module {}: {source}", path.display())]
    Module {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let write_error = |source| BuildError::Write {
        path: path.to_path_buf(),
        source,
    };
    let staging = path.with_extension("partial");
    std::fs::write(&staging, data).map_err(write_error)?;
    std::fs::rename(&staging, path).map_err(write_error)
}

/// The guest packages, built together (one feature set): what the tests build, and
/// `scripts/guest-packages` lists for `scripts/test`, `scripts/bench` and `scripts/install`.
pub const GUEST_PACKAGES: [&str; 6] = [
    "berth-init",
    "berth-netd",
    "berth-ctl",
    "berth-registry",
    "berth-apid",
    "berth-probe",
];

/// The command that builds every guest binary for `arch` in a source checkout.
pub fn guest_build_command(arch: Arch) -> String {
    let packages: Vec<String> = GUEST_PACKAGES.iter().map(|p| format!("-p {p}")).collect();
    format!(
        "cargo build --profile guest {} --target {}",
        packages.join(" "),
        arch.rust_target()
    )
}

/// Guest binaries `berth build` would take from a source checkout's `target/` that are older
/// than a source file they are built from: each with the newer source. What a binary is
/// built from is what cargo wrote in its dep-info file beside it (`init.d`), so a change to
/// berth-apid does not call `init` stale; a binary without one is compared with every Rust
/// source of the checkout's guest crates. (Installed binaries are never stale: they have no
/// sources beside them.)
pub fn stale_guest_binaries(arch: Arch) -> Vec<(PathBuf, PathBuf)> {
    let mut stale = Vec::new();
    for binary in ["init", "berth-pull", "berth-apid"] {
        let Some(found) = guest_binary_candidates(arch, binary)
            .into_iter()
            .find(|p| p.is_file())
        else {
            continue;
        };
        // <root>/target/<triple>/guest/<binary>
        let Some(root) = found.ancestors().nth(4) else {
            continue;
        };
        if !root.join("Cargo.toml").is_file() {
            continue;
        }
        let Ok(built) = std::fs::metadata(&found).and_then(|m| m.modified()) else {
            continue;
        };
        let newest = match std::fs::read_to_string(found.with_extension("d")) {
            Ok(dep_info) => newest_of(dep_info_sources(&dep_info, root)),
            Err(_) => newest_guest_source(root),
        };
        if let Some(newer) = newest.filter(|(at, _)| *at > built) {
            stale.push((found, newer.1));
        }
    }
    stale
}

/// The sources a cargo dep-info file (`target: dep dep ...`, spaces in names escaped with
/// a backslash) lists under `root`: the checkout's own files, not the registry's.
fn dep_info_sources(dep_info: &str, root: &Path) -> Vec<PathBuf> {
    let Some((_, deps)) = dep_info.lines().next().and_then(|l| l.split_once(": ")) else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => sources.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    sources.push(current);
    sources
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect()
}

/// The most recently changed of `paths`, with when.
fn newest_of(paths: Vec<PathBuf>) -> Option<(std::time::SystemTime, PathBuf)> {
    paths
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).and_then(|m| m.modified()).ok()?, p)))
        .max_by_key(|(at, _)| *at)
}

/// The newest `.rs` file of the checkout's crates that guest binaries are built from (all
/// but the host-only ones), with when it changed.
fn newest_guest_source(root: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    const HOST_ONLY: [&str; 6] = ["image", "tests", "bench", "fuzz", "qemu", "target"];
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut pending: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.join("Cargo.toml").is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| HOST_ONLY.iter().any(|h| n == *h))
        })
        .map(|p| p.join("src"))
        .collect();
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if let Ok(at) = entry.metadata().and_then(|m| m.modified()) {
                    if newest.as_ref().is_none_or(|(n, _)| at > *n) {
                        newest = Some((at, path));
                    }
                }
            }
        }
    }
    newest
}

/// Where a freshly built guest binary (`init`, `netd`) for `arch` is looked for, relative to
/// the running `berth`: cargo's layout (`target/release/berth` beside
/// `target/<triple>/guest/init`) and an installed layout (`bin/berth` beside
/// `lib/berth/<arch>/init`).
pub fn guest_binary_candidates(arch: Arch, binary: &str) -> Vec<PathBuf> {
    let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let mut candidates = Vec::new();
    // target/release/berth, target/debug/berth and target/debug/deps/<test> all sit one or
    // two levels under target/.
    for target_dir in exe_dir.ancestors().skip(1).take(2) {
        candidates.push(
            target_dir
                .join(arch.rust_target())
                .join("guest")
                .join(binary),
        );
    }
    if let Some(prefix) = exe_dir.parent() {
        candidates.push(prefix.join("lib/berth").join(arch.name()).join(binary));
    }
    candidates
}

/// A guest binary given by path, checked to be a static executable for `arch`.
fn read_guest_binary(path: &Path, arch: Arch) -> Result<Vec<u8>, BuildError> {
    let binary = read(path)?;
    elf::check_static_executable(path, &binary, arch)?;
    Ok(binary)
}

/// The given path, or the first built binary found next to `berth`.
fn find_guest_binary(
    given: Option<&PathBuf>,
    arch: Arch,
    binary: &'static str,
    package: &'static str,
) -> Result<PathBuf, BuildError> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let tried = guest_binary_candidates(arch, binary);
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(BuildError::GuestBinaryNotFound {
            binary,
            package,
            arch,
            tried,
        })
}

/// Checks every `[boot] modules` entry against the kernel, pointing at the entry on failure.
fn check_manifest_modules(
    manifest: &Manifest,
    text: &str,
    file: &Path,
    index: &ModuleIndex,
    release: &str,
) -> Result<(), ManifestError> {
    for (position, module) in manifest.boot.modules.iter().enumerate() {
        let name = module.get_ref().canonical();
        if !index.is_builtin(&name) && index.load_order(&name).is_err() {
            return Err(ManifestError::at(
                file,
                text,
                module.span(),
                &format!("boot.modules[{position}]"),
                format!("kernel {release} has no module `{}`", module.get_ref()),
            ));
        }
    }
    Ok(())
}

/// What `[api]` puts in the image: the client CA, and the server's certificate and key
/// unless berth-apid is to generate them at first boot.
struct ApiFiles {
    ca: Vec<u8>,
    server: Option<(Vec<u8>, Vec<u8>)>,
}

/// Reads a file a manifest's `[table] field` names, relative to the manifest's directory.
fn manifest_file(
    manifest: &Path,
    table: &'static str,
    field: &'static str,
    path: &Path,
) -> Result<Vec<u8>, BuildError> {
    let base = manifest.parent().unwrap_or(Path::new("."));
    let path = base.join(path);
    std::fs::read(&path).map_err(|source| BuildError::ApiFile {
        manifest: manifest.to_path_buf(),
        table,
        field,
        path,
        source,
    })
}

/// Reads the files `[api]` names.
fn api_files(api: &berth_manifest::ApiSettings, manifest: &Path) -> Result<ApiFiles, BuildError> {
    let server = match &api.server {
        Some(identity) => Some((
            manifest_file(manifest, "api", "cert", &identity.cert)?,
            manifest_file(manifest, "api", "key", &identity.key)?,
        )),
        None => None,
    };
    Ok(ApiFiles {
        ca: manifest_file(manifest, "api", "ca", &api.ca)?,
        server,
    })
}

/// Validates the manifest and writes the image into `options.out`.
pub fn build(options: &BuildOptions) -> Result<ImageMetadata, BuildError> {
    // The manifest first: a bad one is refused before anything is downloaded or written.
    let manifest_text = String::from_utf8_lossy(&read(&options.manifest)?).into_owned();
    let manifest = Manifest::parse(&manifest_text, &options.manifest)?;
    // The signing key next: a missing or wrong key is refused before minutes of work.
    let update_key = options
        .update_key
        .as_deref()
        .map(berth_update::SecretKey::read)
        .transpose()?;
    let version = manifest
        .update
        .version
        .as_ref()
        .map_or_else(unversioned, |v| v.to_string());

    // Images next: the manifest may only name images the store will hold.
    let mut initramfs = Initramfs::new();
    let image_names = images::bake(&options.images, options.arch, &mut initramfs)?;
    manifest.check_images(&manifest_text, &options.manifest, &image_names)?;

    let init_path = find_guest_binary(options.init.as_ref(), options.arch, "init", "berth-init")?;
    let init = read_guest_binary(&init_path, options.arch)?;
    // netd and berthctl are names of init's binary unless given as binaries of their own.
    let netd = options
        .netd
        .as_ref()
        .map(|path| read_guest_binary(path, options.arch))
        .transpose()?;
    let berthctl = options
        .berthctl
        .as_ref()
        .map(|path| read_guest_binary(path, options.arch))
        .transpose()?;
    // About 2 MB of TLS and HTTP: only images that may pull (an image, or an update
    // bundle) carry it.
    let puller = if manifest.ships_puller() {
        let path = find_guest_binary(
            options.puller.as_ref(),
            options.arch,
            "berth-pull",
            "berth-registry",
        )?;
        Some(read_guest_binary(&path, options.arch)?)
    } else {
        None
    };

    // The remote API's certificates, only for a manifest with `[api]`; the log shipper's CA
    // for `[logs]`; berth-apid (which is both) for either.
    let api = match &manifest.api {
        Some(api) => Some(api_files(api, &options.manifest)?),
        None => None,
    };
    let logs_ca = match &manifest.logs.ca {
        Some(ca) if manifest.logs.enabled() => {
            Some(manifest_file(&options.manifest, "logs", "ca", ca)?)
        }
        _ => None,
    };
    let apid = if api.is_some() || manifest.logs.enabled() {
        let path = find_guest_binary(None, options.arch, "berth-apid", "berth-apid")?;
        Some(read_guest_binary(&path, options.arch)?)
    } else {
        None
    };

    let kernel = match &options.kernel {
        KernelChoice::DebianDefault { cache_dir } => {
            Kernel::debian_default(options.arch, cache_dir)?
        }
        KernelChoice::Paths {
            image,
            modules_dir: Some(modules_dir),
        } => Kernel::from_paths(image, modules_dir)?,
        KernelChoice::Paths {
            image,
            modules_dir: None,
        } => Kernel::without_modules(image)?,
    };
    let index = match &kernel.modules_dir {
        Some(dir) => ModuleIndex::read(dir).map_err(|source| BuildError::ModuleIndex {
            release: kernel.release.clone(),
            source,
        })?,
        None => ModuleIndex::default(),
    };
    // A kernel without modules builds its drivers in: `[boot] modules` have nothing to name.
    if kernel.modules_dir.is_some() {
        check_manifest_modules(
            &manifest,
            &manifest_text,
            &options.manifest,
            &index,
            &kernel.release,
        )?;
    }

    let mut image_modules: Vec<&str> = Vec::new();
    if kernel.modules_dir.is_some() {
        image_modules.extend(options.arch.power_button_modules());
        if !manifest.containers.is_empty() {
            image_modules.extend(CONTAINER_MODULES);
        }
    }
    if let Some(name) = options.extra_modules.iter().find(|m| !index.has(m)) {
        return Err(BuildError::UnknownModule {
            name: name.clone(),
            release: kernel.release.clone(),
        });
    }
    let wanted: Vec<String> = image_modules
        .iter()
        .chain(DEFAULT_MODULES.iter().filter(|m| index.has(m)))
        .map(|m| m.to_string())
        .chain(options.extra_modules.iter().cloned())
        .chain(
            manifest
                .boot_modules()
                .map(|m| m.canonical())
                .filter(|_| kernel.modules_dir.is_some()),
        )
        .collect();
    let closure = index
        .closure(wanted.iter().map(String::as_str))
        .map_err(|source| BuildError::ModuleIndex {
            release: kernel.release.clone(),
            source,
        })?;
    // What init loads on every boot, whatever the hardware: quick to decompress.
    let loaded_at_boot: Vec<String> = image_modules
        .iter()
        .map(|m| m.to_string())
        .chain(manifest.boot_modules().map(|m| m.canonical()))
        .chain(manifest.link_modules().into_iter().map(str::to_string))
        .chain(
            manifest
                .container_network_modules()
                .iter()
                .map(|m| m.to_string()),
        )
        .filter(|_| kernel.modules_dir.is_some())
        .collect();
    let loaded_at_boot: HashSet<String> = index
        .closure(loaded_at_boot.iter().map(String::as_str))
        .map_err(|source| BuildError::ModuleIndex {
            release: kernel.release.clone(),
            source,
        })?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let codec_of = |path: &Path| {
        if loaded_at_boot.contains(&module_name_of(&path.to_string_lossy())) {
            Codec::Gzip
        } else {
            Codec::Xz
        }
    };

    initramfs
        .char_device("/dev/console", 0o600, 5, 1)
        .directory("/proc", 0o755)
        .directory("/sys", 0o755)
        .directory("/run", 0o755)
        .directory("/tmp", 0o1777)
        .file("/init", 0o755, init)
        .file(MANIFEST_PATH, 0o644, manifest_text.into_bytes())
        .file(
            BUILD_TIME_PATH,
            0o644,
            format!("{}\n", build_time()).into_bytes(),
        )
        .file(
            IMAGE_MODULES_LOAD,
            0o644,
            format!(
                "# Written by berth build: drivers init loads before the manifest's modules.\n{}\n",
                image_modules.join("\n")
            )
            .into_bytes(),
        );
    for (path, binary) in [(NETD_PATH, netd), (BERTHCTL_PATH, berthctl)] {
        match binary {
            Some(binary) => initramfs.file(path, 0o755, binary),
            None => initramfs.symlink(path, "/init"),
        };
    }
    for path in POWER_VERB_PATHS {
        initramfs.symlink(path, "/init");
    }
    if let Some(puller) = puller {
        initramfs.file(PULLER_PATH, 0o755, puller);
    }
    if let Some(apid) = apid {
        initramfs.file(APID_PATH, 0o755, apid);
    }
    if let Some(ca) = logs_ca {
        initramfs.file(berth_manifest::LOGS_CA_PATH, 0o644, ca);
    }
    if let Some(api) = api {
        initramfs.file(berth_manifest::API_CA_PATH, 0o644, api.ca);
        if let Some((cert, key)) = api.server {
            initramfs.file(berth_manifest::API_CERT_PATH, 0o644, cert);
            initramfs.file(berth_manifest::API_KEY_PATH, 0o600, key);
        }
    }
    let cache_dir = match &options.kernel {
        KernelChoice::DebianDefault { cache_dir } => cache_dir.clone(),
        KernelChoice::Paths { .. } => crate::kernel::default_cache_dir(),
    };
    // A kernel with everything built in gets no module tree: init then loads nothing.
    if kernel.modules_dir.is_some() {
        let image_modules_dir = format!("/lib/modules/{}", kernel.release);
        let mut dep_lines = Vec::with_capacity(closure.len());
        // Said only when it is slow: a cold cache compresses every module (XZ takes seconds).
        let compressing_since = std::time::Instant::now();
        let mut compressing: Option<crate::progress::Progress> = None;
        for (done, (module, path)) in closure.iter().enumerate() {
            if compressing.is_none()
                && compressing_since.elapsed() > std::time::Duration::from_secs(1)
            {
                compressing = Some(crate::progress::Progress::start(format!(
                    "compressing {} kernel modules (cached for the next builds)",
                    closure.len()
                )));
            }
            if let Some(progress) = &mut compressing {
                progress.update(done as u64, closure.len() as u64);
            }
            let relative = kernel
                .modules_dir
                .as_ref()
                .and_then(|dir| path.strip_prefix(dir).ok())
                .unwrap_or(path);
            let codec = codec_of(path);
            let bytes = module_files::shipped_bytes(path, codec, &cache_dir).map_err(|source| {
                BuildError::Module {
                    path: path.clone(),
                    source,
                }
            })?;
            initramfs.file(
                &format!(
                    "{image_modules_dir}/{}",
                    module_files::shipped_path(relative, codec).display()
                ),
                0o644,
                bytes,
            );
            dep_lines.extend(index.dep_line(module, |path| {
                module_files::shipped_path(path, codec_of(path))
            }));
        }
        if let Some(progress) = compressing {
            progress.finish();
        }
        dep_lines.push(String::new());
        initramfs.file(
            &format!("{image_modules_dir}/modules.dep"),
            0o644,
            dep_lines.join("\n").into_bytes(),
        );
        let mut alias_lines = index.alias_lines(closure.iter().map(|(name, _)| name.as_str()));
        alias_lines.push(String::new());
        initramfs.file(
            &format!("{image_modules_dir}/modules.alias"),
            0o644,
            alias_lines.join("\n").into_bytes(),
        );
        for name in MODULE_INDEX_FILES {
            let Some(path) = kernel.modules_dir.as_ref().map(|dir| dir.join(name)) else {
                continue;
            };
            if path.is_file() {
                initramfs.file(&format!("{image_modules_dir}/{name}"), 0o644, read(&path)?);
            }
        }
    }

    std::fs::create_dir_all(&options.out).map_err(|source| BuildError::Write {
        path: options.out.clone(),
        source,
    })?;
    let initrd = initramfs.to_gzip().map_err(|source| BuildError::Write {
        path: options.out.join("initrd"),
        source,
    })?;
    write_atomically(&options.out.join("initrd"), &initrd)?;
    write_atomically(&options.out.join("kernel"), &read(&kernel.image)?)?;
    let disk = match &options.disk {
        Some(disk) => {
            let layout = DiskLayout {
                arch: options.arch,
                kernel: &options.out.join("kernel"),
                initrd: &options.out.join("initrd"),
                cmdline: disk_cmdline(options.arch),
                data_mib: disk.data_mib,
                format: disk.format,
                version: &version,
            };
            let path = write_disk(&layout, &cache_dir, &options.out)?;
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        }
        None => None,
    };
    let update = match &update_key {
        Some(key) => {
            let out = options.out.join(berth_update::BUNDLE_FILE);
            let (kernel_part, initrd_part) =
                (options.out.join("kernel"), options.out.join("initrd"));
            berth_update::write_bundle(
                &out,
                &version,
                options.arch.name(),
                &kernel.release,
                &[
                    berth_update::PartSource {
                        name: "kernel",
                        path: &kernel_part,
                    },
                    berth_update::PartSource {
                        name: "initrd",
                        path: &initrd_part,
                    },
                ],
                key,
            )?;
            Some(berth_update::BUNDLE_FILE.to_string())
        }
        None => None,
    };
    let metadata = ImageMetadata {
        arch: options.arch.name().to_string(),
        kernel_release: kernel.release.clone(),
        kernel: "kernel".to_string(),
        initrd: "initrd".to_string(),
        modules: closure.into_iter().map(|(name, _)| name).collect(),
        images: image_names,
        disk,
        version,
        update,
    };
    let json = serde_json::to_vec_pretty(&metadata).unwrap_or_default();
    write_atomically(&options.out.join(IMAGE_METADATA_FILE), &json)?;
    Ok(metadata)
}

/// The command line a disk image's boot entries give the kernel: the screen and the arch's
/// serial port (the last is `/dev/console`, where init writes), reboot at once on panic, and
/// where init finds the data partition.
pub fn disk_cmdline(arch: Arch) -> String {
    format!(
        "console=tty0 console={} panic=-1 quiet berth.data=PARTLABEL={DATA_NAME}",
        arch.console_device()
    )
}

/// When the image is built, in seconds since the Unix epoch: `SOURCE_DATE_EPOCH` when set
/// (reproducible builds give the same bytes from the same inputs), else now. Init never lets
/// the host's clock read earlier than this.
fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs())
        })
}

/// Reads `image.json` from a built image directory.
pub fn read_metadata(dir: &Path) -> Result<ImageMetadata, BuildError> {
    let path = dir.join(IMAGE_METADATA_FILE);
    let data = read(&path)?;
    serde_json::from_slice(&data).map_err(|err| BuildError::Read {
        path,
        source: std::io::Error::other(err),
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn the_newest_guest_source_skips_host_only_crates() {
        let root = std::env::temp_dir().join(format!("berth-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, file) in [("init", "src/a/deep.rs"), ("image", "src/host.rs")] {
            let crate_dir = root.join(dir);
            std::fs::create_dir_all(crate_dir.join(file).parent().unwrap()).unwrap();
            std::fs::write(crate_dir.join("Cargo.toml"), "").unwrap();
        }
        std::fs::write(root.join("init/src/a/deep.rs"), "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.join("image/src/host.rs"), "").unwrap();
        let (_, newest) = newest_guest_source(&root).unwrap();
        assert_eq!(newest, root.join("init/src/a/deep.rs"));
        // A binary's dep-info names its own sources: the newest of them counts, and files
        // outside the checkout (the registry's) do not.
        let dep_info = format!(
            "{root}/target/init: {root}/init/src/a/deep.rs /cargo/registry/x.rs {root}/with\\ space.rs\n\n{root}/init/src/a/deep.rs:\n",
            root = root.display()
        );
        let sources = dep_info_sources(&dep_info, &root);
        assert_eq!(
            sources,
            [root.join("init/src/a/deep.rs"), root.join("with space.rs")]
        );
        assert_eq!(
            newest_of(sources).unwrap().1,
            root.join("init/src/a/deep.rs"),
            "a listed file that is gone is passed over"
        );
        assert!(guest_build_command(Arch::Aarch64)
            .ends_with("-p berth-probe --target aarch64-unknown-linux-musl"));
        // The scripts build the same set.
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest-packages"),
        )
        .unwrap();
        let listed = script
            .lines()
            .find_map(|l| l.strip_prefix("guest_packages=("))
            .and_then(|l| l.strip_suffix(')'))
            .unwrap();
        assert_eq!(listed.split(' ').collect::<Vec<_>>(), GUEST_PACKAGES);
        let _ = std::fs::remove_dir_all(&root);
    }
}
