//! The status page, `/ui/`: the node, its live sessions and its counters for an operator's
//! browser, server-rendered (no build step, nothing loaded from elsewhere: the CSS and the
//! little script are inline, allowed by a per-response CSP nonce).
//!
//! | route | what |
//! |---|---|
//! | `GET /ui/` | the page; `?token=alk_…` signs in instead (cookie, then 303 to `/ui/`) |
//! | `GET /ui/login`, `POST /ui/login` | a sign-in form for the token (`token=alk_…`) |
//! | `GET /ui/events` | Server-Sent Events: a `snapshot` per second (counters, sessions) |
//! | `POST /ui/revoke` | `peer=ID&csrf=…`: closes that peer's live sessions (`/node/disconnect`) |
//! | `POST /ui/logout` | forgets the session cookie |
//!
//! Credentials are the API's ([`Gateway::admit`]: a bearer token or a known client key, scope
//! `call`, one of the caller's request slots), plus scope `admin`. A browser cannot set an
//! `Authorization` header on a navigation, so the token is presented once and kept in a
//! cookie (`HttpOnly; Secure; SameSite=Strict; Path=/ui`) whose value is read as that
//! bearer token on every later request; the token itself is never written into a page.
//!
//! State-changing requests are POSTs that must be same-origin where the browser says
//! (`Sec-Fetch-Site`, else `Origin` against `Host`) and, for revoke, carry a CSRF token bound
//! to the caller and keyed by a random per-process secret (so it changes on restart and is
//! never stored).
//!
//! Not here: managing peers or tokens (the CLI does that), and anything a caller without
//! `admin` may see.

use crate::HttpSettings;
use crate::api::{Gateway, Request, Slot, call_error, error, error_json, event, sse_response};
use crate::auth::{Caller, authenticate};
use crate::body::Body;
use alknet_call::Invocation;
use alknet_core::identity::{hashes_equal, token_hash, token_prefix};
use alknet_core::{AuthContext, SessionInfo};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

/// The session cookie's name.
const COOKIE: &str = "alknet_ui";
/// The scope the page needs besides the API's `call`.
const ADMIN: &str = "admin";
/// Between two snapshots of the event stream.
const INTERVAL_MS: u32 = 1000;
/// Snapshots asked of `/node/stats` at a time (it sends at most 20 per call).
const SERIES: u32 = 20;
/// The longest one series may take ([`SERIES`] intervals and slack).
const SERIES_LIMIT: Duration = Duration::from_secs(60);
/// How long a revoke may take.
const REVOKE_LIMIT: Duration = Duration::from_secs(5);
/// The longest peer id a revoke form may name.
const MAX_PEER: usize = 256;

/// The counters the page shows, with their labels.
const COUNTERS: &[(&str, &str)] = &[
    ("connections_open", "connections open"),
    ("sessions", "sessions"),
    ("handshakes_accepted", "handshakes accepted"),
    ("auth_failures", "auth failures"),
    ("bytes_in", "bytes in"),
    ("bytes_out", "bytes out"),
    ("datagrams_in", "datagrams in"),
    ("datagrams_out", "datagrams out"),
];

/// Serves `/ui` and everything below it.
pub(crate) async fn serve(
    gate: Rc<Gateway>,
    req: Request,
    conn: &AuthContext,
    settings: &HttpSettings,
) -> Response<Body> {
    let mut resp = route(gate, req, conn, settings).await;
    harden(&mut resp);
    resp
}

async fn route(
    gate: Rc<Gateway>,
    req: Request,
    conn: &AuthContext,
    settings: &HttpSettings,
) -> Response<Body> {
    let html = wants_html(&req.headers);
    let get = req.method == Method::GET || req.method == Method::HEAD;
    let post = req.method == Method::POST;
    match req.path.as_str() {
        "/ui" | "/ui/" if get => {
            if let Some(token) = query_param(req.query.as_deref(), "token") {
                return login(&gate, &req.headers, &token, conn, settings, html, false);
            }
            if req.path == "/ui" {
                return see_other("/ui/", None);
            }
            page(&gate, &req, conn, settings, html)
        }
        "/ui/login" if get => login_page(StatusCode::OK, None),
        "/ui/login" if post => match form(&req, html) {
            Ok(f) => {
                let token = field(&f, "token").unwrap_or_default();
                login(&gate, &req.headers, token, conn, settings, html, true)
            }
            Err(r) => r,
        },
        "/ui/events" if get => events(gate, &req, conn, settings, html),
        "/ui/revoke" if post => revoke(&gate, &req, conn, settings, html).await,
        "/ui/logout" if post => {
            if cross_site(&req.headers) {
                return refuse(html, StatusCode::FORBIDDEN, "FORBIDDEN", CROSS_SITE);
            }
            see_other("/ui/login", Some(clear_cookie()))
        }
        "/ui" | "/ui/" | "/ui/login" | "/ui/events" => method_not_allowed(html, "GET"),
        "/ui/revoke" | "/ui/logout" => method_not_allowed(html, "POST"),
        _ => refuse(
            html,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such page; the status page is /ui/",
        ),
    }
}

