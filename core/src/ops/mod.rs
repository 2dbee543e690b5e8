//! Operating a running node: the control socket ([`control`]) and the peer administration it
//! carries ([`admin`]), the counters ([`stats`]) and the memory gauge ([`memory`]).

pub mod admin;
pub mod control;
pub mod memory;
pub mod metrics;
pub mod stats;
pub mod systemd;
