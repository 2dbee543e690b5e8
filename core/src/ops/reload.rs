//! Live reload (SIGHUP, `systemctl reload`, `alknet reload`): the configuration file read
//! again and what can change applied to the running server, without a restart.
//!
//! A reload runs in two steps. First the new file is read and checked as at start (every
//! key, every `[services.NAME]` section, the peers against the identity store); any error
//! leaves everything as it is, and is reported with its file, line and key. Then the change
//! is applied at once:
//!
//! | what                                         | how                                              |
//! |----------------------------------------------|--------------------------------------------------|
//! | `[[peers]]` added, removed, changed          | the file's peer index is replaced whole; sessions of a removed peer are closed as revoked, those of a changed one rechecked (cut where the new entry no longer authorises them) |
//! | `[services.NAME] enabled = false`            | the shards refuse new connections to it and close its live ones |
//! | `[services.NAME]` keys                       | stored in the service's [`ConfigWatch`](crate::service::ConfigWatch), read by its handlers for new work |
//! | [`LIVE_KEYS`]                                | read by the shards from their next event on       |
//! | [`RESTART_KEYS`], a service not built at start, a section changing a service's ALPN or scopes | logged as needing a restart; the running value stays |
//!
//! The decision (what changed, which keys are live, the configuration the shards run
//! with) is pure: [`diff`] and [`merge_live`], unit-tested below. [`Reloader`] is the thin
//! driver `alknet serve` calls on SIGHUP and the control socket on `alknet reload`.

use crate::config::Config;
use crate::identity::store::RedbStore;
use crate::identity::{MemoryIdentities, PeerEntry};
use crate::net::server::ControlHandle;
use crate::ops::systemd::Notifier;
use crate::service::{Offer, Registry};
use crate::shard::LiveUpdate;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::{error, info, warn};

/// Keys a reload applies to the running shards.
pub const LIVE_KEYS: &[&str] = &[
    "drain_period",
    "transport.handshake_timeout",
    "transport.max_handshakes_per_shard",
    "transport.max_connections_per_shard",
    "admission.max_handshakes_per_source",
    "admission.max_connections_per_peer",
    "admission.max_connections_per_anonymous_source",
    "tunnels",
    "git",
    "dns",
];

/// Keys read once at start (sockets, threads, the QUIC transport and Retry settings, the
/// memory gauge, the metrics listener): a changed one is logged and keeps its running value.
pub const RESTART_KEYS: &[&str] = &[
    "listen",
    "workers",
    "server_id",
    "driver",
    "pin_workers",
    "memory_budget",
    "udp.gso",
    "udp.gso_segments",
    "udp.gro",
    "udp.ecn",
    "udp.steer_by_cid",
    "udp.recv_buffer",
    "udp.send_buffer",
    "transport.idle_timeout",
    "transport.keep_alive",
    "transport.max_concurrent_bidi_streams",
    "transport.max_concurrent_uni_streams",
    "transport.stream_receive_window",
    "transport.connection_receive_window",
    "transport.send_window",
    "transport.datagram_receive_buffer",
    "transport.congestion",
    "transport.max_udp_payload",
    "admission.retry_token_lifetime",
    "admission.failures_before_penalty",
    "tokio.threads",
    "tokio.bridge_buffer",
    "metrics.listen",
    "metrics.allow_remote",
];

