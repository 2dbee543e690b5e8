//! `GET /api/ws`: the `alknet/call` protocol over a WebSocket (HTTP/1.1 upgrade).
//!
//! Each WebSocket message (text or binary) is one call frame's JSON body, exactly as on an
//! `alknet/call` stream without the 4-byte length: the client sends `call.requested` (a new
//! call, its id chosen by the client) and `call.aborted` (cancel it); the gateway answers
//! with `call.responded` per result, then `call.completed` or `call.error`, and confirms an
//! abort with `call.aborted`. The socket holds one of its caller's request slots; calls on it
//! at once are bounded by `max_requests_per_connection` (more are answered `UNAVAILABLE`),
//! messages by `max_body`, queued answers by [`OUT_QUEUE`] (a client that does not read
//! stops its calls at their next result). A malformed message is answered with `call.error`
//! when it names a call, and closes the socket after [`MAX_VIOLATIONS`].

use crate::api::{Gateway, Slot};
use alknet_call::{CallError, ErrorCode};
use alknet_core::AuthContext;
use alknet_proto::call::{Body as Frame, CallId, ErrorBody, Message, decode_message, encode};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::{SinkExt, StreamExt};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Answers queued for the socket before calls wait.
pub(crate) const OUT_QUEUE: usize = 64;
/// Malformed messages before the socket is closed.
pub(crate) const MAX_VIOLATIONS: u32 = 8;

fn frame(id: CallId, body: Frame) -> Option<WsMessage> {
    let bytes = encode(&Message { id, body }).ok()?;
    let json = bytes.get(alknet_proto::call::HEADER_LEN..)?;
    Some(WsMessage::Text(
        String::from_utf8_lossy(json).into_owned().into(),
    ))
}

fn error_frame(id: CallId, e: &CallError) -> Option<WsMessage> {
    frame(
        id,
        Frame::Error(ErrorBody {
            code: e.code,
            message: e.message.clone(),
            retryable: e.retryable,
            details: e.details.clone(),
        }),
    )
}

/// An accepted upgrade: the caller and its request slot, for the connection to serve once
/// hyper has sent the 101 and handed the connection back.
pub(crate) struct Accepted {
    auth: AuthContext,
    slot: Slot,
}

/// Where `/api/ws` leaves an [`Accepted`] upgrade for its connection.
pub(crate) type Pending = Rc<RefCell<Option<Accepted>>>;

