//! Which worker owns which flow, for the workers of one process.
//!
//! A NIC spreads flows over its queues by their 4-tuple, so a flow's
//! segments all reach the worker whose queue its SYN reached. A veth pair
//! (and a sender that changes its flow hash, as Linux does after a
//! retransmission timeout) may move a flow to another queue mid-connection.
//! A worker that receives a segment of a flow it does not own looks the flow
//! up here and hands the frame to the owner through the owner's bounded
//! inbox, instead of resetting a connection that is alive elsewhere.
//!
//! Lookups happen only for segments of flows a worker does not know; each
//! connection registers once and leaves once.

use std::sync::{Arc, OnceLock, RwLock};

use crossbeam_queue::ArrayQueue;
use rustc_hash::FxHashMap;

use super::flows::FlowKey;

/// Frames waiting for one worker at most; beyond, they are dropped
/// (counted) and TCP retransmits them.
const INBOX: usize = 4096;

/// The flow owners of a process's kernel-bypass workers.
pub struct FlowDirectory {
    owners: RwLock<FxHashMap<FlowKey, u32>>,
    inboxes: Vec<ArrayQueue<Vec<u8>>>,
    wakers: Vec<OnceLock<Box<dyn Fn() + Send + Sync>>>,
}

impl FlowDirectory {
    /// A directory for `workers` workers.
    pub fn new(workers: usize) -> Arc<FlowDirectory> {
        Arc::new(FlowDirectory {
            owners: RwLock::new(FxHashMap::default()),
            inboxes: (0..workers).map(|_| ArrayQueue::new(INBOX)).collect(),
            wakers: (0..workers).map(|_| OnceLock::new()).collect(),
        })
    }

    /// How to wake worker `worker` when a frame waits for it.
    pub fn set_waker(&self, worker: u32, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wakers[worker as usize].set(Box::new(wake));
    }

    /// `worker` owns `key` from now on.
    pub fn register(&self, key: FlowKey, worker: u32) {
        self.owners.write().unwrap_or_else(|e| e.into_inner()).insert(key, worker);
    }

    /// `key` is gone (if `worker` still owned it).
    pub fn forget(&self, key: &FlowKey, worker: u32) {
        let mut owners = self.owners.write().unwrap_or_else(|e| e.into_inner());
        if owners.get(key) == Some(&worker) {
            owners.remove(key);
        }
    }

    /// The worker that owns `key`, if any.
    pub fn owner(&self, key: &FlowKey) -> Option<u32> {
        self.owners.read().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }

    /// Whether `worker` is one of the process's workers.
    pub fn has_worker(&self, worker: u32) -> bool {
        (worker as usize) < self.inboxes.len()
    }

    /// Hands a frame to `worker`; false if its inbox is full.
    pub fn forward(&self, worker: u32, frame: Vec<u8>) -> bool {
        let Some(inbox) = self.inboxes.get(worker as usize) else { return false };
        if inbox.push(frame).is_err() {
            return false;
        }
        if let Some(wake) = self.wakers[worker as usize].get() {
            wake();
        }
        true
    }

    /// The next frame handed to `worker`.
    pub fn take(&self, worker: u32) -> Option<Vec<u8>> {
        self.inboxes.get(worker as usize)?.pop()
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{IpAddress, Ipv4Address};

    use super::*;

    #[test]
    fn a_flow_has_one_owner_and_its_frames_reach_it() {
        let d = FlowDirectory::new(2);
        let key = FlowKey {
            remote: (IpAddress::Ipv4(Ipv4Address::new(10, 88, 1, 1)), 40_000),
            local: (IpAddress::Ipv4(Ipv4Address::new(10, 77, 0, 1)), 7000),
        };
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        d.set_waker(1, move || {
            w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(d.owner(&key), None);
        d.register(key, 1);
        assert_eq!(d.owner(&key), Some(1));
        assert!(d.forward(1, vec![1, 2, 3]));
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(d.take(1), Some(vec![1, 2, 3]));
        assert_eq!(d.take(1), None);
        // Only the owner's leaving removes the entry.
        d.forget(&key, 0);
        assert_eq!(d.owner(&key), Some(1));
        d.forget(&key, 1);
        assert_eq!(d.owner(&key), None);
        for _ in 0..INBOX {
            assert!(d.forward(0, Vec::new()));
        }
        assert!(!d.forward(0, Vec::new()), "a full inbox refuses");
    }
}
