//! Remote forwards (`alknet forward -R`): on each connection the client asks the gateway to
//! listen (one LISTEN stream per forward, held open for as long as the listener should
//! live), and the gateway opens one stream per connection it accepts, headed ACCEPTED with
//! the listener's id; the client dials the forward's destination and relays.

use super::relay::{read_header, read_verdict, relay};
use super::spec::ForwardSpec;
use super::{Active, dial, spawn, verdict_text};
use alknet_core::{Connection, RecvStream, SendStream};
use alknet_proto::tunnel::{Accepted, Request, Target, Verdict, reset_code};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Time the gateway has to answer a LISTEN, and a stream it opened to send its header.
const HEADER_WAIT: Duration = Duration::from_secs(30);

/// Time an ACCEPTED naming a listener not confirmed yet may wait for its verdict (the two
/// travel on different streams and may arrive in either order).
const ID_WAIT: Duration = Duration::from_secs(5);

/// After the gateway refused or closed a listener on a later connection, the time until the
/// client asks again.
const RETRY: Duration = Duration::from_secs(10);

/// The remote forwards of one client.
pub(crate) struct Remote {
    specs: Vec<ForwardSpec>,
    active: Rc<Active>,
}

/// What the streams of one connection share: its confirmed listeners.
struct Session {
    ids: RefCell<HashMap<u32, Target>>,
    changed: tokio::sync::Notify,
    active: Rc<Active>,
}

impl Remote {
    /// The forwards `specs`, their connections counted in `active`.
    pub(crate) fn new(specs: Vec<ForwardSpec>, active: Rc<Active>) -> Rc<Self> {
        Rc::new(Self { specs, active })
    }

    /// Asks for every listener on `conn` and serves the connections they accept. On the
    /// first connection a refusal is an error (nothing should run half set up); later ones
    /// are retried while the connection lives.
    pub(crate) async fn start(
        self: Rc<Self>,
        conn: &Connection,
        first: bool,
    ) -> anyhow::Result<()> {
        let session = Rc::new(Session {
            ids: RefCell::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            active: self.active.clone(),
        });
        if !self.specs.is_empty() {
            spawn(accept_streams(conn.clone(), session.clone()));
        }
        for spec in &self.specs {
            let held = if first {
                match listen(conn, spec, &session).await {
                    Ok(h) => Some(h),
                    Err(m) => anyhow::bail!("remote forward -R {spec}: {m}"),
                }
            } else {
                None
            };
            spawn(keep(conn.clone(), spec.clone(), session.clone(), held));
        }
        Ok(())
    }
}

/// One LISTEN, confirmed: the stream that keeps it open.
struct Held {
    send: SendStream,
    recv: RecvStream,
}

async fn listen(conn: &Connection, spec: &ForwardSpec, session: &Session) -> Result<Held, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let head = Request::Listen(spec.listen.clone())
        .encode()
        .map_err(|e| e.to_string())?;
    send.write_all(&head).await.map_err(|e| e.to_string())?;
    match read_verdict(&mut recv, HEADER_WAIT).await {
        Ok((Verdict::Listening { id, port }, _)) => {
            info!(listen = %Target { host: spec.listen.host.clone(), port }, to = %spec.to, "remote forward ready on the gateway");
            session.ids.borrow_mut().insert(id, spec.to.clone());
            session.changed.notify_waiters();
            Ok(Held { send, recv })
        }
        Ok((v, _)) => Err(verdict_text(&v)),
        Err(e) => Err(e.to_string()),
    }
}

/// Holds a listener open until the gateway ends it or the connection goes, and asks again
/// after a refusal or an end while the connection lives.
async fn keep(conn: Connection, spec: ForwardSpec, session: Rc<Session>, mut held: Option<Held>) {
    loop {
        if let Some(mut h) = held.take() {
            // Nothing is sent on a LISTEN stream after the verdict; its end is the
            // listener's end.
            while let Ok(Some(_)) = h.recv.read_chunk(64).await {}
            drop(h.send);
            if conn.close_reason().is_some() {
                return;
            }
            warn!(forward = %spec, retry_in = ?RETRY, "the gateway closed a remote forward's listener");
        } else {
            match listen(&conn, &spec, &session).await {
                Ok(h) => {
                    held = Some(h);
                    continue;
                }
                Err(m) => {
                    if conn.close_reason().is_some() {
                        return;
                    }
                    warn!(forward = %spec, error = %m, retry_in = ?RETRY, "remote forward refused");
                }
            }
        }
        let closed = conn.closed();
        if monoio::time::timeout(RETRY, closed).await.is_ok() {
            return;
        }
    }
}

async fn accept_streams(conn: Connection, session: Rc<Session>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Some(slot) = session.active.take() else {
            warn!("too many forwarded connections; one from the gateway refused");
            send.reset(reset_code::STREAM_LIMIT);
            recv.stop(reset_code::STREAM_LIMIT);
            continue;
        };
        let session = session.clone();
        spawn(async move {
            accepted(send, recv, &session).await;
            drop(slot);
        });
    }
}

/// The destination of listener `id`, waiting a little for its verdict to be read.
async fn destination(session: &Session, id: u32) -> Option<Target> {
    let wait = async {
        loop {
            let notified = session.changed.notified();
            if let Some(t) = session.ids.borrow().get(&id) {
                return t.clone();
            }
            notified.await;
        }
    };
    monoio::time::timeout(ID_WAIT, wait).await.ok()
}

async fn accepted(mut send: SendStream, mut recv: RecvStream, session: &Session) {
    let (head, rest) = match read_header(&mut recv, HEADER_WAIT, Accepted::decode).await {
        Ok(h) => h,
        Err(e) => {
            debug!(error = %e, "bad stream from the gateway");
            send.reset(reset_code::BAD_HEADER);
            recv.stop(reset_code::BAD_HEADER);
            return;
        }
    };
    let Some(to) = destination(session, head.listener).await else {
        debug!(listener = head.listener, "a stream for an unknown listener");
        send.reset(reset_code::GOING_AWAY);
        recv.stop(reset_code::GOING_AWAY);
        return;
    };
    let tcp = match dial(&to).await {
        Ok(t) => t,
        Err(e) => {
            warn!(to = %to, error = %e, "remote forward: cannot connect to the destination");
            send.reset(reset_code::TCP_RESET);
            recv.stop(reset_code::TCP_RESET);
            return;
        }
    };
    let r = relay(tcp, send, recv, Bytes::new(), rest).await;
    debug!(from = %head.from, to = %to, up = r.up, down = r.down, error = r.error.as_deref().unwrap_or(""), "remote forward connection ended");
}
