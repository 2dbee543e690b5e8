//! TCP forwarding for Alknet: one default-deny policy shared by SSH port forwarding
//! (`ssh -L/-R/-D/-W`) and the `alknet/tunnel` service, and the tokio side that resolves,
//! connects, listens and relays under it.
//!
//! - [`class`]: which addresses a broad rule does not open (loopback, link-local,
//!   unique-local, private, the gateway's own), as pure functions.
//! - [`policy`]: the decisions, pure: [`Policy::decide_connect`] and
//!   [`Policy::decide_listen`] from the `[tunnels]` rules. Read its module doc for the rules.
//! - [`Forwarder`]: the runtime part: [`Forwarder::connect`] resolves a name once, checks
//!   every address and connects only to one that passed; [`Forwarder::listen`] binds a
//!   remote-forward listener; both count against the per-peer caps; the policy can be
//!   swapped while running ([`Forwarder::set_policy`]).
//! - [`relay`]: copies a forward both ways with half-close and logs it at the end.
#![forbid(unsafe_code)]

pub mod class;
mod forwarder;
pub mod policy;
pub mod relay;

pub use forwarder::{
    ConnectionHold, Forwarder, Inbound, ListenerHold, Outbound, OwnAddresses, Resolution, Resolve,
    SystemResolver,
};
pub use policy::{Caps, Host, Policy, Refusal, Requester};

#[cfg(test)]
mod tests;
