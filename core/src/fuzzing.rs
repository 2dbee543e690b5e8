//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.

use crate::config::Config;
use std::path::Path;

/// Parses arbitrary bytes as a configuration file: never a panic, and every error names a
/// line inside the text.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(c) => {
            assert!(c.worker_count() >= 1 && c.worker_count() <= 256);
        }
        Err(crate::config::ConfigError::Invalid { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {line}"
            );
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}
