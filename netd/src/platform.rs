//! The cloud platform a host runs on, as far as time is concerned: EC2 and Google Compute
//! Engine each serve NTP at a link-local address inside the instance's network, reachable
//! without a route to the internet and closer than any pool.
//!
//! The platform is read from DMI (SMBIOS), which the hypervisor, not a guest or a DHCP
//! server, writes; `berth.metadata=ec2` on the command line says EC2 where DMI does not (as it
//! does for init's metadata source).

use berth_manifest::{TimeServer, NTP_PORT};

const DMI_VENDOR: &str = "/sys/class/dmi/id/sys_vendor";
const DMI_PRODUCT: &str = "/sys/class/dmi/id/product_name";
const CMDLINE: &str = "/proc/cmdline";
/// The Amazon Time Sync Service, in every VPC.
pub const EC2_TIME_SERVER: &str = "169.254.169.123";
/// Google's metadata server, which also serves NTP.
pub const GCE_TIME_SERVER: &str = "169.254.169.254";

/// The platform's NTP server for the DMI `vendor` and `product` and the kernel `cmdline`.
pub fn time_server_for(vendor: &str, product: &str, cmdline: &str) -> Option<TimeServer> {
    let ec2 = vendor.trim() == "Amazon EC2"
        || cmdline
            .split_whitespace()
            .any(|p| p == "berth.metadata=ec2");
    let gce = product.trim() == "Google Compute Engine";
    let host = if ec2 {
        EC2_TIME_SERVER
    } else if gce {
        GCE_TIME_SERVER
    } else {
        return None;
    };
    Some(TimeServer {
        host: host.to_string(),
        port: NTP_PORT,
    })
}

/// This machine's platform NTP server, if it runs on a platform that has one.
pub fn time_server() -> Option<TimeServer> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    time_server_for(&read(DMI_VENDOR), &read(DMI_PRODUCT), &read(CMDLINE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_and_gce_have_their_servers_and_other_machines_none() {
        let host = |server: Option<TimeServer>| server.map(|s| s.host);
        assert_eq!(
            host(time_server_for("Amazon EC2\n", "m7g.large\n", "")),
            Some(EC2_TIME_SERVER.to_string())
        );
        assert_eq!(
            host(time_server_for(
                "QEMU\n",
                "Standard PC\n",
                "quiet berth.metadata=ec2"
            )),
            Some(EC2_TIME_SERVER.to_string())
        );
        assert_eq!(
            host(time_server_for("Google\n", "Google Compute Engine\n", "")),
            Some(GCE_TIME_SERVER.to_string())
        );
        assert_eq!(
            host(time_server_for("QEMU\n", "Standard PC\n", "quiet")),
            None
        );
        assert_eq!(host(time_server_for("", "", "berth.metadata=ec2x")), None);
    }
}
