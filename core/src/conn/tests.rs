//! The waker storage: one waker per waiter however often it polls, none left by a waiter
//! that was cancelled or dropped, every waiter woken by its event. Driven on a real
//! quinn-proto connection (a client in its handshake, so nothing is ready) with wakers that
//! count their clones and wake-ups.

use super::*;
use crate::identity::tls::{NodeKey, ServerTrust};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Wake;

/// A waker that counts its wake-ups; `Arc::strong_count` counts its stored clones.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn counting() -> (Arc<Count>, Waker) {
    let c = Arc::new(Count::default());
    let w = Waker::from(c.clone());
    (c, w)
}

/// Clones of the waker stored elsewhere (the caller holds the `Arc` and one `Waker`).
fn stored_clones(c: &Arc<Count>) -> usize {
    Arc::strong_count(c) - 2
}

fn woken(c: &Count) -> usize {
    c.0.load(Ordering::Relaxed)
}

/// A client connection in its handshake: nothing to accept, open, read or wait for.
fn handshaking() -> ConnRef {
    let now = Instant::now();
    let (cc, _seen) = crate::net::endpoint::client_config(
        &crate::config::Config::default(),
        &NodeKey::generate(),
        b"alknet/test",
        ServerTrust::Observe,
    )
    .unwrap();
    let mut ep = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        true,
        None,
    );
    let (ch, proto) = ep
        .connect(now, cc, "127.0.0.1:4433".parse().unwrap(), "alknet")
        .unwrap();
    Rc::new(ConnCell {
        inner: RefCell::new(ConnInner::new(proto, ch, now)),
        signal: Rc::default(),
        stats: std::sync::Arc::default(),
    })
}

fn stored(cell: &ConnRef) -> usize {
    cell.inner.borrow().wakers.stored()
}

#[test]
fn a_slot_keeps_one_waker_however_often_its_waiter_polls() {
    let mut slots = WaiterSlots::default();
    let key = WaitKey::default();
    let (c, w) = counting();
    for _ in 0..1000 {
        slots.register(&key, &w.clone());
    }
    assert_eq!(slots.stored(), 1);
    assert_eq!(slots.slots.len(), 1);
    assert_eq!(stored_clones(&c), 1);
    // The same waiter polled from another task: the old waker is replaced, not kept.
    let (d, v) = counting();
    slots.register(&key, &v);
    assert_eq!(slots.stored(), 1);
    assert_eq!(stored_clones(&c), 0);
    assert_eq!(stored_clones(&d), 1);
    slots.release(&key);
    assert_eq!(stored_clones(&d), 0);
    assert!(slots.slots.is_empty());
    assert_eq!(key.get(), None);
}

#[test]
fn slots_are_reused_and_trimmed_and_wake_keeps_them() {
    let mut slots = WaiterSlots::default();
    let keys: Vec<WaitKey> = (0..3).map(|_| WaitKey::default()).collect();
    let (c, w) = counting();
    for k in &keys {
        slots.register(k, &counting().1);
    }
    slots.release(&keys[1]);
    let again = WaitKey::default();
    slots.register(&again, &w);
    assert_eq!(again.get(), Some(1), "the freed slot is reused");
    assert_eq!(slots.slots.len(), 3);
    slots.wake();
    assert_eq!(woken(&c), 1);
    assert_eq!(slots.stored(), 0);
    assert_eq!(
        slots.slots.len(),
        3,
        "waking leaves the slots with their waiters"
    );
    // The waiter waits again in the same slot.
    slots.register(&again, &w);
    assert_eq!(again.get(), Some(1));
    for k in keys.iter().chain([&again]) {
        slots.release(k);
    }
    assert!(slots.slots.is_empty());
}

