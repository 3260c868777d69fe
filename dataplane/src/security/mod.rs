//! The security chain's building blocks. Today: rate limiting (token
//! buckets per session and per source IP) and connection limits, applied by
//! the core before a frame is decoded.

pub mod rate_limit;
