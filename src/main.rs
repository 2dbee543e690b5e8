//! `alknet`: one QUIC port, many services, chosen by ALPN.
#![forbid(unsafe_code)]

mod admin_cli;
mod backup_cli;
mod connect;
#[cfg(feature = "dns")]
mod dns_cli;
#[cfg(feature = "git")]
mod git_cli;
mod git_remote;
mod invite_cli;
mod logfmt;
mod node;
mod reload_cli;
#[cfg(feature = "ssh")]
mod sftp_cli;
#[cfg(feature = "ssh")]
mod ssh_cli;
mod stats_cli;
mod vault_cli;

use alknet_core::config::Config;
use alknet_core::ops::control;
use alknet_core::service::Offer;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Alknet: a self-hosted network appliance. One UDP port carries one QUIC+TLS endpoint; the
/// ALPN negotiated in the handshake picks the service.
#[derive(Debug, Parser)]
#[command(name = "alknet", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter (tracing syntax, e.g. `info`, `alknet_core=debug`); overrides RUST_LOG.
    #[arg(long, global = true)]
    log: Option<String>,

    /// Data directory (identity, store, known servers, control socket). Default:
    /// $ALKNET_DATA_DIR, else $XDG_DATA_HOME/alknet, else ~/.local/share/alknet.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: one worker (shard) per core on one UDP port.
    ///
    /// With no arguments it creates the data directory and node key on first start, listens
    /// on [::]:4433 and prints its fingerprint and the ALPNs it serves. SIGTERM or SIGINT
    /// stops accepting, lets connections finish for the drain period, closes the rest with
    /// an application close and exits 0. SIGHUP reads the --config file again and applies
    /// what can change live, as `alknet reload` does.
    Serve {
        /// Configuration file (TOML); see deploy/alknet.toml for every key.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// UDP address to listen on (overrides `listen` in the config).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Number of workers (overrides `workers`; default: one per online core).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// File holding the vault passphrase (else $ALKNET_VAULT_PASSPHRASE_FILE, a systemd
        /// credential `alknet-vault-passphrase`, or the terminal).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Open one bidirectional stream to a service and pipe stdin/stdout through it.
    ///
    /// Usable as an OpenSSH ProxyCommand. The server key is pinned with --fingerprint, or
    /// trusted on first use and remembered in the known_servers file of the data directory;
    /// a changed key is refused with an error naming both keys. The connection is closed
    /// at once when stdin ends and the server's side is done, when the connection ends, and
    /// on SIGHUP (sent by ssh when it exits), SIGTERM or SIGINT (exit status 128 + signal).
    Connect {
        /// Server: `host:port`, or the name of a server stored by `alknet join --as NAME`.
        addr: String,
        /// Service ALPN, e.g. `alknet/echo`.
        #[arg(long)]
        alpn: String,
        /// Expected server key, `ed25519:<64 lowercase hex>` (scripts may set
        /// ALKNET_SERVER_FINGERPRINT instead, which git-remote-alknet reads too).
        #[arg(long, value_name = "FINGERPRINT", env = "ALKNET_SERVER_FINGERPRINT")]
        fingerprint: Option<String>,
        /// File holding the vault passphrase, when the node key lives in a vault.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Git repositories: list what you may read on a gateway, or create one on this server.
    /// Clone and push with stock git through `git-remote-alknet` (a symlink to `alknet` by
    /// that name on the PATH): `git clone alknet://gw/org/app.git`.
    #[cfg(feature = "git")]
    Git {
        #[command(subcommand)]
        command: git_cli::GitCommand,
    },
    /// Run by the gateway's git hooks, not by hand.
    #[cfg(feature = "git")]
    #[command(hide = true)]
    GitHook {
        /// The hook: `pre-receive`.
        hook: String,
    },
    /// Print this node's fingerprint (creating the node key on first use).
    Id {
        /// File holding the vault passphrase, when the node key lives in a vault.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the figures of the server running on this data directory: the same samples its
    /// Prometheus endpoint (`[metrics] listen`) serves.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Refresh in place (on a terminal) until interrupted.
        #[arg(long)]
        watch: bool,
        /// Time between refreshes with --watch, e.g. `2s`, `500ms`.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval)]
        interval: std::time::Duration,
    },
    /// Write a consistent snapshot of the identity store (peers, keys, tokens, invites,
    /// credentials) to FILE, mode 0600, while the server runs or not.
    ///
    /// Keep it with the vault words: the two restore a gateway. `alknet restore` reads it.
    Backup {
        /// Where to write the snapshot (replaced whole, atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore the identity store from a backup into this (stopped) data directory.
    ///
    /// Refused while a server runs on the data directory, and over an existing store unless
    /// --force (the old store is then kept beside it). The file is checked first (it opens,
    /// its schema is one this build reads, every record decodes) and the counts printed.
    Restore {
        /// The backup file (`alknet backup --out FILE`).
        file: PathBuf,
        /// Replace an existing store.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the vault: the BIP39 seed the node keys derive from.
    Vault {
        #[command(subcommand)]
        cmd: vault_cli::VaultCommand,
    },
    /// Manage peers: who may connect, with which keys and scopes. Acts on the running
    /// server through its control socket, or on the store when no server runs.
    Peer {
        #[command(subcommand)]
        cmd: admin_cli::PeerCmd,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Manage API tokens (`alk_…`): shown once at creation, stored as SHA-256.
    Token {
        #[command(subcommand)]
        cmd: admin_cli::TokenCmd,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Call an operation of the `alknet/call` service, or list them (`--list`).
    ///
    /// Results are printed as JSON lines. Server pinning and the client key work as for
    /// `alknet connect`.
    #[cfg(feature = "call")]
    Call(alknet_call::cli::CallArgs),
    /// Forward ports through a gateway's tunnel service (`alknet/tunnel`, scope `tunnel`),
    /// as `ssh -L` and `ssh -R` do, each TCP connection on a QUIC stream of its own.
    ///
    /// All forwards share one connection, which follows network changes and reconnects by
    /// itself with capped backoff (0.5 s doubling to 30 s) when it is lost. The first
    /// connection must succeed; a changed server key, or the gateway refusing this client
    /// (unknown, revoked, no `tunnel` scope), ends the command with an error. The gateway's
    /// `[[tunnels.allow]]` rules decide what may be reached and where it may listen.
    /// SIGTERM, SIGINT and SIGHUP close the connection and exit with 128 + the signal.
    ///
    /// Example: `alknet forward gw -L 5432:db.lan:5432 -R 8022:127.0.0.1:22`.
    #[cfg(feature = "tunnel")]
    Forward(alknet_tunnel::client::ForwardArgs),
    /// A local SOCKS5 proxy (RFC 1928 CONNECT; IPv4, IPv6 and names, which the gateway
    /// resolves) whose connections leave through a gateway's tunnel service.
    ///
    /// Connection, reconnection, pinning and signals work as for `alknet forward`. Use it
    /// with `curl --socks5-hostname 127.0.0.1:1080 http://host.lan/` or a browser's SOCKS
    /// setting.
    #[cfg(feature = "tunnel")]
    Socks(alknet_tunnel::client::SocksArgs),
    /// Serve one SFTP session on stdin/stdout, confined to --root (a drop-in for OpenSSH's
    /// sftp-server: `sftp -D 'alknet sftp-server --root DIR'`, or sshd's `Subsystem`).
    #[cfg(feature = "ssh")]
    SftpServer(sftp_cli::SftpServerArgs),
    /// Who is connected now: peer, service, current address (it follows a client that moved
    /// to another network; `--json` also gives the handshake address), since when, and the
    /// path MTU each connection's MTU discovery found (1200 at first).
    Sessions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The DNS service's pkarr records: sign the node's records for a relay, print the key.
    #[cfg(feature = "dns")]
    Dns {
        #[command(subcommand)]
        cmd: dns_cli::DnsCmd,
    },
    /// The SSH service's host key.
    #[cfg(feature = "ssh")]
    Ssh {
        #[command(subcommand)]
        cmd: ssh_cli::SshCmd,
    },
    /// Print the ~/.ssh/config block that makes `ssh NAME` reach this node's SSH service.
    ///
    /// Run it on the server (it reads this node's key and SSH host key) and paste the output
    /// into the client's ~/.ssh/config. The block uses `alknet connect` as ProxyCommand with
    /// the server key pinned (--fingerprint), and a KnownHostsCommand that vouches for the
    /// SSH host key under the alias alknet-NAME, so nothing is trusted on first use.
    #[cfg(feature = "ssh")]
    SshConfig {
        /// The server as clients reach it: HOST or HOST:PORT (default port 4433; IPv6 as
        /// [ADDR]:PORT).
        #[arg(value_name = "HOST[:PORT]")]
        target: String,
        /// The name to type after `ssh` (the `Host` line); default: HOST.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The client's Alknet data directory (its key), passed to `alknet connect` as
        /// --data-dir; default: the client's own default.
        #[arg(long, value_name = "DIR")]
        client_data_dir: Option<PathBuf>,
        /// The alknet program on the client, as the ProxyCommand runs it.
        #[arg(long, value_name = "PATH", default_value = "alknet")]
        alknet: String,
        /// File holding the vault passphrase, when the keys live in a vault.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Invite a device: print a one-line code for `alknet join` (or `invite list|revoke`).
    ///
    /// The code carries the server's address(es), its fingerprint and a one-time secret,
    /// which the store keeps only as a SHA-256 hash. It admits `--uses` devices (default 1)
    /// until it expires (default 1h). Works with the server running (through its control
    /// socket) and without.
    Invite(invite_cli::InviteArgs),
    /// Ask the server running on this data directory to read its config file again.
    ///
    /// What can change live is applied at once (peers, scopes, service switches, service
    /// sections, admission limits; sessions whose access went are closed) and printed;
    /// keys that need a restart are named and keep their running value. A file with an
    /// error changes nothing: the error (file, line, key) is printed and the exit status is
    /// non-zero. SIGHUP (`systemctl reload alknet`) does the same, logging the result.
    Reload {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join a gateway with a code from `alknet invite`, and store it under a name.
    ///
    /// Connects pinning the fingerprint in the code (no trust on first use), proves the
    /// code's secret on `alknet/join`, and the server records this device's key as a peer.
    /// Then `alknet connect NAME`, `alknet call NAME …` work by name.
    Join(invite_cli::JoinArgs),
}

fn init_logging(format: LogFormat, filter: Option<&str>) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and the journal get plain text that tools
    // such as fail2ban can match.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Peer text cannot break a line: see `logfmt`.
        LogFormat::Text => builder.fmt_fields(logfmt::EscapedFields).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() {
    if git_remote::invoked_as_helper() {
        init_logging(LogFormat::Text, Some("warn"));
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Err(e) = git_remote::run(&args) {
            eprintln!("error: {e:#}");
            std::process::exit(128);
        }
        return;
    }
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log.as_deref());
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let data_dir = alknet_core::fsutil::resolve_data_dir(cli.data_dir.as_deref());
    match cli.command {
        Command::Serve {
            config,
            listen,
            workers,
            passphrase_file,
        } => serve(
            &data_dir,
            config.as_deref(),
            listen,
            workers,
            passphrase_file.as_deref(),
        ),
        Command::Connect {
            addr,
            alpn,
            fingerprint,
            passphrase_file,
        } => connect::run(
            &data_dir,
            &addr,
            &alpn,
            fingerprint.as_deref(),
            passphrase_file.as_deref(),
        ),
        Command::Id {
            passphrase_file,
            json,
        } => {
            let key = node::load(&data_dir, passphrase_file.as_deref())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "fingerprint": key.key.fingerprint().to_string(), "source": key.source })
                );
            } else {
                println!("{}", key.key.fingerprint());
            }
            Ok(())
        }
        Command::Stats {
            json,
            watch,
            interval,
        } => stats_cli::run(&data_dir, json, watch, interval),
        Command::Backup { out, json } => backup_cli::backup(&data_dir, &out, json),
        Command::Restore { file, force, json } => {
            backup_cli::restore(&data_dir, &file, force, json)
        }
        Command::Vault { cmd } => {
            alknet_core::fsutil::ensure_data_dir(&data_dir)
                .with_context(|| format!("cannot use data directory {}", data_dir.display()))?;
            vault_cli::run(cmd, &data_dir)
        }
        Command::Peer { cmd, json } => admin_cli::peer(&data_dir, cmd, json),
        Command::Token { cmd, json } => admin_cli::token(&data_dir, cmd, json),
        Command::Sessions { json } => admin_cli::sessions(&data_dir, json),
        Command::Invite(args) => invite_cli::invite(&data_dir, args),
        Command::Join(args) => invite_cli::join(&data_dir, args),
        Command::Reload { json } => reload_cli::run(&data_dir, json),
        #[cfg(feature = "ssh")]
        Command::SftpServer(args) => sftp_cli::run(args),
        #[cfg(feature = "git")]
        Command::Git { command } => git_cli::run(&data_dir, command),
        #[cfg(feature = "git")]
        Command::GitHook { hook } => match hook.as_str() {
            "pre-receive" => std::process::exit(alknet_git::hook::pre_receive_main()),
            other => bail!("unknown git hook {other:?} (pre-receive)"),
        },
        #[cfg(feature = "tunnel")]
        Command::Forward(args) => {
            let key = node::load(&data_dir, args.common.passphrase_file.as_deref())?;
            let stop = connect::stop_signals()?;
            let alknet_tunnel::client::Ended::Signal(sig) =
                alknet_tunnel::client::run_forward(args, &data_dir, key.key, stop)?;
            std::process::exit(128 + sig)
        }
        #[cfg(feature = "tunnel")]
        Command::Socks(args) => {
            let key = node::load(&data_dir, args.common.passphrase_file.as_deref())?;
            let stop = connect::stop_signals()?;
            let alknet_tunnel::client::Ended::Signal(sig) =
                alknet_tunnel::client::run_socks(args, &data_dir, key.key, stop)?;
            std::process::exit(128 + sig)
        }
        #[cfg(feature = "call")]
        Command::Call(args) => {
            let key = node::load(&data_dir, args.passphrase_file.as_deref())?;
            alknet_call::cli::run(args, &data_dir, key.key)
        }
        #[cfg(feature = "ssh")]
        Command::Ssh { cmd } => ssh_cli::run(&data_dir, cmd),
        #[cfg(feature = "dns")]
        Command::Dns { cmd } => dns_cli::run(&data_dir, cmd),
        #[cfg(feature = "ssh")]
        Command::SshConfig {
            target,
            name,
            client_data_dir,
            alknet,
            passphrase_file,
        } => {
            let block = ssh_cli::config_block(
                &data_dir,
                &ssh_cli::ConfigArgs {
                    target: &target,
                    name: name.as_deref(),
                    client_data_dir: client_data_dir.as_deref(),
                    program: &alknet,
                    passphrase_file: passphrase_file.as_deref(),
                },
            )?;
            print!("{block}");
            Ok(())
        }
    }
}

/// The services compiled into this build, one entry per service behind its cargo feature,
/// in the order their ALPNs are offered. Each authenticated service is on unless its
/// `[services.NAME]` says `enabled = false`; anonymous modes only with `enabled = true`.
/// `keys` are the node's loaded keys; without them (the configuration check before any key
/// is opened) services that need a key get none and are never built.
fn services(keys: Option<&ServiceKeys>) -> Vec<Offer> {
    let _ = keys;
    vec![
        Offer::new(alknet_core::ops::join::Join::new()),
        #[cfg(feature = "ssh")]
        Offer::new({
            let ssh = alknet_ssh::Ssh::new(keys.and_then(|k| k.ssh_host.clone()));
            let ssh = match keys.and_then(|k| k.forwarder.clone()) {
                Some(f) => ssh.with_forwarder(f),
                None => ssh,
            };
            #[cfg(feature = "git")]
            let ssh = match keys.and_then(|k| k.git.clone()) {
                Some(g) => ssh.with_git(g),
                None => ssh,
            };
            ssh
        }),
        #[cfg(feature = "tunnel")]
        Offer::new(alknet_tunnel::Tunnel::new(
            keys.and_then(|k| k.forwarder.clone()).unwrap_or_else(|| {
                std::sync::Arc::new(alknet_forward::Forwarder::new(
                    alknet_forward::Policy::default(),
                ))
            }),
        )),
        #[cfg(feature = "git")]
        Offer::new(alknet_git::Git::new(keys.and_then(|k| k.git.clone()))),
        #[cfg(feature = "echo")]
        Offer::new(alknet_echo::Echo),
        #[cfg(feature = "perf")]
        Offer::new(alknet_perf::Perf),
        #[cfg(feature = "call")]
        Offer::new(alknet_call::CallService::new()),
        #[cfg(feature = "http")]
        Offer::new({
            let http = alknet_http::HttpService::new(alknet_call::Operations::new());
            #[cfg(feature = "dns")]
            let http = match keys.and_then(|k| k.dns.clone()) {
                Some(d) => http.with_dns(d),
                None => http,
            };
            http
        }),
        #[cfg(feature = "dns")]
        Offer::new(match keys.and_then(|k| k.dns.clone()) {
            Some(d) => alknet_dns::DnsService::new(d),
            None => alknet_dns::DnsService::default(),
        }),
    ]
}

/// Keys services get at construction, derived once the node key (or vault) is loaded.
#[derive(Default)]
struct ServiceKeys {
    /// The SSH host key, when the SSH service is enabled.
    #[cfg(feature = "ssh")]
    ssh_host: Option<alknet_ssh::hostkey::PrivateKey>,
    /// The gateway's TCP forwarder under `[tunnels]`, shared by every forwarding service.
    forwarder: Option<std::sync::Arc<alknet_forward::Forwarder>>,
    /// The git repositories under `[services.git]` and `[git]`.
    #[cfg(feature = "git")]
    git: Option<std::sync::Arc<alknet_git::Gateway>>,
    /// The DNS zone, pkarr relay store and limits, when `[services.dns]` is on.
    #[cfg(feature = "dns")]
    dns: Option<alknet_dns::Dns>,
}

impl ServiceKeys {
    fn load(data_dir: &Path, config: &Config, node: &node::LoadedKey) -> Result<Self> {
        let _ = (data_dir, config, node);
        Ok(Self {
            #[cfg(feature = "ssh")]
            ssh_host: if config.service_enabled("ssh") {
                Some(ssh_cli::host_key(data_dir, node)?)
            } else {
                None
            },
            forwarder: Some(std::sync::Arc::new(alknet_forward::Forwarder::new(
                alknet_forward::Policy::new(&config.tunnels),
            ))),
            #[cfg(feature = "git")]
            git: {
                let section = config.service_section::<alknet_git::GitSettings>("git")?;
                if section.enabled == Some(false) {
                    None
                } else {
                    let gw = alknet_git::Gateway::new(data_dir, section.config, &config.git)
                        .context("cannot create the git repository root")?;
                    Some(std::sync::Arc::new(gw))
                }
            },
            #[cfg(feature = "dns")]
            dns: dns_cli::load(data_dir, config)?,
        })
    }
}

fn serve(
    data_dir: &Path,
    config_path: Option<&Path>,
    listen: Option<SocketAddr>,
    workers: Option<usize>,
    passphrase_file: Option<&Path>,
) -> Result<()> {
    let mut config = match config_path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(w) = workers
        && (w == 0 || w > 256)
    {
        bail!("--workers must be between 1 and 256, got {w}");
    }
    let overrides = alknet_core::ops::reload::Overrides { listen, workers };
    overrides.apply(&mut config);
    // Every config problem, the services' sections included, is reported before any key or
    // store is opened.
    alknet_core::Registry::from_config(&config, services(None))?;
    if let Err(e) = alknet_core::net::sys::harden_process() {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    let node = node::load(data_dir, passphrase_file)?;
    tracing::info!(source = node.source, "node key loaded");
    let keys = ServiceKeys::load(data_dir, &config, &node)?;
    let mut registry = alknet_core::Registry::from_config(&config, services(Some(&keys)))?;
    let forwarder = keys.forwarder.clone();
    #[cfg(feature = "git")]
    let git_gateway = keys.git.clone();
    #[cfg(feature = "dns")]
    let dns = keys.dns.clone();

    let store = Arc::new(alknet_core::identity::store::RedbStore::open(
        &data_dir.join(alknet_core::identity::store::STORE_FILE),
    )?);
    store.set_file_peers(alknet_core::identity::file_peers(&config)?)?;
    registry.set_peer_store(store.clone());
    registry.set_invite_store(store.clone());
    let file_peer_ids: Vec<String> = config
        .peers
        .iter()
        .filter(|p| p.enabled)
        .map(|p| p.id.clone())
        .collect();
    if registry.is_empty() {
        tracing::warn!(
            "no service is enabled, so every handshake will fail; enable one in a config file (e.g. `[services.echo]` with `enabled = true`) and pass it with --config"
        );
    }
    let from_config = Arc::new(
        alknet_core::identity::MemoryIdentities::from_config(&config.peers)
            .context("peers in the config file")?,
    );
    let identities = Arc::new(alknet_core::identity::LayeredIdentities::new(vec![
        from_config.clone(),
        store.clone(),
    ]));
    let config = Arc::new(config);
    // The running services share their config watches with this clone, which a reload
    // stores new sections through.
    let running_registry = registry.clone();
    #[cfg(feature = "dns")]
    let pkarr_seed = match &keys.dns {
        Some(_) => Some(dns_cli::seed(data_dir, &node)?),
        None => None,
    };
    let handle = alknet_core::start(config.clone(), node.key, registry, identities)?;

    let alpns: Vec<String> = handle
        .alpns()
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    #[cfg(feature = "dns")]
    if let (Some(d), Some(seed)) = (&keys.dns, &pkarr_seed) {
        let own = alknet_dns::NodeRecords {
            fingerprint: handle.fingerprint().to_string(),
            port: handle.local_addr().port(),
            alpns: alpns.clone(),
        };
        match dns_cli::publish_own(d, seed, &own) {
            Ok(z32) => tracing::info!(key = %z32, "dns: the node's pkarr records are served"),
            Err(e) => tracing::warn!(error = %e, "dns: the node's pkarr records are not served"),
        }
    }
    let info = control::ServerInfo {
        fingerprint: handle.fingerprint().to_string(),
        listen: handle.local_addr().to_string(),
        workers: handle.workers(),
        alpns: alpns.clone(),
    };
    let peer_ids = store_peer_ids(&store);
    let notifier = Arc::new(alknet_core::ops::systemd::Notifier::from_env());
    let reloader = Arc::new(
        alknet_core::ops::reload::Reloader::new(alknet_core::ops::reload::ReloadParts {
            path: config_path.map(Path::to_owned),
            overrides,
            config: config.clone(),
            file_peers: from_config.clone(),
            store: Some(store.clone()),
            registry: running_registry,
            offers: Box::new(|| services(None)),
            handle: handle.control(),
        })
        .with_notifier(notifier.clone(), Box::new(status_line(&handle, &alpns)))
        .on_live_change(Box::new(move |config, keys| {
            if let Some(f) = &forwarder
                && keys.iter().any(|k| k == "tunnels")
            {
                f.set_policy(alknet_forward::Policy::new(&config.tunnels));
            }
            #[cfg(feature = "dns")]
            if let Some(d) = &dns
                && keys.iter().any(|k| k == "dns" || k == "services.dns")
            {
                match (
                    config.service_section::<alknet_dns::DnsSettings>("dns"),
                    config.dns_records(),
                ) {
                    (Ok(section), Ok(records)) => d.reconfigure(section.config, records),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, "dns: the reloaded zone was not taken")
                    }
                }
            }
            #[cfg(feature = "git")]
            if let Some(g) = &git_gateway {
                if keys.iter().any(|k| k == "git") {
                    g.set_rules(&config.git);
                }
                if keys.iter().any(|k| k == "services.git")
                    && let Ok(section) = config.service_section::<alknet_git::GitSettings>("git")
                {
                    g.set_settings(section.config);
                }
            }
        })),
    );
    let sock = match control::serve_with_reload(
        data_dir,
        handle.control(),
        info.clone(),
        Some(store.clone()),
        Some(reloader.clone()),
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            handle.shutdown();
            handle.join();
            return Err(anyhow::anyhow!("control socket: {e}"));
        }
    };
    if let Some(listen) = config.metrics.listen {
        let source = alknet_core::ops::metrics::Source {
            handle: handle.control(),
            store: Some(store.clone()),
            info: info.clone(),
        };
        match alknet_core::ops::metrics::serve(listen, source) {
            Ok(bound) => tracing::info!(%bound, "metrics at http://{bound}/metrics"),
            Err(e) => {
                handle.shutdown();
                handle.join();
                if let Some(p) = &sock {
                    let _ = std::fs::remove_file(p);
                }
                bail!(
                    "cannot serve metrics on {listen} ([metrics] listen): {e}; choose another address"
                );
            }
        }
    }
    println!(
        "alknet listening on {} (udp), {} workers",
        handle.local_addr(),
        handle.workers()
    );
    println!("fingerprint {}", handle.fingerprint());
    println!(
        "alpns {}",
        if alpns.is_empty() {
            "(none)".to_owned()
        } else {
            alpns.join(",")
        }
    );
    println!("{}", who_can_connect(data_dir, &file_peer_ids, &peer_ids));

    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    // Every shard serves and the control socket is up: tell the service manager, then keep
    // the status line fresh and, under a watchdog, ping while every shard is turning.
    let status = status_line(&handle, &alpns);
    notifier.ready(&status());
    let watchdog = alknet_core::ops::systemd::watchdog_period();
    let watchdog_stop = if notifier.is_active() {
        match alknet_core::ops::systemd::spawn_watchdog(
            notifier.clone(),
            watchdog,
            handle.heartbeats(),
            status,
        ) {
            Ok(stop) => Some(stop),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the watchdog thread");
                None
            }
        }
    } else {
        None
    };
    let hangup = reloader.clone();
    let on_hangup = move || {
        // Logged by the reloader, success or failure; the server goes on either way.
        let _ = hangup.reload();
    };
    match wait_for_stop(signals, handle.worker_exits(), on_hangup) {
        Stop::Signal(sig, more) => {
            notifier.stopping();
            if let Some(stop) = &watchdog_stop {
                stop.stop();
            }
            let drain = reloader.running().drain_period.0;
            tracing::info!(signal = sig, ?drain, "shutting down");
            handle.shutdown();
            // A second signal (or a shard that dies) while draining exits at once, non-zero.
            std::thread::spawn(move || {
                if more.recv().is_ok() {
                    std::process::exit(1);
                }
            });
        }
        Stop::ShardDown(exit) => {
            // The kernel keeps steering clients to the dead shard's socket: end the process
            // so its supervisor starts a whole server again.
            tracing::error!(
                shard = exit.shard,
                reason = %exit.reason,
                "a shard stopped serving; exiting so the supervisor restarts the server"
            );
            if let Some(p) = &sock {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(EXIT_SHARD_DOWN);
        }
    }
    handle.join();
    if let Some(p) = sock {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("stopped");
    Ok(())
}

/// The service manager's status line: connections, sessions, services.
fn status_line(
    handle: &alknet_core::ServerHandle,
    alpns: &[String],
) -> impl Fn() -> String + Send + Sync + 'static {
    let control = handle.control();
    let services = if alpns.is_empty() {
        "none".to_owned()
    } else {
        alpns.join(",")
    };
    move || {
        let c = control.stats();
        format!(
            "{} connections, {} sessions; services {services}",
            c.connections_open,
            control.sessions().len()
        )
    }
}

