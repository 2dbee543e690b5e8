//! `[[dns.records]]`: the authoritative zone the DNS service (`alknet-dns`) answers for.
//! The zone's apex is `zone` under `[services.dns]`; every record must lie within it.
//!
//! ```toml
//! [services.dns]
//! enabled = true
//! zone = "gw.example."
//!
//! [[dns.records]]
//! name = "www.gw.example."
//! type = "A"               # A, AAAA, TXT, CNAME, MX, SRV, SVCB, HTTPS
//! value = "192.0.2.10"
//! ttl = 300
//! ```
//!
//! Values, by type: `A` and `AAAA` an address; `TXT` any text (split into 255-byte strings
//! on the wire); `CNAME` a name; `MX` `"PREFERENCE EXCHANGE"`; `SRV`
//! `"PRIORITY WEIGHT PORT TARGET"`; `SVCB` and `HTTPS` `"PRIORITY TARGET [key=value…]"`
//! with the keys `alpn=h3,h2`, `port=443`, `ipv4hint=…`, `ipv6hint=…`, `no-default-alpn`
//! (RFC 9460 presentation form). A name's first label may be `*` (a wildcard). Everything is
//! parsed here, when the file is read, so a typo is an error naming its file, line and key.

use serde::Deserialize;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest TXT value accepted (16 strings of 255 bytes: far above any sane record).
pub const MAX_TXT_LEN: usize = 4080;

/// Records in one zone, at most.
pub const MAX_RECORDS: usize = 10_000;

/// The `[dns]` section.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsZoneConfig {
    /// The zone's records (`[[dns.records]]`).
    pub records: Vec<DnsRecordEntry>,
}

/// One `[[dns.records]]` table as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecordEntry {
    /// The owner name, e.g. `www.gw.example.` (the trailing dot may be left out).
    pub name: String,
    /// The record type: `A`, `AAAA`, `TXT`, `CNAME`, `MX`, `SRV`, `SVCB` or `HTTPS`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The record's data in the type's presentation form.
    pub value: String,
    /// Seconds resolvers may cache the record (0..=604800; default 300).
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_ttl() -> u32 {
    300
}

/// A checked domain name: lower case, absolute (ending in a dot), labels of 1..=63 bytes
/// of letters, digits, `-` and `_` (the first may be `*`), at most 253 bytes without the
/// final dot. The root is `.`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName(String);

impl DnsName {
    /// Checks and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.strip_suffix('.').unwrap_or(s);
        if t.is_empty() {
            return if s == "." {
                Ok(Self(".".into()))
            } else {
                Err("an empty name (the root is written `.`)".into())
            };
        }
        if t.len() > 253 {
            let head: String = t.chars().take(40).collect();
            return Err(format!(
                "`{}…` is longer than 253 bytes",
                head.escape_default()
            ));
        }
        for (i, label) in t.split('.').enumerate() {
            let ok = !label.is_empty()
                && label.len() <= 63
                && (label == "*" && i == 0
                    || label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !ok {
                return Err(format!(
                    "`{}` is not a domain name (labels of 1 to 63 letters, digits, `-` or `_`, \
                     a `*` only as the first label)",
                    s.escape_default()
                ));
            }
        }
        Ok(Self(format!("{}.", t.to_ascii_lowercase())))
    }

    /// The name as text, ending in a dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this name is `zone` or lies under it.
    pub fn is_within(&self, zone: &DnsName) -> bool {
        zone.0 == "."
            || self.0 == zone.0
            || self
                .0
                .strip_suffix(&zone.0)
                .is_some_and(|head| head.ends_with('.'))
    }

    /// Whether the first label is `*`.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DnsName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DnsName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The service parameters of an SVCB or HTTPS record (RFC 9460), those the zone accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SvcParams {
    /// `mandatory=…`: keys a client must understand.
    pub mandatory: Vec<String>,
    /// `alpn=…`.
    pub alpn: Vec<String>,
    /// `no-default-alpn`.
    pub no_default_alpn: bool,
    /// `port=…`.
    pub port: Option<u16>,
    /// `ipv4hint=…`.
    pub ipv4hint: Vec<Ipv4Addr>,
    /// `ipv6hint=…`.
    pub ipv6hint: Vec<Ipv6Addr>,
}

/// A record's data, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// Text.
    Txt(String),
    /// An alias.
    Cname(DnsName),
    /// A mail exchanger.
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// The exchanger's name.
        exchange: DnsName,
    },
    /// A service location.
    Srv {
        /// Lower is tried first.
        priority: u16,
        /// Share among equal priorities.
        weight: u16,
        /// The port.
        port: u16,
        /// The host.
        target: DnsName,
    },
    /// A service binding (type 64), or an HTTPS binding (type 65) when `https`.
    Svcb {
        /// HTTPS (65) rather than SVCB (64).
        https: bool,
        /// 0 is alias mode, otherwise service mode and the order of preference.
        priority: u16,
        /// The target name (`.` for the owner itself).
        target: DnsName,
        /// The parameters.
        params: SvcParams,
    },
}

