//! The runtime of a dataplane process: one worker thread per NIC queue (or
//! per `gateway.workers` on kernel sockets), each running its IO backend
//! and its core to completion; the state they share; status reports; and
//! the signals that stop them.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::Waker;
use portcullis_core::config::Config;
use portcullis_core::shard::Shared;
use portcullis_core::{auth, Gateway, Stats};

use crate::io::fds::FdBudget;
use crate::io::kernel::KernelIo;
use crate::io::{IoBackend, IoStats};

/// Longest a worker sleeps, so that it notices `stop` and reports status.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Runs one worker until `stop` is set and its shutdown completes (see
/// [`Gateway::shutdown`]) and the backend has delivered what the core
/// handed it, or `deadline` after `stop` at the latest.
/// `tick` is called about every 100 ms with the core and the backend's
/// counters, for status output.
pub fn run_worker<B: IoBackend>(
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
        if (core.is_shut_down() && io.flushed()) || exit_at.is_some_and(|t| now >= t) {
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

/// A flag that SIGTERM and SIGINT set: the process then shuts down
/// gracefully ([`RunningGateway::request_stop`]).
pub fn stop_on_signals() -> io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}

/// What a running worker last reported.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus {
    /// Its counters.
    pub stats: Stats,
    /// Sessions it holds (connected or waiting for a RESUME).
    pub sessions: usize,
    /// Client connections.
    pub connections: usize,
    /// Groups with members on it.
    pub groups: usize,
    /// Game-server links up.
    pub links_up: usize,
    /// Its IO backend's counters.
    pub io: IoStats,
    /// Requests awaiting game servers.
    pub in_flight: usize,
    /// Bytes queued for its clients.
    pub output_bytes: usize,
    /// Its latency histograms.
    pub latencies: portcullis_core::stats::Latencies,
}

/// A gateway process's workers, one thread each, on any IO backend.
pub struct RunningGateway {
    /// Bound listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    status: Arc<Mutex<Vec<WorkerStatus>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// Blocks into the XDP filter, if configured.
    nic: Option<crate::nic::NicGuard>,
}

/// 32 bytes from the OS's CSPRNG.
fn random_key() -> io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

impl RunningGateway {
    /// Binds every worker's listeners on kernel sockets and starts
    /// `gateway.workers` worker threads; returns once all are bound.
    pub fn start(config: &Config) -> io::Result<RunningGateway> {
        let workers = config.gateway.workers;
        let fds = FdBudget::for_process(config.limits.fd_reserve);
        let first = KernelIo::bind(config, None, fds.clone(), 0)?;
        let addrs = first.local_addrs();
        let mut ios = vec![first];
        for worker in 1..workers {
            ios.push(KernelIo::bind(config, Some(&addrs), fds.clone(), worker)?);
        }
        let wakers = ios.iter().map(|io| io.waker()).collect();
        Self::spawn(config, ios, wakers, addrs)
    }

    /// Starts one AF_XDP worker per configured queue, in the calling
    /// thread's network namespace (the interface's).
    #[cfg(feature = "afxdp")]
    pub fn start_afxdp(config: &Config) -> io::Result<RunningGateway> {
        let x = config.afxdp.as_ref().ok_or_else(|| io::Error::other("the config has no [afxdp] section"))?;
        // The filter redirects only gateway ports: make sure ours are.
        let mut rules = portcullis_xdp::Filter::at(&x.pin_dir)
            .rules()
            .map_err(|e| io::Error::other(format!("the XDP filter at afxdp.pin_dir = {}: {e}", x.pin_dir)))?;
        for l in &config.listeners {
            let proto = if l.transport.is_udp() { portcullis_xdp::Proto::Udp } else { portcullis_xdp::Proto::Tcp };
            rules.add_port(proto, l.bind.port()).map_err(io::Error::other)?;
        }
        if let Some(udp) = config.gateway.udp_echo {
            rules.add_port(portcullis_xdp::Proto::Udp, udp.port()).map_err(io::Error::other)?;
        }
        let mut ios = Vec::new();
        for &queue in &x.queues {
            let io = crate::io::afxdp::AfXdpRings::open(config, x, queue)?;
            tracing::info!("AF_XDP on {} queue {queue}: {:?} mode", x.interface, io.rings().mode);
            ios.push(io);
        }
        Self::spawn_bypass(config, ios)
    }

