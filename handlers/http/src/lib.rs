//! Alknet HTTP gateway: the node's call operations for browsers, curl, scripts and AI tools.
//!
//! The same operations `alknet/call` serves, with the same scopes, reached as REST
//! (`POST /api/call/{id}`), Server-Sent Events (`GET /api/subscribe/{id}`), batches, an
//! OpenAPI 3.1 document generated from the registry, and MCP tools (streamable HTTP
//! transport at `/mcp`). Transports: HTTP/1.1 and h2 on the node's TCP+TLS listener
//! ([`alknet_core::net::tcp`], the same port number as QUIC by default). Everything runs on
//! the shard that accepted the connection: hyper is driven by the shard's ring, and an
//! operation is called in place ([`alknet_call::Operations::invoke`]), with no hop to another
//! thread.
//!
//! Authentication: `Authorization: Bearer alk_…` (an API token of the identity store: its
//! scopes, within its peer's, and its expiry), or the client certificate of a known peer.
//! `/healthz` needs neither; `/api/*`, `/openapi.json` and `/mcp` need the `call` scope,
//! then each operation its own.
#![forbid(unsafe_code)]
// A refused request returns its response as the error, once per request: boxing it gains nothing.
#![allow(clippy::result_large_err)]

mod api;
mod auth;
mod body;
mod config;
#[cfg(feature = "dns")]
mod dns;
mod h3_server;
mod mcp;
mod openapi;
mod tcp;
mod ui;
mod ws;

pub use config::HttpSettings;

use alknet_call::Operations;
use alknet_core::service::TcpOffer;
use alknet_core::{AuthContext, Connection, Handler, Service, ServiceContext, ServiceInfo};
use std::rc::Rc;
use std::sync::Arc;

/// The ALPN of HTTP/3 on the QUIC port.
pub const ALPN_H3: &[u8] = b"h3";

/// The ALPNs served on the TCP+TLS listener, in preference order.
pub const TCP_ALPNS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The scope the API routes and MCP need (each operation may need its own besides).
pub const SCOPE: &str = "call";

/// The HTTP gateway service, `[services.http]`.
#[derive(Clone, Default)]
pub struct HttpService {
    operations: Operations,
    shared: Arc<api::Shared>,
    #[cfg(feature = "dns")]
    dns: Option<alknet_dns::Dns>,
}

impl HttpService {
    /// The gateway serving `operations` (the node's own, besides the built-ins).
    pub fn new(operations: Operations) -> Self {
        Self {
            operations,
            shared: Arc::default(),
            #[cfg(feature = "dns")]
            dns: None,
        }
    }

    /// The same gateway also serving DoH (`/dns-query`) and the pkarr relay (`/<z32>`)
    /// from the node's DNS.
    #[cfg(feature = "dns")]
    pub fn with_dns(mut self, dns: alknet_dns::Dns) -> Self {
        self.dns = Some(dns);
        self
    }
}

impl Service for HttpService {
    const NAME: &'static str = "http";
    type Config = HttpSettings;
    type Handler = HttpHandler;

    fn info(&self, _config: &HttpSettings) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN_H3,
            // Browsers and curl present no client key: the gateway authenticates each
            // request itself (token or known key), so the handshake lets them in.
            scopes: &[],
            anonymous: true,
            uni_streams: true,
        }
    }

    fn enabled_by_default(&self, _config: &HttpSettings) -> bool {
        false
    }

    fn anonymous_note(&self, _config: &HttpSettings) -> Option<&'static str> {
        Some("every request but /healthz needs an API token or a known client key")
    }

    fn tcp(&self, config: &HttpSettings) -> Option<TcpOffer> {
        Some(TcpOffer {
            listen: config.tcp_listen,
            alpns: TCP_ALPNS,
        })
    }

    fn build(&self, ctx: &ServiceContext<'_, HttpSettings>) -> HttpHandler {
        let ops = match alknet_call::node_operations(ctx.node().clone(), &self.operations) {
            Ok(ops) => ops,
            Err(e) => {
                tracing::error!(error = %e, "http service: operations left out");
                Operations::new()
            }
        };
        HttpHandler {
            gate: Rc::new(api::Gateway {
                ops,
                identities: ctx.identities().clone(),
                failures: ctx.auth_failures(),
                node: ctx.node().clone(),
                settings: ctx.config_watch(),
                shared: self.shared.clone(),
                spawner: ctx.spawner(),
                drain: ctx.drain(),
                #[cfg(feature = "dns")]
                dns: self.dns.clone(),
            }),
        }
    }
}

/// The gateway on one shard.
pub struct HttpHandler {
    gate: Rc<api::Gateway>,
}

impl Handler for HttpHandler {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        h3_server::serve(self.gate.clone(), conn, auth).await;
    }

    fn handle_tcp(
        self: Rc<Self>,
        stream: alknet_core::net::tcp::TlsStream,
        auth: AuthContext,
    ) -> impl std::future::Future<Output = ()> + 'static {
        tcp::serve(self.gate.clone(), stream, auth)
    }
}
