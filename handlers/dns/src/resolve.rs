//! Answering one DNS message, whatever carried it (DoQ, DoH): from the zone, from the
//! pkarr store, from the upstream resolver (with the cache), or REFUSED.

use crate::config::DnsSettings;
use crate::forward::{self, Cache};
use crate::limit::{Admit, Limiter};
use crate::pkarr::{self, PkarrStore};
use crate::zone::{NodeRecords, Zone, key_of};
use alknet_core::config::ZoneRecord;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, RecordType};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Largest DNS message a client may send (a query is a few hundred bytes; 4 KiB leaves
/// room for EDNS padding and cookies).
pub const MAX_QUERY: usize = 4096;

/// The EDNS payload size the node advertises (it answers only over streams).
const EDNS_PAYLOAD: u16 = 4096;

struct State {
    settings: DnsSettings,
    zone: Option<Zone>,
    cache: Arc<Cache>,
    /// The zone's encoded answers, by question ([`WireKey`]): a repeated question is
    /// answered by copying bytes instead of building and encoding a message. Cleared with
    /// the zone (a new `State` on every reconfiguration).
    wire: RwLock<HashMap<WireKey, Arc<[u8]>>>,
}

/// Encoded zone answers kept at most (names that exist, times the types asked; NXDOMAIN
/// for random names stops being kept once this is full).
const MAX_WIRE_ANSWERS: usize = 4096;

/// What an encoded answer depends on: the question as sent but in lower case (its wire
/// bytes: name, type, class), and the header bits echoed (RD, CD) and whether the query
/// had EDNS.
#[derive(Clone, PartialEq, Eq, Hash)]
struct WireKey {
    question: Box<[u8]>,
    flags: u8,
}

/// The end of the (one) question of a wire query, when its name is written without
/// compression (as every client writes it).
fn question_end(query: &[u8]) -> Option<usize> {
    let mut at = 12usize;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            let end = at + 1 + 4;
            return (end <= query.len()).then_some(end);
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
}

struct Inner {
    state: RwLock<Arc<State>>,
    records: Mutex<Vec<ZoneRecord>>,
    node: OnceLock<NodeRecords>,
    pkarr: Arc<PkarrStore>,
    limiter: Limiter,
}

/// The node's DNS: zone, pkarr store, forwarding and limits, shared by every shard and by
/// the HTTP gateway (DoH, the pkarr relay).
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

/// Why a message could not be answered at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswerable {
    /// The bytes are not a DNS message (DoQ: a protocol error; DoH: 400).
    #[error("not a DNS message: {0}")]
    Malformed(String),
    /// The source is far over its budget (DoQ: `DOQ_EXCESSIVE_LOAD`; DoH: 429).
    #[error("too many queries from this source")]
    Excess,
}

impl Dns {
    /// The DNS of a node with `settings`, the zone's `records` (checked by the config) and
    /// the pkarr relay's `store`.
    pub fn new(settings: DnsSettings, records: Vec<ZoneRecord>, store: Arc<PkarrStore>) -> Self {
        let dns = Self {
            inner: Arc::new(Inner {
                state: RwLock::new(Arc::new(State {
                    wire: RwLock::new(HashMap::new()),
                    zone: None,
                    cache: Arc::new(Cache::new(settings.cache_entries)),
                    settings: settings.clone(),
                })),
                records: Mutex::new(Vec::new()),
                node: OnceLock::new(),
                pkarr: store,
                limiter: Limiter::new(),
            }),
        };
        dns.reconfigure(settings, records);
        dns
    }

    /// Takes new settings and records (a reload); the cache is kept unless its size moved.
    pub fn reconfigure(&self, settings: DnsSettings, records: Vec<ZoneRecord>) {
        *self.inner.records.lock().unwrap_or_else(|p| p.into_inner()) = records;
        let old = self.state();
        let cache = if old.settings.cache_entries == settings.cache_entries {
            old.cache.clone()
        } else {
            Arc::new(Cache::new(settings.cache_entries))
        };
        let zone = self.build_zone(&settings);
        *self.inner.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(State {
            wire: RwLock::new(HashMap::new()),
            settings,
            zone,
            cache,
        });
    }

    fn build_zone(&self, settings: &DnsSettings) -> Option<Zone> {
        let apex = settings.zone.clone()?;
        let mut records = self
            .inner
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(node) = self.inner.node.get() {
            records.extend(crate::zone::node_records(&apex, node));
        }
        Some(Zone::new(apex, &records))
    }

    /// Records what the node serves (once, from the first shard built), for `_alknet`.
    pub(crate) fn set_node(&self, node: NodeRecords) {
        if self.inner.node.set(node).is_ok() {
            let settings = self.state().settings.clone();
            let records = self
                .inner
                .records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.reconfigure(settings, records);
        }
    }

    fn state(&self) -> Arc<State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> DnsSettings {
        self.state().settings.clone()
    }

