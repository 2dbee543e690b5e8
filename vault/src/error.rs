//! The one error type of the vault crate.
//!
//! Messages are short, lower-case and end with what to do. None of them ever carries a
//! word of the mnemonic, a passphrase or key material: a variant holds positions, counts,
//! paths and limits only.

use std::path::PathBuf;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No vault file exists in the data directory.
    #[error("no vault at {path}; create one with `alknet vault init` or `alknet vault restore`")]
    NotFound {
        /// The vault file that was looked for.
        path: PathBuf,
    },

    /// A vault file already exists where a new one would be written.
    #[error(
        "a vault already exists at {path}; move it away first if you really mean to replace it"
    )]
    AlreadyExists {
        /// The existing vault file.
        path: PathBuf,
    },

    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", …).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The vault file is larger than any vault this crate writes.
    #[error("{path} is {size} bytes, more than the {max} a vault may have; it is not a vault file")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The largest size accepted.
        max: u64,
    },

    /// The vault file does not follow the format: it is damaged or not a vault.
    #[error("the vault file is malformed ({reason}); restore it from a backup or from the words")]
    Malformed {
        /// Which rule the file broke.
        reason: &'static str,
    },

    /// The vault file was written by a newer Alknet.
    #[error(
        "the vault file has format version {found}, this build reads up to {supported}; upgrade alknet"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u8,
        /// Highest version this build reads.
        supported: u8,
    },

    /// A key-derivation parameter in the file or on the command line is out of bounds.
    #[error("argon2id {name} = {value} is outside {min}..={max}")]
    KdfParamOutOfRange {
        /// The parameter ("memory (KiB)", "iterations", "parallelism").
        name: &'static str,
        /// The value found.
        value: u32,
        /// Lowest accepted value.
        min: u32,
        /// Highest accepted value.
        max: u32,
    },

    /// Authenticated decryption failed: wrong passphrase, or the file was altered.
    ///
    /// The two cases are deliberately indistinguishable.
    #[error(
        "wrong passphrase, or the vault file was altered; try again, or restore from the words"
    )]
    Authentication,

    /// A passphrase was empty.
    #[error("the passphrase is empty; choose a non-empty passphrase")]
    EmptyPassphrase,

    /// A passphrase or words file is not valid UTF-8 text.
    #[error("{path} is not UTF-8 text; write the secret as plain text")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },

    /// The number of words is not one BIP39 allows.
    #[error("{count} words given; a BIP39 mnemonic has 12, 15, 18, 21 or 24 words")]
    WordCount {
        /// How many words were given.
        count: usize,
    },

    /// A word is not in the BIP39 English word list.
    #[error(
        "word {position} is not in the BIP39 English word list; check its spelling on your paper"
    )]
    UnknownWord {
        /// 1-based position of the word.
        position: usize,
    },

    /// All words are valid but their checksum does not match.
    #[error(
        "the words fail the BIP39 checksum: one is wrong or two are swapped; compare them with \
         your paper in order"
    )]
    Checksum,

    /// The operating system's random generator failed.
    #[error("the system random generator failed: {0}")]
    Random(String),

    /// An encrypted storage blob could not be opened.
    #[error("encrypted blob is malformed ({reason})")]
    BlobMalformed {
        /// Which rule the blob broke.
        reason: &'static str,
    },
}

impl Error {
    /// An [`Error::Io`] for `action` on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
