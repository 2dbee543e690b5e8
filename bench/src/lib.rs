//! Alknet benchmarks: shared helpers for the criterion suite and the load generator.

pub mod load;
