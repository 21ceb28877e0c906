//! Just enough of NETLINK_SOCK_DIAG to find the sockets socklb translated
//! and destroy them: a dump of TCP and UDP sockets that also returns each
//! socket's storage (`SOCK_TCP`, and the `SOCK_STATE` of layouts 1-3;
//! INET_DIAG_REQ_SK_BPF_STORAGES), and
//! `SOCK_DESTROY` (CONFIG_INET_DIAG_DESTROY) for one socket.
//!
//! Written out here because the netlink crates do not model SOCK_DESTROY
//! requests nor the BPF-storage request attribute. Layouts follow
//! include/uapi/linux/{netlink,inet_diag,sock_diag}.h; the sockets are read
//! in the network namespace of the calling thread.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use socklb_common::RevNat;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
const SK_DIAG_BPF_STORAGE: u16 = 1;
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NLMSG_HDR: usize = 16;
const REQ_V2: usize = 56;
const DIAG_MSG: usize = 72;

/// `struct inet_diag_sockid`, as the kernel reports it (big-endian ports and
/// addresses kept as raw bytes so a destroy request can echo them exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockId {
    pub raw: [u8; 48],
}

impl SockId {
    fn port(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.raw[at], self.raw[at + 1]])
    }

    fn addr(&self, family: u8, at: usize) -> IpAddr {
        let b = &self.raw[at..at + 16];
        if family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            let v6 = Ipv6Addr::from(a);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
    }
}

/// One socket from a dump.
#[derive(Clone, Debug)]
pub struct DiagSocket {
    pub family: u8,
    pub protocol: u8,
    pub state: u8,
    pub id: SockId,
    /// The reverse translations in its socket storage (`SOCK_TCP`, and the
    /// `SOCK_STATE` of layouts 1-3), when it has any.
    pub storage: Vec<RevNat>,
}

impl DiagSocket {
    /// The kernel's socket cookie (as `bpf_get_socket_cookie` returns it).
    pub fn cookie(&self) -> u64 {
        let w = |at: usize| {
            u64::from(u32::from_ne_bytes([
                self.id.raw[at],
                self.id.raw[at + 1],
                self.id.raw[at + 2],
                self.id.raw[at + 3],
            ]))
        };
        w(40) | (w(44) << 32)
    }

    /// The peer, with v4-mapped addresses shown as IPv4.
    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.id.addr(self.family, 20), self.id.port(2))
    }
}

fn push_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_ne_bytes());
}

fn push_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_ne_bytes());
}

/// A netlink message: header, `struct inet_diag_req_v2`, attributes.
fn request(
    msg_type: u16,
    flags: u16,
    family: u8,
    protocol: u8,
    states: u32,
    id: &SockId,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDR + REQ_V2 + attrs.len();
    let mut b = Vec::with_capacity(len);
    push_u32(&mut b, len as u32);
    push_u16(&mut b, msg_type);
    push_u16(&mut b, flags);
    push_u32(&mut b, 1); // sequence
    push_u32(&mut b, 0); // port id: the kernel
    b.extend_from_slice(&[family, protocol, 0, 0]);
    push_u32(&mut b, states);
    b.extend_from_slice(&id.raw);
    b.extend_from_slice(attrs);
    b
}

