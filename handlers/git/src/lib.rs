//! The git service (`alknet/git`, scope `git`): stock git clones, fetches and pushes through
//! `git-remote-alknet`, one operation per bidirectional stream.
//!
//! A stream starts with the request header of [`alknet_proto::git`]; the server checks the
//! repository name ([`name`]) and the caller's rights under `[git]` ([`access`]) before it
//! touches the filesystem, then runs git's own `upload-pack` or `receive-pack` in the
//! repository with its stdin and stdout bridged to the stream. A refusal is an `ERR`
//! pkt-line, which git prints as `fatal: remote error: …`.
//!
//! The child's environment is built from scratch (nothing from the client reaches it but a
//! checked `GIT_PROTOCOL`), without system or user git config, with hooks only from the
//! gateway (`core.hooksPath` points at a directory the gateway owns; a repository's own
//! `hooks/` never runs), and with a pack size limit on pushes. It runs in its own process
//! group, killed when the stream, the connection or the time limit goes (a revoked peer's
//! connection is closed, so its clone dies with it).
#![forbid(unsafe_code)]

pub mod access;
pub mod hook;
pub mod name;
mod run;
pub mod ssh;

use access::{Access, Rules};
use alknet_core::config::{ConfigDuration, GitAccessConfig};
use alknet_core::service::bridge::serve_on_tokio;
use alknet_core::service::tokio_rt::SideRuntime;
use alknet_core::{AuthContext, Connection, Handler, Service, ServiceContext, ServiceInfo};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::debug;

/// The git service's ALPN.
pub const ALPN: &[u8] = b"alknet/git";

/// The scope that opens it.
pub const SCOPES: &[&str] = &["git"];

/// Time a client has to send its request header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of `[services.git]`.
///
/// ```toml
/// [services.git]
/// root = "/srv/git"              # default: git/ in the data directory
/// timeout = "1h"                 # the longest one clone, fetch or push may run
/// max_push_bytes = 1073741824    # the largest pack one push may send
/// max_operations_per_peer = 8    # clones, fetches and pushes at once per peer
/// default_branch = "main"        # HEAD of repositories created by a push
/// pre_receive = "/etc/alknet/git-pre-receive"    # run after the gateway's own checks
/// post_receive = "/etc/alknet/git-post-receive"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawSettings")]
pub struct GitSettings {
    /// Where the bare repositories live (`NAME.git` below it).
    pub root: Option<PathBuf>,
    /// The longest one operation may take before its child is killed.
    pub timeout: ConfigDuration,
    /// The largest pack a push may send (git's `receive.maxInputSize`).
    pub max_push_bytes: u64,
    /// Operations one peer may run at once, over `alknet/git` and SSH together.
    pub max_operations_per_peer: u32,
    /// The branch `HEAD` names in a repository created by a push (what a clone checks out).
    pub default_branch: String,
    /// A command run as every push's pre-receive hook, after the protected-ref checks pass
    /// (git's `OLD NEW REF` lines on stdin; a non-zero exit refuses the push).
    pub pre_receive: Option<PathBuf>,
    /// A command run as every push's post-receive hook.
    pub post_receive: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    root: Option<PathBuf>,
    timeout: ConfigDuration,
    max_push_bytes: u64,
    max_operations_per_peer: u32,
    default_branch: String,
    pre_receive: Option<PathBuf>,
    post_receive: Option<PathBuf>,
}

impl Default for RawSettings {
    fn default() -> Self {
        let d = GitSettings::default();
        Self {
            root: d.root,
            timeout: d.timeout,
            max_push_bytes: d.max_push_bytes,
            max_operations_per_peer: d.max_operations_per_peer,
            default_branch: d.default_branch,
            pre_receive: d.pre_receive,
            post_receive: d.post_receive,
        }
    }
}

impl TryFrom<RawSettings> for GitSettings {
    type Error = String;
    fn try_from(r: RawSettings) -> Result<Self, String> {
        let t = r.timeout.0;
        if t < Duration::from_secs(1) || t > Duration::from_secs(86_400) {
            return Err("`timeout` must be between 1s and 24h".into());
        }
        if r.max_push_bytes < 1024 {
            return Err("`max_push_bytes` must be at least 1024".into());
        }
        if !(1..=1024).contains(&r.max_operations_per_peer) {
            return Err("`max_operations_per_peer` must be 1..=1024".into());
        }
        let b = &r.default_branch;
        let branch_ok = !b.is_empty()
            && b.len() <= 100
            && !b.starts_with(['-', '/', '.'])
            && !b.ends_with(['/', '.'])
            && !b.contains("..")
            && !b.ends_with(".lock")
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
        if !branch_ok {
            return Err(format!(
                "`default_branch` {b:?} is not a branch name (e.g. \"main\")"
            ));
        }
        for (key, p) in [
            ("pre_receive", &r.pre_receive),
            ("post_receive", &r.post_receive),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(format!(
                    "`{key}` must be an absolute path, not {}",
                    p.display()
                ));
            }
        }
        if let Some(root) = &r.root
            && !root.is_absolute()
        {
            return Err(format!(
                "`root` must be an absolute path, not {}",
                root.display()
            ));
        }
        Ok(GitSettings {
            root: r.root,
            timeout: r.timeout,
            max_push_bytes: r.max_push_bytes,
            max_operations_per_peer: r.max_operations_per_peer,
            default_branch: r.default_branch,
            pre_receive: r.pre_receive,
            post_receive: r.post_receive,
        })
    }
}

