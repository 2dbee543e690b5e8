//! The routes, for any transport: a request (its head and its body, already read within
//! `max_body`) in, a response out.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}`, no credentials |
//! | `GET /api/operations` | the operations the caller may call |
//! | `GET /api/operations/{id}` | one operation's schemas |
//! | `POST /api/call/{id}` | calls it with the JSON body as input; the output as JSON (a streaming operation's results as an array) |
//! | `POST /api/batch` | `{"calls":[{"id":…,"input":…},…]}`, run together, answered in order |
//! | `GET /api/subscribe/{id}?input=JSON` | the results as Server-Sent Events; closing the stream aborts the call |
//! | `GET /openapi.json` | OpenAPI 3.1 from the registry |
//! | `GET /api/ws` | the `alknet/call` frames over a WebSocket (HTTP/1.1; [`crate::ws`]) |
//! | `/mcp` | MCP, streamable HTTP ([`crate::mcp`]) |
//! | `/ui/` | the status page, scope `admin` ([`crate::ui`]) |
//! | `/dns-query`, `/<z32>` | DoH and the pkarr relay, when the DNS service is on (`crate::dns`) |
//!
//! `{id}` is the operation id without its leading `/` (`node/info` for `/node/info`).
//! Errors are `{"error":{"code":…,"message":…,"retryable":…}}` with the status of the code:
//! `NOT_FOUND` 404, `FORBIDDEN` 403, `INVALID_INPUT` 422, `TIMEOUT` 504, `UNAVAILABLE` 503,
//! `INTERNAL` 500; the gateway's own: `UNAUTHENTICATED` 401, `RATE_LIMITED` 429,
//! `PAYLOAD_TOO_LARGE` 413, `BAD_REQUEST` 400, `UNSUPPORTED_MEDIA_TYPE` 415,
//! `METHOD_NOT_ALLOWED` 405.

use crate::HttpSettings;
use crate::auth::{Caller, Denied, authenticate};
use crate::body::Body;
use alknet_call::{CallError, ErrorCode, Invocation, Operations};
use alknet_core::service::{AuthFailures, ConfigWatch, Drain, NodeFacts, Spawner};
use alknet_core::{AuthContext, IdentityProvider};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Calls one batch may hold.
pub(crate) const MAX_BATCH: usize = 64;
/// Results a streaming operation may return to `POST /api/call` (SSE has no cap).
pub(crate) const MAX_COLLECTED: usize = 1024;
/// The longest a subscription runs.
const SUBSCRIPTION_LIMIT: Duration = Duration::from_secs(86_400);
/// Comment line sent on an idle event stream, so proxies and clients keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// State shared by every shard's gateway.
#[derive(Default)]
pub(crate) struct Shared {
    inflight: Mutex<HashMap<String, u32>>,
    pub(crate) mcp: crate::mcp::Sessions,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One request slot of a caller; given back on drop.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = lock(&self.shared.inflight);
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// The gateway of one shard.
pub(crate) struct Gateway {
    pub(crate) ops: Operations,
    pub(crate) identities: Arc<dyn IdentityProvider>,
    pub(crate) failures: AuthFailures,
    pub(crate) node: Arc<NodeFacts>,
    pub(crate) settings: ConfigWatch<HttpSettings>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) spawner: Spawner,
    pub(crate) drain: Drain,
    /// The node's DNS, for DoH and the pkarr relay ([`crate::dns`]).
    #[cfg(feature = "dns")]
    pub(crate) dns: Option<alknet_dns::Dns>,
}

/// A request as every transport hands it over.
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// Where a WebSocket upgrade is handed to the connection (HTTP/1.1 only).
    pub(crate) upgrade: Option<crate::ws::Pending>,
}

/// An error response.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let retryable = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    );
    json_response(
        status,
        &json!({"error": {"code": code, "message": message, "retryable": retryable}}),
    )
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The HTTP status of a call error code.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn error_json(e: &CallError) -> Value {
    let mut v = json!({"code": e.code.as_str(), "message": e.message, "retryable": e.retryable});
    if let (Some(d), Some(m)) = (&e.details, v.as_object_mut()) {
        m.insert("details".into(), d.clone());
    }
    v
}

