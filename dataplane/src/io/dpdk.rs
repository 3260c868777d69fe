//! The DPDK rings of the kernel-bypass worker ([`super::bypass`]):
//! players' frames come from a DPDK port's receive queues
//! (`rte_eth_rx_burst`) and the answers leave through `rte_eth_tx_burst`.
//! One worker per queue pair, each with its own mbuf pool.
//!
//! DPDK's environment (EAL) starts once per process, with the `[dpdk]`
//! section's `eal_args`; a later start with other arguments is refused.
//! Without a NIC bound to DPDK, a `net_af_xdp` vdev on a Linux interface
//! works (`--no-huge --no-pci -m 512 --vdev=net_af_xdp0,iface=eth1`): the
//! driver loads its own XDP program, which hands every frame of the queue to
//! DPDK, ARP and ICMP included, and the stack answers them. The port is
//! stopped and closed (its XDP program detached) when the last worker ends.
//!
//! Frames are copied once between mbufs and the stack, through reused
//! buffers, as in the AF_XDP backend.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use demikernel_dpdk_bindings as rte;

use super::bypass::{BypassIo, Rings};
use super::IoStats;
use crate::netstack::FrameQueue;
use portcullis_core::config::{Config, DpdkConfig};

/// Frames moved per burst.
const BURST: usize = 64;
/// Receive and transmit descriptors per queue: a quarter of the queue's
/// mbufs, so that a burst from thousands of players finds room, within what
/// drivers take.
fn descriptors(mbufs: u32) -> u16 {
    (mbufs / 4).next_power_of_two().clamp(1024, 8192) as u16
}
/// Per-lcore mbuf cache of each pool (unused by the workers, which are not
/// EAL threads, but DPDK's own threads may use it).
const POOL_CACHE: u32 = 256;
/// `tx_burst` calls that sent nothing before the rest of a batch is dropped.
const TX_RETRIES: u32 = 64;
/// Frames the kernel sends per transmit kick in AF_XDP copy mode.
const KICK_FRAMES: usize = 32;

/// Data room of each mbuf (DPDK's default): a full Ethernet frame and
/// headroom.
const DATA_ROOM: u16 = rte::RTE_MBUF_DEFAULT_BUF_SIZE as u16;
/// `RTE_MEMPOOL_F_NO_IOVA_CONTIG` (rte_mempool.h): objects may cross page
/// boundaries, so they are packed end to end.
const MEMPOOL_F_NO_IOVA_CONTIG: u32 = 0x0020;

// Exported by librte_ethdev, librte_mempool and librte_mbuf (which the
// binding links) but not in the binding's generated list.
extern "C" {
    fn rte_eth_dev_stop(port_id: u16) -> c_int;
    fn rte_eth_dev_close(port_id: u16) -> c_int;
    fn rte_mempool_set_ops_byname(mp: *mut rte::rte_mempool, name: *const c_char, config: *mut c_void) -> c_int;
    fn rte_mbuf_best_mempool_ops() -> *const c_char;
}

/// An error of DPDK call `call`: `code` is a negative errno (or, for calls
/// that return -1, DPDK's `rte_errno`).
fn dpdk_error(call: &str, code: c_int) -> io::Error {
    let errno = code.saturating_abs();
    // SAFETY: rte_strerror returns a static or thread-local C string.
    let text = unsafe { CStr::from_ptr(rte::rte_strerror(errno)) }.to_string_lossy();
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(kind, format!("{call} failed: {text} (error {errno})"))
}

/// `rte_errno` of the calling thread.
fn rte_errno() -> c_int {
    // SAFETY: reads a thread-local integer.
    unsafe { rte::rte_errno() }
}

/// EAL arguments of the process, once EAL has started (or the reason it
/// could not: EAL cannot be started twice, even after a failure).
static EAL: OnceLock<Result<Vec<String>, String>> = OnceLock::new();

/// Starts EAL with `args` (program name excluded), once per process; later
/// calls with the same arguments do nothing, others are an error.
pub fn init_eal(args: &[String]) -> io::Result<()> {
    let mut ran = false;
    let started = EAL.get_or_init(|| {
        ran = true;
        start_eal(args).map(|()| args.to_vec()).map_err(|e| e.to_string())
    });
    match started {
        Ok(first) if first == args => Ok(()),
        Ok(first) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("DPDK's EAL already runs in this process with {first:?}; it cannot start again with {args:?}"),
        )),
        Err(e) if ran => Err(io::Error::other(e.clone())),
        Err(e) => Err(io::Error::other(format!("DPDK's EAL failed to start earlier in this process: {e}"))),
    }
}

