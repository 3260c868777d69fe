//! The Ethernet layer in front of smoltcp (which runs on IP packets): what
//! a host's link layer does, without a neighbour cache of fixed size.
//!
//! - Received frames: ARP requests and IPv6 neighbour solicitations for the
//!   stack's own addresses are answered here (on AF_XDP the kernel answers
//!   them too, since the XDP filter passes them; on DPDK only this does);
//!   IP packets for the stack's addresses go up, with the Ethernet address
//!   they came from — the next hop back to their sender, be it the player
//!   or the router in front of it.
//! - Sent packets: every TCP segment goes to its flow's next hop (kept per
//!   connection, so thousands of players — and players behind routers — need
//!   no ARP at all and never expire); anything else (ICMP and UDP echo,
//!   resets for strays) to the next hop its sender last came through.
//!
//! A player whose next hop changes (the router fails over to another MAC)
//! is answered through the new one from its next frame on.
//!
//! Frames are read through smoltcp's checked wire types: nothing here
//! indexes packet bytes by hand, and no frame can make it panic.

use rustc_hash::FxHashMap;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet,
    Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr,
    RawHardwareAddress,
};

use super::FrameQueue;

/// Senders remembered for answers outside TCP flows; beyond this many the
/// memory starts over (a spoofed flood cannot grow it without bound).
const MAX_RECENT: usize = 65_536;

/// What came up from a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// An IP packet for one of the stack's addresses, and the Ethernet
    /// address it came from.
    Packet(EthernetAddress, &'a [u8]),
    /// An ARP request or neighbour solicitation, answered.
    Answered,
    /// Not for the stack (or malformed): dropped.
    Dropped,
}

/// The stack's link layer.
#[derive(Debug)]
pub struct Link {
    mac: EthernetAddress,
    addrs: Vec<IpAddress>,
    recent: FxHashMap<IpAddress, EthernetAddress>,
}

impl Link {
    /// Answering as `mac` for `addrs`.
    pub fn new(mac: [u8; 6], addrs: &[IpAddress]) -> Link {
        Link { mac: EthernetAddress(mac), addrs: addrs.to_vec(), recent: FxHashMap::default() }
    }

    fn ours(&self, addr: IpAddress) -> bool {
        self.addrs.contains(&addr)
    }

