//! The SSH service (`alknet/ssh`): stock OpenSSH clients reach shells, commands, SFTP and scp
//! over one bidirectional QUIC stream per SSH connection, with `alknet connect` as their
//! `ProxyCommand`.
//!
//! The shard has already admitted the QUIC peer (a known, enabled peer holding `ssh`,
//! `ssh-exec` or `git`) before the first SSH byte. Each bidirectional stream the client opens
//! is one SSH connection, served by russh on the tokio side runtime through the bridge
//! ([`alknet_core::service::bridge::serve_on_tokio`]). Further streams on the same QUIC
//! connection are served as further SSH connections, within the same per-peer session cap:
//! they cost no more than separate QUIC connections do, and a client may multiplex several
//! SSH sessions over one QUIC handshake. SSH authentication then only confirms that peer
//! ([`config::AuthMode`]); what a session may do follows from the peer's scopes
//! ([`policy`]).
//!
//! Modules: [`config`] (the `[services.ssh]` keys), [`hostkey`] (the host key and its
//! `known_hosts` line), [`keys`] (parsing the SSH keys registered to peers), [`policy`] (who
//! may do what, as a pure decision), `conn` (the russh handler of one connection),
//! `channel` (one session channel: exec, shell, PTY, subsystem) and `login` (the account
//! children run as), `forward` (port forwarding under the gateway's `[tunnels]` policy). Not
//! here: SFTP itself ([`sftp`]), the forwarding policy (`alknet-forward`).
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod bench;
mod channel;
pub mod config;
mod conn;
mod forward;
pub mod hostkey;
pub mod keys;
mod login;
pub mod policy;
pub mod sftp;

use alknet_core::service::ConfigWatch;
use alknet_core::service::bridge::serve_on_tokio;
use alknet_core::service::tokio_rt::SideRuntime;
use alknet_core::{
    AuthContext, Connection, Handler, IdentityProvider, Service, ServiceContext, ServiceInfo,
};
pub use config::SshConfig;
use russh::keys::PrivateKey;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use tracing::{debug, warn};

/// The SSH service's ALPN.
pub const ALPN: &[u8] = b"alknet/ssh";

/// The scopes that open the service: `ssh` (everything), `ssh-exec` (exec of the
/// configured allowlist only) and `git` (git over SSH).
pub const SCOPES: &[&str] = &["ssh", "ssh-exec", "git"];

/// Stream reset code for an SSH connection refused because the peer holds its cap of sessions.
pub const SESSION_LIMIT: u32 = 0x101;

/// The SSH service. Holds the host key (from the vault or the data directory), given by
/// the program at start; without one (a configuration check only), every stream is refused.
pub struct Ssh {
    host_key: Option<PrivateKey>,
    sessions: Arc<SessionCount>,
    forwarder: Option<Arc<alknet_forward::Forwarder>>,
    git: Option<Arc<alknet_git::Gateway>>,
}

impl Ssh {
    /// The service with its host key.
    pub fn new(host_key: Option<PrivateKey>) -> Self {
        Self {
            host_key,
            sessions: Arc::default(),
            forwarder: None,
            git: None,
        }
    }

    /// The service with git over SSH (`git clone gw:org/app.git`) through the gateway's git
    /// repositories and their `[git]` rules; without them, git execs are refused like any
    /// command the peer may not run.
    pub fn with_git(mut self, git: Arc<alknet_git::Gateway>) -> Self {
        self.git = Some(git);
        self
    }

    /// The service with port forwarding (`ssh -L/-R/-D/-W`) through the gateway's
    /// forwarder and its `[tunnels]` policy; without one, every forward is refused.
    pub fn with_forwarder(mut self, forwarder: Arc<alknet_forward::Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }
}

/// SSH connections per peer, across every shard.
#[derive(Default)]
struct SessionCount(Mutex<HashMap<String, u32>>);

/// One held session of a peer; released on drop.
struct SessionHold {
    count: Arc<SessionCount>,
    peer: String,
}