    /// Starts DPDK (EAL once per process, then the `[dpdk]` port) and one
    /// worker per queue pair, in the calling thread's network namespace
    /// (that of a `net_af_xdp` vdev's interface).
    #[cfg(feature = "dpdk")]
    pub fn start_dpdk(config: &Config) -> io::Result<RunningGateway> {
        let d = config.dpdk.as_ref().ok_or_else(|| io::Error::other("the config has no [dpdk] section"))?;
        Self::spawn_bypass(config, crate::io::dpdk::DpdkRings::open(config, d)?)
    }

    /// Runs kernel-bypass workers; their listeners are the config's
    /// addresses as written (the userspace stack binds no port 0).
    #[cfg(any(feature = "afxdp", feature = "dpdk"))]
    fn spawn_bypass<R: crate::io::bypass::Rings + Send + 'static>(
        config: &Config,
        mut ios: Vec<crate::io::bypass::BypassIo<R>>,
    ) -> io::Result<RunningGateway> {
        let directory = crate::netstack::directory::FlowDirectory::new(ios.len());
        for (worker, io) in ios.iter_mut().enumerate() {
            io.join(directory.clone(), worker as u32);
        }
        let wakers = ios.iter().map(|io| io.waker()).collect();
        let addrs = config.listeners.iter().map(|l| l.bind).collect();
        Self::spawn(config, ios, wakers, addrs)
    }

    fn spawn<B: IoBackend + Send + 'static>(
        config: &Config,
        ios: Vec<B>,
        wakers: Vec<Arc<Waker>>,
        addrs: Vec<SocketAddr>,
    ) -> io::Result<RunningGateway> {
        let workers = ios.len();
        let shared = Shared::new(workers, random_key()?);
        let nic = crate::nic::NicGuard::start(config, &shared)?;
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(vec![WorkerStatus::default(); workers]));
        let deadline = Duration::from_millis(config.gateway.shutdown_deadline_ms);
        let mut threads = Vec::new();
        for ((worker, mut io), waker) in ios.into_iter().enumerate().zip(wakers) {
            let auth = auth::from_config(config).map_err(io::Error::other)?;
            let mut core = Gateway::new(config, worker, shared.clone(), auth, Instant::now(), unix);
            shared.set_waker(worker, move || {
                let _ = waker.wake();
            });
            let (stop, status) = (stop.clone(), status.clone());
            threads.push(std::thread::Builder::new().name(format!("portcullis-worker-{worker}")).spawn(move || {
                run_worker(&mut io, &mut core, &stop, deadline, |_, core, io| {
                    let report = WorkerStatus {
                        stats: core.stats().clone(),
                        sessions: core.sessions().len(),
                        connections: core.connection_count(),
                        groups: core.sessions().group_count(),
                        links_up: core.links_up(),
                        in_flight: core.requests_in_flight(),
                        output_bytes: core.output_bytes(),
                        latencies: core.latencies().clone(),
                        io,
                    };
                    // A worker that panicked while holding the lock left a
                    // report as good as any: keep reporting.
                    status.lock().unwrap_or_else(|e| e.into_inner())[worker] = report;
                })
            })?);
        }
        Ok(RunningGateway { addrs, shared, status, stop, threads, nic })
    }

    /// What each worker last reported (about every 100 ms).
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The workers' status reports, as the agent API reads them.
    pub fn status_reports(&self) -> Arc<Mutex<Vec<WorkerStatus>>> {
        self.status.clone()
    }

    /// State shared by the workers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Counters of the thread that writes blocks into the XDP filter, if
    /// `security.xdp_pin_dir` is set.
    pub fn nic_counters(&self) -> Option<&crate::nic::NicCounters> {
        self.nic.as_ref().map(|n| &*n.counters)
    }

    /// Whether every worker thread is still running.
    pub fn is_running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Starts the graceful shutdown of every worker.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Shuts the workers down and waits for them.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.request_stop();
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().map_err(|_| io::Error::other("gateway worker panicked")).and_then(|r| r);
            result = result.and(r);
        }
        result
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
