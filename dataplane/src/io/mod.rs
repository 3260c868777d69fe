//! IO backends: what moves bytes between sockets (or NIC rings) and the
//! sans-IO [`Gateway`] core.
//!
//! Every backend implements [`IoBackend`]; [`run`] is the worker loop that
//! drives any of them. Backends: [`kernel`] (ordinary sockets through epoll,
//! for laptops, CI without root and as the baseline). AF_XDP (feature
//! `afxdp`) and DPDK (feature `dpdk`) backends implement the same trait.

#[cfg(feature = "afxdp")]
pub mod afxdp;
#[cfg(any(feature = "afxdp", feature = "dpdk"))]
pub mod bypass;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod kernel;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Gateway;

/// Moves the calling thread into network namespace `name` (an `ip netns`
/// name). Unlike `ip netns exec`, only the network namespace changes, so
/// bpffs pins stay visible; threads started afterwards inherit it.
pub fn enter_netns(name: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{name}");
    let file = std::fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("no network namespace {name:?} ({path}): {e}")))?;
    // SAFETY: setns on a namespace fd we own; it affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("cannot enter network namespace {name:?}: {e}")));
    }
    Ok(())
}

crate::core::stats::counters! {
    /// Counters of one worker's IO backend, read about every 100 ms with
    /// the worker's status. Frame and ring counters are those of the
    /// kernel-bypass backends; the kernel backend counts bytes only.
    IoStats {
    /// Frames received from the NIC rings.
    rx_frames,
    /// Bytes received from players (frames, or TCP payload on kernel sockets).
    rx_bytes,
    /// Frames sent.
    tx_frames,
    /// Bytes sent to players.
    tx_bytes,
    /// Worker loop rounds.
    polls,
    /// Rounds that moved no frame (busy polling with nothing to do).
    idle_polls,
    /// Times the worker slept after a run of idle rounds.
    idle_sleeps,
    /// System calls that kicked the kernel to transmit.
    tx_kicks,
    /// Times the transmit ring took fewer frames than were ready.
    tx_ring_full,
    /// Times every transmit frame was in flight (frames waited in the stack).
    tx_frames_exhausted,
    /// Dropped: frames larger than a transmit buffer (UMEM frame, mbuf).
    drop_tx_oversize,
    /// Dropped: frames the driver would not take for a while (DPDK).
    drop_tx_ring_full,
    /// Dropped: frames with no free transmit buffer (DPDK mbufs).
    drop_tx_no_buffer,
    /// Kernel: received frames dropped (socket counter `rx_dropped`).
    kernel_rx_dropped,
    /// Kernel: frames dropped because the receive ring was full.
    kernel_rx_ring_full,
    /// Kernel: times the fill ring was empty when a frame arrived.
    kernel_fill_ring_empty,
    /// Kernel: invalid descriptors on the receive or transmit ring.
    kernel_invalid_descs,
}
}

/// An IO backend for one worker.
pub trait IoBackend {
    /// Waits up to `timeout` for IO and feeds everything that arrived to the
    /// core through its `handle_*` methods.
    fn poll(&mut self, core: &mut Gateway, timeout: Option<Duration>) -> io::Result<()>;

    /// Carries out every output the core has queued
    /// ([`Gateway::poll_output`]) until none is left.
    fn flush(&mut self, core: &mut Gateway) -> io::Result<()>;

    /// Stops accepting new connections (shutdown).
    fn stop_accepting(&mut self);

    /// Its counters so far (called with each status report, not per frame).
    fn io_stats(&mut self) -> IoStats;
}

/// Longest a worker sleeps, so that it notices `stop` and reports status.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Runs one worker until `stop` is set and its shutdown completes (see
/// [`Gateway::shutdown`]), or `deadline` after `stop` at the latest.
/// `tick` is called about every 100 ms with the core and the backend's
/// counters, for status output.
pub fn run<B: IoBackend>(
    io: &mut B,
    core: &mut Gateway,
    stop: &AtomicBool,
    deadline: Duration,
    mut tick: impl FnMut(Instant, &Gateway, IoStats),
) -> io::Result<()> {
    let mut exit_at = None;
    let mut next_tick = Instant::now();
    let (shared, worker) = (core.shared().clone(), core.worker());
    loop {
        let now = Instant::now();
        core.handle_inbox(now);
        core.handle_timeout(now);
        if stop.load(Ordering::Relaxed) && exit_at.is_none() {
            io.stop_accepting();
            core.shutdown(now);
            exit_at = Some(now + deadline);
        }
        io.flush(core)?;
        if now >= next_tick {
            tick(now, core, io.io_stats());
            next_tick = now + MAX_WAIT;
        }
        if core.is_shut_down() || exit_at.is_some_and(|t| now >= t) {
            tick(now, core, io.io_stats());
            return Ok(());
        }
        let wait = core.poll_timeout().map_or(MAX_WAIT, |t| t.saturating_duration_since(now).min(MAX_WAIT));
        let wait = if shared.prepare_sleep(worker) { wait } else { Duration::ZERO };
        let polled = io.poll(core, Some(wait));
        shared.woke(worker);
        polled?;
    }
}
