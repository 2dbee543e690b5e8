//! Crate-level tests: the vault on disk, corruption, parameter upgrades, `kill -9` during a
//! rewrite, storage blobs, the fuzz corpus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::*;

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_owned()).unwrap()
}

fn seed(byte: u8) -> Seed {
    Seed::from_bytes(Zeroizing::new([byte; 64]))
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn new_vault(dir: &Path, p: &str) -> UnlockedVault {
    create(dir, seed(0x42), &pass(p), KdfParams::insecure_for_tests()).unwrap()
}

#[test]
fn round_trip_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!vault_exists(dir.path()));
    let created = new_vault(dir.path(), "hunter2 hunter2");
    assert!(vault_exists(dir.path()));
    assert_eq!(vault_path(dir.path()), dir.path().join("vault.bin"));
    let opened = unlock(dir.path(), &pass("hunter2 hunter2")).unwrap();
    assert_eq!(*opened.node_identity_seed(), *created.node_identity_seed());
    assert_eq!(*opened.ssh_host_seed(), *created.ssh_host_seed());
    assert_eq!(*opened.storage_key(3), *created.storage_key(3));
    assert_ne!(*opened.node_identity_seed(), *opened.ssh_host_seed());
    assert_eq!(*opened.pkarr_seed(), *created.pkarr_seed());
    assert_ne!(*opened.pkarr_seed(), *opened.ssh_host_seed());
    assert_ne!(*opened.pkarr_seed(), *opened.node_identity_seed());
}

#[test]
fn create_refuses_to_replace_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    new_vault(dir.path(), "a");
    let err = create(
        dir.path(),
        seed(1),
        &pass("b"),
        KdfParams::insecure_for_tests(),
    );
    assert!(matches!(err, Err(Error::AlreadyExists { .. })));
    // The original is untouched.
    unlock(dir.path(), &pass("a")).unwrap();
}

#[test]
fn wrong_passphrase_reveals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    new_vault(dir.path(), "right");
    let err = unlock(dir.path(), &pass("wrong")).err().unwrap();
    assert!(matches!(err, Error::Authentication));
    let msg = err.to_string();
    assert!(!msg.contains("right"), "{msg}");
    // Same error whether the passphrase is wrong or the ciphertext was altered.
    let mut bytes = std::fs::read(vault_path(dir.path())).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(vault_path(dir.path()), &bytes).unwrap();
    let altered = unlock(dir.path(), &pass("right")).err().unwrap();
    assert_eq!(altered.to_string(), msg);
}

#[test]
fn missing_vault_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        unlock(dir.path(), &pass("x")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(inspect(dir.path()), Err(Error::NotFound { .. })));
}

#[test]
fn corrupted_files_error_never_panic_never_wrong_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let original = new_vault(dir.path(), "pw");
    let good = std::fs::read(vault_path(dir.path())).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..600 {
        let mut bytes = good.clone();
        match round % 3 {
            0 | 1 => {
                // 1..=4 random byte flips at random places.
                for _ in 0..=rng.below(4) {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 + rng.below(255) as u8;
                }
            }
            _ => {
                let n = rng.below(bytes.len());
                bytes.truncate(n);
            }
        }
        if bytes == good {
            continue;
        }
        std::fs::write(vault_path(dir.path()), &bytes).unwrap();
        if let Ok(f) = format::VaultFile::parse(&bytes) {
            // A flip that raised Argon2 costs parses; skip decrypting to keep the test fast
            // (the AAD makes it fail anyway, as format's exhaustive test shows).
            if f.kdf().memory_kib() > 1024 || f.kdf().iterations() > 4 {
                continue;
            }
        }
        match unlock(dir.path(), &pass("pw")) {
            Err(_) => {}
            Ok(v) => assert_eq!(
                *v.node_identity_seed(),
                *original.node_identity_seed(),
                "round {round}: corrupted file decrypted to a different seed"
            ),
        }
    }
}

#[test]
fn oversized_vault_file_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(vault_path(dir.path()), vec![b'A'; 70 * 1024]).unwrap();
    assert!(matches!(
        unlock(dir.path(), &pass("x")),
        Err(Error::FileTooLarge { .. })
    ));
}

#[test]
fn parameter_upgrade_keeps_the_seed_and_records_new_params() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(dir.path(), "old");
    let before = *v.node_identity_seed();
    assert!(inspect(dir.path()).unwrap().kdf.below_default());
    v.rewrite(dir.path(), &pass("new"), KdfParams::DEFAULT)
        .unwrap();
    assert_eq!(v.kdf(), KdfParams::DEFAULT);
    let info = inspect(dir.path()).unwrap();
    assert_eq!(info.kdf, KdfParams::DEFAULT);
    assert!(!info.kdf.below_default());
    assert_eq!(info.mode, 0o600);
    assert!(matches!(
        unlock(dir.path(), &pass("old")),
        Err(Error::Authentication)
    ));
    let reopened = unlock(dir.path(), &pass("new")).unwrap();
    assert_eq!(*reopened.node_identity_seed(), before);
    assert_eq!(reopened.kdf(), KdfParams::DEFAULT);
}

