//! `[containers.NAME]`: what a container runs and how it is kept running. The vocabulary is
//! Docker Compose's wherever Compose has a word.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::duration::ComposeDuration;
use crate::health::HealthCheck;
use crate::ports::{NetworkMode, PortMapping};
use crate::registries::{names_registry, PullPolicy};
use crate::security::{ByteSize, Capability, Cpus, Ranged, SecurityOpt, Ulimits};

/// Docker's default grace period between the stop signal and SIGKILL.
pub const DEFAULT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// One container.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// `name:tag` of an image in the image store, or a reference to pull
    /// (`registry.example.com/team/app:1.4`, `nginx@sha256:...`).
    pub image: Spanned<String>,
    /// When the image is pulled (see [`Container::pull_policy`]).
    pub pull_policy: Option<Spanned<PullPolicy>>,
    /// Replaces the image's Cmd (and, with `entrypoint`, its Entrypoint).
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    /// Merged over the image's Env.
    #[serde(default)]
    pub environment: Environment,
    pub working_dir: Option<AbsolutePath>,
    /// `uid[:gid]` or a user (and group) name from the image's `/etc/passwd`.
    pub user: Option<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The delay before the first restart (100 ms unless given); it doubles after each run
    /// shorter than 10 s, up to a minute, as Compose's `restart_policy.delay` starts it.
    pub restart_delay: Option<ComposeDuration>,
    #[serde(default)]
    pub depends_on: DependsOn,
    pub stop_signal: Option<SignalName>,
    pub stop_grace_period: Option<ComposeDuration>,
    /// A command run inside the container at intervals to tell whether it is healthy.
    pub healthcheck: Option<HealthCheck>,
    /// Stop and start the container again when its health check says it is unhealthy
    /// (needs an enabled `healthcheck`). Read it through
    /// [`Container::restarts_on_unhealthy`]; the span is for messages.
    pub restart_on_unhealthy: Option<Spanned<bool>>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub tmpfs: Vec<Tmpfs>,
    /// `"host"` shares the host's PID namespace (Compose's `pid: host`): the container sees
    /// every process, and its orphans are re-parented to berth's init. For system tools.
    pub pid: Option<PidMode>,
    /// Capabilities added to Docker's default set, or `ALL`.
    #[serde(default)]
    pub cap_add: Vec<Capability>,
    /// Capabilities removed from Docker's default set, or `ALL`.
    #[serde(default)]
    pub cap_drop: Vec<Capability>,
    /// Every capability, no seccomp filter, no masked or read-only paths, the host's devices:
    /// for system containers only.
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub security_opt: Vec<SecurityOpt>,
    /// Mount the root filesystem read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Host devices passed in, Compose's `HOST[:CONTAINER[:PERMISSIONS]]`
    /// (`"/dev/fuse:/dev/fuse:rwm"`); the container can open no other device but the
    /// defaults (`null`, `zero`, `full`, `random`, `urandom`, `tty`, `console`, `ptmx`, the
    /// pts). Ignored when privileged.
    #[serde(default)]
    pub devices: Vec<DeviceMapping>,
    /// Supplementary groups (names from the image's `/etc/group`, or numbers).
    #[serde(default)]
    pub group_add: Vec<String>,
    /// memory.max.
    pub mem_limit: Option<ByteSize>,
    /// Memory plus swap (memory.swap.max is the difference); `-1` is unlimited swap.
    pub memswap_limit: Option<ByteSize>,
    /// cpu.max, in CPUs.
    pub cpus: Option<Cpus>,
    /// Docker's relative CPU weight (2 to 262144, 1024 by default), as cpu.weight.
    pub cpu_shares: Option<Ranged<2, 262_144>>,
    /// pids.max; `-1` is unlimited.
    pub pids_limit: Option<Ranged<-1, { i64::MAX }>>,
    /// Docker's block I/O weight (10 to 1000), as io.weight.
    pub blkio_weight: Option<Ranged<10, 1000>>,
    #[serde(default)]
    pub ulimits: Ulimits,
    /// Run in a user namespace: container root is an unprivileged host uid from `[userns]`.
    #[serde(default)]
    pub userns: bool,
    /// `bridge` (the default), `host`, `none` or `container:NAME`, as Docker's `--network`.
    pub network_mode: Option<Spanned<NetworkMode>>,
    /// Ports published on the host, Docker's short syntax (`"8080:80"`); bridge mode only.
    #[serde(default)]
    pub ports: Vec<Spanned<PortMapping>>,
}

/// Compose's `pid` values berth supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PidMode {
    Host,
}

