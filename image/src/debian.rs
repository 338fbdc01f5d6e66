//! Debian packages fetched with `apt-get download` and unpacked into berth's cache.
//!
//! Packages for the other arch (`busybox-static:arm64`, kernels) come the same way once
//! `dpkg --add-architecture arm64 && apt-get update` has run, which `scripts/setup` does.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_arch::Arch;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("cannot write the package cache {}: {source}", dir.display())]
    Cache {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail} (scripts/setup adds the arm64 package lists and installs kmod)")]
    Tool { command: String, detail: String },
    #[error("preparing {package} after unpacking failed: {detail}")]
    Prepare { package: String, detail: String },
}

/// Runs a host tool; its stdout on success, its stderr in the error otherwise.
pub fn run_tool(command: &mut Command) -> Result<String, DebianError> {
    let shown = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|err| DebianError::Tool {
        command: shown.clone(),
        detail: err.to_string(),
    })?;
    if !output.status.success() {
        return Err(DebianError::Tool {
            command: shown,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The root of `package` for `arch` unpacked in the cache, fetching it on first use.
/// `prepare` runs once on the fresh root before it is published (depmod for kernels).
/// Concurrent callers (parallel tests) wait for each other on a lock file.
pub fn unpacked_package(
    package: &str,
    arch: Arch,
    cache_dir: &Path,
    prepare: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, DebianError> {
    let packages = cache_dir.join("packages");
    let cache_error = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |source| DebianError::Cache { dir, source }
    };
    std::fs::create_dir_all(&packages).map_err(cache_error(&packages))?;
    let lock_path = packages.join(".lock");
    let lock_file = File::create(&lock_path).map_err(cache_error(&lock_path))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| cache_error(&lock_path)(errno.into()))?;

    let dir = packages.join(format!("{package}_{}", arch.debian_arch()));
    let root = dir.join("root");
    if dir.join(".complete").exists() {
        return Ok(root);
    }
    let staging = packages.join(format!(".staging-{package}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(cache_error(&staging))?;
    let package_arch = format!("{package}:{}", arch.debian_arch());
    let fetching = crate::progress::Progress::start(format!(
        "fetching {package_arch} from Debian (first use; cached in {})",
        packages.display()
    ));
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q", &package_arch])
            .current_dir(&staging),
    )?;
    fetching.finish();
    let deb = std::fs::read_dir(&staging)
        .map_err(cache_error(&staging))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| DebianError::Tool {
            command: format!("apt-get download {package_arch}"),
            detail: "no .deb was written".to_string(),
        })?;
    let staged_root = staging.join("root");
    run_tool(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&staged_root),
    )?;
    prepare(&staged_root).map_err(|detail| DebianError::Prepare {
        package: package_arch.clone(),
        detail,
    })?;
    let _ = std::fs::remove_file(&deb);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir).map_err(cache_error(&dir))?;
    File::create(dir.join(".complete")).map_err(cache_error(&dir))?;
    Ok(root)
}
