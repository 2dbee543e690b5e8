//! Datagram-rate rig: how many 1 200-byte datagrams per second one receiver thread drains over
//! loopback, for each UDP path the shard could use.
//!
//! A [`Rig`] owns two threads for one [`Variant`]: a receiver pinned to core 0 and a sender
//! pinned to core 1 (where there is one), each on the runtime the variant names. A run sends
//! `n` datagrams as fast as the sender's path allows; the receiver counts what arrives and
//! stamps the last arrival. The run's time is from the moment the sender is told to start to
//! that last arrival, so the rate is *datagrams received per second*: loss (the receive queue
//! overflowing when the receiver is the slower side) lowers the count, not the clock.
//!
//! With a window (the default, [`DEFAULT_WINDOW`]) the sender keeps at most that many datagrams
//! unread: the receiver publishes its count after every receive call and the sender sleeps
//! 20 µs at a time until there is room. The receive queue then never overflows, and the rate
//! is that of the slower side, which [`RunStats::rx_ns`] and [`RunStats::tx_ns`] tell apart.
//! Without a window (`0`) the sender blasts and the overflow is counted as loss.
//!
//! The receiver stops when it has all `n`, or when it reads an end marker (a 9-byte datagram
//! carrying the run number) that the sender repeats every millisecond after its last datagram,
//! for at most [`MARKER_WINDOW`]; the driving thread waits with time limits too, so every run
//! is bounded. Nothing here asserts timings.
//!
//! Counters that are cheap to keep ride along: receive calls (syscalls, or ring operations for
//! variant A) that returned data and that found the queue empty, times the receiver task was
//! suspended ("parks", i.e. wake-ups), and each thread's CPU time from
//! `/proc/thread-self/schedstat`. On loopback the kernel delivers a datagram into the receive
//! queue on the *sender's* core, so sender CPU includes the receive path up to the queue.

use alknet_core::config::{DriverKind, UdpConfig};
use alknet_core::net::server::run_on_driver;
use alknet_core::net::udp::{MAX_GSO_BYTES, UdpIo, bind_reuseport};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Payload size of every data datagram (a typical QUIC packet on a 1 280-byte-MTU path).
pub const DATAGRAM: usize = 1200;

/// How long the sender repeats the end marker before giving up on the receiver.
pub const MARKER_WINDOW: Duration = Duration::from_secs(5);

/// Default flow-control window: datagrams the sender may have in flight (sent, not yet read).
/// 2 048 × 1 200 bytes stays inside the 8 MiB the kernel grants for a 4 MiB `SO_RCVBUF`
/// (it doubles the request), with or without GRO, so a paced run loses nothing.
pub const DEFAULT_WINDOW: u64 = 2048;

/// How often a paced sender with a full window looks again. A full window is ≥ 1.7 ms of
/// receiving even at 1.2 M datagrams/s, so the receiver never runs dry while the sender sleeps.
const WINDOW_POLL: Duration = Duration::from_micros(20);

/// How long a paced sender waits for the receiver to make progress before sending anyway.
const WINDOW_STALL: Duration = Duration::from_secs(1);

/// First byte of an end marker; the other eight are the run number, little-endian.
const MARKER_TAG: u8 = 0xFF;
const MARKER_LEN: usize = 9;

/// Receive slot for the tokio baseline, as quinn sizes it: one GRO batch is at most 64 KiB.
const SLOT: usize = 64 * 1024;

/// Socket buffers for every variant (this machine caps them at 4 MiB).
const SOCKET_BUFFER: usize = 4 << 20;

/// Core the receiver is pinned to; the sender takes the next one.
const RECEIVER_CORE: usize = 0;

/// One way of moving datagrams between a socket and the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// A: monoio on io_uring, one `recv_from`/`send_to` ring operation per datagram.
    RingPerDatagram,
    /// B: monoio io_uring readiness plus `alknet_core::net::udp::UdpIo` (quinn-udp), GSO and GRO on.
    RingReadyBatched,
    /// B-nogso: as B with GSO and GRO off (`recvmmsg` batches, one `sendmsg` per datagram).
    RingReadyNoOffload,
    /// C: as B on monoio's legacy (epoll) driver.
    EpollReadyBatched,
    /// Q: the path quinn uses, tokio readiness plus quinn-udp, GSO and GRO on. The baseline.
    TokioQuinnUdp,
}

impl Variant {
    /// Every variant, in table order.
    pub const ALL: [Self; 5] = [
        Self::RingPerDatagram,
        Self::RingReadyBatched,
        Self::RingReadyNoOffload,
        Self::EpollReadyBatched,
        Self::TokioQuinnUdp,
    ];

    /// The variant the others are compared with.
    pub const BASELINE: Self = Self::TokioQuinnUdp;