fn start_eal(args: &[String]) -> io::Result<()> {
    let mut argv = Vec::with_capacity(args.len() + 2);
    for a in std::iter::once("portcullis-dataplane").chain(args.iter().map(String::as_str)) {
        let arg = CString::new(a).map_err(|_| io::Error::other(format!("EAL argument {a:?} contains a NUL byte")))?;
        // EAL may keep pointers into argv: the strings live as long as the
        // process (EAL starts once).
        argv.push(arg.into_raw());
    }
    let argc = c_int::try_from(argv.len()).map_err(|_| io::Error::other("too many EAL arguments"))?;
    argv.push(std::ptr::null_mut());
    let argv: &'static mut [*mut c_char] = argv.leak();
    // rte_eal_init pins the calling thread to the main lcore, and threads
    // started from it would inherit that; the workers are ours to place.
    let affinity = current_affinity();
    // SAFETY: argv is NULL-terminated, its strings valid for the process.
    let r = unsafe { rte::rte_eal_init(argc, argv.as_mut_ptr()) };
    let err = rte_errno();
    if let Some(set) = affinity {
        // SAFETY: a cpu set read from this thread a moment ago.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    }
    if r < 0 {
        let e = dpdk_error("rte_eal_init", err);
        return Err(io::Error::new(e.kind(), format!("{e}; EAL arguments: {args:?}")));
    }
    Ok(())
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; the call fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// A started DPDK port and its mbuf pools; stopped and closed on drop,
/// when the last worker using it is gone.
struct Port {
    id: u16,
    pools: Vec<*mut rte::rte_mempool>,
}

// SAFETY: the pools are DPDK mempools, safe to use from any thread; the
// port itself is only stopped and closed, once, on drop.
unsafe impl Send for Port {}
// SAFETY: as above; `Port` has no interior mutability.
unsafe impl Sync for Port {}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: no worker uses the port any more (they hold this value).
        unsafe {
            let stopped = rte_eth_dev_stop(self.id);
            if stopped < 0 {
                tracing::warn!("{}", dpdk_error(&format!("rte_eth_dev_stop(port {})", self.id), stopped));
            }
            let closed = rte_eth_dev_close(self.id);
            if closed < 0 {
                tracing::warn!("{}", dpdk_error(&format!("rte_eth_dev_close(port {})", self.id), closed));
            }
            for &pool in &self.pools {
                rte::rte_mempool_free(pool);
            }
        }
    }
}

/// Names mbuf pools uniquely in the process.
static POOLS: AtomicU32 = AtomicU32::new(0);

