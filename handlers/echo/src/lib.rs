//! Alknet echo service (`alknet/echo`): every bidirectional stream is echoed back to its
//! sender. For operators checking that a gateway is reachable and that their key is accepted,
//! and for tests.
//!
//! On unless `[services.echo] enabled = false`; a peer needs the `echo` scope.
//!
//! This crate is the smallest service, written to be copied: a [`Service`] that declares its
//! section name, ALPN and scope in one place and has no config keys of its own ([`NoConfig`]),
//! and a [`Handler`] that accepts streams and starts one guarded task per stream
//! ([`Connection::spawn`]). `handlers/perf` adds a config key.
#![forbid(unsafe_code)]

use alknet_core::{
    AuthContext, Connection, Handler, NoConfig, RecvStream, SendStream, Service, ServiceContext,
    ServiceInfo,
};
use std::rc::Rc;

/// The echo service's ALPN.
pub const ALPN: &[u8] = b"alknet/echo";

/// The scope a peer needs.
pub const SCOPE: &str = "echo";

/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;

/// The echo service; its handler is the same unit type on every shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Service for Echo {
    const NAME: &'static str = "echo";
    type Config = NoConfig;
    type Handler = Echo;

    fn info(&self, _config: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: &[SCOPE],
            anonymous: false,
            uni_streams: false,
        }
    }

    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> Echo {
        Echo
    }
}

impl Handler for Echo {
    async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
        while let Ok((send, recv)) = conn.accept_bi().await {
            conn.spawn(echo_stream(send, recv));
        }
    }
}

/// Writes back what arrives, then finishes (or resets, if the peer reset its side).
async fn echo_stream(mut send: SendStream, mut recv: RecvStream) {
    loop {
        match recv.read_chunk(CHUNK).await {
            Ok(Some(chunk)) => {
                if send.write_chunk(chunk).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = send.finish();
                return;
            }
            Err(_) => {
                send.reset(0);
                return;
            }
        }
    }
}
