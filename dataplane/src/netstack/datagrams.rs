//! UDP datagrams of the UDP listeners (QUIC, KCP) straight from the frames:
//! no socket, no buffer of smoltcp's — the stack takes each datagram to a
//! UDP listener port out of the frame path, and builds the IP and UDP
//! headers of what the transports send.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr};

/// A datagram that arrived for a UDP listener.
#[derive(Debug)]
pub struct Datagram {
    /// Index of the listener in the config.
    pub listener: usize,
    /// The address it was sent to.
    pub local: SocketAddr,
    /// Its sender.
    pub from: SocketAddr,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The UDP datagram `packet` (an IP packet) carries for one of `ports`
/// (port → listener index): `(listener, local, from, payload)`.
pub(crate) fn parse<'p>(
    packet: &'p [u8],
    ports: &[(u16, usize)],
    verify_checksums: bool,
) -> Option<(usize, SocketAddr, SocketAddr, &'p [u8])> {
    let (src, dst, udp): (IpAddress, IpAddress, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Udp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let header = usize::from(ip.header_len());
            (ip.src_addr().into(), ip.dst_addr().into(), &packet[header..usize::from(ip.total_len())])
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Udp {
                return None;
            }
            let header = ip.header_len();
            (ip.src_addr().into(), ip.dst_addr().into(), &packet[header..header + usize::from(ip.payload_len())])
        }
        _ => return None,
    };
    let datagram = UdpPacket::new_checked(udp).ok()?;
    let &(port, listener) = ports.iter().find(|(p, _)| *p == datagram.dst_port())?;
    if verify_checksums && !datagram.verify_checksum(&src, &dst) {
        return None;
    }
    let payload = &udp[8..usize::from(datagram.len())];
    Some((listener, SocketAddr::new(ip(dst), port), SocketAddr::new(ip(src), datagram.src_port()), payload))
}

fn ip(a: IpAddress) -> IpAddr {
    a.into()
}

/// Length of the IP packet that carries `payload` from `local` to `to`.
pub(crate) fn packet_len(local: SocketAddr, payload: usize) -> usize {
    let ip = if local.is_ipv4() { 20 } else { 40 };
    ip + 8 + payload
}

/// Writes the IP packet carrying `payload` from `local` to `to` into `buf`
/// ([`packet_len`] bytes). `None` if the two addresses are not of one family.
pub(crate) fn emit(buf: &mut [u8], local: SocketAddr, to: SocketAddr, payload: &[u8]) -> Option<()> {
    let caps = ChecksumCapabilities::default();
    let udp = UdpRepr { src_port: local.port(), dst_port: to.port() };
    let (src, dst): (IpAddress, IpAddress) = (local.ip().into(), to.ip().into());
    let body = match (src, dst) {
        (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
            let repr = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: 8 + payload.len(),
                hop_limit: 64,
            };
            let mut ip = Ipv4Packet::new_unchecked(&mut *buf);
            repr.emit(&mut ip, &caps);
            20
        }
        (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
            let repr = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: 8 + payload.len(),
                hop_limit: 64,
            };
            let mut ip = Ipv6Packet::new_unchecked(&mut *buf);
            repr.emit(&mut ip);
            40
        }
        _ => return None,
    };
    let mut packet = UdpPacket::new_unchecked(&mut buf[body..]);
    udp.emit(&mut packet, &src, &dst, payload.len(), |p| p.copy_from_slice(payload), &caps);
    Some(())
}
