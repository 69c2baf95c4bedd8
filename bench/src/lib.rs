//! What the benchmark's binaries share.

pub mod replies;
