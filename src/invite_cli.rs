//! `alknet invite …` on the gateway and `alknet join CODE` on the device.
//!
//! `invite` makes the secret here, sends only its SHA-256 to the running server (through the
//! control socket) or writes it to the store when no server runs, and prints the code: the
//! server's addresses, its fingerprint and the secret. `join` reads the code, joins over
//! `alknet/join` pinning the fingerprint, and stores the server under a name
//! (`--as`) in the `servers` file, plus each address in the known-servers file.
//!
//! Which addresses go into the code: every `--address HOST:PORT` given; else the listen
//! address when it is a specific one; for `[::]` or `0.0.0.0`, the host's addresses that
//! carry its default routes (IPv4 and IPv6), with the listen port. A gateway behind NAT or
//! known by a DNS name passes `--address gw.example.org:4433`.

use alknet_core::client::{KnownServers, ServerEntry, Servers, valid_name};
use alknet_core::config::{Config, DriverKind};
use alknet_core::ops::admin::{AdminOp, InviteView};
use alknet_core::ops::control::{self, Request};
use alknet_proto::join::{Invite, InviteAddress, MAX_ADDRESSES, decode_invite, encode_invite};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

/// Arguments of `alknet invite`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  alknet invite\n  alknet invite --scope echo --scope call --uses 2 --expires-in 30m\n  alknet invite --address gw.example.org:4433 --name laptop\n  alknet invite list\n  alknet invite revoke 3fa2c19b07"
)]
pub(crate) struct InviteArgs {
    #[command(subcommand)]
    cmd: Option<InviteCmd>,
    /// A scope the joining device gets (repeatable; default `*`, every service).
    #[arg(long = "scope", value_name = "S")]
    scopes: Vec<String>,
    /// How long the code works, e.g. `10m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    expires_in: String,
    /// How many devices the code admits.
    #[arg(long, default_value_t = 1, value_name = "N")]
    uses: u32,
    /// Peer id for the joining device (default: the name the device proposes, else
    /// `device`; a taken id gets `-2`, `-3`, …).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Address the device should connect to (repeatable, up to 8). Default: the listen
    /// address, or for [::]/0.0.0.0 this host's addresses with the listen port.
    #[arg(long = "address", value_name = "HOST:PORT")]
    addresses: Vec<String>,
    /// Config file of the server, for its listen address when no server is running.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// File holding the vault passphrase, when no server runs and the node key is in a
    /// vault.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum InviteCmd {
    /// List invites: id, scopes, uses left, expiry (never the codes).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an invite: its code stops working at once.
    Revoke {
        /// The id `alknet invite list` shows.
        id: String,
    },
}

/// Arguments of `alknet join`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  alknet join alkinv1_… --as gw\n  alknet call gw /node/info\n  alknet connect gw --alpn alknet/echo"
)]
pub(crate) struct JoinArgs {
    /// The code `alknet invite` printed on the gateway.
    code: String,
    /// Name to store the server under, used in place of host:port by `alknet connect`,
    /// `alknet call` and other client commands (default: `gw`).
    #[arg(long = "as", value_name = "NAME", default_value = "gw")]
    as_name: String,
    /// Peer id to propose to the server (default: this host's name). The invite's
    /// `--name` wins; the server adds `-2`, … when the id is taken.
    #[arg(long, value_name = "ID")]
    peer_name: Option<String>,
    /// File holding the vault passphrase, when the node key lives in a vault.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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

pub(crate) fn invite(data_dir: &Path, args: InviteArgs) -> Result<()> {
    match args.cmd {
        Some(InviteCmd::List { json }) => return list(data_dir, json || args.json),
        Some(InviteCmd::Revoke { id }) => {
            execute(data_dir, AdminOp::InviteRevoke { id: id.clone() })?;
            println!("revoked invite {id}");
            return Ok(());
        }
        None => {}
    }
    let lifetime = crate::admin_cli::parse_lifetime(&args.expires_in)?;
    if lifetime == 0 {
        bail!("--expires-in must be at least 1s");
    }
    let scopes = if args.scopes.is_empty() {
        vec!["*".to_owned()]
    } else {
        args.scopes.clone()
    };
    // What the code carries about the server: from the running one, else from the files.
    let (fingerprint, listen) = if control::server_running(data_dir) {
        let v = control::request(data_dir, &Request::Stats).map_err(anyhow::Error::msg)?;
        let s = &v["server"];
        let fp = s["fingerprint"]
            .as_str()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("the running server did not report its fingerprint"))?;
        let listen: SocketAddr = s["listen"]
            .as_str()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| anyhow!("the running server did not report its address"))?;
        (fp, listen)
    } else {
        let key = crate::node::load(data_dir, args.passphrase_file.as_deref())?;
        let listen = match &args.config {
            Some(p) => Config::load(p)?.listen,
            None => Config::default().listen,
        };
        (key.key.fingerprint(), listen)
    };
    let addresses = invite_addresses(&args.addresses, listen)?;
    let secret = alknet_core::ops::admin::new_invite_secret();
    let hash = alknet_core::ops::admin::invite_secret_hash(&secret[..]);
    let v = execute(
        data_dir,
        AdminOp::InviteCreate {
            hash: hex_lower(&hash),
            scopes,
            name: args.name.clone(),
            uses: args.uses,
            expires_at: control::unix_now().saturating_add(lifetime),
        },
    )?;
    let view: InviteView = serde_json::from_value(v)?;
    let code = encode_invite(&Invite {
        fingerprint,
        secret: *secret,
        addresses: addresses.clone(),
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "code": code, "invite": view, "addresses": addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>() })
        );
        return Ok(());
    }
    println!("{code}");
    eprintln!(
        "invite {} for {} device(s) with scopes {}, valid for {}, to {} (server {fingerprint})",
        view.id,
        view.uses,
        view.scopes.join(","),
        args.expires_in,
        addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    eprintln!(
        "on the device: alknet join <code> --as NAME   (revoke: alknet invite revoke {})",
        view.id
    );
    Ok(())
}

