//! Ethernet frames built by hand, with correct checksums: the seeds of the
//! `netstack` and `xdp` targets, and the checksum fix-up of the `netstack`
//! harness. Only what the seeds need: ARP, IPv4/IPv6 (optionally behind
//! VLAN tags), TCP, UDP, ICMPv4/ICMPv6 echo and neighbour solicitation.

/// MAC address of the gateway in the harnesses.
pub const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// MAC address of the player in the seeds.
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// The gateway's IPv4 address.
pub const GW4: [u8; 4] = [10, 77, 0, 1];
/// The player's IPv4 address.
pub const CLIENT4: [u8; 4] = [10, 77, 0, 2];
/// The gateway's IPv6 address (fd77::1).
pub const GW6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The player's IPv6 address (fd77::2).
pub const CLIENT6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// IP protocol numbers.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// ICMPv4.
pub const ICMP4: u8 = 1;
/// ICMPv6.
pub const ICMP6: u8 = 58;

/// TCP flags.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// An IP address of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ip {
    /// IPv4.
    V4([u8; 4]),
    /// IPv6.
    V6([u8; 16]),
}

impl Ip {
    fn bytes(&self) -> &[u8] {
        match self {
            Ip::V4(a) => a,
            Ip::V6(a) => a,
        }
    }
}

/// The Internet checksum of `data` folded into `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checksum of a transport segment with its pseudo-header.
pub fn l4_checksum(src: Ip, dst: Ip, proto: u8, segment: &[u8]) -> u16 {
    let mut sum = sum16(0, src.bytes());
    sum = sum16(sum, dst.bytes());
    sum += u32::from(proto);
    sum += segment.len() as u32;
    fold(sum16(sum, segment))
}

