//! The DNS service of a real `alknet serve`: DNS over QUIC driven by dnspython's
//! `dns.query.quic` and by a DoQ client on aioquic (PyPI, `tests/python/doq_client.py`),
//! DoH through the HTTP service checked with dnspython's `dns.query.https`, and the pkarr
//! relay driven by curl with packets `alknet dns publish` signed.
//!
//! The servers here cap `[transport] max_udp_payload` at Ethernet's 1452 bytes: on loopback
//! MTU discovery otherwise sends a ~48 KiB probe right after the handshake, and quinn-proto
//! (0.11.19, quinn issue #2785) will not send a CONNECTION_CLOSE while such a probe fills
//! the congestion window, so an early protocol-error close would reach the client only as
//! a stateless reset.

use crate::support::*;
use serde_json::Value;
use std::process::Command;

const ZONE: &str = r#"
[transport]
max_udp_payload = 1452
[services.dns]
enabled = true
zone = "gw.example."
ZONE_EXTRA
[[dns.records]]
name = "www.gw.example."
type = "A"
value = "192.0.2.10"
[[dns.records]]
name = "www.gw.example."
type = "AAAA"
value = "2001:db8::10"
[[dns.records]]
name = "alias.gw.example."
type = "CNAME"
value = "www.gw.example."
[[dns.records]]
name = "gw.example."
type = "MX"
value = "10 mail.gw.example."
[[dns.records]]
name = "gw.example."
type = "HTTPS"
value = "1 . alpn=h3,h2 port=4433"
[[dns.records]]
name = "_doq._udp.gw.example."
type = "SRV"
value = "0 5 853 www.gw.example."
[[dns.records]]
name = "*.apps.gw.example."
type = "TXT"
value = "wildcard"
"#;

fn server(extra: &str) -> Server {
    Server::start(&format!(
        "workers = 2\n{}",
        ZONE.replace("ZONE_EXTRA", extra)
    ))
}

/// Runs `doq_client.py` with `args`; its JSON.
fn doq(args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/doq_client.py");
    let out = Command::new(test_python())
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "doq_client.py {args:?}: {e}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn query(server: &Server, client: &str, name: &str, kind: &str) -> Value {
    let at = server.addr.to_string();
    doq(&["query", "--server", &at, "--client", client, name, kind])
}

fn answers(v: &Value) -> Vec<String> {
    v["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dnspython_and_aioquic_resolve_the_zone_and_the_node_records_over_doq() {
    let s = server("");
    for client in ["dnspython", "aioquic"] {
        let a = query(&s, client, "www.gw.example.", "A");
        assert_eq!(a["rcode"], "NOERROR", "{a}");
        assert_eq!(a["aa"], true, "{a}");
        assert_eq!(a["id"], 0, "DoQ answers carry ID 0: {a}");
        assert_eq!(
            answers(&a),
            ["www.gw.example. 300 IN A 192.0.2.10"],
            "{client}"
        );
    }
    let a = query(&s, "aioquic", "alias.gw.example.", "AAAA");
    let got = answers(&a).join("\n");
    assert!(
        got.contains("CNAME www.gw.example.") && got.contains("AAAA 2001:db8::10"),
        "{a}"
    );
    let a = query(&s, "dnspython", "x.apps.gw.example.", "TXT");
    assert_eq!(answers(&a), ["x.apps.gw.example. 300 IN TXT \"wildcard\""]);
    let a = query(&s, "dnspython", "_doq._udp.gw.example.", "SRV");
    assert!(
        answers(&a)[0].ends_with("SRV 0 5 853 www.gw.example."),
        "{a}"
    );
    let a = query(&s, "aioquic", "gw.example.", "HTTPS");
    assert!(answers(&a)[0].contains("alpn=\"h3,h2\""), "{a}");
    let a = query(&s, "aioquic", "gw.example.", "MX");
    assert!(answers(&a)[0].ends_with("MX 10 mail.gw.example."), "{a}");

    // The node's own records: its fingerprint and what it serves on which port.
    let a = query(&s, "dnspython", "_alknet.gw.example.", "TXT");
    assert_eq!(
        answers(&a),
        [format!(
            "_alknet.gw.example. 300 IN TXT \"fp={}\"",
            s.fingerprint
        )]
    );
    let a = query(&s, "dnspython", "_alknet.gw.example.", "SVCB");
    let svcb = answers(&a).join("");
    assert!(
        svcb.contains("doq") && svcb.contains(&format!("port=\"{}\"", s.addr.port())),
        "{a}"
    );

    // Negative answers: NXDOMAIN and NODATA carry the SOA; other names are refused
    // (no upstream configured).
    let a = query(&s, "aioquic", "nope.gw.example.", "A");
    assert_eq!(a["rcode"], "NXDOMAIN", "{a}");
    assert!(a["authority"][0].as_str().unwrap().contains("SOA"), "{a}");
    let a = query(&s, "aioquic", "www.gw.example.", "TXT");
    assert_eq!(
        (a["rcode"].as_str(), answers(&a).len()),
        (Some("NOERROR"), 0),
        "{a}"
    );
    let a = query(&s, "dnspython", "example.com.", "A");
    assert_eq!(a["rcode"], "REFUSED", "{a}");

    // Many queries at once on one connection, each on its own stream.
    let at = s.addr.to_string();
    let a = doq(&[
        "query",
        "--server",
        &at,
        "--count",
        "40",
        "www.gw.example.",
        "A",
    ]);
    assert_eq!(
        (a["count"].as_u64(), a["all_same"].as_bool()),
        (Some(40), Some(true)),
        "{a}"
    );
}

#[test]
fn protocol_errors_close_the_connection_with_doq_protocol_error() {
    let s = server("");
    let at = s.addr.to_string();
    for case in [
        "nonzero-id",
        "malformed",
        "truncated",
        "oversized",
        "trailing",
        "uni",
    ] {
        let v = doq(&["probe", "--server", &at, case]);
        assert_eq!(v["closed"], true, "{case}: {v}");
        assert_eq!(v["error_code"], 2, "{case}: DOQ_PROTOCOL_ERROR: {v}");
        assert!(v["response_rcode"].is_null(), "{case} was answered: {v}");
    }
    let v = doq(&["probe", "--server", &at, "valid"]);
    assert_eq!(
        (v["closed"].as_bool(), v["response_rcode"].as_str()),
        (Some(false), Some("NOERROR")),
        "{v}"
    );
    // The server is unharmed.
    assert_eq!(
        query(&s, "aioquic", "www.gw.example.", "A")["rcode"],
        "NOERROR"
    );
}

#[test]
fn a_source_over_its_budget_is_refused_then_cut_with_excessive_load() {
    let s = server("queries_per_second = 5\nburst = 10");
    let at = s.addr.to_string();
    let v = doq(&[
        "flood",
        "--server",
        &at,
        "--queries",
        "200",
        "--inflight",
        "8",
    ]);
    let ok = v["rcodes"]["NOERROR"].as_u64().unwrap_or(0);
    let refused = v["rcodes"]["REFUSED"].as_u64().unwrap_or(0);
    assert!((10..=20).contains(&ok), "the burst and a few refills: {v}");
    assert!(refused >= 5, "then REFUSED: {v}");
    assert_eq!(
        (v["closed"].as_bool(), v["error_code"].as_u64()),
        (Some(true), Some(4)),
        "then DOQ_EXCESSIVE_LOAD: {v}"
    );
}

fn curl_status(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (.ci/test installs it)");
    let body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&body[split..])
        .trim()
        .parse()
        .unwrap_or(0);
    (status, body[..split].to_vec())
}

