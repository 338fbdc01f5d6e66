//! Kernel modules: resolve a name through `modules.dep` and load it with its dependencies.
//!
//! There is no modprobe in a berth image; init reads the same index files modprobe reads
//! (`modules.dep`, `modules.builtin`) from `/lib/modules/<release>`.

use std::collections::HashSet;
use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use berth_kmod::{module_name_of, parse_modules_load, IndexError, ModuleIndex, MODULES_ROOT};
use flate2::read::GzDecoder;
use lzma_rust2::XzReader;
use nix::errno::Errno;
use nix::kmod::{finit_module, init_module, ModuleInitFlags};

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot tell the running kernel's release: {0}")]
    KernelRelease(#[source] Errno),
    #[error("cannot open module {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decompress module {}: {source}", path.display())]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel refused module {} ({name}): {source}", path.display())]
    Load {
        name: String,
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// Reads the module index of the running kernel.
pub fn index_for_running_kernel() -> Result<ModuleIndex, KmodError> {
    let uts = nix::sys::utsname::uname().map_err(KmodError::KernelRelease)?;
    Ok(ModuleIndex::read(
        &Path::new(MODULES_ROOT).join(uts.release()),
    )?)
}

/// How one module file reaches the kernel; a trait so the order is tested without root.
pub trait ModuleLoader {
    fn load(&mut self, path: &Path) -> Result<(), KmodError>;
}

/// Loads modules with `finit_module(2)`, or `init_module(2)` after decompressing a `.ko.xz`
/// or `.ko.gz`.
#[derive(Debug, Default)]
pub struct KernelLoader;

/// Parameters some modules get, as `modprobe.d` would give them. `bonding` would otherwise
/// make a `bond0` of its own on load, in round-robin mode, under the name a manifest may want
/// for its own bond.
fn parameters_of(path: &Path) -> &'static CStr {
    match module_name_of(&path.to_string_lossy()).as_str() {
        "bonding" => c"max_bonds=0",
        _ => c"",
    }
}

/// The module in the `.ko.xz` or `.ko.gz` file at `path`, decompressed; None for a file
/// the kernel reads itself. The kernels berth boots cannot decompress modules, and the image
/// ships them compressed (see the image builder's `module_files`).
fn decompressed(path: &Path, file: &File) -> Result<Option<Vec<u8>>, KmodError> {
    let mut reader: Box<dyn Read + '_> = match path.extension().and_then(|ext| ext.to_str()) {
        Some("xz") => Box::new(XzReader::new(std::io::BufReader::new(file), false)),
        Some("gz") => Box::new(GzDecoder::new(std::io::BufReader::new(file))),
        _ => return Ok(None),
    };
    let mut module = Vec::new();
    reader
        .read_to_end(&mut module)
        .map_err(|source| KmodError::Decompress {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Some(module))
}

impl ModuleLoader for KernelLoader {
    fn load(&mut self, path: &Path) -> Result<(), KmodError> {
        let file = File::open(path).map_err(|source| KmodError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let parameters = parameters_of(path);
        let loaded = match decompressed(path, &file)? {
            Some(module) => init_module(&module, parameters),
            None => finit_module(&file, parameters, ModuleInitFlags::empty()),
        };
        match loaded {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(source) => Err(KmodError::Load {
                name: module_name_of(&path.to_string_lossy()),
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Loads modules by name, each once, and logs what it did.
#[derive(Debug)]
pub struct ModuleLoading<L: ModuleLoader> {
    index: ModuleIndex,
    loader: L,
    loaded: HashSet<String>,
    /// Soft dependencies that failed once; not tried again.
    skipped: HashSet<String>,
}

impl<L: ModuleLoader> ModuleLoading<L> {
    pub fn new(index: ModuleIndex, loader: L) -> Self {
        ModuleLoading {
            index,
            loader,
            loaded: HashSet::new(),
            skipped: HashSet::new(),
        }
    }

    /// Loads `name` after its dependencies. Built-in modules need nothing.
    pub fn load(&mut self, name: &str) -> Result<(), KmodError> {
        if self.index.is_builtin(name) {
            log::debug!("module {name} is built into the kernel");
            return Ok(());
        }
        for step in self.index.load_plan(name)? {
            if self.loaded.contains(&step.module) || self.skipped.contains(&step.module) {
                continue;
            }
            let started = Instant::now();
            match self.loader.load(&step.path) {
                Ok(()) => {
                    log::info!(
                        "loaded module {} in {} ms",
                        step.module,
                        started.elapsed().as_millis()
                    );
                    self.loaded.insert(step.module);
                }
                // As modprobe: a soft dependency that fails is skipped, the module still loads.
                Err(err) if step.optional => {
                    log::warn!("soft dependency of {name} skipped: {err}");
                    self.skipped.insert(step.module);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Loads every module whose alias matches `modalias`; how many were newly loaded.
    pub fn load_for_alias(&mut self, modalias: &str) -> usize {
        let mut loaded = 0;
        for module in self.index.modules_for(modalias) {
            if self.loaded.contains(&module) {
                continue;
            }
            match self.load(&module) {
                Ok(()) => loaded += 1,
                Err(err) => log::warn!("{modalias}: {err}"),
            }
        }
        loaded
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    /// Records each load; refuses the modules named in its second field, as the kernel
    /// refuses `crc32c-intel` on a CPU without SSE4.2.
    #[derive(Default)]
    struct Recorder(Vec<String>, Vec<&'static str>);

    impl ModuleLoader for &mut Recorder {
        fn load(&mut self, path: &Path) -> Result<(), KmodError> {
            let name = module_name_of(&path.to_string_lossy());
            if self.1.contains(&name.as_str()) {
                return Err(KmodError::Load {
                    name,
                    path: path.to_path_buf(),
                    source: Errno::ENODEV,
                });
            }
            self.0.push(name);
            Ok(())
        }
    }

    #[test]
    fn a_soft_dependency_that_fails_is_skipped_and_the_module_still_loads() {
        let index = ModuleIndex::parse(
            Path::new("/lib/modules/6.1"),
            "kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko\n\
             kernel/lib/libcrc32c.ko:\n\
             kernel/arch/x86/crypto/crc32c-intel.ko:\n\
             kernel/net/core/failover.ko:\n",
            "",
        )
        .with_softdeps(berth_kmod::parse_softdeps(
            "softdep libcrc32c pre: crc32c-intel\n",
        ));
        let mut recorder = Recorder(Vec::new(), vec!["crc32c_intel"]);
        let mut loading = ModuleLoading::new(index, &mut recorder);
        loading.load("nf_tables").unwrap();
        // A required module that fails is still an error.
        assert!(loading.load("failover").is_ok());
        assert_eq!(recorder.0, ["libcrc32c", "nf_tables", "failover"]);
        let mut refusing = Recorder(Vec::new(), vec!["failover"]);
        let index = ModuleIndex::parse(Path::new("/m"), "kernel/net/core/failover.ko:\n", "");
        assert!(ModuleLoading::new(index, &mut refusing)
            .load("failover")
            .is_err());
    }

    #[test]
    fn dependencies_load_first_and_each_module_once() {
        let index = ModuleIndex::parse(
            Path::new("/lib/modules/6.1"),
            DEP,
            "kernel/drivers/virtio/virtio.ko\n",
        );
        let mut recorder = Recorder::default();
        let mut loading = ModuleLoading::new(index, &mut recorder);
        loading.load("virtio-net").unwrap();
        loading.load("net_failover").unwrap();
        loading.load("virtio").unwrap();
        assert_eq!(recorder.0, ["failover", "net_failover", "virtio_net"]);
    }
}
