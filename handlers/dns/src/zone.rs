//! The authoritative zone: `[[dns.records]]` plus the node's own records under
//! `_alknet.<zone>`, and how a question is answered from it (exact names, CNAME chains
//! within the zone, `*` wildcards, NODATA and NXDOMAIN with the zone's SOA).

use alknet_core::config::{DnsName, RecordData, SvcParams, ZoneRecord};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::svcb::{Alpn, IpHint, Mandatory, SVCB, SvcParamKey, SvcParamValue};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HTTPS, MX, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};

/// CNAME links followed within the zone before the answer stops.
const MAX_CHAIN: usize = 8;

/// Negative answers are cached this long (the SOA's minimum).
const NEGATIVE_TTL: u32 = 300;

/// What the node publishes about itself under `_alknet.<zone>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRecords {
    /// `ed25519:…`.
    pub fingerprint: String,
    /// The QUIC port.
    pub port: u16,
    /// The ALPNs served.
    pub alpns: Vec<String>,
}

/// An answer from the zone.
#[derive(Debug, Default)]
pub(crate) struct ZoneAnswer {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA on a negative answer).
    pub authority: Vec<Record>,
}

/// One zone, built once per configuration and shared by every shard.
pub(crate) struct Zone {
    apex: DnsName,
    soa: Record,
    /// Records by owner name (lower case, absolute).
    names: HashMap<String, Vec<Record>>,
    /// Every owner name and every name between one and the apex (empty non-terminals
    /// answer NODATA, not NXDOMAIN).
    exists: HashSet<String>,
}

/// A record's owner as hickory's name; the config checked it, so this only fails on a
/// name hickory reads differently, reported as a skipped record.
fn name_of(n: &DnsName) -> Option<Name> {
    Name::from_ascii(n.as_str()).ok()
}

fn svc_params(p: &SvcParams) -> Vec<(SvcParamKey, SvcParamValue)> {
    let mut out = Vec::new();
    if !p.mandatory.is_empty() {
        let keys = p
            .mandatory
            .iter()
            .filter_map(|k| match k.as_str() {
                "alpn" => Some(SvcParamKey::Alpn),
                "port" => Some(SvcParamKey::Port),
                "ipv4hint" => Some(SvcParamKey::Ipv4Hint),
                "ipv6hint" => Some(SvcParamKey::Ipv6Hint),
                _ => None,
            })
            .collect();
        out.push((
            SvcParamKey::Mandatory,
            SvcParamValue::Mandatory(Mandatory(keys)),
        ));
    }
    if !p.alpn.is_empty() {
        out.push((SvcParamKey::Alpn, SvcParamValue::Alpn(Alpn(p.alpn.clone()))));
    }
    if p.no_default_alpn {
        out.push((SvcParamKey::NoDefaultAlpn, SvcParamValue::NoDefaultAlpn));
    }
    if let Some(port) = p.port {
        out.push((SvcParamKey::Port, SvcParamValue::Port(port)));
    }
    if !p.ipv4hint.is_empty() {
        let hints = p.ipv4hint.iter().map(|a| A(*a)).collect();
        out.push((
            SvcParamKey::Ipv4Hint,
            SvcParamValue::Ipv4Hint(IpHint(hints)),
        ));
    }
    if !p.ipv6hint.is_empty() {
        let hints = p.ipv6hint.iter().map(|a| AAAA(*a)).collect();
        out.push((
            SvcParamKey::Ipv6Hint,
            SvcParamValue::Ipv6Hint(IpHint(hints)),
        ));
    }
    out
}

/// TXT text split into the 255-byte strings the wire carries (at a character boundary).
pub(crate) fn txt_of(text: &str) -> TXT {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(255);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head.to_owned());
        rest = tail;
    }
    if parts.is_empty() {
        parts.push(String::new());
    }
    TXT::new(parts)
}

/// The hickory record of a checked zone record.
pub(crate) fn record_of(r: &ZoneRecord) -> Option<Record> {
    let data = match &r.data {
        RecordData::A(a) => RData::A(A(*a)),
        RecordData::Aaaa(a) => RData::AAAA(AAAA(*a)),
        RecordData::Txt(t) => RData::TXT(txt_of(t)),
        RecordData::Cname(n) => RData::CNAME(CNAME(name_of(n)?)),
        RecordData::Mx {
            preference,
            exchange,
        } => RData::MX(MX::new(*preference, name_of(exchange)?)),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name_of(target)?)),
        RecordData::Svcb {
            https,
            priority,
            target,
            params,
        } => {
            let svcb = SVCB::new(*priority, name_of(target)?, svc_params(params));
            if *https {
                RData::HTTPS(HTTPS(svcb))
            } else {
                RData::SVCB(svcb)
            }
        }
    };
    Some(Record::from_rdata(name_of(&r.name)?, r.ttl, data))
}

