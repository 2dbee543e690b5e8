//! CPU time and children of a process from `/proc`, for the benchmarks' server and client
//! CPU figures and for waiting until a server has reaped its session processes.
//!
//! Linux only; the figures are in clock ticks converted to seconds with `CLK_TCK` (100 on
//! every Linux this runs on, read once from `getconf`).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// The CPU fields of `/proc/PID/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// User time of the process itself.
    pub utime: f64,
    /// System time of the process itself.
    pub stime: f64,
    /// User time of its children that it waited for (and theirs, recursively).
    pub cutime: f64,
    /// System time of those children.
    pub cstime: f64,
}

impl CpuTimes {
    /// utime + stime.
    pub fn own(&self) -> f64 {
        self.utime + self.stime
    }

    /// utime + stime + cutime + cstime.
    pub fn with_children(&self) -> f64 {
        self.own() + self.cutime + self.cstime
    }
}

/// The CPU times of process `pid`, or an error if it does not exist (any more).
pub fn cpu_times(pid: u32) -> anyhow::Result<CpuTimes> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("/proc/{pid}/stat: {e}"))?;
    let f = fields_after_comm(&text)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: unexpected format"))?;
    // After `comm`, field 3 (state) is index 0, so utime (14) is index 11.
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = f
            .get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: field {} missing", i + 3))?;
        Ok(v as f64 / clock_ticks())
    };
    Ok(CpuTimes {
        utime: tick(11)?,
        stime: tick(12)?,
        cutime: tick(13)?,
        cstime: tick(14)?,
    })
}

/// The parent pid and the command name (`comm`) of `pid`.
pub fn parent_and_name(pid: u32) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let f = fields_after_comm(&text)?;
    Some((f.get(1)?.parse().ok()?, name))
}

/// The pids of `pid`'s live children (zombies included until they are reaped).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&c| parent_and_name(c).is_some_and(|(ppid, _)| ppid == pid))
        .collect()
}

/// Waits, at most `limit`, until `pid` has no children left; whether it got there.
pub fn wait_no_children(pid: u32, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        if children(pid).is_empty() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `/proc/PID` exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn fields_after_comm(text: &str) -> Option<Vec<&str>> {
    // `comm` is in parentheses and may itself hold spaces or parentheses.
    let close = text.rfind(')')?;
    Some(text.get(close + 1..)?.split_whitespace().collect())
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_and_a_parent() {
        let me = std::process::id();
        // Burn CPU until the kernel's tick-granular counters move off zero (on a loaded
        // machine a short spin may get no tick at all), bounded in wall time.
        let mut x = 1u64;
        let start = std::time::Instant::now();
        let t = loop {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            let t = cpu_times(me).unwrap();
            if t.own() > 0.0 || start.elapsed() > Duration::from_secs(20) {
                break t;
            }
        };
        assert_ne!(x, 0);
        assert!(t.own() > 0.0, "{t:?}");
        let (ppid, _) = parent_and_name(me).unwrap();
        assert!(children(ppid).contains(&me));
        assert!(cpu_times(u32::MAX).is_err());
    }
}