    /// The pkarr relay's store.
    pub fn pkarr(&self) -> &Arc<PkarrStore> {
        &self.inner.pkarr
    }

    /// Takes one query from `source`'s budget.
    pub fn admit(&self, source: IpAddr) -> Admit {
        let s = self.state();
        self.inner
            .limiter
            .admit(source, s.settings.queries_per_second, s.settings.burst)
    }

    /// Answers the wire-format `query` from `source` (DoH): the answer's bytes and the
    /// smallest TTL in it (for `Cache-Control`).
    pub async fn resolve_wire(
        &self,
        query: &[u8],
        source: IpAddr,
    ) -> Result<(Vec<u8>, u32), Unanswerable> {
        let message = decode(query)?;
        let admit = self.admit(source);
        let answer = match admit {
            Admit::Excess => return Err(Unanswerable::Excess),
            Admit::Refuse => refused(&message),
            Admit::Yes => self.respond(&message).await,
        };
        let ttl = answer
            .answers
            .iter()
            .chain(answer.authorities.iter())
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
        Ok((encode(&answer), ttl))
    }

    /// The encoded answer to `query`, whose wire form is `bytes`: a zone answer asked
    /// before is copied from its encoding (with this query's ID and question as sent).
    pub async fn respond_wire(&self, bytes: &[u8], query: &Message) -> Vec<u8> {
        let plain_edns = query
            .edns
            .as_ref()
            .is_none_or(|e| e.version() == 0 && e.option(EdnsCode::Padding).is_none());
        let end = question_end(bytes).filter(|_| {
            plain_edns && query.queries.len() == 1 && query.metadata.op_code == OpCode::Query
        });
        let Some(end) = end else {
            return encode(&self.respond(query).await);
        };
        let key = WireKey {
            question: bytes[12..end].to_ascii_lowercase().into_boxed_slice(),
            flags: u8::from(query.metadata.recursion_desired)
                | u8::from(query.metadata.checking_disabled) << 1
                | u8::from(query.edns.is_some()) << 2,
        };
        let state = self.state();
        let hit = state
            .wire
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let stamp = |template: &[u8]| {
            let mut out = Vec::with_capacity(template.len());
            out.extend_from_slice(&query.metadata.id.to_be_bytes());
            out.extend_from_slice(template.get(2..12).unwrap_or_default());
            out.extend_from_slice(&bytes[12..end]);
            out.extend_from_slice(template.get(end..).unwrap_or_default());
            out
        };
        if let Some(template) = hit {
            return stamp(&template);
        }
        let answer = self.respond(query).await;
        let wire = encode(&answer);
        // Only the zone's own answers are kept: they change with the zone alone.
        if answer.metadata.authoritative && wire.len() >= end {
            let mut map = state.wire.write().unwrap_or_else(|p| p.into_inner());
            if map.len() < MAX_WIRE_ANSWERS {
                map.insert(key, Arc::from(wire.as_slice()));
            }
        }
        wire
    }

    /// The answer to `query` (padded when it asked for padding).
    pub async fn respond(&self, query: &Message) -> Message {
        let mut resp = self.answer(query).await;
        pad(query, &mut resp);
        resp
    }

    async fn answer(&self, query: &Message) -> Message {
        let mut resp = reply(query);
        if query.metadata.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
            return resp;
        }
        if let Some(edns) = &query.edns
            && edns.version() != 0
        {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return resp;
        }
        let [q] = query.queries.as_slice() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        if q.query_class() != DNSClass::IN
            || matches!(
                q.query_type(),
                RecordType::AXFR | RecordType::IXFR | RecordType::OPT
            )
        {
            resp.metadata.response_code = ResponseCode::Refused;
            return resp;
        }
        let state = self.state();
        let key = key_of(q.name());
        if let Some(zone) = state.zone.as_ref().filter(|z| z.contains(&key)) {
            let a = zone.answer(q.name(), q.query_type());
            resp.metadata.authoritative = true;
            resp.metadata.response_code = a.rcode;
            resp.answers = a.answers;
            resp.authorities = a.authority;
            return resp;
        }
        let tld = q
            .name()
            .iter()
            .next_back()
            .and_then(|l| std::str::from_utf8(l).ok())
            .map(str::to_ascii_lowercase);
        if let Some(tld) = tld.filter(|t| pkarr::parse_key(t).is_some()) {
            match self.inner.pkarr.get(&tld) {
                Some(stored) => {
                    resp.answers = stored.answer(q.name(), q.query_type());
                    if resp.answers.is_empty() && !stored.has_name(q.name()) {
                        resp.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                None => resp.metadata.response_code = ResponseCode::NXDomain,
            }
            return resp;
        }
        let Some(upstream) = state
            .settings
            .upstream
            .filter(|_| query.metadata.recursion_desired)
        else {
            resp.metadata.response_code = ResponseCode::Refused;
            return resp;
        };
        resp.metadata.recursion_available = true;
        let got = match state.cache.get(q) {
            Some(hit) => Ok(hit),
            // Boxed: the forwarding future is large and rare; unboxed it would make every
            // query's task as large as the forwarding path.
            None => Box::pin(forward::ask(upstream, state.settings.upstream_timeout, q))
                .await
                .inspect(|a| state.cache.put(q, a)),
        };
        match got {
            Ok(a) => {
                resp.metadata.response_code = a.rcode;
                resp.answers = a.answers;
                resp.authorities = a.authority;
            }
            Err(e) => {
                tracing::debug!(error = %e, %upstream, "dns: forwarding failed");
                resp.metadata.response_code = ResponseCode::ServFail;
            }
        }
        resp
    }
}

/// Decodes a query; anything that is not a query message is malformed.
pub(crate) fn decode(bytes: &[u8]) -> Result<Message, Unanswerable> {
    if bytes.len() > MAX_QUERY {
        return Err(Unanswerable::Malformed(format!(
            "{} bytes; a query is at most {MAX_QUERY}",
            bytes.len()
        )));
    }
    let m = Message::from_vec(bytes).map_err(|e| Unanswerable::Malformed(e.to_string()))?;
    if m.metadata.message_type != MessageType::Query {
        return Err(Unanswerable::Malformed("a response, not a query".into()));
    }
    Ok(m)
}

/// The skeleton of the answer to `query`: its ID, opcode, RD and question; EDNS when it
/// used EDNS.
fn reply(query: &Message) -> Message {
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.checking_disabled = query.metadata.checking_disabled;
    resp.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.edns = Some(edns);
    }
    resp
}

