//! Neighbours learnt from the frames that reach the stack.
//!
//! Where ARP and neighbour discovery stay with the kernel (the AF_XDP
//! backend: the XDP filter passes them, which keeps the host's own
//! networking intact), the stack learns a player's link-layer address from
//! the player's first frame instead, by feeding itself the ARP reply (IPv4)
//! or neighbour advertisement (IPv6) that frame implies. Refreshed every
//! 30 s, well inside smoltcp's cache lifetime.
//!
//! Frames are read through smoltcp's checked wire types: nothing here
//! indexes packet bytes by hand, and no frame can make it panic.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet,
    Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr,
    RawHardwareAddress,
};

use super::FrameQueue;

/// How long a learnt neighbour is not taught again.
const REFRESH: Duration = Duration::from_secs(30);

/// Neighbours remembered at most; beyond, the memory starts over.
const MAX_NEIGHBORS: usize = 65_536;

/// The neighbours a stack has been taught, and the frame it teaches with.
#[derive(Debug)]
pub struct Neighbors {
    mac: EthernetAddress,
    seen: FxHashMap<IpAddress, (EthernetAddress, Instant)>,
    frame: Vec<u8>,
}

impl Neighbors {
    /// For a stack whose link-layer address is `mac`.
    pub fn new(mac: [u8; 6]) -> Neighbors {
        Neighbors { mac: EthernetAddress(mac), seen: FxHashMap::default(), frame: Vec::with_capacity(86) }
    }