/// The nested attribute asking for these maps' socket storage.
fn storage_request(map_fds: &[RawFd]) -> Vec<u8> {
    let mut inner = Vec::new();
    for fd in map_fds {
        push_u16(&mut inner, 8);
        push_u16(&mut inner, SK_DIAG_BPF_STORAGE_REQ_MAP_FD);
        push_u32(&mut inner, *fd as u32);
    }
    let mut outer = Vec::new();
    push_u16(&mut outer, (4 + inner.len()) as u16);
    push_u16(&mut outer, INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED);
    outer.extend_from_slice(&inner);
    outer
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Iterates netlink attributes (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let ty = u16_at(b, 2)? & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

/// Decodes a storage value: one [`RevNat`] (`SOCK_TCP`), or the four of a
/// layout 1-3 `SOCK_STATE`.
pub fn decode_storage(v: &[u8]) -> Vec<RevNat> {
    let count = match v.len() {
        48 => 1,
        200 => 4,
        _ => 0,
    };
    let mut out = Vec::new();
    for i in 0..count {
        let Some(b) = v.get(i * 48..i * 48 + 48) else { break };
        let word = |at: usize| u32_at(b, at).unwrap_or(0);
        let half = |at: usize| u16_at(b, at).unwrap_or(0);
        out.push(RevNat {
            vip: [word(0), word(4), word(8), word(12)],
            backend: [word(16), word(20), word(24), word(28)],
            vip_port: half(32),
            backend_port: half(34),
            set_id: word(36),
            slot: word(40),
            proto: b[44],
            valid: b[45],
            _pad: 0,
        });
    }
    out
}

fn parse_diag(payload: &[u8]) -> Option<DiagSocket> {
    let family = *payload.first()?;
    let state = *payload.get(1)?;
    let mut raw = [0u8; 48];
    raw.copy_from_slice(payload.get(4..52)?);
    let mut storage = Vec::new();
    for (ty, body) in attrs(payload.get(DIAG_MSG..)?) {
        if ty != INET_DIAG_SK_BPF_STORAGES {
            continue;
        }
        for (ty, one) in attrs(body) {
            if ty != SK_DIAG_BPF_STORAGE {
                continue;
            }
            for (ty, value) in attrs(one) {
                if ty == SK_DIAG_BPF_STORAGE_MAP_VALUE {
                    storage.extend(decode_storage(value));
                }
            }
        }
    }
    Some(DiagSocket { family, protocol: 0, state, id: SockId { raw }, storage })
}

fn open() -> io::Result<OwnedFd> {
    socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkSockDiag)
        .map_err(io::Error::from)
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    sendto(fd.as_raw_fd(), msg, &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .map(|_| ())
        .map_err(io::Error::from)
}

/// TCP states worth aborting: a connect in progress and an open
/// connection. Not LISTEN (never translated), not TIME_WAIT or CLOSE
/// (nothing left), and not the closing states: in CLOSE_WAIT the backend has
/// already answered and closed, and aborting would only throw away a reply
/// the application has not read yet.
const TCP_LIVE_STATES: u32 = (1 << 1) // ESTABLISHED
    | (1 << 2); // SYN_SENT
/// UDP: only connected sockets keep a translation (state ESTABLISHED).
const UDP_CONNECTED_STATE: u32 = 1 << 1;

/// Walks the live sockets of one family and protocol (see
/// [`TCP_LIVE_STATES`]), with the storage of the map behind `map_fd`,
/// handing each to `visit` as it is parsed: memory stays flat however many
/// sockets the namespace holds.
pub fn dump(
    family: u8,
    protocol: u8,
    map_fds: &[std::os::fd::BorrowedFd<'_>],
    mut visit: impl FnMut(DiagSocket),
) -> io::Result<()> {
    let fd = open()?;
    let states = if protocol == 17 { UDP_CONNECTED_STATE } else { TCP_LIVE_STATES };
    let msg = request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        protocol,
        states,
        &SockId { raw: [0; 48] },
        &storage_request(&map_fds.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>()),
    );
    send(&fd, &msg)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
        let mut rest = &buf[..n];
        while rest.len() >= NLMSG_HDR {
            let len = u32_at(rest, 0).unwrap_or(0) as usize;
            let ty = u16_at(rest, 4).unwrap_or(0);
            if len < NLMSG_HDR || len > rest.len() {
                break;
            }
            let payload = &rest[NLMSG_HDR..len];
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = u32_at(payload, 0).map_or(0, |c| c as i32);
                    return Err(io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(mut s) = parse_diag(payload) {
                        s.protocol = protocol;
                        visit(s);
                    }
                }
                _ => {}
            }
            rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        }
    }
}

