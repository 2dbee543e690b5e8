//! The Prometheus endpoint of a real `alknet serve`, scraped while echo traffic flows and
//! parsed by `prometheus_client.parser` (PyPI): valid text, counters moving.

use crate::support::*;
use std::io::{Read, Write};
use std::time::Duration;

fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Parses exposition text with prometheus_client; `name{labels} value` per sample.
fn parse(text: &str) -> String {
    let python = std::env::var("ALKNET_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("ALKNET_TEST_PYTHON is unset: run .ci/test, which makes a venv with prometheus_client (.ci/requirements.txt)")
    });
    let mut child = std::process::Command::new(python)
        .args(["-c", "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\nfor fam in f(sys.stdin.read()):\n    for s in fam.samples:\n        print(s.name + '{' + ','.join(k + '=' + v for k, v in sorted(s.labels.items())) + '} ' + repr(s.value))\n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn value(parsed: &str, sample: &str) -> f64 {
    parsed
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{sample}` in\n{parsed}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_parse_and_move_with_traffic() {
    let key = ClientKey::generate().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = Server::start(&format!(
        "listen = \"127.0.0.1:0\"\nworkers = 2\n[metrics]\nlisten = \"{port}\"\n[services.echo]\nenabled = true\n{}",
        peer_toml("tester", &key, &["echo"])
    ));
    let before = parse(scrape(port, "/metrics").split("\r\n\r\n").nth(1).unwrap());
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), b"alknet/echo")
        .await
        .unwrap();
    let data = pattern(3, 200_000);
    assert_eq!(echo(&conn, &data).await.unwrap(), data);
    // A stranger's key: a failed authentication by reason.
    let stranger = ClientKey::generate().unwrap();
    let _ = connect(&ep, server.addr, Some(&stranger), b"alknet/echo").await;
    let (code, _, _) = run_cli(
        &[
            "peer",
            "add",
            "bob",
            "--fingerprint",
            &stranger.fingerprint,
            "--scope",
            "echo",
        ],
        &server.data_dir(),
        b"",
    );
    assert_eq!(code, 0);
    let mut after = String::new();
    wait_for(
        Duration::from_secs(10),
        "the failed authentication in the metrics",
        || {
            after = parse(scrape(port, "/metrics").split("\r\n\r\n").nth(1).unwrap());
            value(&after, "alknet_auth_failures_total{reason=unknown_key}") >= 1.0
        },
    )
    .await;
    let bytes = |p: &str| {
        value(p, "alknet_received_bytes_total{shard=0}")
            + value(p, "alknet_received_bytes_total{shard=1}")
    };
    assert!(
        bytes(&after) >= bytes(&before) + 200_000.0,
        "received bytes did not move"
    );
    assert!(value(&after, "alknet_handshakes_total{outcome=established}") >= 1.0);
    assert!(value(&after, "alknet_store_commit_duration_seconds_count{}") >= 1.0);
    assert!(value(&after, "alknet_memory_resident_bytes{}") > 0.0);
    let sessions = value(&after, "alknet_sessions{alpn=alknet/echo,shard=0}")
        + value(&after, "alknet_sessions{alpn=alknet/echo,shard=1}");
    assert!(sessions >= 1.0, "the live session is not counted");

    let raw = scrape(port, "/metrics");
    assert!(
        raw.starts_with("HTTP/1.1 200 OK\r\n")
            && raw.contains("text/plain; version=0.0.4")
            && raw.contains("Connection: close"),
        "{raw}"
    );
    assert!(scrape(port, "/other").starts_with("HTTP/1.1 404"));
    // `alknet stats` shows the same samples.
    let (code, text, err) = run_cli(&["stats"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("alknet_auth_failures_total{reason=\"unknown_key\"}"),
        "{text}"
    );
    conn.close(0u32.into(), b"");
}

#[test]
fn a_remote_metrics_address_is_refused_naming_the_key() {
    let err = Server::try_start("[metrics]\nlisten = \"0.0.0.0:9464\"\n")
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("metrics.listen") && err.contains("allow_remote"),
        "{err}"
    );
}
