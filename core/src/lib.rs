//! Alknet core: the thread-per-core QUIC endpoint and everything a service stands on.
//!
//! One UDP port, one QUIC+TLS endpoint per core (a *shard*), and the ALPN of each handshake
//! choosing the service. The crate is grouped by role:
//!
//! * the data path: [`net`] (sockets, syscalls, the endpoint configuration, starting the
//!   workers) and [`shard`] (one core's endpoint, its connections and their timers);
//! * [`conn`]: a handler's view of one connection and its streams;
//! * [`service`]: how a service declares itself and is built on each shard;
//! * [`identity`]: node keys and TLS, the peer model and its stores;
//! * [`ops`]: the control socket, peer administration, counters, the memory gauge;
//! * [`config`] and [`client`] (the client side of a connection).
//!
//! Wire codecs live in `alknet-proto`; services live in their own crates (`handlers/`), each
//! written against [`service`].
#![deny(unsafe_code)]

pub mod client;
pub mod config;
pub mod conn;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod net;
pub mod ops;
pub mod service;
pub mod shard;

pub use conn::{Connection, DatagramError, RecvStream, SendStream, StreamError};
pub use identity::{AuthContext, Identity, IdentityProvider, IdentityStore, PeerEntry};
pub use net::server::{ServerHandle, start};
pub use quinn_proto as quic;
pub use quinn_proto::{ConnectionError, VarInt};
pub use service::{
    Handler, LocalBoxFuture, NoConfig, Registry, Service, ServiceContext, ServiceInfo, close_code,
};
pub use shard::{Forwarded, LiveUpdate, SessionBoard, SessionInfo, ShardMsg};
