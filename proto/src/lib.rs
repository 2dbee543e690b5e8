//! Alknet's sans-IO codecs.
//!
//! Everything here turns bytes into typed values or a precise error, and typed values into
//! bytes. There is no runtime, no socket and no clock in this crate, and no allocation that
//! the input length does not bound, so every function can be fed hostile bytes by the fuzz
//! suite (`fuzz/`) and by the corpus replay in `cargo test`.
#![forbid(unsafe_code)]

pub mod call;
pub mod cid;
pub mod der;
pub mod fingerprint;
pub mod git;
pub mod join;
pub mod socks5;
pub mod tunnel;

#[doc(hidden)]
pub mod fuzzing;

pub use cid::{CID_LEN, CidCodec, CidFields, Route, route_datagram};
pub use fingerprint::{Fingerprint, FingerprintError};