/// The enabled peers of the store, in id order.
fn store_peer_ids(store: &alknet_core::identity::store::RedbStore) -> Vec<String> {
    use alknet_core::IdentityStore;
    let mut ids: Vec<String> = store
        .list_peers()
        .unwrap_or_default()
        .iter()
        .filter(|p| p.enabled)
        .map(|p| p.peer_id.clone())
        .collect();
    ids.sort();
    ids
}

/// The start-up line saying who can get in.
fn who_can_connect(data_dir: &Path, file: &[String], store: &[String]) -> String {
    let all: Vec<&str> = file.iter().chain(store).map(String::as_str).collect();
    if all.is_empty() {
        return format!(
            "no peers yet: nobody can connect; run `alknet invite --data-dir {}` here and `alknet join CODE --as NAME` on the device",
            data_dir.display()
        );
    }
    const SHOWN: usize = 10;
    let mut names = all
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > SHOWN {
        names.push_str(&format!(
            ", … ({} more; `alknet peer list`)",
            all.len() - SHOWN
        ));
    }
    format!("peers {} can connect: {names}", all.len())
}

/// Exit status when a shard thread ended without a shutdown (`EX_SOFTWARE`).
const EXIT_SHARD_DOWN: i32 = 70;

/// What ends `alknet serve`.
enum Event {
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// A shard thread ended without a shutdown.
    ShardDown(alknet_core::net::server::WorkerExit),
}

