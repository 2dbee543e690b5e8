//! The HTTP gateway of a real `alknet serve` on its TCP+TLS listener, driven by curl (h2 and
//! HTTP/1.1), the official MCP SDK's streamable-HTTP client and Python's ssl (PyPI and
//! stdlib, from the test venv), with tokens from the real identity store.

use crate::support::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

/// A gateway with the HTTP service on, a store peer `ada` (scope `call`) and its token.
struct Gw {
    server: Server,
    token: String,
}

impl Gw {
    fn start(extra: &str) -> Self {
        Self::start_with("", extra)
    }

    /// `top` goes before `[services.http]`, `extra` into it.
    fn start_with(top: &str, extra: &str) -> Self {
        let server = Server::start(&format!(
            "listen = \"127.0.0.1:0\"\nworkers = 2\n{top}[services.http]\nenabled = true\n{extra}"
        ));
        let key = ClientKey::generate().unwrap();
        let (code, _, err) = run_cli(
            &[
                "peer",
                "add",
                "ada",
                "--fingerprint",
                &key.fingerprint,
                "--scope",
                "call",
            ],
            &server.data_dir(),
            b"",
        );
        assert_eq!(code, 0, "{err}");
        let token = new_token(&server, "ada", &["call"], None);
        Self { server, token }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.server.addr.port())
    }
}

