//! Warnings on the data path, rate-limited by construction: a flood of the
//! same event must not become a flood of log lines.
//!
//! [`warn_limited!`](crate::warn_limited) logs the 1st, 2nd, 4th, 8th, …
//! occurrence at its call site, each line saying how many there were so far:
//! a billion events write 30 lines. It needs no clock, so the sans-IO core
//! uses it too.

use std::sync::atomic::{AtomicU64, Ordering};

/// The occurrence count of one call site.
#[derive(Debug, Default)]
pub struct Occurrences(AtomicU64);

impl Occurrences {
    /// No occurrence yet.
    pub const fn new() -> Occurrences {
        Occurrences(AtomicU64::new(0))
    }

    /// Counts one occurrence; returns the count so far when this one is to
    /// be logged (a power of two).
    #[must_use]
    pub fn log_this(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_power_of_two().then_some(n)
    }
}

/// `tracing::warn!` for the data path: logs the 1st, 2nd, 4th, 8th, …
/// occurrence of this call site, with the count so far.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static OCCURRENCES: $crate::log::Occurrences = $crate::log::Occurrences::new();
        if let Some(n) = OCCURRENCES.log_this() {
            $crate::log::warn_occurrence(n, format_args!($($arg)+));
        }
    }};
}

/// Logs occurrence `n` of a [`warn_limited!`](crate::warn_limited) call site.
#[doc(hidden)]
pub fn warn_occurrence(n: u64, message: std::fmt::Arguments<'_>) {
    tracing::warn!("{message} (occurrence {n}; logged at powers of two)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_logarithmically() {
        let o = Occurrences::new();
        let logged: Vec<u64> = (0..1_000_000).filter_map(|_| o.log_this()).collect();
        assert_eq!(logged.len(), 20);
        assert_eq!(&logged[..5], &[1, 2, 4, 8, 16]);
    }
}
