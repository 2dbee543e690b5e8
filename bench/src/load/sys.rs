//! What the load generator reads about a process from `/proc`: CPU seconds (user + system,
//! all threads) and resident memory (current and peak). Linux only; no unsafe.

use std::sync::OnceLock;

/// A point-in-time reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU seconds since the process started, over all its threads.
    pub cpu_secs: f64,
    /// Resident set size now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub peak_rss_kib: u64,
}

/// Clock ticks per second for `/proc/<pid>/stat` times, asked of `getconf CLK_TCK` once
/// (100 on every Linux this runs on; used when `getconf` is missing).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Parses the text of `/proc/<pid>/stat` into user + system ticks.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Reads a `kB` line such as `VmRSS:    1234 kB` from the text of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_ascii_whitespace().next()?.parse().ok()
    })
}

/// Samples process `pid` (`"self"` for this process); `None` when it is gone.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_secs: parse_stat_ticks(&stat)? as f64 / clock_ticks(),
        rss_kib: parse_status_kib(&status, "VmRSS").unwrap_or(0),
        peak_rss_kib: parse_status_kib(&status, "VmHWM").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_name() {
        let line = "1234 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 5 6 7";
        assert_eq!(parse_stat_ticks(line), Some(300));
    }

    #[test]
    fn status_lines() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(2048));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn self_sample_reads() {
        let s = sample("self").unwrap();
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib);
    }
}
