//! A network namespace on the test machine wired to a guest by tap devices: a bridge with an
//! address, the taps QEMU opens (`-netdev tap,ifname=tapN`), and a real DHCP server (Debian's
//! `dnsmasq`) on the bridge. Everything is removed when the rig is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The bridge's address: the guest's router, DHCP server and ping target.
pub const BRIDGE_ADDR: &str = "192.168.77.1";

#[derive(Debug)]
pub struct NetRig {
    name: String,
    dir: PathBuf,
    dnsmasq: Option<Child>,
}

fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("{command:?}: {e} (scripts/setup installs iproute2 and dnsmasq)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl NetRig {
    /// A namespace named after `test` with `taps` taps in one bridge at 192.168.77.1/24.
    pub fn new(test: &str, taps: usize, dir: &Path) -> Result<NetRig, String> {
        let name = format!("berth-{test}-{}", std::process::id());
        // A namespace left by a killed run of the same test would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let rig = NetRig {
            name,
            dir: dir.to_path_buf(),
            dnsmasq: None,
        };
        rig.ip(&["link", "set", "lo", "up"])?;
        rig.ip(&["link", "add", "br0", "type", "bridge"])?;
        rig.ip(&["addr", "add", &format!("{BRIDGE_ADDR}/24"), "dev", "br0"])?;
        rig.ip(&["link", "set", "br0", "up"])?;
        for tap in 0..taps {
            let tap = format!("tap{tap}");
            rig.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            rig.ip(&["link", "set", &tap, "master", "br0"])?;
            rig.ip(&["link", "set", &tap, "up"])?;
        }
        Ok(rig)
    }

    /// The namespace's file, for [`berth_qemu::MachineConfig::netns`].
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Builds `manifest` for x86_64 and boots it with one NIC, `mac`, on tap0 (no user
    /// networking); waits for the ready line.
    pub fn boot(&self, manifest: &str, dir: &Path, mac: &str) -> berth_qemu::Machine {
        let arch = berth_arch::Arch::X86_64;
        let image = crate::build_image(arch, manifest, dir).unwrap_or_else(|e| panic!("{e}"));
        let mut config = crate::machine_config(arch, &image, dir);
        config.user_net = false;
        config.netns = Some(self.path());
        config.extra_args.extend(NetRig::nic_args(0, mac));
        crate::start_to_ready(&config)
    }

    /// QEMU arguments for a virtio NIC on tap `n` with `mac`.
    pub fn nic_args(n: usize, mac: &str) -> Vec<String> {
        vec![
            "-netdev".to_string(),
            format!("tap,id=n{n},ifname=tap{n},script=no,downscript=no"),
            "-device".to_string(),
            format!("virtio-net-pci,netdev=n{n},mac={mac},romfile="),
        ]
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, "ip"])
            .args(args))
    }

    /// Whether `addr` answers a ping from the namespace (busybox's, which setup installs).
    pub fn ping(&self, addr: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "busybox", "ping", "-c", "1"])
            .args(["-W", "2", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Pings `addr` until it answers or `within` passes (the first ARP exchange after an
    /// address changes may be lost).
    pub fn answers_within(&self, addr: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.ping(addr) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    }

    /// Starts dnsmasq as the DHCP server on the bridge, with `options` added (ranges, lease
    /// times, DHCP options). Its log is `dnsmasq.log` in the test's evidence directory.
    pub fn start_dnsmasq(&mut self, options: &[&str]) -> Result<(), String> {
        self.stop_dnsmasq();
        let leases = self.dir.join("dnsmasq.leases");
        let log = self.dir.join("dnsmasq.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--port=0",
                "--interface=br0",
                "--bind-interfaces",
                "--dhcp-authoritative",
                "--log-dhcp",
                "--user=root",
                "--group=root",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("dnsmasq.pid").display()
            ))
            .args(options)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("dnsmasq: {e} (scripts/setup installs dnsmasq-base)"))?;
        self.dnsmasq = Some(child);
        // dnsmasq binds its socket within milliseconds; a DISCOVER sent before that is simply
        // sent again by the client.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Stops dnsmasq and forgets every lease it granted, as a server that lost its state.
    pub fn stop_dnsmasq(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("dnsmasq.leases"));
    }

    /// dnsmasq's log so far.
    pub fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for NetRig {
    fn drop(&mut self) {
        self.stop_dnsmasq();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
