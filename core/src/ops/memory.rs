//! The global memory budget: above it, new connections are retried or refused and
//! connections get no new stream credit, so a flood cannot push the gateway into the OOM
//! killer while established sessions keep working.
//!
//! A monitor thread samples the process's resident set every 100 ms and tells every shard
//! when the process crosses the budget either way. The shards act on their own state; the
//! only shared datum is the flag.

use crate::shard::ShardMsg;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the resident set is sampled.
const SAMPLE: Duration = Duration::from_millis(100);

/// Resident memory against the budget.
#[derive(Debug, Default)]
pub struct MemoryGauge {
    rss: AtomicU64,
    budget: AtomicU64,
    over: AtomicBool,
    stop: AtomicBool,
}

impl MemoryGauge {
    /// Resident bytes at the last sample.
    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Changes the budget (takes effect at the next sample).
    pub fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes.max(1), Ordering::Relaxed);
    }

    /// True while the process is above its budget.
    pub fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Stops the monitor thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Resident set size of this process, from `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Physical memory, from `/proc/meminfo`.
pub fn physical_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The budget for a configured value: the value itself, or half of physical memory for 0.
pub fn effective_budget(configured: u64) -> u64 {
    if configured > 0 {
        configured
    } else {
        physical_bytes().map_or(u64::MAX, |m| m / 2)
    }
}

/// Starts the monitor; it informs every shard of each crossing of the budget.
pub fn start(budget: u64, shards: Vec<flume::Sender<ShardMsg>>) -> Arc<MemoryGauge> {
    let gauge = Arc::new(MemoryGauge::default());
    gauge.set_budget(budget);
    let g = gauge.clone();
    let spawned = std::thread::Builder::new()
        .name("alknet-memory".into())
        .spawn(move || {
            while !g.stop.load(Ordering::Relaxed) {
                if let Some(rss) = resident_bytes() {
                    g.rss.store(rss, Ordering::Relaxed);
                    let over = rss > g.budget();
                    if g.over.swap(over, Ordering::Relaxed) != over {
                        if over {
                            tracing::warn!(
                                rss,
                                budget = g.budget(),
                                "memory budget exceeded; refusing new connections and streams"
                            );
                        } else {
                            tracing::info!(
                                rss,
                                budget = g.budget(),
                                "back under the memory budget"
                            );
                        }
                        for tx in &shards {
                            let _ = tx.send(ShardMsg::MemoryPressure(over));
                        }
                    }
                }
                std::thread::sleep(SAMPLE);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the memory monitor; no memory budget");
    }
    gauge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let rss = resident_bytes().unwrap_or(0);
        assert!(rss > 1 << 20, "rss {rss}");
        assert!(physical_bytes().unwrap_or(0) > rss);
        assert_eq!(effective_budget(123), 123);
        assert!(effective_budget(0) > rss);
    }

    #[test]
    fn monitor_reports_crossings_both_ways() {
        let (tx, rx) = flume::unbounded();
        let g = start(1, vec![tx]);
        let first = rx.recv_timeout(Duration::from_secs(2));
        assert!(
            matches!(first, Ok(ShardMsg::MemoryPressure(true))),
            "{first:?}"
        );
        assert!(g.over());
        g.set_budget(u64::MAX);
        let second = rx.recv_timeout(Duration::from_secs(2));
        assert!(
            matches!(second, Ok(ShardMsg::MemoryPressure(false))),
            "{second:?}"
        );
        g.stop();
    }
}