const CROSS_SITE: &str = "refused: this request came from another site";

// ---- credentials ----

/// The session cookie's value, from any `Cookie` header (h2 may split them).
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == COOKIE).then(|| v.trim())
        })
}

/// The request's headers as [`Gateway::admit`] should read them: as they are when they carry
/// an `Authorization` header, else with the session cookie as the bearer token.
fn credential(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Cow::Borrowed(headers);
    }
    match session_cookie(headers).and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        Some(v) => {
            let mut h = headers.clone();
            h.insert(header::AUTHORIZATION, v);
            Cow::Owned(h)
        }
        None => Cow::Borrowed(headers),
    }
}

/// Authenticates as the API does and requires `admin`. A refused session cookie is cleared,
/// so the browser lands on the sign-in form instead of failing again.
fn admit_admin(
    gate: &Gateway,
    headers: &HeaderMap,
    conn: &AuthContext,
    settings: &HttpSettings,
    html: bool,
) -> Result<(Caller, Slot), Response<Body>> {
    let from_cookie =
        !headers.contains_key(header::AUTHORIZATION) && session_cookie(headers).is_some();
    let (caller, slot) = gate
        .admit(&credential(headers), conn, settings)
        .map_err(|r| {
            let stale = from_cookie && r.status() == StatusCode::UNAUTHORIZED;
            let mut r = htmlize(r, html);
            if stale && let Ok(v) = HeaderValue::from_str(&clear_cookie()) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        })?;
    require_admin(&caller, html)?;
    Ok((caller, slot))
}

fn require_admin(caller: &Caller, html: bool) -> Result<(), Response<Body>> {
    if caller.auth.has_scope(ADMIN) {
        return Ok(());
    }
    let who = caller
        .auth
        .identity
        .as_ref()
        .map_or("the caller", |i| i.id.as_str());
    let token = if caller.token.is_some() {
        " (in this token)"
    } else {
        ""
    };
    Err(refuse(
        html,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        &format!("{who} lacks scope `admin`{token}; the status page is for operators"),
    ))
}

/// Signs in with `token` (from `?token=` or the login form): checked as every request is,
/// then kept in the session cookie, and the browser sent to `/ui/` without it in the URL.
fn login(
    gate: &Gateway,
    headers: &HeaderMap,
    token: &str,
    conn: &AuthContext,
    settings: &HttpSettings,
    html: bool,
    post: bool,
) -> Response<Body> {
    // A link on another site must not sign the browser in (as whoever made the link).
    let refused = if post {
        cross_site(headers)
    } else {
        fetch_site(headers) == Some("cross-site")
    };
    if refused {
        return refuse(
            html,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "refused: sign in from this node's own /ui/login page, or paste the link into the address bar",
        );
    }
    let token = token.trim();
    if token.is_empty() {
        return login_page(StatusCode::UNAUTHORIZED, Some("paste a token to sign in"));
    }
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("that is not a token: `alknet token create PEER --scope call --scope admin`"),
        );
    };
    let mut h = headers.clone();
    h.insert(header::AUTHORIZATION, value);
    let (caller, _slot) = match gate.admit(&h, conn, settings) {
        Ok(c) => c,
        Err(r) => return htmlize(r, html),
    };
    if let Err(r) = require_admin(&caller, html) {
        return r;
    }
    // Only the token shape goes into a cookie: `alk_` and hex, nothing a header could split on.
    if token_prefix(token).is_none() {
        return login_page(StatusCode::UNAUTHORIZED, Some("that is not a token"));
    }
    see_other(
        "/ui/",
        Some(format!(
            "{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/ui"
        )),
    )
}

fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age=0")
}

// ---- cross-site requests ----

fn fetch_site(headers: &HeaderMap) -> Option<&str> {
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
}

/// Whether a POST comes from another origin, as far as the browser tells: `Sec-Fetch-Site`
/// (every current browser sends it) must be `same-origin`; without it, an `Origin` must be
/// this host's over https (an `Origin` with no `Host` to compare, as over h2, is refused).
/// A request with neither is no browser's cross-site form (curl, scripts): the CSRF token
/// and the `SameSite=Strict` cookie still decide.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() != b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(&format!("https://{h}")),
        _ => true,
    }
}

/// The per-process secret the CSRF tokens are keyed with.
fn secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw[..]);
        hex::encode(raw)
    })
}

