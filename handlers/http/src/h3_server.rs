//! HTTP/3 on the QUIC port: the `h3` crate over the shard's own streams.
//!
//! The `h3` crate is generic over a QUIC implementation through the traits of `h3::quic`;
//! they are implemented here over [`alknet_core::Connection`] and its streams, whose poll
//! functions run on the shard. So an h3 request is read, routed and answered on the shard
//! that owns the connection, with no bridge and no other thread, exactly as HTTP over TCP
//! is. Each request runs in a task of the connection (a panic closes that connection only);
//! requests in flight are bounded by the connection's stream credit
//! (`[transport] max_concurrent_bidi_streams`).

use crate::api::{Gateway, Request, error};
use crate::body::Body;
use alknet_core::{
    AuthContext, Connection, ConnectionError, RecvStream, SendStream, StreamError, VarInt,
};
use bytes::{Buf, Bytes, BytesMut};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, WriteBuf};
use http::StatusCode;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

fn conn_error(e: ConnectionError) -> ConnectionErrorIncoming {
    match e {
        ConnectionError::ApplicationClosed(c) => ConnectionErrorIncoming::ApplicationClose {
            error_code: c.error_code.into_inner(),
        },
        ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn stream_error(e: StreamError) -> StreamErrorIncoming {
    match e {
        StreamError::ConnectionLost(c) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: conn_error(c),
        },
        StreamError::Reset(code) | StreamError::Stopped(code) => {
            StreamErrorIncoming::StreamTerminated {
                error_code: code.into_inner(),
            }
        }
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

// Both are QUIC stream ids, below 2^62 by construction in quinn-proto: h3's check cannot
// fail on one, and the trait gives no way to return an error.
#[allow(clippy::expect_used)]
fn stream_id(id: alknet_core::quic::StreamId) -> quic::StreamId {
    quic::StreamId::try_from(u64::from(id)).expect("a QUIC stream id is below 2^62")
}

fn varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

/// The connection, as `h3` sees it.
pub(crate) struct H3Conn(Connection);

/// A send stream, with the one buffer `h3` hands over at a time.
pub(crate) struct H3Send {
    stream: SendStream,
    pending: Option<WriteBuf<Bytes>>,
}

/// A receive stream.
pub(crate) struct H3Recv(RecvStream);

/// A bidirectional stream.
pub(crate) struct H3Bidi {
    send: H3Send,
    recv: H3Recv,
}

impl quic::SendStream<Bytes> for H3Send {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        while let Some(buf) = self.pending.as_mut() {
            if !buf.has_remaining() {
                self.pending = None;
                break;
            }
            let n = ready!(self.stream.poll_write(cx, buf.chunk())).map_err(stream_error)?;
            buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.pending.is_some() {
            return Err(StreamErrorIncoming::Unknown(
                "send_data before the previous data was written".into(),
            ));
        }
        self.pending = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        ready!(quic::SendStream::poll_ready(self, cx))?;
        Poll::Ready(self.stream.finish().map_err(stream_error))
    }

    fn reset(&mut self, reset_code: u64) {
        self.pending = None;
        self.stream.reset_with(varint(reset_code));
    }

    fn send_id(&self) -> quic::StreamId {
        stream_id(self.stream.id())
    }
}

impl quic::RecvStream for H3Recv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.0.poll_read_chunk(cx, 64 << 10).map_err(stream_error)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.0.stop_with(varint(error_code));
    }

    fn recv_id(&self) -> quic::StreamId {
        stream_id(self.0.id())
    }
}

impl quic::SendStream<Bytes> for H3Bidi {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }
    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }
    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }
    fn send_id(&self) -> quic::StreamId {
        self.send.send_id()
    }
}

impl quic::RecvStream for H3Bidi {
    type Buf = Bytes;
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }
    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }
    fn recv_id(&self) -> quic::StreamId {
        self.recv.recv_id()
    }
}

impl quic::BidiStream<Bytes> for H3Bidi {
    type SendStream = H3Send;
    type RecvStream = H3Recv;
    fn split(self) -> (H3Send, H3Recv) {
        (self.send, self.recv)
    }
}

