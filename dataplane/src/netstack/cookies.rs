//! SYN cookies: once a port's backlog of half-open connections is full, a
//! SYN is answered statelessly — the SYN-ACK's sequence number is a keyed
//! hash of the flow, the player's initial sequence number, a 64-second time
//! slot and the MSS — so a flood from spoofed sources holds nothing, and a
//! player who completes the handshake proves its address and gets in.
//!
//! smoltcp chooses its own initial sequence numbers, so a connection that
//! came through a cookie is built behind its back: the stack hands smoltcp
//! the SYN the player sent (rebuilt: MSS only, as the cookie's SYN-ACK
//! offered), takes smoltcp's SYN-ACK away, and from then on shifts the
//! sequence numbers of that flow's segments by the difference between the
//! cookie and smoltcp's number, both ways, checksums recomputed.
//!
//! What a cookie connection gives up, as everywhere: window scaling, SACK
//! and timestamps (the SYN-ACK offers only an MSS, one of eight values).

use std::hash::BuildHasher;
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::ends;
use super::flows::FlowKey;

/// The MSS values a cookie can carry (3 bits).
const MSS: [u16; 8] = [536, 1024, 1220, 1300, 1360, 1400, 1440, 1460];

/// Seconds per time slot; a cookie is good in its slot and the next.
const SLOT_SECS: u64 = 64;

/// Issues and checks cookies with a key drawn at start.
#[derive(Debug)]
pub struct SynCookies {
    key: std::collections::hash_map::RandomState,
    epoch: Instant,
}

/// What a valid cookie gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The player's initial sequence number.
    pub client_isn: u32,
    /// The cookie (our initial sequence number as the player knows it).
    pub cookie: u32,
    /// The MSS the cookie carries.
    pub mss: u16,
}

impl SynCookies {
    /// A fresh key; time slots counted from `now`.
    pub fn new(now: Instant) -> SynCookies {
        SynCookies { key: std::collections::hash_map::RandomState::new(), epoch: now }
    }

    fn slot(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / SLOT_SECS
    }

    fn hash(&self, key: &FlowKey, client_isn: u32, slot: u64) -> u32 {
        (self.key.hash_one((key, client_isn, slot)) >> 32) as u32
    }

    /// The cookie for a SYN of `key` with `client_isn` and MSS option `mss`.
    pub fn make(&self, key: &FlowKey, client_isn: u32, mss: Option<u16>, now: Instant) -> (u32, u16) {
        let want = mss.unwrap_or(536);
        let index = MSS.iter().rposition(|&m| m <= want).unwrap_or(0);
        ((self.hash(key, client_isn, self.slot(now)) & !7) | index as u32, MSS[index])
    }

    /// Checks the ACK that completes a cookie handshake (`seq`, `ack` as
    /// received).
    pub fn check(&self, key: &FlowKey, seq: u32, ack: u32, now: Instant) -> Option<Accepted> {
        let (client_isn, cookie) = (seq.wrapping_sub(1), ack.wrapping_sub(1));
        let slot = self.slot(now);
        let index = (cookie & 7) as usize;
        [slot, slot.wrapping_sub(1)]
            .into_iter()
            .any(|s| self.hash(key, client_isn, s) & !7 == cookie & !7)
            .then_some(Accepted { client_isn, cookie, mss: MSS[index] })
    }
}

/// The TCP segment of an inbound packet that may complete a cookie
/// handshake: a bare ACK (no SYN, RST or FIN... data allowed); its `seq`,
/// `ack` and window.
pub fn completing_ack(packet: &[u8]) -> Option<(u32, u32, u16)> {
    let payload = ip_payload(packet)?;
    let tcp = TcpPacket::new_checked(payload).ok()?;
    (tcp.ack() && !tcp.syn() && !tcp.rst())
        .then(|| (tcp.seq_number().0 as u32, tcp.ack_number().0 as u32, tcp.window_len()))
}

/// The SYN's initial sequence number and MSS option.
pub fn syn_options(packet: &[u8]) -> Option<(u32, Option<u16>)> {
    let payload = ip_payload(packet)?;
    let tcp = TcpPacket::new_checked(payload).ok()?;
    let (src, dst) = ends(packet)?;
    let repr = TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::ignored()).ok()?;
    Some((repr.seq_number.0 as u32, repr.max_seg_size))
}

/// The SYN-ACK that carries `cookie` to the player.
pub fn syn_ack(key: &FlowKey, cookie: u32, client_isn: u32, mss: u16, window: u16) -> Vec<u8> {
    let ack = Some(TcpSeqNumber(client_isn.wrapping_add(1) as i32));
    ip_tcp_packet(key.local.0, key.remote.0, &handshake(key.local.1, key.remote.1, cookie, ack, mss, window))
}

/// The player's SYN as smoltcp is to see it: MSS only.
pub fn syn(key: &FlowKey, client_isn: u32, mss: u16, window: u16) -> Vec<u8> {
    ip_tcp_packet(key.remote.0, key.local.0, &handshake(key.remote.1, key.local.1, client_isn, None, mss, window))
}

