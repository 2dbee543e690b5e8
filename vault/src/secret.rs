//! Secret types: passphrases, the BIP39 words, the seed, and bounded reading of a secret file.
//!
//! Every type here zeroizes its memory on drop and implements neither `Debug` nor `Display`,
//! so a secret cannot reach a log line by accident. Reading is bounded: a secret file larger
//! than [`MAX_SECRET_FILE`] is refused before it is read whole. Where a passphrase comes from
//! (a flag, the environment, a systemd credential, the terminal) is the CLI's choice, not this
//! module's.
//!
//! One limit: the `bip39` crate's own `Mnemonic` (word indices) does not zeroize. It lives only
//! inside [`Mnemonic::to_seed`] and the parse check, never longer than the call.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::Error;

/// Largest passphrase or words file read, in bytes.
pub const MAX_SECRET_FILE: u64 = 4096;

/// A passphrase: the vault's, or the optional BIP39 one. Never empty.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase; refuses an empty one.
    pub fn new(s: String) -> Result<Self, Error> {
        let s = Zeroizing::new(s);
        if s.is_empty() {
            return Err(Error::EmptyPassphrase);
        }
        Ok(Self(s))
    }

    /// The passphrase's UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The passphrase as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The 64-byte BIP39 seed (after PBKDF2 with the optional BIP39 passphrase).
pub struct Seed(Zeroizing<[u8; 64]>);

impl Seed {
    /// Wraps seed bytes.
    pub fn from_bytes(bytes: Zeroizing<[u8; 64]>) -> Self {
        Self(bytes)
    }

    /// The seed bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

/// A BIP39 English mnemonic, checked (word list and checksum).
pub struct Mnemonic {
    /// The words, lower-case, single-space separated.
    phrase: Zeroizing<String>,
}

/// Word counts BIP39 allows.
pub const WORD_COUNTS: [usize; 5] = [12, 15, 18, 21, 24];

impl Mnemonic {
    /// A new random mnemonic of `words` words (12, 15, 18, 21 or 24).
    pub fn generate(words: usize) -> Result<Self, Error> {
        if !WORD_COUNTS.contains(&words) {
            return Err(Error::WordCount { count: words });
        }
        // 11 bits per word, one checksum bit per 32 bits of entropy: 4 bytes per 3 words.
        let mut entropy = Zeroizing::new(vec![0u8; words / 3 * 4]);
        crate::random_bytes(&mut entropy)?;
        Self::from_entropy(&entropy)
    }

    /// The mnemonic encoding of 16..=32 bytes of entropy.
    pub fn from_entropy(entropy: &[u8]) -> Result<Self, Error> {
        let m =
            bip39::Mnemonic::from_entropy_in(bip39::Language::English, entropy).map_err(|_| {
                Error::WordCount {
                    count: entropy.len() * 3 / 4,
                }
            })?;
        let mut phrase = Zeroizing::new(String::with_capacity(24 * 9));
        for (i, w) in m.words().enumerate() {
            if i > 0 {
                phrase.push(' ');
            }
            phrase.push_str(w);
        }
        Ok(Self { phrase })
    }

    /// Parses words separated by any whitespace, in any letter case. Errors name a position,
    /// never a word.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut phrase = Zeroizing::new(String::with_capacity(text.len()));
        let mut count = 0usize;
        for w in text.split_whitespace() {
            if count > 0 {
                phrase.push(' ');
            }
            for c in w.chars() {
                phrase.extend(c.to_lowercase());
            }
            count += 1;
        }
        if !WORD_COUNTS.contains(&count) {
            return Err(Error::WordCount { count });
        }
        match bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &phrase) {
            Ok(_) => Ok(Self { phrase }),
            Err(bip39::Error::UnknownWord(i)) => Err(Error::UnknownWord { position: i + 1 }),
            Err(bip39::Error::BadWordCount(count)) => Err(Error::WordCount { count }),
            Err(_) => Err(Error::Checksum),
        }
    }

    /// The words in order.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.phrase.split(' ')
    }

    /// Number of words.
    pub fn word_count(&self) -> usize {
        self.words().count()
    }

    /// The 64-byte BIP39 seed, with the optional BIP39 passphrase ("" when `None`).
    pub fn to_seed(&self, bip39_passphrase: Option<&Passphrase>) -> Result<Seed, Error> {
        let m = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &self.phrase)
            .map_err(|_| Error::Checksum)?;
        let seed = Zeroizing::new(m.to_seed(bip39_passphrase.map_or("", Passphrase::as_str)));
        Ok(Seed(seed))
    }

    /// The words, lower-case, single-space separated (for writing them to a private file).
    pub fn phrase(&self) -> &str {
        &self.phrase
    }
}

