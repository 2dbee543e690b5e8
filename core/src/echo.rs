//! `alknet/echo`: every bidirectional stream is echoed back to its sender.
//!
//! For operators checking that a gateway is reachable and that their key is accepted, and
//! for tests. Off unless `[services.echo] enabled = true`; needs the `echo` scope.

use crate::conn::{Connection, RecvStream, SendStream};
use crate::identity::AuthContext;
use crate::service::{FnFactory, HandlerFactory, LocalBoxFuture, ProtocolHandler};
use std::rc::Rc;
use std::sync::Arc;

/// The echo service's ALPN.
pub const ALPN: &[u8] = b"alknet/echo";

/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;

/// The echo handler.
pub struct Echo;

impl ProtocolHandler for Echo {
    fn alpn(&self) -> &'static [u8] {
        ALPN
    }

    fn scope(&self) -> Option<&str> {
        Some("echo")
    }

    fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) -> LocalBoxFuture<()> {
        Box::pin(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                conn.spawn(echo_stream(send, recv));
            }
        })
    }
}

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

/// The factory registering `alknet/echo`.
pub fn factory() -> Arc<dyn HandlerFactory> {
    Arc::new(FnFactory::new(ALPN, false, |_| {
        Rc::new(Echo) as Rc<dyn ProtocolHandler>
    }))
}