/// Whether key `name` (one of [`LIVE_KEYS`] or [`RESTART_KEYS`]) differs between `a` and `b`.
fn key_differs(name: &str, a: &Config, b: &Config) -> bool {
    let (ta, tb) = (&a.transport, &b.transport);
    let (aa, ab) = (&a.admission, &b.admission);
    let (ua, ub) = (&a.udp, &b.udp);
    match name {
        "drain_period" => a.drain_period != b.drain_period,
        "transport.handshake_timeout" => ta.handshake_timeout != tb.handshake_timeout,
        "transport.max_handshakes_per_shard" => {
            ta.max_handshakes_per_shard != tb.max_handshakes_per_shard
        }
        "transport.max_connections_per_shard" => {
            ta.max_connections_per_shard != tb.max_connections_per_shard
        }
        "admission.max_handshakes_per_source" => {
            aa.max_handshakes_per_source != ab.max_handshakes_per_source
        }
        "admission.max_connections_per_peer" => {
            aa.max_connections_per_peer != ab.max_connections_per_peer
        }
        "admission.max_connections_per_anonymous_source" => {
            aa.max_connections_per_anonymous_source != ab.max_connections_per_anonymous_source
        }
        "tunnels" => a.tunnels != b.tunnels,
        "git" => a.git != b.git,
        "dns" => a.dns != b.dns,
        "listen" => a.listen != b.listen,
        "workers" => a.workers != b.workers,
        "server_id" => a.server_id != b.server_id,
        "driver" => a.driver != b.driver,
        "pin_workers" => a.pin_workers != b.pin_workers,
        "memory_budget" => a.memory_budget != b.memory_budget,
        "udp.gso" => ua.gso != ub.gso,
        "udp.gso_segments" => ua.gso_segments != ub.gso_segments,
        "udp.gro" => ua.gro != ub.gro,
        "udp.ecn" => ua.ecn != ub.ecn,
        "udp.steer_by_cid" => ua.steer_by_cid != ub.steer_by_cid,
        "udp.recv_buffer" => ua.recv_buffer != ub.recv_buffer,
        "udp.send_buffer" => ua.send_buffer != ub.send_buffer,
        "transport.idle_timeout" => ta.idle_timeout != tb.idle_timeout,
        "transport.keep_alive" => ta.keep_alive != tb.keep_alive,
        "transport.max_concurrent_bidi_streams" => {
            ta.max_concurrent_bidi_streams != tb.max_concurrent_bidi_streams
        }
        "transport.max_concurrent_uni_streams" => {
            ta.max_concurrent_uni_streams != tb.max_concurrent_uni_streams
        }
        "transport.stream_receive_window" => ta.stream_receive_window != tb.stream_receive_window,
        "transport.connection_receive_window" => {
            ta.connection_receive_window != tb.connection_receive_window
        }
        "transport.send_window" => ta.send_window != tb.send_window,
        "transport.datagram_receive_buffer" => {
            ta.datagram_receive_buffer != tb.datagram_receive_buffer
        }
        "transport.congestion" => ta.congestion != tb.congestion,
        "transport.max_udp_payload" => ta.max_udp_payload != tb.max_udp_payload,
        "admission.retry_token_lifetime" => aa.retry_token_lifetime != ab.retry_token_lifetime,
        "admission.failures_before_penalty" => {
            aa.failures_before_penalty != ab.failures_before_penalty
        }
        "tokio.threads" => a.tokio.threads != b.tokio.threads,
        "tokio.bridge_buffer" => a.tokio.bridge_buffer != b.tokio.bridge_buffer,
        "metrics.listen" => a.metrics.listen != b.metrics.listen,
        "metrics.allow_remote" => a.metrics.allow_remote != b.metrics.allow_remote,
        // A key this table does not know: say it changed, so it is reported, never lost.
        _ => true,
    }
}

/// What differs between the running configuration and a new one, key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// `[[peers]]` ids only in the new file.
    pub peers_added: Vec<String>,
    /// `[[peers]]` ids only in the running one.
    pub peers_removed: Vec<String>,
    /// Ids in both whose entry differs (keys, scopes, `enabled`, SSH keys, …).
    pub peers_changed: Vec<String>,
    /// `[services.NAME]` sections whose text differs (added, removed or edited).
    pub sections_changed: Vec<String>,
    /// Changed keys of [`LIVE_KEYS`].
    pub live_keys: Vec<String>,
    /// Changed keys of [`RESTART_KEYS`].
    pub restart_keys: Vec<String>,
}

impl Changes {
    /// True when the two configurations are the same in every key.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Compares the running configuration `old` with the newly read `new`.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut c = Changes::default();
    for p in &new.peers {
        match old.peers.iter().find(|o| o.id == p.id) {
            None => c.peers_added.push(p.id.clone()),
            Some(o) if o != p => c.peers_changed.push(p.id.clone()),
            Some(_) => {}
        }
    }
    c.peers_removed = old
        .peers
        .iter()
        .filter(|o| !new.peers.iter().any(|p| p.id == o.id))
        .map(|o| o.id.clone())
        .collect();
    let names: std::collections::BTreeSet<&String> =
        old.services.keys().chain(new.services.keys()).collect();
    c.sections_changed = names
        .into_iter()
        .filter(|n| old.services.get(*n) != new.services.get(*n))
        .cloned()
        .collect();
    let changed = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter(|k| key_differs(k, old, new))
            .map(|k| (*k).to_owned())
            .collect()
    };
    c.live_keys = changed(LIVE_KEYS);
    c.restart_keys = changed(RESTART_KEYS);
    c
}

