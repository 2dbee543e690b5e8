//! How often a connection may move to an address it has not used: a pure gate, asked for
//! each datagram of a live connection that arrives from an address other than its current
//! one, before the datagram reaches quinn-proto.
//!
//! A datagram of a live connection from a new address makes quinn-proto migrate and
//! validate the new path, and it answers with a PATH_CHALLENGE padded to 1 200 bytes to the
//! new address and another to the previous one, whatever that address sent: quinn-proto
//! lets any path with budget left send a full datagram (quinn issue 1082), and its
//! challenge of the previous path is not counted against that path's budget at all. An
//! attacker on the path who re-sends a connection's packets from spoofed sources therefore
//! turns each 40-byte copy into about 2 500 bytes aimed at the spoofed address, far past
//! the three times RFC 9000 §8 allows towards an unvalidated address.
//!
//! The gate bounds that per connection instead of per packet: moves to an address other
//! than the one the handshake validated (or the one the last move left) are let through
//! [`MIGRATION_BURST`] at once, then one per [`MIGRATION_INTERVAL`] (a token bucket); other
//! datagrams from new addresses are dropped, as if lost. Going back to those two addresses
//! is always allowed, so a client whose path was stolen gets it back with its next packet,
//! and real moves (NAT rebinding, a new network, a client rebinding a few times in a row)
//! go through at once.
//!
//! This module does not see packets and does not decide anything about a connection's
//! current path; `state.rs` asks it and counts refusals (`migrations_refused`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Moves to unused addresses one connection may make at once.
pub(crate) const MIGRATION_BURST: u32 = 4;

/// How often one more move is allowed once the burst is spent. Each move costs at most two
/// padded PATH_CHALLENGEs (about 2.5 KB) towards unvalidated addresses, so this bounds what
/// a spoofing attacker can reflect through one connection to about 10 KB at once and
/// 2.5 KB/s after that; real moves are rarer by orders of magnitude.
pub(crate) const MIGRATION_INTERVAL: Duration = Duration::from_secs(1);

/// One connection's record of where it may go.
#[derive(Debug, Clone)]
pub(crate) struct MigrationGate {
    /// The address the handshake validated.
    home: SocketAddr,
    /// The address the last move left.
    previous: Option<SocketAddr>,
    /// Moves allowed now, and when the count was last brought up to date.
    tokens: u32,
    counted_at: Option<Instant>,
}

impl MigrationGate {
    /// A gate for a connection whose handshake came from `home`.
    pub(crate) fn new(home: SocketAddr) -> Self {
        Self {
            home,
            previous: None,
            tokens: MIGRATION_BURST,
            counted_at: None,
        }
    }

    /// Whether a datagram from `remote`, not the connection's `current` address, may reach
    /// the connection at `now` (and so make it migrate).
    pub(crate) fn admit(&mut self, now: Instant, current: SocketAddr, remote: SocketAddr) -> bool {
        if remote == current || remote == self.home || Some(remote) == self.previous {
            return true;
        }
        let at = *self.counted_at.get_or_insert(now);
        let earned = now.saturating_duration_since(at).as_millis() / MIGRATION_INTERVAL.as_millis();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(MIGRATION_BURST);
            self.counted_at = Some(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        self.previous = Some(current);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_burst_then_one_move_per_interval_and_the_way_back_is_always_open() {
        let t0 = Instant::now();
        let home = addr(1);
        let mut gate = MigrationGate::new(home);
        let mut current = home;
        // The burst goes through at once; the next move within the interval does not.
        for port in 2..2 + MIGRATION_BURST as u16 {
            assert!(gate.admit(t0, current, addr(port)), "move to {port}");
            current = addr(port);
        }
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(!gate.admit(ms(10), current, addr(100)));
        assert!(!gate.admit(ms(999), current, addr(101)));
        // Home and the address the last move left are always allowed.
        assert!(gate.admit(ms(20), current, home));
        assert!(gate.admit(ms(20), current, addr(MIGRATION_BURST as u16)));
        // The current address is never a move.
        assert!(gate.admit(ms(40), current, current));
        // After the interval, one more move goes through, and only one.
        assert!(gate.admit(t0 + MIGRATION_INTERVAL, current, addr(102)));
        assert!(!gate.admit(t0 + MIGRATION_INTERVAL, addr(102), addr(103)));
        // Now the address left behind is the way back, besides home.
        assert!(gate.admit(t0 + MIGRATION_INTERVAL, addr(102), current));
    }

    #[test]
    fn a_spoofing_flood_gets_the_burst_and_one_move_per_interval() {
        let t0 = Instant::now();
        let home = addr(1);
        let mut gate = MigrationGate::new(home);
        let mut current = home;
        let mut moves = 0;
        // 10 000 spoofed sources over 10 s, the real client in between.
        for i in 0..10_000u16 {
            let now = t0 + Duration::from_millis(u64::from(i));
            let spoof = addr(10_000 + i);
            if gate.admit(now, current, spoof) {
                moves += 1;
                current = spoof;
            }
            if gate.admit(now, current, home) {
                current = home;
            }
        }
        assert!(moves <= MIGRATION_BURST + 10, "{moves} moves in 10 s");
    }
}
