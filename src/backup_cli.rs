//! `alknet backup` and `alknet restore`: the identity store (peers, keys, tokens, invites,
//! credentials) as one file.
//!
//! A backup is a consistent snapshot: with a server running, the server copies its store in
//! one read transaction (every acknowledged write before the request is in it, writes go on
//! meanwhile) into its data directory, and this command moves it to `--out`; without a
//! server, the store is opened and copied directly. Either way `--out` appears whole or not
//! at all (temporary file, fsync, rename), mode 0600.
//!
//! A restore goes into a stopped data directory only, never over a store without `--force`
//! (and then the old store is kept beside it), and is checked: the file opens, its schema is
//! one this build reads, every record decodes, and the counts are printed.

use alknet_core::identity::store::{self, RedbStore, STORE_FILE, StoreSummary};
use alknet_core::ops::control;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// `alknet backup --out FILE`.
pub(crate) fn backup(data_dir: &Path, out: &Path, json: bool) -> Result<()> {
    let summary = if control::server_running(data_dir) {
        let v = control::request(data_dir, &control::Request::Backup)
            .map_err(anyhow::Error::msg)
            .context("the running server could not take a backup")?;
        let file = v
            .get("file")
            .and_then(|f| f.as_str())
            .context("the server's answer names no backup file")?;
        let summary: StoreSummary =
            serde_json::from_value(v.get("summary").cloned().unwrap_or_default())
                .context("the server's answer has no summary")?;
        let snapshot = Path::new(file);
        let moved = std::fs::read(snapshot)
            .with_context(|| format!("cannot read the server's snapshot {file}"))
            .and_then(|bytes| {
                alknet_core::fsutil::write_private_atomic(out, &bytes)
                    .with_context(|| format!("cannot write {}", out.display()))
            });
        let _ = std::fs::remove_file(snapshot);
        moved?;
        summary
    } else {
        let path = data_dir.join(STORE_FILE);
        if !path.exists() {
            bail!(
                "no store at {}: nothing to back up (is --data-dir right?)",
                path.display()
            );
        }
        let store = RedbStore::open(&path)?;
        store
            .backup(out)
            .with_context(|| format!("cannot write {}", out.display()))?
    };
    report("backup written to", out, &summary, json);
    Ok(())
}

/// `alknet restore FILE [--force]`.
pub(crate) fn restore(data_dir: &Path, file: &Path, force: bool, json: bool) -> Result<()> {
    if control::server_running(data_dir) {
        bail!(
            "a server is running on {}; stop it first (`systemctl stop alknet`), then restore",
            data_dir.display()
        );
    }
    let summary = store::inspect(file)
        .with_context(|| format!("{} is not a readable Alknet backup", file.display()))?;
    if summary.schema_version > store::SCHEMA_VERSION {
        bail!(
            "{} has schema version {}, newer than this Alknet ({}); restore it with a newer build",
            file.display(),
            summary.schema_version,
            store::SCHEMA_VERSION
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    alknet_core::fsutil::ensure_data_dir(data_dir)
        .with_context(|| format!("cannot use data directory {}", data_dir.display()))?;
    let dest = data_dir.join(STORE_FILE);
    if dest.exists() {
        if !force {
            bail!(
                "{} already holds a store; pass --force to replace it (the old one is kept beside it)",
                dest.display()
            );
        }
        let aside = data_dir.join(format!(
            "{STORE_FILE}.before-restore-{}",
            control::unix_now()
        ));
        std::fs::rename(&dest, &aside)
            .with_context(|| format!("cannot move the old store to {}", aside.display()))?;
        eprintln!("the old store is kept as {}", aside.display());
    }
    alknet_core::fsutil::write_private_atomic(&dest, &bytes)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    // Opening decodes every record and brings an older schema up to date.
    let opened = RedbStore::open(&dest)
        .with_context(|| format!("the restored store {} does not open", dest.display()))?;
    drop(opened);
    let after = store::inspect(&dest)?;
    report("store restored to", &dest, &after, json);
    Ok(())
}

fn report(what: &str, path: &Path, summary: &StoreSummary, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "path": path, "schema_version": summary.schema_version, "tables": summary.tables })
        );
        return;
    }
    println!(
        "{what} {} (schema version {})",
        path.display(),
        summary.schema_version
    );
    for (table, rows) in &summary.tables {
        println!("  {table:<14} {rows}");
    }
}
