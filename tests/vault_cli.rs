//! `alknet vault` end to end, through the real binary: a vault restored from the words of
//! another gives the same fingerprints, and no word or passphrase leaks into output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `alknet vault --data-dir <dir> <args…>` with no terminal and a clean environment.
fn vault(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alknet"))
        .arg("vault")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("ALKNET_VAULT_PASSPHRASE_FILE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("ALKNET_DATA_DIR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Like `ok`, but returns stdout and stderr together, for leak checks.
fn ok_all(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut all = ok(out, what);
    all.push_str(&stderr);
    all
}

fn fail(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} unexpectedly succeeded");
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    all
}

fn fingerprints(dir: &Path, passphrase_file: &Path) -> (String, String) {
    let out = ok(
        vault(
            dir,
            &[
                "show-fingerprints",
                "--json",
                "--passphrase-file",
                passphrase_file.to_str().unwrap(),
            ],
        ),
        "show-fingerprints",
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let node = v["node"].as_str().unwrap().to_owned();
    let ssh = v["ssh_host"].as_str().unwrap().to_owned();
    assert!(
        node.starts_with("ed25519:") && node.len() == 8 + 64,
        "{node}"
    );
    assert_ne!(node, ssh);
    (node, ssh)
}

fn assert_no_secret(text: &str, words: &[String], passphrases: &[&str]) {
    // Output prose may use a word that is also in the BIP39 list ("vault", "paper"), so a few
    // coincidences are tolerated; a leak of the mnemonic shows as many words or as neighbours.
    let tokens: std::collections::HashSet<&str> =
        text.split(|c: char| !c.is_ascii_alphabetic()).collect();
    let found = words.iter().filter(|w| tokens.contains(w.as_str())).count();
    assert!(found <= 3, "{found} mnemonic words in output:\n{text}");
    for pair in words.windows(2) {
        let joined = format!("{} {}", pair[0], pair[1]);
        assert!(
            !text.contains(&joined),
            "consecutive mnemonic words in output:\n{text}"
        );
    }
    for p in passphrases {
        assert!(
            !text.contains(p),
            "a passphrase leaked into output:\n{text}"
        );
    }
}

#[test]
fn restore_on_second_data_dir_gives_same_fingerprints() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("one"), tmp.path().join("two"));
    let (p1, p2, p3) = (
        tmp.path().join("p1"),
        tmp.path().join("p2"),
        tmp.path().join("p3"),
    );
    std::fs::write(&p1, "first vault passphrase\n").unwrap();
    std::fs::write(&p2, "second vault passphrase\n").unwrap();
    std::fs::write(&p3, "third vault passphrase\n").unwrap();
    let words_file = tmp.path().join("words");
    let secrets = [
        "first vault passphrase",
        "second vault passphrase",
        "third vault passphrase",
    ];

    // Without a terminal, init refuses to skip the confirmation silently.
    let refused = fail(
        vault(&d1, &["init", "--passphrase-file", p1.to_str().unwrap()]),
        "init",
    );
    assert!(refused.contains("--yes"), "{refused}");

    let init_out = ok_all(
        vault(
            &d1,
            &[
                "init",
                "--words-out",
                words_file.to_str().unwrap(),
                "--yes",
                "--passphrase-file",
                p1.to_str().unwrap(),
            ],
        ),
        "init",
    );
    let mode = std::fs::metadata(&words_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let words: Vec<String> = std::fs::read_to_string(&words_file)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(words.len(), 24);
    assert_no_secret(&init_out, &words, &secrets);
    let vault_mode = std::fs::metadata(d1.join("vault.bin"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(vault_mode, 0o600);

    let restore_out = ok_all(
        vault(
            &d2,
            &[
                "restore",
                "--words-file",
                words_file.to_str().unwrap(),
                "--passphrase-file",
                p2.to_str().unwrap(),
            ],
        ),
        "restore",
    );
    assert_no_secret(&restore_out, &words, &secrets);

    let first = fingerprints(&d1, &p1);
    let second = fingerprints(&d2, &p2);
    assert_eq!(first, second, "restored vault derives other keys");
    // `alknet id`, which `serve` and `connect` share, reads the vault on both data dirs.
    let id = |dir: &Path, pass: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_alknet"))
            .args(["id", "--data-dir"])
            .arg(dir)
            .arg("--passphrase-file")
            .arg(pass)
            .env_remove("ALKNET_VAULT_PASSPHRASE_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(id(&d1, &p1), first.0);
    assert_eq!(id(&d2, &p2), first.0);
    assert!(
        !d1.join("node.key").exists(),
        "a plain key was made beside the vault"
    );
    assert!(
        init_out.contains(&first.0),
        "init prints the node fingerprint"
    );
    assert!(
        restore_out.contains(&first.0),
        "restore prints the node fingerprint"
    );

    // A wrong passphrase is refused without detail.
    let wrong = fail(
        vault(
            &d2,
            &[
                "show-fingerprints",
                "--passphrase-file",
                p1.to_str().unwrap(),
            ],
        ),
        "show-fingerprints with the wrong passphrase",
    );
    assert!(wrong.contains("wrong passphrase"), "{wrong}");
    assert_no_secret(&wrong, &words, &secrets);

    // Changing the passphrase keeps the keys.
    ok(
        vault(
            &d2,
            &[
                "change-passphrase",
                "--passphrase-file",
                p2.to_str().unwrap(),
                "--new-passphrase-file",
                p3.to_str().unwrap(),
            ],
        ),
        "change-passphrase",
    );
    assert_eq!(fingerprints(&d2, &p3), first);
    fail(
        vault(
            &d2,
            &[
                "show-fingerprints",
                "--passphrase-file",
                p2.to_str().unwrap(),
            ],
        ),
        "old passphrase after change",
    );

    // Status needs no passphrase and shows the production parameters.
    let status = ok(vault(&d1, &["status", "--json"]), "status");
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(v["exists"], true);
    assert_eq!(v["kdf"]["memory_kib"], 65536);
    assert_eq!(v["kdf"]["iterations"], 3);
    assert_eq!(v["kdf"]["below_default"], false);
    let empty = ok(
        vault(&tmp.path().join("none"), &["status"]),
        "status without vault",
    );
    assert!(empty.contains("no vault"), "{empty}");

    // A vault is never replaced by init or restore.
    let again = fail(
        vault(
            &d1,
            &[
                "restore",
                "--words-file",
                words_file.to_str().unwrap(),
                "--passphrase-file",
                p1.to_str().unwrap(),
            ],
        ),
        "restore over an existing vault",
    );
    assert!(again.contains("already exists"), "{again}");
}

#[test]
fn restore_names_the_mistyped_word_by_position_only() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("p");
    std::fs::write(&pass, "some passphrase").unwrap();
    let words_file = tmp.path().join("words");
    let mut words: Vec<String> =
        "legal winner thank year wave sausage worth useful legal winner thank yellow"
            .split(' ')
            .map(str::to_owned)
            .collect();
    words[6] = "wurth".into();
    std::fs::write(&words_file, words.join(" ")).unwrap();
    let args = [
        "restore",
        "--words-file",
        words_file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ];

    let err = fail(vault(&tmp.path().join("d"), &args), "restore with a typo");
    assert!(err.contains("word 7"), "{err}");
    assert_no_secret(&err, &words, &["some passphrase"]);

    // Two valid words swapped: the checksum catches it.
    words[6] = "worth".into();
    words.swap(10, 11);
    std::fs::write(&words_file, words.join(" ")).unwrap();
    let err = fail(
        vault(&tmp.path().join("d"), &args),
        "restore with swapped words",
    );
    assert!(err.contains("checksum"), "{err}");
    assert!(!tmp.path().join("d").join("vault.bin").exists());
}