    /// Short name used as the benchmark id and table key.
    pub fn name(self) -> &'static str {
        match self {
            Self::RingPerDatagram => "A",
            Self::RingReadyBatched => "B",
            Self::RingReadyNoOffload => "B-nogso",
            Self::EpollReadyBatched => "C",
            Self::TokioQuinnUdp => "Q",
        }
    }

    /// One line saying what the variant does.
    pub fn describe(self) -> &'static str {
        match self {
            Self::RingPerDatagram => "monoio io_uring, recv_from/send_to per datagram",
            Self::RingReadyBatched => "io_uring readiness + UdpIo, GRO/GSO on",
            Self::RingReadyNoOffload => "io_uring readiness + UdpIo, GRO/GSO off",
            Self::EpollReadyBatched => "epoll readiness + UdpIo, GRO/GSO on",
            Self::TokioQuinnUdp => "tokio + quinn-udp, GRO/GSO on (baseline)",
        }
    }

    /// Parses a [`Variant::name`], ignoring case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The monoio driver of a monoio variant (the tokio baseline has none).
    fn driver(self) -> DriverKind {
        match self {
            Self::EpollReadyBatched => DriverKind::Legacy,
            _ => DriverKind::IoUring,
        }
    }

    fn udp_config(self) -> UdpConfig {
        let offload = self != Self::RingReadyNoOffload;
        UdpConfig {
            gso: offload,
            // The same batches as the baseline's path (capped by MAX_GSO_BYTES).
            gso_segments: 64,
            gro: offload,
            ecn: true,
            recv_buffer: SOCKET_BUFFER,
            send_buffer: SOCKET_BUFFER,
            ..UdpConfig::default()
        }
    }
}

/// What one or more runs measured. Sums, so runs can be merged.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Runs merged into this value.
    pub runs: u64,
    /// Data datagrams handed to the kernel by the sender.
    pub sent: u64,
    /// Data datagrams the receiver read.
    pub received: u64,
    /// From the start signal to the last data datagram received.
    pub elapsed: Duration,
    /// From the start signal to the sender's last data datagram.
    pub send_elapsed: Duration,
    /// Receive calls that returned data (syscalls, or ring operations for A).
    pub recv_calls: u64,
    /// Receive syscalls that found the queue empty (`WouldBlock`).
    pub empty_recvs: u64,
    /// Times the receiver task was suspended waiting for the socket (wake-ups).
    pub parks: u64,
    /// Send calls that took datagrams (one GSO batch each where GSO is on).
    pub send_calls: u64,
    /// Send calls refused with `WouldBlock` (full send buffer).
    pub send_blocked: u64,
    /// Times the sender found the window full and waited for the receiver.
    pub window_waits: u64,
    /// CPU time of the receiver thread during the runs.
    pub rx_cpu: Duration,
    /// CPU time of the sender thread during the runs (loopback delivery included).
    pub tx_cpu: Duration,
    /// Voluntary context switches of the receiver thread (it slept in the kernel).
    pub rx_sleeps: u64,
    /// Time the receiver thread was runnable but another task had its core.
    pub rx_wait: Duration,
    /// Time the sender thread was runnable but another task had its core.
    pub tx_wait: Duration,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl RunStats {
    /// Datagrams received per second.
    pub fn rate(&self) -> f64 {
        ratio(self.received as f64, self.elapsed.as_secs_f64())
    }

    /// Datagrams sent per second.
    pub fn send_rate(&self) -> f64 {
        ratio(self.sent as f64, self.send_elapsed.as_secs_f64())
    }

    /// Fraction of sent datagrams that never arrived.
    pub fn loss(&self) -> f64 {
        ratio(
            self.sent.saturating_sub(self.received) as f64,
            self.sent as f64,
        )
    }

    /// Datagrams per receive call that returned data.
    pub fn per_recv_call(&self) -> f64 {
        ratio(self.received as f64, self.recv_calls as f64)
    }

    /// Datagrams per wake-up of the receiver task.
    pub fn per_park(&self) -> f64 {
        ratio(self.received as f64, self.parks as f64)
    }

    /// Receiver CPU nanoseconds per datagram received.
    pub fn rx_ns(&self) -> f64 {
        ratio(self.rx_cpu.as_nanos() as f64, self.received as f64)
    }

    /// Sender CPU nanoseconds per datagram received.
    pub fn tx_ns(&self) -> f64 {
        ratio(self.tx_cpu.as_nanos() as f64, self.received as f64)
    }

    /// Share of the measured time the receiver and the sender spent runnable but kept off
    /// their core by other work: near 0 on a quiet machine; above a few percent, distrust
    /// the rate (CPU ns per datagram holds up better).
    pub fn cpu_wait(&self) -> (f64, f64) {
        let t = self.elapsed.as_secs_f64();
        (
            ratio(self.rx_wait.as_secs_f64(), t),
            ratio(self.tx_wait.as_secs_f64(), t),
        )
    }

    /// The time criterion should book for `iters` datagrams: this run's time scaled from the
    /// datagrams that arrived, so loss shows as a lower rate.
    pub fn time_for(&self, iters: u64) -> Duration {
        if self.received == 0 {
            return self.elapsed;
        }
        self.elapsed.mul_f64(iters as f64 / self.received as f64)
    }

    /// Adds another run's figures to these.
    pub fn merge(&mut self, o: &Self) {
        self.runs += o.runs;
        self.sent += o.sent;
        self.received += o.received;
        self.elapsed += o.elapsed;
        self.send_elapsed += o.send_elapsed;
        self.recv_calls += o.recv_calls;
        self.empty_recvs += o.empty_recvs;
        self.parks += o.parks;
        self.send_calls += o.send_calls;
        self.send_blocked += o.send_blocked;
        self.window_waits += o.window_waits;
        self.rx_cpu += o.rx_cpu;
        self.tx_cpu += o.tx_cpu;
        self.rx_sleeps += o.rx_sleeps;
        self.rx_wait += o.rx_wait;
        self.tx_wait += o.tx_wait;
    }
}

