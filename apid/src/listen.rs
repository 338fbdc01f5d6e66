//! Listening sockets: an IPv6 wildcard listens for IPv6 only, so that `0.0.0.0:7443` and
//! `[::]:7443` (the default pair) can both be bound, whatever `net.ipv6.bindv6only` says.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};

const BACKLOG: i32 = 64;

pub fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let family = match address {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if address.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    nix::sys::socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(address),
    )?;
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
}
