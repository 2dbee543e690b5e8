//! The registry: the enabled services and their declarations, checked at start-up, and the
//! per-shard router built from it.
//!
//! The offered ALPN list, the TLS client-auth mode and the routing of a connection all read
//! the one [`ServiceInfo`] each service declared, so they cannot drift apart.

use super::context::{ConfigWatch, NodeFacts, ServiceContext};
use super::drain::Drain;
use super::spawn::Spawner;
use super::{Handler, LocalBoxFuture, Service, ServiceInfo, TcpOffer};
use crate::config::{Config, ConfigError};
use crate::conn::Connection;
use crate::identity::{AuthContext, IdentityProvider, IdentityStore};
use crate::net::tcp::TlsStream;
use crate::ops::stats::ShardStats;
use crate::service::tokio_rt::SideRuntime;
use std::rc::Rc;
use std::sync::Arc;
use thiserror::Error;

/// A registry problem found at start-up.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two services claim one ALPN.
    #[error(
        "services `{first}` and `{second}` both declare ALPN `{alpn}`; each ALPN may be served by one service"
    )]
    DuplicateAlpn {
        /// The ALPN.
        alpn: String,
        /// The service registered first.
        first: &'static str,
        /// The service registered second.
        second: &'static str,
    },
    /// An ALPN TLS cannot carry.
    #[error("service `{service}` declares ALPN `{alpn}`: an ALPN must be 1..=255 bytes")]
    BadAlpn {
        /// The ALPN, lossily decoded.
        alpn: String,
        /// The service.
        service: &'static str,
    },
}

/// Why the services could not be set up from a configuration.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A `[services.NAME]` section is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The declarations clash.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A service built into this program, before the config says whether it runs: one entry of
/// the list `alknet serve` registers from.
pub struct Offer(Box<dyn Configure>);

impl Offer {
    /// Offers `service`.
    pub fn new<S: Service>(service: S) -> Self {
        Self(Box::new(Some(service)))
    }

    /// Its `[services.NAME]` name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

trait Configure {
    fn name(&self) -> &'static str;
    fn configure(&mut self, config: &Config, registry: &mut Registry) -> Result<(), SetupError>;
}

impl<S: Service> Configure for Option<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn configure(&mut self, config: &Config, registry: &mut Registry) -> Result<(), SetupError> {
        // Parsed even when disabled: a typo in a section turned off is still a typo.
        let section = config.service_section::<S::Config>(S::NAME)?;
        let Some(service) = self.take() else {
            return Ok(());
        };
        // One rule, with or without a config file: what the section says, else what the
        // service declares (authenticated services on, anonymous modes off).
        let on = section
            .enabled
            .unwrap_or_else(|| service.enabled_by_default(&section.config));
        if on {
            registry.register(service, section.config)?;
        }
        Ok(())
    }
}

/// A section parsed for a reload, stored by calling it.
type Commit = Box<dyn FnOnce() + Send>;

/// One registered service, type-erased.
trait Build: Send + Sync {
    fn build(&self, shard: &ShardSetup) -> Rc<dyn ErasedHandler>;
    /// Parses the service's section of `config` and declares the service from it, without
    /// storing anything: the commit stores it.
    fn prepare(&self, config: &Config) -> Result<(Declared, Commit), ConfigError>;
}

/// What a service declares from its config: the QUIC side and the TCP side.
type Declared = (ServiceInfo, Option<TcpOffer>);

struct Entry<S: Service> {
    service: S,
    config: ConfigWatch<S::Config>,
}

impl<S: Service> Build for Entry<S> {
    fn build(&self, shard: &ShardSetup) -> Rc<dyn ErasedHandler> {
        let current = self.config.current();
        let ctx = ServiceContext::new(shard, &*current, &self.config);
        Rc::new(self.service.build(&ctx))
    }

    fn prepare(&self, config: &Config) -> Result<(Declared, Commit), ConfigError> {
        let section = config.service_section::<S::Config>(S::NAME)?;
        let info = (
            self.service.info(&section.config),
            self.service.tcp(&section.config),
        );
        let watch = self.config.clone();
        Ok((info, Box::new(move || watch.replace(section.config))))
    }
}

