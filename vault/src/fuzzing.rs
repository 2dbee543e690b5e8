//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests
//! (`src/tests.rs`): one `fuzz_<target>` per target, never a panic, an oracle asserted. None
//! runs Argon2 (a fuzzer would spend its time there).

use crate::format::{KdfParams, MAX_FILE_SIZE, VaultFile};

/// Parses arbitrary bytes as a vault file. Oracles: never panics; a parsed file re-encodes
/// to exactly the input; its Argon2 parameters are within the crate's bounds.
pub fn fuzz_vault_file(data: &[u8]) {
    if let Ok(file) = VaultFile::parse(data) {
        assert!(data.len() as u64 <= MAX_FILE_SIZE);
        assert_eq!(
            file.encode(),
            data,
            "parsed vault file must re-encode to its input"
        );
        let kdf = file.kdf();
        assert!(kdf.memory_kib() <= KdfParams::MAX_MEMORY_KIB);
        assert!(kdf.iterations() <= KdfParams::MAX_ITERATIONS);
        assert!(kdf.parallelism() <= KdfParams::MAX_PARALLELISM);
    }
}

/// Parses arbitrary bytes as a credential-store blob (format 1 or 2) and opens it with a
/// fixed key. Oracles: never panics; a parsed blob names a key version below 2^31; a format-2
/// blob re-encodes to exactly the input.
pub fn fuzz_blob(data: &[u8]) {
    crate::blob::fuzz(data);
}

/// Arbitrary bytes as the words a user types or puts in a `--words-file`. Oracles: never
/// panics; the error names a position inside the input, never a word; a mnemonic that
/// parses has a BIP39 word count and re-parses from its normalised phrase to the same words.
pub fn fuzz_mnemonic(data: &[u8]) {
    crate::secret::fuzz_mnemonic(data);
}
