//! The guarded spawn: the one way a task starts on a shard.
//!
//! Every task runs inside a guard that catches a panic at the task boundary, counts it
//! (`handler_panics`) and logs it. A task belongs to a connection when it was started for
//! one (the handler's own task, [`Connection::spawn`](crate::Connection::spawn)) or from a
//! task that belongs to one ([`Spawner::spawn`] looks at the task it is called from): its
//! panic then closes that connection with [`close_code::INTERNAL`] and no other. A task
//! started outside any connection (while building a handler) takes only itself down.
//!
//! While a guarded task is polled, a thread-local names its connection; it is moved in and
//! out around each poll (no reference counting), and restored even when the task panics.

use super::close_code;
use crate::conn::{ConnRef, close_cell, mark_dirty};
use crate::ops::stats::{self, ShardStats};
use futures_util::FutureExt;
use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tracing::error;

thread_local! {
    /// The connection of the guarded task being polled on this thread.
    static CURRENT: RefCell<Option<ConnRef>> = const { RefCell::new(None) };
}

/// Starts tasks on the shard; cheap to clone. Kept by handlers that start work later.
#[derive(Clone)]
pub struct Spawner {
    stats: Arc<ShardStats>,
}

impl Spawner {
    pub(crate) fn new(stats: Arc<ShardStats>) -> Self {
        Self { stats }
    }

    /// A spawner for a program without a server shard (a client command on its own
    /// runtime): a task that panics is logged and ends alone, the rest of the program runs on.
    pub fn standalone() -> Self {
        Self::new(Arc::new(ShardStats::default()))
    }

    /// Starts `task` on this shard. Called from a connection's task, the new task belongs to
    /// that connection: if it panics, the panic is caught, counted and logged, and that
    /// connection (only) is closed with [`close_code::INTERNAL`]. Called elsewhere, a panic
    /// ends only the task.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + 'static,
    {
        match CURRENT.with(|c| c.borrow().clone()) {
            Some(cell) => spawn_for(cell, task),
            None => {
                let stats = self.stats.clone();
                monoio::spawn(async move {
                    if AssertUnwindSafe(task).catch_unwind().await.is_err() {
                        stats::bump(&stats.handler_panics);
                        error!("a service task panicked; the task is gone, nothing else");
                    }
                });
            }
        }
    }
}

/// Starts a task that belongs to the connection in `cell`.
pub(crate) fn spawn_for<F>(cell: ConnRef, task: F)
where
    F: Future<Output = ()> + 'static,
{
    monoio::spawn(async move {
        if let (cell, Err(())) = run_as(cell, task).await {
            panicked(&cell, "a connection task panicked; closing its connection");
        }
    });
}

/// Starts a connection's handler: a panic closes the connection at once; a normal end
/// closes it once the data sent is acknowledged.
pub(crate) fn spawn_handler<F>(cell: ConnRef, handler: F)
where
    F: Future<Output = ()> + 'static,
{
    monoio::spawn(async move {
        match run_as(cell, handler).await {
            (cell, Err(())) => panicked(&cell, "handler panicked; closing its connection"),
            (cell, Ok(())) => {
                cell.inner.borrow_mut().handler_done = true;
                mark_dirty(&cell);
            }
        }
    });
}

/// Polls `task` with `cell` as the current connection, catching a panic.
async fn run_as<F>(cell: ConnRef, task: F) -> (ConnRef, Result<(), ()>)
where
    F: Future<Output = ()>,
{
    let mut task = std::pin::pin!(AssertUnwindSafe(task).catch_unwind());
    let mut mine = Some(cell.clone());
    let result = std::future::poll_fn(|cx| {
        let outer = CURRENT.with(|c| c.replace(mine.take()));
        let poll = task.as_mut().poll(cx);
        mine = CURRENT.with(|c| c.replace(outer));
        poll
    })
    .await;
    (cell, result.map_err(|_| ()))
}

fn panicked(cell: &ConnRef, message: &'static str) {
    stats::bump(&cell.stats.handler_panics);
    let (alpn, remote) = {
        let inner = cell.inner.borrow();
        (
            inner.alpn.map(|a| String::from_utf8_lossy(a).into_owned()),
            inner.proto.remote_address(),
        )
    };
    error!(alpn = alpn.as_deref().unwrap_or("none"), %remote, "{message}");
    close_cell(cell, close_code::INTERNAL, b"internal error");
}
