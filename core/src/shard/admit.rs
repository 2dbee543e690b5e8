//! Admission: what a shard does with a connection attempt, as a pure function of what the
//! attempt shows ([`IncomingFacts`]) and how loaded the shard is ([`Load`]).
//!
//! quinn-proto hands every new connection attempt over as an `Incoming` that must be
//! accepted, refused, retried or ignored; [`admit`] picks one, and each reason names the
//! counter it feeds. Carrying out the decision (and the endpoint calls) is the state
//! machine's job, not this module's.
//!
//! Per-source limits come before any per-shard one: a source with
//! `max_handshakes_per_source` handshakes in flight on all shards, or an attempt carrying a
//! Retry token that already started a handshake, is dropped without an answer (a genuine
//! client retransmits its Initial; a replayed token buys nothing). They apply to attempts
//! that proved their address too: one Retry round trip buys one handshake, not a window of
//! validated Initials on every shard.

use crate::ops::stats::ShardStats;
use std::sync::atomic::AtomicU64;

/// Source ports of UDP services that answer anything (reflection/amplification vectors).
/// An Initial from one of them is spoofed or broken; answering would reflect traffic.
pub(crate) const REFLECTION_PORTS: [u16; 11] = [0, 17, 19, 53, 111, 123, 137, 138, 161, 389, 500];

/// True when `data` starts with a client Initial whose destination CID no shard issued: a
/// new connection attempt, or a ClientHello sent again before any answer arrived (RFC 9000
/// §7.2: a client takes the server's CID from its first answer). Only these may be
/// dropped by source before quinn-proto spends a key derivation and a decryption on them;
/// a packet for a handshake in flight carries a CID of ours and always goes through.
pub(crate) fn fresh_initial(codec: &alknet_proto::CidCodec, data: &[u8]) -> bool {
    let Some(&first) = data.first() else {
        return false;
    };
    // Long header with the fixed bit, Initial type (QUIC v1), not version negotiation.
    if first & 0xc0 != 0xc0 || (first >> 4) & 0x03 != 0 {
        return false;
    }
    if data.get(1..5).is_none_or(|v| v == [0, 0, 0, 0]) {
        return false;
    }
    let Some(&len) = data.get(5) else {
        return false;
    };
    match data.get(6..6 + usize::from(len)) {
        Some(dcid) => codec.decode(dcid).is_none(),
        None => false,
    }
}

/// What a connection attempt shows before any TLS work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IncomingFacts {
    /// The sender's UDP port.
    pub(crate) remote_port: u16,
    /// The source is penalised for repeated authentication failures.
    pub(crate) penalised: bool,
    /// The client proved its address (it came back with a Retry token).
    pub(crate) address_validated: bool,
    /// A Retry may still be sent (none was sent for this attempt).
    pub(crate) may_retry: bool,
    /// The Retry token that validated the address already started a handshake.
    pub(crate) token_used: bool,
    /// Handshakes in flight from this source (IPv4 /32, IPv6 /64) on all shards.
    pub(crate) source_handshakes: u32,
}

/// The shard's load when the attempt arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    /// The shard serves (a client-role shard accepts nothing).
    pub(crate) serving: bool,
    /// The process is over its memory budget.
    pub(crate) memory_pressure: bool,
    /// The shard is draining.
    pub(crate) shutting_down: bool,
    /// Connections held.
    pub(crate) connections: usize,
    /// Cap on connections held.
    pub(crate) max_connections: usize,
    /// Handshakes in flight.
    pub(crate) handshakes: usize,
    /// Cap on handshakes in flight before strangers must prove their address.
    pub(crate) max_handshakes: usize,
    /// Cap on handshakes in flight from one source on all shards.
    pub(crate) max_handshakes_per_source: u32,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Start the handshake.
    Accept,
    /// Ask the client to prove its address first.
    Retry(RetryReason),
    /// Answer CONNECTION_REFUSED.
    Refuse(RefuseReason),
    /// Drop silently (no answer: answering would help an attacker).
    Ignore(IgnoreReason),
}

/// Why a Retry is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryReason {
    /// Over the memory budget.
    MemoryPressure,
    /// Too many handshakes in flight.
    HandshakeCap,
}

/// Why an attempt is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefuseReason {
    /// Over the memory budget and the address already validated.
    MemoryPressure,
    /// Draining for shutdown.
    ShuttingDown,
    /// The connection cap is reached.
    ConnectionCap,
}

/// Why an attempt is dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IgnoreReason {
    /// From a reflection-prone source port.
    ReflectionPort,
    /// This shard is a client and accepts nothing.
    NotServing,
    /// From a penalised source.
    Penalised,
    /// Over the handshake cap, and a Retry was already sent for this attempt.
    HandshakeCapRetried,
    /// The source has its cap of handshakes in flight.
    SourceHandshakeCap,
    /// The Retry token already started a handshake (a replay).
    TokenUsed,
}