/// Destroys one socket found by [`dump`] (the kernel aborts it: TCP sends a
/// reset, and the owner's next call fails with ECONNABORTED).
pub fn destroy(s: &DiagSocket) -> io::Result<()> {
    let fd = open()?;
    let msg = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, s.family, s.protocol, u32::MAX, &s.id, &[]);
    send(&fd, &msg)?;
    let mut buf = vec![0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
    if n >= NLMSG_HDR + 4 && u16_at(&buf, 4) == Some(NLMSG_ERROR) {
        let code = u32_at(&buf, NLMSG_HDR).map_or(0, |c| c as i32);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

pub const FAMILIES: [u8; 2] = [AF_INET, AF_INET6];

/// Asks to destroy a TCP socket that cannot exist. Ok when the kernel
/// supports SOCK_DESTROY (it answers "no such socket").
pub fn destroy_probe() -> io::Result<()> {
    let mut raw = [0u8; 48];
    raw[0..2].copy_from_slice(&1u16.to_be_bytes());
    raw[2..4].copy_from_slice(&1u16.to_be_bytes());
    let probe =
        DiagSocket { family: AF_INET, protocol: 6, state: 0, id: SockId { raw }, storage: Vec::new() };
    match destroy(&probe) {
        Err(e) if e.raw_os_error() == Some(2) => Ok(()),
        Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_request_has_the_kernel_layout() {
        let msg = request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            AF_INET,
            6,
            0xff,
            &SockId { raw: [0; 48] },
            &storage_request(&[7]),
        );
        assert_eq!(msg.len(), 16 + 56 + 12);
        assert_eq!(u32_at(&msg, 0), Some(84));
        assert_eq!(u16_at(&msg, 4), Some(20));
        assert_eq!(u16_at(&msg, 6), Some(0x301));
        assert_eq!(&msg[16..20], &[AF_INET, 6, 0, 0]);
        // The nested storage request: outer header, inner header, the fd.
        assert_eq!(u16_at(&msg, 72), Some(12));
        assert_eq!(u16_at(&msg, 74), Some(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED));
        assert_eq!(u16_at(&msg, 78), Some(SK_DIAG_BPF_STORAGE_REQ_MAP_FD));
        assert_eq!(u32_at(&msg, 80), Some(7));
    }

    #[test]
    fn a_reply_with_storage_decodes() {
        let mut diag = vec![AF_INET, 1, 0, 0];
        let mut id = [0u8; 48];
        id[0..2].copy_from_slice(&40000u16.to_be_bytes());
        id[2..4].copy_from_slice(&8080u16.to_be_bytes());
        id[20..24].copy_from_slice(&[10, 244, 0, 1]);
        diag.extend_from_slice(&id);
        diag.resize(DIAG_MSG, 0);
        let mut state = vec![0u8; 200];
        state[36..40].copy_from_slice(&7u32.to_ne_bytes());
        state[45] = 1;
        let mut value = Vec::new();
        push_u16(&mut value, (4 + state.len()) as u16);
        push_u16(&mut value, SK_DIAG_BPF_STORAGE_MAP_VALUE);
        value.extend_from_slice(&state);
        let mut one = Vec::new();
        push_u16(&mut one, (4 + value.len()) as u16);
        push_u16(&mut one, SK_DIAG_BPF_STORAGE | NLA_F_NESTED);
        one.extend_from_slice(&value);
        push_u16(&mut diag, (4 + one.len()) as u16);
        push_u16(&mut diag, INET_DIAG_SK_BPF_STORAGES | NLA_F_NESTED);
        diag.extend_from_slice(&one);

        let s = parse_diag(&diag).expect("parses");
        assert_eq!(s.peer(), "10.244.0.1:8080".parse().expect("addr"));
        assert_eq!(s.storage.len(), 4, "a layout 1-3 SOCK_STATE holds four entries");
        assert_eq!(s.storage[0].set_id, 7);
        assert_eq!(s.storage[0].valid, 1);
        assert_eq!(decode_storage(&[0u8; 48]).len(), 1, "a SOCK_TCP value is one entry");
        assert!(decode_storage(&[0u8; 17]).is_empty());
    }
}
