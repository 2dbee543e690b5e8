//! `alknet backup` while peers are added through the control socket, then `alknet restore`
//! into a new data directory: every acknowledged write before the backup began is present.

use crate::support::*;
use alknet_core::ops::admin::AdminOp;
use alknet_core::ops::control::{self, Request};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn backup_under_write_load_restores_every_acknowledged_write() {
    let server = Server::start("workers = 1\n");
    let data = server.data_dir();
    let add = |i: usize| {
        let key = ClientKey::generate().unwrap();
        control::request(
            &data,
            &Request::Admin {
                admin: AdminOp::PeerAdd {
                    id: format!("p{i}"),
                    fingerprints: vec![key.fingerprint.clone()],
                    scopes: vec!["echo".into()],
                    resources: Vec::new(),
                    display_name: None,
                },
            },
        )
        .is_ok()
    };
    for i in 0..20 {
        assert!(add(i));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 20;
            while !stop.load(Ordering::Relaxed) {
                let key = ClientKey::generate().unwrap();
                let ok = control::request(
                    &data,
                    &Request::Admin {
                        admin: AdminOp::PeerAdd {
                            id: format!("p{i}"),
                            fingerprints: vec![key.fingerprint.clone()],
                            scopes: vec!["echo".into()],
                            resources: Vec::new(),
                            display_name: None,
                        },
                    },
                )
                .is_ok();
                if ok {
                    acked.push((i, std::time::Instant::now()));
                }
                i += 1;
            }
            acked
        })
    };
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("alknet.backup");
    let started = std::time::Instant::now();
    let (code, text, err) = run_cli(&["backup", "--out", out.to_str().unwrap()], &data, b"");
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("backup written to"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let fresh = tempfile::tempdir().unwrap();
    let restored = fresh.path().join("data");
    let (code, text, err) = run_cli(&["restore", out.to_str().unwrap()], &restored, b"");
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("store restored to"), "{text}");
    // A second restore over it is refused without --force.
    let (code, _, err) = run_cli(&["restore", out.to_str().unwrap()], &restored, b"");
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    // Restoring into the running server's directory is refused.
    let (code, _, err) = run_cli(&["restore", out.to_str().unwrap(), "--force"], &data, b"");
    assert_ne!(code, 0);
    assert!(err.contains("stop it first"), "{err}");

    let (code, list, err) = run_cli(&["peer", "list", "--json"], &restored, b"");
    assert_eq!(code, 0, "{err}");
    for i in 0..20 {
        assert!(list.contains(&format!("\"p{i}\"")), "p{i} missing: {list}");
    }
    // Every write acknowledged before the backup began is in it.
    for (i, at) in &acked {
        if *at < started {
            assert!(
                list.contains(&format!("\"p{i}\"")),
                "acknowledged p{i} missing"
            );
        }
    }
}
