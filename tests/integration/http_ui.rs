//! The gateway's status page `/ui/` on a real `alknet serve`, with a live `alknet connect`
//! session to show and revoke: in headless Chromium (driven over the DevTools protocol by
//! [`BROWSER`], a Python script run with the test venv) and with curl (cookie jars, forged
//! and cross-site forms, the event stream).

use crate::support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A node with the HTTP gateway and echo on, its store peer `ada` (scopes `call`, `admin`,
/// `echo`; its key is the client data directory's) and an admin token of `ada`.
struct Node {
    server: Server,
    client: tempfile::TempDir,
    token: String,
}

impl Node {
    fn start() -> Self {
        let server = Server::start(
            "workers = 2\n[services.http]\nenabled = true\n[services.echo]\nenabled = true\n",
        );
        let client = tempfile::tempdir().unwrap();
        let (code, fp, err) = run_cli(&["id"], client.path(), b"");
        assert_eq!(code, 0, "alknet id: {err}");
        let (code, _, err) = run_cli(
            &[
                "peer",
                "add",
                "ada",
                "--fingerprint",
                fp.trim(),
                "--scope",
                "call",
                "--scope",
                "admin",
                "--scope",
                "echo",
            ],
            &server.data_dir(),
            b"",
        );
        assert_eq!(code, 0, "{err}");
        let token = token(&server, &["call", "admin"]);
        Self {
            server,
            client,
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.server.addr.port())
    }

    /// The node's live sessions, from `/node/sessions` through the API.
    fn sessions(&self) -> Vec<Value> {
        let r = curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {}", self.token),
            &self.url("/api/call/node/sessions"),
        ]);
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_else(|| panic!("not a session list: {}", r.body))
    }

    fn has_session(&self, peer: &str, alpn: &str) -> bool {
        self.sessions()
            .iter()
            .any(|s| s["peer"] == peer && s["alpn"] == alpn)
    }

    /// Signs a fresh cookie jar in with `?token=`; returns the jar.
    fn sign_in(&self, dir: &tempfile::TempDir) -> String {
        let jar = dir.path().join("jar").display().to_string();
        let r = curl(&["-c", &jar, &self.url(&format!("/ui/?token={}", self.token))]);
        assert_eq!(r.status, 303, "{}", r.body);
        jar
    }
}

/// A new token of `ada` with `scopes`.
fn token(server: &Server, scopes: &[&str]) -> String {
    crate::http::new_token(server, "ada", scopes, None)
}

/// `alknet connect --alpn alknet/echo` as `ada`, its stdin held open so the session lives.
struct Echo {
    child: Child,
    stdin: ChildStdin,
    /// Lines of its stdout; disconnected at the end of stdout, when the process exits.
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl Echo {
    fn connect(node: &Node) -> Self {
        let stderr = node.client.path().join("connect.log");
        let mut child = Command::new(ALKNET)
            .args(["connect", &node.server.addr.to_string()])
            .args(["--alpn", "alknet/echo"])
            .args(["--fingerprint", &node.server.fingerprint])
            .arg("--data-dir")
            .arg(node.client.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn alknet connect");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut echo = Self {
            child,
            stdin,
            lines,
            stderr,
        };
        echo.round_trip("hello");
        echo
    }

    /// Sends a line through the session and waits for it to come back.
    fn round_trip(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").expect("write to alknet connect");
        self.stdin.flush().unwrap();
        let got = self.lines.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            got.as_deref(),
            Ok(text),
            "echo through the session; alknet connect said: {}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    /// Waits at most `limit` for the process to exit (its stdout's end).
    fn exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => return self.child.wait().ok(),
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl's answer: status, response headers, body.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    /// The last value of header `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .next_back()
    }
}

fn curl(args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "20", "-w", "\n%{http_code}", "-D"])
        .arg(&head)
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = status.trim().parse().unwrap_or(0);
    Reply {
        status,
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: if status == 0 {
            format!("{body}{}", String::from_utf8_lossy(&out.stderr))
        } else {
            body.to_owned()
        },
    }
}

