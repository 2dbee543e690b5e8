//! The redb store under crashes and damage: a child process mutating the store is killed
//! with SIGKILL at random moments, and the file is corrupted at random; every acknowledged
//! mutation must survive, nothing partial may show, and damage must be an error, never a
//! panic or a silently different record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_core::identity::store::{Mutation, RedbStore, STORE_FILE};
use alknet_core::identity::{
    CredentialStore, EncryptedBlob, IdentityProvider, IdentityStore, PeerEntry,
};
use alknet_proto::Fingerprint;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn peer(i: u64) -> PeerEntry {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&i.to_le_bytes());
    key[31] = 1;
    PeerEntry {
        peer_id: format!("p{i}"),
        fingerprints: vec![Fingerprint::from_key(key)],
        auth_token_hash: None,
        scopes: vec!["echo".into(), format!("s{}", i % 7)],
        resources: vec![],
        display_name: Some(format!("peer number {i}")),
        ssh_keys: Vec::new(),
        enabled: i % 3 != 0,
    }
}

fn blob(i: u64) -> EncryptedBlob {
    EncryptedBlob {
        key_version: (i % 5) as u32,
        salt: vec![i as u8; 16],
        iv: vec![7; 12],
        data: vec![(i * 31) as u8; 48 + (i % 17) as usize],
    }
}

/// Operation `i`: every fourth revokes the peer (and its credential) added just before;
/// the others add a peer and a credential in one transaction.
fn op(i: u64) -> Vec<Mutation> {
    if i % 4 == 3 {
        vec![
            Mutation::RemovePeer(format!("p{}", i - 1)),
            Mutation::DeleteCredential(format!("c{}", i - 1)),
        ]
    } else {
        vec![
            Mutation::PutPeer(peer(i)),
            Mutation::PutCredential(format!("c{i}"), blob(i)),
        ]
    }
}

type Model = (BTreeMap<String, PeerEntry>, BTreeMap<String, EncryptedBlob>);

/// The state after operations `0..n`.
fn model_after(n: u64) -> Model {
    let mut peers = BTreeMap::new();
    let mut creds = BTreeMap::new();
    for i in 0..n {
        for m in op(i) {
            match m {
                Mutation::PutPeer(p) => {
                    peers.insert(p.peer_id.clone(), p);
                }
                Mutation::RemovePeer(id) => {
                    peers.remove(&id);
                }
                Mutation::PutCredential(k, b) => {
                    creds.insert(k, b);
                }
                Mutation::DeleteCredential(k) => {
                    creds.remove(&k);
                }
                _ => {}
            }
        }
    }
    (peers, creds)
}

fn read_state(store: &RedbStore) -> Model {
    let peers = store
        .list_peers()
        .unwrap()
        .iter()
        .map(|p| (p.peer_id.clone(), (**p).clone()))
        .collect();
    let creds = store
        .credential_names()
        .into_iter()
        .map(|k| {
            let b = store.get_credential(&k).unwrap().unwrap();
            (k, b)
        })
        .collect();
    (peers, creds)
}

const CHILD_ENV: &str = "ALKNET_STORE_CHILD_DIR";