impl Default for GitSettings {
    fn default() -> Self {
        Self {
            root: None,
            timeout: ConfigDuration(Duration::from_secs(3600)),
            max_push_bytes: 1 << 30,
            max_operations_per_peer: 8,
            default_branch: "main".into(),
            pre_receive: None,
            post_receive: None,
        }
    }
}

/// What every git operation of the gateway shares: the root, the limits, the `[git]` rules
/// (swapped on reload) and the per-peer operation counts.
pub struct Gateway {
    root: PathBuf,
    hooks: PathBuf,
    state: Mutex<GatewayState>,
}

struct GatewayState {
    settings: GitSettings,
    /// The protected ref patterns, joined by `:` for the hook.
    protect: String,
    rules: Arc<Rules>,
    running: HashMap<String, u32>,
}

impl Gateway {
    /// The gateway for `data_dir` under `settings` and `rules`. The root defaults to
    /// `DATA_DIR/git`; it and the gateway's (empty) hooks directory are created if missing.
    pub fn new(
        data_dir: &Path,
        settings: GitSettings,
        rules: &GitAccessConfig,
    ) -> std::io::Result<Self> {
        let root = settings
            .root
            .clone()
            .unwrap_or_else(|| data_dir.join("git"));
        std::fs::create_dir_all(&root)?;
        let hooks = data_dir.join("git-hooks");
        std::fs::create_dir_all(&hooks)?;
        hook::install(&hooks)?;
        Ok(Self {
            root,
            hooks,
            state: Mutex::new(GatewayState {
                settings,
                protect: protect_of(rules),
                rules: Arc::new(Rules::new(rules)),
                running: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GatewayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes new `[git]` rules (a reload); operations already running keep theirs.
    pub fn set_rules(&self, rules: &GitAccessConfig) {
        let mut st = self.state();
        st.rules = Arc::new(Rules::new(rules));
        st.protect = protect_of(rules);
    }

    fn protect(&self) -> String {
        self.state().protect.clone()
    }

    /// Takes new `[services.git]` limits (a reload); the root stays as at start.
    pub fn set_settings(&self, settings: GitSettings) {
        self.state().settings = settings;
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn rules(&self) -> Arc<Rules> {
        self.state().rules.clone()
    }

    fn settings(&self) -> GitSettings {
        self.state().settings.clone()
    }

    /// Holds one of `peer`'s operation slots, or `None` at the cap.
    fn hold(self: &Arc<Self>, peer: &str) -> Option<OperationHold> {
        let mut st = self.state();
        let cap = st.settings.max_operations_per_peer;
        let n = st.running.entry(peer.to_owned()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(OperationHold {
            gateway: self.clone(),
            peer: peer.to_owned(),
        })
    }

    /// What `peer` with `scopes` may do on the repository `name`.
    pub fn access(&self, peer: &str, scopes: &[String], name: &name::RepoName) -> Access {
        self.rules().access(peer, scopes, name.as_str())
    }
}

fn protect_of(rules: &GitAccessConfig) -> String {
    let all: Vec<&str> = rules
        .protect
        .iter()
        .flat_map(|p| p.refs.iter().map(|r| r.0.as_str()))
        .collect();
    all.join(":")
}

/// One running operation of a peer; released on drop.
struct OperationHold {
    gateway: Arc<Gateway>,
    peer: String,
}

impl Drop for OperationHold {
    fn drop(&mut self) {
        let mut st = self.gateway.state();
        if let Some(n) = st.running.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.running.remove(&self.peer);
            }
        }
    }
}

/// The `alknet/git` service over a shared [`Gateway`].
pub struct Git {
    gateway: Option<Arc<Gateway>>,
}

impl Git {
    /// The service; without a gateway (a configuration check only) every stream is refused.
    pub fn new(gateway: Option<Arc<Gateway>>) -> Self {
        Self { gateway }
    }
}

impl Service for Git {
    const NAME: &'static str = "git";
    type Config = GitSettings;
    type Handler = GitHandler;

    fn info(&self, _: &GitSettings) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: SCOPES,
            anonymous: false,
            uni_streams: false,
        }
    }

    fn build(&self, ctx: &ServiceContext<'_, GitSettings>) -> GitHandler {
        GitHandler {
            gateway: self.gateway.clone(),
            rt: ctx.tokio().clone(),
        }
    }
}

/// The git service on one shard.
pub struct GitHandler {
    gateway: Option<Arc<Gateway>>,
    rt: Arc<SideRuntime>,
}

impl Handler for GitHandler {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        let Some(peer) = auth.identity.as_ref().map(|i| i.id.clone()) else {
            return;
        };
        let Some(gateway) = self.gateway.clone() else {
            return;
        };
        while let Ok((send, recv)) = conn.accept_bi().await {
            let me = self.clone();
            let c = conn.clone();
            let who = run::Caller {
                peer: peer.clone(),
                scopes: auth.scopes.to_vec(),
                remote: auth.remote_addr.to_string(),
            };
            let gateway = gateway.clone();
            conn.spawn(async move {
                let r = serve_on_tokio(&me.rt, &c, send, recv, move |stream| async move {
                    run::serve_stream(gateway, who, stream).await;
                })
                .await;
                if let Err(e) = r {
                    debug!(error = %e, "git stream ended with its QUIC connection");
                }
            });
        }
    }
}