fn list(data_dir: &Path, json: bool) -> Result<()> {
    let v = execute(data_dir, AdminOp::InviteList)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let list: Vec<InviteView> = serde_json::from_value(v)?;
    let now = control::unix_now();
    println!(
        "{:<12} {:<20} {:<6} {:<16} ADMITTED",
        "ID", "SCOPES", "LEFT", "EXPIRES"
    );
    for i in list {
        let expires = if i.expires_at <= now {
            "expired".to_owned()
        } else {
            format!("in {}s", i.expires_at - now)
        };
        println!(
            "{:<12} {:<20} {:<6} {:<16} {}",
            i.id,
            i.scopes.join(","),
            format!("{}/{}", i.uses_left, i.uses),
            expires,
            i.admitted.join(",")
        );
    }
    Ok(())
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The addresses a code carries (see the module doc).
fn invite_addresses(given: &[String], listen: SocketAddr) -> Result<Vec<InviteAddress>> {
    if given.len() > MAX_ADDRESSES {
        bail!("at most {MAX_ADDRESSES} --address flags");
    }
    if !given.is_empty() {
        return given.iter().map(|a| parse_address(a)).collect();
    }
    if !listen.ip().is_unspecified() {
        return Ok(vec![InviteAddress::Ip(listen)]);
    }
    let mut out = Vec::new();
    // The source address the kernel would pick for the default routes. Connecting a UDP
    // socket sends nothing; the documentation prefixes only select the route.
    for probe in ["192.0.2.1:9", "[2001:db8::1]:9"] {
        let Ok(target) = probe.parse::<SocketAddr>() else {
            continue;
        };
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        if listen.is_ipv4() && target.is_ipv6() {
            continue;
        }
        let ip = UdpSocket::bind(bind)
            .and_then(|s| s.connect(target).and_then(|()| s.local_addr()))
            .map(|a| a.ip());
        if let Ok(ip) = ip
            && usable(ip)
        {
            out.push(InviteAddress::Ip(SocketAddr::new(ip, listen.port())));
        }
    }
    if out.is_empty() {
        bail!(
            "the server listens on {listen} and this host has no routed address to put in the code; pass --address HOST:PORT (the address devices reach it at)"
        );
    }
    Ok(out)
}

fn usable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast()
}

fn parse_address(a: &str) -> Result<InviteAddress> {
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Ok(InviteAddress::Ip(sa));
    }
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--address {a:?}: write HOST:PORT, e.g. gw.example.org:4433"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("--address {a:?}: the port must be a number 1-65535"))?;
    let ok = !host.is_empty()
        && host.len() <= alknet_proto::join::MAX_HOST
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok || port == 0 {
        bail!("--address {a:?}: write HOST:PORT with a DNS name or an IP address");
    }
    Ok(InviteAddress::Host(host.to_owned(), port))
}

/// This host's name as a peer id proposal, if it makes one.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    alknet_core::ops::join::valid_id(name).then(|| name.to_owned())
}

pub(crate) fn join(data_dir: &Path, args: JoinArgs) -> Result<()> {
    if !valid_name(&args.as_name) {
        bail!(
            "--as {:?}: a server name is 1..=64 letters, digits, `-`, `_` or `.` (no `:`, which marks host:port)",
            args.as_name
        );
    }
    if let Some(p) = &args.peer_name
        && !alknet_core::ops::join::valid_id(p)
    {
        bail!("--peer-name {p:?}: 1..=64 letters, digits, `-`, `_` or `.`");
    }
    let invite = decode_invite(&args.code)?;
    let node = crate::node::load(data_dir, args.passphrase_file.as_deref())?;
    let known = KnownServers::in_dir(data_dir);
    let name = args.peer_name.clone().or_else(host_name);
    let mut result = None;
    alknet_core::net::server::run_on_driver(DriverKind::Auto, 0, || async {
        result = Some(alknet_core::client::join(&node.key, &known, &invite, name).await);
    })
    .context("cannot start the runtime")?;
    let joined = result.ok_or_else(|| anyhow!("the join did not run"))??;
    let addresses: Vec<String> = invite.addresses.iter().map(|a| a.to_string()).collect();
    Servers::in_dir(data_dir)
        .add(&ServerEntry {
            name: args.as_name.clone(),
            fingerprint: invite.fingerprint,
            addresses: addresses.clone(),
        })
        .with_context(|| {
            format!(
                "joined, but cannot store the server in {}",
                data_dir.display()
            )
        })?;
    // host:port keeps working too, pinned to the same key.
    for a in &addresses {
        if known.get(a) != Some(invite.fingerprint) {
            known
                .add(a, &invite.fingerprint)
                .with_context(|| format!("cannot write {}", known.path().display()))?;
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "server": args.as_name,
                "fingerprint": invite.fingerprint.to_string(),
                "addresses": addresses,
                "peer": joined.peer,
                "scopes": joined.scopes,
            })
        );
    } else {
        println!(
            "joined {} ({}) as peer `{}` with scopes {}",
            args.as_name,
            joined.addr,
            joined.peer,
            joined.scopes.join(",")
        );
        println!(
            "try: alknet call {0} /node/info   or   alknet connect {0} --alpn alknet/echo",
            args.as_name
        );
    }
    Ok(())
}
