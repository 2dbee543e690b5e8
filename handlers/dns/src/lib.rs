//! Alknet DNS service: DNS over QUIC (RFC 9250, ALPN `doq`) on the node's QUIC port.
//!
//! It answers authoritatively for one zone (`zone` under `[services.dns]`, records in
//! `[[dns.records]]`), publishes the node's own records under `_alknet.<zone>` (SVCB with
//! the port and the ALPNs served, TXT `fp=ed25519:…`), answers `<z32>` names from the
//! signed pkarr packets its relay holds (verified before they are stored and again when
//! read back), and forwards other names to a configured upstream resolver with a cache.
//! DNS clients present no client certificate, so the service is anonymous; every source
//! address has a query budget. Off unless `[services.dns] enabled = true`.
//!
//! The same [`Dns`] serves DoH (`/dns-query`, RFC 8484) and the pkarr relay API
//! (`GET`/`PUT /<z32>`) through the HTTP gateway when both services are on.
#![forbid(unsafe_code)]

mod config;
pub mod doq;
mod forward;
pub mod fuzzing;
mod limit;
pub mod pkarr;
mod resolve;
mod zone;

pub use config::DnsSettings;
pub use forward::ForwardError;
pub use limit::Admit;
pub use resolve::{Dns, MAX_QUERY, Unanswerable};
pub use zone::NodeRecords;

use alknet_core::{AuthContext, Connection, Handler, Service, ServiceContext, ServiceInfo};
use std::rc::Rc;
use std::sync::Arc;

/// The ALPN of DNS over QUIC.
pub const ALPN: &[u8] = b"doq";

/// The DNS service, `[services.dns]`.
#[derive(Clone, Default)]
pub struct DnsService {
    dns: Option<Dns>,
}

impl DnsService {
    /// The service answering from `dns` (the node's zone, pkarr store and limits).
    pub fn new(dns: Dns) -> Self {
        Self { dns: Some(dns) }
    }
}

/// What the node serves, for `_alknet` and its pkarr packet.
pub fn node_records(node: &alknet_core::service::NodeFacts) -> NodeRecords {
    NodeRecords {
        fingerprint: node.fingerprint().to_string(),
        port: node.quic_addr().map(|a| a.port()).unwrap_or(0),
        alpns: node
            .alpns()
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    }
}

impl Service for DnsService {
    const NAME: &'static str = "dns";
    type Config = DnsSettings;
    type Handler = DnsHandler;

    fn info(&self, _config: &DnsSettings) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: &[],
            anonymous: true,
            // Uni streams are a DoQ protocol error: the handler accepts them to close the
            // connection with DOQ_PROTOCOL_ERROR.
            uni_streams: true,
        }
    }

    fn enabled_by_default(&self, _config: &DnsSettings) -> bool {
        false
    }

    fn anonymous_note(&self, _config: &DnsSettings) -> Option<&'static str> {
        Some(
            "DNS clients present no key: answers are public, and each source address has a query budget",
        )
    }

    fn build(&self, ctx: &ServiceContext<'_, DnsSettings>) -> DnsHandler {
        let dns = self.dns.clone().unwrap_or_else(|| {
            let store = Arc::new(pkarr::PkarrStore::in_memory(ctx.config().max_pkarr_packets));
            Dns::new(ctx.config().clone(), Vec::new(), store)
        });
        dns.set_node(node_records(ctx.node()));
        DnsHandler { dns }
    }
}

/// The DNS service on one shard.
pub struct DnsHandler {
    dns: Dns,
}

impl Handler for DnsHandler {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        doq::serve(self.dns.clone(), conn, auth.remote_addr.ip()).await;
    }
}
