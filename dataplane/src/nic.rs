//! The NIC end of the security chain: sources the behaviour link blocks go
//! into the XDP filter's blocklist (with their expiry), so that their
//! packets are dropped before the kernel or the dataplane spends anything
//! on them. Runs on a thread of its own when `security.xdp_pin_dir` is
//! set; workers hand it blocks through [`Shared::set_block_sink`] and never
//! wait for the maps.
//!
//! Beside it, when `[[security.feeds]]` are configured, a feed watcher
//! keeps the threat feeds loaded in the filter's feed tries, reloading a
//! file when it changes (every `security.feed_poll_ms`); both stop with the
//! gateway.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use portcullis_core::shard::Shared;
use portcullis_core::Config;
use portcullis_xdp::{spawn_feed_watcher, Cidr, FeedSpec, FeedWatcher, Filter};

/// Counters of the NIC thread.
#[derive(Debug, Default)]
pub struct NicCounters {
    /// Blocks written to the XDP blocklist.
    pub blocks_applied: AtomicU64,
    /// Blocks that could not be written (no filter loaded at the pin
    /// directory, map full…): the gateway still refuses the source.
    pub blocks_failed: AtomicU64,
}

/// The NIC thread.
pub struct NicGuard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    feeds: Option<FeedWatcher>,
    /// Its counters.
    pub counters: Arc<NicCounters>,
}

impl NicGuard {
    /// Starts the thread if `security.xdp_pin_dir` is set and makes it the
    /// block sink of `shared`; starts the feed watcher if feeds are
    /// configured.
    pub fn start(config: &Config, shared: &Shared) -> std::io::Result<Option<NicGuard>> {
        let Some(pin_dir) = config.security.xdp_pin_dir.clone() else {
            if !config.security.feeds.is_empty() {
                // Config validation refuses this; say so if it ever gets here.
                return Err(std::io::Error::other(
                    "security.feeds are configured but security.xdp_pin_dir is not: feeds go to the XDP filter",
                ));
            }
            return Ok(None);
        };
        let feeds = if config.security.feeds.is_empty() {
            None
        } else {
            let specs: Vec<FeedSpec> = config
                .security
                .feeds
                .iter()
                .map(|f| FeedSpec { name: f.name.clone(), path: f.path.clone().into() })
                .collect();
            tracing::info!(
                "threat feeds {} into the XDP filter at {pin_dir}, checked every {} ms",
                specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
                config.security.feed_poll_ms
            );
            Some(spawn_feed_watcher(&pin_dir, specs, Duration::from_millis(config.security.feed_poll_ms), None)?)
        };
        let (tx, rx) = mpsc::channel::<(IpAddr, Duration)>();
        shared.set_block_sink(move |ip, ttl| {
            let _ = tx.send((ip, ttl));
        });
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(NicCounters::default());
        let (stop2, counters2) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new().name("portcullis-nic".into()).spawn(move || {
            let filter = Filter::at(&pin_dir);
            while !stop2.load(Ordering::Relaxed) {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok((ip, ttl)) => {
                        let cidr = Cidr { addr: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } };
                        match filter.rules().and_then(|mut r| r.block_for(cidr, Some(ttl))) {
                            Ok(()) => {
                                counters2.blocks_applied.fetch_add(1, Ordering::Relaxed);
                                tracing::info!("{ip} blocked in the XDP filter for {} s", ttl.as_secs());
                            }
                            Err(e) => {
                                counters2.blocks_failed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    "cannot block {ip} in the XDP filter at security.xdp_pin_dir = {pin_dir}: {e} \
                                     (the gateway still refuses it)"
                                );
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })?;
        Ok(Some(NicGuard { stop, thread: Some(thread), feeds, counters }))
    }
}

impl Drop for NicGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.feeds.take() {
            f.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