/// A SYN (or SYN-ACK, with `ack`) offering only an MSS.
fn handshake(
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: Option<TcpSeqNumber>,
    mss: u16,
    window: u16,
) -> TcpRepr<'static> {
    TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack,
        window_len: window,
        window_scale: None,
        max_seg_size: Some(mss),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    }
}

/// The initial sequence number of smoltcp's SYN-ACK in `packet`, if it is one.
pub fn syn_ack_isn(packet: &[u8]) -> Option<u32> {
    let tcp = TcpPacket::new_checked(ip_payload(packet)?).ok()?;
    (tcp.syn() && tcp.ack()).then(|| tcp.seq_number().0 as u32)
}

/// Shifts a segment between smoltcp's numbers and the player's: adds
/// `seq_add` to its sequence number and subtracts `ack_sub` from its
/// acknowledgement number (if it has one), then recomputes the checksum.
pub fn shift(packet: &mut [u8], seq_add: u32, ack_sub: u32) {
    let Some((src, dst)) = ends(packet) else { return };
    let Some(offset) = ip_header_len(packet) else { return };
    let Ok(mut tcp) = TcpPacket::new_checked(&mut packet[offset..]) else { return };
    tcp.set_seq_number(TcpSeqNumber((tcp.seq_number().0 as u32).wrapping_add(seq_add) as i32));
    if tcp.ack() {
        tcp.set_ack_number(TcpSeqNumber((tcp.ack_number().0 as u32).wrapping_sub(ack_sub) as i32));
    }
    tcp.fill_checksum(&src, &dst);
}

/// An IP packet (of `src`'s family) carrying `tcp`, checksums filled in.
pub(crate) fn ip_tcp_packet(src: IpAddress, dst: IpAddress, tcp: &TcpRepr<'_>) -> Vec<u8> {
    if src.version() != dst.version() {
        return Vec::new();
    }
    let caps = ChecksumCapabilities::default();
    let ip = IpRepr::new(src, dst, IpProtocol::Tcp, tcp.buffer_len(), 64);
    let mut b = vec![0; ip.buffer_len()];
    let (header, payload) = b.split_at_mut(ip.header_len());
    ip.emit(header, &caps);
    tcp.emit(&mut TcpPacket::new_unchecked(payload), &src, &dst, &caps);
    b
}

fn ip_header_len(packet: &[u8]) -> Option<usize> {
    match packet.first()? >> 4 {
        4 => Ipv4Packet::new_checked(packet).ok().map(|p| usize::from(p.header_len())),
        6 => Ipv6Packet::new_checked(packet).ok().map(|p| p.header_len()),
        _ => None,
    }
}

fn ip_payload(packet: &[u8]) -> Option<&[u8]> {
    match packet.first()? >> 4 {
        4 => Ipv4Packet::new_checked(packet).ok().map(|p| p.payload()),
        6 => Ipv6Packet::new_checked(packet).ok().map(|p| p.payload()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use smoltcp::wire::Ipv4Address;

    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            remote: (IpAddress::Ipv4(Ipv4Address::new(10, 88, 1, 1)), 40_000),
            local: (IpAddress::Ipv4(Ipv4Address::new(10, 77, 0, 1)), 7000),
        }
    }

    #[test]
    fn a_cookie_checks_for_its_flow_and_two_slots_only() {
        let now = Instant::now();
        let c = SynCookies::new(now);
        let (cookie, mss) = c.make(&key(), 1000, Some(1460), now);
        assert_eq!(mss, 1460);
        let ok = c.check(&key(), 1001, cookie.wrapping_add(1), now + Duration::from_secs(100)).unwrap();
        assert_eq!(ok, Accepted { client_isn: 1000, cookie, mss: 1460 });
        // Another flow, another ISN, a wrong ACK, or too late: refused.
        let mut other = key();
        other.remote.1 += 1;
        assert!(c.check(&other, 1001, cookie.wrapping_add(1), now).is_none());
        assert!(c.check(&key(), 1002, cookie.wrapping_add(1), now).is_none());
        assert!(c.check(&key(), 1001, (cookie ^ 8).wrapping_add(1), now).is_none());
        assert!(c.check(&key(), 1001, cookie.wrapping_add(1), now + Duration::from_secs(2 * SLOT_SECS)).is_none());
        // A small or missing MSS is rounded down to a value the cookie holds.
        assert_eq!(c.make(&key(), 5, Some(1300), now).1, 1300);
        assert_eq!(c.make(&key(), 5, Some(1299), now).1, 1220);
        assert_eq!(c.make(&key(), 5, None, now).1, 536);
    }

    #[test]
    fn shifting_keeps_the_segment_valid() {
        let k = key();
        let mut p = syn_ack(&k, 77, 1000, 1460, 4096);
        assert_eq!(syn_ack_isn(&p), Some(77));
        shift(&mut p, 10, 0);
        assert_eq!(syn_ack_isn(&p), Some(87));
        let tcp = TcpPacket::new_checked(ip_payload(&p).unwrap()).unwrap();
        assert!(tcp.verify_checksum(&k.local.0, &k.remote.0));
        assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
        assert_eq!(syn_options(&syn(&k, 1000, 1220, 500)), Some((1000, Some(1220))));
    }
}
