//! A flood generator: raw Ethernet frames from an AF_PACKET socket, so that
//! sources can be spoofed and headers broken on purpose. Call it from inside
//! the players' namespace ([`crate::Harness::in_players`]).
//!
//! Every flood is bounded by a packet count and paced to a rate (or as fast
//! as the socket takes them).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UDP datagrams.
    Udp,
    /// TCP SYNs.
    Syn,
    /// IPv4 frames whose header length field is invalid.
    MalformedIhl,
    /// IPv4 frames cut inside the header.
    Truncated,
    /// Fragments after the first (IPv4: a fragment offset; IPv6: a fragment
    /// extension header with an offset): no ports to see.
    LaterFragment,
}

/// A flood.
#[derive(Debug, Clone)]
pub struct Flood {
    /// What to send.
    pub kind: Kind,
    /// Sources, used in turn (spoofing: any addresses).
    pub sources: Vec<IpAddr>,
    /// Destination address (same family as the sources).
    pub dst: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Packets to send.
    pub count: u64,
    /// Packets per second; `None`: as fast as possible.
    pub rate: Option<u64>,
    /// UDP payload bytes.
    pub payload: usize,
    /// Stop after this long even if `count` is not reached.
    pub for_at_most: Option<Duration>,
    /// UDP payloads, used in turn with the sources (empty: `payload` zero
    /// bytes), e.g. recorded QUIC Initials.
    pub udp_payloads: Vec<Vec<u8>>,
}

impl Flood {
    /// `count` UDP packets from `src` to `dst:port`.
    pub fn udp(src: IpAddr, dst: IpAddr, port: u16, count: u64) -> Flood {
        Flood {
            kind: Kind::Udp,
            sources: vec![src],
            dst,
            port,
            count,
            rate: None,
            payload: 18,
            for_at_most: None,
            udp_payloads: Vec::new(),
        }
    }

    /// `count` sources from `base` upwards (IPv4), e.g. a spoofed /24.
    pub fn spoofed(base: Ipv4Addr, n: u32) -> Vec<IpAddr> {
        (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(base).wrapping_add(i)))).collect()
    }
}

/// What a flood did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Frames the socket accepted.
    pub sent: u64,
    /// How long it took.
    pub elapsed: Duration,
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from(chunk[0]) << 8 };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The transport header and payload with its checksum over the
/// pseudo-header, so that what the filter passes the kernel accepts.
fn with_checksum(mut pseudo: Vec<u8>, mut l4: Vec<u8>, proto: u8) -> Vec<u8> {
    pseudo.extend_from_slice(&l4);
    let c = checksum(&pseudo, 0);
    let at = if proto == 17 { 6 } else { 16 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    l4
}

/// Builds one frame.
pub fn frame(
    kind: Kind,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    payload: usize,
) -> Vec<u8> {
    frame_with(kind, dst_mac, src_mac, src, dst, port, &vec![0; payload])
}

/// Builds one frame whose UDP payload is `data`.
pub fn frame_with(
    kind: Kind,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    data: &[u8],
) -> Vec<u8> {
    let payload = data.len();
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    let (proto, l4) = match kind {
        Kind::Syn => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&40_000u16.to_be_bytes());
            t[2..4].copy_from_slice(&port.to_be_bytes());
            t[4..8].copy_from_slice(&1u32.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = 0x02; // SYN
            t[14..16].copy_from_slice(&64_240u16.to_be_bytes());
            (6u8, t)
        }
        _ => {
            let mut u = vec![0u8; 8 + payload];
            u[8..].copy_from_slice(data);
            u[0..2].copy_from_slice(&40_000u16.to_be_bytes());
            u[2..4].copy_from_slice(&port.to_be_bytes());
            u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
            (17u8, u)
        }
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut h = [0u8; 20];
            h[0] = if kind == Kind::MalformedIhl { 0x43 } else { 0x45 };
            h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            if kind == Kind::LaterFragment {
                h[6..8].copy_from_slice(&185u16.to_be_bytes()); // offset 1480 bytes
            }
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
            let mut pseudo = [s.octets(), d.octets()].concat();
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&with_checksum(pseudo, l4, proto));
            if kind == Kind::Truncated {
                f.truncate(14 + 12);
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let frag = kind == Kind::LaterFragment;
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&((l4.len() + if frag { 8 } else { 0 }) as u16).to_be_bytes());
            h[6] = if frag { 44 } else { proto };
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&h);
            if frag {
                // Fragment header: next header, reserved, offset 1480 bytes, id.
                f.extend_from_slice(&[proto, 0, 0x05, 0xc8, 0, 0, 0, 1]);
            }
            let mut pseudo = [s.octets(), d.octets()].concat();
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            f.extend_from_slice(&with_checksum(pseudo, l4, proto));
            if kind == Kind::Truncated {
                f.truncate(14 + 20);
            }
        }
        _ => panic!("source and destination of different families"),
    }
    f
}

/// An AF_PACKET socket bound to one interface.
pub struct RawSocket {
    fd: i32,
}

impl RawSocket {
    /// A raw socket on `iface` (in the calling thread's namespace).
    pub fn open(iface: &str) -> std::io::Result<RawSocket> {
        let name = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
        // SAFETY: plain socket calls on values we own.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            Ok(RawSocket { fd })
        }
    }

    /// Sends one frame; `false` if the socket's queue is full.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<bool> {
        // SAFETY: sends `frame`, valid for its length.
        let n = unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => Ok(false),
                _ => Err(e),
            };
        }
        Ok(true)
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: closes the fd we own.
        unsafe { libc::close(self.fd) };
    }
}

/// Sends a flood out of `iface` towards `dst_mac`.
pub fn run(iface: &str, src_mac: [u8; 6], dst_mac: [u8; 6], flood: &Flood) -> std::io::Result<Report> {
    let socket = RawSocket::open(iface)?;
    let n = flood.sources.len().max(flood.udp_payloads.len());
    let zeros = vec![0; flood.payload];
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let source = flood.sources[i % flood.sources.len()];
            let data =
                if flood.udp_payloads.is_empty() { &zeros } else { &flood.udp_payloads[i % flood.udp_payloads.len()] };
            frame_with(flood.kind, dst_mac, src_mac, source, flood.dst, flood.port, data)
        })
        .collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < flood.count {
        if flood.for_at_most.is_some_and(|d| sent.is_multiple_of(1024) && started.elapsed() >= d) {
            break;
        }
        if let Some(rate) = flood.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let now = started.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        if socket.send(&frames[(sent % frames.len() as u64) as usize])? {
            sent += 1;
        } else {
            std::thread::yield_now();
        }
    }
    Ok(Report { sent, elapsed: started.elapsed() })
}

/// Pins the calling thread to one CPU (per-CPU token buckets then behave
/// like one bucket).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: sets the affinity of the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums() {
        let f = frame(Kind::Udp, [1; 6], [2; 6], "10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 7000, 4);
        assert_eq!(f.len(), 14 + 20 + 8 + 4);
        assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 header checksum verifies");
        let t = frame(Kind::Truncated, [1; 6], [2; 6], "10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 1, 0);
        assert_eq!(t.len(), 26);
        let m =
            frame(Kind::MalformedIhl, [1; 6], [2; 6], "10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 1, 0);
        assert_eq!(m[14] & 0x0f, 3);
        let v6 = frame(Kind::Syn, [1; 6], [2; 6], "fd77::2".parse().unwrap(), "fd77::1".parse().unwrap(), 7000, 0);
        assert_eq!(v6.len(), 14 + 40 + 20);
        assert_eq!(v6[14 + 40 + 13], 0x02);
    }
}
