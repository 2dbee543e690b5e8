//! `alknet dns …`: the node's pkarr key and its signed records, and the DNS service's parts
//! `alknet serve` builds (zone, relay store, the node's own packet).
//!
//! The pkarr key comes from the vault (`m/74'/0'/2'/0'`) when the data directory has one,
//! else from [`KEY_FILE`] there (hex, mode 0600, created on first use).

use crate::node::LoadedKey;
use alknet_core::config::Config;
use alknet_dns::{Dns, DnsSettings, NodeRecords, pkarr};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The pkarr key's file in the data directory (used only when there is no vault).
pub(crate) const KEY_FILE: &str = "pkarr_ed25519.key";

/// `alknet dns …`
#[derive(Debug, Subcommand)]
pub(crate) enum DnsCmd {
    /// Sign the node's records as a pkarr packet and write the relay payload to a file.
    ///
    /// The packet holds `_alknet` TXT (`fp=ed25519:…`) and SVCB (the QUIC port and the
    /// ALPNs the config serves), and an A/AAAA at the key's apex for each --address. Upload
    /// it to any pkarr relay: `curl -X PUT --data-binary @FILE https://RELAY/<z32 key>`
    /// (the key is printed); a gateway with the DNS and HTTP services on is such a relay.
    Publish {
        /// Where to write the payload (signature, timestamp, DNS packet).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The server's config file (for the port and the services).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// An address to publish at the key's apex (repeatable).
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<IpAddr>,
        /// File holding the vault passphrase, when the keys live in a vault.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print JSON (key, file, bytes, timestamp) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the node's pkarr public key (z-base-32), the name its records live under.
    Key {
        /// File holding the vault passphrase, when the keys live in a vault.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

/// The pkarr key's seed: the vault's, else the data directory's key file.
pub(crate) fn seed(data_dir: &Path, node: &LoadedKey) -> Result<Zeroizing<[u8; 32]>> {
    if let Some(s) = &node.pkarr_seed {
        return Ok(s.clone());
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut seed = Zeroizing::new([0u8; 32]);
            hex_decode(text.trim(), &mut seed[..]).with_context(|| {
                format!(
                    "{}: not a pkarr key (64 hex digits); move it away to make a new key",
                    path.display()
                )
            })?;
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new([0u8; 32]);
            alknet_vault::random_bytes(&mut seed[..]).context("cannot make a pkarr key")?;
            let text = Zeroizing::new(format!("{}\n", hex(&seed[..])));
            alknet_core::fsutil::write_private_atomic(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(seed)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str, out: &mut [u8]) -> Result<()> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("expected {} hex digits", out.len() * 2);
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)?;
    }
    Ok(())
}

/// The DNS of `alknet serve`: settings, the zone's records and the relay store in the data
/// directory. `None` when the service is off.
pub(crate) fn load(data_dir: &Path, config: &Config) -> Result<Option<Dns>> {
    let section = config.service_section::<DnsSettings>("dns")?;
    if section.enabled != Some(true) {
        return Ok(None);
    }
    let records = config.dns_records()?;
    let path = data_dir.join(pkarr::STORE_FILE);
    let store = pkarr::PkarrStore::open(&path, section.config.max_pkarr_packets)
        .map_err(|e| anyhow::anyhow!("pkarr relay store: {e}"))?;
    Ok(Some(Dns::new(section.config, records, Arc::new(store))))
}

/// Signs the node's packet and puts it in the node's own relay store, so DoQ answers the
/// node's `<z32>` names from the start.
pub(crate) fn publish_own(dns: &Dns, seed: &[u8; 32], node: &NodeRecords) -> Result<String> {
    let kp = pkarr::keypair(seed);
    let packet = pkarr::node_packet(&kp, node, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let z32 = kp.public_key().to_z32();
    dns.pkarr()
        .put(&z32, &packet.to_relay_payload())
        .map_err(|e| anyhow::anyhow!("the node's own pkarr packet: {e}"))?;
    Ok(z32)
}

/// What `alknet serve` with `config` would publish: the QUIC port and the served ALPNs.
fn node_of(config: &Config, fingerprint: String) -> Result<NodeRecords> {
    let registry = alknet_core::Registry::from_config(config, crate::services(None))?;
    Ok(NodeRecords {
        fingerprint,
        port: config.listen.port(),
        alpns: registry
            .alpns()
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    })
}

pub(crate) fn run(data_dir: &Path, cmd: DnsCmd) -> Result<()> {
    match cmd {
        DnsCmd::Publish {
            out,
            config,
            addresses,
            passphrase_file,
            json,
        } => {
            let config = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            let node = crate::node::load(data_dir, passphrase_file.as_deref())?;
            let records = node_of(&config, node.key.fingerprint().to_string())?;
            let seed = seed(data_dir, &node)?;
            let kp = pkarr::keypair(&seed);
            let packet = pkarr::node_packet(&kp, &records, &addresses)
                .map_err(|e| anyhow::anyhow!("cannot sign the records: {e}"))?;
            let payload = packet.to_relay_payload();
            std::fs::write(&out, &payload)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let z32 = kp.public_key().to_z32();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "key": z32,
                        "file": out.display().to_string(),
                        "bytes": payload.len(),
                        "timestamp": packet.timestamp().as_u64(),
                    })
                );
            } else {
                println!("key {z32}");
                println!("wrote {} ({} bytes)", out.display(), payload.len());
                println!(
                    "upload: curl -X PUT --data-binary @{} https://RELAY/{z32}",
                    out.display()
                );
            }
            Ok(())
        }
        DnsCmd::Key { passphrase_file } => {
            let node = crate::node::load(data_dir, passphrase_file.as_deref())?;
            let seed = seed(data_dir, &node)?;
            println!("{}", pkarr::keypair(&seed).public_key().to_z32());
            Ok(())
        }
    }
}