#[test]
fn fingerprint_format_matches_slip10_vector() {
    // SLIP-0010 ed25519 vector 1, chain m.
    let sk: [u8; 32] =
        hex::decode("2b4be7f19ee27bbf30c667b642d5f4aa69fd169872f8fc3059c08ebae2eb19e7")
            .unwrap()
            .try_into()
            .unwrap();
    assert_eq!(
        fingerprint_of_seed(&sk),
        "ed25519:a4b2856bfec510abab89753fac1ac0e1112364e7d250545963f135f2a33188ed"
    );
}

#[test]
fn known_mnemonic_gives_stable_node_fingerprint() {
    // The derivation is part of the on-paper contract: this value must never change.
    let m = Mnemonic::parse(
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v = create(
        dir.path(),
        m.to_seed(None).unwrap(),
        &pass("p"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    let node = fingerprint_of_seed(&v.node_identity_seed());
    let again = slip10::derive(m.to_seed(None).unwrap().as_bytes(), &[74, 0, 0, 0]);
    assert_eq!(node, fingerprint_of_seed(&again));
    assert!(node.starts_with("ed25519:") && node.len() == 8 + 64);
}

#[test]
fn storage_blobs_round_trip_and_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(dir.path(), "p");
    let b0 = v.seal_blob(0, b"peer/alice", b"token-0").unwrap();
    let b1 = v.seal_blob(1, b"peer/alice", b"token-1").unwrap();
    assert_eq!(blob::key_version_of(&b0).unwrap(), 0);
    assert_eq!(blob::key_version_of(&b1).unwrap(), 1);
    let (ver, plain) = v.open_blob(b"peer/alice", &b0).unwrap();
    assert_eq!((ver, plain.as_slice()), (0, &b"token-0"[..]));
    let (ver, plain) = v.open_blob(b"peer/alice", &b1).unwrap();
    assert_eq!((ver, plain.as_slice()), (1, &b"token-1"[..]));
    // Bound to its record.
    assert!(matches!(
        v.open_blob(b"peer/bob", &b0),
        Err(Error::Authentication)
    ));
    // Relabelling the key version breaks it.
    let mut relabelled = b0.clone();
    relabelled[13] = 1; // the low byte of the key version, after magic, format and source
    assert_eq!(blob::key_version_of(&relabelled).unwrap(), 1);
    assert!(matches!(
        v.open_blob(b"peer/alice", &relabelled),
        Err(Error::Authentication)
    ));
    // Another vault cannot open it.
    let dir2 = tempfile::tempdir().unwrap();
    let other = create(
        dir2.path(),
        seed(9),
        &pass("p"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    assert!(matches!(
        other.open_blob(b"peer/alice", &b0),
        Err(Error::Authentication)
    ));
    // Truncations are errors, not panics.
    for n in 0..b0.len() {
        assert!(v.open_blob(b"peer/alice", &b0[..n]).is_err());
    }
    assert!(v.seal_blob(blob::MAX_KEY_VERSION + 1, b"", b"x").is_err());
}

const KILL_CHILD_ENV: &str = "ALKNET_VAULT_TEST_KILL_CHILD_DIR";

/// Not a test on its own: the child process of `kill_9_during_rewrite_leaves_old_or_new_file`.
/// Without the environment variable it returns at once.
#[test]
fn kill_child_rewrites_forever() {
    let Some(dir) = std::env::var_os(KILL_CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let (a, b) = (pass("passphrase A"), pass("passphrase B"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (mut v, next) = match unlock(dir, &a) {
            Ok(v) => (v, &b),
            Err(_) => (unlock(dir, &b).unwrap(), &a),
        };
        v.rewrite(dir, next, KdfParams::insecure_for_tests())
            .unwrap();
    }
}

#[test]
fn kill_9_during_rewrite_leaves_old_or_new_file() {
    if std::env::var_os(KILL_CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let expected = *new_vault(dir.path(), "passphrase A").node_identity_seed();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut versions_seen = std::collections::HashSet::new();
    let started = Instant::now();
    let mut kills = 0;
    while kills < 40 && started.elapsed() < Duration::from_secs(60) {
        let mut child = Command::new(&exe)
            .args([
                "tests::kill_child_rewrites_forever",
                "--exact",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rng.below(60) as u64));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        kills += 1;

        let bytes = std::fs::read(vault_path(dir.path())).unwrap();
        let file = format::VaultFile::parse(&bytes).expect("vault file torn by kill -9");
        let opened = file
            .open(&pass("passphrase A"))
            .or_else(|_| file.open(&pass("passphrase B")))
            .expect("vault file decrypts with neither the old nor the new passphrase");
        let v = UnlockedVault {
            seed: opened,
            kdf: file.kdf(),
        };
        assert_eq!(*v.node_identity_seed(), expected);
        versions_seen.insert(bytes);
    }
    assert!(kills >= 10, "only {kills} kills in the time budget");
    assert!(
        versions_seen.len() > 1,
        "the child never completed a rewrite"
    );
    // The next write cleans up temporary files left by killed writers.
    let mut v = unlock(dir.path(), &pass("passphrase A"))
        .or_else(|_| unlock(dir.path(), &pass("passphrase B")))
        .unwrap();
    v.rewrite(
        dir.path(),
        &pass("passphrase A"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(VAULT_FILE_NAME)]);
}

fn corpus(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Feeds every file of `fuzz/corpus/<target>/` to `fuzz`; fails on a missing or empty
/// directory, so a corpus cannot silently vanish from the suite.
fn replay(target: &str, fuzz: fn(&[u8])) -> usize {
    let dir = corpus(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fuzz(&std::fs::read(path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "empty fuzz corpus at {}", dir.display());
    n
}

#[test]
fn fuzz_corpus_replays() {
    assert!(replay("vault_file", fuzzing::fuzz_vault_file) >= 5);
    assert!(replay("blob", fuzzing::fuzz_blob) >= 4);
    assert!(replay("mnemonic", fuzzing::fuzz_mnemonic) >= 8);
}

/// The committed fuzz seeds: every kind named here must be in the corpus, and each freshly
/// generated instance must go through the fuzz entry point. With
/// `ALKNET_WRITE_FUZZ_SEEDS=1` the files are (re)written.
#[test]
fn fuzz_seeds_are_committed() {
    let corpus = corpus("vault_file");
    let regenerate = std::env::var_os("ALKNET_WRITE_FUZZ_SEEDS").is_some();
    let weak = format::VaultFile::seal(&seed(7), &pass("fuzz"), KdfParams::insecure_for_tests())
        .unwrap()
        .encode();
    let strong = format::VaultFile::seal(&seed(7), &pass("fuzz"), KdfParams::DEFAULT)
        .unwrap()
        .encode();
    let write = |name: &str, data: &[u8]| {
        fuzzing::fuzz_vault_file(data);
        if regenerate {
            std::fs::write(corpus.join(name), data).unwrap();
        }
        assert!(corpus.join(name).is_file(), "seed {name} is not committed");
    };
    write("valid_weak_params.bin", &weak);
    write("valid_default_params.bin", &strong);
    write("truncated_in_salt.bin", &weak[..30]);
    write("truncated_in_ciphertext.bin", &weak[..weak.len() - 5]);
    let mut trailing = weak.clone();
    trailing.push(0);
    write("trailing_byte.bin", &trailing);
    let mut huge = weak.clone();
    huge[11..15].copy_from_slice(&u32::MAX.to_be_bytes());
    write("memory_above_bound.bin", &huge);
    let mut v2 = weak.clone();
    v2[8] = 2;
    write("format_version_2.bin", &v2);
    write("magic_only.bin", b"ALKVAULT");
    write("empty.bin", b"");
}

/// The committed blob seeds, as `fuzz_seeds_are_committed` does for vault files. With
/// `ALKNET_WRITE_FUZZ_SEEDS=1` the files are (re)written.
#[test]
fn blob_fuzz_seeds_are_committed() {
    let corpus = corpus("blob");
    let regenerate = std::env::var_os("ALKNET_WRITE_FUZZ_SEEDS").is_some();
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(dir.path(), "p");
    let sealed = v.seal_blob(3, b"peer/alice", b"token").unwrap();
    let write = |name: &str, data: &[u8]| {
        fuzzing::fuzz_blob(data);
        if regenerate {
            std::fs::create_dir_all(&corpus).unwrap();
            std::fs::write(corpus.join(name), data).unwrap();
        }
        assert!(corpus.join(name).is_file(), "seed {name} is not committed");
    };
    write("format-2-key-version-3", &sealed);
    write("format-2-truncated-in-nonce", &sealed[..20]);
    let mut v0 = sealed.clone();
    v0[8] = 0;
    write("format-2-version-0", &v0);
    let mut high = sealed.clone();
    high[10] = 0x80;
    write("format-2-key-version-above-2-31", &high);
    write(
        "format-1-key-version-1",
        &hex::decode(
            "0100000001000102030405060708090a0b678cdd76158e04ec8647530b8f770e043f12f729db3709",
        )
        .unwrap(),
    );
    write(
        "format-1-header-only",
        &[1, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    );
    write("magic-only", b"ALKCREDS");
    write("empty", b"");
}
