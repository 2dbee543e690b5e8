//! The service API: one [`ProtocolHandler`] per ALPN per shard, and the registry that derives
//! the offered ALPN list from the enabled handlers, so the two cannot drift.
//!
//! A handler sees only a [`Connection`](crate::Connection) and an
//! [`AuthContext`](crate::AuthContext): never the endpoint, the socket or another shard.
//! Handlers run on their shard's thread and may be `!Send`.

pub mod bridge;
pub mod tokio_rt;

use crate::conn::Connection;
use crate::identity::AuthContext;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use thiserror::Error;

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
}

/// One service, instantiated once per shard.
pub trait ProtocolHandler: 'static {
    /// The ALPN this handler serves, e.g. `b"alknet/echo"`.
    fn alpn(&self) -> &'static [u8];

    /// The scope a peer needs to open this service; `None` lets any known peer in.
    fn scope(&self) -> Option<&str>;

    /// Whether clients with unknown keys are served (benchmarks, public DNS).
    fn anonymous(&self) -> bool {
        false
    }

    /// Serves one connection. When the returned future finishes, the connection is closed
    /// once the data the handler sent is acknowledged (or at once if it panicked).
    fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) -> LocalBoxFuture<()>;
}

/// Creates a handler on each shard.
pub trait HandlerFactory: Send + Sync {
    /// The ALPN the handlers serve (checked for duplicates before any shard starts).
    fn alpn(&self) -> &'static [u8];
    /// Whether the handlers accept clients with unknown keys.
    fn anonymous(&self) -> bool {
        false
    }
    /// Builds the handler for shard `shard`.
    fn build(&self, shard: usize) -> Rc<dyn ProtocolHandler>;
}

/// A registry problem found at start-up.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two handlers claim one ALPN.
    #[error("two services registered for ALPN `{0}`; each ALPN may be served by one service")]
    DuplicateAlpn(String),
    /// An ALPN TLS cannot carry.
    #[error("invalid ALPN `{0}`: must be 1..=255 bytes")]
    BadAlpn(String),
}

/// The enabled services, by ALPN.
#[derive(Default, Clone)]
pub struct Registry {
    factories: Vec<Arc<dyn HandlerFactory>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service; a second service for the same ALPN is an error.
    pub fn register(&mut self, f: Arc<dyn HandlerFactory>) -> Result<(), RegistryError> {
        let alpn = f.alpn();
        if alpn.is_empty() || alpn.len() > 255 {
            return Err(RegistryError::BadAlpn(
                String::from_utf8_lossy(alpn).into_owned(),
            ));
        }
        if self.factories.iter().any(|g| g.alpn() == alpn) {
            return Err(RegistryError::DuplicateAlpn(
                String::from_utf8_lossy(alpn).into_owned(),
            ));
        }
        self.factories.push(f);
        Ok(())
    }

    /// The ALPNs offered in the handshake, in registration order.
    pub fn alpns(&self) -> Vec<Vec<u8>> {
        self.factories.iter().map(|f| f.alpn().to_vec()).collect()
    }

    /// True when some service accepts unknown keys (the client certificate is then optional).
    pub fn any_anonymous(&self) -> bool {
        self.factories.iter().any(|f| f.anonymous())
    }

    /// True when no service is registered.
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    /// Instantiates every handler for one shard.
    pub(crate) fn build(&self, shard: usize) -> Router {
        Router {
            handlers: self.factories.iter().map(|f| f.build(shard)).collect(),
        }
    }
}

/// One shard's handlers.
pub(crate) struct Router {
    handlers: Vec<Rc<dyn ProtocolHandler>>,
}

impl Router {
    /// The handler for a negotiated ALPN.
    pub(crate) fn get(&self, alpn: &[u8]) -> Option<&Rc<dyn ProtocolHandler>> {
        self.handlers.iter().find(|h| h.alpn() == alpn)
    }
}

/// A factory for handlers built by a closure; handy for services without per-shard state.
pub struct FnFactory<F> {
    alpn: &'static [u8],
    anonymous: bool,
    build: F,
}

impl<F> FnFactory<F>
where
    F: Fn(usize) -> Rc<dyn ProtocolHandler> + Send + Sync,
{
    /// A factory for `alpn` that calls `build(shard)` on each shard.
    pub fn new(alpn: &'static [u8], anonymous: bool, build: F) -> Self {
        Self {
            alpn,
            anonymous,
            build,
        }
    }
}

impl<F> HandlerFactory for FnFactory<F>
where
    F: Fn(usize) -> Rc<dyn ProtocolHandler> + Send + Sync,
{
    fn alpn(&self) -> &'static [u8] {
        self.alpn
    }

    fn anonymous(&self) -> bool {
        self.anonymous
    }

    fn build(&self, shard: usize) -> Rc<dyn ProtocolHandler> {
        (self.build)(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop(&'static [u8]);
    impl ProtocolHandler for Nop {
        fn alpn(&self) -> &'static [u8] {
            self.0
        }
        fn scope(&self) -> Option<&str> {
            None
        }
        fn handle(self: Rc<Self>, _c: Connection, _a: AuthContext) -> LocalBoxFuture<()> {
            Box::pin(async {})
        }
    }

    fn factory(alpn: &'static [u8]) -> Arc<dyn HandlerFactory> {
        Arc::new(FnFactory::new(alpn, false, move |_| {
            Rc::new(Nop(alpn)) as Rc<dyn ProtocolHandler>
        }))
    }

    #[test]
    fn duplicate_alpn_is_an_error() {
        let mut r = Registry::new();
        assert!(r.register(factory(b"alknet/a")).is_ok());
        assert!(r.register(factory(b"alknet/b")).is_ok());
        assert_eq!(
            r.register(factory(b"alknet/a")),
            Err(RegistryError::DuplicateAlpn("alknet/a".into()))
        );
        assert_eq!(r.alpns(), vec![b"alknet/a".to_vec(), b"alknet/b".to_vec()]);
        assert!(matches!(
            r.register(factory(b"")),
            Err(RegistryError::BadAlpn(_))
        ));
        let router = r.build(0);
        assert_eq!(
            router.get(b"alknet/b").map(|h| h.alpn()),
            Some(&b"alknet/b"[..])
        );
        assert!(router.get(b"alknet/c").is_none());
    }
}
