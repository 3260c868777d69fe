//! The AF_XDP rings of the kernel-bypass worker ([`super::bypass`]):
//! players' frames come from the receive ring of an AF_XDP socket (the XDP
//! filter redirects gateway ports into it) and the answers leave through
//! the transmit ring. One worker per receive queue, each with its own UMEM,
//! rings and XSKMAP entry; the socket's readiness wakes an idle worker.
//!
//! Zero-copy is requested first; drivers that refuse it (veth) get copy
//! mode, reported at start. Copy-mode transmit sends at most 32 frames per
//! kick, so the transmit path kicks until the ring has drained.
//!
//! Frames are copied once between UMEM and the stack, through reused
//! buffers (no allocation per packet after warm-up). Lending UMEM frames to
//! the stack would save that copy; profiles put it under 2 % of the
//! worker's time, so it waits.

use std::ffi::CString;
use std::io::{self, Write as _};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use super::bypass::{BypassIo, Rings};
use super::IoStats;
use crate::netstack::FrameQueue;
use portcullis_core::config::{AfXdpConfig, Config};
use portcullis_xdp::Filter;

/// Frames moved per ring operation.
const BATCH: usize = 64;

/// Bytes per UMEM frame: a 1 514-byte Ethernet frame after the kernel's
/// 256 bytes of XDP headroom.
const FRAME_SIZE: u32 = 2048;

/// How the socket was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskMode {
    /// The driver DMAs straight into UMEM.
    ZeroCopy,
    /// The kernel copies frames into UMEM (veth and drivers without support).
    Copy,
}

/// One queue's AF_XDP socket: its UMEM and four rings.
pub struct AfXdpRings {
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Transmit frames not in flight.
    free: Vec<FrameDesc>,
    rx_batch: Vec<FrameDesc>,
    comp_batch: Vec<FrameDesc>,
    tx_batch: Vec<FrameDesc>,
    /// Descriptors of the transmit ring.
    tx_size: u32,
    /// How the socket was bound.
    pub mode: XskMode,
}

/// The MAC address of an interface in the calling thread's network namespace.
fn hw_addr(iface: &str) -> io::Result<[u8; 6]> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: [u8; 24],
    }
    const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
    let mut req = IfReq { name: [0; 16], data: [0; 24] };
    let bytes = iface.as_bytes();
    if bytes.len() >= 16 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a datagram socket for the ioctl, closed below; the ioctl
    // writes into `req`, which has the kernel's `struct ifreq` size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = libc::ioctl(fd, SIOCGIFHWADDR, &mut req as *mut IfReq);
        libc::close(fd);
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut mac = [0; 6];
    mac.copy_from_slice(&req.data[2..8]);
    Ok(mac)
}

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl AfXdpRings {
    /// Opens the socket of `queue` on the configured interface (in the
    /// calling thread's network namespace), registers it in the XDP
    /// filter's socket map and starts a worker with the stack on the
    /// gateway ports.
    pub fn open(config: &Config, x: &AfXdpConfig, queue: u32) -> io::Result<BypassIo<AfXdpRings>> {
        let frames = NonZeroU32::new(x.frames).ok_or_else(|| other("afxdp.frames", "must not be 0"))?;
        // Half the frames wait in the fill ring, half serve transmit; every
        // ring holds as many as it may ever be handed, so that a burst of a
        // whole fill ring's worth (thousands of players answering at once)
        // is taken, not dropped.
        let ring = QueueSize::new(x.frames / 2).map_err(|e| other("afxdp.frames", e))?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| other("UMEM frame size", e))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| other("UMEM config", e))?;
        let (umem, mut descs) = Umem::new(umem_config, frames, false).map_err(|e| other("creating the UMEM", e))?;
        let iface: Interface =
            CString::new(x.interface.clone()).map(Interface::new).map_err(|e| other("afxdp.interface", e))?;
        let mut mode = XskMode::ZeroCopy;
        let mut socket = None;
        for (flags, m) in [(BindFlags::XDP_ZEROCOPY, XskMode::ZeroCopy), (BindFlags::XDP_COPY, XskMode::Copy)] {
            let cfg = SocketConfig::builder()
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(flags)
                .rx_queue_size(ring)
                .tx_queue_size(ring)
                .build();
            // SAFETY: the UMEM outlives the socket (both owned by this value).
            if let Ok(s) = unsafe { xsk_rs::Socket::new(cfg, &umem, &iface, queue) } {
                socket = Some(s);
                mode = m;
                break;
            }
        }
        let (mut tx, rx, fq_cq) = socket.ok_or_else(|| {
            other(
                &format!("binding an AF_XDP socket to {} queue {queue}", x.interface),
                "refused in zero-copy and copy mode",
            )
        })?;
        let tx_size = tx.nb_free_exact(); // the ring is empty
        let (mut fill, comp) = fq_cq.ok_or_else(|| other("AF_XDP", "no fill and completion rings"))?;
        Filter::at(&x.pin_dir).register_socket(queue, rx.fd().as_raw_fd()).map_err(|e| other("the XDP filter", e))?;
        let free = descs.split_off(descs.len() / 2);
        // SAFETY: these frames belong to this UMEM and are not in use.
        unsafe { fill.produce(&descs) };
        let mac = hw_addr(&x.interface)?;
        let template = free.first().copied().ok_or_else(|| other("afxdp.frames", "too few frames"))?;
        let rings = AfXdpRings {
            umem,
            rx,
            tx,
            fill,
            comp,
            free,
            rx_batch: vec![template; BATCH],
            comp_batch: vec![template; BATCH],
            tx_batch: Vec::with_capacity(BATCH),
            tx_size,
            mode,
        };
        let worker = x.queues.iter().position(|&q| q == queue).unwrap_or(0);
        BypassIo::new(config, rings, mac, &x.addresses, worker)
    }

    /// Completed transmit frames back to the free list.
    fn reclaim(&mut self) {
        // SAFETY: completed descriptors of this UMEM.
        let n = unsafe { self.comp.consume(&mut self.comp_batch) };
        self.free.extend_from_slice(&self.comp_batch[..n]);
    }

    /// Has the kernel take what waits on the transmit ring. Copy mode sends
    /// at most 32 frames per kick, so kick until the ring is empty
    /// (bounded); a zero-copy driver only when it asks. Completions are
    /// reclaimed later: waiting for them here would spin on system calls.
    fn kick(&mut self, stats: &mut IoStats) {
        for _ in 0..64 {
            let queued = self.tx_size - self.tx.nb_free_exact();
            if queued == 0 || (self.mode == XskMode::ZeroCopy && !self.tx.needs_wakeup()) {
                return;
            }
            let _ = self.tx.wakeup();
            stats.tx_kicks += 1;
        }
    }
}