/// Ethernet header (with `vlans` 802.1Q tags) for `ethertype`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (i, vid) in vlans.iter().enumerate() {
        // The outer tag of a double-tagged frame is 802.1ad.
        let tpid: u16 = if i == 0 && vlans.len() > 1 { 0x88a8 } else { 0x8100 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 or IPv6 packet around `segment` (whose checksum, at
/// `csum_at`, is filled in here), in an Ethernet frame.
pub fn ip_frame(vlans: &[u16], src: Ip, dst: Ip, proto: u8, mut segment: Vec<u8>, csum_at: Option<usize>) -> Vec<u8> {
    if let Some(at) = csum_at {
        segment[at..at + 2].copy_from_slice(&[0, 0]);
        let c = if proto == ICMP4 { fold(sum16(0, &segment)) } else { l4_checksum(src, dst, proto, &segment) };
        // UDP sends a computed zero as all ones.
        let c = if proto == UDP && c == 0 { 0xffff } else { c };
        segment[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    match (src, dst) {
        (Ip::V4(s), Ip::V4(d)) => {
            let mut f = ethernet(GW_MAC, CLIENT_MAC, vlans, 0x0800);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + segment.len()) as u16).to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s);
            h[16..20].copy_from_slice(&d);
            let c = fold(sum16(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
            f.extend_from_slice(&segment);
            f
        }
        (Ip::V6(s), Ip::V6(d)) => {
            let mut f = ethernet(GW_MAC, CLIENT_MAC, vlans, 0x86dd);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(segment.len() as u16).to_be_bytes());
            f.push(proto);
            f.push(64);
            f.extend_from_slice(&s);
            f.extend_from_slice(&d);
            f.extend_from_slice(&segment);
            f
        }
        _ => panic!("mixed address families"),
    }
}

/// A TCP segment in a frame.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    vlans: &[u16],
    src: Ip,
    dst: Ip,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let syn = tcp_flags & flags::SYN != 0;
    // A SYN carries the MSS option (4 bytes).
    let hlen = if syn { 24 } else { 20 };
    let mut s = vec![0u8; hlen];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[12] = ((hlen / 4) as u8) << 4;
    s[13] = tcp_flags;
    s[14..16].copy_from_slice(&64_000u16.to_be_bytes());
    if syn {
        s[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    }
    s.extend_from_slice(payload);
    ip_frame(vlans, src, dst, TCP, s, Some(16))
}

/// A UDP datagram in a frame.
pub fn udp(vlans: &[u16], src: Ip, dst: Ip, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; 8];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(payload);
    ip_frame(vlans, src, dst, UDP, s, Some(6))
}

/// An ICMP echo request (v4 or v6) in a frame.
pub fn ping(src: Ip, dst: Ip, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let (proto, ty) = match src {
        Ip::V4(_) => (ICMP4, 8),
        Ip::V6(_) => (ICMP6, 128),
    };
    let mut s = vec![ty, 0, 0, 0];
    s.extend_from_slice(&ident.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(data);
    ip_frame(&[], src, dst, proto, s, Some(2))
}

/// An ARP request from `sender` (MAC, IPv4) for `target`.
pub fn arp_request(sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = ethernet([0xff; 6], sender_mac, &[], 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// An IPv6 neighbour solicitation for `target`, from `src` with its
/// link-layer address, to the solicited-node multicast address.
pub fn neighbour_solicitation(src_mac: [u8; 6], src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut dst = [0u8; 16];
    dst[..13].copy_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
    dst[13..].copy_from_slice(&target[13..]);
    let mut s = vec![135, 0, 0, 0, 0, 0, 0, 0];
    s.extend_from_slice(&target);
    s.extend_from_slice(&[1, 1]); // source link-layer address option, 8 bytes
    s.extend_from_slice(&src_mac);
    let mut f = ip_frame(&[], Ip::V6(src), Ip::V6(dst), ICMP6, s, Some(2));
    // Neighbour discovery must arrive with hop limit 255.
    let l3 = 14;
    f[l3 + 7] = 255;
    // Multicast destination MAC 33:33:ff:xx:xx:xx.
    f[..6].copy_from_slice(&[0x33, 0x33, dst[12], dst[13], dst[14], dst[15]]);
    f
}

/// Where the TCP header of an untagged IPv4/IPv6 frame starts, with the
/// addresses: `None` for anything else (IPv6 extension headers included).
pub fn tcp_header(frame: &[u8]) -> Option<(Ip, Ip, usize)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (src, dst, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            if *frame.get(23)? != TCP || ihl < 20 {
                return None;
            }
            let src: [u8; 4] = frame.get(26..30)?.try_into().ok()?;
            let dst: [u8; 4] = frame.get(30..34)?.try_into().ok()?;
            (Ip::V4(src), Ip::V4(dst), 14 + ihl)
        }
        0x86dd => {
            if *frame.get(20)? != TCP {
                return None;
            }
            let src: [u8; 16] = frame.get(22..38)?.try_into().ok()?;
            let dst: [u8; 16] = frame.get(38..54)?.try_into().ok()?;
            (Ip::V6(src), Ip::V6(dst), 54)
        }
        _ => return None,
    };
    (frame.len() >= l4 + 20).then_some((src, dst, l4))
}

/// Recomputes the IPv4 header checksum and the TCP checksum of a frame
/// [`tcp_header`] accepts, as far as its length fields are consistent.
pub fn fix_tcp_checksums(frame: &mut [u8]) {
    let Some((src, dst, l4)) = tcp_header(frame) else { return };
    let end = match src {
        Ip::V4(_) => {
            frame[24..26].copy_from_slice(&[0, 0]);
            let c = fold(sum16(0, &frame[14..l4]));
            frame[24..26].copy_from_slice(&c.to_be_bytes());
            14 + usize::from(u16::from_be_bytes([frame[16], frame[17]]))
        }
        Ip::V6(_) => 54 + usize::from(u16::from_be_bytes([frame[18], frame[19]])),
    };
    if end < l4 + 20 || end > frame.len() {
        return;
    }
    frame[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = l4_checksum(src, dst, TCP, &frame[l4..end]);
    frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}
