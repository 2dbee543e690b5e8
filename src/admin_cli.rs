//! `alknet peer …`, `alknet token …` and `alknet sessions`.
//!
//! With a server running on the data directory, requests go through its control socket (so
//! a revoked or disabled peer's live connections are closed at once); without one, they act
//! on the store file directly.

use alknet_core::ops::admin::{AdminOp, PeerView, TokenView};
use alknet_core::ops::control::{self, Request};
use anyhow::{Result, anyhow};
use clap::Subcommand;
use std::path::Path;

#[derive(Debug, Subcommand)]
pub(crate) enum PeerCmd {
    /// Allow a new peer in: `alknet peer add NAME --fingerprint ed25519:… --scope echo`.
    Add {
        /// Peer id (stable; the identity services see).
        name: String,
        /// A key of the peer (repeatable): the output of `alknet id` on the peer.
        #[arg(long = "fingerprint", required = true, value_name = "FINGERPRINT")]
        fingerprints: Vec<String>,
        /// A service or permission the peer gets (repeatable; `*` grants all).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A resource the peer may reach (repeatable; interpreted by services).
        #[arg(long = "resource", value_name = "RESOURCE")]
        resources: Vec<String>,
        /// A name for people.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List peers.
    List,
    /// Show one peer.
    Show {
        /// Peer id.
        name: String,
    },
    /// Change a peer's keys, scopes or display name.
    Update {
        /// Peer id.
        name: String,
        /// Add a key (repeatable).
        #[arg(long = "add-fingerprint", value_name = "FINGERPRINT")]
        add_fingerprints: Vec<String>,
        /// Remove a key (repeatable).
        #[arg(long = "remove-fingerprint", value_name = "FINGERPRINT")]
        remove_fingerprints: Vec<String>,
        /// Add a scope (repeatable).
        #[arg(long = "add-scope", value_name = "SCOPE")]
        add_scopes: Vec<String>,
        /// Remove a scope (repeatable).
        #[arg(long = "remove-scope", value_name = "SCOPE")]
        remove_scopes: Vec<String>,
        /// Register an SSH public key, the whole line of a .pub file (repeatable), e.g.
        /// "ssh-ed25519 AAAA… me@laptop". Under `auth = "peer+key"` the SSH service accepts
        /// only the peer's registered keys. The comment is dropped.
        #[arg(long = "add-ssh-key", value_name = "KEY")]
        add_ssh_keys: Vec<String>,
        /// Remove a registered SSH public key (repeatable; the comment is ignored).
        #[arg(long = "remove-ssh-key", value_name = "KEY")]
        remove_ssh_keys: Vec<String>,
        /// New display name.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Refuse the peer (and close its live connections) until it is enabled again.
    ///
    /// Peers of the config file's `[[peers]]` are changed in the file (`enabled = false`)
    /// followed by a restart; these commands refuse them and name the file and line.
    Disable {
        /// Peer id.
        name: String,
    },
    /// Accept a disabled peer again.
    Enable {
        /// Peer id.
        name: String,
    },
    /// Remove the peer and its tokens for good, closing its live connections.
    Revoke {
        /// Peer id.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCmd {
    /// Create a token acting as PEER; the token is printed once and never stored.
    Create {
        /// The peer the token acts as.
        peer: String,
        /// A scope of the token (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A note saying what the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. `30m`, `12h`, `90d`; default: no expiry.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Revoke a token by the prefix `token list` shows.
    Revoke {
        /// Token prefix.
        prefix: String,
    },
    /// List tokens (prefixes, owners, scopes, expiry).
    List,
}

fn execute(data_dir: &Path, op: AdminOp) -> Result<serde_json::Value> {
    if control::server_running(data_dir) {
        return control::request(data_dir, &Request::Admin { admin: op })
            .map_err(anyhow::Error::msg);
    }
    let path = data_dir.join(alknet_core::identity::store::STORE_FILE);
    alknet_core::fsutil::ensure_data_dir(data_dir)
        .map_err(|e| anyhow!("cannot use data directory {}: {e}", data_dir.display()))?;
    let store = alknet_core::identity::store::RedbStore::open(&path)?;
    alknet_core::ops::admin::execute(&store, &op, control::unix_now()).map_err(anyhow::Error::msg)
}

fn print_peers(peers: &[PeerView]) {
    println!(
        "{:<20} {:<8} {:<24} {:<24}",
        "PEER", "ENABLED", "SCOPES", "KEYS"
    );
    for p in peers {
        let keys = p
            .fingerprints
            .iter()
            .map(|f| f.get(..20).unwrap_or(f).to_owned() + "…")
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{:<20} {:<8} {:<24} {:<24}",
            if p.config.is_some() {
                format!("{} (config)", p.id)
            } else {
                p.id.clone()
            },
            if p.enabled { "yes" } else { "no" },
            p.scopes.join(","),
            keys
        );
    }
}

fn print_peer(p: &PeerView) {
    println!("peer          {}", p.id);
    if let Some(d) = &p.display_name {
        println!("display name  {d}");
    }
    println!("enabled       {}", if p.enabled { "yes" } else { "no" });
    if let Some(origin) = &p.config {
        println!("defined in    {origin} (change it there and restart alknet)");
    }
    println!("scopes        {}", p.scopes.join(", "));
    if !p.resources.is_empty() {
        println!("resources     {}", p.resources.join(", "));
    }
    for f in &p.fingerprints {
        println!("key           {f}");
    }
    for k in &p.ssh_keys {
        println!("ssh key       {k}");
    }
}

pub(crate) fn peer(data_dir: &Path, cmd: PeerCmd, json: bool) -> Result<()> {
    let op = match cmd {
        PeerCmd::Add {
            name,
            fingerprints,
            scopes,
            resources,
            display_name,
        } => AdminOp::PeerAdd {
            id: name,
            fingerprints,
            scopes,
            resources,
            display_name,
        },
        PeerCmd::List => AdminOp::PeerList,
        PeerCmd::Show { name } => AdminOp::PeerShow { id: name },
        PeerCmd::Update {
            name,
            add_fingerprints,
            remove_fingerprints,
            add_scopes,
            remove_scopes,
            add_ssh_keys,
            remove_ssh_keys,
            display_name,
        } => {
            // Checked here too, so a typo is refused before the server is asked.
            for k in add_ssh_keys.iter().chain(&remove_ssh_keys) {
                alknet_core::identity::normalize_ssh_key(k)
                    .map_err(|e| anyhow::anyhow!("--add-ssh-key/--remove-ssh-key {k:?}: {e}"))?;
            }
            AdminOp::PeerUpdate {
                id: name,
                add_fingerprints,
                remove_fingerprints,
                add_scopes,
                remove_scopes,
                add_ssh_keys,
                remove_ssh_keys,
                display_name,
            }
        }
        PeerCmd::Disable { name } => AdminOp::PeerDisable { id: name },
        PeerCmd::Enable { name } => AdminOp::PeerEnable { id: name },
        PeerCmd::Revoke { name } => AdminOp::PeerRevoke { id: name },
    };
    let is_list = matches!(op, AdminOp::PeerList);
    let verb = match &op {
        AdminOp::PeerAdd { .. } => Some("added"),
        AdminOp::PeerUpdate { .. } => Some("updated"),
        AdminOp::PeerDisable { .. } => Some("disabled"),
        AdminOp::PeerEnable { .. } => Some("enabled"),
        AdminOp::PeerRevoke { .. } => Some("revoked"),
        _ => None,
    };
    let v = execute(data_dir, op)?;
    if json {
        println!("{v}");
    } else if is_list {
        let peers: Vec<PeerView> = serde_json::from_value(v)?;
        print_peers(&peers);
    } else {
        let p: PeerView = serde_json::from_value(v)?;
        if let Some(verb) = verb {
            println!("{verb} peer {}", p.id);
        }
        print_peer(&p);
    }
    Ok(())
}

pub(crate) fn token(data_dir: &Path, cmd: TokenCmd, json: bool) -> Result<()> {
    let op = match cmd {
        TokenCmd::Create {
            peer,
            scopes,
            description,
            expires_in,
        } => {
            let expires_at = expires_in
                .map(|d| parse_lifetime(&d).map(|secs| control::unix_now().saturating_add(secs)))
                .transpose()?;
            AdminOp::TokenCreate {
                peer,
                scopes,
                description,
                expires_at,
            }
        }
        TokenCmd::Revoke { prefix } => AdminOp::TokenRevoke { prefix },
        TokenCmd::List => AdminOp::TokenList,
    };
    let kind = match &op {
        AdminOp::TokenCreate { .. } => 0,
        AdminOp::TokenRevoke { .. } => 1,
        _ => 2,
    };
    let v = execute(data_dir, op)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    match kind {
        0 => {
            let t: TokenView = serde_json::from_value(v)?;
            println!("{}", t.token.unwrap_or_default());
            eprintln!(
                "token {} for peer {} (shown once; store it now)",
                t.prefix, t.peer
            );
        }
        1 => println!("revoked"),
        _ => {
            let list: Vec<TokenView> = serde_json::from_value(v)?;
            println!(
                "{:<10} {:<20} {:<24} {:<12} DESCRIPTION",
                "PREFIX", "PEER", "SCOPES", "EXPIRES"
            );
            for t in list {
                println!(
                    "{:<10} {:<20} {:<24} {:<12} {}",
                    t.prefix,
                    t.peer,
                    t.scopes.join(","),
                    t.expires_at
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "never".into()),
                    t.description
                );
            }
        }
    }
    Ok(())
}

pub(crate) fn parse_lifetime(s: &str) -> Result<u64> {
    if let Some(days) = s.strip_suffix('d') {
        let d: u64 = days
            .parse()
            .map_err(|_| anyhow!("--expires-in {s:?}: write e.g. 30m, 12h, 90d"))?;
        return Ok(d.saturating_mul(86_400));
    }
    alknet_core::config::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| anyhow!("--expires-in: {e}"))
}

pub(crate) fn sessions(data_dir: &Path, json: bool) -> Result<()> {
    let v = control::request(data_dir, &Request::Sessions).map_err(anyhow::Error::msg)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let list: Vec<alknet_core::SessionInfo> = serde_json::from_value(v)?;
    println!(
        "{:<20} {:<14} {:<40} {:<12} {:<6} SHARD",
        "PEER", "SERVICE", "FROM", "SINCE", "MTU"
    );
    let now = control::unix_now();
    for s in list {
        println!(
            "{:<20} {:<14} {:<40} {:<12} {:<6} {}",
            s.peer,
            s.alpn,
            s.remote,
            format!("{}s ago", now.saturating_sub(s.since_unix)),
            s.mtu,
            s.shard
        );
    }
    Ok(())
}
