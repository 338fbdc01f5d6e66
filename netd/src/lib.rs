//! netd: the host's network, through netlink only (no `ip`, no shell).
//!
//! This first version brings `lo` up with 127.0.0.1/8 and ::1, and runs a DHCPv4 client on
//! every Ethernet link: the default the manifest's `[network]` section will override. Each
//! change is an event line on stdout, which init passes to the console.

pub mod dhcp;
mod lease;
mod netlink;
mod resolv;

use std::process::ExitCode;

use berth_event::Event;

pub use lease::Lease;

/// Writes one event line.
pub(crate) fn emit(event: Event) {
    println!("{}", event.finish());
}

pub fn run() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("netd: cannot start its runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netd: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), netlink::NetlinkError> {
    let netlink = netlink::Netlink::connect()?;
    netlink.loopback_up().await?;
    emit(
        Event::new("link-up")
            .field("iface", "lo")
            .field("addr", "127.0.0.1/8,::1/128"),
    );
    // Before any lease: SIGTERM (init's shutdown) must find the handler in place.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(netlink::NetlinkError::Signal)?;
    let leases: dhcp::Leases = std::sync::Arc::default();
    let mut clients = Vec::new();
    for link in netlink.ethernet_links().await? {
        netlink.set_up(link.index).await?;
        let client = dhcp::Client::new(link, netlink.clone(), std::sync::Arc::clone(&leases));
        clients.push(tokio::spawn(client.run()));
    }
    terminate.recv().await;
    for client in &clients {
        client.abort();
    }
    // The addresses stay in the kernel until the host goes; the servers learn now.
    dhcp::release_all(&leases).await;
    Ok(())
}
