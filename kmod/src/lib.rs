//! The kernel module index as depmod writes it: `modules.dep`, `modules.builtin`,
//! `modules.alias` and the `pre:` half of `modules.softdep`.
//!
//! The image builder reads it to ship a module with exactly its dependencies; init reads the
//! same files in the guest to load them in order. There is no modprobe in a berth image.

mod alias;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use alias::{glob_match, parse_aliases, Alias};

/// Where module trees live, one directory per kernel release.
pub const MODULES_ROOT: &str = "/lib/modules";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot read {}: {source}", path.display())]
    ReadIndex {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no module `{name}` in {}", index.display())]
    NotFound { name: String, index: PathBuf },
}

#[derive(Debug, Clone)]
struct ModuleEntry {
    /// Path relative to the release directory.
    path: PathBuf,
    /// Dependencies, as `modules.dep` lists them: the last one is loaded first.
    depends: Vec<String>,
}

/// The parsed module index of one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    release_dir: PathBuf,
    modules: HashMap<String, ModuleEntry>,
    builtin: HashSet<String>,
    aliases: Vec<Alias>,
    /// Modules (or aliases) to load before a module, from `softdep M pre: ...`: what
    /// modprobe would load first, such as `crc32c` for `libcrc32c`, whose init fails without.
    soft_pre: HashMap<String, Vec<String>>,
}

/// One module to load, in a [`ModuleIndex::load_plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadStep {
    pub module: String,
    pub path: PathBuf,
    /// Only a soft dependency: a failure to load it is logged and the plan goes on.
    pub optional: bool,
}

/// The `pre:` soft dependencies in a `modules.softdep` file, by module.
pub fn parse_softdeps(text: &str) -> HashMap<String, Vec<String>> {
    let mut soft = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(module) = words.next() else { continue };
        let mut pre = Vec::new();
        let mut in_pre = false;
        for word in words {
            match word {
                "pre:" => in_pre = true,
                "post:" => in_pre = false,
                name if in_pre => pre.push(name.to_string()),
                _ => {}
            }
        }
        if !pre.is_empty() {
            soft.entry(module_name_of(module))
                .or_insert_with(Vec::new)
                .extend(pre);
        }
    }
    soft
}