/// What a reload does to the running services, worked out (every section parsed) before
/// anything changes; [`ServiceReload::commit`] then stores the new sections.
#[derive(Default)]
pub struct ServiceReload {
    /// Running services the new file turns off: their ALPN stays in the TLS list (the
    /// endpoint's list is fixed at start), but the shards refuse new connections to them and
    /// close the live ones.
    pub disabled: Vec<&'static str>,
    /// The ALPNs of [`ServiceReload::disabled`].
    pub disabled_alpns: Vec<Vec<u8>>,
    /// Services the new file turns on that were not built at start: each shard builds its
    /// handlers once, at start, so these need a restart.
    pub need_restart: Vec<&'static str>,
    /// Running services whose `[services.NAME]` keys changed and are stored live (handlers
    /// read them through [`ConfigWatch`]).
    pub sections: Vec<&'static str>,
    /// Running services whose new section changes what they declare (ALPN, scopes,
    /// anonymity): the old section stays until a restart.
    pub declaration_changed: Vec<&'static str>,
    commits: Vec<Commit>,
}

impl std::fmt::Debug for ServiceReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceReload")
            .field("disabled", &self.disabled)
            .field("need_restart", &self.need_restart)
            .field("sections", &self.sections)
            .field("declaration_changed", &self.declaration_changed)
            .finish_non_exhaustive()
    }
}

impl ServiceReload {
    /// Stores the new sections of [`ServiceReload::sections`] in their watches.
    pub fn commit(self) {
        for c in self.commits {
            c();
        }
    }
}

#[derive(Clone)]
struct Registered {
    name: &'static str,
    info: ServiceInfo,
    /// An anonymous service whose clients must still present a key (`alknet/join`).
    requires_key: bool,
    /// Why an anonymous service is safe to offer (it authenticates each request itself).
    anonymous_note: Option<&'static str>,
    /// Where it is reached over TCP+TLS too.
    tcp: Option<TcpOffer>,
    entry: Arc<dyn Build>,
}

/// The enabled services, in the order their ALPNs are offered.
#[derive(Default, Clone)]
pub struct Registry {
    services: Vec<Registered>,
    peer_store: Option<Arc<dyn IdentityStore>>,
    invite_store: Option<Arc<crate::identity::store::RedbStore>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.services()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The services of `offers` that `config` enables, each configured from its
    /// `[services.NAME]` section. A section naming no offered service is an error listing the
    /// offered ones; so is a section a service cannot parse. Services serving unknown keys are
    /// logged as a warning.
    pub fn from_config(
        config: &Config,
        offers: impl IntoIterator<Item = Offer>,
    ) -> Result<Self, SetupError> {
        let registry = Self::configure(config, offers)?;
        for s in registry.services.iter().filter(|s| s.info.anonymous) {
            if s.requires_key {
                tracing::info!(
                    service = s.name,
                    alpn = %String::from_utf8_lossy(s.info.alpn),
                    "service serves clients with unknown keys for what it does itself (joining with an invite); every other service still refuses them"
                );
                continue;
            }
            if let Some(note) = s.anonymous_note {
                tracing::info!(
                    service = s.name,
                    alpn = %String::from_utf8_lossy(s.info.alpn),
                    "service lets clients without a known key through the handshake: {note}"
                );
                continue;
            }
            tracing::warn!(
                service = s.name,
                alpn = %String::from_utf8_lossy(s.info.alpn),
                "service serves clients with unknown keys (anonymous = true); use this for benchmarks only"
            );
        }
        Ok(registry)
    }

    /// [`Registry::from_config`] without its log lines (a reload checks the new file with it).
    fn configure(
        config: &Config,
        offers: impl IntoIterator<Item = Offer>,
    ) -> Result<Self, SetupError> {
        let mut offers: Vec<Offer> = offers.into_iter().collect();
        let known: Vec<&str> = offers.iter().map(Offer::name).collect();
        config.check_services(&known)?;
        let mut registry = Self::new();
        for offer in &mut offers {
            offer.0.configure(config, &mut registry)?;
        }
        Ok(registry)
    }