/// The CSRF token of a caller (`Caller::key`: its token's prefix or its peer), keyed by
/// `secret`: SHA-256(secret, SHA-256(secret, caller)), the nesting keeping it a keyed hash
/// that no length extension reaches. An attacker's page can neither read it (same-origin
/// policy) nor compute it (the secret never leaves the process).
fn csrf_mac(secret: &str, caller: &str) -> [u8; 32] {
    let inner = token_hash(&format!("{secret}\ncsrf\n{caller}"));
    token_hash(&format!("{secret}\n{}", hex::encode(inner)))
}

fn csrf_token(secret: &str, caller: &str) -> String {
    hex::encode(csrf_mac(secret, caller))
}

/// Whether `presented` is the caller's CSRF token (compared without an early exit).
fn csrf_ok(secret: &str, caller: &str, presented: &str) -> bool {
    let mut got = [0u8; 32];
    hex::decode_to_slice(presented.trim(), &mut got).is_ok()
        && hashes_equal(&csrf_mac(secret, caller), &got)
}

// ---- forms and queries ----

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The fields of a `application/x-www-form-urlencoded` body.
fn form(req: &Request, html: bool) -> Result<Vec<(String, String)>, Response<Body>> {
    if !crate::api::media_type(&req.headers)
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(refuse(
            html,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the form as Content-Type: application/x-www-form-urlencoded",
        ));
    }
    Ok(form_urlencoded::parse(&req.body).into_owned().collect())
}

/// A form field's first value.
fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

// ---- the routes ----

fn page(
    gate: &Gateway,
    req: &Request,
    conn: &AuthContext,
    settings: &HttpSettings,
    html: bool,
) -> Response<Body> {
    let (caller, _slot) = match admit_admin(gate, &req.headers, conn, settings, html) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut stats = serde_json::to_value(gate.node.stats()).unwrap_or(Value::Null);
    let sessions = gate.node.sessions();
    if let Some(m) = stats.as_object_mut() {
        m.insert("sessions".into(), sessions.len().into());
    }
    let view = View {
        fingerprint: gate.node.fingerprint().to_string(),
        version: env!("CARGO_PKG_VERSION"),
        alpns: gate
            .node
            .alpns()
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        workers: gate.node.workers(),
        uptime_secs: gate.node.started().elapsed().as_secs(),
        who: caller
            .auth
            .identity
            .as_ref()
            .map_or_else(String::new, |i| i.id.clone()),
        csrf: csrf_token(secret(), &caller.key),
        stats,
        sessions,
        now_unix: now_unix(),
    };
    html_response(
        StatusCode::OK,
        "alknet · status",
        &render_page(&view),
        Some(SCRIPT),
    )
}

