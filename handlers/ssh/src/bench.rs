//! For the SSH benchmark's bridge-cost variant only (`bench/benches/ssh.rs`): the service's
//! russh server and connection handler on plain TCP, without QUIC or the tokio bridge, on a
//! tokio runtime shaped like the side runtime. Not a way to deploy the service: no QUIC peer
//! stands behind a connection, so every one is taken as the peer named here.

use crate::config::SshConfig;
use crate::conn;
use crate::policy::Policy;
use alknet_core::config::Config;
use alknet_core::identity::MemoryIdentities;
use russh::keys::PrivateKey;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Serves SSH on `listener` forever: `auth = "peer"` (OpenSSH's `none` succeeds), scope
/// `ssh`, SFTP rooted at `sftp_root`, as peer `peer`. `threads` tokio workers, as `[tokio]
/// threads` gives the side runtime. Calls `ready` with the host key's public line once
/// listening.
pub fn serve_tcp(
    listener: std::net::TcpListener,
    sftp_root: &Path,
    peer: &str,
    threads: usize,
    ready: impl FnOnce(&str),
) -> io::Result<()> {
    let text = format!(
        "[services.ssh]\nenabled = true\nsftp_root = \"{}\"\n",
        sftp_root.display()
    );
    let config = Config::parse(&text, Path::new("bench.toml")).map_err(io::Error::other)?;
    let ssh: SshConfig = config
        .service_section::<SshConfig>("ssh")
        .map_err(io::Error::other)?
        .config;
    let key: PrivateKey = crate::hostkey::from_seed(&rand::random::<[u8; 32]>());
    let public = crate::hostkey::public_line(&key);
    let russh = Arc::new(ssh.russh_config(key));
    let policy = Arc::new(Policy::new(&ssh));
    let identities: Arc<dyn alknet_core::IdentityProvider> = Arc::new(MemoryIdentities::new());
    let scopes: Arc<[String]> = Arc::from(vec!["ssh".to_owned()]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("alknet-tokio")
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        ready(&public);
        loop {
            let (tcp, remote) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let session = conn::Session {
                peer: peer.to_owned(),
                scopes: scopes.clone(),
                remote,
                fingerprint: None,
                policy: policy.clone(),
                identities: identities.clone(),
                forward: crate::forward::ForwardCtx {
                    forwarder: None,
                    peer: peer.to_owned(),
                    scopes: scopes.clone(),
                },
                git: None,
            };
            tokio::spawn(conn::run(russh.clone(), tcp, session));
        }
    })
}