    /// Adds `service` with its config; an ALPN already registered, or one TLS cannot carry,
    /// is an error.
    pub fn register<S: Service>(
        &mut self,
        service: S,
        config: S::Config,
    ) -> Result<(), RegistryError> {
        let info = service.info(&config);
        let requires_key = service.requires_client_key(&config);
        let anonymous_note = service.anonymous_note(&config);
        let tcp = service.tcp(&config);
        let alpn = info.alpn;
        if alpn.is_empty() || alpn.len() > 255 {
            return Err(RegistryError::BadAlpn {
                alpn: String::from_utf8_lossy(alpn).into_owned(),
                service: S::NAME,
            });
        }
        if let Some(first) = self.services.iter().find(|s| s.info.alpn == alpn) {
            return Err(RegistryError::DuplicateAlpn {
                alpn: String::from_utf8_lossy(alpn).into_owned(),
                first: first.name,
                second: S::NAME,
            });
        }
        self.services.push(Registered {
            name: S::NAME,
            info,
            requires_key,
            anonymous_note,
            tcp,
            entry: Arc::new(Entry {
                service,
                config: ConfigWatch::new(config),
            }),
        });
        Ok(())
    }

    /// What reloading from `new` would change in the services of this (running) registry,
    /// `old` being the configuration they run with now. Every section of `new` is parsed
    /// and the service list checked (as at start, from `offers`: the services of this
    /// build); an error changes nothing.
    pub fn plan_reload(
        &self,
        old: &Config,
        new: &Config,
        offers: impl IntoIterator<Item = Offer>,
    ) -> Result<ServiceReload, SetupError> {
        let next = Self::configure(new, offers)?;
        let mut plan = ServiceReload::default();
        for s in &self.services {
            if !next.services.iter().any(|n| n.name == s.name) {
                plan.disabled.push(s.name);
                plan.disabled_alpns.push(s.info.alpn.to_vec());
                continue;
            }
            if old.services.get(s.name) == new.services.get(s.name) {
                continue;
            }
            let ((info, tcp), commit) = s.entry.prepare(new)?;
            if info == s.info && tcp == s.tcp {
                plan.sections.push(s.name);
                plan.commits.push(commit);
            } else {
                plan.declaration_changed.push(s.name);
            }
        }
        plan.need_restart = next
            .services
            .iter()
            .filter(|n| !self.services.iter().any(|s| s.name == n.name))
            .map(|n| n.name)
            .collect();
        Ok(plan)
    }

    /// The peer store behind [`NodeFacts::peers`] (the admin listing of peers).
    pub fn set_peer_store(&mut self, store: Arc<dyn IdentityStore>) {
        self.peer_store = Some(store);
    }

    pub(crate) fn peer_store(&self) -> Option<Arc<dyn IdentityStore>> {
        self.peer_store.clone()
    }

    /// The store whose invites the join service redeems ([`NodeFacts::invites`]).
    pub fn set_invite_store(&mut self, store: Arc<crate::identity::store::RedbStore>) {
        self.invite_store = Some(store);
    }

    pub(crate) fn invite_store(&self) -> Option<Arc<crate::identity::store::RedbStore>> {
        self.invite_store.clone()
    }

    /// The registered services' names and declarations, in offer order.
    pub fn services(&self) -> impl Iterator<Item = (&'static str, ServiceInfo)> + '_ {
        self.services.iter().map(|s| (s.name, s.info))
    }

    /// The ALPNs offered in the handshake, in registration order.
    pub fn alpns(&self) -> Vec<Vec<u8>> {
        self.services.iter().map(|s| s.info.alpn.to_vec()).collect()
    }

    /// True when some service accepts clients without a key (the client certificate is then
    /// optional). A service that serves unknown keys but requires one
    /// ([`Service::requires_client_key`]) keeps certificates required.
    pub fn any_anonymous(&self) -> bool {
        self.services
            .iter()
            .any(|s| s.info.anonymous && !s.requires_key)
    }

    /// The TCP offers of the registered services, each with whether the service serves
    /// clients without a known key.
    pub(crate) fn tcp_offers(&self) -> Vec<(TcpOffer, bool)> {
        self.services
            .iter()
            .filter_map(|s| s.tcp.map(|t| (t, s.info.anonymous && !s.requires_key)))
            .collect()
    }

    /// True when no service is registered.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Builds every service's handler for one shard (on that shard's thread).
    pub(crate) fn instantiate(&self, setup: &ShardSetup) -> Router {
        Router {
            routes: self
                .services
                .iter()
                .map(|s| Route {
                    name: s.name,
                    info: s.info,
                    tcp: s.tcp,
                    handler: s.entry.build(setup),
                })
                .collect(),
            drain: setup.drain.clone(),
            disabled: Vec::new(),
        }
    }
}

/// What a shard gives every service it builds.
pub(crate) struct ShardSetup {
    pub(crate) shard: usize,
    pub(crate) identities: Arc<dyn IdentityProvider>,
    pub(crate) node: Arc<NodeFacts>,
    pub(crate) drain: Drain,
    pub(crate) spawner: Spawner,
    pub(crate) tokio: Arc<SideRuntime>,
    pub(crate) auth_failures: super::context::AuthFailures,
}

impl ShardSetup {
    pub(crate) fn new(
        shard: usize,
        identities: Arc<dyn IdentityProvider>,
        node: Arc<NodeFacts>,
        stats: Arc<ShardStats>,
    ) -> Self {
        Self {
            shard,
            identities,
            node,
            drain: Drain::new(),
            spawner: Spawner::new(stats.clone()),
            tokio: Arc::default(),
            auth_failures: super::context::AuthFailures::new(stats, None),
        }
    }