    /// Looks at a received frame: if its sender is new (or last taught more
    /// than 30 s ago), queues into `dev` the ARP reply or neighbour
    /// advertisement that tells the stack the sender's link-layer address.
    /// Returns whether it did.
    pub fn learn(&mut self, frame: &[u8], now: Instant, dev: &mut FrameQueue) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(frame) else { return false };
        let their_mac = eth.src_addr();
        if !their_mac.is_unicast() {
            return false;
        }
        let (src, dst) = match eth.ethertype() {
            EthernetProtocol::Ipv4 => match Ipv4Packet::new_checked(eth.payload()) {
                Ok(ip) => (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr())),
                Err(_) => return false,
            },
            EthernetProtocol::Ipv6 => match Ipv6Packet::new_checked(eth.payload()) {
                Ok(ip) => (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr())),
                Err(_) => return false,
            },
            _ => return false,
        };
        if !src.is_unicast() || !dst.is_unicast() {
            return false;
        }
        if self.seen.get(&src).is_some_and(|(m, at)| *m == their_mac && now.saturating_duration_since(*at) < REFRESH) {
            return false;
        }
        if self.seen.len() >= MAX_NEIGHBORS {
            self.seen.clear();
        }
        self.seen.insert(src, (their_mac, now));
        match (src, dst) {
            (IpAddress::Ipv4(src), IpAddress::Ipv4(dst)) => {
                // ARP reply: they (their MAC, their address) tell us (our address).
                let arp = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: their_mac,
                    source_protocol_addr: src,
                    target_hardware_addr: self.mac,
                    target_protocol_addr: dst,
                };
                let f = self.ethernet(their_mac, EthernetProtocol::Arp, arp.buffer_len());
                arp.emit(&mut ArpPacket::new_unchecked(&mut f[EthernetFrame::<&[u8]>::header_len()..]));
            }
            (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) => {
                // Neighbour advertisement (solicited, override) for their
                // address, with their link-layer address as option.
                let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                    flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
                    target_addr: src,
                    lladdr: Some(RawHardwareAddress::from(their_mac)),
                });
                let ip = Ipv6Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: IpProtocol::Icmpv6,
                    payload_len: icmp.buffer_len(),
                    hop_limit: 255,
                };
                let f = self.ethernet(their_mac, EthernetProtocol::Ipv6, ip.buffer_len() + icmp.buffer_len());
                let mut packet = Ipv6Packet::new_unchecked(&mut f[EthernetFrame::<&[u8]>::header_len()..]);
                ip.emit(&mut packet);
                let mut payload = Icmpv6Packet::new_unchecked(packet.payload_mut());
                icmp.emit(&src, &dst, &mut payload, &ChecksumCapabilities::default());
            }
            _ => return false,
        }
        dev.push_rx(&self.frame);
        true
    }

    /// The teaching frame's buffer, sized for `payload_len` after an
    /// Ethernet header from `from` to us.
    fn ethernet(&mut self, from: EthernetAddress, ethertype: EthernetProtocol, payload_len: usize) -> &mut [u8] {
        self.frame.clear();
        self.frame.resize(EthernetFrame::<&[u8]>::buffer_len(payload_len), 0);
        EthernetRepr { src_addr: from, dst_addr: self.mac, ethertype }
            .emit(&mut EthernetFrame::new_unchecked(&mut self.frame[..]));
        &mut self.frame
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use smoltcp::wire::Ipv4Repr;

    use super::*;

    const US: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const THEM: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// An Ethernet frame from THEM to US carrying an IP header and 20 zero bytes.
    fn frame_v4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let ip =
            Ipv4Repr { src_addr: src, dst_addr: dst, next_header: IpProtocol::Tcp, payload_len: 20, hop_limit: 64 };
        let mut f = vec![0; EthernetFrame::<&[u8]>::buffer_len(ip.buffer_len() + 20)];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        EthernetRepr {
            src_addr: EthernetAddress(THEM),
            dst_addr: EthernetAddress(US),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        ip.emit(&mut Ipv4Packet::new_unchecked(eth.payload_mut()), &ChecksumCapabilities::default());
        f
    }

    fn frame_v6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let ip =
            Ipv6Repr { src_addr: src, dst_addr: dst, next_header: IpProtocol::Tcp, payload_len: 20, hop_limit: 64 };
        let mut f = vec![0; EthernetFrame::<&[u8]>::buffer_len(ip.buffer_len() + 20)];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        EthernetRepr {
            src_addr: EthernetAddress(THEM),
            dst_addr: EthernetAddress(US),
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut eth);
        ip.emit(&mut Ipv6Packet::new_unchecked(eth.payload_mut()));
        f
    }

    #[test]
    fn an_ipv4_sender_becomes_an_arp_reply() {
        let (mut n, mut dev, now) = (Neighbors::new(US), FrameQueue::default(), Instant::now());
        let (them, us) = (Ipv4Addr::new(10, 77, 0, 20), Ipv4Addr::new(10, 77, 0, 1));
        assert!(n.learn(&frame_v4(them, us), now, &mut dev));
        let reply = dev.rx.pop_front().expect("a taught frame");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(
            (eth.src_addr(), eth.dst_addr(), eth.ethertype()),
            (EthernetAddress(THEM), EthernetAddress(US), EthernetProtocol::Arp)
        );
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(THEM),
                source_protocol_addr: them,
                target_hardware_addr: EthernetAddress(US),
                target_protocol_addr: us,
            }
        );
        // Taught once per refresh interval, then again.
        assert!(!n.learn(&frame_v4(them, us), now + Duration::from_secs(1), &mut dev));
        assert!(n.learn(&frame_v4(them, us), now + REFRESH, &mut dev));
    }

    #[test]
    fn an_ipv6_sender_becomes_a_neighbor_advertisement_with_a_valid_checksum() {
        let (mut n, mut dev, now) = (Neighbors::new(US), FrameQueue::default(), Instant::now());
        let them: Ipv6Addr = "fd77::20".parse().unwrap();
        let us: Ipv6Addr = "fd77::1".parse().unwrap();
        assert!(n.learn(&frame_v6(them, us), now, &mut dev));
        let advert = dev.rx.pop_front().expect("a taught frame");
        let eth = EthernetFrame::new_checked(&advert[..]).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr(), ip.hop_limit()), (them, us, 255));
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&them, &us), "checksum");
        let repr = Icmpv6Repr::parse(&them, &us, &icmp, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(
            repr,
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
                target_addr: them,
                lladdr: Some(RawHardwareAddress::from(EthernetAddress(THEM))),
            })
        );
    }

    #[test]
    fn truncated_broadcast_and_foreign_frames_teach_nothing() {
        let (mut n, mut dev, now) = (Neighbors::new(US), FrameQueue::default(), Instant::now());
        let good = frame_v4(Ipv4Addr::new(10, 77, 0, 20), Ipv4Addr::new(10, 77, 0, 1));
        for len in 0..good.len() - 20 {
            assert!(!n.learn(&good[..len], now, &mut dev), "truncated to {len}");
        }
        let broadcast_source = frame_v4(Ipv4Addr::BROADCAST, Ipv4Addr::new(10, 77, 0, 1));
        assert!(!n.learn(&broadcast_source, now, &mut dev));
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!n.learn(&arp, now, &mut dev));
        assert!(dev.rx.is_empty());
    }
}