impl Container {
    pub fn stop_grace(&self) -> std::time::Duration {
        self.stop_grace_period
            .map_or(DEFAULT_STOP_GRACE, |grace| grace.0)
    }

    pub fn network_mode(&self) -> &NetworkMode {
        static BRIDGE: NetworkMode = NetworkMode::Bridge;
        self.network_mode.as_ref().map_or(&BRIDGE, Spanned::get_ref)
    }

    /// When the image is pulled: as `pull_policy` says; unset, `missing` for a reference that
    /// names its registry and `never` for a short name (`busybox:1.35`), which must then be
    /// in the image store, so a typo is caught when the manifest is checked rather than
    /// sent to Docker Hub.
    pub fn pull_policy(&self) -> PullPolicy {
        match &self.pull_policy {
            Some(policy) => *policy.get_ref(),
            None if names_registry(self.image.get_ref()) => PullPolicy::Missing,
            None => PullPolicy::Never,
        }
    }

    pub fn stop_signal_number(&self) -> i32 {
        self.stop_signal.as_ref().map_or(SIGTERM, |s| s.number)
    }

    /// The health check, unless there is none or it is disabled (`disable = true`,
    /// `test = ["NONE"]`).
    pub fn enabled_healthcheck(&self) -> Option<&HealthCheck> {
        self.healthcheck.as_ref().filter(|check| check.is_enabled())
    }

    /// Whether an `unhealthy` verdict restarts the container (`restart_on_unhealthy`).
    pub fn restarts_on_unhealthy(&self) -> bool {
        self.restart_on_unhealthy
            .as_ref()
            .is_some_and(|flag| *flag.get_ref())
    }
}

/// A command line: a TOML list, or a string split the way a shell splits words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command(pub Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CommandVisitor;
        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings or a command string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Command, E> {
                split_words(text).map(Command).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                let mut words = Vec::new();
                while let Some(word) = seq.next_element::<String>()? {
                    words.push(word);
                }
                Ok(Command(words))
            }
        }
        deserializer.deserialize_any(CommandVisitor)
    }
}

/// Splits a command string into words: whitespace separates, quotes group, `\` escapes.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.get_or_insert_with(String::new).push(c),
            (_, '\\') => {
                let escaped = chars.next().ok_or("the command ends with a lone `\\`")?;
                word.get_or_insert_with(String::new).push(escaped);
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (_, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if quote.is_some() {
        return Err("the command has an unclosed quote".to_string());
    }
    words.extend(word);
    Ok(words)
}

/// Environment variables: a table `{ KEY = "value" }` or a list `["KEY=value"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = Environment;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of strings or a list of \"KEY=value\" strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Environment, A::Error> {
                let mut env = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    check_env_key(&key).map_err(de::Error::custom)?;
                    env.insert(key, value);
                }
                Ok(Environment(env))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Environment, A::Error> {
                let mut env = BTreeMap::new();
                while let Some(entry) = seq.next_element::<String>()? {
                    let (key, value) = entry.split_once('=').ok_or_else(|| {
                        de::Error::custom(format!("`{entry}` is not of the form KEY=value"))
                    })?;
                    check_env_key(key).map_err(de::Error::custom)?;
                    env.insert(key.to_string(), value.to_string());
                }
                Ok(Environment(env))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}

fn check_env_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Err(format!("`{key}` is not an environment variable name"));
    }
    Ok(())
}

/// An absolute path inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsolutePath(pub String);

