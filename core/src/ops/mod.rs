//! Operating a running node: the control socket ([`control`]) and the peer administration it
//! carries ([`admin`]), the counters ([`stats`]), the memory gauge ([`memory`]), and the join
//! service that turns an invite into a peer ([`join`]).

pub mod admin;
pub mod control;
pub mod join;
pub mod memory;
pub mod metrics;
pub mod stats;
pub mod systemd;