/// Responses to queries that carry the EDNS(0) padding option are padded to a multiple of
/// this (RFC 8467's recommended block), so their size says little about the name asked.
const PADDING_BLOCK: usize = 468;

/// Pads `resp` (the answer to `query`) when `query` asked for padding.
pub(crate) fn pad(query: &Message, resp: &mut Message) {
    let asked = query
        .edns
        .as_ref()
        .is_some_and(|e| e.option(EdnsCode::Padding).is_some());
    if !asked || resp.edns.is_none() {
        return;
    }
    let Ok(bare) = resp.to_vec() else {
        return;
    };
    // The option's own header is 4 bytes (code, length).
    let unpadded = bare.len() + 4;
    let target = unpadded.div_ceil(PADDING_BLOCK) * PADDING_BLOCK;
    if let Some(edns) = resp.edns.as_mut() {
        edns.options_mut().insert(EdnsOption::Unknown(
            u16::from(EdnsCode::Padding),
            vec![0; target - unpadded],
        ));
    }
}

/// REFUSED for `query` (a source over its budget).
pub(crate) fn refused(query: &Message) -> Message {
    let mut resp = reply(query);
    resp.metadata.response_code = ResponseCode::Refused;
    pad(query, &mut resp);
    resp
}

/// The wire form of `m`; SERVFAIL when it cannot be encoded (a record hickory refuses).
pub(crate) fn encode(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "dns: an answer could not be encoded");
        let mut fail = Message::response(m.metadata.id, m.metadata.op_code);
        fail.queries = m.queries.clone();
        fail.metadata.response_code = ResponseCode::ServFail;
        fail.to_vec().unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alknet_core::config::{DnsName, DnsRecordEntry};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn dns() -> Dns {
        let record = DnsRecordEntry {
            name: "www.gw.example.".into(),
            kind: "A".into(),
            value: "192.0.2.10".into(),
            ttl: 300,
        }
        .parse()
        .unwrap();
        let settings = DnsSettings {
            zone: Some(DnsName::parse("gw.example.").unwrap()),
            ..DnsSettings::default()
        };
        Dns::new(settings, vec![record], Arc::new(PkarrStore::in_memory(1)))
    }

    fn ask(dns: &Dns, name: &str, id: u16) -> Message {
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let bytes = q.to_vec().unwrap();
        let wire = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .build()
            .unwrap()
            .block_on(dns.respond_wire(&bytes, &q));
        Message::from_vec(&wire).unwrap()
    }

    #[test]
    fn a_repeated_question_is_answered_from_its_encoding_with_the_askers_id_and_case() {
        let d = dns();
        let first = ask(&d, "www.gw.example.", 0);
        assert_eq!(d.state().wire.read().unwrap().len(), 1);
        let again = ask(&d, "WwW.Gw.ExAmPlE.", 7);
        assert_eq!(again.metadata.id, 7);
        assert_eq!(again.queries[0].name().to_ascii(), "WwW.Gw.ExAmPlE.");
        assert_eq!(again.answers, first.answers);
        assert_eq!(
            d.state().wire.read().unwrap().len(),
            1,
            "one entry for both spellings"
        );
        // A reconfiguration starts again from the new zone.
        d.reconfigure(d.settings(), Vec::new());
        assert_eq!(
            ask(&d, "www.gw.example.", 0).metadata.response_code,
            ResponseCode::NXDomain
        );
    }
}
