//! cgroup v2 limits of one container, written by the parent before the container runs
//! anything, in Docker's units translated to cgroup v2's files (as runc translates them).

use std::path::Path;

/// Controllers berth delegates to container cgroups.
pub const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];
/// cpu.max's period, in microseconds (Docker's `--cpu-period` default).
const CPU_PERIOD_US: u64 = 100_000;

/// Limits for one container's cgroup; `None` leaves the kernel's default (unlimited).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupLimits {
    /// memory.max in bytes; -1 is unlimited.
    pub memory_max: Option<i64>,
    /// Memory plus swap in bytes (Docker's memswap); -1 is unlimited swap.
    pub memory_and_swap_max: Option<i64>,
    /// CPUs (0.5 is half a CPU).
    pub cpus: Option<f64>,
    /// Docker's cpu-shares (2 to 262144).
    pub cpu_shares: Option<i64>,
    /// pids.max; -1 is unlimited.
    pub pids_max: Option<i64>,
    /// Docker's blkio-weight (10 to 1000).
    pub blkio_weight: Option<i64>,
}

fn max_or(value: i64) -> String {
    if value < 0 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

impl CgroupLimits {
    /// The cgroup v2 files and values these limits become.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut files = Vec::new();
        if let Some(memory) = self.memory_max {
            files.push(("memory.max", max_or(memory)));
        }
        if let Some(total) = self.memory_and_swap_max {
            let swap = match (total, self.memory_max) {
                (t, _) if t < 0 => "max".to_string(),
                (t, Some(m)) if m >= 0 => (t - m).max(0).to_string(),
                (t, _) => t.to_string(),
            };
            files.push(("memory.swap.max", swap));
        }
        if let Some(cpus) = self.cpus {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "cpus is positive and small"
            )]
            let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
            files.push(("cpu.max", format!("{} {CPU_PERIOD_US}", quota.max(1000))));
        }
        if let Some(shares) = self.cpu_shares {
            // runc's conversion from the [2, 262144] shares range to the [1, 10000] weights.
            files.push((
                "cpu.weight",
                (1 + ((shares - 2) * 9999) / 262_142).to_string(),
            ));
        }
        if let Some(pids) = self.pids_max {
            files.push(("pids.max", max_or(pids)));
        }
        if let Some(weight) = self.blkio_weight {
            // [10, 1000] to io.weight's [1, 10000].
            files.push((
                "io.weight",
                format!("default {}", 1 + ((weight - 10) * 9999) / 990),
            ));
        }
        files
    }

    pub fn apply(&self, cgroup: &Path) -> Result<(), String> {
        for (file, value) in self.files() {
            std::fs::write(cgroup.join(file), &value)
                .map_err(|e| format!("write {value} to {}: {e}", cgroup.join(file).display()))?;
        }
        Ok(())
    }
}

/// Lets `parent`'s children use every controller the kernel offers; returns those enabled.
pub fn delegate_controllers(parent: &Path) -> Vec<&'static str> {
    let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}")).is_ok())
        .copied()
        .collect()
}

/// The `oom_kill` count of a cgroup's `memory.events`.
pub fn oom_kills(cgroup: &Path) -> u64 {
    std::fs::read_to_string(cgroup.join("memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_units_become_cgroup_v2_values() {
        let limits = CgroupLimits {
            memory_max: Some(32 << 20),
            memory_and_swap_max: Some(64 << 20),
            cpus: Some(0.5),
            cpu_shares: Some(1024),
            pids_max: Some(64),
            blkio_weight: Some(500),
        };
        let files = limits.files();
        let get = |f: &str| files.iter().find(|(n, _)| *n == f).map(|(_, v)| v.clone());
        assert_eq!(get("memory.max").as_deref(), Some("33554432"));
        assert_eq!(get("memory.swap.max").as_deref(), Some("33554432"));
        assert_eq!(get("cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(get("cpu.weight").as_deref(), Some("39"));
        assert_eq!(get("pids.max").as_deref(), Some("64"));
        assert_eq!(get("io.weight").as_deref(), Some("default 4950"));
        let unlimited = CgroupLimits {
            pids_max: Some(-1),
            memory_and_swap_max: Some(-1),
            ..CgroupLimits::default()
        };
        assert_eq!(
            unlimited.files(),
            [
                ("memory.swap.max", "max".to_string()),
                ("pids.max", "max".to_string())
            ]
        );
    }
}
