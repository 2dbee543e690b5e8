//! The service layer: how a service declares itself, is configured, and is built on each
//! shard.
//!
//! A service is two types. The [`Service`] is shared by every shard: it declares its
//! `[services.NAME]` section ([`Service::NAME`]) and, from its parsed config, its ALPN, scope
//! and anonymity ([`ServiceInfo`]) in one place. The registry, TLS (the offered ALPNs and
//! whether a client certificate is required) and the shard's routing read only that
//! declaration. [`Service::build`] then makes one [`Handler`] per shard from a
//! [`ServiceContext`]: shard id, identities, node facts, the typed config, the drain signal
//! and the guarded spawn. A handler sees only a [`Connection`] and an [`AuthContext`]: never
//! the endpoint, the socket or another shard. Handlers run on their shard's thread and may be
//! `!Send`.
//!
//! A new service copies `handlers/echo` (no config) or `handlers/perf` (one config key):
//!
//! ```
//! # use alknet_core::{AuthContext, Connection, Handler, NoConfig, Service, ServiceContext, ServiceInfo};
//! # use std::rc::Rc;
//! pub struct Hello;
//! impl Service for Hello {
//!     const NAME: &'static str = "hello"; // its section: [services.hello]
//!     type Config = NoConfig;
//!     type Handler = Hello;
//!     fn info(&self, _: &NoConfig) -> ServiceInfo {
//!         ServiceInfo { alpn: b"alknet/hello", scopes: &["hello"], anonymous: false, uni_streams: false }
//!     }
//!     fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> Hello { Hello }
//! }
//! impl Handler for Hello {
//!     async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
//!         while let Ok((mut send, _recv)) = conn.accept_bi().await {
//!             conn.spawn(async move { let _ = send.write_all(b"hello").await; });
//!         }
//!     }
//! }
//! ```
//!
//! Tasks start only through [`ServiceContext::spawn`] (or [`Spawner`], or
//! [`Connection::spawn`]): a panic is caught at the task boundary, counted, logged, and
//! closes the connection the task belongs to and no other. Handler crates deny
//! `monoio::spawn` with clippy's `disallowed-methods` (`handlers/clippy.toml`).
//!
//! **Reload.** A reload (SIGHUP, `alknet reload`; [`crate::ops::reload`]) parses every
//! `[services.NAME]` section of the new file before anything changes, then stores each
//! changed one in its service's [`ConfigWatch`]. A handler whose rules should follow a reload
//! keeps [`ServiceContext::config_watch`] and reads [`ConfigWatch::current`] when it takes a
//! decision (a new session, a new request: the SSH service rebuilds its policy when
//! [`ConfigWatch::version`] moves); what it copied from [`ServiceContext::config`] stays as
//! at start. So a service's policy (an SSH rule list, a tunnel allowlist) belongs in its own
//! section to be reloadable. A change to what a service declares ([`Service::info`]: ALPN,
//! scopes, anonymity) and turning on a service that was off at start need a restart; turning
//! one off is live (the shards refuse its ALPN and close its sessions).
//!
//! Not here: the config file format ([`crate::config`]), authentication (the shard), and the
//! tokio side runtime for tokio-bound libraries (its own module, reached from the context).

mod context;
mod drain;
mod registry;
mod spawn;

pub use context::{AuthFailures, ConfigWatch, NodeError, NodeFacts, ServiceContext};
pub use drain::{Drain, DrainWait};
pub(crate) use registry::{ErasedHandler, Route, Router, ShardSetup};
pub use registry::{Offer, Registry, RegistryError, ServiceReload, SetupError};
pub use spawn::Spawner;
pub(crate) use spawn::{spawn_for, spawn_handler};

pub mod bridge;
pub mod tokio_rt;

use crate::conn::Connection;
use crate::identity::AuthContext;
pub use crate::net::tcp::TcpOffer;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// A boxed, shard-local future.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Application close codes Alknet itself uses (handlers use their own above 0x100).
pub mod close_code {
    /// Normal end of a connection.
    pub const NO_ERROR: u32 = 0x0;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 0x1;
    /// The client key is unknown or disabled.
    pub const UNAUTHORIZED: u32 = 0x2;
    /// The peer lacks the scope for this service.
    pub const FORBIDDEN: u32 = 0x3;
    /// The service failed (a handler panicked).
    pub const INTERNAL: u32 = 0x4;
    /// The peer's access was revoked.
    pub const REVOKED: u32 = 0x5;
    /// The handshake did not finish in time.
    pub const HANDSHAKE_TIMEOUT: u32 = 0x6;
    /// A protocol violation by the peer.
    pub const PROTOCOL_ERROR: u32 = 0x7;
    /// The peer (or anonymous source) already holds its cap of connections.
    pub const CONNECTION_LIMIT: u32 = 0x8;
}