pub(crate) fn call_error(e: &CallError) -> Response<Body> {
    json_response(status_of(e.code), &json!({"error": error_json(e)}))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        &format!("this route takes {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The operation id of a path tail: `node/info` → `/node/info`.
fn op_id(tail: &str) -> String {
    format!("/{tail}")
}

impl Gateway {
    /// Serves one request; `conn` is what the connection proved.
    pub(crate) async fn serve(self: Rc<Self>, req: Request, conn: &AuthContext) -> Response<Body> {
        let head = req.method == Method::HEAD;
        let mut resp = self.serve_any(req, conn).await;
        if head {
            // The headers of the GET, its length, no body.
            if let Body::Full(Some(b)) = resp.body() {
                let len = HeaderValue::from(b.len());
                resp.headers_mut().insert(header::CONTENT_LENGTH, len);
            }
            *resp.body_mut() = Body::empty();
        }
        resp
    }

    async fn serve_any(self: Rc<Self>, mut req: Request, conn: &AuthContext) -> Response<Body> {
        if req.method == Method::HEAD {
            req.method = Method::GET;
        }
        let settings = self.settings.current();
        let origin = req.headers.get(header::ORIGIN).cloned();
        let cors = origin
            .as_ref()
            .and_then(|o| o.to_str().ok())
            .filter(|o| {
                settings
                    .cors_origins
                    .iter()
                    .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
            })
            .map(str::to_owned);
        let mut resp = if req.method == Method::OPTIONS {
            match &cors {
                Some(_) => {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    let h = r.headers_mut();
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
                    );
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        HeaderValue::from_static(
                            "authorization, content-type, mcp-session-id, mcp-protocol-version, last-event-id",
                        ),
                    );
                    h.insert(
                        header::ACCESS_CONTROL_MAX_AGE,
                        HeaderValue::from_static("600"),
                    );
                    r
                }
                None if origin.is_some() => error(
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN",
                    "cross-origin requests from this origin are not allowed (cors_origins under [services.http])",
                ),
                None => self.route(req, conn, &settings).await,
            }
        } else {
            self.route(req, conn, &settings).await
        };
        if let Some(o) = cors
            && let Ok(v) = HeaderValue::from_str(&o)
        {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("mcp-session-id"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        resp
    }

    /// Authenticates the caller and takes one of its request slots; `call` scope required.
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        conn: &AuthContext,
        settings: &HttpSettings,
    ) -> Result<(Caller, Slot), Response<Body>> {
        let caller = match authenticate(
            &self.identities,
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            conn,
        ) {
            Ok(c) => c,
            Err(Denied::Unauthenticated(message, presented)) => {
                if presented {
                    self.failures.report(
                        conn.remote_addr,
                        "http",
                        conn.tls_client_fingerprint,
                        "bad credential",
                    );
                }
                let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", &message);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"alknet\""),
                );
                return Err(r);
            }
        };
        if !caller.auth.has_scope(crate::SCOPE) {
            let who = caller
                .auth
                .identity
                .as_ref()
                .map_or("the caller", |i| i.id.as_str());
            return Err(error(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                &format!(
                    "{who} lacks scope `call`{}",
                    if caller.token.is_some() {
                        " (in this token)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let slot = {
            let mut m = lock(&self.shared.inflight);
            let n = m.entry(caller.key.clone()).or_insert(0);
            if *n >= settings.max_requests_per_token {
                None
            } else {
                *n += 1;
                Some(Slot {
                    shared: self.shared.clone(),
                    key: caller.key.clone(),
                })
            }
        };
        match slot {
            Some(s) => Ok((caller, s)),
            None => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    &format!(
                        "this caller already has {} requests in flight (max_requests_per_token); retry when one ends",
                        settings.max_requests_per_token
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(r)
            }
        }
    }

    async fn route(
        self: Rc<Self>,
        req: Request,
        conn: &AuthContext,
        settings: &HttpSettings,
    ) -> Response<Body> {
        let path = req.path.clone();
        if path == "/healthz" {
            return match req.method {
                Method::GET | Method::HEAD => {
                    json_response(StatusCode::OK, &json!({"status": "ok"}))
                }
                _ => method_not_allowed("GET"),
            };
        }
        if path == "/mcp" {
            return crate::mcp::serve(self, req, conn, settings).await;
        }
        if path == "/ui" || path.starts_with("/ui/") {
            return crate::ui::serve(self, req, conn, settings).await;
        }
        #[cfg(feature = "dns")]
        if let Some(dns) = &self.dns {
            if path == "/dns-query" {
                return crate::dns::doh(dns, req, conn).await;
            }
            if let Some(z32) = path
                .strip_prefix('/')
                .filter(|p| alknet_dns::pkarr::parse_key(p).is_some())
            {
                let z32 = z32.to_owned();
                return crate::dns::relay(dns, req, &z32, conn);
            }
        }
        let known = path == "/openapi.json"
            || path == "/api/operations"
            || path == "/api/batch"
            || path == "/api/ws"
            || path.starts_with("/api/operations/")
            || path.starts_with("/api/call/")
            || path.starts_with("/api/subscribe/");
        if !known {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such route; see /openapi.json",
            );
        }
        let want = if path == "/api/batch" || path.starts_with("/api/call/") {
            Method::POST
        } else {
            Method::GET
        };
        if req.method != want {
            return method_not_allowed(if want == Method::POST { "POST" } else { "GET" });
        }
        let (caller, slot) = match self.admit(&req.headers, conn, settings) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if path == "/api/ws" {
            let mut req = req;
            return crate::ws::upgrade(&self, &mut req, caller, slot);
        }
        if path == "/openapi.json" {
            return json_response(
                StatusCode::OK,
                &crate::openapi::document(&self.ops, &caller.auth, &self.node),
            );
        }
        if path == "/api/operations" {
            let list: Vec<Value> = self
                .ops
                .iter()
                .filter(|op| op.scope.as_deref().is_none_or(|s| caller.auth.has_scope(s)))
                .map(|op| {
                    json!({"id": op.id, "description": op.description, "streaming": op.streaming})
                })
                .collect();
            return json_response(StatusCode::OK, &json!({"operations": list}));
        }
        if let Some(tail) = path.strip_prefix("/api/operations/") {
            let id = op_id(tail);
            return match self.ops.get(&id) {
                Some(op) if op.scope.as_deref().is_none_or(|s| caller.auth.has_scope(s)) => {
                    json_response(
                        StatusCode::OK,
                        &json!({
                            "operationId": op.id,
                            "description": op.description,
                            "streaming": op.streaming,
                            "input": op.input_schema,
                            "output": op.output_schema,
                        }),
                    )
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    &format!("no operation {}", quote(&id)),
                ),
            };
        }
        if path == "/api/batch" {
            return self.batch(&req, caller, settings).await;
        }
        if let Some(tail) = path.strip_prefix("/api/call/") {
            let id = op_id(tail);
            let input = match json_body(&req) {
                Ok(_) if req.body.is_empty() => self.ops.absent_input(&id),
                Ok(v) => v,
                Err(r) => return r,
            };
            return match self.call(&id, caller.auth, input, settings).await {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => call_error(&e),
            };
        }
        if let Some(tail) = path.strip_prefix("/api/subscribe/") {
            let input = match query_input(req.query.as_deref()) {
                Ok(Some(v)) => v,
                Ok(None) => self.ops.absent_input(&op_id(tail)),
                Err(r) => return r,
            };
            // A subscription lives as long as its client reads it, up to a day.
            let mut inv =
                match self
                    .ops
                    .invoke(&op_id(tail), caller.auth, input, SUBSCRIPTION_LIMIT)
                {
                    Ok(inv) => inv,
                    Err(e) => return call_error(&e),
                };
            // The status follows the first result: a refused input is a 422, not an event.
            return match inv.next().await {
                Some(Err(e)) => call_error(&e),
                first => sse(inv, first, slot),
            };
        }
        error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
    }

    /// Calls one operation to its end: its one result, or a streaming one's results as an
    /// array (at most [`MAX_COLLECTED`]).
    pub(crate) async fn call(
        &self,
        id: &str,
        auth: AuthContext,
        input: Value,
        settings: &HttpSettings,
    ) -> Result<Value, CallError> {
        let mut inv = self.ops.invoke(id, auth, input, settings.request_timeout)?;
        let streaming = inv.operation().streaming;
        let mut out = Vec::new();
        while let Some(r) = inv.next().await {
            out.push(r?);
            if out.len() > MAX_COLLECTED {
                return Err(CallError::unavailable(format!(
                    "more than {MAX_COLLECTED} results: use GET /api/subscribe{id}"
                )));
            }
        }
        if streaming {
            Ok(Value::Array(out))
        } else {
            Ok(out.pop().unwrap_or(Value::Null))
        }
    }

    async fn batch(
        &self,
        req: &Request,
        caller: Caller,
        settings: &HttpSettings,
    ) -> Response<Body> {
        let body = match json_body(req) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let Some(calls) = body.get("calls").and_then(Value::as_array) else {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_INPUT",
                "expected {\"calls\": [{\"id\": \"/service/operation\", \"input\": …}, …]}",
            );
        };
        if calls.len() > MAX_BATCH {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_INPUT",
                &format!("a batch holds at most {MAX_BATCH} calls"),
            );
        }
        let mut work = Vec::with_capacity(calls.len());
        for c in calls {
            let Some(id) = c.get("id").and_then(Value::as_str) else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "INVALID_INPUT",
                    "every call needs an \"id\" string",
                );
            };
            let input = c.get("input").cloned().unwrap_or(Value::Null);
            work.push(self.call(id, caller.auth.clone(), input, settings));
        }
        let results: Vec<Value> = futures_util::future::join_all(work)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(v) => json!({"ok": v}),
                Err(e) => json!({"error": error_json(&e)}),
            })
            .collect();
        json_response(StatusCode::OK, &json!({"results": results}))
    }
}