/// The child: applies operations from `ALKNET_STORE_CHILD_START` on, printing `ack N` after
/// each commit returns. Does nothing when not started as the child.
#[test]
fn store_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let start: u64 = std::env::var("ALKNET_STORE_CHILD_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let store = RedbStore::open(&Path::new(&dir).join(STORE_FILE)).unwrap();
    println!("ready");
    for i in start..start + 10_000 {
        store.apply(op(i)).unwrap();
        println!("ack {i}");
    }
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_mutation() {
    let iterations: u64 = std::env::var("ALKNET_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Lcg(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64);
    let mut applied: u64 = 0;
    let mut total_acks = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    for iteration in 0..iterations {
        assert!(
            Instant::now() < deadline,
            "crash test exceeded its time budget"
        );
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("ALKNET_STORE_CHILD_START", applied.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ") {
                    let _ = tx.send(n.parse::<u64>().unwrap());
                }
            }
        });
        // Kill at a random moment: from before the store is open to dozens of commits in.
        // The pause is the crash point under test, not a wait for anything.
        std::thread::sleep(Duration::from_micros(2_000 + rng.next(40_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let last_ack = rx.try_iter().last();
        total_acks += last_ack.map_or(0, |a| a + 1 - applied);

        let store = RedbStore::open(&dir.path().join(STORE_FILE))
            .unwrap_or_else(|e| panic!("iteration {iteration}: store did not reopen: {e}"));
        let state = read_state(&store);
        let acked = last_ack.map_or(applied, |a| a + 1);
        // Everything acknowledged is there; the one in flight may or may not be; nothing
        // after it; and no operation is half applied.
        if state == model_after(acked) {
            applied = acked;
        } else if state == model_after(acked + 1) {
            applied = acked + 1;
        } else {
            panic!(
                "iteration {iteration}: state matches neither {acked} nor {} operations ({} peers)",
                acked + 1,
                state.0.len()
            );
        }
        // Revoked peers stay gone.
        for i in (3..applied).step_by(4) {
            let gone = format!("p{}", i - 1);
            assert!(!state.0.contains_key(&gone), "revoked {gone} came back");
            assert!(
                store
                    .by_fingerprint(&peer(i - 1).fingerprints[0])
                    .unwrap()
                    .is_none()
            );
        }
        drop(store);
    }
    assert!(
        total_acks > iterations / 2,
        "children acknowledged only {total_acks} commits"
    );
    assert!(applied > 0);
}

#[test]
fn corruption_is_an_error_never_a_panic_or_a_wrong_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    {
        let store = RedbStore::open(&path).unwrap();
        for i in 0..40 {
            store.apply(op(i)).unwrap();
        }
    }
    let pristine = std::fs::read(&path).unwrap();
    let original = model_after(40);
    let mut rng = Lcg(0x5eed);
    let (mut errors, mut opened) = (0, 0);
    for round in 0..300 {
        let mut bytes = pristine.clone();
        if round % 4 == 0 {
            let len = rng.next(bytes.len() as u64) as usize;
            bytes.truncate(len);
        } else {
            for _ in 0..=rng.next(8) {
                let at = rng.next(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.next(8);
            }
        }
        let target = dir.path().join(format!("damaged-{round}.redb"));
        std::fs::write(&target, &bytes).unwrap();
        match RedbStore::open(&target) {
            Err(e) => {
                errors += 1;
                assert!(
                    e.to_string().contains("damaged-"),
                    "error does not name the file: {e}"
                );
            }
            Ok(store) => {
                opened += 1;
                let (peers, creds) = read_state(&store);
                for (id, p) in &peers {
                    assert_eq!(
                        original.0.get(id),
                        Some(p),
                        "round {round}: altered peer {id}"
                    );
                }
                for (k, b) in &creds {
                    assert_eq!(
                        original.1.get(k),
                        Some(b),
                        "round {round}: altered credential {k}"
                    );
                }
            }
        }
        let _ = std::fs::remove_file(&target);
    }
    assert!(errors > 0, "no damage was ever detected ({opened} opened)");
}

const FULL_DISK_ENV: &str = "ALKNET_STORE_FULL_DISK_DIR";

/// The child of the full-disk test: commits until the file-size limit makes a commit fail,
/// then checks the store's reaction and prints `verdict ok`. Does nothing otherwise.
#[test]
fn store_full_disk_child() {
    let Ok(dir) = std::env::var(FULL_DISK_ENV) else {
        return;
    };
    let store = RedbStore::open(&Path::new(&dir).join(STORE_FILE)).unwrap();
    let mut committed = 0u64;
    let mut failure = None;
    for i in 0..10_000u64 {
        let big = EncryptedBlob {
            key_version: 1,
            salt: vec![1; 16],
            iv: vec![2; 12],
            data: vec![(i % 251) as u8; 256 * 1024],
        };
        match store.apply(vec![
            Mutation::PutPeer(peer(i)),
            Mutation::PutCredential(format!("c{i}"), big),
        ]) {
            Ok(()) => committed += 1,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("the file-size limit never stopped a commit");
    assert!(committed > 0, "the very first commit failed: {failure}");
    println!("failed after {committed} commits: {failure}");
    assert!(
        store.is_read_only(),
        "a failed commit left the store writable"
    );
    let again = store.put_peer(peer(999_999)).unwrap_err().to_string();
    assert!(again.contains("refuses writes"), "{again}");
    // Reads go on from the last committed state.
    assert_eq!(store.peer_count() as u64, committed);
    assert!(
        store
            .by_fingerprint(&peer(0).fingerprints[0])
            .unwrap()
            .is_some()
    );
    println!("verdict ok");
}

#[test]
fn a_failed_commit_makes_the_store_read_only_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // The child runs with a 64 MiB file-size limit and SIGXFSZ ignored, so writes past it
    // fail with EFBIG inside redb's commit.
    let script = format!(
        "trap '' XFSZ; ulimit -f 65536; exec '{}' --exact store_full_disk_child --nocapture --test-threads=1",
        exe.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .env(FULL_DISK_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verdict ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reopened (without the limit), the store holds every commit acknowledged before the
    // failure and accepts writes again.
    let store = RedbStore::open(&dir.path().join(STORE_FILE)).unwrap();
    assert!(store.peer_count() > 0);
    store.put_peer(peer(424_242)).unwrap();
}
