//! Per-source admission on the deterministic harness: handshakes in flight per source
//! across shards, the slot given back however a handshake ends, every failed handshake
//! counted against its source, Retry tokens used once, connection caps per peer and per
//! anonymous source.

use super::*;
use crate::config::ConfigDuration;
use crate::service::close_code;

/// A configuration with these admission caps, a short handshake timeout, and penalties
/// out of the way unless a test asks for them.
fn config_with(per_source: u32, failures_before_penalty: u32) -> Config {
    let mut c = Config::default();
    c.admission.max_handshakes_per_source = per_source;
    c.admission.failures_before_penalty = failures_before_penalty;
    // Shorter than the first PTO, as in `client_silent_after_first_flight_gets_handshake_timeout`.
    c.transport.handshake_timeout = ConfigDuration(Duration::from_millis(500));
    c
}

/// Handshakes held by the pair's client source, on all shards.
fn source_handshakes(pair: &Pair) -> u32 {
    let a = pair.admission.source(pair.client_addr());
    pair.admission.handshakes(a)
}

fn in_flight(pair: &Pair) -> usize {
    pair.shards.iter().map(|s| s.handshake_count()).sum()
}

fn peak(pair: &Pair) -> u64 {
    (0..pair.shards.len())
        .map(|i| pair.stats(i).source_handshakes_peak)
        .max()
        .unwrap_or(0)
}

#[test]
fn handshakes_in_flight_per_source_are_capped_across_shards() {
    let alice = NodeKey::generate();
    // The Initials' DCIDs are random and name either shard; all four name one shard in one
    // layout of eight. The first layout in which both shards handle some is the one tested
    // (bounded: 32 layouts each on one shard would be a 2^-96 event).
    let layouts = (0..32).map(|_| {
        let mut pair = Pair::new(Setup {
            shards: 2,
            peers: vec![peer("alice", &alice, &[])],
            config: config_with(2, 100),
            ..Setup::default()
        });
        // Only the four first Initials reach the server, then the client falls silent:
        // every accepted handshake stays in flight until the handshake timeout.
        pair.client_budget = Some(4);
        let chs: Vec<_> = (0..4).map(|_| pair.begin_connect(&alice)).collect();
        pair.run_for(Duration::from_millis(100));
        (pair, chs)
    });
    let Some((mut pair, chs)) = layouts.into_iter().find(|(pair, _)| {
        (0..2).all(|i| {
            let s = pair.stats(i);
            s.source_handshakes_peak > 0 || s.dropped_source_cap > 0
        })
    }) else {
        panic!("32 layouts of four random DCIDs all named one shard");
    };
    assert_eq!(in_flight(&pair), 2, "max_handshakes_per_source = 2");
    assert_eq!(source_handshakes(&pair), 2);
    assert_eq!(pair.total().dropped_source_cap, 2);
    assert_eq!(pair.total().handshakes_in_flight, 2);
    assert!(peak(&pair) <= 2, "max_handshakes_per_source = 2");
    // Both shards took part (the layout was picked for it), yet the cap is one count.
    // The two held handshakes time out; their slots come back.
    pair.run_for(Duration::from_secs(4));
    assert_eq!(in_flight(&pair), 0);
    assert_eq!(source_handshakes(&pair), 0, "slots given back on timeout");
    assert_eq!(pair.total().handshakes_in_flight, 0);
    assert_eq!(pair.total().handshakes_abandoned, 2);
    // The two dropped clients were never answered: they retransmit and are served now.
    pair.client_budget = None;
    pair.run_for(Duration::from_secs(20));
    let live = chs
        .iter()
        .filter(|&&ch| pair.client_connected(ch) && pair.client_lost(ch).is_none())
        .count();
    assert_eq!(
        live, 2,
        "the dropped Initials were retransmitted and served"
    );
    assert_eq!(pair.served().len(), 2);
    assert_eq!(
        source_handshakes(&pair),
        0,
        "slots given back on completion"
    );
    assert!(peak(&pair) <= 2, "max_handshakes_per_source = 2");
}

#[test]
fn the_handshake_slot_is_given_back_on_completion_and_when_the_client_gives_up() {
    let alice = NodeKey::generate();
    let mut pair = Pair::new(Setup {
        peers: vec![peer("alice", &alice, &[])],
        config: config_with(1, 100),
        ..Setup::default()
    });
    // One at a time, under a cap of one: each completion frees the slot for the next.
    for _ in 0..3 {
        let ch = pair.connect(&alice);
        assert!(pair.client_connected(ch));
        assert_eq!(source_handshakes(&pair), 0);
    }
    // A client that closes mid-handshake: the server accepted it, then sees the close.
    let ch = pair.begin_connect(&alice);
    pair.run_for(Duration::from_millis(7));
    assert_eq!(source_handshakes(&pair), 1);
    let now = pair.time;
    pair.conns.get_mut(&ch).unwrap().conn.close(
        now,
        quinn_proto::VarInt::from_u32(0),
        Bytes::new(),
    );
    // The server drains the closed connection for three PTOs, then forgets it.
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.shards[0].connection_count(), 3);
    assert_eq!(
        source_handshakes(&pair),
        0,
        "slot given back on a client close"
    );
    assert_eq!(pair.total().handshakes_abandoned, 1);
    assert_eq!(pair.total().handshakes_in_flight, 0);
    let ch = pair.connect(&alice);
    assert!(pair.client_connected(ch), "the cap of one is free again");
}