/// The kernel's name for a module file: `kernel/net/virtio-net.ko` is `virtio_net`.
pub fn module_name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `modules.dep` (required) and `modules.builtin` (optional) from `release_dir`.
    pub fn read(release_dir: &Path) -> Result<ModuleIndex, IndexError> {
        let dep_path = release_dir.join("modules.dep");
        let deps = std::fs::read_to_string(&dep_path).map_err(|source| IndexError::ReadIndex {
            path: dep_path.clone(),
            source,
        })?;
        let optional =
            |name: &str| std::fs::read_to_string(release_dir.join(name)).unwrap_or_default();
        let mut index = ModuleIndex::parse(release_dir, &deps, &optional("modules.builtin"))
            .with_aliases(parse_aliases(&optional("modules.alias")));
        index.soft_pre = parse_softdeps(&optional("modules.softdep"));
        Ok(index)
    }

    pub fn parse(release_dir: &Path, modules_dep: &str, modules_builtin: &str) -> ModuleIndex {
        let modules = modules_dep
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(path, depends)| {
                let entry = ModuleEntry {
                    path: PathBuf::from(path.trim()),
                    depends: depends.split_whitespace().map(module_name_of).collect(),
                };
                (module_name_of(path.trim()), entry)
            })
            .collect();
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(module_name_of)
            .collect();
        ModuleIndex {
            release_dir: release_dir.to_path_buf(),
            modules,
            builtin,
            aliases: Vec::new(),
            soft_pre: HashMap::new(),
        }
    }

    /// Uses these `pre:` soft dependencies (from [`parse_softdeps`]) in load plans.
    pub fn with_softdeps(mut self, soft_pre: HashMap<String, Vec<String>>) -> ModuleIndex {
        self.soft_pre = soft_pre;
        self
    }

    /// Uses these `modules.alias` entries for [`ModuleIndex::modules_for`].
    pub fn with_aliases(mut self, aliases: Vec<Alias>) -> ModuleIndex {
        self.aliases = aliases;
        self
    }

    /// Modules whose alias patterns match `modalias` (a device's, or `fs-vfat` and the like),
    /// each once, in `modules.alias` order.
    pub fn modules_for(&self, modalias: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for alias in &self.aliases {
            if glob_match(&alias.pattern, modalias) && !found.contains(&alias.module) {
                found.push(alias.module.clone());
            }
        }
        found
    }

    /// The `modules.alias` lines of the given modules, to ship with them.
    pub fn alias_lines<'a>(&self, modules: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let wanted: HashSet<&str> = modules.into_iter().collect();
        self.aliases
            .iter()
            .filter(|a| wanted.contains(a.module.as_str()))
            .map(|a| format!("alias {} {}", a.pattern, a.module))
            .collect()
    }

    /// True when the kernel has `name`, as a module or built in.
    pub fn has(&self, name: &str) -> bool {
        let name = name.replace('-', "_");
        self.modules.contains_key(&name) || self.builtin.contains(&name)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// `name` and its dependencies, in the order they must be loaded (dependencies first),
    /// each preceded by what it soft-depends on (`pre:`) when the kernel has that as a module.
    pub fn load_order(&self, name: &str) -> Result<Vec<(String, PathBuf)>, IndexError> {
        Ok(self
            .load_plan(name)?
            .into_iter()
            .map(|step| (step.module, step.path))
            .collect())
    }

    /// As [`ModuleIndex::load_order`], saying of each module whether it is only a soft
    /// dependency: modprobe loads those on a best-effort basis, and so must berth
    /// (`crc32c-intel`, `libcrc32c`'s soft dependency, refuses a CPU without SSE4.2, and
    /// `nf_tables` loads without it).
    pub fn load_plan(&self, name: &str) -> Result<Vec<LoadStep>, IndexError> {
        let mut plan = Vec::new();
        for (module, path) in self.hard_load_order(name)? {
            for soft in self.soft_pre.get(&module).into_iter().flatten() {
                let resolved = if self.modules.contains_key(&soft.replace('-', "_")) {
                    Some(soft.replace('-', "_"))
                } else {
                    self.modules_for(soft).into_iter().next()
                };
                // A soft dependency that is built in, or missing, is no one's business.
                if let Some(soft_order) = resolved.and_then(|m| self.hard_load_order(&m).ok()) {
                    plan.extend(soft_order.into_iter().map(|(module, path)| LoadStep {
                        module,
                        path,
                        optional: true,
                    }));
                }
            }
            plan.push(LoadStep {
                module,
                path,
                optional: false,
            });
        }
        // Each module once, at its first place; required when anything requires it.
        let required: HashSet<String> = plan
            .iter()
            .filter(|step| !step.optional)
            .map(|step| step.module.clone())
            .collect();
        let mut seen = HashSet::new();
        plan.retain(|step| seen.insert(step.module.clone()));
        for step in &mut plan {
            step.optional = !required.contains(&step.module);
        }
        Ok(plan)
    }

    fn hard_load_order(&self, name: &str) -> Result<Vec<(String, PathBuf)>, IndexError> {
        let name = name.replace('-', "_");
        let entry = self
            .modules
            .get(&name)
            .ok_or_else(|| IndexError::NotFound {
                name: name.clone(),
                index: self.release_dir.join("modules.dep"),
            })?;
        let mut order = Vec::with_capacity(entry.depends.len() + 1);
        for dep in entry.depends.iter().rev() {
            if let Some(dep_entry) = self.modules.get(dep) {
                order.push((dep.clone(), self.release_dir.join(&dep_entry.path)));
            }
        }
        order.push((name, self.release_dir.join(&entry.path)));
        Ok(order)
    }

    /// Every module needed to load `names`, each once (release-relative paths).
    pub fn closure<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(String, PathBuf)>, IndexError> {
        let mut seen = HashSet::new();
        let mut closure = Vec::new();
        for name in names {
            if self.is_builtin(name) {
                continue;
            }
            for (module, path) in self.load_order(name)? {
                if seen.insert(module.clone()) {
                    closure.push((module, path));
                }
            }
        }
        Ok(closure)
    }

    /// The `modules.dep` line of `module`, with paths relative to the release directory as
    /// `shipped` names them (the image compresses `x.ko` into `x.ko.xz`).
    pub fn dep_line(&self, module: &str, shipped: impl Fn(&Path) -> PathBuf) -> Option<String> {
        let entry = self.modules.get(module)?;
        let depends: Vec<String> = entry
            .depends
            .iter()
            .filter_map(|dep| self.modules.get(dep))
            .map(|dep| shipped(&dep.path).display().to_string())
            .collect();
        Some(
            format!("{}: {}", shipped(&entry.path).display(), depends.join(" "))
                .trim_end()
                .to_string(),
        )
    }

    pub fn release_dir(&self) -> &Path {
        &self.release_dir
    }
}

