//! Alknet vault: the node's BIP39 seed, encrypted at rest, and the keys derived from it.
#![forbid(unsafe_code)]

pub mod cli;
