//! HTTP/1.1 and h2 on the TCP+TLS listener: hyper, driven on the shard.
//!
//! hyper's connection runs in the connection's task; h2 streams are spawned on the shard
//! (hyper's executor is the shard's guarded spawn, so its futures need not be `Send`). The
//! limits: `max_header_bytes` and `max_headers` (hyper refuses more with 431), the header
//! block within `header_timeout` (HTTP/1.1; a slowloris client is cut there), `max_body`
//! (413, read no further), `request_timeout` for the whole request (504), and
//! `idle_timeout` for a connection with no request in flight, however slowly it trickles
//! bytes (that cuts slow h2 clients too).

use crate::api::{Gateway, Request, error};
use crate::body::Body;
use alknet_core::AuthContext;
use alknet_core::net::tcp::TlsStream;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// hyper's timer, on futures-timer's helper thread (hyper wants `Send` sleeps; the shard's
/// timers are not).
#[derive(Clone, Copy)]
struct Timer;

struct Sleep(futures_timer::Delay);

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(futures_timer::Delay::new(d)))
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(at.saturating_duration_since(Instant::now()))
    }
}

/// hyper's executor for h2 streams: the shard's spawn.
#[derive(Clone)]
struct Exec(alknet_core::service::Spawner);

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(async move {
            fut.await;
        });
    }
}

/// What the idle watchdog reads: requests in flight and when the last one ended.
#[derive(Default)]
struct Activity {
    inflight: Cell<usize>,
    last: Cell<Option<Instant>>,
}

struct InFlight(Rc<Activity>);

impl InFlight {
    fn new(a: &Rc<Activity>) -> Self {
        a.inflight.set(a.inflight.get() + 1);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get().saturating_sub(1));
        self.0.last.set(Some(Instant::now()));
    }
}

/// Bytes of a refused body read and thrown away so the client, still sending, gets the
/// 413 cleanly instead of a reset; beyond this the stream is cut.
const DISCARD: u64 = 256 << 10;

/// Reads a request body within `max`: the bytes, or the response refusing it.
async fn read_body(
    mut body: hyper::body::Incoming,
    max: usize,
) -> Result<Bytes, hyper::Response<Body>> {
    use http_body::Body as _;
    let mut buf = bytes::BytesMut::new();
    let mut over = body.size_hint().lower() > max as u64;
    let mut discarded = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the request body could not be read",
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !over && buf.len() + data.len() <= max {
            buf.extend_from_slice(&data);
            continue;
        }
        over = true;
        discarded += data.len() as u64;
        if discarded > DISCARD {
            break;
        }
    }
    if over {
        return Err(too_large(max));
    }
    Ok(buf.freeze())
}

fn too_large(max: usize) -> hyper::Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        &format!("the body exceeds {max} bytes (max_body under [services.http])"),
    )
}

/// A connection hyper gave back after a WebSocket upgrade, with the bytes it read past the
/// request.
type Handback = (TlsStream, Bytes);

/// Serves one TCP+TLS connection until the client or the idle timeout ends it.
pub(crate) async fn serve(gate: Rc<Gateway>, stream: TlsStream, auth: AuthContext) {
    let settings = gate.settings.current();
    let conn_auth = Rc::new(auth);
    let activity = Rc::new(Activity::default());
    activity.last.set(Some(Instant::now()));
    // Filled by `/api/ws` when it answers 101 (HTTP/1.1 only).
    let ws: crate::ws::Pending = Rc::default();
    // HTTP/3 is on the QUIC port: say so, so clients that speak it move there.
    let alt_svc = gate
        .node
        .quic_addr()
        .and_then(|a| http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", a.port())).ok());
    let svc = {
        let gate = gate.clone();
        let conn_auth = conn_auth.clone();
        let activity = activity.clone();
        let settings = settings.clone();
        let alt_svc = alt_svc.clone();
        let ws = ws.clone();
        let h1 = conn_auth.alpn != b"h2";
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let ws = h1.then(|| ws.clone());
            let gate = gate.clone();
            let conn_auth = conn_auth.clone();
            let busy = InFlight::new(&activity);
            let settings = settings.clone();
            let alt_svc = alt_svc.clone();
            let fut: Pin<Box<dyn Future<Output = _>>> = Box::pin(async move {
                let work = async {
                    let (parts, body) = req.into_parts();
                    let body = match read_body(body, settings.max_body).await {
                        Ok(b) => b,
                        Err(r) => return r,
                    };
                    let req = Request {
                        method: parts.method,
                        path: parts.uri.path().to_owned(),
                        query: parts.uri.query().map(str::to_owned),
                        headers: parts.headers,
                        body,
                        upgrade: ws,
                    };
                    gate.serve(req, &conn_auth).await
                };
                let resp = match monoio::time::timeout(settings.request_timeout, work).await {
                    Ok(r) => r,
                    Err(_) => error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "TIMEOUT",
                        &format!(
                            "the request did not finish within {} s",
                            settings.request_timeout.as_secs()
                        ),
                    ),
                };
                // A streaming body keeps the request "in flight" until it is dropped.
                let resp = resp.map(|b| match b {
                    Body::Stream(s) => {
                        use futures_util::StreamExt;
                        let busy = busy;
                        Body::Stream(Box::pin(s.map(move |c| {
                            let _ = &busy;
                            c
                        })))
                    }
                    full => {
                        drop(busy);
                        full
                    }
                });
                let mut resp = resp;
                if let Some(v) = &alt_svc {
                    resp.headers_mut().insert(http::header::ALT_SVC, v.clone());
                }
                Ok::<_, std::convert::Infallible>(resp)
            });
            fut
        })
    };
    let io = TokioIo::new(stream);
    let conn: Pin<Box<dyn Future<Output = Option<Handback>>>> = if conn_auth.alpn == b"h2" {
        let mut b = hyper::server::conn::http2::Builder::new(Exec(gate.spawner.clone()));
        b.timer(Timer)
            .max_concurrent_streams(settings.max_requests_per_connection)
            .max_header_list_size(settings.max_header_bytes as u32)
            .max_pending_accept_reset_streams(32)
            .max_local_error_reset_streams(64);
        let c = b.serve_connection(io, svc);
        Box::pin(async move {
            let _ = c.await;
            None
        })
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(Timer)
            .header_read_timeout(settings.header_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers)
            .keep_alive(true);
        let mut c = b.serve_connection(io, svc);
        let ws = ws.clone();
        Box::pin(async move {
            // Served without shutdown, so a WebSocket upgrade gets the connection back (hyper's
            // own upgrades need a `Send` connection; the shard's is not).
            let done = std::future::poll_fn(|cx| c.poll_without_shutdown(cx)).await;
            if done.is_err() || ws.borrow().is_none() {
                return None;
            }
            let parts = c.into_parts();
            Some((parts.io.into_inner(), parts.read_buf))
        })
    };
    let idle = settings.idle_timeout;
    let watchdog = async {
        loop {
            monoio::time::sleep(Duration::from_secs(1).min(idle)).await;
            let quiet = activity.inflight.get() == 0
                && activity.last.get().is_some_and(|t| t.elapsed() >= idle);
            if quiet {
                return;
            }
        }
    };
    let drain = gate.drain.wait();
    let upgraded = monoio::select! {
        u = conn => u,
        _ = watchdog => None,
        _ = drain => None,
    };
    let accepted = ws.borrow_mut().take();
    if let (Some((io, pre)), Some(accepted)) = (upgraded, accepted) {
        crate::ws::serve(gate, io, pre.to_vec(), accepted).await;
    }
}
