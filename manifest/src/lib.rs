//! The berth manifest: one TOML file that says what a host is and runs.
//!
//! Parsing and validation live here so that `berth build` and init refuse exactly the same
//! inputs with exactly the same messages. Every check that can be phrased as "this value is
//! wrong" runs inside deserialization, so the error carries the value's line and column; a
//! check that relates several fields keeps their spans with [`toml::Spanned`].

mod api;
mod container;
mod duration;
mod error;
mod health;
mod logs;
mod names;
mod network;
mod ports;
mod registries;
mod security;
mod storage;
mod time;
mod update;
mod validate;
mod watchdog;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

pub use api::{
    ApiSettings, ServerIdentity, API_CA_PATH, API_CERT_PATH, API_GENERATED_DIR, API_KEY_PATH,
    DEFAULT_API_PORT,
};
pub use container::{
    AbsolutePath, Command, Condition, Container, DependsOn, DeviceMapping, Environment, PidMode,
    RestartPolicy, SignalName, Tmpfs, Volume, VolumeSource, DEFAULT_STOP_GRACE,
};
pub use duration::{parse_duration, ComposeDuration};
pub use error::ManifestError;
pub use health::{
    HealthCheck, HealthTest, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_RETRIES,
    DEFAULT_HEALTH_START_INTERVAL, DEFAULT_HEALTH_START_PERIOD, DEFAULT_HEALTH_TIMEOUT,
    HEALTH_SHELL,
};
pub use logs::{ForwardTarget, LogFormat, LogSettings, Transport, DEFAULT_LOG_QUEUE, LOGS_CA_PATH};
pub use names::{ContainerName, Hostname, ModuleName};
pub use network::{
    Bond, BondMode, BridgeSettings, Cidr, Interface, InterfaceMatch, LinkSelector, MacAddress,
    Network, Route, Vlan, NETWORK_ONLINE,
};
pub use ports::{NetworkMode, PortMapping, PortProtocol};
pub use registries::{names_registry, registry_of, PullPolicy, RegistrySettings};
pub use security::{
    parse_bytes, ByteSize, Capability, Cpus, IdRange, Ranged, SecurityOpt, Ulimit, Ulimits, Userns,
    CAPABILITIES, DEFAULT_CAPABILITIES, DEFAULT_ID_RANGE, ULIMIT_NAMES,
};
pub use storage::{Device, MountEntry, MountOptions, SysctlKey, SysctlValue};
pub use time::{TimeServer, TimeSettings, DEFAULT_TIME_SERVERS, NTP_PORT, TIME_SYNCED};
pub use update::{ImageVersion, Update, UpdateKey, DEFAULT_COMMIT_TIMEOUT};
pub use watchdog::{
    WatchdogSettings, WatchdogTimeout, DEFAULT_WATCHDOG_DEVICE, DEFAULT_WATCHDOG_TIMEOUT,
};

/// Where init reads the manifest inside the image.
pub const MANIFEST_PATH: &str = "/etc/berth/manifest.toml";
/// Where `berth build` records when the image was built (seconds since the Unix epoch, in
/// decimal): init's clock floor, the earliest time the host's clock may read.
pub const BUILD_TIME_PATH: &str = "/etc/berth/build-time";

/// The whole manifest.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The host's name; `berth` when unset.
    pub hostname: Option<Hostname>,
    /// What init does before anything else.
    #[serde(default)]
    pub boot: Boot,
    /// The containers the host runs, by name.
    #[serde(default)]
    pub containers: BTreeMap<ContainerName, Container>,
    /// Block devices mounted at boot, in this order (`[[mount]]`).
    #[serde(default, rename = "mount")]
    pub mounts: Vec<MountEntry>,
    /// Host ids for containers with `userns = true`.
    #[serde(default)]
    pub userns: Userns,
    /// How netd configures the links; `None` is DHCP on every Ethernet link.
    pub network: Option<Network>,
    /// Settings per registry images are pulled from, by `HOST[:PORT]`.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistrySettings>,
    /// Which update bundles the host accepts, and how a new slot is committed.
    #[serde(default)]
    pub update: Update,
    /// The NTP servers netd asks.
    #[serde(default)]
    pub time: TimeSettings,
    /// The hardware watchdog init arms and feeds.
    #[serde(default)]
    pub watchdog: WatchdogSettings,
    /// The remote control API (berth-apid); none when unset.
    pub api: Option<ApiSettings>,
    /// `[logs]`: where events, containers' output and the kernel's log are shipped.
    #[serde(default)]
    pub logs: LogSettings,
}

