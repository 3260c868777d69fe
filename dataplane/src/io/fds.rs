//! File descriptors of the kernel backend: the process raises its soft
//! open-files limit to the hard one at start, keeps `limits.fd_reserve` of
//! them for game-server links, the control plane and logs, and counts its
//! client sockets, over all workers, against the rest. A client that would
//! take one of the reserve is accepted and closed at once (counted,
//! logged at a bounded rate), so a flood of connections never leaves the
//! gateway unable to reach its game servers, and the listen queue does not
//! fill with connections nobody will serve.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The client sockets the process may hold, and how many it holds.
#[derive(Debug)]
pub struct FdBudget {
    max_clients: usize,
    open: AtomicUsize,
}

/// The soft and hard open-files limits.
fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (1024, 1024);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Descriptors the process has open now.
fn open_now() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

impl FdBudget {
    /// Raises the soft open-files limit to the hard one and sets the client
    /// budget: the limit, less what is open now, less `reserve`.
    pub fn for_process(reserve: usize) -> Arc<FdBudget> {
        let (soft, hard) = nofile();
        if soft < hard {
            let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
            // SAFETY: a valid rlimit; raising the soft limit up to the hard
            // one needs no privilege.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
                tracing::warn!("cannot raise the open-files limit from {soft} to {hard}");
            }
        }
        let (now, hard) = nofile();
        let in_use = open_now();
        let max_clients = usize::try_from(now).unwrap_or(usize::MAX).saturating_sub(in_use).saturating_sub(reserve);
        tracing::info!(
            "open files: limit {now} (was {soft}, hard {hard}), {in_use} in use, {reserve} reserved (limits.fd_reserve): at most {max_clients} client connections"
        );
        Arc::new(FdBudget { max_clients, open: AtomicUsize::new(0) })
    }

    /// Takes a descriptor for a client socket, unless that would touch the
    /// reserve.
    pub fn take(&self) -> bool {
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_clients).then_some(n + 1)).is_ok()
    }

    /// A client socket was closed.
    pub fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Client sockets open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Client sockets the process may hold.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_stop_at_the_budget_and_closing_one_makes_room() {
        let b = FdBudget { max_clients: 2, open: AtomicUsize::new(0) };
        assert!(b.take() && b.take());
        assert!(!b.take(), "the reserve is not touched");
        b.give_back();
        assert!(b.take());
        assert_eq!(b.open(), 2);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let budget = FdBudget::for_process(10);
        let (soft, hard) = nofile();
        assert_eq!(soft, hard);
        assert!(budget.max_clients() < soft as usize - 10);
    }
}