fn bidi((send, recv): (SendStream, RecvStream)) -> H3Bidi {
    H3Bidi {
        send: H3Send {
            stream: send,
            pending: None,
        },
        recv: H3Recv(recv),
    }
}

impl quic::OpenStreams<Bytes> for H3Conn {
    type BidiStream = H3Bidi;
    type SendStream = H3Send;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3Bidi, StreamErrorIncoming>> {
        self.0.poll_open_bi(cx).map(|r| {
            r.map(bidi)
                .map_err(|e| StreamErrorIncoming::ConnectionErrorIncoming {
                    connection_error: conn_error(e),
                })
        })
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3Send, StreamErrorIncoming>> {
        self.0.poll_open_uni(cx).map(|r| {
            r.map(|stream| H3Send {
                stream,
                pending: None,
            })
            .map_err(|e| StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: conn_error(e),
            })
        })
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.0.close_with(varint(code.value()), reason);
    }
}

impl quic::Connection<Bytes> for H3Conn {
    type RecvStream = H3Recv;
    type OpenStreams = H3Conn;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3Recv, ConnectionErrorIncoming>> {
        self.0
            .poll_accept_uni(cx)
            .map(|r| r.map(H3Recv).map_err(conn_error))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3Bidi, ConnectionErrorIncoming>> {
        self.0
            .poll_accept_bi(cx)
            .map(|r| r.map(bidi).map_err(conn_error))
    }

    fn opener(&self) -> H3Conn {
        H3Conn(self.0.clone())
    }
}

type ReqStream = h3::server::RequestStream<H3Bidi, Bytes>;

/// Serves one HTTP/3 connection until it ends.
pub(crate) async fn serve(gate: Rc<Gateway>, conn: Connection, auth: AuthContext) {
    let settings = gate.settings.current();
    let built = h3::server::builder()
        .max_field_section_size(settings.max_header_bytes as u64)
        .build(H3Conn(conn.clone()))
        .await;
    let mut h3 = match built {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(error = %e, "h3 connection set-up failed");
            return;
        }
    };
    let auth = Rc::new(auth);
    loop {
        let accepted = monoio::select! {
            a = h3.accept() => a,
            _ = gate.drain.wait() => break,
        };
        let resolver = match accepted {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "h3 connection ended");
                break;
            }
        };
        let gate = gate.clone();
        let auth = auth.clone();
        conn.spawn(async move {
            let settings = gate.settings.current();
            let timeout = settings.request_timeout;
            let Ok((req, stream)) = resolver.resolve_request().await else {
                return;
            };
            let _ = monoio::time::timeout(timeout, request(gate, req, stream, &auth)).await;
        });
    }
    let _ = monoio::time::timeout(Duration::from_secs(1), h3.shutdown(0)).await;
}

async fn request(
    gate: Rc<Gateway>,
    req: http::Request<()>,
    mut stream: ReqStream,
    auth: &AuthContext,
) {
    let settings = gate.settings.current();
    let (parts, ()) = req.into_parts();
    let mut body = BytesMut::new();
    let mut too_large = false;
    loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                if body.len() + chunk.remaining() > settings.max_body {
                    too_large = true;
                    break;
                }
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    body.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let resp = if too_large {
        stream.stop_sending(h3::error::Code::H3_NO_ERROR);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!(
                "the body exceeds {} bytes (max_body under [services.http])",
                settings.max_body
            ),
        )
    } else {
        let req = Request {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body: body.freeze(),
            upgrade: None,
        };
        gate.serve(req, auth).await
    };
    let (head, body) = resp.into_parts();
    if stream
        .send_response(http::Response::from_parts(head, ()))
        .await
        .is_err()
    {
        return;
    }
    match body {
        Body::Full(Some(b)) => {
            if stream.send_data(b).await.is_err() {
                return;
            }
        }
        Body::Full(None) => {}
        Body::Stream(mut s) => {
            use futures_util::StreamExt;
            // Ends when the stream does, or when the client stops reading (the send fails).
            while let Some(chunk) = s.next().await {
                if stream.send_data(chunk).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.finish().await;
}