#[test]
fn the_pkarr_relay_keeps_verified_packets_and_doq_answers_their_names() {
    // The HTTP service alongside: DoH and the relay.
    let s = Server::start(&format!(
        "workers = 2\n[services.http]\nenabled = true\n{}",
        ZONE.replace("ZONE_EXTRA", "")
    ));
    let base = format!("https://127.0.0.1:{}", s.addr.port());

    // A device signs its records (its own data directory, its own key).
    let device = tempfile::tempdir().unwrap();
    let payload = device.path().join("packet.bin");
    let (code, out, err) = run_cli(
        &[
            "dns",
            "publish",
            "--out",
            payload.to_str().unwrap(),
            "--address",
            "192.0.2.77",
            "--json",
        ],
        device.path(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let published: Value = serde_json::from_str(out.trim()).unwrap();
    let z32 = published["key"].as_str().unwrap().to_owned();
    let (code, device_fp, _) = run_cli(&["id"], device.path(), b"");
    assert_eq!(code, 0);

    // Unknown key: 404; PUT the packet: 204; GET gives it back byte for byte.
    assert_eq!(curl_status(&[&format!("{base}/{z32}")]).0, 404);
    let at_file = format!("@{}", payload.display());
    let (st, body) = curl_status(&[
        "-X",
        "PUT",
        "--data-binary",
        &at_file,
        &format!("{base}/{z32}"),
    ]);
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    let (st, body) = curl_status(&[&format!("{base}/{z32}")]);
    assert_eq!((st, body), (200, std::fs::read(&payload).unwrap()));

    // DoQ answers the key's names from the verified packet.
    let a = query(&s, "dnspython", &format!("_alknet.{z32}."), "TXT");
    let txt = answers(&a).join("");
    assert!(
        txt.contains(&format!("fp={}", device_fp.trim())),
        "{a} {device_fp}"
    );
    let a = query(&s, "aioquic", &format!("{z32}."), "A");
    assert!(answers(&a)[0].ends_with("A 192.0.2.77"), "{a}");

    // A forged packet (one byte of its records flipped), a packet under another key's
    // name, and an older packet are refused; what is held does not change.
    let mut forged = std::fs::read(&payload).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged_path = device.path().join("forged.bin");
    std::fs::write(&forged_path, &forged).unwrap();
    let forged_at = format!("@{}", forged_path.display());
    assert_eq!(
        curl_status(&[
            "-X",
            "PUT",
            "--data-binary",
            &forged_at,
            &format!("{base}/{z32}")
        ])
        .0,
        400
    );
    let (code, own_key, _) = run_cli(&["dns", "key"], &s.data_dir(), b"");
    assert_eq!(code, 0);
    let own_key = own_key.trim().to_owned();
    assert_eq!(
        curl_status(&[
            "-X",
            "PUT",
            "--data-binary",
            &at_file,
            &format!("{base}/{own_key}")
        ])
        .0,
        400
    );
    let newer = device.path().join("newer.bin");
    let (code, _, err) = run_cli(
        &["dns", "publish", "--out", newer.to_str().unwrap()],
        device.path(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let newer_at = format!("@{}", newer.display());
    assert_eq!(
        curl_status(&[
            "-X",
            "PUT",
            "--data-binary",
            &newer_at,
            &format!("{base}/{z32}")
        ])
        .0,
        204
    );
    assert_eq!(
        curl_status(&[
            "-X",
            "PUT",
            "--data-binary",
            &at_file,
            &format!("{base}/{z32}")
        ])
        .0,
        409
    );
    assert_eq!(
        curl_status(&[&format!("{base}/{z32}")]).1,
        std::fs::read(&newer).unwrap()
    );
    let a = query(&s, "aioquic", &format!("{z32}."), "A");
    assert_eq!(answers(&a).len(), 0, "the newer packet has no address: {a}");

    // The node's own packet is served under its own key.
    let a = query(&s, "aioquic", &format!("_alknet.{own_key}."), "TXT");
    assert!(
        answers(&a)
            .join("")
            .contains(&format!("fp={}", s.fingerprint)),
        "{a}"
    );

    // DoH, GET and POST, over HTTP/1.1 and h2.
    for (method, http) in [("GET", "1"), ("POST", "2"), ("POST", "1"), ("GET", "2")] {
        let url = format!("{base}/dns-query");
        let a = doq(&[
            "doh",
            "--url",
            &url,
            "--method",
            method,
            "--http",
            http,
            "www.gw.example.",
            "A",
        ]);
        assert_eq!(
            answers(&a),
            ["www.gw.example. 300 IN A 192.0.2.10"],
            "{method} h{http}: {a}"
        );
    }
    let (st, _) = curl_status(&[&format!("{base}/dns-query?dns=AAAA")]);
    assert_eq!(st, 400, "a query that is not a DNS message");
    let (st, _) = curl_status(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: text/plain",
        "--data",
        "x",
        &format!("{base}/dns-query"),
    ]);
    assert_eq!(st, 415);
}

#[test]
fn a_reload_changes_the_zone_live() {
    let s = server("");
    assert_eq!(
        answers(&query(&s, "aioquic", "www.gw.example.", "A")).len(),
        1
    );
    let cfg = s.dir.path().join("alknet.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("192.0.2.10", "192.0.2.99");
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = run_cli(&["reload"], &s.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    let a = query(&s, "aioquic", "www.gw.example.", "A");
    assert_eq!(answers(&a), ["www.gw.example. 300 IN A 192.0.2.99"], "{a}");
    // A bad record is refused by the reload, naming its line, and the zone stays.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("192.0.2.99", "192.0.2.999");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run_cli(&["reload"], &s.data_dir(), b"");
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("dns.records.value") && err.contains("not an IPv4 address"),
        "{err}"
    );
    assert_eq!(
        answers(&query(&s, "aioquic", "www.gw.example.", "A")),
        ["www.gw.example. 300 IN A 192.0.2.99"]
    );
}

/// A resolver on loopback UDP for the forwarding test: answers every question with one A
/// record 198.51.100.7 (TTL 60) and counts the questions.
fn upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            count.fetch_add(1, Ordering::SeqCst);
            // The question ends after its name (labels to a zero byte) and 4 bytes.
            let Some(end) = buf[12..n].iter().position(|b| *b == 0).map(|z| 12 + z + 5) else {
                continue;
            };
            let mut r = buf[..end].to_vec();
            r[2] = 0x81; // QR, RD
            r[3] = 0x80; // RA, NOERROR
            r[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]); // one answer, no others (drops OPT)
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 7]);
            let _ = sock.send_to(&r, from);
        }
    });
    (addr, asked)
}

#[test]
fn other_names_are_forwarded_to_the_upstream_and_cached() {
    let (up, asked) = upstream();
    let s = server(&format!("upstream = \"{up}\""));
    for client in ["aioquic", "dnspython"] {
        let a = query(&s, client, "example.test.", "A");
        assert_eq!(a["rcode"], "NOERROR", "{a}");
        assert_eq!(
            a["aa"], false,
            "not authoritative for a forwarded name: {a}"
        );
        let got = answers(&a);
        assert!(
            got.len() == 1 && got[0].ends_with("IN A 198.51.100.7"),
            "{a}"
        );
    }
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );
    // The zone is still answered locally.
    let a = query(&s, "aioquic", "www.gw.example.", "A");
    assert_eq!(answers(&a), ["www.gw.example. 300 IN A 192.0.2.10"]);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}