/// A name from the request, as errors quote it: cut and without control characters.
pub(crate) fn quote(s: &str) -> String {
    let cut: String = s.chars().take(64).filter(|c| !c.is_control()).collect();
    format!("`{cut}`")
}

/// The media type of a request's `Content-Type`, without parameters (`""` when absent).
pub(crate) fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .unwrap_or("")
        .trim()
}

/// The JSON body of a POST: empty is `null`; anything but JSON is refused.
pub(crate) fn json_body(req: &Request) -> Result<Value, Response<Body>> {
    if req.body.is_empty() {
        return Ok(Value::Null);
    }
    if !media_type(&req.headers).eq_ignore_ascii_case("application/json") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the input as Content-Type: application/json",
        ));
    }
    serde_json::from_slice(&req.body)
        .map(integral_numbers)
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("the body is not JSON: {e}"),
            )
        })
}

/// JSON numbers written with a fraction of zero (`3.0`) as integers: JSON Schema counts them
/// as integers, and the operations' typed inputs want them so.
pub(crate) fn integral_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                // Exactly representable: |f| < 2^53.
                Value::from(f as i64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(a) => Value::Array(a.into_iter().map(integral_numbers).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, integral_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The `input` query parameter of a subscription, JSON; `None` when absent or empty.
fn query_input(query: Option<&str>) -> Result<Option<Value>, Response<Body>> {
    let Some(q) = query else {
        return Ok(None);
    };
    match form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "input") {
        None => Ok(None),
        Some((_, v)) if v.is_empty() => Ok(None),
        Some((_, v)) => serde_json::from_str(&v)
            .map(|v| Some(integral_numbers(v)))
            .map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    &format!("`input` is not JSON: {e}"),
                )
            }),
    }
}