    /// Takes a received frame; answers ARP and neighbour solicitations into
    /// `tx`.
    pub fn receive<'a>(&mut self, frame: &'a [u8], tx: &mut FrameQueue) -> Received<'a> {
        let Ok(eth) = EthernetFrame::new_checked(frame) else { return Received::Dropped };
        let from = eth.src_addr();
        if !from.is_unicast() {
            return Received::Dropped;
        }
        let payload = &frame[EthernetFrame::<&[u8]>::header_len()..];
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(payload, tx),
            EthernetProtocol::Ipv4 => match Ipv4Packet::new_checked(payload) {
                Ok(ip) if self.ours(IpAddress::Ipv4(ip.dst_addr())) => {
                    Received::Packet(from, &payload[..usize::from(ip.total_len())])
                }
                _ => Received::Dropped,
            },
            EthernetProtocol::Ipv6 => match Ipv6Packet::new_checked(payload) {
                Ok(ip) => {
                    let len = ip.header_len() + usize::from(ip.payload_len());
                    if self.ours(IpAddress::Ipv6(ip.dst_addr())) {
                        Received::Packet(from, &payload[..len])
                    } else if ip.next_header() == IpProtocol::Icmpv6 && ip.dst_addr().is_multicast() {
                        self.solicitation(from, &payload[..len], tx)
                    } else {
                        Received::Dropped
                    }
                }
                Err(_) => Received::Dropped,
            },
            _ => Received::Dropped,
        }
    }

    /// An ARP request for one of our addresses gets our reply.
    fn arp(&mut self, payload: &[u8], tx: &mut FrameQueue) -> Received<'static> {
        let Ok(packet) = ArpPacket::new_checked(payload) else { return Received::Dropped };
        let Ok(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            return Received::Dropped;
        };
        if !self.ours(IpAddress::Ipv4(target_protocol_addr)) || !source_hardware_addr.is_unicast() {
            return Received::Dropped;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let frame = self.frame(tx, source_hardware_addr, EthernetProtocol::Arp, reply.buffer_len());
        reply.emit(&mut ArpPacket::new_unchecked(&mut frame[EthernetFrame::<&[u8]>::header_len()..]));
        Received::Answered
    }

    /// A neighbour solicitation for one of our addresses gets our
    /// advertisement.
    fn solicitation(&mut self, from: EthernetAddress, packet: &[u8], tx: &mut FrameQueue) -> Received<'static> {
        let Ok(ip) = Ipv6Packet::new_checked(packet) else { return Received::Dropped };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let Ok(icmp) = Icmpv6Packet::new_checked(ip.payload()) else { return Received::Dropped };
        let caps = ChecksumCapabilities::default();
        let Ok(Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. })) =
            Icmpv6Repr::parse(&src, &dst, &icmp, &caps)
        else {
            return Received::Dropped;
        };
        // From the unspecified address: duplicate address detection, not a
        // neighbour we will talk to.
        if !self.ours(IpAddress::Ipv6(target_addr)) || src.is_unspecified() {
            return Received::Dropped;
        }
        let advert = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
            target_addr,
            lladdr: Some(RawHardwareAddress::from(self.mac)),
        });
        let ip = Ipv6Repr {
            src_addr: target_addr,
            dst_addr: src,
            next_header: IpProtocol::Icmpv6,
            payload_len: advert.buffer_len(),
            hop_limit: 255,
        };
        let frame = self.frame(tx, from, EthernetProtocol::Ipv6, ip.buffer_len() + advert.buffer_len());
        let mut packet = Ipv6Packet::new_unchecked(&mut frame[EthernetFrame::<&[u8]>::header_len()..]);
        ip.emit(&mut packet);
        advert.emit(&target_addr, &src, &mut Icmpv6Packet::new_unchecked(packet.payload_mut()), &caps);
        Received::Answered
    }

    /// Remembers that `addr` was last heard through `next_hop` (for answers
    /// outside TCP flows).
    pub fn heard(&mut self, addr: IpAddress, next_hop: EthernetAddress) {
        if self.recent.len() >= MAX_RECENT && !self.recent.contains_key(&addr) {
            self.recent.clear();
        }
        self.recent.insert(addr, next_hop);
    }

    /// Where `addr` was last heard from.
    pub fn next_hop(&self, addr: IpAddress) -> Option<EthernetAddress> {
        self.recent.get(&addr).copied()
    }

    /// Sends an IP packet to `next_hop`.
    pub fn send(&self, packet: &[u8], next_hop: EthernetAddress, tx: &mut FrameQueue) {
        let ethertype =
            if packet.first().is_some_and(|b| b >> 4 == 6) { EthernetProtocol::Ipv6 } else { EthernetProtocol::Ipv4 };
        let frame = self.frame(tx, next_hop, ethertype, packet.len());
        frame[EthernetFrame::<&[u8]>::header_len()..].copy_from_slice(packet);
    }

    /// Sends an IP packet of `len` bytes that `write` writes in place, to
    /// `next_hop`; what `write` returned (`None` drops the frame).
    pub fn send_with<R>(
        &self,
        next_hop: EthernetAddress,
        ipv6: bool,
        len: usize,
        tx: &mut FrameQueue,
        write: impl FnOnce(&mut [u8]) -> Option<R>,
    ) -> Option<R> {
        let ethertype = if ipv6 { EthernetProtocol::Ipv6 } else { EthernetProtocol::Ipv4 };
        let frame = self.frame(tx, next_hop, ethertype, len);
        let r = write(&mut frame[EthernetFrame::<&[u8]>::header_len()..]);
        if r.is_none() {
            let dropped = tx.tx.pop_back();
            if let Some(buf) = dropped {
                tx.recycle(buf);
            }
        }
        r
    }

    /// A new frame in `tx` from us to `to`, with room for `payload_len`.
    fn frame<'t>(
        &self,
        tx: &'t mut FrameQueue,
        to: EthernetAddress,
        ethertype: EthernetProtocol,
        payload_len: usize,
    ) -> &'t mut [u8] {
        let frame = tx.push_tx(EthernetFrame::<&[u8]>::buffer_len(payload_len));
        EthernetRepr { src_addr: self.mac, dst_addr: to, ethertype }
            .emit(&mut EthernetFrame::new_unchecked(&mut *frame));
        frame
    }
}