impl Port {
    /// Configures port `d.port` with `d.queues` queue pairs and starts it.
    fn open(d: &DpdkConfig) -> io::Result<Port> {
        let id = d.port;
        // SAFETY: plain queries after EAL has started.
        if unsafe { rte::rte_eth_dev_is_valid_port(id) } == 0 {
            // SAFETY: as above, a plain query.
            let n = unsafe { rte::rte_eth_dev_count_avail() };
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "dpdk.port = {id}: no such DPDK port ({n} available; is its --vdev in dpdk.eal_args? \
                     a port closed by an earlier gateway of this process cannot be reopened)"
                ),
            ));
        }
        // SAFETY: a zeroed rte_eth_dev_info is a valid output buffer.
        let mut info: rte::rte_eth_dev_info = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid output buffer for this port's query.
        let r = unsafe { rte::rte_eth_dev_info_get(id, &mut info) };
        if r < 0 {
            return Err(dpdk_error(&format!("rte_eth_dev_info_get(port {id})"), r));
        }
        let driver = if info.driver_name.is_null() {
            "?".into()
        } else {
            // SAFETY: the driver's static name.
            unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy().into_owned()
        };
        if info.max_rx_queues < d.queues || info.max_tx_queues < d.queues {
            return Err(io::Error::other(format!(
                "dpdk.queues = {}: port {id} ({driver}) has {} receive and {} transmit queues \
                 (net_af_xdp: add queue_count={} to the --vdev)",
                d.queues, info.max_rx_queues, info.max_tx_queues, d.queues
            )));
        }
        // All defaults: no offloads, no RSS (one queue per worker).
        // SAFETY: DPDK's documented way to ask for defaults is a zeroed conf.
        let conf: rte::rte_eth_conf = unsafe { std::mem::zeroed() };
        // SAFETY: a valid port id and a default configuration, before the port starts.
        let r = unsafe { rte::rte_eth_dev_configure(id, d.queues, d.queues, &conf) };
        if r < 0 {
            return Err(dpdk_error(&format!("rte_eth_dev_configure(port {id}, {} queues)", d.queues), r));
        }
        // From here on, dropping `port` stops and closes the device.
        let mut port = Port { id, pools: Vec::new() };
        // SAFETY: a valid port; SOCKET_ID_ANY (-1) when it has no NUMA node.
        let socket = unsafe { rte::rte_eth_dev_socket_id(id) };
        for q in 0..d.queues {
            let pool = if driver == "net_af_xdp" {
                packed_pool(d.mbufs, socket)?
            } else {
                let name = pool_name();
                // SAFETY: valid arguments; NULL means failure, reason in rte_errno.
                let pool =
                    unsafe { rte::rte_pktmbuf_pool_create(name.as_ptr(), d.mbufs, POOL_CACHE, 0, DATA_ROOM, socket) };
                if pool.is_null() {
                    return Err(dpdk_error(&format!("rte_pktmbuf_pool_create({name:?})"), rte_errno()));
                }
                pool
            };
            port.pools.push(pool);
            let socket = socket.max(0) as u32;
            // SAFETY: a configured port, a pool of this process; NULL confs
            // mean the driver's defaults.
            let r = unsafe { rte::rte_eth_rx_queue_setup(id, q, descriptors(d.mbufs), socket, std::ptr::null(), pool) };
            if r < 0 {
                return Err(dpdk_error(&format!("rte_eth_rx_queue_setup(port {id}, queue {q})"), r));
            }
            // SAFETY: a valid port and queue id, before the port starts; no config (defaults).
            let r = unsafe { rte::rte_eth_tx_queue_setup(id, q, descriptors(d.mbufs), socket, std::ptr::null()) };
            if r < 0 {
                return Err(dpdk_error(&format!("rte_eth_tx_queue_setup(port {id}, queue {q})"), r));
            }
        }
        // SAFETY: every queue is set up.
        let r = unsafe { rte::rte_eth_dev_start(id) };
        if r < 0 {
            return Err(dpdk_error(&format!("rte_eth_dev_start(port {id})"), r));
        }
        tracing::info!("DPDK port {id} ({driver}) started with {} queue pair(s)", d.queues);
        Ok(port)
    }

    /// The port's MAC address.
    fn mac(&self) -> io::Result<[u8; 6]> {
        let mut addr = rte::rte_ether_addr { addr_bytes: [0; 6] };
        // SAFETY: a started port and an output buffer of the right type.
        let r = unsafe { rte::rte_eth_macaddr_get(self.id, &mut addr) };
        if r < 0 {
            return Err(dpdk_error(&format!("rte_eth_macaddr_get(port {})", self.id), r));
        }
        Ok(addr.addr_bytes)
    }
}

/// A fresh, process-unique mbuf pool name.
fn pool_name() -> CString {
    let name = format!("pcx-mbufs-{}", POOLS.fetch_add(1, Ordering::Relaxed));
    CString::new(name).unwrap_or_default()
}

