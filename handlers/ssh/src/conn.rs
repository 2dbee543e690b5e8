//! One SSH connection: russh's server on the bridged stream, with a handler that only
//! confirms the QUIC peer during authentication and then opens session channels.
//!
//! Lifetime: the connection future owns a cancel guard. When the QUIC connection closes
//! (revocation, drain, the client), the bridge aborts that future; the guard's drop makes
//! every read and write of the stream fail at once, so russh's session ends, drops this
//! handler, and with it every channel task and the process groups they started.

use crate::channel;
use crate::config::AuthMode;
use crate::policy::{Access, Policy};
use alknet_core::IdentityProvider;
use alknet_proto::Fingerprint;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// What a connection knows about its peer, from the shard's admission.
pub(crate) struct Session {
    pub(crate) peer: String,
    pub(crate) scopes: Arc<[String]>,
    pub(crate) remote: SocketAddr,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) identities: Arc<dyn IdentityProvider>,
    /// Port forwarding: the peer as the forwarding policy sees it.
    pub(crate) forward: crate::forward::ForwardCtx,
    /// Git over SSH.
    pub(crate) git: Option<Arc<alknet_git::Gateway>>,
}

/// Serves one SSH connection on `stream` (the bridged QUIC stream; a TCP stream in the
/// bridge-cost benchmark, [`crate::bench`]) until it ends or this future is dropped.
pub(crate) async fn run<S>(config: Arc<russh::server::Config>, stream: S, session: Session)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (guard, cancel) = oneshot::channel::<()>();
    let stream = Cancellable {
        inner: stream,
        cancel,
        cancelled: false,
    };
    let peer = session.peer.clone();
    let handler = SshConn {
        s: Arc::new(session),
        authed: false,
        open: Arc::new(AtomicUsize::new(0)),
        tasks: JoinSet::new(),
        listeners: crate::forward::Listeners::default(),
    };
    match russh::server::run_stream(config, stream, handler).await {
        Ok(running) => {
            if let Err(e) = running.await {
                debug!(peer = %peer, error = %e, "SSH connection ended");
            }
        }
        Err(e) => debug!(peer = %peer, error = %e, "SSH handshake failed"),
    }
    drop(guard);
}

/// The bridged stream, failing every read and write once its guard is gone.
struct Cancellable<S> {
    inner: S,
    cancel: oneshot::Receiver<()>,
    cancelled: bool,
}

impl<S> Cancellable<S> {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.cancelled && Pin::new(&mut self.cancel).poll(cx).is_ready() {
            self.cancelled = true;
        }
        if self.cancelled {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the QUIC connection closed",
            ))
        } else {
            Ok(())
        }
    }
}

use std::future::Future;

impl<S: AsyncRead + Unpin> AsyncRead for Cancellable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cancellable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The russh handler of one connection.
struct SshConn {
    s: Arc<Session>,
    authed: bool,
    /// Channels open now (decremented by their tasks as they end).
    open: Arc<AtomicUsize>,
    /// Every channel's task; dropped (aborted) with the connection.
    tasks: JoinSet<()>,
    /// Remote forwards (`ssh -R`) of this connection; their tasks are in `tasks`.
    listeners: crate::forward::Listeners,
}

impl SshConn {
    /// Logs a failed SSH authentication like the shard logs a failed QUIC one, so the
    /// same fail2ban filter matches it.
    fn failed(&self, method: &'static str, reason: &'static str) {
        warn!(
            target: "alknet::auth",
            remote = %self.s.remote,
            alpn = "alknet/ssh",
            peer = %self.s.peer,
            method,
            reason,
            "authentication failed"
        );
    }

    /// The SSH keys registered to the peer now (read at each attempt, so a key removed a
    /// moment ago no longer works).
    fn registered_keys(&self) -> Vec<String> {
        let Some(fp) = self.s.fingerprint else {
            return Vec::new();
        };
        match self.s.identities.by_fingerprint(&fp) {
            Ok(Some(p)) if p.peer_id == self.s.peer && p.enabled => p.ssh_keys.clone(),
            _ => Vec::new(),
        }
    }

    fn key_registered(&self, key: &russh::keys::PublicKey) -> bool {
        let Some(line) = crate::keys::normalized_public(key) else {
            return false;
        };
        self.registered_keys().contains(&line)
    }

    fn only_publickey() -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }
}

impl russh::server::Handler for SshConn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        match self.s.policy.auth {
            AuthMode::Peer => {
                self.authed = true;
                Ok(Auth::Accept)
            }
            AuthMode::PeerKey => Ok(Self::only_publickey()),
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.s.policy.auth == AuthMode::PeerKey && self.key_registered(offer.public_key) {
            Ok(Auth::Accept)
        } else {
            self.failed("publickey", "ssh key not registered to the peer");
            Ok(Self::only_publickey())
        }
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.s.policy.auth == AuthMode::PeerKey && self.key_registered(key.public_key) {
            self.authed = true;
            Ok(Auth::Accept)
        } else {
            self.failed("publickey", "ssh key not registered to the peer");
            Ok(Self::only_publickey())
        }
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.failed("password", "method not offered");
        Ok(Auth::reject())
    }

    async fn auth_succeeded(
        &mut self,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        info!(
            peer = %self.s.peer,
            remote = %self.s.remote,
            auth = ?self.s.policy.auth,
            "SSH session authenticated"
        );
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        if !self.authed {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let cap = self.s.policy.max_channels as usize;
        if self.open.load(Ordering::Relaxed) >= cap {
            debug!(peer = %self.s.peer, cap, "channel refused: the connection holds its cap");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let access = Access::of(&self.s.scopes);
        let placement = match self.s.policy.placement(&self.s.peer, &self.s.scopes) {
            Ok(p) => p,
            Err(e) => {
                warn!(peer = %self.s.peer, error = %e, "no login account for the session");
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        reply.accept().await;
        let open = OpenGuard(self.open.clone());
        let ctx = channel::ChannelCtx {
            handle: session.handle(),
            access,
            placement,
            policy: self.s.policy.clone(),
            peer: self.s.peer.clone(),
            remote: self.s.remote,
            scopes: self.s.scopes.clone(),
            git: self.s.git.clone(),
        };
        self.tasks.spawn(async move {
            channel::run(channel, ctx).await;
            drop(open);
        });
        // Reap finished tasks so the set does not grow with a long connection's history.
        while self.tasks.try_join_next().is_some() {}
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        if !self.authed {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        while self.tasks.try_join_next().is_some() {}
        crate::forward::direct_tcpip(
            &self.s.forward,
            channel,
            host_to_connect,
            port_to_connect,
            reply,
            &mut self.tasks,
        );
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut russh::server::Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.authed
            && self.listeners.open(
                &self.s.forward,
                address,
                port,
                session.handle(),
                &mut self.tasks,
            ))
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut russh::server::Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.listeners.cancel(address, port))
    }
}

/// Counts a channel as open until its task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