/// One record of the zone, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneRecord {
    /// The owner name.
    pub name: DnsName,
    /// Seconds to cache.
    pub ttl: u32,
    /// The data.
    pub data: RecordData,
}

impl DnsRecordEntry {
    /// Parses the entry; `Err((key, message))`, the key one of `name`, `type`, `value`, `ttl`.
    pub fn parse(&self) -> Result<ZoneRecord, (&'static str, String)> {
        let name = DnsName::parse(&self.name).map_err(|m| ("name", m))?;
        if self.ttl > 604_800 {
            return Err(("ttl", format!("{}; must be 0..=604800 (a week)", self.ttl)));
        }
        let v = self.value.trim();
        let value = |m: String| ("value", m);
        let data = match self.kind.to_ascii_uppercase().as_str() {
            "A" => RecordData::A(
                v.parse()
                    .map_err(|_| value(format!("`{v}` is not an IPv4 address")))?,
            ),
            "AAAA" => RecordData::Aaaa(
                v.parse()
                    .map_err(|_| value(format!("`{v}` is not an IPv6 address")))?,
            ),
            "TXT" => {
                if self.value.len() > MAX_TXT_LEN {
                    return Err(value(format!(
                        "{} bytes of text; at most {MAX_TXT_LEN}",
                        self.value.len()
                    )));
                }
                RecordData::Txt(self.value.clone())
            }
            "CNAME" => RecordData::Cname(DnsName::parse(v).map_err(value)?),
            "MX" => {
                let [pref, exchange] =
                    fields(v, "\"PREFERENCE EXCHANGE\", e.g. \"10 mail.gw.example.\"")
                        .map_err(value)?;
                RecordData::Mx {
                    preference: number(pref, "preference").map_err(value)?,
                    exchange: DnsName::parse(exchange).map_err(value)?,
                }
            }
            "SRV" => {
                let [priority, weight, port, target] = fields(
                    v,
                    "\"PRIORITY WEIGHT PORT TARGET\", e.g. \"10 5 443 www.gw.example.\"",
                )
                .map_err(value)?;
                RecordData::Srv {
                    priority: number(priority, "priority").map_err(value)?,
                    weight: number(weight, "weight").map_err(value)?,
                    port: number(port, "port").map_err(value)?,
                    target: DnsName::parse(target).map_err(value)?,
                }
            }
            kind @ ("SVCB" | "HTTPS") => {
                let mut words = v.split_whitespace();
                let usage = "\"PRIORITY TARGET [key=value…]\", e.g. \"1 . alpn=h3,h2 port=443\"";
                let (Some(priority), Some(target)) = (words.next(), words.next()) else {
                    return Err(value(format!("`{v}`: expected {usage}")));
                };
                let priority = number(priority, "priority").map_err(value)?;
                let target = DnsName::parse(target).map_err(value)?;
                let params = svc_params(words).map_err(value)?;
                if priority == 0 && params != SvcParams::default() {
                    return Err(value(
                        "priority 0 is alias mode, which takes no parameters".into(),
                    ));
                }
                RecordData::Svcb {
                    https: kind == "HTTPS",
                    priority,
                    target,
                    params,
                }
            }
            other => {
                return Err((
                    "type",
                    format!(
                        "`{}` is not a record type the zone serves (A, AAAA, TXT, CNAME, MX, SRV, SVCB, HTTPS)",
                        other.escape_default()
                    ),
                ));
            }
        };
        Ok(ZoneRecord {
            name,
            ttl: self.ttl,
            data,
        })
    }
}

fn fields<'a, const N: usize>(v: &'a str, usage: &str) -> Result<[&'a str; N], String> {
    let words: Vec<&str> = v.split_whitespace().collect();
    <[&str; N]>::try_from(words).map_err(|_| format!("`{v}`: expected {usage}"))
}

fn number(s: &str, what: &str) -> Result<u16, String> {
    s.parse()
        .map_err(|_| format!("{what} `{s}` is not a number 0..=65535"))
}

fn svc_params<'a>(words: impl Iterator<Item = &'a str>) -> Result<SvcParams, String> {
    let mut p = SvcParams::default();
    let list = |s: &'a str| s.split(',').filter(|x| !x.is_empty());
    for word in words {
        let (key, val) = word.split_once('=').unwrap_or((word, ""));
        match key {
            "mandatory" => {
                for k in list(val) {
                    if !matches!(k, "alpn" | "port" | "ipv4hint" | "ipv6hint") {
                        return Err(format!("mandatory key `{k}` is not one the zone serves"));
                    }
                    p.mandatory.push(k.to_owned());
                }
            }
            "alpn" => {
                for a in list(val) {
                    if a.len() > 255 {
                        return Err("an alpn id is at most 255 bytes".into());
                    }
                    p.alpn.push(a.to_owned());
                }
            }
            "no-default-alpn" if val.is_empty() => p.no_default_alpn = true,
            "port" => p.port = Some(number(val, "port")?),
            "ipv4hint" => {
                for a in list(val) {
                    p.ipv4hint.push(
                        a.parse()
                            .map_err(|_| format!("ipv4hint `{a}` is not an IPv4 address"))?,
                    );
                }
            }
            "ipv6hint" => {
                for a in list(val) {
                    p.ipv6hint.push(
                        a.parse()
                            .map_err(|_| format!("ipv6hint `{a}` is not an IPv6 address"))?,
                    );
                }
            }
            _ => {
                return Err(format!(
                    "`{}` is not a service parameter the zone serves (alpn, port, ipv4hint, \
                     ipv6hint, no-default-alpn, mandatory)",
                    word.escape_default()
                ));
            }
        }
    }
    Ok(p)
}

