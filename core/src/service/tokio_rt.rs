//! The tokio side runtime: one small multi-thread tokio runtime per process, where libraries
//! that need tokio (russh, hyper, git child processes) run.
//!
//! The QUIC data path never runs here: shards stay on monoio, and each stream a tokio library
//! needs is bridged to it by [`bridge`](super::bridge). The runtime starts on the first
//! [`SideRuntime::spawn`], so a node whose services never ask for it starts no thread. One
//! `Arc<SideRuntime>` is shared by every shard; spawning takes a lock, which is fine per
//! stream and never happens per packet.
//!
//! This module does not bridge streams or decide what runs on tokio; it only owns the threads.

use crate::config::TokioConfig;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// Name of the side runtime's threads (workers and blocking pool), as `ps -L` shows them.
pub const THREAD_NAME: &str = "alknet-tokio";

/// Time tasks are given to finish when the runtime stops before its threads are abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Most threads of the blocking pool (`spawn_blocking`, `tokio::fs`). Tokio's default, 512,
/// suits a server made of blocking calls; here a runaway service must not make hundreds.
const MAX_BLOCKING_THREADS: usize = 16;

enum State {
    Idle,
    Running(Runtime),
    Failed(String),
    Stopped,
}

/// The process's tokio side runtime, started on first use. `Send + Sync`: share it as an
/// `Arc` between shards.
pub struct SideRuntime {
    threads: usize,
    bridge_buffer: usize,
    state: Mutex<State>,
    panics: AtomicU64,
    cancelled: AtomicU64,
}

impl SideRuntime {
    /// A runtime with `config.threads` workers, not started yet.
    pub fn new(config: &TokioConfig) -> Self {
        Self {
            threads: config.threads.clamp(1, 64),
            bridge_buffer: config.bridge_buffer.max(1),
            state: Mutex::new(State::Idle),
            panics: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }

    /// Worker threads the runtime runs once started.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes a bridged stream buffers per direction (`[tokio] bridge_buffer`).
    pub fn bridge_buffer(&self) -> usize {
        self.bridge_buffer
    }

    /// True once a service has asked for the runtime (and until it is stopped).
    pub fn is_started(&self) -> bool {
        matches!(*self.lock(), State::Running(_))
    }

    /// A handle to the runtime, starting it if this is the first use. Fails if its threads
    /// cannot be created or the runtime was stopped.
    pub fn handle(&self) -> std::io::Result<Handle> {
        let mut state = self.lock();
        if matches!(*state, State::Idle) {
            *state = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .max_blocking_threads(MAX_BLOCKING_THREADS)
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    tracing::info!(threads = self.threads, "tokio side runtime started");
                    State::Running(rt)
                }
                Err(e) => State::Failed(e.to_string()),
            };
        }
        match &*state {
            State::Running(rt) => Ok(rt.handle().clone()),
            State::Failed(e) => Err(std::io::Error::other(format!(
                "cannot start the tokio side runtime: {e}; lower `[tokio] threads` or raise the \
                 process's thread limit"
            ))),
            State::Stopped => Err(std::io::Error::other(
                "the tokio side runtime is stopped (the node is shutting down)",
            )),
            State::Idle => Err(std::io::Error::other(
                "the tokio side runtime did not start",
            )),
        }
    }

    /// Runs `task` on the side runtime, starting it if needed.
    pub fn spawn<F>(&self, task: F) -> std::io::Result<JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.handle()?.spawn(task))
    }

    /// Tokio tasks of bridged streams that panicked (each closed its connection).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Tokio tasks of bridged streams cancelled because their connection closed first.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub(crate) fn count_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops the runtime: running tasks are dropped at their next await, and threads still
    /// busy after a grace period are abandoned. Later spawns fail. Called on process stop,
    /// and by `Drop`.
    pub fn shutdown(&self) {
        let old = std::mem::replace(&mut *self.lock(), State::Stopped);
        if let State::Running(rt) = old {
            if Handle::try_current().is_ok() {
                // Inside a tokio context (the last owner was a tokio task): waiting here
                // would block a runtime thread, so let the threads wind down on their own.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(SHUTDOWN_GRACE);
            }
            tracing::debug!("tokio side runtime stopped");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state valid: every write is one move.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for SideRuntime {
    fn default() -> Self {
        Self::new(&TokioConfig::default())
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for SideRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideRuntime")
            .field("threads", &self.threads)
            .field("started", &self.is_started())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_first_use_and_stops() {
        let rt = SideRuntime::new(&TokioConfig {
            threads: 2,
            ..TokioConfig::default()
        });
        assert!(!rt.is_started());
        // The task runs on one of the runtime's named threads.
        let (tx, rx) = std::sync::mpsc::channel();
        let h = rt.spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send(name);
            7
        });
        assert!(h.is_ok());
        assert!(rt.is_started());
        let name = rx.recv_timeout(Duration::from_secs(10)).ok().flatten();
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        rt.shutdown();
        assert!(!rt.is_started());
        let again = rt.spawn(async {});
        assert!(again.is_err(), "a stopped runtime must refuse new tasks");
    }

    #[test]
    fn unused_runtime_starts_no_thread() {
        let rt = SideRuntime::default();
        assert!(!rt.is_started());
        assert_eq!(rt.threads(), 1);
        drop(rt);
    }
}
