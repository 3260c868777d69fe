//! Shared pieces of the Portcullis benchmarks: what the load driver
//! (`portcullis-load`) and the attack driver (`portcullis-attack`) both
//! need to log players in, pace them, time them and watch the gateway
//! process.

pub mod alloc_counter;
pub mod players;
pub mod procfs;
