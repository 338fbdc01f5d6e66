//! `berth kernel build`: a kernel made for a container host from Debian's `linux-source-6.1`,
//! configured with berth's fragment (`kernel/*.config`: everything a VM or common server needs
//! built in, `CONFIG_MODULES` off) on top of `allnoconfig`, and cached by the fragment's
//! contents. aarch64 is cross-compiled with Debian's `gcc-aarch64-linux-gnu`.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_arch::Arch;
use sha2::{Digest, Sha256};

use crate::debian::{self, DebianError};

/// The fragments, shared with the Buildroot tree (`buildroot/board/berth/`).
pub const COMMON_FRAGMENT: &str = include_str!("../../kernel/common.config");
pub const X86_64_FRAGMENT: &str = include_str!("../../kernel/x86_64.config");
pub const AARCH64_FRAGMENT: &str = include_str!("../../kernel/aarch64.config");
/// Debian's kernel source package, arch-independent.
const SOURCE_PACKAGE: &str = "linux-source-6.1";

#[derive(Debug, thiserror::Error)]
pub enum KernelBuildError {
    #[error(transparent)]
    Debian(#[from] DebianError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration changed {} symbol(s) of berth's fragment: {}", .0.len(), .0.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", "))]
    FragmentNotKept(Vec<Mismatch>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelBuildError + '_ {
    move |source| KernelBuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A symbol whose value in `.config` is not the fragment's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub symbol: String,
    pub wanted: String,
    pub got: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={} (got {})", self.symbol, self.wanted, self.got)
    }
}

/// The whole fragment for `arch`: common part, then the arch's.
pub fn fragment(arch: Arch) -> String {
    let arch_part = match arch {
        Arch::X86_64 => X86_64_FRAGMENT,
        Arch::Aarch64 => AARCH64_FRAGMENT,
    };
    format!("{COMMON_FRAGMENT}\n{arch_part}")
}

/// `CONFIG_X=value` pairs of a fragment or `.config`; `# CONFIG_X is not set` counts as `n`.
fn symbols(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(rest) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                return rest
                    .starts_with("CONFIG_")
                    .then(|| (rest.to_string(), "n".to_string()));
            }
            let (symbol, value) = line.split_once('=')?;
            symbol
                .starts_with("CONFIG_")
                .then(|| (symbol.to_string(), value.to_string()))
        })
        .collect()
}

/// The fragment's symbols whose value `config` (a `.config`) does not keep.
pub fn check(fragment: &str, config: &str) -> Vec<Mismatch> {
    let got: std::collections::HashMap<String, String> = symbols(config).into_iter().collect();
    symbols(fragment)
        .into_iter()
        .filter_map(|(symbol, wanted)| {
            let value = got
                .get(&symbol)
                .cloned()
                .unwrap_or_else(|| "absent".to_string());
            (value != wanted).then_some(Mismatch {
                symbol,
                wanted,
                got: value,
            })
        })
        .collect()
}

fn kernel_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64",
        Arch::Aarch64 => "arm64",
    }
}

fn image_target(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "bzImage",
        Arch::Aarch64 => "Image",
    }
}

/// The unpacked kernel source tree, fetched and extracted into the cache once.
pub fn source_tree(cache_dir: &Path) -> Result<PathBuf, KernelBuildError> {
    let root = debian::unpacked_package(SOURCE_PACKAGE, Arch::X86_64, cache_dir, |root| {
        let tarball = root.join(format!("usr/src/{SOURCE_PACKAGE}.tar.xz"));
        debian::run_tool(
            Command::new("tar")
                .arg("-xJf")
                .arg(&tarball)
                .arg("-C")
                .arg(root.join("usr/src")),
        )
        .map_err(|e| e.to_string())?;
        std::fs::remove_file(&tarball).map_err(|e| e.to_string())
    })?;
    Ok(root.join("usr/src").join(SOURCE_PACKAGE))
}

fn make(arch: Arch, source: &Path, out: &Path) -> Command {
    let mut command = Command::new("make");
    command
        .arg("-s")
        .arg("-C")
        .arg(source)
        .arg(format!("O={}", out.display()))
        .arg(format!("ARCH={}", kernel_arch(arch)));
    if arch == Arch::Aarch64 && Arch::host() != Some(Arch::Aarch64) {
        command.arg("CROSS_COMPILE=aarch64-linux-gnu-");
    }
    command
}

/// Configures `arch` in a directory of its own (allnoconfig plus the fragment) and returns it
/// with the symbols the configuration did not keep. Never the directory a build uses, so a
/// check cannot disturb a build running beside it.
pub fn configure(
    arch: Arch,
    cache_dir: &Path,
) -> Result<(PathBuf, Vec<Mismatch>), KernelBuildError> {
    let out =
        cache_dir
            .join("kernels")
            .join(format!("check-{}-{}", arch.name(), std::process::id()));
    let result = configure_in(arch, cache_dir, &out);
    let _ = std::fs::remove_dir_all(&out);
    result.map(|mismatches| (out, mismatches))
}