/// Several runs of one variant: their sum and each run's rate.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The variant measured.
    pub variant: Variant,
    /// All runs merged.
    pub total: RunStats,
    /// Datagrams received per second, one entry per run.
    pub run_rates: Vec<f64>,
}

impl Summary {
    /// An empty summary for `variant`.
    pub fn new(variant: Variant) -> Self {
        Self {
            variant,
            total: RunStats::default(),
            run_rates: Vec::new(),
        }
    }

    /// Records one run.
    pub fn add(&mut self, run: &RunStats) {
        self.total.merge(run);
        self.run_rates.push(run.rate());
    }

    /// Median of the run rates (or the merged rate when there are none).
    pub fn median_rate(&self) -> f64 {
        let mut r = self.run_rates.clone();
        if r.is_empty() {
            return self.total.rate();
        }
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }

    fn spread(&self) -> (f64, f64) {
        let min = self.run_rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.run_rates.iter().copied().fold(0.0, f64::max);
        if min.is_finite() {
            (min, max)
        } else {
            (0.0, 0.0)
        }
    }
}

fn baseline_rate(rows: &[Summary]) -> f64 {
    rows.iter()
        .find(|s| s.variant == Variant::BASELINE)
        .map_or(0.0, Summary::median_rate)
}

fn kilo(x: f64) -> String {
    format!("{:.0} k", x / 1e3)
}

/// A markdown table of `rows`, rates as the median run, ratios against [`Variant::BASELINE`].
pub fn markdown_table(rows: &[Summary]) -> String {
    let base = baseline_rate(rows);
    let mut out = String::from(
        "| path | what | received dgram/s | × Q | min–max | sent dgram/s | loss | dgram/recv call | dgram/wake-up | rx CPU ns/dgram | tx CPU ns/dgram | rx/tx CPU-wait |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for s in rows {
        let t = &s.total;
        let (min, max) = s.spread();
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {}–{} | {} | {:.1}% | {:.1} | {:.1} | {:.0} | {:.0} | {:.0}%/{:.0}% |\n",
            s.variant.name(),
            s.variant.describe(),
            kilo(s.median_rate()),
            ratio(s.median_rate(), base),
            kilo(min),
            kilo(max),
            kilo(t.send_rate()),
            t.loss() * 100.0,
            t.per_recv_call(),
            t.per_park(),
            t.rx_ns(),
            t.tx_ns(),
            t.cpu_wait().0 * 100.0,
            t.cpu_wait().1 * 100.0,
        ));
    }
    out
}

/// The same figures as [`markdown_table`], as JSON.
pub fn json(rows: &[Summary]) -> serde_json::Value {
    let base = baseline_rate(rows);
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|s| {
            let t = &s.total;
            serde_json::json!({
                "variant": s.variant.name(),
                "describe": s.variant.describe(),
                "datagram_bytes": DATAGRAM,
                "runs": t.runs,
                "received_per_s": s.median_rate(),
                "ratio_to_baseline": ratio(s.median_rate(), base),
                "run_rates": s.run_rates,
                "sent_per_s": t.send_rate(),
                "sent": t.sent,
                "received": t.received,
                "loss": t.loss(),
                "recv_calls": t.recv_calls,
                "empty_recvs": t.empty_recvs,
                "wakeups": t.parks,
                "datagrams_per_recv_call": t.per_recv_call(),
                "datagrams_per_wakeup": t.per_park(),
                "send_calls": t.send_calls,
                "send_blocked": t.send_blocked,
                "window_waits": t.window_waits,
                "rx_cpu_ns_per_datagram": t.rx_ns(),
                "tx_cpu_ns_per_datagram": t.tx_ns(),
                "rx_voluntary_switches": t.rx_sleeps,
                "rx_cpu_wait_share": t.cpu_wait().0,
                "tx_cpu_wait_share": t.cpu_wait().1,
            })
        })
        .collect();
    serde_json::json!({ "baseline": Variant::BASELINE.name(), "variants": items })
}