/// An mbuf pool whose objects lie end to end, as `rte_pktmbuf_pool_create`
/// would make it but with `RTE_MEMPOOL_F_NO_IOVA_CONTIG`.
///
/// net_af_xdp registers the pool of a receive queue as the AF_XDP UMEM,
/// sized as if the objects were packed. Without hugepages an ordinary pool
/// keeps each object inside one 4 KiB page, leaving gaps, and the objects
/// past the UMEM's end (about 40 % of them) are refused by the kernel:
/// reception stops once the pool hands one out.
fn packed_pool(n: u32, socket: c_int) -> io::Result<*mut rte::rte_mempool> {
    let name = pool_name();
    let call = |what: &str| format!("{what}({name:?}, {n} mbufs)");
    let elt = std::mem::size_of::<rte::rte_mbuf>() as u32 + u32::from(DATA_ROOM);
    let private = std::mem::size_of::<rte::rte_pktmbuf_pool_private>() as u32;
    // SAFETY: valid arguments; NULL means failure, reason in rte_errno.
    let pool = unsafe {
        rte::rte_mempool_create_empty(name.as_ptr(), n, elt, POOL_CACHE, private, socket, MEMPOOL_F_NO_IOVA_CONTIG)
    };
    if pool.is_null() {
        return Err(dpdk_error(&call("rte_mempool_create_empty"), rte_errno()));
    }
    let fail = |e: io::Error| {
        // SAFETY: the pool made above, not used by anything yet.
        unsafe { rte::rte_mempool_free(pool) };
        Err(e)
    };
    // SAFETY: a new empty pool; DPDK's choice of pool operations (a ring by
    // default), as rte_pktmbuf_pool_create makes it.
    let r = unsafe { rte_mempool_set_ops_byname(pool, rte_mbuf_best_mempool_ops(), std::ptr::null_mut()) };
    if r != 0 {
        return fail(dpdk_error(&call("rte_mempool_set_ops_byname"), r));
    }
    let mut private = rte::rte_pktmbuf_pool_private { mbuf_data_room_size: DATA_ROOM, mbuf_priv_size: 0, flags: 0 };
    // SAFETY: the pool was created with room for this private area, which
    // the call copies.
    unsafe { rte::rte_pktmbuf_pool_init(pool, (&mut private as *mut rte::rte_pktmbuf_pool_private).cast()) };
    // SAFETY: a new pool with its operations set.
    let r = unsafe { rte::rte_mempool_populate_default(pool) };
    if r < 0 {
        return fail(dpdk_error(&call("rte_mempool_populate_default"), r));
    }
    // SAFETY: every object of a populated mbuf pool is initialised as an mbuf.
    unsafe { rte::rte_mempool_obj_iter(pool, Some(rte::rte_pktmbuf_init), std::ptr::null_mut()) };
    Ok(pool)
}

/// One worker's queue pair of a DPDK port.
pub struct DpdkRings {
    port: Arc<Port>,
    queue: u16,
    pool: *mut rte::rte_mempool,
    burst: [*mut rte::rte_mbuf; BURST],
    /// Gathers multi-segment frames (none with the stack's MTU, in practice).
    scratch: Vec<u8>,
    /// When a drop was last logged (data-path logs are rate-limited).
    logged: Option<Instant>,
}

// SAFETY: a DPDK queue may be used from any thread, by one at a time: each
// queue belongs to exactly one `DpdkRings`, which the worker thread owns. The
// mempool is thread-safe.
unsafe impl Send for DpdkRings {}

impl DpdkRings {
    /// Starts EAL (once per process), configures and starts the port, and
    /// returns one worker per queue, each with the stack on the gateway
    /// ports.
    pub fn open(config: &Config, d: &DpdkConfig) -> io::Result<Vec<BypassIo<DpdkRings>>> {
        init_eal(&d.eal_args)?;
        let port = Arc::new(Port::open(d)?);
        let mac = port.mac()?;
        let mut ios = Vec::new();
        for (queue, &pool) in (0..d.queues).zip(&port.pools) {
            let rings = DpdkRings {
                port: port.clone(),
                queue,
                pool,
                burst: [std::ptr::null_mut(); BURST],
                scratch: Vec::new(),
                logged: None,
            };
            ios.push(BypassIo::new(config, rings, mac, &d.addresses, queue as usize)?);
        }
        Ok(ios)
    }

    /// Reports drops, at most once a second.
    fn log_drops(&mut self, stats: &IoStats) {
        let now = Instant::now();
        if self.logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.logged = Some(now);
            tracing::warn!(
                "DPDK port {} queue {}: transmit drops so far: {} driver full, {} no mbuf, {} too large",
                self.port.id,
                self.queue,
                stats.drop_tx_ring_full,
                stats.drop_tx_no_buffer,
                stats.drop_tx_oversize
            );
        }
    }
}

impl Rings for DpdkRings {
    /// One burst from the receive queue into the stack.
    fn receive(&mut self, dev: &mut FrameQueue, stats: &mut IoStats) -> usize {
        // SAFETY: this worker's queue; the array has room for BURST mbufs.
        let n = unsafe { rte::rte_eth_rx_burst(self.port.id, self.queue, self.burst.as_mut_ptr(), BURST as u16) };
        let n = usize::from(n);
        for &m in &self.burst[..n] {
            // SAFETY: the driver handed us this mbuf chain; we free it.
            unsafe {
                stats.rx_bytes += u64::from((*m).pkt_len);
                if (*m).nb_segs == 1 {
                    dev.push_rx(segment(m));
                } else {
                    self.scratch.clear();
                    let mut seg = m;
                    while !seg.is_null() {
                        self.scratch.extend_from_slice(segment(seg));
                        seg = (*seg).next;
                    }
                    dev.push_rx(&self.scratch);
                }
                rte::rte_pktmbuf_free(m);
            }
        }
        stats.rx_frames += n as u64;
        n
    }

