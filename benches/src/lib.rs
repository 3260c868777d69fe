//! Shared pieces of the Portcullis benchmarks.

pub mod alloc_counter;
