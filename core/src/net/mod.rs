//! The data path below the shard: sockets and the syscalls they need ([`udp`], [`sys`]), the
//! QUIC endpoint configuration ([`endpoint`]), and starting and stopping the workers
//! ([`server`]).

pub mod endpoint;
pub mod server;
pub mod sys;
pub mod tcp;
pub mod udp;