/// The `[boot]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Kernel modules loaded at boot, with their dependencies, in this order.
    #[serde(default)]
    pub modules: Vec<toml::Spanned<ModuleName>>,
    /// Kernel parameters written to `/proc/sys` at boot.
    #[serde(default)]
    pub sysctl: BTreeMap<SysctlKey, SysctlValue>,
}

/// What a bridge with outbound NAT and published ports needs from the kernel.
const CONTAINER_NETWORK_MODULES: &[&str] = &[
    "bridge",
    "veth",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
];

impl Manifest {
    /// The hostname used when the manifest sets none.
    pub const DEFAULT_HOSTNAME: &'static str = "berth";

    /// Parses and validates a manifest. `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, ManifestError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| ManifestError::from_toml(origin, text, "", &err))?;
        let mut manifest: Manifest =
            serde_path_to_error::deserialize(deserializer).map_err(|err| {
                let field = err.path().to_string();
                ManifestError::from_toml(origin, text, &field, err.inner())
            })?;
        validate::networks(&manifest, text, origin)?;
        validate::health(&manifest, text, origin)?;
        validate::registries(&manifest, text, origin)?;
        validate::imply_network_dependencies(&mut manifest);
        validate::dependencies(&manifest, text, origin)?;
        Ok(manifest)
    }

    /// Whether some container may pull its image: the image then ships berth's puller.
    pub fn pulls_images(&self) -> bool {
        self.containers
            .values()
            .any(|c| c.pull_policy() != PullPolicy::Never)
    }

    /// Whether the image carries berth-pull: a container may pull its image, or the host
    /// accepts updates (`[update] keys`), which `berthctl update --pull` fetches with it.
    pub fn ships_puller(&self) -> bool {
        self.pulls_images() || !self.update.keys.is_empty()
    }

    /// Containers in an order that starts every dependency before its dependants (names
    /// break ties). Stopping goes in the reverse order.
    pub fn start_order(&self) -> Vec<&ContainerName> {
        validate::start_order(self)
    }

    /// Refuses a container whose `image` is not among `known` (the image store's names),
    /// pointing at the `image` value.
    pub fn check_images(
        &self,
        text: &str,
        origin: &Path,
        known: &[String],
    ) -> Result<(), ManifestError> {
        validate::images(self, text, origin, known)
    }

    /// Reads, parses and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    pub fn hostname(&self) -> &str {
        self.hostname
            .as_ref()
            .map_or(Manifest::DEFAULT_HOSTNAME, Hostname::as_str)
    }

    /// The boot modules' names, in manifest order.
    pub fn boot_modules(&self) -> impl Iterator<Item = &ModuleName> {
        self.boot.modules.iter().map(toml::Spanned::get_ref)
    }

    /// The bridge of the containers in bridge mode.
    pub fn bridge(&self) -> BridgeSettings {
        self.network
            .as_ref()
            .map(|n| n.bridge.clone())
            .unwrap_or_default()
    }

    /// Whether any container is in bridge mode (and so the host needs its bridge and NAT).
    pub fn uses_bridge(&self) -> bool {
        self.containers
            .values()
            .any(|c| *c.network_mode() == NetworkMode::Bridge)
    }

    /// Kernel modules the manifest's links need before netd starts: netd creates VLANs and
    /// bonds through netlink, and the kernel cannot load their drivers on demand without a
    /// `modprobe`.
    pub fn link_modules(&self) -> Vec<&'static str> {
        let interfaces = self.network.iter().flat_map(|n| &n.interface);
        let mut modules = Vec::new();
        for interface in interfaces {
            let module = match interface.link {
                LinkSelector::Vlan(_) => "8021q",
                LinkSelector::Bond(_) => "bonding",
                LinkSelector::Match(_) => continue,
            };
            if !modules.contains(&module) {
                modules.push(module);
            }
        }
        modules
    }

    /// Kernel modules the containers' networks need: init creates their bridge, veths and
    /// NAT, before the first container in bridge mode starts.
    pub fn container_network_modules(&self) -> &'static [&'static str] {
        if self.uses_bridge() {
            CONTAINER_NETWORK_MODULES
        } else {
            &[]
        }
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("m.toml"))
    }

    #[test]
    fn empty_manifest_takes_defaults() {
        let manifest = parse("").unwrap();
        assert_eq!(manifest.hostname(), "berth");
        assert_eq!(manifest.boot_modules().count(), 0);
    }

    #[test]
    fn reads_hostname_and_modules_in_order() {
        let manifest =
            parse("hostname = \"node-1\"\n[boot]\nmodules = [\"virtio_net\", \"e1000\"]\n")
                .unwrap();
        assert_eq!(manifest.hostname(), "node-1");
        let modules: Vec<&str> = manifest.boot_modules().map(ModuleName::as_str).collect();
        assert_eq!(modules, ["virtio_net", "e1000"]);
    }

    #[test]
    fn unknown_key_names_file_line_field_and_suggests() {
        let err = parse("hostname = \"a\"\n\n[boot]\nmodule = []\n").unwrap_err();
        assert_eq!(err.to_string(), "m.toml:4:1: boot.module: unknown field `module`, expected `modules` or `sysctl` (did you mean `modules`?)");
    }

    #[test]
    fn wrong_type_inside_a_list_names_the_element() {
        let err = parse("[boot]\nmodules = [\"a\", 7]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:2:17: boot.modules[1]: invalid type: integer `7`, expected a string"
        );
    }

    #[test]
    fn invalid_hostname_is_refused_at_its_value() {
        let err = parse("\nhostname = \"bad_name\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.toml:2:12: hostname: "), "{text}");
    }

    const ISSUE_EXAMPLE: &str = r#"