impl AbsolutePath {
    pub fn new(path: &str) -> Result<AbsolutePath, String> {
        if !path.starts_with('/') {
            return Err(format!("`{path}` must be an absolute path"));
        }
        if path.split('/').any(|part| part == "..") {
            return Err(format!("`{path}` must not contain `..`"));
        }
        Ok(AbsolutePath(path.to_string()))
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        AbsolutePath::new(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// Docker's restart policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart (`"no"`).
    #[default]
    No,
    /// Restart whatever the exit status.
    Always,
    /// Restart after a non-zero exit, at most `max_restarts` times when given.
    OnFailure { max_restarts: Option<u32> },
    /// As `Always`, except after an operator stopped the container.
    UnlessStopped,
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || {
            de::Error::custom(format!(
                "`{text}` is not a restart policy: use \"no\", \"always\", \"on-failure\", \"on-failure:N\" or \"unless-stopped\""
            ))
        };
        match text.as_str() {
            "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure { max_restarts: None }),
            other => {
                let count = other.strip_prefix("on-failure:").ok_or_else(invalid)?;
                let max = count.parse::<u32>().map_err(|_| invalid())?;
                Ok(RestartPolicy::OnFailure {
                    max_restarts: Some(max),
                })
            }
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
            RestartPolicy::OnFailure { max_restarts: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure {
                max_restarts: Some(n),
            } => write!(f, "on-failure:{n}"),
        }
    }
}

/// Compose's `depends_on` conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The dependency has started (is running).
    #[default]
    ServiceStarted,
    /// The dependency ran to completion and exited 0.
    ServiceCompletedSuccessfully,
    /// The dependency's health check has passed (its status is `healthy`).
    ServiceHealthy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct DependencyOptions {
    #[serde(default)]
    condition: Condition,
}

/// `depends_on`: a list of names, or a table of names to `{ condition = "..." }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependsOn(pub Vec<(Spanned<String>, Condition)>);

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DependsVisitor;
        impl<'de> Visitor<'de> for DependsVisitor {
            type Value = DependsOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of container names or a table of names to { condition = ... }")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DependsOn, A::Error> {
                let mut deps = Vec::new();
                while let Some(name) = seq.next_element::<Spanned<String>>()? {
                    deps.push((name, Condition::default()));
                }
                Ok(DependsOn(deps))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DependsOn, A::Error> {
                let mut deps = Vec::new();
                while let Some((name, options)) =
                    map.next_entry::<Spanned<String>, DependencyOptions>()?
                {
                    deps.push((name, options.condition));
                }
                Ok(DependsOn(deps))
            }
        }
        deserializer.deserialize_any(DependsVisitor)
    }
}

/// The standard Linux signals, the same numbers on x86_64 and aarch64.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];
const SIGTERM: i32 = 15;

/// A signal by name (`SIGTERM`, `TERM`) or number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalName {
    pub name: &'static str,
    pub number: i32,
}

impl SignalName {
    pub fn new(text: &str) -> Result<SignalName, String> {
        let upper = text.to_ascii_uppercase();
        let wanted = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        SIGNALS
            .iter()
            .find(|(name, number)| *name == wanted || text.parse::<i32>().ok() == Some(*number))
            .map(|(name, number)| SignalName {
                name,
                number: *number,
            })
            .ok_or_else(|| {
                format!("`{text}` is not a signal: use a name such as SIGTERM or SIGINT")
            })
    }
}

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SignalName::new(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// An absolute host path, bind-mounted.
    HostPath(String),
    /// A named volume: a directory under `/var/lib/berth/volumes/<name>`, created on first use.
    Named(String),
}

/// `volumes` entry: `source:target[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: VolumeSource,
    pub target: AbsolutePath,
    pub read_only: bool,
}

impl Volume {
    pub fn new(spec: &str) -> Result<Volume, String> {
        let invalid =
            |why: &str| format!("`{spec}` is not a volume ({why}): write `source:/target[:ro]`");
        let parts: Vec<&str> = spec.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [source, target] => (*source, *target, "rw"),
            [source, target, mode] => (*source, *target, *mode),
            _ => return Err(invalid("expected two or three `:`-separated parts")),
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(invalid("the mode must be `ro` or `rw`")),
        };
        let source = if source.starts_with('/') {
            VolumeSource::HostPath(AbsolutePath::new(source)?.0)
        } else if !source.is_empty()
            && source
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !source.starts_with('.')
        {
            VolumeSource::Named(source.to_string())
        } else {
            return Err(invalid(
                "the source must be an absolute host path or a volume name",
            ));
        };
        Ok(Volume {
            source,
            target: AbsolutePath::new(target)?,
            read_only,
        })
    }
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Volume::new(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// `tmpfs` entry: `/path[:options]`, options as mount(8) takes them (`size=64m,mode=1777`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub target: AbsolutePath,
    pub options: String,
}

impl<'de> Deserialize<'de> for Tmpfs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (target, options) = text.split_once(':').unwrap_or((&text, ""));
        Ok(Tmpfs {
            target: AbsolutePath::new(target).map_err(de::Error::custom)?,
            options: options.to_string(),
        })
    }
}

/// `devices` entry: a host device node, where it appears in the container and what the
/// container may do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping {
    /// The node on the host (checked when the container starts: it must be a device).
    pub host: AbsolutePath,
    /// Under `/dev/` in the container; the host path unless given.
    pub container: AbsolutePath,
    /// A subset of `rwm` (read, write, mknod), in that order; `rwm` unless given.
    pub permissions: String,
}

