//! DNS over QUIC (RFC 9250) on the `doq` ALPN: one query per client-initiated
//! bidirectional stream, a 2-byte length prefix, message ID 0, the answer on the same
//! stream followed by FIN.
//!
//! Protocol errors close the connection with `DOQ_PROTOCOL_ERROR` (§4.3.3): a message ID
//! other than 0, a FIN before the length the prefix announced, bytes after the query, a
//! length beyond [`MAX_QUERY`] or too short for a DNS header, a message that does not
//! decode, the `edns-tcp-keepalive` option (§5.5.2), or any unidirectional stream. A
//! source far over its query budget has its connection closed with `DOQ_EXCESSIVE_LOAD`;
//! one a little over gets REFUSED. A stream the client resets, or that does not finish its
//! query within [`STREAM_TIMEOUT`], is abandoned with `DOQ_REQUEST_CANCELLED`.

use crate::limit::Admit;
use crate::resolve::{Dns, MAX_QUERY, decode, encode, refused};
use alknet_core::{Connection, RecvStream, SendStream, StreamError};
use bytes::{BufMut, Bytes, BytesMut};
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::opt::EdnsCode;
use std::net::IpAddr;
use std::time::Duration;

/// DoQ error codes (RFC 9250 §4.3).
pub mod code {
    /// No error: the connection is closed without one.
    pub const NO_ERROR: u32 = 0x0;
    /// The implementation failed.
    pub const INTERNAL_ERROR: u32 = 0x1;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 0x2;
    /// A query was cancelled.
    pub const REQUEST_CANCELLED: u32 = 0x3;
    /// Closing for excessive load.
    pub const EXCESSIVE_LOAD: u32 = 0x4;
    /// No more specific code applies.
    pub const UNSPECIFIED_ERROR: u32 = 0x5;
}

/// Time a client has to send a whole query on a stream.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// The smallest DNS message: its header.
const HEADER: usize = 12;

/// A protocol error: the connection is closed with [`code::PROTOCOL_ERROR`] and this
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub &'static str);

/// Checks the announced length of a query.
fn check_len(len: usize) -> Result<(), ProtocolError> {
    if len > MAX_QUERY {
        return Err(ProtocolError("the length prefix exceeds the largest query"));
    }
    if len < HEADER {
        return Err(ProtocolError(
            "the length prefix is shorter than a DNS header",
        ));
    }
    Ok(())
}

/// Decodes one query and applies DoQ's rules to it.
pub fn check_message(bytes: &[u8]) -> Result<Message, ProtocolError> {
    let m = decode(bytes).map_err(|_| ProtocolError("the query is not a DNS query message"))?;
    if m.metadata.id != 0 {
        return Err(ProtocolError("the message ID must be 0"));
    }
    if m.edns
        .as_ref()
        .is_some_and(|e| e.option(EdnsCode::Keepalive).is_some())
    {
        return Err(ProtocolError("edns-tcp-keepalive is not allowed over QUIC"));
    }
    Ok(m)
}

/// Parses a whole client stream (prefix, query, FIN): what the server reads, in one piece.
pub fn parse_stream(stream: &[u8]) -> Result<Message, ProtocolError> {
    let (prefix, rest) = stream
        .split_first_chunk::<2>()
        .ok_or(ProtocolError("the stream ended inside the length prefix"))?;
    let len = usize::from(u16::from_be_bytes(*prefix));
    check_len(len)?;
    if rest.len() < len {
        return Err(ProtocolError("the stream ended before the query did"));
    }
    if rest.len() > len {
        return Err(ProtocolError("bytes after the query on its stream"));
    }
    check_message(rest)
}

enum ReadError {
    Protocol(ProtocolError),
    /// The client reset or the connection went: nothing to answer.
    Gone,
}

impl From<StreamError> for ReadError {
    fn from(_: StreamError) -> Self {
        ReadError::Gone
    }
}

