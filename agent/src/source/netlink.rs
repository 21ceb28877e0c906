//! This node's interface addresses, followed live: NodePorts must answer on
//! addresses added after the agent started (DHCP, cloud secondary IPs,
//! keepalived VIPs) and stop on those removed.
//!
//! The agent joins the kernel's address-change multicast groups (rtnetlink
//! `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`) in its own network namespace.
//! It does not parse the messages: any of them (or a lost one, ENOBUFS)
//! means "read the addresses again", which `getifaddrs` does completely.
//! Bursts are coalesced for [`SETTLE`], well inside the 1 s the issue allows.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};
use tokio::sync::mpsc;

use socklb_k8s::store::SourceEvent;

const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// Changes that arrive this close together are read as one.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Sends this node's addresses now, then again after every change, until
/// the receiver goes away. Without netlink (a sandbox that forbids it) the
/// addresses are polled every few seconds instead. The netlink socket is
/// read on a thread of its own (a blocking read costs nothing while
/// nothing changes).
pub async fn run(tx: mpsc::Sender<SourceEvent>) {
    let first = host_addresses();
    if tx.send(SourceEvent::HostAddresses(first.clone())).await.is_err() {
        return;
    }
    // A plain thread, not the runtime's blocking pool: it may sit in a
    // blocking read when the agent stops, and the runtime would wait for it.
    let spawned = std::thread::Builder::new().name("netlink".into()).spawn(move || follow(first, &tx));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot follow address changes");
    }
}

fn follow(mut last: Vec<IpAddr>, tx: &mpsc::Sender<SourceEvent>) {
    let socket = match subscribe() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow address changes over netlink; polling every 5 s");
            None
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match &socket {
            Some(fd) => {
                if recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).is_err() {
                    // ENOBUFS (messages were lost) or an interrupted read:
                    // either way, read the addresses again.
                    std::thread::sleep(SETTLE);
                }
                // Let a burst (an interface coming up with several
                // addresses) finish, and drain what it sent.
                std::thread::sleep(SETTLE);
                while recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).is_ok_and(|n| n > 0) {}
            }
            None => std::thread::sleep(Duration::from_secs(5)),
        }
        if tx.is_closed() {
            return;
        }
        let now = host_addresses();
        if now != last {
            tracing::info!(addresses = ?now, "this node's addresses changed");
            last = now.clone();
            if tx.blocking_send(SourceEvent::HostAddresses(now)).is_err() {
                return;
            }
        }
    }
}

fn subscribe() -> std::io::Result<OwnedFd> {
    let fd =
        socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
    Ok(fd)
}

/// Every address of this host's interfaces, without IPv6 link-local ones
/// (they need a scope id, which a NodePort frontend cannot carry).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|s| {
                    if let Some(v4) = s.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                })
                .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// This node's addresses (for the first render, before the task reports).
pub fn current() -> Vec<IpAddr> {
    host_addresses()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_a_loopback_address() {
        assert!(host_addresses().iter().any(IpAddr::is_loopback));
    }
}