impl Admission {
    /// The counter this decision feeds, if any (an accepted attempt is counted once the
    /// endpoint has accepted it, a Retry once it is sent).
    pub(crate) fn counter<'a>(&self, stats: &'a ShardStats) -> Option<&'a AtomicU64> {
        match self {
            Admission::Accept | Admission::Retry(_) => None,
            Admission::Refuse(RefuseReason::MemoryPressure) => Some(&stats.refused_memory),
            Admission::Refuse(RefuseReason::ShuttingDown | RefuseReason::ConnectionCap) => {
                Some(&stats.connections_refused)
            }
            Admission::Ignore(IgnoreReason::ReflectionPort) => Some(&stats.dropped_reflection),
            Admission::Ignore(IgnoreReason::Penalised) => Some(&stats.dropped_penalty),
            Admission::Ignore(IgnoreReason::HandshakeCapRetried) => {
                Some(&stats.connections_refused)
            }
            Admission::Ignore(IgnoreReason::SourceHandshakeCap) => Some(&stats.dropped_source_cap),
            Admission::Ignore(IgnoreReason::TokenUsed) => Some(&stats.dropped_token_reuse),
            Admission::Ignore(IgnoreReason::NotServing) => None,
        }
    }
}

/// Decides what to do with a connection attempt. The order matters: the cheapest and most
/// hostile cases first, so a flood costs no TLS work.
pub(crate) fn admit(facts: &IncomingFacts, load: &Load) -> Admission {
    if REFLECTION_PORTS.contains(&facts.remote_port) {
        return Admission::Ignore(IgnoreReason::ReflectionPort);
    }
    if !load.serving {
        return Admission::Ignore(IgnoreReason::NotServing);
    }
    if facts.penalised {
        // Repeated authentication failures: no TLS work for this source for a while.
        return Admission::Ignore(IgnoreReason::Penalised);
    }
    if facts.address_validated && facts.token_used {
        return Admission::Ignore(IgnoreReason::TokenUsed);
    }
    if facts.source_handshakes >= load.max_handshakes_per_source {
        // Validated or not: silence, so a genuine client retransmits once one ends.
        return Admission::Ignore(IgnoreReason::SourceHandshakeCap);
    }
    if load.memory_pressure {
        // Over the memory budget: make strangers prove their address first, then refuse.
        return if !facts.address_validated && facts.may_retry {
            Admission::Retry(RetryReason::MemoryPressure)
        } else {
            Admission::Refuse(RefuseReason::MemoryPressure)
        };
    }
    if load.shutting_down {
        return Admission::Refuse(RefuseReason::ShuttingDown);
    }
    if load.connections >= load.max_connections {
        return Admission::Refuse(RefuseReason::ConnectionCap);
    }
    if load.handshakes >= load.max_handshakes && !facts.address_validated {
        return if facts.may_retry {
            Admission::Retry(RetryReason::HandshakeCap)
        } else {
            Admission::Ignore(IgnoreReason::HandshakeCapRetried)
        };
    }
    Admission::Accept
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: IncomingFacts = IncomingFacts {
        remote_port: 50_000,
        penalised: false,
        address_validated: false,
        may_retry: true,
        token_used: false,
        source_handshakes: 0,
    };
    const LOAD: Load = Load {
        serving: true,
        memory_pressure: false,
        shutting_down: false,
        connections: 10,
        max_connections: 100,
        handshakes: 1,
        max_handshakes: 4,
        max_handshakes_per_source: 3,
    };

    #[test]
    fn decision_table() {
        use Admission::*;
        let validated = IncomingFacts {
            address_validated: true,
            may_retry: false,
            ..FACTS
        };
        let retried_unvalidated = IncomingFacts {
            may_retry: false,
            ..FACTS
        };
        let busy = Load {
            handshakes: 4,
            ..LOAD
        };
        let full = Load {
            connections: 100,
            ..LOAD
        };
        let pressed = Load {
            memory_pressure: true,
            ..LOAD
        };
        let draining = Load {
            shutting_down: true,
            ..LOAD
        };
        let client = Load {
            serving: false,
            ..LOAD
        };
        let table: &[(&str, IncomingFacts, Load, Admission)] = &[
            ("plain attempt", FACTS, LOAD, Accept),
            (
                "reflection port",
                IncomingFacts {
                    remote_port: 53,
                    ..FACTS
                },
                LOAD,
                Ignore(IgnoreReason::ReflectionPort),
            ),
            (
                "port zero",
                IncomingFacts {
                    remote_port: 0,
                    ..FACTS
                },
                LOAD,
                Ignore(IgnoreReason::ReflectionPort),
            ),
            (
                "client role",
                FACTS,
                client,
                Ignore(IgnoreReason::NotServing),
            ),
            (
                "penalised even when idle",
                IncomingFacts {
                    penalised: true,
                    ..FACTS
                },
                LOAD,
                Ignore(IgnoreReason::Penalised),
            ),
            (
                "memory pressure, stranger",
                FACTS,
                pressed,
                Retry(RetryReason::MemoryPressure),
            ),
            (
                "memory pressure, validated",
                validated,
                pressed,
                Refuse(RefuseReason::MemoryPressure),
            ),
            (
                "draining",
                validated,
                draining,
                Refuse(RefuseReason::ShuttingDown),
            ),
            (
                "connection cap",
                FACTS,
                full,
                Refuse(RefuseReason::ConnectionCap),
            ),
            (
                "handshake cap, stranger",
                FACTS,
                busy,
                Retry(RetryReason::HandshakeCap),
            ),
            ("handshake cap, validated", validated, busy, Accept),
            (
                "handshake cap, retried but unvalidated",
                retried_unvalidated,
                busy,
                Ignore(IgnoreReason::HandshakeCapRetried),
            ),
            (
                "source at its handshake cap, stranger",
                IncomingFacts {
                    source_handshakes: 3,
                    ..FACTS
                },
                LOAD,
                Ignore(IgnoreReason::SourceHandshakeCap),
            ),
            (
                "source at its handshake cap, validated",
                IncomingFacts {
                    source_handshakes: 3,
                    ..validated
                },
                LOAD,
                Ignore(IgnoreReason::SourceHandshakeCap),
            ),
            (
                "source cap before the Retry of a busy shard",
                IncomingFacts {
                    source_handshakes: 3,
                    ..FACTS
                },
                busy,
                Ignore(IgnoreReason::SourceHandshakeCap),
            ),
            (
                "replayed Retry token",
                IncomingFacts {
                    token_used: true,
                    ..validated
                },
                LOAD,
                Ignore(IgnoreReason::TokenUsed),
            ),
            (
                "source below its cap",
                IncomingFacts {
                    source_handshakes: 2,
                    ..validated
                },
                LOAD,
                Accept,
            ),
            (
                "reflection beats everything",
                IncomingFacts {
                    remote_port: 123,
                    penalised: true,
                    ..FACTS
                },
                pressed,
                Ignore(IgnoreReason::ReflectionPort),
            ),
        ];
        for (name, facts, load, want) in table {
            assert_eq!(admit(facts, load), *want, "{name}");
        }
    }

    #[test]
    fn only_initials_to_unissued_cids_are_fresh() {
        let codec = alknet_proto::CidCodec::new([3; 16], 0);
        let ours = codec.encode(1, [9; alknet_proto::cid::NONCE_LEN]);
        let initial = |dcid: &[u8]| {
            let mut d = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
            d.extend_from_slice(dcid);
            d.extend_from_slice(&[0; 40]);
            d
        };
        assert!(fresh_initial(&codec, &initial(&[0x5a; 8])));
        assert!(!fresh_initial(&codec, &initial(&ours)), "a CID of ours");
        let mut handshake = initial(&[0x5a; 8]);
        handshake[0] = 0xe3;
        assert!(!fresh_initial(&codec, &handshake), "a Handshake packet");
        let mut vn = initial(&[0x5a; 8]);
        vn[1..5].copy_from_slice(&[0; 4]);
        assert!(!fresh_initial(&codec, &vn), "version negotiation");
        assert!(!fresh_initial(&codec, &[0x43, 1, 2, 3]), "short header");
        assert!(
            !fresh_initial(&codec, &[0xc3, 0, 0, 0, 1, 20, 1]),
            "truncated"
        );
        assert!(!fresh_initial(&codec, &[]));
    }

    #[test]
    fn each_refusal_feeds_its_counter() {
        let s = ShardStats::default();
        let same = |a: Option<&AtomicU64>, b: &AtomicU64| a.is_some_and(|a| std::ptr::eq(a, b));
        assert!(same(
            Admission::Refuse(RefuseReason::MemoryPressure).counter(&s),
            &s.refused_memory
        ));
        assert!(same(
            Admission::Refuse(RefuseReason::ShuttingDown).counter(&s),
            &s.connections_refused
        ));
        assert!(same(
            Admission::Ignore(IgnoreReason::ReflectionPort).counter(&s),
            &s.dropped_reflection
        ));
        assert!(same(
            Admission::Ignore(IgnoreReason::Penalised).counter(&s),
            &s.dropped_penalty
        ));
        assert!(same(
            Admission::Ignore(IgnoreReason::SourceHandshakeCap).counter(&s),
            &s.dropped_source_cap
        ));
        assert!(same(
            Admission::Ignore(IgnoreReason::TokenUsed).counter(&s),
            &s.dropped_token_reuse
        ));
        assert!(Admission::Accept.counter(&s).is_none());
        assert!(
            Admission::Ignore(IgnoreReason::NotServing)
                .counter(&s)
                .is_none()
        );
    }
}