/// The configuration the server runs with after a reload: `new`'s peers, services and
/// [`LIVE_KEYS`], `running`'s value of every key that needs a restart (and its source, for
/// messages naming where peers are written: the new file's, since its peers are taken).
pub fn merge_live(running: &Config, new: &Config) -> Config {
    let mut out = running.clone();
    out.drain_period = new.drain_period;
    out.transport.handshake_timeout = new.transport.handshake_timeout;
    out.transport.max_handshakes_per_shard = new.transport.max_handshakes_per_shard;
    out.transport.max_connections_per_shard = new.transport.max_connections_per_shard;
    let (a, n) = (&mut out.admission, &new.admission);
    a.max_handshakes_per_source = n.max_handshakes_per_source;
    a.max_connections_per_peer = n.max_connections_per_peer;
    a.max_connections_per_anonymous_source = n.max_connections_per_anonymous_source;
    out.services = new.services.clone();
    out.tunnels = new.tunnels.clone();
    out.git = new.git.clone();
    out.dns = new.dns.clone();
    out.peers = new.peers.clone();
    out.source = new.source.clone();
    out
}

/// What one reload did, as `alknet reload` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The file read.
    pub file: String,
    /// Peers added.
    pub peers_added: Vec<String>,
    /// Peers removed (their sessions closed).
    pub peers_removed: Vec<String>,
    /// Peers changed (their sessions rechecked).
    pub peers_changed: Vec<String>,
    /// Services turned off (by this reload).
    pub services_disabled: Vec<String>,
    /// Services turned back on (off since an earlier reload).
    pub services_enabled: Vec<String>,
    /// Services whose own keys were reloaded.
    pub sections_reloaded: Vec<String>,
    /// Limits applied live.
    pub keys_applied: Vec<String>,
    /// What changed in the file but needs a restart (the running value stays): keys,
    /// `services.NAME` for a service not built at start or whose declaration changed.
    pub needs_restart: Vec<String>,
}

impl Outcome {
    /// One line for people: what changed, or that nothing did.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |what: &str, v: &[String]| {
            if !v.is_empty() {
                parts.push(format!("{what} {}", v.join(",")));
            }
        };
        list("peers added", &self.peers_added);
        list("peers removed", &self.peers_removed);
        list("peers changed", &self.peers_changed);
        list("services off", &self.services_disabled);
        list("services on", &self.services_enabled);
        list("sections reloaded", &self.sections_reloaded);
        list("limits applied", &self.keys_applied);
        list("needs a restart", &self.needs_restart);
        if parts.is_empty() {
            "nothing changed".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// Command-line values that override the file (`--listen`, `--workers`): applied to every
/// reread file as at start, so they never read as a change.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--workers`.
    pub workers: Option<usize>,
}

impl Overrides {
    /// Applies the overrides to a configuration read from the file.
    pub fn apply(&self, config: &mut Config) {
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if let Some(w) = self.workers {
            config.workers = w;
        }
    }
}

/// The services of this build, built afresh for each check (a reload checks the new file's
/// sections with the same list the server started from).
pub type OfferList = Box<dyn Fn() -> Vec<Offer> + Send + Sync>;

/// Called with the configuration in force after each successful reload that changed a
/// [`LIVE_KEYS`] key or a `[services.NAME]` section, with the changed keys and
/// `services.NAME` for each changed section (the forwarding policy of `[tunnels]` and the git
/// gateway's rules and limits are swapped this way).
pub type OnLiveChange = Box<dyn Fn(&Config, &[String]) + Send + Sync>;

/// The status line for the service manager after a reload.
pub type StatusLine = Box<dyn Fn() -> String + Send + Sync>;