    /// Frames the stack produced onto the transmit queue, in bursts; the
    /// part the driver did not take is offered again, and dropped (counted)
    /// when it takes nothing for a while.
    fn send(&mut self, dev: &mut FrameQueue, stats: &mut IoStats) -> usize {
        let (mut sent, mut bursts) = (0, 0);
        while !dev.tx.is_empty() {
            let mut batch = 0;
            while batch < BURST {
                let Some(frame) = dev.tx.pop_front() else { break };
                // SAFETY: this queue's pool.
                let m = unsafe { rte::rte_pktmbuf_alloc(self.pool) };
                if m.is_null() {
                    stats.drop_tx_no_buffer += 1;
                } else {
                    // SAFETY: a fresh single-segment mbuf, reset by the alloc:
                    // data starts at data_off, buf_len - data_off bytes free.
                    unsafe {
                        let room = usize::from((*m).buf_len.saturating_sub((*m).data_off));
                        if frame.len() > room {
                            stats.drop_tx_oversize += 1;
                            rte::rte_pktmbuf_free(m);
                        } else {
                            let data = ((*m).buf_addr as *mut u8).add(usize::from((*m).data_off));
                            std::ptr::copy_nonoverlapping(frame.as_ptr(), data, frame.len());
                            (*m).data_len = frame.len() as u16;
                            (*m).pkt_len = frame.len() as u32;
                            stats.tx_bytes += frame.len() as u64;
                            self.burst[batch] = m;
                            batch += 1;
                        }
                    }
                }
                dev.recycle(frame);
            }
            if batch == 0 {
                continue;
            }
            let mut done = 0;
            let mut retries = 0;
            while done < batch && retries < TX_RETRIES {
                // SAFETY: this worker's queue; mbufs [done, batch) are ours
                // until the driver takes them.
                let n = unsafe {
                    rte::rte_eth_tx_burst(
                        self.port.id,
                        self.queue,
                        self.burst[done..].as_mut_ptr(),
                        (batch - done) as u16,
                    )
                };
                done += usize::from(n);
                bursts += 1;
                retries = if n == 0 { retries + 1 } else { 0 };
            }
            for &m in &self.burst[done..batch] {
                // SAFETY: mbufs the driver did not take are still ours.
                unsafe { rte::rte_pktmbuf_free(m) };
            }
            sent += done;
            stats.tx_frames += done as u64;
            stats.drop_tx_ring_full += (batch - done) as u64;
            if done < batch {
                self.log_drops(stats);
            }
        }
        // net_af_xdp kicks the kernel once per burst, and in copy mode (veth)
        // the kernel sends at most 32 frames per kick: the rest would wait in
        // the ring for the next burst. Empty bursts kick again.
        for _ in 0..sent.div_ceil(KICK_FRAMES).saturating_sub(bursts) {
            // SAFETY: this worker's queue; no mbufs are passed.
            unsafe { rte::rte_eth_tx_burst(self.port.id, self.queue, self.burst.as_mut_ptr(), 0) };
            stats.tx_kicks += 1;
        }
        sent
    }

    /// net_af_xdp keeps its socket to itself: an idle worker naps.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// The bytes of one mbuf segment (`rte_pktmbuf_mtod`, `data_len`).
///
/// # Safety
/// `m` is a valid mbuf that outlives the returned slice.
unsafe fn segment<'a>(m: *const rte::rte_mbuf) -> &'a [u8] {
    // SAFETY: `m` is a valid mbuf (the caller's contract): its segment's
    // `data_len` bytes start `data_off` bytes into its buffer.
    unsafe {
        let data = ((*m).buf_addr as *const u8).add(usize::from((*m).data_off));
        std::slice::from_raw_parts(data, usize::from((*m).data_len))
    }
}

impl Drop for DpdkRings {
    fn drop(&mut self) {
        // SAFETY: this queue's pool, still alive (the port holds it).
        let free = unsafe { rte::rte_mempool_avail_count(self.pool) };
        tracing::info!("DPDK port {} queue {}: stopped, {free} mbufs free", self.port.id, self.queue);
    }
}
