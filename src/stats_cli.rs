//! `alknet stats`: the figures of the running server, the same ones its Prometheus
//! endpoint serves, once or refreshed in place (`--watch`).

use alknet_core::ops::control;
use anyhow::Result;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Prints the stats once, or every `interval` while `watch` (until interrupted).
pub(crate) fn run(data_dir: &Path, json: bool, watch: bool, interval: Duration) -> Result<()> {
    if !watch {
        let v = fetch(data_dir)?;
        print!(
            "{}",
            if json {
                format!("{v}\n")
            } else {
                format_text(&v)
            }
        );
        return Ok(());
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let text = match fetch(data_dir) {
            Ok(v) if json => format!("{v}\n"),
            Ok(v) => format_text(&v),
            Err(e) => format!("error: {e:#}\n"),
        };
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home, clear the screen below: the figures are redrawn in place.
            let _ = write!(out, "\x1b[H\x1b[J");
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        drop(out);
        std::thread::sleep(interval);
    }
}

fn fetch(data_dir: &Path) -> Result<serde_json::Value> {
    control::request(data_dir, &control::Request::Stats).map_err(anyhow::Error::msg)
}

/// The server line, then one line per sample: `name{labels}  value`, as Prometheus shows
/// them.
fn format_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(s) = v.get("server") {
        out.push_str(&format!(
            "server {} on {} ({} workers, up {}s)\n",
            s.get("fingerprint").and_then(|x| x.as_str()).unwrap_or("?"),
            s.get("listen").and_then(|x| x.as_str()).unwrap_or("?"),
            s.get("workers").and_then(|x| x.as_u64()).unwrap_or(0),
            v.get("uptime_secs").and_then(|x| x.as_u64()).unwrap_or(0),
        ));
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    for fam in v
        .get("metrics")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        for s in fam
            .get("samples")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            let name = s.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            let labels: Vec<String> = s
                .get("labels")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
                .filter_map(|pair| {
                    let k = pair.get(0)?.as_str()?;
                    let v = pair.get(1)?.as_str()?;
                    Some(format!("{k}=\"{v}\""))
                })
                .collect();
            let key = if labels.is_empty() {
                name.to_owned()
            } else {
                format!("{name}{{{}}}", labels.join(","))
            };
            let value = s
                .get("value")
                .and_then(|x| x.as_f64())
                .map(|x| {
                    if x.fract() == 0.0 && x.abs() < 1e15 {
                        format!("{}", x as i64)
                    } else {
                        format!("{x:.6}")
                    }
                })
                .unwrap_or_default();
            rows.push((key, value));
        }
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, val) in rows {
        out.push_str(&format!("{k:<width$}  {val}\n"));
    }
    out
}
