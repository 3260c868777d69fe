//! Token buckets: `rate` tokens per second up to `burst`; one token per frame.

use std::time::Instant;

/// A token bucket. Time comes from the caller (sans-IO).
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens at `now`.
    pub fn full(burst: u32, now: Instant) -> Self {
        TokenBucket { tokens: burst as f32, last: now }
    }

    /// Takes one token if there is one, refilling first at `rate` per
    /// second up to `burst`.
    #[must_use]
    pub fn allow(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Whether the bucket would be full at `now`: it has not been used for
    /// long enough to be forgotten.
    pub fn is_full(&self, now: Instant, rate: u32, burst: u32) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f32() * rate as f32 >= burst as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(10, t0);
        assert_eq!((0..20).filter(|_| b.allow(t0, 100, 10)).count(), 10, "the burst");
        // 100/s: 5 tokens after 50 ms.
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!((0..20).filter(|_| b.allow(t1, 100, 10)).count(), 5);
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.allow(t2, 100, 10)).count(), 10);
    }

    #[test]
    fn sustained_rate_over_simulated_seconds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(50, t0);
        let mut allowed = 0;
        // 1000 attempts per second for 10 s against 200/s.
        for ms in 0..10_000u64 {
            if b.allow(t0 + Duration::from_millis(ms), 200, 50) {
                allowed += 1;
            }
        }
        assert!((2_000..=2_060).contains(&allowed), "{allowed}");
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::full(1, t0);
        assert!(b.allow(t0, 10, 1));
        assert!(!b.allow(t0 - Duration::from_millis(500), 10, 1));
        assert!(!b.allow(t0, 10, 1));
    }
}