#[test]
fn repeated_polls_of_a_wait_leave_one_waker_and_a_cancelled_wait_none() {
    let cell = handshaking();
    let conn = Connection::new(cell.clone());
    let (c, w) = counting();
    let mut cx = Context::from_waker(&w);
    {
        let mut accept = pin!(conn.accept_bi());
        let mut open = pin!(conn.open_uni());
        let mut datagram = pin!(conn.read_datagram());
        let mut closed = pin!(conn.closed());
        let mut connected = pin!(conn.connected());
        for _ in 0..1000 {
            assert!(accept.as_mut().poll(&mut cx).is_pending());
            assert!(open.as_mut().poll(&mut cx).is_pending());
            assert!(datagram.as_mut().poll(&mut cx).is_pending());
            assert!(closed.as_mut().poll(&mut cx).is_pending());
            assert!(connected.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(stored(&cell), 5, "one waker per waiting future");
        assert_eq!(stored_clones(&c), 5);
    }
    // The futures were dropped unfinished.
    assert_eq!(stored(&cell), 0);
    assert_eq!(stored_clones(&c), 0);
    let inner = cell.inner.borrow();
    assert!(inner.wakers.accept.iter().all(|s| s.slots.is_empty()));
    assert!(inner.wakers.closed.slots.is_empty());
}

#[test]
fn poll_methods_keep_one_waker_per_handle() {
    let cell = handshaking();
    let conn = Connection::new(cell.clone());
    let (c, w) = counting();
    let mut cx = Context::from_waker(&w);
    for _ in 0..1000 {
        assert!(conn.poll_accept_bi(&mut cx).is_pending());
        assert!(conn.poll_accept_uni(&mut cx).is_pending());
        assert!(conn.poll_open_bi(&mut cx).is_pending());
        assert!(conn.poll_read_datagram(&mut cx).is_pending());
        assert!(conn.poll_closed(&mut cx).is_pending());
    }
    assert_eq!(stored(&cell), 5);
    let other = conn.clone();
    assert!(other.poll_accept_bi(&mut cx).is_pending());
    assert_eq!(stored(&cell), 6, "a clone waits in its own slot");
    drop(other);
    assert_eq!(stored(&cell), 5);
    drop(conn);
    assert_eq!(stored(&cell), 0);
    assert_eq!(stored_clones(&c), 0);
}

#[test]
fn an_event_wakes_every_waiter_once() {
    let cell = handshaking();
    let conn = Connection::new(cell.clone());
    let (a, wa) = counting();
    let (b, wb) = counting();
    let mut first = pin!(conn.accept_bi());
    let mut second = pin!(conn.accept_bi());
    assert!(
        first
            .as_mut()
            .poll(&mut Context::from_waker(&wa))
            .is_pending()
    );
    assert!(
        second
            .as_mut()
            .poll(&mut Context::from_waker(&wb))
            .is_pending()
    );
    assert!(
        conn.poll_accept_bi(&mut Context::from_waker(&wb))
            .is_pending()
    );
    cell.inner.borrow_mut().wakers.wake_accept(Dir::Uni);
    assert_eq!(
        (woken(&a), woken(&b)),
        (0, 0),
        "another direction wakes nobody"
    );
    cell.inner.borrow_mut().wakers.wake_accept(Dir::Bi);
    assert_eq!((woken(&a), woken(&b)), (1, 2));
    assert_eq!(stored(&cell), 0);
    cell.inner.borrow_mut().wakers.wake_accept(Dir::Bi);
    assert_eq!((woken(&a), woken(&b)), (1, 2), "a waker is woken once");
}

#[test]
fn a_lost_connection_wakes_and_answers_every_waiter() {
    let cell = handshaking();
    let conn = Connection::new(cell.clone());
    let (c, w) = counting();
    let mut cx = Context::from_waker(&w);
    let mut accept = pin!(conn.accept_uni());
    let mut closed = pin!(conn.closed());
    assert!(accept.as_mut().poll(&mut cx).is_pending());
    assert!(closed.as_mut().poll(&mut cx).is_pending());
    assert!(conn.poll_open_bi(&mut cx).is_pending());
    {
        let mut inner = cell.inner.borrow_mut();
        inner.lost = Some(ConnectionError::TimedOut);
        inner.wakers.wake_all();
    }
    assert_eq!(woken(&c), 3);
    assert_eq!(stored(&cell), 0);
    assert!(matches!(
        accept.as_mut().poll(&mut cx),
        Poll::Ready(Err(ConnectionError::TimedOut))
    ));
    assert_eq!(
        closed.as_mut().poll(&mut cx),
        Poll::Ready(ConnectionError::TimedOut)
    );
    assert!(matches!(
        conn.poll_open_bi(&mut cx),
        Poll::Ready(Err(ConnectionError::TimedOut))
    ));
}

#[test]
fn a_stream_half_keeps_one_waker_and_a_cancelled_wait_removes_it() {
    let cell = handshaking();
    let id = StreamId::new(quinn_proto::Side::Server, Dir::Bi, 0);
    let waiting = Cell::new(false);
    let (c, w) = counting();
    for _ in 0..1000 {
        cell.inner
            .borrow_mut()
            .wakers
            .read
            .pending(id, &w.clone(), &waiting);
    }
    assert_eq!(stored(&cell), 1);
    assert_eq!(stored_clones(&c), 1);
    // What the future of an `async fn` leaves when it is dropped while waiting.
    drop(StreamCancel {
        cell: &cell,
        id,
        slot: StreamSlot::Read,
        waiting: &waiting,
    });
    assert_eq!(stored(&cell), 0);
    assert!(!waiting.get());
    // An end of the send half wakes the writer and the waiter for the end.
    let (writing, ending) = (Cell::new(false), Cell::new(false));
    {
        let mut inner = cell.inner.borrow_mut();
        inner.wakers.write.pending(id, &w, &writing);
        inner.wakers.stopped.pending(id, &w, &ending);
        inner
            .wakers
            .wake_write(StreamId::new(quinn_proto::Side::Server, Dir::Bi, 1));
        inner.wakers.wake_send_ended(id);
    }
    assert_eq!(woken(&c), 2);
    assert_eq!(stored(&cell), 0);
}