// ---------------------------------------------------------------------------------------------
// The rig: two threads and the messages between them and the driving thread.

enum RxCmd {
    Arm { run: u64, n: u64 },
    Quit,
}

enum RxMsg {
    Ready(SocketAddr),
    Armed,
    Report(RxReport),
}

struct RxReport {
    received: u64,
    last: Option<Instant>,
    end: Instant,
    recv_calls: u64,
    empty_recvs: u64,
    parks: u64,
    cpu: Duration,
    wait: Duration,
    sleeps: u64,
}

enum TxCmd {
    Send { run: u64, n: u64 },
    Quit,
}

enum TxMsg {
    Ready,
    Report(TxReport),
}

struct TxReport {
    sent: u64,
    data_end: Instant,
    calls: u64,
    blocked: u64,
    window_waits: u64,
    cpu: Duration,
    wait: Duration,
}

/// A receiver and a sender thread for one variant, reused across runs.
pub struct Rig {
    variant: Variant,
    run: u64,
    rx_addr: SocketAddr,
    to_rx: Sender<RxCmd>,
    from_rx: Receiver<io::Result<RxMsg>>,
    to_tx: Sender<TxCmd>,
    from_tx: Receiver<io::Result<TxMsg>>,
    threads: Vec<JoinHandle<()>>,
    healthy: bool,
}

fn broken(what: &str) -> io::Error {
    io::Error::other(format!("udp_rate: {what}"))
}

impl Rig {
    /// Starts the receiver and sender threads of `variant` and waits until both are bound.
    /// `window` is the flow-control window in datagrams, `0` for none.
    pub fn start(variant: Variant, window: u64) -> io::Result<Self> {
        let done = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(AtomicU64::new(0));
        let rx_progress = progress.clone();
        let (to_rx, rx_cmds) = mpsc::channel();
        let (rx_out, from_rx) = mpsc::channel();
        let rx_done = done.clone();
        let rx_thread = std::thread::Builder::new()
            .name(format!("udp-rate-rx-{}", variant.name()))
            .spawn(move || {
                let link = RxLink {
                    cmds: rx_cmds,
                    out: rx_out,
                    done: rx_done,
                    progress: rx_progress,
                };
                receiver(variant, link);
            })?;
        let rx_addr = match from_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(RxMsg::Ready(addr))) => addr,
            Ok(Err(e)) => return Err(e),
            _ => return Err(broken("receiver did not start")),
        };
        let (to_tx, tx_cmds) = mpsc::channel();
        let (tx_out, from_tx) = mpsc::channel();
        let tx_thread = std::thread::Builder::new()
            .name(format!("udp-rate-tx-{}", variant.name()))
            .spawn(move || {
                let link = TxLink {
                    cmds: tx_cmds,
                    out: tx_out,
                    done,
                    dest: rx_addr,
                    progress,
                    window,
                };
                sender(variant, link);
            })?;
        match from_tx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(TxMsg::Ready)) => {}
            Ok(Err(e)) => return Err(e),
            _ => return Err(broken("sender did not start")),
        }
        Ok(Self {
            variant,
            run: 0,
            rx_addr,
            to_rx,
            from_rx,
            to_tx,
            from_tx,
            threads: vec![rx_thread, tx_thread],
            healthy: true,
        })
    }

    /// The variant this rig runs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Sends `n` datagrams and reports what arrived. Bounded: fails rather than hangs.
    pub fn run(&mut self, n: u64) -> io::Result<RunStats> {
        if !self.healthy {
            return Err(broken("an earlier run failed"));
        }
        self.healthy = false;
        self.run += 1;
        let run = self.run;
        self.to_rx
            .send(RxCmd::Arm { run, n })
            .map_err(|_| broken("receiver gone"))?;
        match self.from_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(RxMsg::Armed)) => {}
            Ok(Err(e)) => return Err(e),
            _ => return Err(broken("receiver did not arm")),
        }
        let t0 = Instant::now();
        self.to_tx
            .send(TxCmd::Send { run, n })
            .map_err(|_| broken("sender gone"))?;
        // At least 50 000 datagrams/s, plus the marker window, or something is wrong.
        let budget = MARKER_WINDOW + Duration::from_secs(5) + Duration::from_micros(n * 20);
        let rx = match self.from_rx.recv_timeout(budget) {
            Ok(Ok(RxMsg::Report(r))) => r,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => return Err(broken("receiver out of step")),
            Err(RecvTimeoutError::Timeout) => self.unstick(run)?,
            Err(RecvTimeoutError::Disconnected) => return Err(broken("receiver gone")),
        };
        let tx = match self.from_tx.recv_timeout(budget) {
            Ok(Ok(TxMsg::Report(r))) => r,
            Ok(Err(e)) => return Err(e),
            _ => return Err(broken("sender did not finish")),
        };
        self.healthy = true;
        let last = rx.last.unwrap_or(rx.end);
        Ok(RunStats {
            runs: 1,
            sent: tx.sent,
            received: rx.received,
            elapsed: last.saturating_duration_since(t0),
            send_elapsed: tx.data_end.saturating_duration_since(t0),
            recv_calls: rx.recv_calls,
            empty_recvs: rx.empty_recvs,
            parks: rx.parks,
            send_calls: tx.calls,
            send_blocked: tx.blocked,
            window_waits: tx.window_waits,
            rx_cpu: rx.cpu,
            tx_cpu: tx.cpu,
            rx_sleeps: rx.sleeps,
            rx_wait: rx.wait,
            tx_wait: tx.wait,
        })
    }

    /// The receiver missed every end marker: send a few from here, then give up.
    fn unstick(&self, run: u64) -> io::Result<RxReport> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        for _ in 0..20 {
            let _ = sock.send_to(&marker(run), self.rx_addr);
            if let Ok(msg) = self.from_rx.recv_timeout(Duration::from_millis(50)) {
                return match msg? {
                    RxMsg::Report(r) => Ok(r),
                    _ => Err(broken("receiver out of step")),
                };
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "udp_rate: receiver did not finish",
        ))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.to_rx.send(RxCmd::Quit);
        let _ = self.to_tx.send(TxCmd::Quit);
        if self.healthy {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        // A stuck thread is left behind rather than joined; process exit ends it.
    }
}

