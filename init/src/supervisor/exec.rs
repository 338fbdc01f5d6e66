//! Processes started inside a running container, by `berthctl exec` and by health checks:
//! what they inherit from the container's start (environment, working directory, user,
//! capabilities, seccomp, limits) and the runtime call that starts them.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use berth_runtime::{ContainerSpec, ExecSpec, Security};
use nix::unistd::Pid;

use super::Supervised;

/// What the container's first process was started with, kept while it runs.
#[derive(Debug, Clone)]
pub struct ExecDefaults {
    env: Vec<String>,
    cwd: String,
    user: Option<String>,
    group_add: Vec<String>,
    security: Security,
    rlimits: Vec<(String, u64, u64)>,
    cgroup: Option<PathBuf>,
    userns: bool,
}

impl ExecDefaults {
    pub fn of(spec: &ContainerSpec) -> ExecDefaults {
        ExecDefaults {
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            user: spec.user.clone(),
            group_add: spec.group_add.clone(),
            security: spec.security.clone(),
            rlimits: spec.rlimits.clone(),
            cgroup: spec.cgroup.clone(),
            userns: spec.userns.is_some(),
        }
    }
}

/// The process' stdin, stdout and stderr.
#[derive(Debug)]
pub struct ExecIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// stdin is a terminal.
    pub tty: bool,
}

/// /dev/null for all three: a probe's output is not kept.
pub fn probe_io() -> Result<ExecIo, String> {
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| format!("open /dev/null: {e}"))
    };
    Ok(ExecIo {
        stdin: null()?,
        stdout: null()?,
        stderr: null()?,
        tty: false,
    })
}

/// `env`'s `KEY=value` pairs over the container's own.
fn merged_env(base: &[String], over: Vec<String>) -> Vec<String> {
    let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    let mut env: Vec<String> = base
        .iter()
        .filter(|kv| !over.iter().any(|o| key(o) == key(kv)))
        .cloned()
        .collect();
    env.extend(over);
    env
}

/// Starts `args` inside `c`, which must be running.
pub fn start(
    c: &Supervised,
    args: Vec<String>,
    user: Option<String>,
    env: Vec<String>,
    workdir: Option<String>,
    io: ExecIo,
) -> Result<Pid, String> {
    let (Some(pid), Some(defaults)) = (c.running_pid(), c.exec_defaults.as_ref()) else {
        return Err(format!("container `{}` is not running", c.name()));
    };
    let spec = ExecSpec {
        container_pid: pid.as_raw(),
        args,
        env: merged_env(&defaults.env, env),
        cwd: workdir.unwrap_or_else(|| defaults.cwd.clone()),
        user: user.or_else(|| defaults.user.clone()),
        group_add: defaults.group_add.clone(),
        security: defaults.security.clone(),
        rlimits: defaults.rlimits.clone(),
        cgroup: defaults.cgroup.clone(),
        userns: defaults.userns,
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
        tty: io.tty,
    };
    // SAFETY: init is single-threaded: its helpers are processes, never threads.
    unsafe { berth_runtime::exec(&spec) }.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_environment_overrides_the_containers_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        assert_eq!(
            merged_env(&base, vec!["A=2".to_string(), "B=3".to_string()]),
            ["PATH=/bin", "A=2", "B=3"]
        );
    }
}