/// Module names from a `modules-load.d` file: one per line, `#` and `;` start comments.
pub fn parse_modules_load(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/input/evdev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    #[test]
    fn dependencies_come_first_in_reverse_listed_order() {
        let index = ModuleIndex::parse(Path::new("/m"), DEP, "kernel/drivers/virtio/virtio.ko\n");
        let order: Vec<String> = index
            .load_order("virtio-net")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(order, ["failover", "net_failover", "virtio_net"]);
        assert!(index.is_builtin("virtio"));
        let closure = index.closure(["virtio_net", "evdev"]).unwrap();
        assert_eq!(closure.len(), 4);
    }

    #[test]
    fn dep_lines_name_the_files_as_shipped_and_compressed_names_parse_back() {
        let index = ModuleIndex::parse(Path::new("/m"), DEP, "");
        let xz = |path: &Path| {
            let mut name = path.as_os_str().to_owned();
            name.push(".xz");
            PathBuf::from(name)
        };
        let line = index.dep_line("net_failover", xz).unwrap();
        assert_eq!(
            line,
            "kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz"
        );
        let shipped = ModuleIndex::parse(Path::new("/m"), &format!("{line}\n"), "");
        assert!(shipped.has("net_failover"));
        let order = shipped.load_order("net-failover").unwrap();
        assert_eq!(
            order.last().map(|(n, p)| (n.as_str(), p.clone())),
            Some((
                "net_failover",
                PathBuf::from("/m/kernel/drivers/net/net_failover.ko.xz")
            ))
        );
    }

    #[test]
    fn reads_dep_builtin_and_alias_files_from_disk() {
        let dir = std::env::temp_dir().join(format!("berth-kmod-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modules.dep"), DEP).unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.alias"),
            "alias virtio:d00000001v* virtio_net\n",
        )
        .unwrap();
        let index = ModuleIndex::read(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            index.modules_for("virtio:d00000001v00001AF4"),
            ["virtio_net"]
        );
        assert!(index.is_builtin("virtio"));
        assert!(index.has("virtio_net") && !index.has("e1000"));
    }

    #[test]
    fn unknown_module_names_the_index() {
        let index = ModuleIndex::parse(Path::new("/lib/modules/6.1"), DEP, "");
        let err = index.load_order("nosuch").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no module `nosuch` in /lib/modules/6.1/modules.dep"
        );
    }

    #[test]
    fn soft_dependencies_load_first_through_their_alias() {
        let mut index = ModuleIndex::parse(
            Path::new("/lib/modules/6.1.0"),
            "kernel/lib/libcrc32c.ko:\nkernel/crypto/crc32c_generic.ko:\n\
             kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko\n",
            "",
        )
        .with_aliases(parse_aliases("alias crc32c crc32c_generic\n"));
        index.soft_pre = parse_softdeps("softdep libcrc32c pre: crc32c\n# comment\n");
        let names: Vec<String> = index
            .load_order("nf_tables")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["crc32c_generic", "libcrc32c", "nf_tables"]);
    }

    #[test]
    fn modules_load_d_skips_comments() {
        assert_eq!(
            parse_modules_load("# power button\nbutton\n\n; x\n evdev \n"),
            ["button", "evdev"]
        );
    }
}