/// The build directory of `arch` for the fragment as it is now.
fn build_dir(arch: Arch, cache_dir: &Path) -> PathBuf {
    let digest = Sha256::digest(fragment(arch).as_bytes());
    let key: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    cache_dir
        .join("kernels")
        .join(format!("{}-{key}", arch.name()))
}

fn configure_in(
    arch: Arch,
    cache_dir: &Path,
    out: &Path,
) -> Result<Vec<Mismatch>, KernelBuildError> {
    let source = source_tree(cache_dir)?;
    let fragment = fragment(arch);
    std::fs::create_dir_all(out).map_err(io(out))?;
    let fragment_path = out.join("berth.config");
    std::fs::write(&fragment_path, &fragment).map_err(io(&fragment_path))?;
    debian::run_tool(
        make(arch, &source, out)
            .arg(format!("KCONFIG_ALLCONFIG={}", fragment_path.display()))
            .arg("allnoconfig"),
    )?;
    let config_path = out.join(".config");
    let config = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    Ok(check(&fragment, &config))
}

/// Runs `make`, counting the files it compiles (its `  CC ` lines) as progress; its stderr is
/// the error when it fails.
fn make_with_progress(command: &mut Command, what: &str) -> Result<(), KernelBuildError> {
    use std::io::BufRead;
    let shown = format!("{command:?}").replace('"', "");
    let tool_error = |detail: String| {
        KernelBuildError::from(debian::DebianError::Tool {
            command: shown.clone(),
            detail,
        })
    };
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(e.to_string()))?;
    // stderr is read beside stdout, so that neither pipe fills and stalls make.
    let stderr = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        })
    });
    let mut progress = crate::progress::Progress::start(what);
    let mut compiled = 0u64;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.trim_start().starts_with("CC ") {
                compiled += 1;
                progress.update(compiled, 0);
            }
        }
    }
    let status = child.wait().map_err(|e| tool_error(e.to_string()))?;
    let errors = stderr
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    if !status.success() {
        return Err(tool_error(errors.trim().to_string()));
    }
    progress.finish();
    Ok(())
}

/// What `berth kernel build` leaves in its output directory.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    pub image: PathBuf,
    pub release: String,
}

/// Builds (or finds in the cache) berth's kernel for `arch` and copies it into `out` as
/// `vmlinuz`, with `kernel.release` and `config`.
pub fn build(arch: Arch, cache_dir: &Path, out: &Path) -> Result<BuiltKernel, KernelBuildError> {
    let build_dir = build_dir(arch, cache_dir);
    let mismatches = configure_in(arch, cache_dir, &build_dir)?;
    if !mismatches.is_empty() {
        return Err(KernelBuildError::FragmentNotKept(mismatches));
    }
    let source = source_tree(cache_dir)?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    make_with_progress(
        make(arch, &source, &build_dir)
            .arg(format!("-j{jobs}"))
            .arg(image_target(arch)),
        &format!("building the {arch} kernel (minutes; cached afterwards): files compiled"),
    )?;
    let release = debian::run_tool(make(arch, &source, &build_dir).arg("kernelrelease"))?
        .trim()
        .to_string();
    let built = build_dir
        .join("arch")
        .join(if arch == Arch::X86_64 { "x86" } else { "arm64" })
        .join("boot")
        .join(image_target(arch));
    std::fs::create_dir_all(out).map_err(io(out))?;
    let image = out.join("vmlinuz");
    std::fs::copy(&built, &image).map_err(io(&built))?;
    let release_path = out.join("kernel.release");
    std::fs::write(&release_path, format!("{release}\n")).map_err(io(&release_path))?;
    let config = build_dir.join(".config");
    std::fs::copy(&config, out.join("config")).map_err(io(&config))?;
    Ok(BuiltKernel { image, release })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_changed_symbol_is_named() {
        let fragment = "CONFIG_A=y\nCONFIG_B=y\n# comment\nCONFIG_C=\"x\"\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n";
        let mismatches = check(fragment, config);
        assert_eq!(mismatches.len(), 1);
        assert_eq!(
            mismatches.first().unwrap().to_string(),
            "CONFIG_B=y (got n)"
        );
        assert!(check("CONFIG_D=y\n", "").first().unwrap().got == "absent");
    }

    #[test]
    fn every_fragment_line_is_a_symbol_or_a_comment() {
        for text in [COMMON_FRAGMENT, X86_64_FRAGMENT, AARCH64_FRAGMENT] {
            for line in text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            {
                assert!(line.starts_with("CONFIG_") && line.contains('='), "{line}");
            }
        }
        assert!(fragment(Arch::X86_64).contains("CONFIG_ACPI_BUTTON=y"));
        assert!(fragment(Arch::Aarch64).contains("CONFIG_KEYBOARD_GPIO=y"));
    }
}
