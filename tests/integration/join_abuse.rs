//! Refused invites are failed authentications in every respect: besides the log line
//! fail2ban matches, they move the `auth_failures` counters and count against the
//! source's penalty, so a source trying forged codes is dropped before its next handshake
//! like one presenting unknown keys.

use crate::support::{ALKNET, Server, run_cli, wait_for};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_forged_joins_get_the_source_penalised() {
    // Three failures a minute are free; the fourth starts a penalty.
    let server = Server::start("workers = 2\n[admission]\nfailures_before_penalty = 3\n");
    // The gateway's real key and address with a secret it never made, in a code whose
    // checksum is right.
    let forged = alknet_proto::join::encode_invite(&alknet_proto::join::Invite {
        fingerprint: server.fingerprint.parse().expect("fingerprint"),
        secret: [0x5a; 16],
        addresses: vec![alknet_proto::join::InviteAddress::Ip(server.addr)],
    })
    .expect("code");
    let device = tempfile::tempdir().expect("tempdir");
    let before = server.counter("auth_failures");
    for attempt in 1..=4u64 {
        let (c, _, err) = run_cli(&["join", &forged, "--as", "gw"], device.path(), b"");
        assert_ne!(c, 0, "a forged code was accepted");
        assert!(
            err.contains("knows no such invite"),
            "attempt {attempt}: {err}"
        );
        // The handler reports after it answered: wait for the count, not for time.
        wait_for(Duration::from_secs(10), "the refusal counted", || {
            server.counter("auth_failures") >= before + attempt
        })
        .await;
        assert_eq!(server.counter("auth_invite"), attempt);
    }
    let log = std::fs::read_to_string(&server.stderr_path).unwrap_or_default();
    assert!(
        log.contains("source penalised after repeated authentication failures"),
        "{log}"
    );

    // The next attempt from the same source is dropped before any TLS work: its Initials
    // are counted as ignored for the penalty and it never gets an answer.
    let dropped = server.counter("dropped_penalty");
    let mut child = Command::new(ALKNET)
        .args(["join", &forged, "--as", "gw", "--data-dir"])
        .arg(device.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn alknet join");
    wait_for(
        Duration::from_secs(10),
        "the penalised Initial dropped",
        || server.counter("dropped_penalty") > dropped,
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        server.counter("auth_invite"),
        4,
        "a penalised source reached the join service"
    );
}