/// Runs the call protocol on an upgraded connection (`pre`: bytes the client sent after its
/// request) until either side closes it.
pub(crate) async fn serve<S>(gate: Rc<Gateway>, io: S, pre: Vec<u8>, accepted: Accepted)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Accepted { auth, slot } = accepted;
    let _slot = slot;
    let settings = gate.settings.current();
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(settings.max_body);
    config.max_frame_size = Some(settings.max_body);
    let ws = WebSocketStream::from_partially_read(io, pre, Role::Server, Some(config)).await;
    let (mut sink, mut stream) = ws.split();
    let (tx, rx) = flume::bounded::<WsMessage>(OUT_QUEUE);
    let calls: Rc<RefCell<HashMap<CallId, AbortHandle>>> = Rc::default();
    let max_calls = settings.max_requests_per_connection as usize;
    let mut violations = 0u32;
    let idle = settings.idle_timeout;
    loop {
        let next = monoio::select! {
            m = stream.next() => Some(m),
            out = rx.recv_async() => {
                match out {
                    Ok(m) => {
                        if sink.send(m).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
                None
            }
            _ = monoio::time::sleep(idle) => {
                if calls.borrow().is_empty() {
                    break;
                }
                None
            }
            _ = gate.drain.wait() => break,
        };
        let Some(incoming) = next else {
            continue;
        };
        let data: Vec<u8> = match incoming {
            Some(Ok(WsMessage::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(WsMessage::Binary(b))) => b.to_vec(),
            Some(Ok(WsMessage::Ping(p))) => {
                if sink.send(WsMessage::Pong(p)).await.is_err() {
                    break;
                }
                continue;
            }
            Some(Ok(WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
        };
        let msg = match decode_message(&data) {
            Ok(m) => m,
            Err(e) => {
                violations += 1;
                if let Some(id) = e.id()
                    && let Some(m) = error_frame(id, &CallError::invalid_input(e.to_string()))
                {
                    let _ = sink.send(m).await;
                }
                if violations >= MAX_VIOLATIONS {
                    break;
                }
                continue;
            }
        };
        match msg.body {
            Frame::Requested(req) => {
                let id = msg.id;
                if calls.borrow().contains_key(&id) {
                    violations += 1;
                    let e = CallError::invalid_input("a call with this id is in progress");
                    if let Some(m) = error_frame(id, &e) {
                        let _ = sink.send(m).await;
                    }
                    continue;
                }
                if calls.borrow().len() >= max_calls {
                    let e = CallError::new(
                        ErrorCode::Unavailable,
                        format!("{max_calls} calls in progress on this socket; retry"),
                    );
                    if let Some(m) = error_frame(id, &e) {
                        let _ = sink.send(m).await;
                    }
                    continue;
                }
                let (handle, reg) = AbortHandle::new_pair();
                calls.borrow_mut().insert(id, handle);
                let inv = gate.ops.invoke(
                    &req.operation_id,
                    auth.clone(),
                    req.input,
                    settings.request_timeout,
                );
                let tx = tx.clone();
                let calls2 = calls.clone();
                gate.spawner.spawn(async move {
                    let run = async {
                        let mut inv = match inv {
                            Ok(inv) => inv,
                            Err(e) => {
                                if let Some(m) = error_frame(id, &e) {
                                    let _ = tx.send_async(m).await;
                                }
                                return;
                            }
                        };
                        while let Some(r) = inv.next().await {
                            let m = match r {
                                Ok(output) => frame(id, Frame::Responded { output }),
                                Err(e) => {
                                    if let Some(m) = error_frame(id, &e) {
                                        let _ = tx.send_async(m).await;
                                    }
                                    return;
                                }
                            };
                            if let Some(m) = m
                                && tx.send_async(m).await.is_err()
                            {
                                return;
                            }
                        }
                        if let Some(m) = frame(id, Frame::Completed) {
                            let _ = tx.send_async(m).await;
                        }
                    };
                    let aborted = Abortable::new(run, reg).await.is_err();
                    calls2.borrow_mut().remove(&id);
                    if aborted && let Some(m) = frame(id, Frame::Aborted) {
                        let _ = tx.send_async(m).await;
                    }
                });
            }
            Frame::Aborted => {
                if let Some(h) = calls.borrow().get(&msg.id) {
                    h.abort();
                }
            }
            // The gateway makes no calls of its own: answers to none are ignored.
            Frame::Responded { .. } | Frame::Completed | Frame::Error(_) => {}
        }
    }
    // Every call of the socket ends with it.
    for (_, h) in calls.borrow_mut().drain() {
        h.abort();
    }
}

/// Answers an upgrade request: `101` with the accept key, the socket served in a task.
pub(crate) fn upgrade(
    gate: &Rc<Gateway>,
    req: &mut crate::api::Request,
    caller: crate::auth::Caller,
    slot: Slot,
) -> http::Response<crate::body::Body> {
    use crate::api::error;
    use http::{HeaderValue, StatusCode, header};
    let h = &req.headers;
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    let Some(pending) = req.upgrade.take() else {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "BAD_REQUEST",
            "WebSockets are served over HTTP/1.1: connect with http/1.1",
        );
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "BAD_REQUEST",
            "this route is a WebSocket: send Upgrade: websocket",
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            "BAD_REQUEST",
            "WebSocket version 13 only",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "Sec-WebSocket-Key missing",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "bad Sec-WebSocket-Key",
        );
    };
    let _ = gate;
    *pending.borrow_mut() = Some(Accepted {
        auth: caller.auth,
        slot,
    });
    let mut r = http::Response::new(crate::body::Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    hs.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}
