//! TCP flows: the 4-tuple of an IP packet, read through smoltcp's checked
//! wire types, and the flow table that sends every segment of a connection
//! to the shard that owns it in O(1), with the next hop it came through.

use smoltcp::wire::{EthernetAddress, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};

/// A TCP connection's addresses, seen from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The player's address and port.
    pub remote: (IpAddress, u16),
    /// The gateway's address and port.
    pub local: (IpAddress, u16),
}

/// What the demultiplexer needs of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its flow.
    pub key: FlowKey,
    /// SYN set, ACK not: a connection attempt.
    pub opens: bool,
}

/// Where a flow lives.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// Index of the shard that owns its socket.
    pub shard: u32,
    /// The Ethernet address its last frame came from: the player's, or the
    /// router's in front of it. Answers go there.
    pub next_hop: EthernetAddress,
    /// For a connection that came through a SYN cookie: the cookie minus
    /// smoltcp's initial sequence number (0 otherwise).
    pub seq_offset: u32,
}

/// The TCP segment in an IP packet, if it is one (IPv4 not fragmented, or
/// IPv6 without extension headers). `inbound`: the packet comes from the
/// player (source = remote), else it goes to the player.
pub fn segment(packet: &[u8], inbound: bool) -> Option<Segment> {
    let (src, dst, payload) = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()), ip.payload())
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()), ip.payload())
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(payload).ok()?;
    let (s, d) = ((src, tcp.src_port()), (dst, tcp.dst_port()));
    let key = if inbound { FlowKey { remote: s, local: d } } else { FlowKey { remote: d, local: s } };
    Some(Segment { key, opens: tcp.syn() && !tcp.ack() })
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{Ipv4Address, Ipv6Address, TcpControl, TcpRepr, TcpSeqNumber};

    use super::*;
    use crate::netstack::cookies::ip_tcp_packet;

    fn tcp(control: TcpControl, ack: Option<u32>) -> TcpRepr<'static> {
        TcpRepr {
            src_port: 40_000,
            dst_port: 7000,
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        }
    }

    fn v4(t: &TcpRepr<'_>) -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(10, 88, 1, 1), Ipv4Address::new(10, 77, 0, 1));
        ip_tcp_packet(src.into(), dst.into(), t)
    }

    #[test]
    fn segments_name_their_flow_both_ways() {
        let syn = segment(&v4(&tcp(TcpControl::Syn, None)), true).unwrap();
        let remote = (IpAddress::Ipv4(Ipv4Address::new(10, 88, 1, 1)), 40_000);
        let local = (IpAddress::Ipv4(Ipv4Address::new(10, 77, 0, 1)), 7000);
        assert_eq!(syn, Segment { key: FlowKey { remote, local }, opens: true });
        let ack = segment(&v4(&tcp(TcpControl::None, Some(5))), true).unwrap();
        assert!(!ack.opens, "an ACK opens nothing");
        // The same packet read as outbound swaps the ends.
        assert_eq!(
            segment(&v4(&tcp(TcpControl::None, Some(5))), false).unwrap().key,
            FlowKey { remote: local, local: remote }
        );
        let syn_ack = segment(&v4(&tcp(TcpControl::Syn, Some(5))), true).unwrap();
        assert!(!syn_ack.opens);
    }

    #[test]
    fn ipv6_and_garbage() {
        let t = tcp(TcpControl::Syn, None);
        let (src, dst): (Ipv6Address, Ipv6Address) = ("fd88::1:1".parse().unwrap(), "fd77::1".parse().unwrap());
        let b = ip_tcp_packet(src.into(), dst.into(), &t);
        assert_eq!(segment(&b, true).unwrap().key.remote, (IpAddress::Ipv6(src), 40_000));
        for len in 0..b.len() {
            assert_eq!(segment(&b[..len], true), None, "truncated to {len}");
        }
        assert_eq!(segment(&[0x45; 60], true), None);
    }
}