/// Reads one query off `recv`, to its FIN.
async fn read_query(recv: &mut RecvStream) -> Result<Vec<u8>, ReadError> {
    let mut prefix = [0u8; 2];
    if !recv.read_exact(&mut prefix).await? {
        return Err(ReadError::Protocol(ProtocolError(
            "the stream ended inside the length prefix",
        )));
    }
    let len = usize::from(u16::from_be_bytes(prefix));
    check_len(len).map_err(ReadError::Protocol)?;
    let mut query = vec![0u8; len];
    if !recv.read_exact(&mut query).await? {
        return Err(ReadError::Protocol(ProtocolError(
            "the stream ended before the query did",
        )));
    }
    loop {
        match recv.read_chunk(1).await? {
            None => return Ok(query),
            Some(c) if c.is_empty() => continue,
            Some(_) => {
                return Err(ReadError::Protocol(ProtocolError(
                    "bytes after the query on its stream",
                )));
            }
        }
    }
}

/// Serves one DoQ connection.
pub(crate) async fn serve(dns: Dns, conn: Connection, source: IpAddr) {
    let uni = conn.clone();
    conn.spawn(async move {
        if uni.accept_uni().await.is_ok() {
            uni.close(
                code::PROTOCOL_ERROR,
                b"unidirectional streams are not used by DoQ",
            );
        }
    });
    while let Ok((send, recv)) = conn.accept_bi().await {
        conn.spawn(stream(dns.clone(), conn.clone(), send, recv, source));
    }
}

async fn stream(
    dns: Dns,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    source: IpAddr,
) {
    let bytes = match monoio::time::timeout(STREAM_TIMEOUT, read_query(&mut recv)).await {
        Ok(Ok(b)) => b,
        Ok(Err(ReadError::Protocol(e))) => return protocol_error(&conn, &e),
        Ok(Err(ReadError::Gone)) | Err(_) => {
            recv.stop(code::REQUEST_CANCELLED);
            send.reset(code::REQUEST_CANCELLED);
            return;
        }
    };
    let query = match check_message(&bytes) {
        Ok(q) => q,
        Err(e) => return protocol_error(&conn, &e),
    };
    let wire = match dns.admit(source) {
        Admit::Yes => dns.respond_wire(&bytes, &query).await,
        Admit::Refuse => encode(&refused(&query)),
        Admit::Excess => {
            tracing::info!(%source, "dns: closing a DoQ connection far over its query budget");
            conn.close(code::EXCESSIVE_LOAD, b"too many queries");
            return;
        }
    };
    let Ok(len) = u16::try_from(wire.len()) else {
        send.reset(code::INTERNAL_ERROR);
        return;
    };
    let mut framed = BytesMut::with_capacity(2 + wire.len());
    framed.put_u16(len);
    framed.put_slice(&wire);
    let framed: Bytes = framed.freeze();
    if send.write_chunk(framed).await.is_ok() {
        let _ = send.finish();
    }
}

fn protocol_error(conn: &Connection, e: &ProtocolError) {
    tracing::debug!(remote = %conn.remote_address(), error = %e, "dns: DoQ protocol error");
    conn.close(code::PROTOCOL_ERROR, e.0.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("www.gw.example.").unwrap(),
            RecordType::A,
        ));
        m.to_vec().unwrap()
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_query_asking_for_padding_gets_a_padded_answer() {
        use hickory_proto::op::Edns;
        use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
        let mut q = Message::from_vec(&query(0)).unwrap();
        let mut edns = Edns::new();
        edns.options_mut().insert(EdnsOption::Unknown(
            u16::from(EdnsCode::Padding),
            vec![0; 8],
        ));
        q.edns = Some(edns);
        let resp = crate::resolve::refused(&q);
        assert_eq!(resp.to_vec().unwrap().len() % 468, 0);
        let plain = Message::from_vec(&query(0)).unwrap();
        let resp = crate::resolve::refused(&plain);
        assert_ne!(resp.to_vec().unwrap().len() % 468, 0, "no padding unasked");
    }

    #[test]
    fn framing_rules_of_rfc_9250() {
        assert!(parse_stream(&framed(&query(0))).is_ok());
        let cases: [(Vec<u8>, &str); 6] = [
            (framed(&query(7)), "message ID"),
            (framed(&query(0))[..10].to_vec(), "ended before"),
            ([framed(&query(0)), vec![0]].concat(), "after the query"),
            (vec![0xff, 0xff, 0, 0], "exceeds"),
            (vec![0], "length prefix"),
            (framed(&[0u8; 12].map(|_| 0xff)), "not a DNS query"),
        ];
        for (bytes, why) in cases {
            let e = parse_stream(&bytes).unwrap_err();
            assert!(e.0.contains(why), "{why}: {e}");
        }
    }
}
