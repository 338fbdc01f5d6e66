//! Kernels: Debian's packages, fetched with apt and cached, or any kernel the operator names.
//!
//! A downloaded package is unpacked with `dpkg-deb -x`, which leaves out the `modules.dep`
//! and `modules.alias` that depmod writes at install time, so the cache runs
//! `depmod -b <root> <release>` (host kmod; it works across arches) once per kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_arch::Arch;

use crate::debian::{self, DebianError};

/// A kernel image and its module tree.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bootable image (`vmlinuz-*`).
    pub image: PathBuf,
    /// `/lib/modules/<release>` of that kernel, with `modules.dep`; None for a kernel with
    /// everything built in (berth's own, `berth kernel build`).
    pub modules_dir: Option<PathBuf>,
    /// `uname -r` of the kernel, the modules directory's name.
    pub release: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel image {} does not exist", path.display())]
    MissingImage { path: PathBuf },
    #[error("module directory {} has no modules.dep (run `depmod -b <root> <release>` for it)", dir.display())]
    NoModulesDep { dir: PathBuf },
    #[error(transparent)]
    Debian(#[from] DebianError),
    #[error("package {package} has no kernel image under {}", dir.display())]
    NoImageInPackage { package: String, dir: PathBuf },
}

impl Kernel {
    /// A kernel with no modules: its release is read from `kernel.release` beside the image,
    /// as `berth kernel build` writes it.
    pub fn without_modules(image: &Path) -> Result<Kernel, KernelError> {
        if !image.is_file() {
            return Err(KernelError::MissingImage {
                path: image.to_path_buf(),
            });
        }
        let release = image
            .parent()
            .and_then(|dir| std::fs::read_to_string(dir.join("kernel.release")).ok())
            .map_or_else(|| "unknown".to_string(), |r| r.trim().to_string());
        Ok(Kernel {
            image: image.to_path_buf(),
            modules_dir: None,
            release,
        })
    }

    /// A kernel the operator supplies: an image and its `/lib/modules/<release>` directory.
    pub fn from_paths(image: &Path, modules_dir: &Path) -> Result<Kernel, KernelError> {
        if !image.is_file() {
            return Err(KernelError::MissingImage {
                path: image.to_path_buf(),
            });
        }
        if !modules_dir.join("modules.dep").is_file() {
            return Err(KernelError::NoModulesDep {
                dir: modules_dir.to_path_buf(),
            });
        }
        let release = modules_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Kernel {
            image: image.to_path_buf(),
            modules_dir: Some(modules_dir.to_path_buf()),
            release,
        })
    }

    /// The default Debian kernel for `arch`, fetched into `cache_dir` on first use.
    pub fn debian_default(arch: Arch, cache_dir: &Path) -> Result<Kernel, KernelError> {
        Kernel::debian(arch, arch.default_kernel_package(), cache_dir)
    }

    /// The Debian kernel behind `metapackage` (`linux-image-amd64`, whose drivers include
    /// some the cloud kernel lacks, such as the i6300esb watchdog), fetched into
    /// `cache_dir` on first use.
    pub fn debian(arch: Arch, metapackage: &str, cache_dir: &Path) -> Result<Kernel, KernelError> {
        let package = resolve_versioned_package(arch, metapackage)?;
        fetch_debian_package(arch, &package, cache_dir)
    }
}

/// The versioned package behind a kernel metapackage
/// (`linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64`).
fn resolve_versioned_package(arch: Arch, metapackage: &str) -> Result<String, KernelError> {
    let meta = format!("{metapackage}:{}", arch.debian_arch());
    let output =
        debian::run_tool(Command::new("apt-cache").args(["depends", "--important", &meta]))?;
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(|dep| dep.split(':').next().unwrap_or(dep).trim().to_string())
        .find(|dep| dep.starts_with("linux-image-"))
        .ok_or_else(|| {
            KernelError::Debian(DebianError::Tool {
                command: format!("apt-cache depends {meta}"),
                detail: "no linux-image dependency listed".to_string(),
            })
        })
}

fn fetch_debian_package(
    arch: Arch,
    package: &str,
    cache_dir: &Path,
) -> Result<Kernel, KernelError> {
    let root = debian::unpacked_package(package, arch, cache_dir, |root| {
        // dpkg-deb leaves out what depmod writes at install time.
        let release = release_in(root, package).map_err(|e| e.to_string())?;
        debian::run_tool(Command::new("depmod").arg("-b").arg(root).arg(&release))
            .map(drop)
            .map_err(|e| e.to_string())
    })?;
    let release = release_in(&root, package)?;
    Kernel::from_paths(
        &root.join("boot").join(format!("vmlinuz-{release}")),
        &root.join("lib/modules").join(&release),
    )
}

/// The release of the one kernel unpacked under `root`.
fn release_in(root: &Path, package: &str) -> Result<String, KernelError> {
    let modules = root.join("lib/modules");
    std::fs::read_dir(&modules)
        .ok()
        .and_then(|entries| entries.flatten().next())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .ok_or_else(|| KernelError::NoImageInPackage {
            package: package.to_string(),
            dir: modules,
        })
}

/// Where berth caches kernels and other downloads: `$BERTH_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("berth");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache/berth")
}