/// The node's own records: `_alknet.<apex>` SVCB (port, ALPNs) and TXT (`fp=…`).
pub(crate) fn node_records(apex: &DnsName, node: &NodeRecords) -> Vec<ZoneRecord> {
    let Ok(owner) = DnsName::parse(&format!("_alknet.{apex}")) else {
        return Vec::new();
    };
    let alpn: Vec<String> = node
        .alpns
        .iter()
        .filter(|a| !a.is_empty() && a.len() <= 255 && !a.contains(','))
        .cloned()
        .collect();
    let root = DnsName::parse(".").ok();
    let mut out = vec![ZoneRecord {
        name: owner.clone(),
        ttl: 300,
        data: RecordData::Txt(format!("fp={}", node.fingerprint)),
    }];
    if let Some(target) = root {
        out.push(ZoneRecord {
            name: owner,
            ttl: 300,
            data: RecordData::Svcb {
                https: false,
                priority: 1,
                target,
                params: SvcParams {
                    alpn,
                    port: Some(node.port),
                    ..SvcParams::default()
                },
            },
        });
    }
    out
}

/// A name as the zone's map keys it: lower case, absolute.
pub(crate) fn key_of(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

impl Zone {
    /// The zone at `apex` holding `records` (those outside the apex are skipped; the
    /// config check refuses them already).
    pub(crate) fn new(apex: DnsName, records: &[ZoneRecord]) -> Self {
        let apex_name = name_of(&apex).unwrap_or_else(Name::root);
        let host = Name::from_ascii("hostmaster").ok();
        let rname = host
            .and_then(|h| h.append_domain(&apex_name).ok())
            .unwrap_or_else(|| apex_name.clone());
        // The serial moves when the records do: a hash of their text, as a u32.
        let serial = records.iter().fold(2_166_136_261u32, |h, r| {
            format!("{r:?}")
                .bytes()
                .fold(h, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619))
        });
        let soa = Record::from_rdata(
            apex_name.clone(),
            NEGATIVE_TTL,
            RData::SOA(SOA::new(
                apex_name.clone(),
                rname,
                serial,
                3600,
                600,
                86_400,
                NEGATIVE_TTL,
            )),
        );
        let mut names: HashMap<String, Vec<Record>> = HashMap::new();
        let mut exists = HashSet::new();
        exists.insert(apex.as_str().to_owned());
        names
            .entry(apex.as_str().to_owned())
            .or_default()
            .push(soa.clone());
        for r in records.iter().filter(|r| r.name.is_within(&apex)) {
            let Some(record) = record_of(r) else {
                tracing::warn!(name = %r.name, "dns: a record hickory cannot encode was skipped");
                continue;
            };
            let key = r.name.as_str().to_owned();
            // The owner and every name between it and the apex exist.
            let mut n = key.as_str();
            while n.len() > apex.as_str().len() {
                exists.insert(n.to_owned());
                match n.split_once('.') {
                    Some((_, rest)) => n = rest,
                    None => break,
                }
            }
            names.entry(key).or_default().push(record);
        }
        Self {
            apex,
            soa,
            names,
            exists,
        }
    }

    /// Whether `name` (a key: lower case, absolute) lies in this zone.
    pub(crate) fn contains(&self, key: &str) -> bool {
        let apex = self.apex.as_str();
        apex == "." || key == apex || key.strip_suffix(apex).is_some_and(|h| h.ends_with('.'))
    }

    /// The records at `key`, or at the wildcard covering it (renamed to `qname`).
    fn at(&self, key: &str, qname: &Name) -> Option<Vec<Record>> {
        if let Some(rs) = self.names.get(key) {
            return Some(rs.clone());
        }
        if self.exists.contains(key) {
            return Some(Vec::new());
        }
        // The closest encloser's wildcard: strip labels until a name that exists.
        let mut n = key;
        while let Some((_, parent)) = n.split_once('.') {
            if parent.is_empty() || !self.contains(parent) {
                break;
            }
            if self.exists.contains(parent) || parent == self.apex.as_str() {
                let wild = format!("*.{parent}");
                return self.names.get(&wild).map(|rs| {
                    rs.iter()
                        .map(|r| {
                            let mut r = r.clone();
                            r.name = qname.clone();
                            r
                        })
                        .collect()
                });
            }
            n = parent;
        }
        None
    }

    /// Answers `qname`/`qtype`, which must lie in the zone.
    pub(crate) fn answer(&self, qname: &Name, qtype: RecordType) -> ZoneAnswer {
        let mut out = ZoneAnswer::default();
        let mut name = qname.clone();
        for _ in 0..MAX_CHAIN {
            let key = key_of(&name);
            if !self.contains(&key) {
                // A CNAME out of the zone: the client resolves the rest.
                return out;
            }
            let Some(records) = self.at(&key, &name) else {
                if out.answers.is_empty() {
                    out.rcode = ResponseCode::NXDomain;
                }
                out.authority.push(self.soa.clone());
                return out;
            };
            let cname = records
                .iter()
                .find(|r| r.record_type() == RecordType::CNAME);
            match cname {
                Some(c) if qtype != RecordType::CNAME && qtype != RecordType::ANY => {
                    out.answers.push(c.clone());
                    match &c.data {
                        RData::CNAME(CNAME(target)) => name = target.clone(),
                        _ => return out,
                    }
                }
                _ => {
                    let matching: Vec<Record> = records
                        .into_iter()
                        .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                        .collect();
                    if matching.is_empty() {
                        out.authority.push(self.soa.clone());
                    }
                    out.answers.extend(matching);
                    return out;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alknet_core::config::DnsRecordEntry;

    fn zone() -> Zone {
        let apex = DnsName::parse("gw.example.").unwrap();
        let entries = [
            ("www.gw.example.", "A", "192.0.2.10"),
            ("www.gw.example.", "AAAA", "2001:db8::10"),
            ("alias.gw.example.", "CNAME", "www.gw.example."),
            ("out.gw.example.", "CNAME", "elsewhere.test."),
            ("*.apps.gw.example.", "A", "192.0.2.20"),
            ("a.b.deep.gw.example.", "TXT", "deep"),
        ];
        let mut records: Vec<ZoneRecord> = entries
            .iter()
            .map(|(n, t, v)| {
                DnsRecordEntry {
                    name: (*n).into(),
                    kind: (*t).into(),
                    value: (*v).into(),
                    ttl: 60,
                }
                .parse()
                .unwrap()
            })
            .collect();
        records.extend(node_records(
            &apex,
            &NodeRecords {
                fingerprint: "ed25519:abc".into(),
                port: 4433,
                alpns: vec!["doq".into(), "alknet/call".into()],
            },
        ));
        Zone::new(apex, &records)
    }

    fn q(zone: &Zone, name: &str, t: RecordType) -> ZoneAnswer {
        zone.answer(&Name::from_ascii(name).unwrap(), t)
    }

    #[test]
    fn exact_names_cname_chains_wildcards_and_negative_answers() {
        let z = zone();
        let a = q(&z, "WWW.gw.example.", RecordType::A);
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 1));
        let a = q(&z, "alias.gw.example.", RecordType::AAAA);
        assert_eq!(a.answers.len(), 2, "CNAME then the AAAA: {:?}", a.answers);
        let a = q(&z, "out.gw.example.", RecordType::A);
        assert_eq!(a.answers.len(), 1);
        let a = q(&z, "x.apps.gw.example.", RecordType::A);
        assert_eq!(
            a.answers[0].name,
            Name::from_ascii("x.apps.gw.example.").unwrap()
        );
        let a = q(&z, "www.gw.example.", RecordType::MX);
        assert_eq!(
            (a.rcode, a.answers.len(), a.authority.len()),
            (ResponseCode::NoError, 0, 1)
        );
        let a = q(&z, "b.deep.gw.example.", RecordType::A);
        assert_eq!(
            a.rcode,
            ResponseCode::NoError,
            "an empty non-terminal is NODATA"
        );
        let a = q(&z, "nope.gw.example.", RecordType::A);
        assert_eq!((a.rcode, a.authority.len()), (ResponseCode::NXDomain, 1));
        let a = q(&z, "gw.example.", RecordType::SOA);
        assert_eq!(a.answers.len(), 1);
        let a = q(&z, "_alknet.gw.example.", RecordType::SVCB);
        assert_eq!(a.answers.len(), 1);
        let a = q(&z, "_alknet.gw.example.", RecordType::TXT);
        assert!(a.answers[0].data.to_string().contains("fp=ed25519:abc"));
    }

    #[test]
    fn long_text_is_split_at_255_bytes() {
        let t = txt_of(&"é".repeat(300));
        assert!(t.txt_data.iter().all(|p| p.len() <= 255));
        assert_eq!(t.txt_data.iter().map(|p| p.len()).sum::<usize>(), 600);
    }
}