#[test]
fn abandoned_handshakes_count_against_the_source() {
    let alice = NodeKey::generate();
    let mut pair = Pair::new(Setup {
        peers: vec![peer("alice", &alice, &[])],
        config: config_with(16, 2),
        ..Setup::default()
    });
    // Three handshakes abandoned after the first flight (failures_before_penalty = 2).
    for _ in 0..3 {
        pair.client_budget = Some(1);
        pair.begin_connect(&alice);
        pair.run_for(Duration::from_secs(4));
    }
    assert_eq!(pair.total().handshakes_abandoned, 3);
    assert_eq!(pair.shards[0].connection_count(), 0);
    // Now even a good key from that source gets no answer.
    pair.client_budget = None;
    let ch = pair.begin_connect(&alice);
    pair.run_for(Duration::from_secs(3));
    assert!(!pair.client_connected(ch), "failures_before_penalty = 2");
    assert!(pair.total().dropped_penalty > 0);
}

#[test]
fn a_tls_failure_counts_against_the_source() {
    let alice = NodeKey::generate();
    let mut pair = Pair::new(Setup {
        peers: vec![peer("alice", &alice, &[])],
        config: config_with(16, 2),
        ..Setup::default()
    });
    // No client certificate where one is required: TLS fails inside the handshake, before
    // any authorisation runs.
    for _ in 0..3 {
        let cc = alknet_testkit::quinn_client_config(
            None,
            ALPN,
            Arc::new(alknet_testkit::AnyServer::default()),
            quinn::TransportConfig::default(),
        )
        .unwrap();
        let ch = pair.begin_connect_with(cc);
        pair.drive();
        // The client's side of a TLS 1.3 handshake completes before the server checks its
        // certificate; the server's refusal then ends it.
        assert!(pair.client_lost(ch).is_some());
    }
    assert!(pair.served().is_empty());
    assert_eq!(pair.total().handshakes_abandoned, 3);
    let ch = pair.begin_connect(&alice);
    pair.run_for(Duration::from_secs(3));
    assert!(!pair.client_connected(ch), "failures_before_penalty = 2");
    assert!(pair.total().dropped_penalty > 0);
}

/// Hands every new connection the same token, as an attacker replaying a captured Retry
/// token with fresh connection IDs does.
struct Replay(Bytes);

impl quinn_proto::TokenStore for Replay {
    fn insert(&self, _: &str, _: Bytes) {}
    fn take(&self, _: &str) -> Option<Bytes> {
        Some(self.0.clone())
    }
}

#[test]
fn a_replayed_retry_token_starts_no_handshake_on_any_shard() {
    let alice = NodeKey::generate();
    let bob = NodeKey::generate();
    let mut config = config_with(64, 100);
    config.transport.max_handshakes_per_shard = 1;
    config.transport.handshake_timeout = ConfigDuration(Duration::from_secs(10));
    let mut pair = Pair::new(Setup {
        shards: 2,
        peers: vec![peer("alice", &alice, &[]), peer("bob", &bob, &[])],
        config,
        ..Setup::default()
    });
    // Two at once on one shard's cap of one: the second is sent a Retry and comes back
    // with its token.
    pair.ingress = 0;
    let mut retried = None;
    for _ in 0..8 {
        let a = pair.begin_connect(&alice);
        let b = pair.begin_connect(&bob);
        pair.drive();
        assert!(pair.client_connected(a) && pair.client_connected(b));
        if let Some(t) = pair.tokens_seen.first() {
            retried = Some(t.clone());
            break;
        }
    }
    let token = retried.expect("a Retry was sent and its token came back");
    let accepted = pair.total().handshakes_accepted;
    // Replays of the token from the same address, each with a fresh DCID (so on either
    // shard); handshakes below both shards' caps would otherwise be started at once.
    pair.config = Arc::new({
        let mut c = (*pair.config).clone();
        c.transport.max_handshakes_per_shard = 256;
        c
    });
    for _ in 0..6 {
        let (mut cc, _) = crate::net::endpoint::client_config(
            &pair.config,
            &alice,
            ALPN,
            ServerTrust::Pinned(pair.node.fingerprint()),
        )
        .unwrap();
        cc.token_store(Arc::new(Replay(token.clone())));
        pair.begin_connect_with(cc);
    }
    pair.run_for(Duration::from_millis(500));
    assert_eq!(
        pair.total().handshakes_accepted,
        accepted,
        "a used Retry token started another handshake"
    );
    assert!(pair.total().dropped_token_reuse >= 6);
    assert!(
        (0..2).all(|i| pair.stats(i).dropped_token_reuse > 0),
        "replays reached both shards and neither took them"
    );
}