/// Why `alknet serve` stops.
enum Stop {
    /// A signal; later events (a second signal) arrive on the receiver.
    Signal(i32, std::sync::mpsc::Receiver<Event>),
    /// A shard thread ended.
    ShardDown(alknet_core::net::server::WorkerExit),
}

/// Waits for SIGTERM/SIGINT or for a shard thread to end, whichever comes first; each
/// SIGHUP runs `on_hangup` (the reload) on the signal thread, at any time, draining or not.
fn wait_for_stop(
    mut signals: signal_hook::iterator::Signals,
    exits: flume::Receiver<alknet_core::net::server::WorkerExit>,
    on_hangup: impl Fn() + Send + 'static,
) -> Stop {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Event>(4);
    let on_signal = tx.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                on_hangup();
                continue;
            }
            if on_signal.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        if let Ok(exit) = exits.recv() {
            let _ = tx.send(Event::ShardDown(exit));
        }
    });
    match rx.recv() {
        Ok(Event::Signal(sig)) => Stop::Signal(sig, rx),
        Ok(Event::ShardDown(exit)) => Stop::ShardDown(exit),
        // Both senders gone: nothing can stop the server any more but a signal handler
        // that failed; stop as for SIGTERM.
        Err(_) => Stop::Signal(signal_hook::consts::SIGTERM, rx),
    }
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match alknet_core::config::parse_duration(s)? {
        d if d.is_zero() => Err("the interval must be above zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid_for_every_service_of_this_build() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alknet.toml");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let registry = alknet_core::Registry::from_config(&config, services(None))
            .unwrap_or_else(|e| panic!("{e}"));
        let none = alknet_core::Registry::from_config(&Config::default(), services(None))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            registry.alpns(),
            none.alpns(),
            "the example enables what serving with no config enables"
        );
        let documented: Vec<&str> = config.services.keys().map(String::as_str).collect();
        for offer in services(None) {
            assert!(
                documented.contains(&offer.name()),
                "deploy/alknet.toml does not document [services.{}]",
                offer.name()
            );
        }
    }
}