fn marker(run: u64) -> [u8; MARKER_LEN] {
    let mut m = [MARKER_TAG; MARKER_LEN];
    m[1..].copy_from_slice(&run.to_le_bytes());
    m
}

fn pin(core: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = monoio::utils::bind_to_cpu_set([core % cores]);
}

/// The calling thread's CPU time, time spent runnable but waiting for a CPU (other work on
/// its core), and voluntary context switches, so far.
fn thread_usage() -> (Duration, Duration, u64) {
    let sched = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = sched
        .split_whitespace()
        .map(|f| f.parse().map_or(Duration::ZERO, Duration::from_nanos));
    let cpu = fields.next().unwrap_or_default();
    let wait = fields.next().unwrap_or_default();
    let sleeps = std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    (cpu, wait, sleeps)
}

/// Awaits `fut`, adding one to `parks` each time it suspends the task.
async fn counted<F: Future>(fut: F, parks: &mut u64) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let p = fut.as_mut().poll(cx);
        if p.is_pending() {
            *parks += 1;
        }
        p
    })
    .await
}

fn bind() -> io::Result<socket2::Socket> {
    let s = bind_reuseport(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    s.set_recv_buffer_size(SOCKET_BUFFER)?;
    s.set_send_buffer_size(SOCKET_BUFFER)?;
    Ok(s)
}

fn local_addr(s: &socket2::Socket) -> io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| broken("not an inet socket"))
}

fn tokio_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

// ---------------------------------------------------------------------------------------------
// Receiver side.

struct RxLink {
    cmds: Receiver<RxCmd>,
    out: Sender<io::Result<RxMsg>>,
    done: Arc<AtomicU64>,
    /// Data datagrams read so far in this run, for the sender's window.
    progress: Arc<AtomicU64>,
}

impl RxLink {
    fn send(&self, msg: io::Result<RxMsg>) {
        let _ = self.out.send(msg);
    }

    /// Blocks the thread (and its runtime, which has nothing else to do) until the next run.
    fn next(&self) -> Option<Tally> {
        match self.cmds.recv() {
            Ok(RxCmd::Arm { run, n }) => {
                self.progress.store(0, Ordering::Release);
                let t = Tally::new(run, n, self.progress.clone());
                self.send(Ok(RxMsg::Armed));
                Some(t)
            }
            Ok(RxCmd::Quit) | Err(_) => None,
        }
    }

    fn finish(&self, t: Tally) {
        self.done.store(t.run, Ordering::Release);
        let (cpu, wait, sleeps) = thread_usage();
        self.send(Ok(RxMsg::Report(RxReport {
            received: t.received,
            last: t.last,
            end: Instant::now(),
            recv_calls: t.recv_calls,
            empty_recvs: t.empty_recvs,
            parks: t.parks,
            cpu: cpu.saturating_sub(t.cpu0),
            wait: wait.saturating_sub(t.wait0),
            sleeps: sleeps.saturating_sub(t.sleeps0),
        })));
    }
}