/// A new token of `peer` with `scopes` (and a lifetime), from the server's store.
pub(crate) fn new_token(
    server: &Server,
    peer: &str,
    scopes: &[&str],
    expires: Option<&str>,
) -> String {
    let mut args = vec!["token", "create", peer];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    if let Some(e) = expires {
        args.extend(["--expires-in", e]);
    }
    let (code, out, err) = run_cli(&args, &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    out.split_whitespace()
        .find(|w| w.starts_with("alk_"))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_owned()
}

/// curl's answer: status, HTTP version, body.
struct Reply {
    status: u16,
    version: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn curl(args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args([
            "-sSk",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut t = tail.split(' ');
    let status = t.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply {
        status,
        version: t.next().unwrap_or("").to_owned(),
        // A failed transfer says why on stderr.
        body: if status == 0 {
            format!("{body}{}", String::from_utf8_lossy(&out.stderr))
        } else {
            body.to_owned()
        },
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_every_route_over_h2_and_http1() {
    let gw = Gw::start("");
    let auth = bearer(&gw.token);
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let r = curl(&[flag, &gw.url("/healthz")]);
        assert_eq!((r.status, r.version.as_str()), (200, version), "{}", r.body);
        assert_eq!(r.json(), json!({"status": "ok"}));

        let r = curl(&[flag, "-H", &auth, &gw.url("/api/operations")]);
        assert_eq!(r.status, 200, "{}", r.body);
        let ids: Vec<String> = r.json()["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.contains(&"/node/info".into()) && ids.contains(&"/node/stats".into()));
        assert!(
            !ids.contains(&"/node/sessions".into()),
            "admin operations are not listed for a `call` token: {ids:?}"
        );

        let r = curl(&[
            flag,
            "-H",
            &auth,
            &gw.url("/api/operations/services/schema"),
        ]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["input"]["required"], json!(["operationId"]));

        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-X",
            "POST",
            &gw.url("/api/call/node/info"),
        ]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["fingerprint"], gw.server.fingerprint.as_str());

        // A streaming operation through POST: every result, as an array.
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"interval_ms":100,"count":3}"#,
            &gw.url("/api/call/node/stats"),
        ]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json().as_array().map(Vec::len), Some(3));

        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"calls":[{"id":"/node/info"},{"id":"/no/such"},{"id":"/services/schema","input":{"operationId":"/node/info"}}]}"#,
            &gw.url("/api/batch"),
        ]);
        assert_eq!(r.status, 200, "{}", r.body);
        let results = r.json()["results"].clone();
        assert_eq!(
            results[0]["ok"]["fingerprint"],
            gw.server.fingerprint.as_str()
        );
        assert_eq!(results[1]["error"]["code"], "NOT_FOUND");
        assert_eq!(results[2]["ok"]["operationId"], "/node/info");

        // Server-Sent Events: one `result` per snapshot, then `end`.
        let r = curl(&[
            flag,
            "-N",
            "-H",
            &auth,
            "-G",
            "--data-urlencode",
            r#"input={"interval_ms":100,"count":2}"#,
            &gw.url("/api/subscribe/node/stats"),
        ]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body.matches("event: result\n").count(), 2, "{}", r.body);
        assert!(
            r.body.trim_end().ends_with("event: end\ndata: {}"),
            "{}",
            r.body
        );

        let r = curl(&[flag, "-H", &auth, &gw.url("/openapi.json")]);
        assert_eq!(r.status, 200);
        let doc = r.json();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(
            doc["paths"]["/api/call/node/info"]["post"].is_object(),
            "{doc}"
        );
        assert!(doc["paths"]["/api/subscribe/node/stats"]["get"].is_object());

        // Errors: JSON bodies with the call error code and its status.
        let r = curl(&[flag, "-H", &auth, &gw.url("/nowhere")]);
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (404, Some("NOT_FOUND"))
        );
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-X",
            "POST",
            &gw.url("/api/call/no/such"),
        ]);
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (404, Some("NOT_FOUND"))
        );
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-X",
            "POST",
            &gw.url("/api/call/node/sessions"),
        ]);
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (403, Some("FORBIDDEN"))
        );
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"interval_ms":"soon"}"#,
            &gw.url("/api/call/node/stats"),
        ]);
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (422, Some("INVALID_INPUT"))
        );
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            "{not json",
            &gw.url("/api/call/node/info"),
        ]);
        assert_eq!(r.status, 400);
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-d",
            "x=1",
            &gw.url("/api/call/node/info"),
        ]);
        assert_eq!(r.status, 415);
        let r = curl(&[flag, "-H", &auth, &gw.url("/api/call/node/info")]);
        assert_eq!(r.status, 405);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_client_key_is_a_credential_too() {
    let gw = Gw::start("");
    // A client's own node key (PKCS#8 PEM, as curl reads it) in a certificate of its own.
    let dir = tempfile::tempdir().unwrap();
    let (code, fp, err) = run_cli(&["id"], dir.path(), b"");
    assert_eq!(code, 0, "{err}");
    let kp = dir.path().join("node.key");
    let client = ClientKey::load(&kp).unwrap();
    assert_eq!(client.fingerprint, fp.trim());
    let (cert, _) = client.pem().unwrap();
    let cp = dir.path().join("cert.pem");
    std::fs::write(&cp, cert).unwrap();
    let (code, _, err) = run_cli(
        &[
            "peer",
            "update",
            "ada",
            "--add-fingerprint",
            &client.fingerprint,
        ],
        &gw.server.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let (cp, kp) = (cp.display().to_string(), kp.display().to_string());
    let mut v: Vec<&str> = vec!["--cert", &cp, "--key", &kp];
    let url = gw.url("/api/call/node/info");
    v.extend(["-X", "POST", &url]);
    let r = curl(&v);
    assert_eq!(r.status, 200, "{}", r.body);
    // Disabled: the same key no longer opens anything, on a new connection or not.
    let (code, _, err) = run_cli(&["peer", "disable", "ada"], &gw.server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    let r = curl(&v);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = curl(&["-H", &bearer(&gw.token), "-X", "POST", &url]);
    assert_eq!(
        r.status, 401,
        "a disabled peer's token stops too: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_revoked_tokens_oversized_requests_and_slow_clients_are_refused() {
    let gw = Gw::start(
        "max_body = 2048\nmax_headers = 16\nmax_header_bytes = 4096\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_requests_per_token = 1\n",
    );
    let url = gw.url("/api/call/node/info");
    for h in [
        None,
        Some("Authorization: Bearer alk_0000000000000000000000000000000000000000".to_owned()),
        Some("Authorization: Basic YWRhOmFkYQ==".to_owned()),
        Some("Authorization: Bearer".to_owned()),
    ] {
        let mut a = vec!["-X", "POST"];
        if let Some(h) = &h {
            a.extend(["-H", h]);
        }
        a.push(&url);
        let r = curl(&a);
        assert_eq!(r.status, 401, "{h:?}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "UNAUTHENTICATED");
    }
    // A token without the `call` scope is known but not enough.
    let ssh_only = new_token(&gw.server, "ada", &["ssh"], None);
    let r = curl(&["-X", "POST", "-H", &bearer(&ssh_only), &url]);
    assert_eq!(r.status, 403, "{}", r.body);

    // Expiry: refused once its second has passed.
    let short = new_token(&gw.server, "ada", &["call"], Some("1s"));
    wait_for(
        Duration::from_secs(10),
        "the expired token to be refused",
        || {
            let r = curl(&["-X", "POST", "-H", &bearer(&short), &url]);
            assert!(
                r.status == 200 || r.status == 401,
                "{} {}",
                r.status,
                r.body
            );
            r.status == 401
        },
    )
    .await;
    // Revocation: the next request stops.
    let revoked = new_token(&gw.server, "ada", &["call"], None);
    assert_eq!(
        curl(&["-X", "POST", "-H", &bearer(&revoked), &url]).status,
        200
    );
    let prefix = &revoked[4..12];
    let (code, _, err) = run_cli(&["token", "revoke", prefix], &gw.server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        curl(&["-X", "POST", "-H", &bearer(&revoked), &url]).status,
        401
    );

    let auth = bearer(&gw.token);
    // Bodies over max_body: 413, over h2 and HTTP/1.1, with and without a length.
    let big = "x".repeat(4096);
    let body = format!("{{\"pad\":\"{big}\"}}");
    for flag in ["--http2", "--http1.1"] {
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &url,
        ]);
        assert_eq!(r.status, 413, "{flag}: {}", r.body);
        let r = curl(&[
            flag,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-H",
            "Transfer-Encoding: chunked",
            "-d",
            &body,
            &url,
        ]);
        assert!(
            r.status == 413 || r.status == 0,
            "{flag} chunked: {} {}",
            r.status,
            r.body
        );
    }
    // Headers: too many, too large.
    let many: Vec<String> = (0..40).map(|i| format!("X-Pad-{i}: {i}")).collect();
    let mut a = vec!["--http1.1", "-X", "POST", "-H", auth.as_str()];
    for h in &many {
        a.extend(["-H", h.as_str()]);
    }
    a.push(&url);
    let r = curl(&a);
    assert!(
        r.status == 431 || r.status == 400,
        "too many headers: {}",
        r.status
    );
    let huge = format!("X-Big: {}", "y".repeat(8192));
    for flag in ["--http1.1", "--http2"] {
        let r = curl(&[flag, "-X", "POST", "-H", &auth, "-H", &huge, &url]);
        assert!(
            r.status == 431 || r.status == 400 || r.status == 0,
            "{flag} large header: {}",
            r.status
        );
        assert_ne!(r.status, 200);
    }

    // One request in flight per token here: a second one while a subscription runs is 429.
    let sub = gw.url("/api/subscribe/node/stats?input=%7B%22count%22%3A20%7D");
    let mut stream = Command::new("curl")
        .args(["-skN", "--max-time", "20", "-H", &auth, &sub])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 14];
    std::io::Read::read_exact(stream.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"event: result\n");
    let r = curl(&["-X", "POST", "-H", &auth, &url]);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (429, Some("RATE_LIMITED"))
    );
    stream.kill().unwrap();
    let _ = stream.wait();
    wait_for(
        Duration::from_secs(10),
        "the slot to be given back when the stream closed",
        || curl(&["-X", "POST", "-H", &auth, &url]).status == 200,
    )
    .await;

    // Slowloris: headers trickled one line at a time are cut at header_timeout; a silent
    // connection is cut too.
    let script = r#"
import socket, ssl, sys, time
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
def conn():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="x")
    s.settimeout(15)
    return s