/// What a reload acts on: built once by `alknet serve`, called on SIGHUP and by the
/// control socket.
pub struct Reloader {
    path: Option<PathBuf>,
    overrides: Overrides,
    file_peers: Arc<MemoryIdentities>,
    store: Option<Arc<RedbStore>>,
    registry: Registry,
    offers: OfferList,
    handle: ControlHandle,
    notifier: Option<Arc<Notifier>>,
    status: Option<StatusLine>,
    on_live_change: Option<OnLiveChange>,
    state: Mutex<Running>,
}

struct Running {
    config: Arc<Config>,
    disabled: Vec<&'static str>,
}

/// The running server's parts a reload acts on.
pub struct ReloadParts {
    /// The `--config` file (`None`: started without one, nothing to reload).
    pub path: Option<PathBuf>,
    /// `--listen`, `--workers`.
    pub overrides: Overrides,
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// The index of the file's peers the server consults (before the store).
    pub file_peers: Arc<MemoryIdentities>,
    /// The identity store, told which peers the file defines.
    pub store: Option<Arc<RedbStore>>,
    /// A clone of the registry the server runs (its services share their config watches).
    pub registry: Registry,
    /// The services of this build.
    pub offers: OfferList,
    /// The shards.
    pub handle: ControlHandle,
}

impl Reloader {
    /// A reloader for a running server.
    pub fn new(parts: ReloadParts) -> Self {
        Self {
            path: parts.path,
            overrides: parts.overrides,
            file_peers: parts.file_peers,
            store: parts.store,
            registry: parts.registry,
            offers: parts.offers,
            handle: parts.handle,
            notifier: None,
            status: None,
            on_live_change: None,
            state: Mutex::new(Running {
                config: parts.config,
                disabled: Vec::new(),
            }),
        }
    }

    /// Tells the service manager about each reload (`RELOADING=1`, then `READY=1` with
    /// `status`'s line, or a line saying the reload failed).
    pub fn with_notifier(mut self, notifier: Arc<Notifier>, status: StatusLine) -> Self {
        self.notifier = Some(notifier);
        self.status = Some(status);
        self
    }

    /// Runs `f` after each reload that changed a [`LIVE_KEYS`] key, with the new running
    /// configuration and the changed keys (parts outside the shards, such as the forwarding
    /// policy, follow the file this way).
    pub fn on_live_change(mut self, f: OnLiveChange) -> Self {
        self.on_live_change = Some(f);
        self
    }

    /// The configuration the server runs with now (after the last successful reload).
    pub fn running(&self) -> Arc<Config> {
        match self.state.lock() {
            Ok(g) => g.config.clone(),
            Err(p) => p.into_inner().config.clone(),
        }
    }

    /// Reads the file again and applies it; logs the outcome (one info line, a warning per
    /// key needing a restart, or the error at error level) and returns it.
    pub fn reload(&self) -> Result<Outcome, String> {
        let mut state = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = &self.notifier {
            n.reloading();
        }
        let result = self.apply(&mut state);
        match &result {
            Ok(outcome) => {
                for key in &outcome.needs_restart {
                    warn!(key = %key, "changed in the config file; needs a restart (the running value stays)");
                }
                info!(file = %outcome.file, changes = %outcome.summary(), "configuration reloaded");
            }
            Err(e) => error!(error = %e, "reload failed; the running configuration stays"),
        }
        if let Some(n) = &self.notifier {
            let status = self.status.as_ref().map(|s| s()).unwrap_or_default();
            match &result {
                Ok(_) => n.ready(&status),
                Err(e) => n.ready(&format!(
                    "reload failed, running configuration kept: {e}; {status}"
                )),
            }
        }
        result
    }