/// The receiver's count for one run.
struct Tally {
    progress: Arc<AtomicU64>,
    run: u64,
    want: u64,
    received: u64,
    stamped: u64,
    last: Option<Instant>,
    finished: bool,
    recv_calls: u64,
    empty_recvs: u64,
    parks: u64,
    cpu0: Duration,
    wait0: Duration,
    sleeps0: u64,
}

impl Tally {
    fn new(run: u64, want: u64, progress: Arc<AtomicU64>) -> Self {
        let (cpu0, wait0, sleeps0) = thread_usage();
        Self {
            progress,
            run,
            want,
            received: 0,
            stamped: 0,
            last: None,
            finished: want == 0,
            recv_calls: 0,
            empty_recvs: 0,
            parks: 0,
            cpu0,
            wait0,
            sleeps0,
        }
    }

    fn datagram(&mut self, d: &[u8]) {
        if d.len() == DATAGRAM {
            self.received += 1;
            if self.received >= self.want {
                self.finished = true;
            }
        } else if d.len() == MARKER_LEN && d == marker(self.run) {
            self.finished = true;
        }
        // Anything else is a stale marker of an earlier run.
    }

    /// One GRO batch: `bytes` in segments of `stride` (the last may be shorter).
    fn segments(&mut self, bytes: &[u8], stride: usize) {
        if stride == 0 || stride >= bytes.len() {
            self.datagram(bytes);
        } else {
            for d in bytes.chunks(stride) {
                self.datagram(d);
            }
        }
    }

    /// After a receive call: one clock read per call, only if data arrived.
    fn stamp(&mut self) {
        self.recv_calls += 1;
        if self.received != self.stamped {
            self.stamped = self.received;
            self.last = Some(Instant::now());
            self.progress.store(self.received, Ordering::Release);
        }
    }
}

fn receiver(variant: Variant, link: RxLink) {
    pin(RECEIVER_CORE);
    let socket = match bind() {
        Ok(s) => s,
        Err(e) => return link.send(Err(e)),
    };
    let r = match variant {
        Variant::TokioQuinnUdp => {
            tokio_runtime().and_then(|rt| rt.block_on(rx_tokio(socket, &link)))
        }
        v => run_on_driver(v.driver(), 0, || async {
            let r = match v {
                Variant::RingPerDatagram => rx_per_datagram(socket, &link).await,
                _ => rx_batched(socket, &v.udp_config(), &link).await,
            };
            if let Err(e) = r {
                link.send(Err(e));
            }
        }),
    };
    if let Err(e) = r {
        link.send(Err(e));
    }
}

/// A: one `recv_from` ring operation per datagram.
async fn rx_per_datagram(socket: socket2::Socket, link: &RxLink) -> io::Result<()> {
    let addr = local_addr(&socket)?;
    let sock = monoio::net::udp::UdpSocket::from_std(socket.into())?;
    link.send(Ok(RxMsg::Ready(addr)));
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    while let Some(mut t) = link.next() {
        while !t.finished {
            let (res, b) = counted(sock.recv_from(buf), &mut t.parks).await;
            buf = b;
            let (len, _) = res?;
            t.datagram(buf.get(..len).unwrap_or_default());
            t.stamp();
        }
        link.finish(t);
    }
    Ok(())
}

/// B, B-nogso, C: ring (or epoll) readiness, then quinn-udp's `recvmmsg` until `WouldBlock`.
async fn rx_batched(socket: socket2::Socket, cfg: &UdpConfig, link: &RxLink) -> io::Result<()> {
    let io = UdpIo::new(socket, cfg)?;
    link.send(Ok(RxMsg::Ready(io.local_addr()?)));
    while let Some(mut t) = link.next() {
        while !t.finished {
            match io.recv_batch(|meta, bytes| t.segments(bytes, meta.stride)) {
                Ok(_) => t.stamp(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.empty_recvs += 1;
                    counted(io.readable(), &mut t.parks).await?;
                }
                Err(e) => return Err(e),
            }
        }
        link.finish(t);
    }
    Ok(())
}