    /// Counts the failed authentications services report against these per-source
    /// penalties (without them, a report is logged and counted only).
    pub(crate) fn with_penalties(
        mut self,
        admission: Arc<crate::shard::sources::SharedAdmission>,
    ) -> Self {
        self.auth_failures = self.auth_failures.with_penalties(admission);
        self
    }

    /// Shares the node's tokio side runtime with this shard's services (without it they get
    /// one of their own, started only if used).
    pub(crate) fn with_tokio(mut self, tokio: Arc<SideRuntime>) -> Self {
        self.tokio = tokio;
        self
    }
}

/// A handler behind a pointer: [`Handler::handle`] returns an unnamed future.
pub(crate) trait ErasedHandler {
    fn serve(self: Rc<Self>, conn: Connection, auth: AuthContext) -> LocalBoxFuture<()>;
    fn serve_tcp(self: Rc<Self>, stream: TlsStream, auth: AuthContext) -> LocalBoxFuture<()>;
}

impl<H: Handler> ErasedHandler for H {
    fn serve(self: Rc<Self>, conn: Connection, auth: AuthContext) -> LocalBoxFuture<()> {
        Box::pin(<H as Handler>::handle(self, conn, auth))
    }

    fn serve_tcp(self: Rc<Self>, stream: TlsStream, auth: AuthContext) -> LocalBoxFuture<()> {
        Box::pin(<H as Handler>::handle_tcp(self, stream, auth))
    }
}

/// One service on one shard: its declaration and its handler.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) name: &'static str,
    pub(crate) info: ServiceInfo,
    pub(crate) tcp: Option<TcpOffer>,
    pub(crate) handler: Rc<dyn ErasedHandler>,
}

/// One shard's services, by ALPN, and the shard's drain signal.
pub(crate) struct Router {
    routes: Vec<Route>,
    drain: Drain,
    /// ALPNs of services a reload turned off.
    disabled: Vec<Vec<u8>>,
}

impl Router {
    /// The service of a negotiated ALPN, unless a reload turned it off.
    pub(crate) fn get(&self, alpn: &[u8]) -> Option<&Route> {
        if self.is_disabled(alpn) {
            return None;
        }
        self.routes.iter().find(|r| r.info.alpn == alpn)
    }

    /// True when a reload turned off the service of `alpn`.
    pub(crate) fn is_disabled(&self, alpn: &[u8]) -> bool {
        self.disabled.iter().any(|d| d == alpn)
    }

    /// The ALPNs whose services are off from now on (replacing the previous list).
    pub(crate) fn set_disabled(&mut self, alpns: Vec<Vec<u8>>) {
        self.disabled = alpns;
    }

    /// The services reached over TCP, for the shard's TCP accept loops.
    pub(crate) fn tcp_routes(&self) -> Vec<crate::net::tcp::TcpRoute> {
        self.routes
            .iter()
            .filter_map(|r| {
                Some(crate::net::tcp::TcpRoute {
                    name: r.name,
                    offer: r.tcp?,
                    alpn: r.info.alpn,
                    scopes: r.info.scopes,
                    anonymous: r.info.anonymous,
                    handler: r.handler.clone(),
                })
            })
            .collect()
    }

    /// The shard's drain signal.
    pub(crate) fn drain_signal(&self) -> Drain {
        self.drain.clone()
    }

    /// Tells every service of the shard that it is draining (the shard got `Shutdown`).
    pub(crate) fn drain(&self) {
        self.drain.fire();
    }
}
