//! `alknet reload`: asks the running server to read its config file again, and prints what
//! changed or why the file was refused.

use alknet_core::ops::control::{self, Request};
use alknet_core::ops::reload::Outcome;
use anyhow::{Result, bail};
use std::path::Path;

/// Sends the reload request and prints the outcome; a refused file is an error (exit 1)
/// naming the file, line and key.
pub(crate) fn run(data_dir: &Path, json: bool) -> Result<()> {
    if !control::server_running(data_dir) {
        bail!(
            "no server runs on {}: there is nothing to reload; start one with `alknet serve --config FILE --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        );
    }
    let value = match control::request(data_dir, &Request::Reload) {
        Ok(v) => v,
        Err(e) => bail!(
            "{e}\nthe running configuration is unchanged; fix the file and run `alknet reload` again"
        ),
    };
    if json {
        println!("{value}");
        return Ok(());
    }
    let outcome: Outcome = serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("bad answer from the server: {e}"))?;
    println!("reloaded {}", outcome.file);
    let lines: [(&str, &[String]); 8] = [
        ("peers added", &outcome.peers_added),
        ("peers removed", &outcome.peers_removed),
        ("peers changed", &outcome.peers_changed),
        ("services turned off", &outcome.services_disabled),
        ("services turned on", &outcome.services_enabled),
        ("service sections reloaded", &outcome.sections_reloaded),
        ("limits applied", &outcome.keys_applied),
        (
            "needs a restart (running value kept)",
            &outcome.needs_restart,
        ),
    ];
    let mut any = false;
    for (what, names) in lines {
        if !names.is_empty() {
            any = true;
            println!("  {what}: {}", names.join(", "));
        }
    }
    if !any {
        println!("  nothing changed");
    }
    Ok(())
}