/// Q: what quinn's tokio runtime does: `try_io` around quinn-udp's `recv`, `readable()` on
/// `WouldBlock`, slots as a stack array of `IoSliceMut` over one buffer.
async fn rx_tokio(socket: socket2::Socket, link: &RxLink) -> io::Result<()> {
    use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSocketState};
    let addr = local_addr(&socket)?;
    let sock = tokio::net::UdpSocket::from_std(socket.into())?;
    let state = UdpSocketState::new((&sock).into())?;
    link.send(Ok(RxMsg::Ready(addr)));
    let mut buf = vec![0u8; SLOT * BATCH_SIZE];
    let mut meta = [RecvMeta::default(); BATCH_SIZE];
    while let Some(mut t) = link.next() {
        while !t.finished {
            let res = {
                let mut chunks = buf.chunks_mut(SLOT).map(IoSliceMut::new);
                let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                    chunks.next().unwrap_or_else(|| IoSliceMut::new(&mut []))
                });
                sock.try_io(tokio::io::Interest::READABLE, || {
                    state.recv((&sock).into(), &mut iovs, &mut meta)
                })
            };
            match res {
                Ok(n) => {
                    for (m, slot) in meta.iter().zip(buf.chunks(SLOT)).take(n) {
                        t.segments(slot.get(..m.len).unwrap_or_default(), m.stride);
                    }
                    t.stamp();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.empty_recvs += 1;
                    counted(sock.readable(), &mut t.parks).await?;
                }
                Err(e) => return Err(e),
            }
        }
        link.finish(t);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sender side.

struct TxLink {
    cmds: Receiver<TxCmd>,
    out: Sender<io::Result<TxMsg>>,
    done: Arc<AtomicU64>,
    dest: SocketAddr,
    progress: Arc<AtomicU64>,
    window: u64,
}

/// The sender's count for one run.
struct TxTally {
    run: u64,
    n: u64,
    data_end: Option<Instant>,
    calls: u64,
    blocked: u64,
    window_waits: u64,
    cpu0: Duration,
    wait0: Duration,
    markers_until: Instant,
}

impl TxLink {
    fn send(&self, msg: io::Result<TxMsg>) {
        let _ = self.out.send(msg);
    }

    fn next(&self) -> Option<TxTally> {
        match self.cmds.recv() {
            Ok(TxCmd::Send { run, n }) => {
                let (cpu0, wait0, _) = thread_usage();
                Some(TxTally {
                    run,
                    n,
                    data_end: None,
                    calls: 0,
                    blocked: 0,
                    window_waits: 0,
                    cpu0,
                    wait0,
                    markers_until: Instant::now(),
                })
            }
            Ok(TxCmd::Quit) | Err(_) => None,
        }
    }

    /// With a window: waits until `sent + k` datagrams would leave at most `window` unread,
    /// or the receiver has made no progress for [`WINDOW_STALL`] (then sends anyway).
    fn wait_window(&self, t: &mut TxTally, sent: u64, k: u64) {
        if self.window == 0 {
            return;
        }
        let room = |read: u64| sent + k <= read + self.window;
        let mut read = self.progress.load(Ordering::Acquire);
        if room(read) {
            return;
        }
        t.window_waits += 1;
        let mut since = Instant::now();
        loop {
            // Sleep rather than spin, so the sender's CPU time stays the cost of sending.
            std::thread::sleep(WINDOW_POLL);
            let now_read = self.progress.load(Ordering::Acquire);
            if room(now_read) {
                return;
            }
            if now_read != read {
                read = now_read;
                since = Instant::now();
            } else if since.elapsed() > WINDOW_STALL {
                return;
            }
        }
    }

