//! Alknet core: the thread-per-core QUIC endpoint and everything a service stands on.
//!
//! One UDP port, one QUIC+TLS endpoint per core (a *shard*), and the ALPN of each handshake
//! choosing the service. This crate holds the shards ([`server`]), the connection-ID routing
//! between them, TLS with Ed25519 node identities ([`tls`]), the peer model ([`identity`]),
//! the handler API ([`handler`], [`Connection`]) and the configuration ([`config`]). Wire
//! codecs live in `alknet-proto`; services live in their own crates.
#![deny(unsafe_code)]

pub mod admin;
pub mod client;
pub mod config;
mod conn;
pub mod control;
pub mod echo;
pub mod endpoint;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
pub mod identity;
pub mod memory;
pub mod penalty;
pub mod server;
mod shard;
pub mod stats;
pub mod store;
pub mod sys;
pub mod tls;
pub mod udp;

pub use conn::{Connection, DatagramError, RecvStream, SendStream, StreamError};
pub use handler::{HandlerFactory, LocalBoxFuture, ProtocolHandler, Registry, close_code};
pub use identity::{AuthContext, Identity, IdentityProvider, IdentityStore, PeerEntry};
pub use quinn_proto as quic;
pub use quinn_proto::{ConnectionError, VarInt};
pub use server::{ServerHandle, start};
pub use shard::{Forwarded, SessionBoard, SessionInfo, ShardMsg};
