//! Alknet benchmarks: shared helpers for the criterion suite and the load generator.
//!
//! The criterion benches in `benches/` and the binaries in `src/bin/` drive the same rigs, so
//! a figure printed by a binary and one measured by criterion come from the same code.
#![forbid(unsafe_code)]

pub mod load;
pub mod udp_rate;
