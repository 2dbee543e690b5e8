//! The drain signal: one per shard, fired once when the server starts shutting down.
//!
//! Services read it two ways: [`Drain::is_draining`], a cheap check between units of work,
//! and [`Drain::wait`], a future to race against the next accept. It only tells; the shard
//! itself closes what is left at the end of the drain period.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    fired: Cell<bool>,
    /// One waker per pending [`DrainWait`], removed when it completes or is dropped, so the
    /// map holds no more entries than there are waiting futures.
    waiters: RefCell<HashMap<u64, Waker>>,
    next_id: Cell<u64>,
}

/// A shard's drain signal; cheap to clone, all clones see one signal.
#[derive(Clone, Default)]
pub struct Drain(Rc<State>);

impl Drain {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// True once the server is draining.
    pub fn is_draining(&self) -> bool {
        self.0.fired.get()
    }

    /// Completes when the server starts draining (at once if it already is). Cancel-safe:
    /// dropping the future forgets its waker.
    pub fn wait(&self) -> DrainWait {
        DrainWait {
            drain: self.clone(),
            id: None,
        }
    }

    /// Fires the signal and wakes every waiter; later calls do nothing.
    pub(crate) fn fire(&self) {
        if self.0.fired.replace(true) {
            return;
        }
        let waiters = std::mem::take(&mut *self.0.waiters.borrow_mut());
        waiters.into_values().for_each(Waker::wake);
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.0.waiters.borrow().len()
    }
}

/// The future of [`Drain::wait`].
pub struct DrainWait {
    drain: Drain,
    id: Option<u64>,
}

impl Future for DrainWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = &self.drain.0;
        if state.fired.get() {
            if let Some(id) = self.id {
                state.waiters.borrow_mut().remove(&id);
            }
            return Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = state.next_id.get();
                state.next_id.set(id.wrapping_add(1));
                id
            }
        };
        {
            let mut waiters = state.waiters.borrow_mut();
            match waiters.get_mut(&id) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => w.clone_from(cx.waker()),
                None => {
                    waiters.insert(id, cx.waker().clone());
                }
            }
        }
        self.id = Some(id);
        Poll::Pending
    }
}

impl Drop for DrainWait {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.drain.0.waiters.borrow_mut().remove(&id);
        }
    }
}