    fn apply(&self, state: &mut Running) -> Result<Outcome, String> {
        let Some(path) = &self.path else {
            return Err(
                "the server was started without --config: there is no file to reload; restart it with `alknet serve --config FILE`".into(),
            );
        };
        let mut new = Config::load(path).map_err(|e| e.to_string())?;
        self.overrides.apply(&mut new);
        let old = state.config.clone();
        let plan = self
            .registry
            .plan_reload(&old, &new, (self.offers)())
            .map_err(|e| e.to_string())?;
        let entries = new
            .peers
            .iter()
            .map(PeerEntry::from_config)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(store) = &self.store {
            let peers = crate::identity::file_peers(&new).map_err(|e| e.to_string())?;
            store.set_file_peers(peers).map_err(|e| e.to_string())?;
        }
        // Checked whole; from here on nothing fails.
        let changes = diff(&old, &new);
        self.file_peers.replace(entries);
        let services_enabled = state
            .disabled
            .iter()
            .filter(|n| !plan.disabled.contains(n))
            .map(|n| (*n).to_owned())
            .collect();
        let services_disabled = plan
            .disabled
            .iter()
            .filter(|n| !state.disabled.contains(n))
            .map(|n| (*n).to_owned())
            .collect();
        let merged = Arc::new(merge_live(&old, &new));
        self.handle.reload_shards(LiveUpdate {
            config: merged.clone(),
            disabled_alpns: plan.disabled_alpns.clone(),
        });
        for peer in &changes.peers_removed {
            self.handle.close_peer(peer);
        }
        for peer in &changes.peers_changed {
            self.handle.recheck_peer(peer);
        }
        let mut needs_restart = changes.restart_keys.clone();
        needs_restart.extend(
            plan.need_restart
                .iter()
                .chain(&plan.declaration_changed)
                .map(|n| format!("services.{n}")),
        );
        let outcome = Outcome {
            file: path.display().to_string(),
            peers_added: changes.peers_added.clone(),
            peers_removed: changes.peers_removed.clone(),
            peers_changed: changes.peers_changed.clone(),
            services_disabled,
            services_enabled,
            sections_reloaded: plan.sections.iter().map(|n| (*n).to_owned()).collect(),
            keys_applied: changes.live_keys.clone(),
            needs_restart,
        };
        state.disabled = plan.disabled.clone();
        plan.commit();
        if let Some(f) = &self.on_live_change
            && (!changes.live_keys.is_empty() || !changes.sections_changed.is_empty())
        {
            let mut keys = changes.live_keys.clone();
            keys.extend(
                changes
                    .sections_changed
                    .iter()
                    .map(|s| format!("services.{s}")),
            );
            f(&merged, &keys);
        }
        state.config = merged;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FP_A: &str = "ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    const FP_B: &str = "ed25519:0000000000000000000000000000000000000000000000000000000000000001";

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("alknet.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn peer(id: &str, fp: &str, scopes: &str) -> String {
        format!("[[peers]]\nid = \"{id}\"\nfingerprints = [\"{fp}\"]\nscopes = [{scopes}]\n")
    }

    #[test]
    fn the_same_file_is_no_change() {
        let text = format!("workers = 2\n{}", peer("a", FP_A, "\"echo\""));
        let c = diff(&parse(&text), &parse(&text));
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn peers_added_removed_and_changed_are_told_apart() {
        let old = parse(&format!(
            "{}{}",
            peer("keep", FP_A, "\"echo\""),
            peer("gone", FP_B, "\"echo\"")
        ));
        let new = parse(&format!(
            "{}{}",
            peer("keep", FP_A, "\"call\""),
            peer("new", FP_B, "\"echo\"")
        ));
        let c = diff(&old, &new);
        assert_eq!(c.peers_added, ["new"]);
        assert_eq!(c.peers_removed, ["gone"]);
        assert_eq!(c.peers_changed, ["keep"]);
        assert!(c.live_keys.is_empty() && c.restart_keys.is_empty(), "{c:?}");
        // Disabling a peer, or giving it an SSH key, is a change of that peer.
        let disabled = parse(&format!(
            "{}enabled = false\n{}",
            peer("keep", FP_A, "\"call\""),
            peer("new", FP_B, "\"echo\"")
        ));
        assert_eq!(diff(&new, &disabled).peers_changed, ["keep"]);
    }

    #[test]
    fn the_git_rules_and_the_dns_zone_are_live() {
        let old = parse("[services.dns]\nzone = \"gw.example.\"\n");
        let new = parse(
            "[services.dns]\nzone = \"gw.example.\"\n[[dns.records]]\nname = \"a.gw.example.\"\ntype = \"A\"\nvalue = \"192.0.2.1\"\n[[git.allow]]\npeer = \"a\"\nrepos = [\"org/*\"]\naccess = [\"read\"]\n",
        );
        let c = diff(&old, &new);
        assert_eq!(c.live_keys, ["git", "dns"]);
        let merged = merge_live(&old, &new);
        assert_eq!((&merged.git, &merged.dns), (&new.git, &new.dns));
    }

    #[test]
    fn the_tunnel_policy_is_live() {
        let old = parse("");
        let new = parse(
            "[tunnels]\nmax_connections_per_peer = 3\n[[tunnels.allow]]\npeer = \"a\"\nto = [\"10.0.0.1:22\"]\n",
        );
        let c = diff(&old, &new);
        assert_eq!(c.live_keys, ["tunnels"]);
        assert!(c.restart_keys.is_empty(), "{c:?}");
        let merged = merge_live(&old, &new);
        assert_eq!(merged.tunnels, new.tunnels);
        assert_eq!(merged.tunnels.allow.len(), 1);
        assert!(diff(&new, &merged).live_keys.is_empty());
    }

    #[test]
    fn limits_are_live_and_sockets_need_a_restart() {
        let old = parse("");
        let new = parse(
            "listen = \"127.0.0.1:5000\"\nworkers = 3\ndrain_period = \"1s\"\n[admission]\nmax_connections_per_peer = 4\n[transport]\nidle_timeout = \"5s\"\nhandshake_timeout = \"2s\"\n[tokio]\nthreads = 2\n",
        );
        let c = diff(&old, &new);
        assert_eq!(
            c.live_keys,
            [
                "drain_period",
                "transport.handshake_timeout",
                "admission.max_connections_per_peer"
            ]
        );
        assert_eq!(
            c.restart_keys,
            [
                "listen",
                "workers",
                "transport.idle_timeout",
                "tokio.threads"
            ]
        );
        let merged = merge_live(&old, &new);
        assert_eq!(merged.admission.max_connections_per_peer, 4);
        assert_eq!(merged.drain_period.0, std::time::Duration::from_secs(1));
        assert_eq!(merged.transport.handshake_timeout.0.as_secs(), 2);
        // What needs a restart keeps its running value.
        assert_eq!(merged.listen, old.listen);
        assert_eq!(merged.workers, 0);
        assert_eq!(merged.transport.idle_timeout, old.transport.idle_timeout);
        assert_eq!(merged.tokio.threads, 1);
        // Merged again with the same file, nothing live is left to change.
        assert!(diff(&merged, &new).live_keys.is_empty());
        assert_eq!(diff(&merged, &new).restart_keys, c.restart_keys);
    }

    #[test]
    fn every_key_is_classified_once() {
        for k in LIVE_KEYS {
            assert!(!RESTART_KEYS.contains(k), "{k} is in both lists");
        }
        // Each listed key is compared (an unknown name would always read as changed).
        let c = Config::default();
        for k in LIVE_KEYS.iter().chain(RESTART_KEYS) {
            assert!(!key_differs(k, &c, &c), "{k} is not compared");
        }
        assert!(key_differs("no.such.key", &c, &c));
    }

    #[test]
    fn service_sections_are_compared_as_written() {
        let old = parse("[services.echo]\nenabled = true\n[services.ssh]\nshell = true\n");
        let new = parse("[services.echo]\nenabled = false\n[services.perf]\nenabled = true\n");
        assert_eq!(diff(&old, &new).sections_changed, ["echo", "perf", "ssh"]);
        let merged = merge_live(&old, &new);
        assert_eq!(merged.services, new.services);
    }

    #[test]
    fn overrides_win_over_every_reread_file() {
        let o = Overrides {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
            workers: Some(2),
        };
        let mut a = parse("listen = \"127.0.0.1:5000\"\nworkers = 7\n");
        o.apply(&mut a);
        let mut b = parse("");
        o.apply(&mut b);
        assert!(diff(&a, &b).restart_keys.is_empty());
    }

    #[test]
    fn the_summary_names_each_change_or_says_none() {
        assert_eq!(Outcome::default().summary(), "nothing changed");
        let o = Outcome {
            peers_added: vec!["a".into()],
            peers_removed: vec!["b".into(), "c".into()],
            needs_restart: vec!["listen".into()],
            ..Outcome::default()
        };
        assert_eq!(
            o.summary(),
            "peers added a; peers removed b,c; needs a restart listen"
        );
    }
}
