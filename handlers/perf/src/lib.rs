//! Alknet perf service.
#![forbid(unsafe_code)]
