//! Operating a running node: the control socket ([`control`]) and the peer administration it
//! carries ([`admin`]), the counters ([`stats`]), the memory gauge ([`memory`]), and the join
//! service that turns an invite into a peer ([`join`]), and live reload of the config file
//! ([`reload`]).

pub mod admin;
pub mod control;
pub mod join;
pub mod memory;
pub mod metrics;
pub mod reload;
pub mod stats;
pub mod systemd;
