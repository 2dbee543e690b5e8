//! Single-thread coordination for one shard: an event waiters can await a condition on,
//! an abort flag, and a future wrapper that turns a panic into an error.
//!
//! monoio 0.2 has no task abort and no local channels; these few lines cover what the call
//! engine needs without reaching for a cross-thread primitive.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll, Waker};

/// Wakes everyone waiting for some state to change. Waiters re-check their condition.
#[derive(Default)]
pub(crate) struct Notify {
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every waiter.
    pub(crate) fn notify(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        wakers.into_iter().for_each(Waker::wake);
    }

    fn register(&self, cx: &Context<'_>) {
        let mut w = self.wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
    }

    /// Waits until `cond` holds (checked now and after each notification).
    pub(crate) async fn wait_until(&self, mut cond: impl FnMut() -> bool) {
        poll_fn(|cx| {
            if cond() {
                Poll::Ready(())
            } else {
                self.register(cx);
                Poll::Pending
            }
        })
        .await
    }
}

/// Cancels one call's work: set once, observed by the race in [`run_guarded`].
#[derive(Default)]
pub(crate) struct Abort {
    aborted: Cell<bool>,
    notify: Notify,
}

impl Abort {
    pub(crate) fn abort(&self) {
        if !self.aborted.replace(true) {
            self.notify.notify();
        }
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.get()
    }
}

/// How a guarded piece of work ended.
pub(crate) enum Outcome<T> {
    Done(T),
    Aborted,
    TimedOut,
    Panicked,
}

/// Runs `work` until it finishes, `abort` fires, or `limit` passes; a panic inside it is
/// caught. The work future is dropped on return, which cancels everything it was awaiting
/// (including calls it made: their handles send `call.aborted` when dropped).
pub(crate) async fn run_guarded<F: Future>(
    work: F,
    abort: &Abort,
    limit: std::time::Duration,
) -> Outcome<F::Output> {
    let mut work = std::pin::pin!(work);
    let mut sleep = std::pin::pin!(monoio::time::sleep(limit));
    poll_fn(|cx| {
        if abort.is_aborted() {
            return Poll::Ready(Outcome::Aborted);
        }
        abort.notify.register(cx);
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => return Poll::Ready(Outcome::Done(v)),
            Ok(Poll::Pending) => {}
            Err(_) => return Poll::Ready(Outcome::Panicked),
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Outcome::TimedOut);
        }
        Poll::Pending
    })
    .await
}