/// One Server-Sent Event.
pub(crate) fn event(name: &str, data: &Value) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The results of `inv` as an event stream: `result` per result, then `end` or `error`.
fn sse(inv: Invocation, first: Option<Result<Value, CallError>>, slot: Slot) -> Response<Body> {
    struct St {
        inv: Invocation,
        first: Option<Option<Result<Value, CallError>>>,
        done: bool,
        _slot: Slot,
    }
    let stream = futures_util::stream::unfold(
        St {
            inv,
            first: Some(first),
            done: false,
            _slot: slot,
        },
        |mut st| async move {
            if st.done {
                return None;
            }
            let next = match st.first.take() {
                Some(first) => Some(first),
                None => monoio::select! {
                    n = st.inv.next() => Some(n),
                    _ = monoio::time::sleep(KEEPALIVE) => None,
                },
            };
            let chunk = match next {
                None => Bytes::from_static(b": keepalive\n\n"),
                Some(Some(Ok(v))) => event("result", &v),
                Some(Some(Err(e))) => {
                    st.done = true;
                    event("error", &json!({"error": error_json(&e)}))
                }
                Some(None) => {
                    st.done = true;
                    event("end", &json!({}))
                }
            };
            Some((chunk, st))
        },
    );
    sse_response(Body::Stream(Box::pin(stream)))
}

pub(crate) fn sse_response(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