/// See [`crate::fuzzing::fuzz_mnemonic`].
pub(crate) fn fuzz_mnemonic(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let count = text.split_whitespace().count();
    match Mnemonic::parse(text) {
        Ok(m) => {
            assert!(WORD_COUNTS.contains(&m.word_count()));
            assert_eq!(m.word_count(), count);
            let again = Mnemonic::parse(m.phrase())
                .unwrap_or_else(|e| panic!("a normalised phrase must parse: {e}"));
            assert_eq!(again.phrase(), m.phrase());
            assert!(
                m.words()
                    .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
            );
        }
        Err(Error::UnknownWord { position }) => {
            assert!(
                (1..=count).contains(&position),
                "position {position} of {count}"
            );
        }
        Err(Error::WordCount { count: c }) => assert_eq!(c, count),
        Err(Error::Checksum) => assert!(WORD_COUNTS.contains(&count)),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Reads a secret text file: bounded, UTF-8, one trailing newline (`\n` or `\r\n`) removed.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading", path, e))?;
    if buf.len() as u64 > MAX_SECRET_FILE {
        return Err(Error::FileTooLarge {
            path: path.to_owned(),
            size: buf.len() as u64,
            max: MAX_SECRET_FILE,
        });
    }
    let text = std::str::from_utf8(&buf).map_err(|_| Error::NotUtf8 {
        path: path.to_owned(),
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn bip39_official_english_vectors_with_trezor_passphrase() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("testdata/bip39_english_trezor.json")).unwrap();
        let english = v["english"].as_array().unwrap();
        assert_eq!(english.len(), 24);
        let trezor = Passphrase::new("TREZOR".into()).unwrap();
        for vector in english {
            let field = |i: usize| vector[i].as_str().unwrap();
            let (entropy, words, seed) = (field(0), field(1), field(2));
            let m = Mnemonic::from_entropy(&hex::decode(entropy).unwrap()).unwrap();
            assert_eq!(m.phrase(), words);
            let parsed = Mnemonic::parse(words).unwrap();
            assert_eq!(parsed.phrase(), words);
            let s = parsed.to_seed(Some(&trezor)).unwrap();
            assert_eq!(hex::encode(s.as_bytes()), seed);
        }
    }

    #[test]
    fn typo_names_the_position_not_the_word() {
        let text = "abandon abandon abandon abandon abandonn abandon abandon abandon abandon abandon abandon about";
        let err = Mnemonic::parse(text).err().unwrap();
        assert!(matches!(err, Error::UnknownWord { position: 5 }));
        assert!(!err.to_string().contains("abandon"));
        assert!(err.to_string().contains("word 5"));
    }

    #[test]
    fn checksum_error_when_words_are_swapped() {
        let text = "legal winner thank year wave sausage worth useful legal winner yellow thank";
        assert!(matches!(Mnemonic::parse(text), Err(Error::Checksum)));
    }

    #[test]
    fn parse_accepts_case_and_whitespace_variants() {
        let text =
            "  Legal WINNER thank\nyear wave sausage\tworth useful legal winner thank yellow\n";
        let m = Mnemonic::parse(text).unwrap();
        assert_eq!(m.word_count(), 12);
    }

    #[test]
    fn wrong_word_count() {
        assert!(matches!(
            Mnemonic::parse("abandon about"),
            Err(Error::WordCount { count: 2 })
        ));
        assert!(Mnemonic::generate(13).is_err());
        for n in WORD_COUNTS {
            let m = Mnemonic::generate(n).unwrap();
            assert_eq!(m.word_count(), n);
            Mnemonic::parse(m.phrase()).unwrap();
        }
    }

    #[test]
    fn secret_file_strips_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        std::fs::write(&p, "pass word\n\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap().as_str(), "pass word\n");
        std::fs::write(&p, "pass\r\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap().as_str(), "pass");
        std::fs::write(&p, vec![b'a'; 5000]).unwrap();
        assert!(matches!(
            read_secret_file(&p),
            Err(Error::FileTooLarge { .. })
        ));
        std::fs::write(&p, [0xffu8, 0xfe]).unwrap();
        assert!(matches!(read_secret_file(&p), Err(Error::NotUtf8 { .. })));
    }

    #[test]
    fn empty_passphrase_refused() {
        assert!(matches!(
            Passphrase::new(String::new()),
            Err(Error::EmptyPassphrase)
        ));
    }
}