hostname = "node-1"

[containers.web]
image = "busybox:1.35"
command = ["httpd", "-f", "-p", "8080"]
environment = { GREETING = "hello" }
working_dir = "/www"
user = "1000:1000"
restart = "always"
depends_on = ["db"]
stop_signal = "SIGTERM"
stop_grace_period = "10s"
volumes = ["/var/lib/berth/volumes/web:/data", "/etc/ssl:/etc/ssl:ro"]
tmpfs = ["/tmp"]

[containers.db]
image = "busybox:1.35"
command = "sh -c 'echo ready; sleep 1000'"
restart = "on-failure:5"
environment = ["A=1", "B=two=2"]
"#;

    #[test]
    fn the_documented_example_parses() {
        let manifest = parse(ISSUE_EXAMPLE).unwrap();
        let web = &manifest.containers[&ContainerName::new("web").unwrap()];
        assert_eq!(web.image.get_ref(), "busybox:1.35");
        assert_eq!(web.restart, RestartPolicy::Always);
        assert_eq!(web.stop_grace(), std::time::Duration::from_secs(10));
        assert_eq!(web.volumes.len(), 2);
        let db = &manifest.containers[&ContainerName::new("db").unwrap()];
        assert_eq!(
            db.restart,
            RestartPolicy::OnFailure {
                max_restarts: Some(5)
            }
        );
        assert_eq!(
            db.command.as_ref().unwrap().0,
            ["sh", "-c", "echo ready; sleep 1000"]
        );
        assert_eq!(db.environment.0["B"], "two=2");
        let order: Vec<&str> = manifest.start_order().iter().map(|n| n.as_str()).collect();
        assert_eq!(order, ["db", "web"]);
    }

    #[test]
    fn depends_on_table_form_with_conditions() {
        let manifest = parse(
            "[containers.a]\nimage = \"x:1\"\n[containers.b]\nimage = \"x:1\"\n\
             depends_on = { a = { condition = \"service_completed_successfully\" } }\n",
        )
        .unwrap();
        let b = &manifest.containers[&ContainerName::new("b").unwrap()];
        assert_eq!(b.depends_on.0[0].1, Condition::ServiceCompletedSuccessfully);
    }

    #[test]
    fn unknown_dependency_points_at_it_and_suggests() {
        let err = parse("[containers.web]\nimage = \"x:1\"\ndepends_on = [\"dbb\"]\n[containers.db]\nimage = \"x:1\"\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:3:15: containers.web.depends_on[0]: no container `dbb` in this manifest (did you mean `db`?)"
        );
    }

    #[test]
    fn time_synced_with_network_time_off_is_refused() {
        let err = parse(
            "[time]\nservers = []\n[containers.a]\nimage = \"x:1\"\ndepends_on = [\"time-synced\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:5:15: containers.a.depends_on[0]: `time-synced` never comes: `[time] servers = []` turns network time off"
        );
    }

    #[test]
    fn dependency_cycles_are_refused() {
        let err = parse(
            "[containers.a]\nimage = \"x:1\"\ndepends_on = [\"b\"]\n\
             [containers.b]\nimage = \"x:1\"\ndepends_on = [\"a\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:3:15: containers.a.depends_on: dependency cycle: a -> b -> a"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                "[containers.w]\nimage = \"x:1\"\nrestart = \"sometimes\"\n",
                "containers.w.restart",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\nstop_grace_period = \"10\"\n",
                "containers.w.stop_grace_period",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\nstop_signal = \"SIGNOPE\"\n",
                "containers.w.stop_signal",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\nvolumes = [\"relative:dir\"]\n",
                "containers.w.volumes[0]",
            ),
            ("[containers.\"-bad\"]\nimage = \"x:1\"\n", "containers"),
            (
                "[containers.w]\nimage = \"x:1\"\ncomand = []\n",
                "containers.w.comand",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\ncpu_shares = 1\n",
                "containers.w.cpu_shares",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\nmem_limit = \"lots\"\n",
                "containers.w.mem_limit",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\ncap_add = [\"NET_GOD\"]\n",
                "containers.w.cap_add[0]",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\nulimits = { nofiles = 1 }\n",
                "containers.w.ulimits",
            ),
            (
                "[containers.w]\nimage = \"x:1\"\nsecurity_opt = [\"apparmor=x\"]\n",
                "containers.w.security_opt[0]",
            ),
        ];
        for (text, field) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!(" {field}")), "{err}");
        }
    }

    #[test]
    fn a_bad_device_names_file_line_and_field() {
        let text =
            "[containers.w]\nimage = \"x:1\"\ndevices = [\"/dev/kvm\", \"/dev/vdb:/etc/vdb\"]\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "m.toml:3:11: containers.w.devices[1]: `/dev/vdb:/etc/vdb` is not a device"
            ),
            "{err}"
        );
        let good = "[containers.w]\nimage = \"x:1\"\ndevices = [\"/dev/fuse:/dev/fuse:rw\"]\n";
        let manifest = parse(good).unwrap();
        let w = &manifest.containers[&ContainerName::new("w").unwrap()];
        assert_eq!(w.devices[0].permissions, "rw");
    }

    #[test]
    fn watchdog_settings_and_their_errors() {
        let manifest = parse("").unwrap();
        assert_eq!(manifest.watchdog.timeout(), DEFAULT_WATCHDOG_TIMEOUT);
        assert_eq!(manifest.watchdog.device, None);
        let manifest = parse("[watchdog]\ndevice = \"/dev/watchdog1\"\ntimeout = 5\n").unwrap();
        assert_eq!(
            manifest.watchdog.timeout(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            manifest.watchdog.device,
            Some(AbsolutePath("/dev/watchdog1".to_string()))
        );
        let err = parse("[watchdog]\ntimeout = 0\n").unwrap_err().to_string();
        assert!(
            err.starts_with("m.toml:2:11: watchdog.timeout: 0 is not a watchdog timeout"),
            "{err}"
        );
        let err = parse("[watchdog]\ndevice = \"watchdog0\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("m.toml:2:10: watchdog.device: `watchdog0` must be an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn unknown_images_are_refused_with_a_suggestion() {
        let text = "[containers.w]\nimage = \"busybox:1.36\"\n";
        let manifest = parse(text).unwrap();
        let err = manifest
            .check_images(text, Path::new("m.toml"), &["busybox:1.35".to_string()])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:2:9: containers.w.image: no image `busybox:1.36` in the image store (it has: busybox:1.35) (did you mean `busybox:1.35`?)"
        );
    }

    #[test]
    fn images_to_pull_pass_the_store_check_and_never_refuses_a_missing_one() {
        let known = ["busybox:1.35".to_string()];
        let check = |text: &str| {
            parse(text)
                .and_then(|m| m.check_images(text, Path::new("m.toml"), &known))
                .map_err(|e| e.to_string())
        };
        let named = "[containers.w]\nimage = \"10.0.2.2:5000/team/app:1.4\"\n";
        assert!(check(named).is_ok());
        assert_eq!(
            parse(named)
                .unwrap()
                .containers
                .values()
                .next()
                .unwrap()
                .pull_policy(),
            PullPolicy::Missing
        );
        assert!(check("[containers.w]\nimage = \"nginx\"\npull_policy = \"always\"\n").is_ok());
        let never =
            check("[containers.w]\nimage = \"10.0.2.2:5000/app:1\"\npull_policy = \"never\"\n")
                .unwrap_err();
        assert!(
            never.starts_with("m.toml:2:9: containers.w.image: no image"),
            "{never}"
        );
        assert!(never.contains("forbids pulling"), "{never}");
        let policy = parse("[containers.w]\nimage = \"x:1\"\npull_policy = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            policy.starts_with("m.toml:3:15: containers.w.pull_policy: unknown variant"),
            "{policy}"
        );
        let registry =
            parse("[registries.\"r.example:5000\"]\ninsecure = true\nusername = \"u\"\n")
                .unwrap_err()
                .to_string();
        assert_eq!(
            registry,
            "m.toml:3:12: registries.r.example:5000.username: a username needs its `password`"
        );
        assert!(!parse("[containers.w]\nimage = \"busybox:1.35\"\n")
            .unwrap()
            .pulls_images());
    }

    #[test]
    fn network_modes_and_ports() {
        let manifest = parse(
            "[containers.web]\nimage = \"x:1\"\nports = [\"8080:80\", \"127.0.0.1:9000:9000/udp\"]\n\
             [containers.side]\nimage = \"x:1\"\nnetwork_mode = \"container:web\"\n\
             [network.bridge]\nsubnet = \"10.77.0.0/24\"\n",
        )
        .unwrap();
        let side = &manifest.containers[&ContainerName::new("side").unwrap()];
        assert_eq!(side.depends_on.0[0].0.get_ref(), "web");
        assert_eq!(manifest.bridge().subnet.to_string(), "10.77.0.0/24");
        assert_eq!(manifest.bridge().name, "berth0");
        assert!(manifest.container_network_modules().contains(&"nft_nat"));
        for (bad, message) in [
            (
                "[containers.a]\nimage = \"x:1\"\nnetwork_mode = \"container:b\"\n",
                "m.toml:3:16: containers.a.network_mode: no container `b` in this manifest",
            ),
            (
                "[containers.a]\nimage = \"x:1\"\nnetwork_mode = \"host\"\nports = [\"80:80\"]\n",
                "m.toml:4:10: containers.a.ports[0]: ports are published from the bridge; this container's network_mode is `host`",
            ),
            (
                "[containers.a]\nimage = \"x:1\"\nports = [\"80:80\"]\n[containers.b]\nimage = \"x:1\"\nports = [\"80:81\"]\n",
                "containers.b.ports[0]: host port 80:81 is already published by `a`",
            ),
            (
                "[containers.a]\nimage = \"x:1\"\nports = [\"80\"]\n",
                "is not a published port",
            ),
            (
                "[network.bridge]\nsubnet = \"172.30.0.1/16\"\n",
                "is not a network address",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
    }

    #[test]
    fn vlans_and_bonds() {
        let manifest = parse(
            "[[network.interface]]\nname = \"bond0\"\nbond = { members = [\"eth0\", \"eth1\"] }\n\
             dhcp = true\n\
             [[network.interface]]\nvlan = { parent = \"bond0\", id = 42 }\n\
             addresses = [\"192.0.2.10/24\"]\n",
        )
        .unwrap();
        assert_eq!(manifest.link_modules(), ["bonding", "8021q"]);
        let network = manifest.network.unwrap();
        assert_eq!(
            network.interface[0].link,
            LinkSelector::Bond(Bond {
                name: "bond0".to_string(),
                members: vec!["eth0".to_string(), "eth1".to_string()],
                mode: BondMode::ActiveBackup,
                miimon_ms: 100,
            })
        );
        assert_eq!(network.interface[1].created_name(), Some("bond0.42"));
        for (bad, message) in [
            (
                "[[network.interface]]\nvlan = { parent = \"eth0\", id = 4095 }\n",
                "m.toml:1:1: network.interface[0]: vlan.id 4095 is not between 1 and 4094",
            ),
            (
                "[[network.interface]]\nbond = { members = [\"eth0\"] }\n",
                "m.toml:1:1: network.interface[0]: a bond needs a `name` (such as \"bond0\")",
            ),
            (
                "[[network.interface]]\nmatch = { name = \"eth0\" }\nvlan = { parent = \"eth0\", id = 4 }\n",
                "m.toml:1:1: network.interface[0]: `match`, `vlan` and `bond` exclude each other: give exactly one",
            ),
            (
                "[[network.interface]]\nname = \"bond0\"\nbond = { members = [\"eth0\"], mode = \"lacp\" }\n",
                "unknown variant `lacp`",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
    }

    #[test]
    fn network_section_and_network_online() {
        let manifest = parse(
            "[network]\ndns = [\"192.0.2.53\"]\nsearch = [\"example.internal\"]\n\
             [[network.interface]]\nmatch = { name = \"eth*\" }\ndhcp = true\nmtu = 1500\n\
             [[network.interface]]\nmatch = { mac = \"52:54:00:12:34:56\" }\n\
             addresses = [\"192.0.2.10/24\", \"2001:db8::10/64\"]\ngateway = \"192.0.2.1\"\n\
             gateway6 = \"2001:db8::1\"\nroutes = [{ to = \"198.51.100.0/24\", via = \"192.0.2.254\", metric = 100 }]\n\
             [containers.web]\nimage = \"x:1\"\ndepends_on = [\"network-online\"]\n",
        )
        .unwrap();
        let network = manifest.network.unwrap();
        assert_eq!(network.interface.len(), 2);
        assert!(matches!(
            &network.interface[1].link,
            LinkSelector::Match(m) if m.mac.unwrap().to_string() == "52:54:00:12:34:56"
        ));
        assert_eq!(network.interface[1].routes[0].metric, Some(100));
        assert!(network.dns_from_dhcp && network.interface[0].required);
        let err = parse("[[network.interface]]\nmatch = { mac = \"52:54\" }\n").unwrap_err();
        assert!(
            err.to_string().contains("network.interface[0].match.mac"),
            "{err}"
        );
    }

    #[test]
    fn mounts_and_sysctls() {
        let manifest = parse(
            "[boot]\nsysctl = { \"net.ipv4.ip_forward\" = 1, \"vm.overcommit_memory\" = \"1\", \"net.ipv6.conf.all.forwarding\" = true }\n\
             [[mount]]\ndevice = \"LABEL=data\"\ntarget = \"/var/lib/berth\"\nfstype = \"ext4\"\noptions = \"noatime,commit=30\"\n\
             [[mount]]\ndevice = \"/dev/vdb\"\ntarget = \"/srv\"\nfstype = \"vfat\"\noptions = [\"ro\"]\n",
        )
        .unwrap();
        assert_eq!(manifest.mounts.len(), 2);
        assert_eq!(manifest.mounts[0].options.0, ["noatime", "commit=30"]);
        let paths: Vec<String> = manifest
            .boot
            .sysctl
            .keys()
            .map(SysctlKey::proc_path)
            .collect();
        assert!(paths.contains(&"/proc/sys/net/ipv4/ip_forward".to_string()));
        assert!(manifest.boot.sysctl.values().any(|v| v.0 == "1"));
        let err = parse("[[mount]]\ndevice = \"data\"\ntarget = \"/x\"\nfstype = \"ext4\"\n")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("m.toml:2:10: mount[0].device: `data` is not a device"),
            "{err}"
        );
        let err = parse("[boot]\nsysctl = { \"../x\" = 1 }\n").unwrap_err();
        assert!(err.to_string().contains("boot.sysctl"), "{err}");
    }

    fn container<'m>(manifest: &'m Manifest, name: &str) -> &'m Container {
        &manifest.containers[&ContainerName::new(name).unwrap()]
    }

    #[test]
    fn healthcheck_with_every_key() {
        let manifest = parse(
            "[containers.web]\nimage = \"x:1\"\nrestart_on_unhealthy = true\n\
             healthcheck = { test = [\"CMD\", \"wget\", \"-q\", \"http://localhost/\"], interval = \"10s\", \
             timeout = \"2s\", retries = 5, start_period = \"5s\", start_interval = \"1s\", disable = false }\n",
        )
        .unwrap();
        let web = container(&manifest, "web");
        assert!(web.restarts_on_unhealthy());
        let check = web.enabled_healthcheck().unwrap();
        assert_eq!(
            *check,
            HealthCheck {
                test: HealthTest::Cmd(vec!["wget".into(), "-q".into(), "http://localhost/".into()]),
                interval: std::time::Duration::from_secs(10),
                timeout: std::time::Duration::from_secs(2),
                retries: 5,
                start_period: std::time::Duration::from_secs(5),
                start_interval: std::time::Duration::from_secs(1),
            }
        );
        assert_eq!(check.argv().unwrap(), ["wget", "-q", "http://localhost/"]);
    }

    #[test]
    fn healthcheck_defaults_are_dockers() {
        let manifest = parse(
            "[containers.web]\nimage = \"x:1\"\n\
             [containers.web.healthcheck]\ntest = [\"CMD-SHELL\", \"test -e /ready || exit 1\"]\n",
        )
        .unwrap();
        let web = container(&manifest, "web");
        assert!(!web.restarts_on_unhealthy());
        let check = web.healthcheck.as_ref().unwrap();
        assert_eq!(check.interval, DEFAULT_HEALTH_INTERVAL);
        assert_eq!(check.interval, std::time::Duration::from_secs(30));
        assert_eq!(check.timeout, std::time::Duration::from_secs(30));
        assert_eq!(check.retries, 3);
        assert_eq!(check.start_period, std::time::Duration::ZERO);
        assert_eq!(check.start_interval, std::time::Duration::from_secs(5));
        assert_eq!(
            check.argv().unwrap(),
            ["/bin/sh", "-c", "test -e /ready || exit 1"]
        );
    }

    #[test]
    fn healthcheck_test_as_a_string_is_cmd_shell() {
        let manifest =
            parse("[containers.web]\nimage = \"x:1\"\nhealthcheck = { test = \"pidof httpd\" }\n")
                .unwrap();
        let check = container(&manifest, "web").healthcheck.clone().unwrap();
        assert_eq!(check.test, HealthTest::CmdShell("pidof httpd".into()));
        assert_eq!(check.argv().unwrap(), ["/bin/sh", "-c", "pidof httpd"]);
    }

    #[test]
    fn healthcheck_disabled_by_none_or_disable() {
        for text in [
            "[containers.web]\nimage = \"x:1\"\nhealthcheck = { test = [\"NONE\"] }\n",
            "[containers.web]\nimage = \"x:1\"\nhealthcheck = { disable = true }\n",
            "[containers.web]\nimage = \"x:1\"\nhealthcheck = { disable = true, interval = \"1s\" }\n",
        ] {
            let manifest = parse(text).unwrap();
            let web = container(&manifest, "web");
            let check = web.healthcheck.as_ref().unwrap();
            assert_eq!(check.test, HealthTest::None, "{text}");
            assert_eq!(check.argv(), None, "{text}");
            assert!(web.enabled_healthcheck().is_none(), "{text}");
        }
    }

    #[test]
    fn healthcheck_rejections_name_line_column_and_field() {
        let head = "[containers.web]\nimage = \"x:1\"\n";
        for (body, message) in [
            (
                "healthcheck = { test = [] }\n",
                "m.toml:3:24: containers.web.healthcheck.test: the test is empty: write [\"CMD\", \"program\", \"arg\", ...], [\"CMD-SHELL\", \"command\"] or [\"NONE\"] (an image's own HEALTHCHECK is not used)",
            ),
            (
                "healthcheck = { test = [\"curl\", \"-f\", \"http://localhost\"] }\n",
                "m.toml:3:24: containers.web.healthcheck.test: `curl` is not a test type: the list starts with \"CMD\", \"CMD-SHELL\" or \"NONE\" (or write the test as one string, run by /bin/sh -c)",
            ),
            (
                "healthcheck = { test = [\"CMD-SHELL\", \"curl\", \"-f\"] }\n",
                "m.toml:3:24: containers.web.healthcheck.test: \"CMD-SHELL\" takes exactly one string after it, the command for /bin/sh -c (got 2)",
            ),
            (
                "healthcheck = { test = [\"CMD-SHELL\"] }\n",
                "m.toml:3:24: containers.web.healthcheck.test: \"CMD-SHELL\" takes exactly one string after it, the command for /bin/sh -c (got 0)",
            ),
            (
                "healthcheck = { test = [\"CMD\"] }\n",
                "m.toml:3:24: containers.web.healthcheck.test: \"CMD\" needs the program to run after it",
            ),
            (
                "healthcheck = { test = [\"NONE\", \"x\"] }\n",
                "m.toml:3:24: containers.web.healthcheck.test: \"NONE\" takes nothing after it",
            ),
            (
                "healthcheck = { test = \"  \" }\n",
                "m.toml:3:24: containers.web.healthcheck.test: the health check's shell command is empty",
            ),
            (
                "healthcheck = { test = \"true\", interval = \"0s\" }\n",
                "m.toml:3:43: containers.web.healthcheck.interval: `0s` is zero: it must be more than zero, e.g. `1s`",
            ),
            (
                "healthcheck = { test = \"true\", timeout = \"0ms\" }\n",
                "m.toml:3:42: containers.web.healthcheck.timeout: `0ms` is zero: it must be more than zero, e.g. `1s`",
            ),
            (
                "healthcheck = { test = \"true\", interval = \"-5s\" }\n",
                "m.toml:3:43: containers.web.healthcheck.interval: `-5s` is negative: a duration is zero or more",
            ),
            (
                "healthcheck = { test = \"true\", start_interval = \"0s\" }\n",
                "m.toml:3:49: containers.web.healthcheck.start_interval: `0s` is zero: it must be more than zero, e.g. `1s`",
            ),
            (
                "healthcheck = { test = \"true\", start_period = \"-1s\" }\n",
                "m.toml:3:47: containers.web.healthcheck.start_period: `-1s` is negative: a duration is zero or more",
            ),
            (
                "healthcheck = { test = \"true\", retries = 0 }\n",
                "m.toml:3:42: containers.web.healthcheck.retries: 0 is not a number of retries: use 1 to 4294967295 (the consecutive failures that make the container unhealthy)",
            ),
            (
                "healthcheck = { test = \"true\", retries = -2 }\n",
                "m.toml:3:42: containers.web.healthcheck.retries: -2 is not a number of retries: use 1 to 4294967295 (the consecutive failures that make the container unhealthy)",
            ),
            (
                "healthcheck = { test = [\"CMD\", \"true\"], disable = true }\n",
                "m.toml:3:15: containers.web.healthcheck: `test` and `disable = true` exclude each other: give one of them",
            ),
            (
                "healthcheck = { interval = \"5s\" }\n",
                "m.toml:3:15: containers.web.healthcheck: a healthcheck needs a `test` (or `disable = true`): an image's own HEALTHCHECK is not used",
            ),
            (
                "healthcheck = { test = \"true\", retry = 3 }\n",
                "m.toml:3:32: containers.web.healthcheck.retry: unknown field `retry`, expected one of `test`, `interval`, `timeout`, `retries`, `start_period`, `start_interval`, `disable` (did you mean `retries`?)",
            ),
            (
                "restart_on_unhealthy = true\n",
                "m.toml:3:24: containers.web.restart_on_unhealthy: needs a `healthcheck`: without one the container can never be unhealthy",
            ),
            (
                "restart_on_unhealthy = true\nhealthcheck = { disable = true }\n",
                "m.toml:3:24: containers.web.restart_on_unhealthy: the container's healthcheck is disabled, so it can never be unhealthy",
            ),
        ] {
            let err = parse(&format!("{head}{body}")).unwrap_err().to_string();
            assert!(err.starts_with(message), "{body}\n  got: {err}\n want: {message}");
        }
    }

    /// The health check example of `docs/manifest.md`.
    const HEALTH_EXAMPLE: &str = r#"
[containers.db]
image = "postgres:16"
healthcheck = { test = ["CMD", "pg_isready", "-U", "postgres"], interval = "10s", timeout = "2s", retries = 3, start_period = "5s", start_interval = "1s" }
restart_on_unhealthy = true

[containers.app]
image = "app:1"
depends_on = { db = { condition = "service_healthy" } }
"#;

    #[test]
    fn the_documented_healthcheck_example_parses() {
        let manifest = parse(HEALTH_EXAMPLE).unwrap();
        let db = container(&manifest, "db");
        assert!(db.restarts_on_unhealthy());
        assert_eq!(
            db.enabled_healthcheck().unwrap().argv().unwrap(),
            ["pg_isready", "-U", "postgres"]
        );
        let order: Vec<&str> = manifest.start_order().iter().map(|n| n.as_str()).collect();
        assert_eq!(order, ["db", "app"]);
    }

    #[test]
    fn restart_on_unhealthy_false_needs_no_healthcheck() {
        let manifest =
            parse("[containers.web]\nimage = \"x:1\"\nrestart_on_unhealthy = false\n").unwrap();
        assert!(!container(&manifest, "web").restarts_on_unhealthy());
    }

    #[test]
    fn service_healthy_needs_an_enabled_healthcheck() {
        let db = "[containers.db]\nimage = \"x:1\"\n";
        let app = "[containers.app]\nimage = \"x:1\"\n\
                   depends_on = { db = { condition = \"service_healthy\" } }\n";
        let manifest = parse(&format!(
            "{db}healthcheck = {{ test = [\"CMD\", \"pg_isready\"] }}\n{app}"
        ))
        .unwrap();
        assert_eq!(
            container(&manifest, "app").depends_on.0[0].1,
            Condition::ServiceHealthy
        );
        let err = parse(&format!("{db}{app}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:5:16: containers.app.depends_on: `db` has no healthcheck, so `service_healthy` can never be met"
        );
        let err = parse(&format!("{db}healthcheck = {{ test = [\"NONE\"] }}\n{app}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:6:16: containers.app.depends_on: `db`'s healthcheck is disabled, so `service_healthy` can never be met"
        );
        let err = parse(
            "[containers.app]\nimage = \"x:1\"\ndepends_on = { db = { condition = \"service_healty\" } }\n",
        )
        .unwrap_err();
        let err = err.to_string();
        assert!(
            err.starts_with("m.toml:3:35: containers.app.depends_on")
                && err.contains("unknown variant `service_healty`")
                && err.contains("`service_healthy`"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse("hostname = \"a\"\n[boot\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.toml:2:6: boot: "), "{text}");
    }
}