s = conn()
t0 = time.monotonic()
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
sent = 0
closed = None
try:
    for i in range(100):
        s.sendall(b"X-Slow-%d: y\r\n" % i)
        sent += 1
        s.settimeout(0.2)
        try:
            if s.recv(1024) == b"":
                closed = time.monotonic() - t0
                break
        except socket.timeout:
            pass
except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
    closed = time.monotonic() - t0
print("slow", closed, sent)
s = conn()
t0 = time.monotonic()
try:
    d = s.recv(1024)
except (ConnectionResetError, ssl.SSLError):
    d = b""
print("idle", time.monotonic() - t0, len(d))
"#;
    let out = Command::new(test_python())
        .args(["-c", script, &gw.server.addr.port().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slow: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    let cut: f64 = slow[1]
        .parse()
        .unwrap_or_else(|_| panic!("never cut: {text}"));
    assert!(
        (0.8..6.0).contains(&cut),
        "slow headers cut after {cut} s: {text}"
    );
    let idle: Vec<&str> = text.lines().nth(1).unwrap().split(' ').collect();
    let after: f64 = idle[1].parse().unwrap();
    // A connection that sends nothing meets the first of header_timeout and idle_timeout.
    assert!(
        (0.8..8.0).contains(&after) && idle[2] == "0",
        "idle cut: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_sdk_initialises_lists_and_calls_tools() {
    let gw = Gw::start("");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/mcp_client.py");
    let out = Command::new(test_python())
        .args([script, &gw.url("/mcp"), &gw.token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"], "alknet");
    assert_eq!(v["protocol"], "2025-11-25");
    let tools: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"node__info") && tools.contains(&"node__stats"),
        "{tools:?}"
    );
    assert!(
        !tools.contains(&"node__sessions"),
        "admin tools hidden: {tools:?}"
    );
    assert_eq!(v["schemas"]["services__schema"]["type"], "object");
    assert_eq!(v["info"]["isError"], false);
    assert_eq!(
        v["info"]["structured"]["fingerprint"],
        gw.server.fingerprint.as_str()
    );
    assert_eq!(v["stats"]["isError"], false);
    assert_eq!(v["stats"]["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        v["stats"]["progress"].as_array().map(Vec::len),
        Some(3),
        "{v}"
    );
    assert_eq!(v["invalid"]["isError"], true);
    assert!(
        v["invalid"]["text"][0]
            .as_str()
            .unwrap()
            .contains("INVALID_INPUT")
    );
    assert!(
        v["forbidden"].as_str().unwrap().contains("unknown tool"),
        "{v}"
    );

    // Without a session, or with another's, MCP requests are refused.
    let auth = bearer(&gw.token);
    let r = curl(&[
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/json, text/event-stream",
        "-d",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &gw.url("/mcp"),
    ]);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = curl(&[
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Mcp-Session-Id: 00ff",
        "-d",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &gw.url("/mcp"),
    ]);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = curl(&[
        "-d",
        "{}",
        "-H",
        "Content-Type: application/json",
        &gw.url("/mcp"),
    ]);
    assert_eq!(r.status, 401);
}

/// Runs `requests` (JSON lines) through aioquic's HTTP/3 client; one reply per request.
fn h3(gw: &Gw, requests: &[Value]) -> Vec<Value> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/h3_client.py");
    let mut child = Command::new(test_python())
        .args([
            script,
            "127.0.0.1",
            &gw.server.addr.port().to_string(),
            &gw.token,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for r in requests {
        writeln!(stdin, "{r}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_speaks_h3_on_the_quic_port_and_tcp_advertises_it() {
    let gw = Gw::start("max_body = 2048\n");
    let big = "x".repeat(4096);
    let replies = h3(
        &gw,
        &[
            json!({"path": "/healthz", "auth": false}),
            json!({"method": "POST", "path": "/api/call/node/info"}),
            json!({"method": "POST", "path": "/api/call/node/info", "auth": false}),
            json!({"method": "POST", "path": "/api/batch", "body": {"calls": [{"id": "/node/info"}, {"id": "/node/sessions"}]}}),
            json!({"path": "/api/subscribe/node/stats?input=%7B%22interval_ms%22%3A100%2C%22count%22%3A20%7D", "stream": 2}),
            json!({"path": "/api/operations/node/stats"}),
            json!({"method": "POST", "path": "/api/call/node/info", "body": {"pad": big}}),
            json!({"path": "/nowhere"}),
            // After the reset subscription: the token's slots are free again.
            json!({"method": "POST", "path": "/api/call/services/list"}),
        ],
    );
    let status: Vec<u64> = replies
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        status,
        [200, 200, 401, 200, 200, 200, 413, 404, 200],
        "{replies:?}"
    );
    let body =
        |i: usize| -> Value { serde_json::from_str(replies[i]["body"].as_str().unwrap()).unwrap() };
    assert_eq!(body(1)["fingerprint"], gw.server.fingerprint.as_str());
    assert_eq!(body(3)["results"][1]["error"]["code"], "FORBIDDEN");
    assert!(
        replies[4]["body"]
            .as_str()
            .unwrap()
            .starts_with("event: result\n")
    );
    assert_eq!(replies[4]["headers"]["content-type"], "text/event-stream");
    assert_eq!(body(5)["streaming"], true);

    let out = Command::new("curl")
        .args(["-sk", "-D-", "-o", "/dev/null", &gw.url("/healthz")])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        head.contains(&format!("alt-svc: h3=\":{}\"", gw.server.addr.port())),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_drives_calls_with_the_call_protocol() {
    let gw = Gw::start("");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_client.py");
    let url = format!("wss://127.0.0.1:{}/api/ws", gw.server.addr.port());
    let out = Command::new(test_python())
        .args([script, &url, &gw.token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fingerprint"], gw.server.fingerprint.as_str());
    assert_eq!(
        v["frames"]["info"],
        json!(["call.responded", "call.completed"])
    );
    assert_eq!(
        v["frames"]["stats"],
        json!([
            "call.responded",
            "call.responded",
            "call.responded",
            "call.completed"
        ])
    );
    let endless = v["frames"]["endless"].as_array().unwrap();
    assert_eq!(endless.last().unwrap(), "call.aborted", "{v}");
    // Without credentials the upgrade is refused before any WebSocket byte.
    let r = curl(&[
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &gw.url("/api/ws"),
    ]);
    assert_eq!(r.status, 401);
    // Over h2 it says to use HTTP/1.1.
    let r = curl(&["--http2", "-H", &bearer(&gw.token), &gw.url("/api/ws")]);
    assert_eq!(r.status, 426, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_the_generated_openapi() {
    // schemathesis sends bad credentials on purpose: they must not get loopback penalised.
    let gw = Gw::start_with("[admission]\nfailures_before_penalty = 1000000\n", "");
    let st = std::path::Path::new(&test_python()).with_file_name("schemathesis");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(&st)
        .args([
            "run",
            &gw.url("/openapi.json"),
            "-H",
            &bearer(&gw.token),
            "--tls-verify",
            "false",
            "--max-examples",
            "8",
            "--seed",
            "20261203",
            "--request-timeout",
            "40",
        ])
        .env("NO_COLOR", "1")
        // It keeps a cache in its working directory.
        .current_dir(work.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run .ci/test)", st.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No issues found"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It exercised every documented operation.
    assert!(
        text.contains("Selected: 12/12") || text.contains("Tested: 12"),
        "{text}"
    );
}
