//! The entry point shared by the `sftp` cargo-fuzz target and the corpus replay test
//! (`tests/corpus.rs`): arbitrary bytes as a client's stream into [`super::serve`].

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Feeds `data` as everything a client sends to a session rooted at a fresh temporary
/// directory, then closes the client's side. Handles are predictable (slot index, zero
/// nonce: `0000` + 16 zeros for the first), so an input can read and write what it opened. Oracle: the session ends (within a bound),
/// never panics, and a file beside the root is neither changed nor leaked into a reply.
pub fn fuzz_sftp(data: &[u8]) {
    let Ok(base) = tempfile::tempdir() else {
        return;
    };
    let root = base.path().join("root");
    let secret = base.path().join("secret");
    let secret_bytes = b"alknet-sftp-fuzz-secret-7f3a9c";
    if std::fs::create_dir(&root).is_err() || std::fs::write(&secret, secret_bytes).is_err() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let input = data.to_vec();
    let replies = rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let opts = super::SftpOptions {
            root,
            peer: "fuzz".into(),
        };
        let server = tokio::spawn(super::serve_with(server, opts, true));
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let send = async {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let mut replies = Vec::new();
        let recv = async {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                replies.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
        };
        let both = async {
            tokio::join!(send, recv);
        };
        let finished = tokio::time::timeout(Duration::from_secs(20), both).await;
        assert!(
            finished.is_ok(),
            "sftp session did not end after the client closed"
        );
        if let Err(e) = server.await {
            panic!("sftp session failed to finish: {e}");
        }
        replies
    });
    let secret_now = std::fs::read(&secret).unwrap_or_default();
    assert_eq!(secret_now, secret_bytes, "a file outside the root changed");
    assert!(
        !replies
            .windows(secret_bytes.len())
            .any(|w| w == secret_bytes),
        "a file outside the root was read"
    );
}