#[test]
fn connections_per_peer_are_capped_across_shards() {
    let alice = NodeKey::generate();
    let bob = NodeKey::generate();
    let mut config = Config::default();
    config.admission.max_connections_per_peer = 2;
    let mut pair = Pair::new(Setup {
        shards: 2,
        peers: vec![peer("alice", &alice, &[]), peer("bob", &bob, &[])],
        config,
        ..Setup::default()
    });
    let a1 = pair.connect(&alice);
    let a2 = pair.connect(&alice);
    let a3 = pair.connect(&alice);
    assert!(pair.client_lost(a1).is_none() && pair.client_lost(a2).is_none());
    assert_eq!(
        pair.client_close(a3).map(|(code, _)| code),
        Some(u64::from(close_code::CONNECTION_LIMIT)),
        "max_connections_per_peer = 2"
    );
    assert!(matches!(
        pair.refused().as_slice(),
        [AuthFailure::ConnectionLimit { limit: 2, .. }]
    ));
    assert_eq!(pair.total().refused_connection_cap, 1);
    assert_eq!(pair.admission.peer_connections("alice"), 2);
    // Another peer is not affected.
    let b = pair.connect(&bob);
    assert!(pair.client_lost(b).is_none());
    // When one of alice's goes, she may open another.
    let now = pair.time;
    pair.conns.get_mut(&a1).unwrap().conn.close(
        now,
        quinn_proto::VarInt::from_u32(0),
        Bytes::new(),
    );
    pair.run_for(Duration::from_secs(3));
    assert_eq!(pair.admission.peer_connections("alice"), 1);
    let a4 = pair.connect(&alice);
    assert!(pair.client_lost(a4).is_none());
    assert_eq!(
        pair.total().auth_failures,
        0,
        "a cap is not an authentication failure"
    );
}

#[test]
fn connections_per_anonymous_source_are_capped() {
    let mut config = Config::default();
    config.admission.max_connections_per_anonymous_source = 2;
    let mut pair = Pair::new(Setup {
        anonymous: true,
        config,
        ..Setup::default()
    });
    let chs: Vec<_> = (0..3).map(|_| pair.connect(&NodeKey::generate())).collect();
    assert_eq!(
        chs.iter()
            .filter(|&&c| pair.client_lost(c).is_none())
            .count(),
        2,
        "max_connections_per_anonymous_source = 2"
    );
    assert_eq!(
        pair.client_close(chs[2]).map(|(code, _)| code),
        Some(u64::from(close_code::CONNECTION_LIMIT))
    );
    assert_eq!(pair.served().len(), 2);
}

#[test]
fn a_reload_changes_the_caps_and_turns_a_service_off_and_on() {
    let alice = NodeKey::generate();
    let mut pair = Pair::new(Setup {
        shards: 1,
        peers: vec![peer("alice", &alice, &[])],
        ..Setup::default()
    });
    let a1 = pair.connect(&alice);
    let a2 = pair.connect(&alice);
    assert!(pair.client_lost(a1).is_none() && pair.client_lost(a2).is_none());

    // The per-peer cap lowered to 2 by a reload: held sessions stay, a third is refused.
    let mut config = Config::default();
    config.admission.max_connections_per_peer = 2;
    let config = Arc::new(config);
    pair.send(
        0,
        ShardMsg::Reload(Arc::new(crate::shard::LiveUpdate {
            config: config.clone(),
            disabled_alpns: Vec::new(),
        })),
    );
    pair.drive();
    assert!(pair.client_lost(a1).is_none() && pair.client_lost(a2).is_none());
    let a3 = pair.connect(&alice);
    assert_eq!(
        pair.client_close(a3).map(|(code, _)| code),
        Some(u64::from(close_code::CONNECTION_LIMIT)),
        "the reloaded cap applies to the next connection"
    );

    // The service turned off: live sessions are closed as revoked, a new one is refused
    // as forbidden, and neither counts as a failed authentication.
    pair.send(
        0,
        ShardMsg::Reload(Arc::new(crate::shard::LiveUpdate {
            config: config.clone(),
            disabled_alpns: vec![ALPN.to_vec()],
        })),
    );
    pair.drive();
    for ch in [a1, a2] {
        assert_eq!(
            pair.client_close(ch).map(|(code, _)| code),
            Some(u64::from(close_code::REVOKED))
        );
    }
    pair.run_for(Duration::from_secs(3));
    let a4 = pair.connect(&alice);
    assert_eq!(
        pair.client_close(a4).map(|(code, _)| code),
        Some(u64::from(close_code::FORBIDDEN))
    );
    assert_eq!(pair.total().auth_failures, 0);

    // On again.
    pair.send(
        0,
        ShardMsg::Reload(Arc::new(crate::shard::LiveUpdate {
            config,
            disabled_alpns: Vec::new(),
        })),
    );
    pair.run_for(Duration::from_secs(3));
    let a5 = pair.connect(&alice);
    assert!(pair.client_lost(a5).is_none(), "the service came back");
}
