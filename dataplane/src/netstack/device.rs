//! An in-memory smoltcp device: packets queued in and out in reused
//! buffers. The stack's frames come and go through one (the kernel-bypass
//! rings copy into and out of it), and each shard talks IP to smoltcp
//! through one.

use smoltcp::phy::{Device, Medium};
use smoltcp::time::Instant as NetInstant;

/// An in-memory device: frames (or IP packets) queued in and out, in
/// buffers that are reused (after warm-up, moving a frame allocates
/// nothing). Tests join two stacks with it; the kernel-bypass backends copy
/// ring frames through it.
#[derive(Debug)]
pub struct FrameQueue {
    /// Frames to receive.
    pub rx: std::collections::VecDeque<Vec<u8>>,
    /// Frames sent.
    pub tx: std::collections::VecDeque<Vec<u8>>,
    /// Check the checksums of received frames.
    pub verify_checksums: bool,
    /// Ethernet frames, or bare IP packets.
    pub medium: Medium,
    pool: Vec<Vec<u8>>,
}

impl Default for FrameQueue {
    fn default() -> Self {
        FrameQueue {
            rx: Default::default(),
            tx: Default::default(),
            verify_checksums: true,
            medium: Medium::Ethernet,
            pool: Vec::new(),
        }
    }
}

/// Buffers kept for reuse at most.
const POOL: usize = 4096;

impl FrameQueue {
    /// Queues a received frame, copied into a reused buffer.
    pub fn push_rx(&mut self, frame: &[u8]) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.rx.push_back(buf);
    }

    /// A new frame of `len` zero bytes at the end of the transmit queue.
    pub fn push_tx(&mut self, len: usize) -> &mut [u8] {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        self.tx.push_back(buf);
        self.tx.back_mut().expect("just pushed")
    }

    /// Hands a sent frame's buffer back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL {
            self.pool.push(buf);
        }
    }
}

/// Receive token of [`FrameQueue`].
pub struct QueueRx<'a>(Vec<u8>, &'a mut Vec<Vec<u8>>);
/// Transmit token of [`FrameQueue`].
pub struct QueueTx<'a>(&'a mut std::collections::VecDeque<Vec<u8>>, Option<&'a mut Vec<Vec<u8>>>);

impl smoltcp::phy::RxToken for QueueRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0);
        if self.1.len() < POOL {
            self.1.push(self.0);
        }
        r
    }
}

impl smoltcp::phy::TxToken for QueueTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = self.1.and_then(|p| p.pop()).unwrap_or_default();
        frame.clear();
        frame.resize(len, 0);
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for FrameQueue {
    type RxToken<'a> = QueueRx<'a>;
    type TxToken<'a> = QueueTx<'a>;

    fn receive(&mut self, _: NetInstant) -> Option<(QueueRx<'_>, QueueTx<'_>)> {
        let frame = self.rx.pop_front()?;
        // The reply may need a buffer while the received one is in use.
        Some((QueueRx(frame, &mut self.pool), QueueTx(&mut self.tx, None)))
    }

    fn transmit(&mut self, _: NetInstant) -> Option<QueueTx<'_>> {
        Some(QueueTx(&mut self.tx, Some(&mut self.pool)))
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        use smoltcp::phy::Checksum;
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.medium = self.medium;
        caps.max_transmission_unit = if self.medium == Medium::Ethernet { 1514 } else { 1500 };
        if !self.verify_checksums {
            // Frames from a local kernel (veth, virtio) carry partial
            // checksums, completed by an offload that never runs here:
            // compute ours, do not check theirs.
            caps.checksum.ipv4 = Checksum::Tx;
            caps.checksum.tcp = Checksum::Tx;
            caps.checksum.udp = Checksum::Tx;
            caps.checksum.icmpv4 = Checksum::Tx;
            caps.checksum.icmpv6 = Checksum::Tx;
        }
        caps
    }
}
