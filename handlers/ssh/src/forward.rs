//! SSH port forwarding through the gateway's forwarding policy (`alknet-forward`):
//! `direct-tcpip` channels (`ssh -L`, `-W`/ProxyJump, `-D`) and `tcpip-forward` /
//! `cancel-tcpip-forward` requests (`ssh -R`: the gateway listens, and opens a
//! `forwarded-tcpip` channel to the client per accepted connection).
//!
//! Only a peer with full SSH access (the `ssh` scope) may forward; `ssh-exec` and `git`
//! peers are refused like everyone the `[tunnels]` rules do not name. A refusal is a
//! channel open failure, `administratively prohibited` with the reason (for caps,
//! `resource shortage`; for a target that does not answer, `connect failed`).
//!
//! Lifetime: every forward and every listener is a task in its SSH connection's task set,
//! so the end of the session (the client leaving, the QUIC connection closing on
//! revocation or drain) aborts them all: listeners close, forwarded TCP connections are
//! dropped. Cancelling a remote forward closes its listener and the connections it accepted.

use crate::policy::Access;
use alknet_forward::relay::{ForwardLog, relay_logged};
use alknet_forward::{Forwarder, Refusal, Requester};
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn};

/// `SSH_OPEN_ADMINISTRATIVELY_PROHIBITED` (RFC 4254 §5.1).
const PROHIBITED: u32 = 1;

/// Who forwards: the peer, its scopes, and the gateway's forwarder.
#[derive(Clone)]
pub(crate) struct ForwardCtx {
    pub(crate) forwarder: Option<Arc<Forwarder>>,
    pub(crate) peer: String,
    pub(crate) scopes: Arc<[String]>,
}

impl ForwardCtx {
    /// The forwarder, if this peer may forward at all over SSH.
    fn allowed(&self) -> Result<&Arc<Forwarder>, Refusal> {
        match &self.forwarder {
            Some(f) if Access::of(&self.scopes) == Access::Full => Ok(f),
            _ => Err(Refusal::NoRule),
        }
    }

    fn who(&self) -> Requester<'_> {
        Requester {
            peer: &self.peer,
            scopes: &self.scopes,
        }
    }
}

/// The channel open failure a refusal is sent as.
fn failure(r: &Refusal) -> ChannelOpenFailure {
    match r {
        Refusal::ConnectionCap | Refusal::GatewayCap | Refusal::ListenerCap => {
            ChannelOpenFailure::ResourceShortage
        }
        Refusal::Unreachable => ChannelOpenFailure::ConnectFailed,
        other => ChannelOpenFailure::Other {
            code: PROHIBITED,
            reason: other.to_string(),
        },
    }
}

/// A `direct-tcpip` channel: connect (in a task, so a slow target stalls no other channel),
/// then accept the channel and relay, or refuse it.
pub(crate) fn direct_tcpip(
    ctx: &ForwardCtx,
    channel: Channel<Msg>,
    host: &str,
    port: u32,
    reply: ChannelOpenHandle,
    tasks: &mut JoinSet<()>,
) {
    let fwd = match ctx.allowed() {
        Ok(f) => f.clone(),
        Err(r) => {
            refuse(ctx, "local", port, &r);
            tasks.spawn(async move { reply.reject(failure(&r)).await });
            return;
        }
    };
    let ctx = ctx.clone();
    let host = host.to_owned();
    tasks.spawn(async move {
        let Ok(port) = u16::try_from(port) else {
            reply.reject(failure(&Refusal::BadPort)).await;
            return;
        };
        match fwd.connect(&ctx.who(), &host, port).await {
            Ok(out) => {
                reply.accept().await;
                // Logged when dropped: at the end, or when the session ends first.
                let log = ForwardLog::new(&ctx.peer, "ssh-local", &host, port);
                let _ = relay_logged(channel.into_stream(), out.stream, &log).await;
                drop(out.hold);
            }
            Err(r) => {
                refuse(&ctx, "local", u32::from(port), &r);
                debug!(peer = %ctx.peer, host = %host, port, "refused forward destination");
                reply.reject(failure(&r)).await;
            }
        }
    });
}

fn refuse(ctx: &ForwardCtx, kind: &'static str, port: u32, r: &Refusal) {
    warn!(peer = %ctx.peer, kind, port, reason = %r, "SSH forward refused");
}

/// The remote forwards of one SSH connection, by the address and port the client asked for.
#[derive(Default)]
pub(crate) struct Listeners(HashMap<(String, u32), AbortHandle>);

impl Listeners {
    /// `tcpip-forward`: binds the listener the policy allows and serves it in a task of
    /// `tasks`. `port` becomes the bound port when the client asked for 0.
    pub(crate) fn open(
        &mut self,
        ctx: &ForwardCtx,
        address: &str,
        port: &mut u32,
        handle: Handle,
        tasks: &mut JoinSet<()>,
    ) -> bool {
        let fwd = match ctx.allowed() {
            Ok(f) => f.clone(),
            Err(r) => {
                refuse(ctx, "remote", *port, &r);
                return false;
            }
        };
        if self.0.contains_key(&(address.to_owned(), *port)) {
            return false;
        }
        let inbound = match fwd.listen(&ctx.who(), address, *port) {
            Ok(i) => i,
            Err(r) => {
                refuse(ctx, "remote", *port, &r);
                return false;
            }
        };
        let asked = *port;
        let bound = inbound.addr.port();
        if asked == 0 {
            *port = u32::from(bound);
        }
        debug!(peer = %ctx.peer, addr = %inbound.addr, "remote forward listening");
        let ctx = ctx.clone();
        let address_str = address.to_owned();
        let abort = tasks.spawn(async move {
            let mut conns = JoinSet::new();
            let _hold = inbound.hold;
            loop {
                let accepted = tokio::select! {
                    a = inbound.listener.accept() => a,
                    // Reap finished connections so the set stays small.
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let (tcp, from) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(peer = %ctx.peer, error = %e, "accept failed");
                        continue;
                    }
                };
                let hold = match fwd.hold_connection(&ctx.peer) {
                    Ok(h) => h,
                    Err(r) => {
                        refuse(&ctx, "remote", u32::from(bound), &r);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let handle = handle.clone();
                let ctx = ctx.clone();
                let address = address_str.clone();
                conns.spawn(async move {
                    let channel = match handle
                        .channel_open_forwarded_tcpip(
                            address.clone(),
                            u32::from(bound),
                            from.ip().to_string(),
                            u32::from(from.port()),
                        )
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            debug!(peer = %ctx.peer, error = %e, "client refused a forwarded connection");
                            return;
                        }
                    };
                    let log = ForwardLog::new(&ctx.peer, "ssh-remote", &address, bound);
                    let _ = relay_logged(tcp, channel.into_stream(), &log).await;
                    drop(hold);
                });
            }
        });
        self.0.insert((address.to_owned(), asked), abort);
        if asked == 0 {
            // Cancelled by the port the client was told, too.
            if let Some(a) = self.0.get(&(address.to_owned(), 0)).cloned() {
                self.0.insert((address.to_owned(), *port), a);
            }
        }
        true
    }

    /// `cancel-tcpip-forward`: closes the listener and its connections.
    pub(crate) fn cancel(&mut self, address: &str, port: u32) -> bool {
        match self.0.remove(&(address.to_owned(), port)) {
            Some(abort) => {
                abort.abort();
                self.0.retain(|_, a| a.id() != abort.id());
                true
            }
            None => false,
        }
    }
}