    /// Called after the last data datagram, then before each end marker: whether to send one
    /// more (the receiver has not finished and the window is open). Sleeps 1 ms between
    /// markers; nothing else runs on this thread.
    fn want_marker(&self, t: &mut TxTally) -> bool {
        let now = Instant::now();
        if t.data_end.is_none() {
            t.data_end = Some(now);
            t.markers_until = now + MARKER_WINDOW;
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.done.load(Ordering::Acquire) != t.run && Instant::now() < t.markers_until
    }

    fn finish(&self, t: TxTally) {
        let (cpu, wait, _) = thread_usage();
        self.send(Ok(TxMsg::Report(TxReport {
            sent: t.n,
            data_end: t.data_end.unwrap_or_else(Instant::now),
            calls: t.calls,
            blocked: t.blocked,
            window_waits: t.window_waits,
            cpu: cpu.saturating_sub(t.cpu0),
            wait: wait.saturating_sub(t.wait0),
        })));
    }
}

fn sender(variant: Variant, link: TxLink) {
    pin(RECEIVER_CORE + 1);
    let socket = match bind() {
        Ok(s) => s,
        Err(e) => return link.send(Err(e)),
    };
    let r = match variant {
        Variant::TokioQuinnUdp => {
            tokio_runtime().and_then(|rt| rt.block_on(tx_tokio(socket, &link)))
        }
        v => run_on_driver(v.driver(), 1, || async {
            let r = match v {
                Variant::RingPerDatagram => tx_per_datagram(socket, &link).await,
                _ => tx_batched(socket, &v.udp_config(), &link).await,
            };
            if let Err(e) = r {
                link.send(Err(e));
            }
        }),
    };
    if let Err(e) = r {
        link.send(Err(e));
    }
}

/// A: one `send_to` ring operation per datagram.
async fn tx_per_datagram(socket: socket2::Socket, link: &TxLink) -> io::Result<()> {
    let sock = monoio::net::udp::UdpSocket::from_std(socket.into())?;
    link.send(Ok(TxMsg::Ready));
    let mut buf = vec![0xA5u8; DATAGRAM];
    while let Some(mut t) = link.next() {
        for i in 0..t.n {
            link.wait_window(&mut t, i, 1);
            let (res, b) = sock.send_to(buf, link.dest).await;
            buf = b;
            res?;
            t.calls += 1;
        }
        while link.want_marker(&mut t) {
            let _ = sock.send_to(marker(t.run).to_vec(), link.dest).await;
        }
        link.finish(t);
    }
    Ok(())
}

/// B, B-nogso, C: GSO batches of as many 1 200-byte segments as one send may carry.
async fn tx_batched(socket: socket2::Socket, cfg: &UdpConfig, link: &TxLink) -> io::Result<()> {
    let io = UdpIo::new(socket, cfg)?;
    let segments = io.max_segments(DATAGRAM);
    let buf = vec![0xA5u8; segments * DATAGRAM];
    link.send(Ok(TxMsg::Ready));
    while let Some(mut t) = link.next() {
        let mut left = t.n;
        while left > 0 {
            let k = left.min(segments as u64) as usize;
            let sent = t.n - left;
            link.wait_window(&mut t, sent, k as u64);
            let contents = buf.get(..k * DATAGRAM).unwrap_or_default();
            match io.send(link.dest, None, contents, Some(DATAGRAM), None) {
                Ok(()) => {
                    left -= k as u64;
                    t.calls += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.blocked += 1;
                    io.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        while link.want_marker(&mut t) {
            let _ = io.send(link.dest, None, &marker(t.run), None, None);
        }
        link.finish(t);
    }
    Ok(())
}

/// Q: quinn's send path on tokio: `try_io` around quinn-udp's `send`, `writable()` on
/// `WouldBlock`, GSO batches as large as B's so only the runtime differs.
async fn tx_tokio(socket: socket2::Socket, link: &TxLink) -> io::Result<()> {
    use quinn_udp::{Transmit, UdpSocketState};
    let sock = tokio::net::UdpSocket::from_std(socket.into())?;
    let state = UdpSocketState::new((&sock).into())?;
    let segments = state.max_gso_segments().clamp(1, MAX_GSO_BYTES / DATAGRAM);
    let buf = vec![0xA5u8; segments * DATAGRAM];
    link.send(Ok(TxMsg::Ready));
    while let Some(mut t) = link.next() {
        let mut left = t.n;
        while left > 0 {
            let k = left.min(segments as u64) as usize;
            let sent = t.n - left;
            link.wait_window(&mut t, sent, k as u64);
            let transmit = Transmit {
                destination: link.dest,
                ecn: None,
                contents: buf.get(..k * DATAGRAM).unwrap_or_default(),
                segment_size: (k > 1).then_some(DATAGRAM),
                src_ip: None,
            };
            match sock.try_io(tokio::io::Interest::WRITABLE, || {
                state.send((&sock).into(), &transmit)
            }) {
                Ok(()) => {
                    left -= k as u64;
                    t.calls += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.blocked += 1;
                    sock.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        while link.want_marker(&mut t) {
            let m = marker(t.run);
            let transmit = Transmit {
                destination: link.dest,
                ecn: None,
                contents: &m,
                segment_size: None,
                src_ip: None,
            };
            let _ = sock.try_io(tokio::io::Interest::WRITABLE, || {
                state.send((&sock).into(), &transmit)
            });
        }
        link.finish(t);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every variant moves datagrams end to end and finishes a short run (no timing asserted).
    #[test]
    fn every_variant_completes_a_short_run() {
        for v in Variant::ALL {
            for window in [DEFAULT_WINDOW, 0] {
                let mut rig = Rig::start(v, window).unwrap();
                let s = rig.run(5_000).unwrap();
                assert_eq!(s.sent, 5_000, "{}", v.name());
                assert!(s.received > 0, "{} received nothing", v.name());
                assert!(s.received <= s.sent, "{}", v.name());
            }
        }
    }

    #[test]
    fn gro_batch_with_marker_tail_counts_segments_and_stops() {
        let mut t = Tally::new(7, 100, Arc::default());
        let mut batch = vec![0u8; 3 * DATAGRAM];
        batch.extend_from_slice(&marker(7));
        t.segments(&batch, DATAGRAM);
        assert_eq!(t.received, 3);
        assert!(t.finished);
    }

    #[test]
    fn stale_marker_is_ignored() {
        let mut t = Tally::new(8, 100, Arc::default());
        t.segments(&marker(7), MARKER_LEN);
        assert!(!t.finished);
    }
}
