//! `alknet socks`: a local SOCKS5 server (RFC 1928, CONNECT, no authentication) whose
//! connections become `alknet/tunnel` streams. Names are passed to the gateway unresolved
//! (it resolves them and checks the result against its policy), so `curl --socks5-hostname`
//! reaches names only the gateway's network knows.

use super::relay::{relay, reset};
use super::{OpenError, open_tunnel};
use alknet_proto::socks5::{
    Command, Greeting, MAX_MESSAGE_LEN, NO_ACCEPTABLE, Reply, ReplyCode, Request,
};
use alknet_proto::tunnel::{Decoded, Failure, Refusal, Target, Verdict};
use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::time::Duration;
use tracing::{debug, info};

/// Time a SOCKS client has for its greeting and request.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The SOCKS reply for the gateway's verdict.
pub(crate) fn reply_code(v: &Verdict) -> ReplyCode {
    match v {
        Verdict::Connected | Verdict::Listening { .. } => ReplyCode::Succeeded,
        Verdict::Refused(Refusal::Forbidden) => ReplyCode::NotAllowed,
        Verdict::Refused(_) => ReplyCode::GeneralFailure,
        Verdict::Failed(Failure::NameNotResolved) => ReplyCode::HostUnreachable,
        Verdict::Failed(Failure::ConnectionRefused) => ReplyCode::ConnectionRefused,
        Verdict::Failed(Failure::Unreachable) => ReplyCode::NetworkUnreachable,
        Verdict::Failed(Failure::TimedOut) => ReplyCode::TtlExpired,
        Verdict::Failed(_) => ReplyCode::GeneralFailure,
    }
}

/// Reads more of the handshake into `buf`; `false` at the end of the connection, an error,
/// or a client sending more than a handshake holds.
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.len() >= MAX_MESSAGE_LEN * 2 {
        return false;
    }
    let (r, b) = tcp.read(Vec::with_capacity(MAX_MESSAGE_LEN)).await;
    match r {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(b.get(..n).unwrap_or_default());
            true
        }
        _ => false,
    }
}

/// The greeting and request: the target, and bytes the client sent after its request.
/// An error carries the reply to send, if the client got as far as a request.
async fn handshake(tcp: &mut TcpStream) -> Result<(Target, Bytes), Option<ReplyCode>> {
    let mut buf = Vec::new();
    let (greeting, n) = loop {
        match Greeting::decode(&buf) {
            Ok(Decoded::Done(g, n)) => break (g, n),
            Ok(Decoded::Incomplete) if read_more(tcp, &mut buf).await => {}
            Ok(Decoded::Incomplete) => return Err(None),
            Err(e) => {
                debug!(error = %e, "bad SOCKS greeting");
                return Err(None);
            }
        }
    };
    buf.drain(..n.min(buf.len()));
    let answer = greeting.answer();
    if tcp.write_all(answer.to_vec()).await.0.is_err() || answer[1] == NO_ACCEPTABLE {
        return Err(None);
    }
    let (req, n) = loop {
        match Request::decode(&buf) {
            Ok(Decoded::Done(r, n)) => break (r, n),
            Ok(Decoded::Incomplete) if read_more(tcp, &mut buf).await => {}
            Ok(Decoded::Incomplete) => return Err(None),
            Err(e) => {
                debug!(error = %e, "bad SOCKS request");
                return Err(Some(e.reply_code()));
            }
        }
    };
    if req.command != Command::Connect {
        return Err(Some(ReplyCode::CommandNotSupported));
    }
    Ok((
        req.target,
        Bytes::copy_from_slice(buf.get(n..).unwrap_or_default()),
    ))
}

/// Serves one SOCKS client over `link`.
pub(crate) async fn serve(mut tcp: TcpStream, link: &super::link::Link) {
    let (target, early_up) = match monoio::time::timeout(HANDSHAKE, handshake(&mut tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(Some(code))) => {
            let _ = tcp.write_all(Reply::new(code).encode()).await;
            return;
        }
        Ok(Err(None)) | Err(_) => return,
    };
    match open_tunnel(link, alknet_proto::tunnel::Request::Connect(target.clone())).await {
        Ok((send, recv, early_down)) => {
            if tcp
                .write_all(Reply::new(ReplyCode::Succeeded).encode())
                .await
                .0
                .is_err()
            {
                return;
            }
            let r = relay(tcp, send, recv, early_up, early_down).await;
            debug!(to = %target, up = r.up, down = r.down, error = r.error.as_deref().unwrap_or(""), "SOCKS connection ended");
        }
        Err(e) => {
            let code = match &e {
                OpenError::Verdict(v) => reply_code(v),
                _ => ReplyCode::GeneralFailure,
            };
            info!(port = target.port, reason = %e, "SOCKS connection not carried");
            debug!(to = %target, "SOCKS destination");
            let _ = tcp.write_all(Reply::new(code).encode()).await;
            reset(tcp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_map_to_the_socks_replies_clients_explain() {
        assert_eq!(reply_code(&Verdict::Connected), ReplyCode::Succeeded);
        assert_eq!(
            reply_code(&Verdict::Refused(Refusal::Forbidden)),
            ReplyCode::NotAllowed
        );
        assert_eq!(
            reply_code(&Verdict::Refused(Refusal::ConnectionLimit)),
            ReplyCode::GeneralFailure
        );
        assert_eq!(
            reply_code(&Verdict::Failed(Failure::NameNotResolved)),
            ReplyCode::HostUnreachable
        );
        assert_eq!(
            reply_code(&Verdict::Failed(Failure::ConnectionRefused)),
            ReplyCode::ConnectionRefused
        );
        assert_eq!(
            reply_code(&Verdict::Failed(Failure::Unreachable)),
            ReplyCode::NetworkUnreachable
        );
    }
}