impl Rings for AfXdpRings {
    /// Frames from the receive ring into the stack; the frames go back to
    /// the fill ring at once.
    fn receive(&mut self, dev: &mut FrameQueue, stats: &mut IoStats) -> usize {
        // SAFETY: the descriptors come from and go back to this UMEM's rings.
        let n = unsafe { self.rx.consume(&mut self.rx_batch) };
        for d in &self.rx_batch[..n] {
            // SAFETY: the kernel handed this frame to us until we refill it.
            let data = unsafe { self.umem.data(d) };
            stats.rx_bytes += data.contents().len() as u64;
            dev.push_rx(data.contents());
        }
        stats.rx_frames += n as u64;
        if n > 0 {
            // SAFETY: as above.
            unsafe { self.fill.produce(&self.rx_batch[..n]) };
            if self.fill.needs_wakeup() {
                let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
            }
        }
        n
    }

    /// Frames the stack produced onto the transmit ring; kicks until the
    /// kernel has taken them (copy mode takes 32 per kick). Returns how many.
    fn send(&mut self, dev: &mut FrameQueue, stats: &mut IoStats) -> usize {
        self.reclaim();
        let mut sent = 0;
        while !dev.tx.is_empty() {
            self.tx_batch.clear();
            while self.tx_batch.len() < BATCH {
                if dev.tx.is_empty() {
                    break;
                }
                let Some(mut d) = self.free.pop() else {
                    stats.tx_frames_exhausted += 1;
                    break;
                };
                let frame = dev.tx.pop_front().expect("not empty");
                // SAFETY: a free transmit frame of this UMEM.
                let written = unsafe { self.umem.data_mut(&mut d).cursor().write_all(&frame) };
                if written.is_err() {
                    // Larger than a frame: dropped (the stack's MTU prevents it).
                    stats.drop_tx_oversize += 1;
                    self.free.push(d);
                } else {
                    stats.tx_bytes += frame.len() as u64;
                    self.tx_batch.push(d);
                }
                dev.recycle(frame);
            }
            if self.tx_batch.is_empty() {
                break; // every transmit frame is in flight
            }
            let mut produced = 0;
            for _ in 0..1024 {
                // SAFETY: frames of this UMEM, not in flight.
                produced += unsafe { self.tx.produce(&self.tx_batch[produced..]) };
                if produced == self.tx_batch.len() {
                    break;
                }
                // The ring is full: let the kernel take some first.
                stats.tx_ring_full += 1;
                self.kick(stats);
                self.reclaim();
            }
            stats.tx_frames += produced as u64;
            sent += produced;
            self.free.extend(self.tx_batch.drain(produced..));
        }
        self.kick(stats);
        sent
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.rx.fd().as_raw_fd())
    }

    /// The kernel's statistics of the socket.
    fn read_stats(&mut self, stats: &mut IoStats) {
        if let Ok(k) = self.rx.fd().xdp_statistics() {
            stats.kernel_rx_dropped = k.rx_dropped();
            stats.kernel_rx_ring_full = k.rx_ring_full();
            stats.kernel_fill_ring_empty = k.rx_fill_ring_empty_descs();
            stats.kernel_invalid_descs = k.rx_invalid_descs() + k.tx_invalid_descs();
        }
    }
}