/// What a service declares about itself; everything else (offered ALPNs, TLS client-auth
/// mode, routing, the scope check) derives from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The ALPN it serves, e.g. `b"alknet/echo"` (1..=255 bytes, unique in a registry).
    pub alpn: &'static [u8],
    /// The scopes that open it: a known peer holding any one of them (or `"*"`) is let in;
    /// empty lets any known peer in. A service that admits several scopes (`alknet/ssh`
    /// takes `ssh`, `ssh-exec` and `git`) decides in its handler what each one may do.
    pub scopes: &'static [&'static str],
    /// Whether clients with unknown keys are served too (benchmarks, public DNS). Then the
    /// server makes client certificates optional for every ALPN, and the other services
    /// still refuse unknown keys.
    pub anonymous: bool,
    /// Whether its handler accepts unidirectional streams from the client. When not, the
    /// shard grants a served connection no uni stream credit and stops (STOP_SENDING,
    /// [`close_code::PROTOCOL_ERROR`]) any the client opened with its initial credit, so
    /// their data is discarded instead of parked up to the connection window.
    pub uni_streams: bool,
}

/// A service: declared once, configured from `[services.NAME]`, built on every shard.
pub trait Service: Send + Sync + 'static {
    /// The name of its config section, `[services.NAME]`, and in logs.
    const NAME: &'static str;
    /// Its own keys in `[services.NAME]`, besides `enabled` (which the layer handles). Use
    /// `#[serde(deny_unknown_fields, default)]` so a typo is an error naming file, line and
    /// key; [`NoConfig`] when the service has no keys.
    type Config: DeserializeOwned + Default + Send + Sync + 'static;
    /// What runs on each shard.
    type Handler: Handler;

    /// The declaration: ALPN, scope, anonymity (which may follow the config).
    fn info(&self, config: &Self::Config) -> ServiceInfo;

    /// Builds the handler of one shard (called once on each shard's thread at start).
    fn build(&self, ctx: &ServiceContext<'_, Self::Config>) -> Self::Handler;

    /// Whether the service runs when its section does not set `enabled` (or there is no
    /// section, or no config file). The default: authenticated services are on, since
    /// nobody reaches them without a peer entry and its scope; anonymous modes are off.
    /// A service that is anonymous by necessity but admits nothing on its own (the join
    /// service) may say yes.
    fn enabled_by_default(&self, config: &Self::Config) -> bool {
        !self.info(config).anonymous
    }

    /// For an anonymous service: whether its clients must still present a key (unknown
    /// keys are served, missing ones refused). Such a service leaves client certificates
    /// required in TLS, so turning it on changes nothing for the other services.
    fn requires_client_key(&self, _config: &Self::Config) -> bool {
        false
    }

    /// For an anonymous service that authenticates each request itself (the HTTP gateway:
    /// tokens): what it checks, logged at start instead of the warning anonymous services
    /// otherwise get.
    fn anonymous_note(&self, _config: &Self::Config) -> Option<&'static str> {
        None
    }

    /// Whether (and where) the service is also reached over TCP+TLS, for clients that cannot
    /// use QUIC ([`crate::net::tcp`]); its handler then serves [`Handler::handle_tcp`].
    /// The client key is authorised there as over QUIC, by [`Service::info`]'s scopes and
    /// anonymity.
    fn tcp(&self, _config: &Self::Config) -> Option<TcpOffer> {
        None
    }
}

/// One service's instance on one shard; may be `!Send`.
pub trait Handler: 'static {
    /// Serves one authenticated (or, for an anonymous service, possibly unknown) connection.
    /// When the future finishes, the connection is closed once the data the handler sent is
    /// acknowledged; if it panics, the connection is closed at once with
    /// [`close_code::INTERNAL`].
    fn handle(
        self: Rc<Self>,
        conn: Connection,
        auth: AuthContext,
    ) -> impl Future<Output = ()> + 'static;

    /// Serves one TCP+TLS connection of a service that declared a [`TcpOffer`]; `auth.alpn`
    /// is the ALPN negotiated there (one of the offer's). The connection is closed when the
    /// future finishes. Services without a TCP offer never see one.
    fn handle_tcp(
        self: Rc<Self>,
        stream: crate::net::tcp::TlsStream,
        auth: AuthContext,
    ) -> impl Future<Output = ()> + 'static {
        drop((self, stream, auth));
        std::future::ready(())
    }
}

/// The config of a service without keys of its own: only `enabled` is accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

#[cfg(test)]
mod tests;