/// The CSRF token in a page's revoke form.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn chromium() -> &'static str {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "chromium is missing (Debian package chromium; .ci/test installs it)"
    );
    "chromium"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_node_and_live_sessions_and_revokes_one() {
    let node = Node::start();
    let mut echo = Echo::connect(&node);
    wait_for(Duration::from_secs(10), "ada's echo session listed", || {
        node.has_session("ada", "alknet/echo")
    })
    .await;

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("http_ui.png");
    let _ = std::fs::remove_file(&shot);
    let script = node.client.path().join("browser.py");
    std::fs::write(&script, BROWSER).unwrap();
    let out = Command::new(test_python())
        .arg(&script)
        .arg(chromium())
        .arg(node.server.addr.port().to_string())
        .arg(&node.token)
        .arg(&shot)
        .arg("ada")
        .stderr(Stdio::inherit())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: the browser script printed {stdout}"));
    assert!(
        r["error"].is_null(),
        "{}",
        r["error"].as_str().unwrap_or("")
    );

    // Signed in by the token in the URL, which the redirect took out of it.
    let url = r["url"].as_str().unwrap();
    assert!(url.ends_with("/ui/") && !url.contains("token"), "{url}");
    let dom = r["dom"].as_str().unwrap();
    assert!(dom.contains(&node.server.fingerprint), "{dom}");
    assert!(dom.contains("<h3>ada</h3>"), "{dom}");
    assert!(dom.contains("<td class=\"alpn\">alknet/echo</td>"), "{dom}");
    assert!(!dom.contains(&node.token), "the token is in the page");
    // The event stream reached the page's script: snapshots applied, the badge live.
    assert_eq!(r["updates_seen"], true, "{dom}");
    assert_eq!(r["live"], "live");

    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1200, "screenshot width");
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot is a blank page",
        png.len()
    );

    // The revoke button: the form posted, the page back at /ui/, and ada's group gone from
    // the live list once its session closed.
    assert_eq!(r["clicked"], true, "no revoke button for ada: {dom}");
    assert!(r["url_after"].as_str().unwrap().ends_with("/ui/"));
    assert_eq!(
        r["gone"],
        true,
        "ada still listed: {}",
        r["dom_after"].as_str().unwrap_or("")
    );
    assert!(
        echo.exit(Duration::from_secs(10)).is_some(),
        "alknet connect still runs after the revoke: {}",
        echo.log()
    );
    assert!(echo.log().contains("revoked"), "{}", echo.log());
    assert!(!node.has_session("ada", "alknet/echo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_needs_the_csrf_token_and_closes_the_peers_sessions() {
    let node = Node::start();
    let mut echo = Echo::connect(&node);
    wait_for(Duration::from_secs(10), "ada's echo session listed", || {
        node.has_session("ada", "alknet/echo")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar").display().to_string();

    // `?token=` sets the session cookie and sends the browser on without the token.
    let r = curl(&["-c", &jar, &node.url(&format!("/ui/?token={}", node.token))]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/ui/"));
    let cookie = r.header("set-cookie").unwrap_or_default();
    assert_eq!(
        cookie,
        format!(
            "alknet_ui={}; HttpOnly; Secure; SameSite=Strict; Path=/ui",
            node.token
        )
    );
    assert!(!r.body.contains(&node.token));

    let r = curl(&["-b", &jar, &node.url("/ui/")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.body.contains(&node.server.fingerprint), "{}", r.body);
    assert!(r.body.contains("<h3>ada</h3>"), "{}", r.body);
    assert!(r.body.contains("alknet/echo"), "{}", r.body);
    assert!(!r.body.contains(&node.token), "the token is in the page");
    let csrf = csrf_of(&r.body);
    assert_eq!(csrf.len(), 64, "{csrf}");

    // Forged forms: no CSRF token, a wrong one, the right one from another site (as the
    // browser says, and as the Origin shows).
    let url = node.url("/ui/revoke");
    let wrong = format!("peer=ada&csrf={}", "0".repeat(64));
    let right = format!("peer=ada&csrf={csrf}");
    for (what, extra, body) in [
        ("no CSRF token", vec![], "peer=ada"),
        ("a wrong CSRF token", vec![], wrong.as_str()),
        (
            "a cross-site fetch",
            vec!["-H", "Sec-Fetch-Site: cross-site"],
            right.as_str(),
        ),
        (
            "another origin",
            vec!["--http1.1", "-H", "Origin: https://evil.example"],
            right.as_str(),
        ),
    ] {
        let mut args = vec!["-b", jar.as_str(), "-d", body];
        args.extend(extra);
        args.push(&url);
        let r = curl(&args);
        assert_eq!(r.status, 403, "{what}: {}", r.body);
    }
    let r = curl(&[
        "-b",
        &jar,
        "-H",
        "Content-Type: application/json",
        "-d",
        &right,
        &url,
    ]);
    assert_eq!(r.status, 415, "{}", r.body);
    // None of them closed anything.
    echo.round_trip("still here");
    assert!(node.has_session("ada", "alknet/echo"));

    let r = curl(&["-b", &jar, "-d", &right, &url]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/ui/"));
    assert!(
        echo.exit(Duration::from_secs(10)).is_some(),
        "alknet connect still runs after the revoke: {}",
        echo.log()
    );
    assert!(echo.log().contains("revoked"), "{}", echo.log());
    assert!(!node.has_session("ada", "alknet/echo"));
    let r = curl(&["-b", &jar, &node.url("/ui/")]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("No live sessions."), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_needs_an_admin_credential() {
    let node = Node::start();
    let page = node.url("/ui/");

    // No credential: 401, for a browser the sign-in form.
    let r = curl(&[&page]);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = curl(&["-H", "Accept: text/html", &page]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("action=\"/ui/login\""), "{}", r.body);
    assert_eq!(curl(&[&node.url("/ui/events")]).status, 401);

    // A token without `admin`: 403, and no cookie for it.
    let call_only = token(&node.server, &["call"]);
    let r = curl(&["-H", &format!("Authorization: Bearer {call_only}"), &page]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = curl(&[&format!("{page}?token={call_only}")]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.header("set-cookie"), None);
    // An unknown token: 401, no cookie.
    let r = curl(&[&format!("{page}?token=alk_{}", "0".repeat(40))]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("set-cookie"), None);

    // The admin token as a header, and ada's client key, need no cookie.
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", node.token),
        &page,
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    let key = ClientKey::load(&node.client.path().join("node.key")).unwrap();
    let (cert, _) = key.pem().unwrap();
    let cert_path = node.client.path().join("cert.pem");
    std::fs::write(&cert_path, cert).unwrap();
    let key_path = node.client.path().join("node.key");
    let r = curl(&[
        "--cert",
        cert_path.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
        &page,
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("signed in as <b>ada</b>"), "{}", r.body);

    // The sign-in form: same-origin only.
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar").display().to_string();
    let login = node.url("/ui/login");
    let field = format!("token={}", node.token);
    let r = curl(&["-H", "Sec-Fetch-Site: cross-site", "-d", &field, &login]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.header("set-cookie"), None);
    let r = curl(&["-c", &jar, "-d", &field, &login]);
    assert_eq!(r.status, 303, "{}", r.body);
    let r = curl(&["-b", &jar, &page]);
    assert_eq!(r.status, 200, "{}", r.body);

    // Routes: unknown pages 404, methods checked, /ui sent to /ui/.
    assert_eq!(curl(&["-b", &jar, &node.url("/ui/nope")]).status, 404);
    assert_eq!(curl(&["-b", &jar, "-X", "POST", &page]).status, 405);
    assert_eq!(curl(&["-b", &jar, &node.url("/ui/revoke")]).status, 405);
    let r = curl(&["-b", &jar, &node.url("/ui")]);
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/ui/")),
        "{}",
        r.body
    );

    // The token revoked: its cookie is refused, and cleared.
    let (code, _, err) = run_cli(
        &["token", "revoke", &node.token[4..12]],
        &node.server.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let r = curl(&["-b", &jar, "-H", "Accept: text/html", &page]);
    assert_eq!(r.status, 401, "{}", r.body);
    let cleared = r.header("set-cookie").unwrap_or_default();
    assert!(
        cleared.starts_with("alknet_ui=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert!(r.body.contains("action=\"/ui/login\""), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_snapshots_until_the_token_is_revoked() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let jar = node.sign_in(&dir);
    let mut stream = Command::new("curl")
        .args(["-sSkN", "--max-time", "30", "-b", &jar])
        .arg(node.url("/ui/events"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let stdout = stream.stdout.take().unwrap();
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Each event is its name, then its data.
    let next_event = |limit: Duration| -> (String, Value) {
        let until = Instant::now() + limit;
        let mut name = None;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no event within {limit:?}: {e}"));
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_owned());
            } else if let (Some(n), Some(d)) = (&name, line.strip_prefix("data: ")) {
                let data = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
                return (n.clone(), data);
            }
        }
    };
    let mut uptimes = Vec::new();
    for _ in 0..2 {
        let (name, data) = next_event(Duration::from_secs(10));
        assert_eq!(name, "snapshot", "{data}");
        assert!(data["stats"]["connections_open"].is_u64(), "{data}");
        assert!(data["counters"]["bytes_in"].is_string(), "{data}");
        assert!(data["sessions"].is_array(), "{data}");
        uptimes.push(data["stats"]["uptime_secs"].as_u64().unwrap());
    }
    assert!(uptimes[0] <= uptimes[1], "{uptimes:?}");

    // The open stream checks the credential at each snapshot: revoked, it ends.
    let (code, _, err) = run_cli(
        &["token", "revoke", &node.token[4..12]],
        &node.server.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    loop {
        let (name, data) = next_event(Duration::from_secs(10));
        if name == "end" {
            assert!(data["reason"].as_str().unwrap().contains("admin"), "{data}");
            break;
        }
        // One snapshot may have been on its way.
        assert_eq!(name, "snapshot", "{data}");
    }
    let status = stream.wait().unwrap();
    assert!(status.success(), "curl: {status}");
}

/// Opens `/ui/?token=…` in headless Chromium, driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: no WebSocket client needed), and clicks the revoke button.
///
/// argv: chromium, gateway port, token, screenshot path, peer to revoke. Prints one JSON
/// object (the DOM before and after the revoke, the URLs, what the page's script did) or
/// `{"error": …}` with the tail of Chromium's log.
///
/// Chromium's TLS (BoringSSL) offers no Ed25519 signature scheme: the TCP listener answers
/// it with its ECDSA P-256 certificate, so the browser talks to the gateway directly.
const BROWSER: &str = r#"
import base64, fcntl, json, os, select, shutil, signal, subprocess, sys, tempfile, time

chromium, upstream, token, shot_path, peer = sys.argv[1:6]
upstream = int(upstream)
signal.alarm(60)
work = tempfile.mkdtemp(prefix="alknet-ui-")


class Cdp:
    """The DevTools protocol on Chromium's pipe: JSON messages, each ended by a NUL."""

    def __init__(self, rfd, wfd):
        self.r, self.w, self.buf, self.next_id, self.events = rfd, wfd, b"", 0, []

    def _recv(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer")
            if select.select([self.r], [], [], left)[0]:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed its pipe")
                self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method, params=None, session=None, timeout=20):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.events):
                if m.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._recv(deadline))

    def evaluate(self, session, expression, timeout=20):
        r = self.send("Runtime.evaluate",
                      {"expression": expression, "awaitPromise": True, "returnByValue": True},
                      session, timeout)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")


def until(condition, ms):
    """A promise of true once the condition holds in the page, of false after ms."""
    return ("new Promise(function (done) { var end = Date.now() + %d; (function poll() {"
            " if (%s) return done(true); if (Date.now() > end) return done(false);"
            " setTimeout(poll, 50); })(); })" % (ms, condition))


# Chromium reads commands on its fd 3 and writes answers on its fd 4. The pipe ends are moved
# to 10 and above first, so dup2 onto 3 and 4 always makes new, inheritable descriptors.
def high(fd):
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


cmd_r, cmd_w = map(high, os.pipe())
out_r, out_w = map(high, os.pipe())


def child_fds():
    os.dup2(cmd_r, 3)
    os.dup2(out_w, 4)


log_path = os.path.join(work, "chromium.log")
log = open(log_path, "wb")
proc = subprocess.Popen(
    [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
     "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
     "--disable-extensions", "--disable-background-networking", "--password-store=basic",
     "--window-size=1200,900", "--user-data-dir=" + os.path.join(work, "profile"), "about:blank"],
    stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=child_fds, close_fds=False)
os.close(cmd_r)
os.close(out_w)
result = {}
try:
    port = upstream
    cdp = Cdp(out_r, cmd_w)
    pages = [t for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
    sid = cdp.send("Target.attachToTarget",
                   {"targetId": pages[0]["targetId"], "flatten": True})["sessionId"]
    cdp.send("Page.enable", session=sid)
    cdp.events.clear()
    nav = cdp.send("Page.navigate", {"url": f"https://127.0.0.1:{port}/ui/?token={token}"}, sid)
    if nav.get("errorText"):
        raise RuntimeError("navigation failed: " + nav["errorText"])
    cdp.wait_event("Page.loadEventFired")
    result["url"] = cdp.evaluate(sid, "location.href")
    result["updates_seen"] = cdp.evaluate(
        sid, until("Number(document.body.dataset.updates) >= 2", 15000), 20)
    result["live"] = cdp.evaluate(sid, "document.getElementById('live').textContent")
    result["dom"] = cdp.evaluate(sid, "document.documentElement.outerHTML")
    shot = cdp.send("Page.captureScreenshot", {"format": "png"}, sid)["data"]
    with open(shot_path, "wb") as f:
        f.write(base64.b64decode(shot))
    # The revoke button, clicked as a user does: the form posts, the answer sends the page
    # back to /ui/, and the live list drops the peer once its sessions are closed.
    button = json.dumps('form.revoke[data-peer="%s"] button' % peer)
    group = json.dumps('[data-peer="%s"]' % peer)
    cdp.events.clear()
    result["clicked"] = cdp.evaluate(
        sid, "(function () { var b = document.querySelector(%s);"
             " if (!b) return false; b.click(); return true; })()" % button)
    if result["clicked"]:
        cdp.wait_event("Page.loadEventFired")
        result["url_after"] = cdp.evaluate(sid, "location.href")
        result["gone"] = cdp.evaluate(sid, until(
            "Number(document.body.dataset.updates) >= 1 && !document.querySelector(%s)" % group,
            15000), 20)
        result["dom_after"] = cdp.evaluate(sid, "document.documentElement.outerHTML")
except Exception as e:
    log.flush()
    with open(log_path, "rb") as f:
        tail = f.read()[-3000:].decode(errors="replace")
    result["error"] = f"{type(e).__name__}: {e}\n--- chromium log ---\n{tail}"
finally:
    proc.kill()
    proc.wait()
    shutil.rmtree(work, ignore_errors=True)
print(json.dumps(result))
"#;