impl DnsZoneConfig {
    /// Parses every record against `zone` (the apex from `[services.dns]`, if written);
    /// `Err((index, key, message))` names the first bad record.
    pub fn parse(
        &self,
        zone: Option<&DnsName>,
    ) -> Result<Vec<ZoneRecord>, (usize, &'static str, String)> {
        if self.records.len() > MAX_RECORDS {
            return Err((
                MAX_RECORDS,
                "name",
                format!("more than {MAX_RECORDS} records in one zone"),
            ));
        }
        let mut out = Vec::with_capacity(self.records.len());
        for (i, entry) in self.records.iter().enumerate() {
            let record = entry.parse().map_err(|(k, m)| (i, k, m))?;
            match zone {
                None => {
                    return Err((
                        i,
                        "name",
                        "records need the zone they belong to: set `zone` under [services.dns]"
                            .into(),
                    ));
                }
                Some(z) if !record.name.is_within(z) => {
                    return Err((
                        i,
                        "name",
                        format!("{} is not within the zone {z}", record.name),
                    ));
                }
                Some(_) => {}
            }
            let cname = matches!(record.data, RecordData::Cname(_));
            if let Some(other) = out.iter().find(|r: &&ZoneRecord| {
                r.name == record.name && (cname || matches!(r.data, RecordData::Cname(_)))
            }) {
                let _ = other;
                return Err((
                    i,
                    "name",
                    format!(
                        "{} has a CNAME and other records; a CNAME must be alone at its name",
                        record.name
                    ),
                ));
            }
            out.push(record);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: &str, value: &str) -> DnsRecordEntry {
        DnsRecordEntry {
            name: name.into(),
            kind: kind.into(),
            value: value.into(),
            ttl: 300,
        }
    }

    #[test]
    fn names_are_normalised_and_garbage_refused() {
        assert_eq!(
            DnsName::parse("WWW.Gw.Example").unwrap().as_str(),
            "www.gw.example."
        );
        assert_eq!(DnsName::parse(".").unwrap().as_str(), ".");
        assert!(DnsName::parse("*.gw.example.").unwrap().is_wildcard());
        let long = format!("a{}.example", "é".repeat(140));
        for bad in [
            "",
            "a..b",
            "a b.c",
            "a.*.c",
            &"x".repeat(64),
            "ü.example",
            &long,
        ] {
            assert!(DnsName::parse(bad).is_err(), "{bad}");
        }
        let zone = DnsName::parse("gw.example.").unwrap();
        assert!(DnsName::parse("a.gw.example").unwrap().is_within(&zone));
        assert!(zone.is_within(&zone));
        assert!(!DnsName::parse("evilgw.example").unwrap().is_within(&zone));
    }

    #[test]
    fn every_type_parses_and_a_bad_value_names_its_key() {
        let ok = [
            ("A", "192.0.2.10"),
            ("AAAA", "2001:db8::1"),
            ("TXT", "hello world"),
            ("CNAME", "www.gw.example."),
            ("MX", "10 mail.gw.example."),
            ("SRV", "10 5 443 www.gw.example."),
            ("SVCB", "1 . alpn=h3,doq port=443 ipv4hint=192.0.2.1"),
            ("HTTPS", "0 www.gw.example."),
        ];
        for (kind, value) in ok {
            entry("x.gw.example.", kind, value).parse().unwrap();
        }
        let bad = [
            ("A", "2001:db8::1", "value"),
            ("MX", "mail.gw.example.", "value"),
            ("SRV", "10 5 99999 a.", "value"),
            ("SVCB", "1 . color=blue", "value"),
            ("HTTPS", "0 . alpn=h2", "value"),
            ("NS", "ns1.", "type"),
        ];
        for (kind, value, key) in bad {
            let (k, _) = entry("x.gw.example.", kind, value).parse().unwrap_err();
            assert_eq!(k, key, "{kind} {value}");
        }
    }

    #[test]
    fn records_outside_the_zone_or_beside_a_cname_are_refused() {
        let zone = DnsName::parse("gw.example.").unwrap();
        let c = DnsZoneConfig {
            records: vec![
                entry("www.gw.example.", "A", "192.0.2.1"),
                entry("x.other.", "A", "192.0.2.1"),
            ],
        };
        assert_eq!(c.parse(Some(&zone)).unwrap_err().0, 1);
        assert!(c.parse(None).is_err());
        let c = DnsZoneConfig {
            records: vec![
                entry("www.gw.example.", "A", "192.0.2.1"),
                entry("www.gw.example.", "CNAME", "gw.example."),
            ],
        };
        assert!(c.parse(Some(&zone)).unwrap_err().2.contains("CNAME"));
    }
}