impl DeviceMapping {
    pub fn new(spec: &str) -> Result<DeviceMapping, String> {
        let invalid = |why: String| {
            format!("`{spec}` is not a device ({why}): write `/dev/HOST[:/dev/CONTAINER[:rwm]]`")
        };
        let parts: Vec<&str> = spec.split(':').collect();
        // As Docker reads it: a second part that is not a path is the permissions.
        let (host, container, permissions) = match parts.as_slice() {
            [host] => (*host, *host, "rwm"),
            [host, perms] if !perms.starts_with('/') => (*host, *host, *perms),
            [host, container] => (*host, *container, "rwm"),
            [host, container, perms] => (*host, *container, *perms),
            _ => return Err(invalid("expected one to three `:`-separated parts".into())),
        };
        let host = AbsolutePath::new(host).map_err(invalid)?;
        let container = AbsolutePath::new(container).map_err(invalid)?;
        let name = container.0.strip_prefix("/dev/").unwrap_or_default();
        if name.split('/').all(|part| part.is_empty() || part == ".") {
            return Err(invalid(format!(
                "the container path `{}` must name a node under /dev/",
                container.0
            )));
        }
        let mut seen = String::new();
        for c in permissions.chars() {
            if !"rwm".contains(c) || seen.contains(c) {
                return Err(invalid(format!(
                    "the permissions `{permissions}` must be letters of `rwm`, each once"
                )));
            }
            seen.push(c);
        }
        if seen.is_empty() {
            return Err(invalid("the permissions are empty".into()));
        }
        let permissions = "rwm".chars().filter(|c| seen.contains(*c)).collect();
        Ok(DeviceMapping {
            host,
            container,
            permissions,
        })
    }
}

impl<'de> Deserialize<'de> for DeviceMapping {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DeviceMapping::new(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn command_strings_split_like_a_shell() {
        assert_eq!(
            split_words(r#"sh -c 'echo "a b"; exit 1' x\ y"#).unwrap(),
            ["sh", "-c", "echo \"a b\"; exit 1", "x y"]
        );
        assert_eq!(split_words("''").unwrap(), [""]);
        assert!(split_words("echo 'unclosed").is_err());
    }

    #[test]
    fn volumes() {
        let v = Volume::new("/var/lib/berth/volumes/web:/data").unwrap();
        assert_eq!(
            v.source,
            VolumeSource::HostPath("/var/lib/berth/volumes/web".into())
        );
        assert!(!v.read_only);
        let v = Volume::new("certs:/etc/ssl:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Named("certs".into()));
        assert!(v.read_only);
        for bad in ["/a", "/a:b", "/a:/b:rx", "../x:/b", "/a:/b:ro:x"] {
            assert!(Volume::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_in_composes_syntax() {
        let d = DeviceMapping::new("/dev/kvm").unwrap();
        assert_eq!(
            (
                d.host.0.as_str(),
                d.container.0.as_str(),
                d.permissions.as_str()
            ),
            ("/dev/kvm", "/dev/kvm", "rwm")
        );
        let d = DeviceMapping::new("/dev/vdb:/dev/disk2").unwrap();
        assert_eq!(
            (d.container.0.as_str(), d.permissions.as_str()),
            ("/dev/disk2", "rwm")
        );
        let d = DeviceMapping::new("/dev/fuse:/dev/fuse:mr").unwrap();
        assert_eq!(d.permissions, "rm");
        let d = DeviceMapping::new("/dev/sda:r").unwrap();
        assert_eq!(
            (d.container.0.as_str(), d.permissions.as_str()),
            ("/dev/sda", "r")
        );
        let d = DeviceMapping::new("/dev/vdb:/dev/disks/a/b:w").unwrap();
        assert_eq!(d.container.0, "/dev/disks/a/b");
        for (bad, why) in [
            ("dev/kvm", "absolute"),
            ("/dev/kvm:/kvm", "under /dev/"),
            ("/dev/kvm:/dev/", "under /dev/"),
            ("/dev/kvm:/dev/.", "under /dev/"),
            ("/dev/kvm:/device", "under /dev/"),
            ("/dev/kvm:/dev/../etc/x", "`..`"),
            ("/dev/kvm:/dev/kvm:rx", "letters of `rwm`"),
            ("/dev/kvm:/dev/kvm:rr", "each once"),
            ("/dev/kvm:/dev/kvm:", "empty"),
            ("/dev/kvm:/dev/kvm:r:w", "one to three"),
            ("", "absolute"),
        ] {
            let err = DeviceMapping::new(bad).unwrap_err();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(SignalName::new("SIGINT").unwrap().number, 2);
        assert_eq!(SignalName::new("term").unwrap().number, 15);
        assert_eq!(SignalName::new("9").unwrap().name, "SIGKILL");
        assert!(SignalName::new("SIGNOPE").is_err());
    }
}