impl SessionCount {
    fn hold(self: &Arc<Self>, peer: &str, cap: u32) -> Option<SessionHold> {
        let mut map = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = map.entry(peer.to_owned()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(SessionHold {
            count: self.clone(),
            peer: peer.to_owned(),
        })
    }
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        let mut map = match self.count.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl Service for Ssh {
    const NAME: &'static str = "ssh";
    type Config = SshConfig;
    type Handler = SshHandler;

    fn info(&self, _config: &SshConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: SCOPES,
            anonymous: false,
            uni_streams: false,
        }
    }

    fn build(&self, ctx: &ServiceContext<'_, SshConfig>) -> SshHandler {
        let config = ctx.config();
        SshHandler {
            russh: self
                .host_key
                .clone()
                .map(|k| Arc::new(config.russh_config(k))),
            policy: RefCell::new((0, Arc::new(policy::Policy::new(config)))),
            watch: ctx.config_watch(),
            identities: ctx.identities().clone(),
            rt: ctx.tokio().clone(),
            sessions: self.sessions.clone(),
            forwarder: self.forwarder.clone(),
            git: self.git.clone(),
        }
    }
}

/// The SSH service on one shard.
pub struct SshHandler {
    /// The russh settings (host key, timeouts), as at start.
    russh: Option<Arc<russh::server::Config>>,
    /// The policy of the section version it was built from.
    policy: RefCell<(u64, Arc<policy::Policy>)>,
    /// `[services.ssh]` as it is now: a reload changes `rules`, `exec_allow`, `auth`,
    /// `login_user`, `sftp_root` and the caps for the SSH connections that start after it.
    watch: ConfigWatch<SshConfig>,
    identities: Arc<dyn IdentityProvider>,
    rt: Arc<SideRuntime>,
    sessions: Arc<SessionCount>,
    forwarder: Option<Arc<alknet_forward::Forwarder>>,
    git: Option<Arc<alknet_git::Gateway>>,
}

impl SshHandler {
    /// The policy of the current section, rebuilt once after each reload that changed it.
    fn policy_now(&self) -> Arc<policy::Policy> {
        let version = self.watch.version();
        let mut held = self.policy.borrow_mut();
        if held.0 != version {
            *held = (
                version,
                Arc::new(policy::Policy::new(&self.watch.current())),
            );
        }
        held.1.clone()
    }
}

impl Handler for SshHandler {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        let Some(peer) = auth.identity.as_ref().map(|i| i.id.clone()) else {
            return;
        };
        let Some(russh) = self.russh.clone() else {
            warn!("the SSH service has no host key; refusing the connection");
            return;
        };
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let max_sessions = self.watch.current().max_sessions_per_peer;
            let Some(hold) = self.sessions.hold(&peer, max_sessions) else {
                warn!(
                    peer = %peer,
                    remote = %auth.remote_addr,
                    limit = max_sessions,
                    "SSH session refused: the peer holds its cap of sessions"
                );
                send.reset(SESSION_LIMIT);
                recv.stop(SESSION_LIMIT);
                continue;
            };
            let me = self.clone();
            let c = conn.clone();
            let session = conn::Session {
                peer: peer.clone(),
                scopes: auth.scopes.clone(),
                remote: auth.remote_addr,
                fingerprint: auth.tls_client_fingerprint,
                policy: self.policy_now(),
                identities: self.identities.clone(),
                forward: forward::ForwardCtx {
                    forwarder: self.forwarder.clone(),
                    peer: peer.clone(),
                    scopes: auth.scopes.clone(),
                },
                git: self.git.clone(),
            };
            let russh = russh.clone();
            conn.spawn(async move {
                let r = serve_on_tokio(&me.rt, &c, send, recv, move |stream| async move {
                    conn::run(russh, stream, session).await;
                    drop(hold);
                })
                .await;
                if let Err(e) = r {
                    debug!(error = %e, "SSH connection ended with its QUIC connection");
                }
            });
        }
    }
}
