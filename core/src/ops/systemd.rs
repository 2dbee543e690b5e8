//! Telling a service manager how the server is doing: the `sd_notify` protocol (one
//! datagram per state change on the Unix socket named by `$NOTIFY_SOCKET`) and the watchdog
//! that pings it only while every shard's loop is turning.
//!
//! The protocol is a few `KEY=VALUE` lines in one datagram; the socket is a path or, with a
//! leading `@`, an abstract name. Without `$NOTIFY_SOCKET` every call does nothing, so the
//! same binary runs under systemd, another supervisor or a terminal. No libsystemd: std's
//! `UnixDatagram` is all it takes.
//!
//! Liveness: each shard runs a task that stamps its [`Heartbeats`] slot every
//! [`Heartbeats::interval`]. A shard whose thread is stuck (a blocking call, a livelock in
//! its loop) stops stamping; the watchdog thread then stops sending `WATCHDOG=1`, and systemd
//! kills and restarts the service once `WatchdogSec=` has passed. A stamp is the time since
//! start in milliseconds, so a slot is one relaxed atomic store per interval.
//!
//! Not here: what the status line says (the caller passes a closure) and when the server is
//! ready (`alknet serve` calls [`Notifier::ready`] once every shard serves and the control
//! socket is up).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a shard stamps its heartbeat when no watchdog asks for less.
pub const DEFAULT_BEAT: Duration = Duration::from_millis(250);
/// How often the status line is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// A connection to the service manager's notification socket, or nothing.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; without it (or with an unusable value, logged) a notifier
    /// that sends nothing.
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(name) => match Self::connect(&name.to_string_lossy()) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; not notifying the service manager");
                    Self::default()
                }
            },
            None => Self::default(),
        }
    }

    /// A notifier sending to `name`: a socket path, or `@name` for an abstract socket.
    pub fn connect(name: &str) -> std::io::Result<Self> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("`{name}` is neither an absolute path nor an @abstract name"),
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Self {
            target: Some((socket, addr)),
        })
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). Errors are logged at debug
    /// level: a manager that went away must not stop the server.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=…`.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with the monotonic time systemd asks for (before re-reading the
    /// config; [`Notifier::ready`] follows when it is applied).
    pub fn reloading(&self) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            monotonic_usec().unwrap_or(0)
        ));
    }

    /// `STOPPING=1`, at the start of the shutdown.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: draining connections");
    }
}

/// A status line cannot carry a newline: it would start another assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` needs, from `/proc/uptime`'s
/// clock (the same clock; no syscall wrapper needed).
fn monotonic_usec() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1e6) as u64)
}

/// The watchdog period systemd asks for: `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is unset
/// or names this process.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// How often shards stamp their heartbeat: [`DEFAULT_BEAT`], or an eighth of the watchdog
/// period when that is shorter (at least 10 ms).
pub fn beat_interval() -> Duration {
    match watchdog_period() {
        Some(p) => (p / 8).clamp(Duration::from_millis(10), DEFAULT_BEAT),
        None => DEFAULT_BEAT,
    }
}

/// One liveness stamp per shard.
#[derive(Debug)]
pub struct Heartbeats {
    epoch: Instant,
    interval: Duration,
    beats: Vec<AtomicU64>,
}

impl Heartbeats {
    /// Slots for `shards` shards stamping every `interval`, all stamped now.
    pub fn new(shards: usize, interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            interval,
            beats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How often each shard stamps.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Stamps `shard`'s slot with the current time.
    pub fn beat(&self, shard: usize) {
        if let Some(slot) = self.beats.get(shard) {
            slot.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// The shards whose last stamp is older than `limit`.
    pub fn stale(&self, limit: Duration) -> Vec<usize> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let limit = limit.as_millis() as u64;
        self.beats
            .iter()
            .enumerate()
            .filter(|(_, b)| now.saturating_sub(b.load(Ordering::Relaxed)) > limit)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Stops the watchdog thread when dropped or asked.
#[derive(Debug, Clone, Default)]
pub struct WatchdogStop(Arc<AtomicBool>);

impl WatchdogStop {
    /// Stops the thread at its next tick.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts the thread that refreshes `STATUS=` every [`STATUS_EVERY`] and, with a watchdog
/// `period`, sends `WATCHDOG=1` every half period while no shard's heartbeat is older than
/// half a period. A stale shard is logged once per stall.
pub fn spawn_watchdog(
    notifier: Arc<Notifier>,
    period: Option<Duration>,
    beats: Arc<Heartbeats>,
    status: impl Fn() -> String + Send + 'static,
) -> std::io::Result<WatchdogStop> {
    let stop = WatchdogStop::default();
    let flag = stop.0.clone();
    let tick = period.map_or(STATUS_EVERY, |p| (p / 2).max(Duration::from_millis(5)));
    std::thread::Builder::new()
        .name("alknet-watchdog".into())
        .spawn(move || {
            let mut last_status = Instant::now();
            let mut stalled = false;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(p) = period {
                    let stale = beats.stale(p / 2);
                    if stale.is_empty() {
                        notifier.notify("WATCHDOG=1");
                        if std::mem::take(&mut stalled) {
                            tracing::info!("every shard is turning again; watchdog pings resumed");
                        }
                    } else if !std::mem::replace(&mut stalled, true) {
                        tracing::error!(shards = ?stale, "a shard's loop stopped turning; withholding watchdog pings so the service manager restarts the server");
                    }
                }
                if last_status.elapsed() >= STATUS_EVERY {
                    last_status = Instant::now();
                    notifier.status(&status());
                }
            }
        })?;
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned()
    }

    #[test]
    fn notifies_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = listener.set_read_timeout(Some(Duration::from_secs(5)));
        let n = Notifier::connect(&path.to_string_lossy()).unwrap_or_else(|e| panic!("{e}"));
        n.ready("2 connections\nand a newline");
        assert_eq!(
            recv(&listener),
            "READY=1\nSTATUS=2 connections and a newline"
        );

        let name = format!(
            "alknet-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let addr =
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let listener = UnixDatagram::bind_addr(&addr).unwrap_or_else(|e| panic!("{e}"));
        let _ = listener.set_read_timeout(Some(Duration::from_secs(5)));
        let n = Notifier::connect(&format!("@{name}")).unwrap_or_else(|e| panic!("{e}"));
        n.stopping();
        assert!(recv(&listener).starts_with("STOPPING=1\n"));
        n.reloading();
        assert!(recv(&listener).starts_with("RELOADING=1\nMONOTONIC_USEC="));

        assert!(Notifier::connect("relative/path").is_err());
        let silent = Notifier::default();
        assert!(!silent.is_active());
        silent.ready("nobody listens");
    }

    #[test]
    fn a_shard_that_stops_stamping_is_stale() {
        let beats = Heartbeats::new(2, Duration::from_millis(10));
        beats.beat(0);
        beats.beat(1);
        beats.beat(7);
        assert!(beats.stale(Duration::from_secs(60)).is_empty());
        let until = Instant::now() + Duration::from_secs(5);
        while beats.stale(Duration::from_millis(30)).len() < 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        beats.beat(0);
        assert_eq!(beats.stale(Duration::from_millis(30)), vec![1]);
    }
}