/// The event stream: a `snapshot` per [`INTERVAL_MS`] from `/node/stats`, with the sessions
/// (their HTML only when they changed). `/node/stats` sends series of at most [`SERIES`]
/// snapshots; the stream asks for the next when one ends. It ends (`end`) when the caller's
/// credential stops holding `admin`, checked at every snapshot, so a revoked token's open page
/// goes quiet.
fn events(
    gate: Rc<Gateway>,
    req: &Request,
    conn: &AuthContext,
    settings: &HttpSettings,
    html: bool,
) -> Response<Body> {
    let (caller, slot) = match admit_admin(&gate, &req.headers, conn, settings, html) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let inv = match series(&gate, &caller.auth) {
        Ok(inv) => inv,
        Err(e) => return htmlize(call_error(&e), html),
    };
    let feed = Feed {
        inv,
        csrf: csrf_token(secret(), &caller.key),
        authorization: credential(&req.headers).get(header::AUTHORIZATION).cloned(),
        conn: conn.clone(),
        auth: caller.auth,
        gate,
        last_sessions: None,
        done: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(feed, |mut st| async move {
        if st.done {
            return None;
        }
        let chunk = loop {
            match st.inv.next().await {
                Some(Ok(stats)) if st.still_admin() => break st.snapshot(stats),
                Some(Ok(_)) => {
                    st.done = true;
                    break event(
                        "end",
                        &json!({"reason": "the credential no longer holds `admin`"}),
                    );
                }
                Some(Err(e)) => {
                    st.done = true;
                    break event("failed", &json!({"error": error_json(&e)}));
                }
                None => {
                    monoio::time::sleep(Duration::from_millis(INTERVAL_MS.into())).await;
                    match series(&st.gate, &st.auth) {
                        Ok(inv) => st.inv = inv,
                        Err(e) => {
                            st.done = true;
                            break event("failed", &json!({"error": error_json(&e)}));
                        }
                    }
                }
            }
        };
        Some((chunk, st))
    });
    sse_response(Body::Stream(Box::pin(stream)))
}

/// One series of `/node/stats` snapshots.
fn series(gate: &Gateway, auth: &AuthContext) -> Result<Invocation, alknet_call::CallError> {
    gate.ops.invoke(
        "/node/stats",
        auth.clone(),
        json!({"interval_ms": INTERVAL_MS, "count": SERIES}),
        SERIES_LIMIT,
    )
}

struct Feed {
    inv: Invocation,
    gate: Rc<Gateway>,
    /// What the operations see (the caller as admitted).
    auth: AuthContext,
    csrf: String,
    /// The credential, checked again at every snapshot.
    authorization: Option<HeaderValue>,
    conn: AuthContext,
    last_sessions: Option<Value>,
    done: bool,
    _slot: Slot,
}

impl Feed {
    fn still_admin(&self) -> bool {
        authenticate(
            &self.gate.identities,
            self.authorization.as_ref().map(HeaderValue::as_bytes),
            &self.conn,
        )
        .is_ok_and(|c| c.auth.has_scope(ADMIN))
    }

    fn snapshot(&mut self, stats: Value) -> Bytes {
        let sessions = self.gate.node.sessions();
        let now = now_unix();
        let listed = serde_json::to_value(&sessions).unwrap_or(Value::Null);
        let mut out = json!({
            "now_unix": now,
            "uptime": duration_text(stats["uptime_secs"].as_u64().unwrap_or(0)),
            "counters": counters_json(&stats),
            "stats": stats,
            "sessions": listed,
        });
        if self.last_sessions.as_ref() != Some(&out["sessions"]) {
            out["sessions_html"] = render_sessions(&sessions, &self.csrf, now).into();
            self.last_sessions = Some(out["sessions"].clone());
        }
        event("snapshot", &out)
    }
}

async fn revoke(
    gate: &Gateway,
    req: &Request,
    conn: &AuthContext,
    settings: &HttpSettings,
    html: bool,
) -> Response<Body> {
    if cross_site(&req.headers) {
        return refuse(html, StatusCode::FORBIDDEN, "FORBIDDEN", CROSS_SITE);
    }
    let (caller, _slot) = match admit_admin(gate, &req.headers, conn, settings, html) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let f = match form(req, html) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !field(&f, "csrf").is_some_and(|t| csrf_ok(secret(), &caller.key, t)) {
        return refuse(
            html,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "missing or wrong CSRF token: reload the status page and try again",
        );
    }
    let peer = field(&f, "peer").unwrap_or_default();
    if peer.is_empty() || peer.len() > MAX_PEER {
        return refuse(
            html,
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the form needs the `peer` whose sessions to close",
        );
    }
    let outcome = match gate.ops.invoke(
        "/node/disconnect",
        caller.auth.clone(),
        json!({"peer": peer}),
        REVOKE_LIMIT,
    ) {
        Ok(mut inv) => inv.next().await,
        Err(e) => Some(Err(e)),
    };
    match outcome {
        Some(Ok(_)) => see_other("/ui/", None),
        Some(Err(e)) => htmlize(call_error(&e), html),
        None => refuse(
            html,
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "/node/disconnect answered nothing",
        ),
    }
}

// ---- responses ----

/// Whether the client reads HTML (a browser navigating), rather than JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// A refusal: an HTML page for a browser, the API's JSON error otherwise.
fn refuse(html: bool, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let r = error(status, code, message);
    if html { htmlize(r, true) } else { r }
}

fn method_not_allowed(html: bool, allow: &'static str) -> Response<Body> {
    let mut r = refuse(
        html,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        &format!("this page takes {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The API's JSON error `r` as an HTML page (same status; `WWW-Authenticate` and
/// `Retry-After` kept), with the sign-in form on a 401. As it is when `html` is false.
fn htmlize(r: Response<Body>, html: bool) -> Response<Body> {
    if !html {
        return r;
    }
    let status = r.status();
    let message = match r.body() {
        Body::Full(Some(b)) => serde_json::from_slice::<Value>(b).ok().and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }),
        _ => None,
    }
    .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_owned());
    let mut page = if status == StatusCode::UNAUTHORIZED {
        login_page(status, Some(&message))
    } else {
        let body = format!(
            "<main><section><h2>{} {}</h2><p class=\"msg\">{}</p><p><a href=\"/ui/\">back to the status page</a></p></section></main>",
            status.as_u16(),
            escape_html(status.canonical_reason().unwrap_or("")),
            escape_html(&message)
        );
        html_response(status, "alknet · refused", &body, None)
    };
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(v) = r.headers().get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response<Body> {
    let mut body = String::from("<main><section class=\"login\"><h2>Sign in</h2>");
    if let Some(m) = message {
        let _ = write!(body, "<p class=\"msg\">{}</p>", escape_html(m));
    }
    body.push_str(
        "<p>Paste an API token of a peer with scopes <code>call</code> and <code>admin</code> \
         (<code>alknet token create PEER --scope call --scope admin</code>).</p>\
         <form method=\"post\" action=\"/ui/login\">\
         <input type=\"password\" name=\"token\" autocomplete=\"off\" placeholder=\"alk_…\" required>\
         <button type=\"submit\">sign in</button></form></section></main>",
    );
    html_response(status, "alknet · sign in", &body, None)
}

fn see_other(location: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static(location));
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

/// An HTML page: `body` (already escaped) in the shell, with the stylesheet and `script`
/// allowed by a nonce of this response only (no `unsafe-inline`: markup that escaped the
/// escaping still runs no script).
fn html_response(
    status: StatusCode,
    title: &str,
    body: &str,
    script: Option<&str>,
) -> Response<Body> {
    let mut raw = [0u8; 16];
    rand::fill(&mut raw[..]);
    let nonce = hex::encode(raw);
    let mut page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style nonce=\"{nonce}\">{STYLE}</style></head>\n<body data-updates=\"0\">\n{body}\n",
        escape_html(title)
    );
    if let Some(s) = script {
        let _ = writeln!(page, "<script nonce=\"{nonce}\">{s}</script>");
    }
    page.push_str("</body></html>\n");
    let mut r = Response::new(Body::full(page));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// The headers every `/ui` response carries: nothing cached (the pages hold session data),
/// no referrer (a `?token=` URL must not leak), no sniffing, no framing.
fn harden(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
}

// ---- rendering ----

/// `s` safe as HTML text and as a double- or single-quoted attribute value.
pub(crate) fn escape_html(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `3d 4h`, `2h 5m`, `5m 12s`, `42s`: two units at most.
fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// A counter as the page shows it: bytes in binary units, counts with thousands separated.
fn counter_text(name: &str, v: u64) -> String {
    if name.starts_with("bytes_") {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if v < 1024 {
            return format!("{v} B");
        }
        let mut x = v as f64 / 1024.0;
        let mut unit = 0;
        while x >= 1024.0 && unit + 1 < UNITS.len() {
            x /= 1024.0;
            unit += 1;
        }
        return format!("{x:.1} {}", UNITS[unit]);
    }
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The shown counters of a `/node/stats` snapshot, as text by name.
fn counters_json(stats: &Value) -> Value {
    let m: serde_json::Map<String, Value> = COUNTERS
        .iter()
        .map(|(name, _)| {
            let v = stats[*name].as_u64().unwrap_or(0);
            ((*name).to_owned(), counter_text(name, v).into())
        })
        .collect();
    Value::Object(m)
}

/// What the page shows.
struct View {
    fingerprint: String,
    version: &'static str,
    alpns: Vec<String>,
    workers: usize,
    uptime_secs: u64,
    /// The signed-in peer.
    who: String,
    csrf: String,
    /// A `/node/stats` snapshot (with `sessions`).
    stats: Value,
    sessions: Vec<SessionInfo>,
    now_unix: u64,
}

fn render_page(v: &View) -> String {
    let mut o = String::with_capacity(8192);
    let _ = write!(
        o,
        "<header><h1>alknet</h1><span id=\"live\" class=\"off\">connecting…</span>\
         <span class=\"who\">signed in as <b>{}</b></span>\
         <form method=\"post\" action=\"/ui/logout\"><button type=\"submit\" class=\"quiet\">sign out</button></form></header>\n<main>\n",
        escape_html(&v.who)
    );
    let _ = write!(
        o,
        "<section id=\"node\"><h2>Node</h2><dl>\
         <dt>fingerprint</dt><dd><code id=\"fingerprint\">{}</code></dd>\
         <dt>version</dt><dd>{}</dd><dt>workers</dt><dd>{}</dd>\
         <dt>uptime</dt><dd id=\"uptime\">{}</dd><dt>services</dt><dd><ul class=\"alpns\">",
        escape_html(&v.fingerprint),
        escape_html(v.version),
        v.workers,
        duration_text(v.uptime_secs),
    );
    for a in &v.alpns {
        let _ = write!(o, "<li>{}</li>", escape_html(a));
    }
    o.push_str(
        "</ul></dd></dl></section>\n<section id=\"counters\"><h2>Counters</h2><div class=\"grid\">",
    );
    for (name, label) in COUNTERS {
        let value = v.stats[*name].as_u64().unwrap_or(0);
        let _ = write!(
            o,
            "<div class=\"card\"><span class=\"label\">{label}</span><span class=\"value\" data-counter=\"{name}\">{}</span></div>",
            counter_text(name, value)
        );
    }
    let _ = write!(
        o,
        "</div></section>\n<section><h2>Sessions <span id=\"session-count\" class=\"count\">{}</span></h2><div id=\"sessions\">{}</div></section>\n</main>",
        v.sessions.len(),
        render_sessions(&v.sessions, &v.csrf, v.now_unix)
    );
    o
}

/// The live sessions by peer, then service and age; a revoke form per peer (but not for
/// anonymous services' sessions, which have no peer to close).
fn render_sessions(sessions: &[SessionInfo], csrf: &str, now_unix: u64) -> String {
    if sessions.is_empty() {
        return "<p class=\"empty\">No live sessions.</p>".into();
    }
    let mut by_peer: BTreeMap<&str, Vec<&SessionInfo>> = BTreeMap::new();
    for s in sessions {
        by_peer.entry(s.peer.as_str()).or_default().push(s);
    }
    let mut o = String::new();
    for (peer, mut list) in by_peer {
        list.sort_by(|a, b| {
            (a.alpn.as_str(), a.since_unix, a.remote.as_str()).cmp(&(
                b.alpn.as_str(),
                b.since_unix,
                b.remote.as_str(),
            ))
        });
        let p = escape_html(peer);
        let _ = write!(
            o,
            "<div class=\"peer\" data-peer=\"{p}\"><div class=\"peer-head\"><h3>{p}</h3><span class=\"count\">{} session{}</span>",
            list.len(),
            if list.len() == 1 { "" } else { "s" }
        );
        if peer != "anonymous" {
            let _ = write!(
                o,
                "<form class=\"revoke\" method=\"post\" action=\"/ui/revoke\" data-peer=\"{p}\">\
                 <input type=\"hidden\" name=\"peer\" value=\"{p}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\" title=\"close every live session of {p} (it may connect again; revoke its key with `alknet peer revoke`)\">revoke</button></form>",
                escape_html(csrf)
            );
        }
        o.push_str(
            "</div><table><thead><tr><th>service</th><th>remote</th><th>connected</th><th>MTU</th><th>shard</th></tr></thead><tbody>",
        );
        for s in list {
            let moved = if !s.handshake_remote.is_empty() && s.handshake_remote != s.remote {
                format!(
                    " <span class=\"moved-from\">(from {})</span>",
                    escape_html(&s.handshake_remote)
                )
            } else {
                String::new()
            };
            let _ = write!(
                o,
                "<tr><td class=\"alpn\">{}</td><td><code>{}</code>{moved}</td>\
                 <td><span data-since=\"{}\">{}</span> ago</td><td>{}</td><td>{}</td></tr>",
                escape_html(&s.alpn),
                escape_html(&s.remote),
                s.since_unix,
                duration_text(now_unix.saturating_sub(s.since_unix)),
                s.mtu,
                s.shard,
            );
        }
        o.push_str("</tbody></table></div>");
    }
    o
}

const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#f6f7f9;--fg:#1c2024;--mute:#677079;--card:#fff;--line:#dde1e6;--accent:#2f6fde;--warn:#c2362b}\
@media (prefers-color-scheme:dark){:root{--bg:#15181c;--fg:#e4e7eb;--mute:#9aa3ad;--card:#1e2227;--line:#30363d;--accent:#6ea0ff;--warn:#ff7b72}}\
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,sans-serif;background:var(--bg);color:var(--fg)}\
header{display:flex;align-items:center;gap:1rem;padding:.7rem 1.5rem;background:var(--card);border-bottom:1px solid var(--line)}\
header h1{font-size:1.15rem;margin:0}header .who{margin-left:auto;color:var(--mute)}header form{margin:0}\
#live{font-size:.8rem;padding:.1rem .55rem;border-radius:1rem;border:1px solid var(--line);color:var(--mute)}\
#live.on{color:#1a7f37;border-color:#1a7f37}\
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem 3rem}\
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.8rem 1.1rem;margin:1rem 0}\
h2{font-size:1rem;margin:.2rem 0 .7rem}h3{font-size:.95rem;margin:0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.2rem;margin:0}dt{color:var(--mute)}dd{margin:0}\
code{font:12.5px ui-monospace,monospace;overflow-wrap:anywhere}\
ul.alpns{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.35rem}\
ul.alpns li{font:12px ui-monospace,monospace;border:1px solid var(--line);border-radius:4px;padding:0 .4rem}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.6rem}\
.card{border:1px solid var(--line);border-radius:6px;padding:.5rem .7rem;display:flex;flex-direction:column}\
.card .label{color:var(--mute);font-size:.8rem}.card .value{font-size:1.25rem;font-variant-numeric:tabular-nums;transition:color .6s}\
.card .value.moved{color:var(--accent);transition:none}\
.count{color:var(--mute);font-weight:normal;font-size:.85rem}\
.peer{border-top:1px solid var(--line);padding:.6rem 0}.peer:first-child{border-top:0}\
.peer-head{display:flex;align-items:center;gap:.8rem;margin-bottom:.4rem}.peer-head form{margin:0 0 0 auto}\
table{width:100%;border-collapse:collapse}th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid var(--line)}\
th{color:var(--mute);font-weight:normal;font-size:.8rem}td.alpn{font-family:ui-monospace,monospace}\
.moved-from{color:var(--mute);font-size:.8rem}.empty,.msg{color:var(--mute)}\
button{font:inherit;padding:.2rem .8rem;border-radius:5px;border:1px solid var(--warn);background:transparent;color:var(--warn);cursor:pointer}\
button:hover{background:var(--warn);color:#fff}button.quiet{border-color:var(--line);color:var(--mute)}\
button.quiet:hover{background:var(--line);color:var(--fg)}\
.login{max-width:520px;margin:3rem auto}.login input{font:inherit;width:100%;padding:.4rem;margin:.4rem 0 .8rem;border:1px solid var(--line);border-radius:5px;background:var(--bg);color:var(--fg)}\
.login button{border-color:var(--accent);color:var(--accent)}.login button:hover{background:var(--accent);color:#fff}";

/// Applies each `snapshot` of `/ui/events` to the page; `data-updates` on `<body>` counts them.
const SCRIPT: &str = r#"'use strict';
(function () {
  var live = document.getElementById('live');
  var updates = 0;
  function ago(s) {
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + m + 'm';
    if (m > 0) return m + 'm ' + (s % 60) + 's';
    return s + 's';
  }
  var es = new EventSource('/ui/events');
  es.addEventListener('snapshot', function (e) {
    var d = JSON.parse(e.data);
    document.querySelectorAll('[data-counter]').forEach(function (el) {
      var t = d.counters[el.dataset.counter];
      if (typeof t === 'string' && el.textContent !== t) {
        el.textContent = t;
        el.classList.remove('moved');
        void el.offsetWidth;
        el.classList.add('moved');
        setTimeout(function () { el.classList.remove('moved'); }, 50);
      }
    });
    document.getElementById('uptime').textContent = d.uptime;
    if (typeof d.sessions_html === 'string') {
      document.getElementById('sessions').innerHTML = d.sessions_html;
    }
    document.getElementById('session-count').textContent = String(d.sessions.length);
    document.querySelectorAll('[data-since]').forEach(function (el) {
      el.textContent = ago(Math.max(0, d.now_unix - Number(el.dataset.since)));
    });
    updates += 1;
    document.body.dataset.updates = String(updates);
    live.textContent = 'live';
    live.className = 'on';
  });
  es.addEventListener('end', function () {
    es.close();
    live.textContent = 'ended: reload the page';
    live.className = 'off';
  });
  es.onerror = function () {
    live.textContent = es.readyState === EventSource.CLOSED ? 'disconnected: reload the page' : 'reconnecting…';
    live.className = 'off';
  };
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_html_covers_markup_and_both_quotes() {
        assert_eq!(escape_html("ada"), "ada");
        assert!(matches!(escape_html("plain text"), Cow::Borrowed(_)));
        assert_eq!(
            escape_html(r#"<img src=x onerror="alert('1')">&amp;"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;amp;"
        );
        assert_eq!(escape_html("ü→\u{0}"), "ü→\u{0}");
    }

    fn session(peer: &str, alpn: &str, since: u64) -> SessionInfo {
        SessionInfo {
            peer: peer.into(),
            alpn: alpn.into(),
            remote: "127.0.0.1:4000".into(),
            handshake_remote: "127.0.0.1:4000".into(),
            since_unix: since,
            mtu: 1452,
            shard: 1,
        }
    }

    #[test]
    fn sessions_are_grouped_by_peer_then_service_and_escaped() {
        let evil = "<script>alert(1)</script>";
        let list = [
            session("zed", "alknet/ssh", 10),
            session(evil, "x\"y", 10),
            session("ada", "alknet/tunnel", 5),
            session("ada", "alknet/echo", 9),
            session("anonymous", "perf", 1),
        ];
        let html = render_sessions(&list, "c0ffee", 20);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("x&quot;y"));
        let at = |s: &str| html.find(s).unwrap_or_else(|| panic!("{s} in {html}"));
        // Peers in id order ('<' before letters), services in order within a peer.
        assert!(at("data-peer=\"&lt;script") < at("data-peer=\"ada\""));
        assert!(at("data-peer=\"ada\"") < at("data-peer=\"anonymous\""));
        assert!(at("data-peer=\"anonymous\"") < at("data-peer=\"zed\""));
        assert!(at("alknet/echo") < at("alknet/tunnel"));
        assert!(html.contains("2 sessions"));
        assert!(html.contains("<span data-since=\"9\">11s</span>"));
        // A revoke form per named peer, none for anonymous sessions.
        assert_eq!(html.matches("<form class=\"revoke\"").count(), 3);
        assert!(!html.contains("action=\"/ui/revoke\" data-peer=\"anonymous\""));
        assert!(html.contains("name=\"csrf\" value=\"c0ffee\""));
        assert_eq!(
            render_sessions(&[], "c", 0),
            "<p class=\"empty\">No live sessions.</p>"
        );
    }

    #[test]
    fn the_page_escapes_what_the_node_reports() {
        let view = View {
            fingerprint: "ed25519:00ff".into(),
            version: "1.2.3",
            alpns: vec!["alknet/echo".into(), "<b>".into()],
            workers: 2,
            uptime_secs: 3725,
            who: "o'hara".into(),
            csrf: "ab".into(),
            stats: json!({"bytes_in": 2048, "connections_open": 1234567, "sessions": 0}),
            sessions: vec![],
            now_unix: 0,
        };
        let html = render_page(&view);
        assert!(html.contains("<code id=\"fingerprint\">ed25519:00ff</code>"));
        assert!(html.contains("<li>&lt;b&gt;</li>") && !html.contains("<b>&"));
        assert!(html.contains("o&#39;hara"));
        assert!(html.contains("<dd id=\"uptime\">1h 2m</dd>"));
        assert!(html.contains("data-counter=\"bytes_in\">2.0 KiB<"));
        assert!(html.contains("data-counter=\"connections_open\">1,234,567<"));
        assert!(html.contains("data-counter=\"datagrams_out\">0<"));
    }

    #[test]
    fn counters_and_durations_read_well() {
        assert_eq!(counter_text("bytes_in", 0), "0 B");
        assert_eq!(counter_text("bytes_in", 1023), "1023 B");
        assert_eq!(counter_text("bytes_out", 3 << 20), "3.0 MiB");
        assert_eq!(counter_text("sessions", 999), "999");
        assert_eq!(counter_text("sessions", 1000), "1,000");
        assert_eq!(
            counter_text("sessions", u64::MAX),
            "18,446,744,073,709,551,615"
        );
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(61), "1m 1s");
        assert_eq!(duration_text(7200), "2h 0m");
        assert_eq!(duration_text(90_061), "1d 1h");
        let c = counters_json(&json!({"bytes_in": 1, "sessions": 2}));
        assert_eq!(c["bytes_in"], "1 B");
        assert_eq!(c["sessions"], "2");
        assert_eq!(c["auth_failures"], "0");
    }

    #[test]
    fn csrf_tokens_are_per_caller_and_per_secret() {
        let t = csrf_token("s1", "token:abcd1234");
        assert_eq!(t.len(), 64);
        assert_eq!(t, csrf_token("s1", "token:abcd1234"));
        assert!(csrf_ok("s1", "token:abcd1234", &t));
        assert!(!csrf_ok("s1", "token:ffff0000", &t));
        assert!(!csrf_ok("s2", "token:abcd1234", &t));
        for bad in ["", "zz", &t[..62], &format!("{t}00")] {
            assert!(!csrf_ok("s1", "token:abcd1234", bad), "{bad}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_session_cookie_is_read_as_the_bearer_token() {
        let h = headers(&[
            ("cookie", "a=1; alknet_uix=no"),
            ("cookie", "b=2 ;  alknet_ui=alk_0123 ; c=3"),
        ]);
        assert_eq!(session_cookie(&h), Some("alk_0123"));
        assert_eq!(
            credential(&h).get(header::AUTHORIZATION).unwrap(),
            "Bearer alk_0123"
        );
        // An Authorization header wins over the cookie.
        let h = headers(&[
            ("cookie", "alknet_ui=alk_0123"),
            ("authorization", "Bearer alk_ffff"),
        ]);
        assert_eq!(
            credential(&h).get(header::AUTHORIZATION).unwrap(),
            "Bearer alk_ffff"
        );
        let h = headers(&[("cookie", "other=alknet_ui")]);
        assert_eq!(session_cookie(&h), None);
        assert!(credential(&h).get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        assert!(!cross_site(&headers(&[])), "curl and scripts send neither");
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        for site in ["same-site", "cross-site", "none"] {
            assert!(cross_site(&headers(&[("sec-fetch-site", site)])), "{site}");
        }
        let same = headers(&[("origin", "https://node:4433"), ("host", "node:4433")]);
        assert!(!cross_site(&same));
        let other = headers(&[("origin", "https://evil.example"), ("host", "node:4433")]);
        assert!(cross_site(&other));
        assert!(cross_site(&headers(&[
            ("origin", "null"),
            ("host", "node")
        ])));
        assert!(cross_site(&headers(&[("origin", "https://node")])));
        // The browser's word wins over an Origin that would match.
        let h = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://node"),
            ("host", "node"),
        ]);
        assert!(cross_site(&h));
    }

    #[test]
    fn queries_and_forms_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&token=alk_%61b&token=x"), "token").as_deref(),
            Some("alk_ab")
        );
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
        let f: Vec<(String, String)> = form_urlencoded::parse(b"peer=a+b%26c&csrf=00&peer=z")
            .into_owned()
            .collect();
        assert_eq!(field(&f, "peer"), Some("a b&c"));
        assert_eq!(field(&f, "csrf"), Some("00"));
        assert_eq!(field(&f, "nope"), None);
    }
}
