//! MCP over the streamable HTTP transport (protocol 2025-06-18, and 2025-03-26 for older
//! clients): the operations the caller may call, as tools.
//!
//! `POST /mcp` takes one JSON-RPC message. `initialize` opens a session (its id in
//! `Mcp-Session-Id`, which every later request must carry; sessions belong to the peer that
//! opened them, at most `max_mcp_sessions`, the least recently used forgotten first).
//! Notifications and responses get `202 Accepted`. `tools/list` pages by [`PAGE`];
//! `tools/call` calls the operation: a unary one answers with JSON, a streaming one with an
//! event stream carrying a `notifications/progress` per result (when the request asked for
//! progress) and then the response with every result. `GET /mcp` opens the session's event
//! stream (keep-alive comments: the gateway sends no requests of its own); `DELETE /mcp` ends
//! the session.
//!
//! Tool names are the operation ids with `/` written as `__` and the leading one dropped
//! (`node__info` for `/node/info`), as MCP clients expect `[A-Za-z0-9_.-]` names.

use crate::HttpSettings;
use crate::api::{
    Gateway, Request, error, error_json, event, json_body, json_response, sse_response,
};
use crate::body::Body;
use alknet_call::OpInfo;
use alknet_core::AuthContext;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Protocol versions served, newest first.
pub(crate) const VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// Tools per `tools/list` page.
pub(crate) const PAGE: usize = 50;
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

struct Session {
    peer: String,
    last: Instant,
}

/// The MCP sessions of the node, shared by the shards.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, peer: &str, max: usize, idle: Duration) -> String {
        let mut raw = [0u8; 16];
        rand::fill(&mut raw[..]);
        let id = hex::encode(raw);
        let mut m = self.lock();
        let now = Instant::now();
        m.retain(|_, s| now.duration_since(s.last) < idle);
        while m.len() >= max {
            let Some(oldest) = m.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) else {
                break;
            };
            m.remove(&oldest);
        }
        m.insert(
            id.clone(),
            Session {
                peer: peer.to_owned(),
                last: now,
            },
        );
        id
    }

    /// Whether `id` is a live session of `peer` (and marks it used).
    fn touch(&self, id: &str, peer: &str, idle: Duration) -> bool {
        let mut m = self.lock();
        let now = Instant::now();
        match m.get_mut(id) {
            Some(s) if s.peer == peer && now.duration_since(s.last) < idle => {
                s.last = now;
                true
            }
            Some(s) if now.duration_since(s.last) >= idle => {
                m.remove(id);
                false
            }
            _ => false,
        }
    }

    fn close(&self, id: &str, peer: &str) -> bool {
        let mut m = self.lock();
        match m.get(id) {
            Some(s) if s.peer == peer => {
                m.remove(id);
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The tool name of an operation.
pub(crate) fn tool_name(id: &str) -> String {
    id.trim_start_matches('/').replace('/', "__")
}

/// An operation's input schema as a tool's: MCP wants an object. Inputs that may be `null`
/// (no input) are objects; anything else is wrapped as `{"input": …}`.
fn input_schema(op: &OpInfo) -> (Value, bool) {
    let mut s = op.input_schema.clone();
    if let Some(m) = s.as_object_mut() {
        m.remove("$schema");
    }
    let ty = s.get("type").cloned();
    let is_object = match &ty {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => false,
    };
    if is_object {
        if let Some(m) = s.as_object_mut() {
            m.insert("type".into(), json!("object"));
        }
        return (s, false);
    }
    let defs = s.as_object_mut().and_then(|m| m.remove("$defs"));
    let mut wrapped = json!({"type": "object", "properties": {"input": s}, "required": ["input"]});
    if let (Some(d), Some(m)) = (defs, wrapped.as_object_mut()) {
        m.insert("$defs".into(), d);
    }
    (wrapped, true)
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Serves `/mcp`.
pub(crate) async fn serve(
    gate: Rc<Gateway>,
    req: Request,
    conn: &AuthContext,
    settings: &HttpSettings,
) -> Response<Body> {
    if !matches!(req.method, Method::POST | Method::GET | Method::DELETE) {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "/mcp takes POST, GET and DELETE",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        return r;
    }
    if let Some(v) = req.headers.get(VERSION_HEADER)
        && !VERSIONS.iter().any(|s| v.as_bytes() == s.as_bytes())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!(
                "unsupported MCP-Protocol-Version; this server speaks {}",
                VERSIONS.join(", ")
            ),
        );
    }
    let (caller, _slot) = match gate.admit(&req.headers, conn, settings) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let peer = caller
        .auth
        .identity
        .as_ref()
        .map(|i| i.id.clone())
        .unwrap_or_default();
    let session = req
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sessions = &gate.shared.mcp;
    let idle = settings.mcp_session_idle;
    if req.method == Method::DELETE {
        return match session {
            Some(id) if sessions.close(&id, &peer) => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such MCP session"),
        };
    }
    if req.method == Method::GET {
        return match session {
            Some(id) if sessions.touch(&id, &peer, idle) => {
                let stream = futures_util::stream::unfold((), |()| async move {
                    monoio::time::sleep(Duration::from_secs(15)).await;
                    Some((Bytes::from_static(b": keepalive\n\n"), ()))
                });
                sse_response(Body::Stream(Box::pin(stream)))
            }
            Some(_) => error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such MCP session; initialize again",
            ),
            None => error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "Mcp-Session-Id required",
            ),
        };
    }
    let msg = match json_body(&req) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &Value::Null,
                    -32600,
                    "expected one JSON-RPC message (an object)",
                ),
            );
        }
        Err(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&Value::Null, -32700, "parse error: the body is not JSON"),
            );
        }
    };
    let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
    let id = msg.get("id").cloned();
    let Some(method) = method else {
        // A response to a request of ours (we send none) or garbage: accepted, ignored.
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::ACCEPTED;
        return r;
    };
    if method == "initialize" {
        let Some(id) = id else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&Value::Null, -32600, "initialize needs an id"),
            );
        };
        let asked = msg
            .pointer("/params/protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let version = VERSIONS
            .iter()
            .find(|v| **v == asked)
            .copied()
            .unwrap_or(VERSIONS[0]);
        let sid = sessions.open(&peer, settings.max_mcp_sessions, idle);
        let mut r = json_response(
            StatusCode::OK,
            &rpc_result(
                &id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "alknet", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "Tools are this Alknet node's operations; names are operation ids with / as __.",
                }),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&sid) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
        return r;
    }
    match &session {
        Some(s) if sessions.touch(s, &peer, idle) => {}
        Some(_) => {
            return json_response(
                StatusCode::NOT_FOUND,
                &rpc_error(
                    id.as_ref().unwrap_or(&Value::Null),
                    -32001,
                    "no such MCP session; initialize again",
                ),
            );
        }
        None => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    id.as_ref().unwrap_or(&Value::Null),
                    -32600,
                    "Mcp-Session-Id required (initialize first)",
                ),
            );
        }
    }
    let Some(id) = id else {
        // A notification (`notifications/initialized`, `notifications/cancelled`, …).
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::ACCEPTED;
        return r;
    };
    let visible = |op: &&OpInfo| op.scope.as_deref().is_none_or(|s| caller.auth.has_scope(s));
    match method.as_str() {
        "ping" => json_response(StatusCode::OK, &rpc_result(&id, json!({}))),
        "tools/list" => {
            let start = match msg.pointer("/params/cursor") {
                None | Some(Value::Null) => 0,
                Some(Value::String(c)) => match c.parse::<usize>() {
                    Ok(n) => n,
                    Err(_) => {
                        return json_response(
                            StatusCode::OK,
                            &rpc_error(&id, -32602, "invalid cursor"),
                        );
                    }
                },
                Some(_) => {
                    return json_response(
                        StatusCode::OK,
                        &rpc_error(&id, -32602, "invalid cursor"),
                    );
                }
            };
            let all: Vec<&OpInfo> = gate.ops.iter().filter(visible).collect();
            let tools: Vec<Value> = all
                .iter()
                .skip(start)
                .take(PAGE)
                .map(|op| {
                    json!({
                        "name": tool_name(&op.id),
                        "title": op.id,
                        "description": op.description,
                        "inputSchema": input_schema(op).0,
                        "annotations": {"readOnlyHint": false, "openWorldHint": false},
                    })
                })
                .collect();
            let mut result = json!({"tools": tools});
            if start + PAGE < all.len()
                && let Some(m) = result.as_object_mut()
            {
                m.insert("nextCursor".into(), json!((start + PAGE).to_string()));
            }
            json_response(StatusCode::OK, &rpc_result(&id, result))
        }
        "tools/call" => {
            let name = msg
                .pointer("/params/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some(op) = gate
                .ops
                .iter()
                .filter(visible)
                .find(|op| tool_name(&op.id) == name)
            else {
                return json_response(
                    StatusCode::OK,
                    &rpc_error(
                        &id,
                        -32602,
                        &format!("unknown tool {}", crate::api::quote(name)),
                    ),
                );
            };
            let (_, wrapped) = input_schema(op);
            let args = msg
                .pointer("/params/arguments")
                .cloned()
                .unwrap_or(Value::Null);
            let input = if wrapped {
                args.get("input").cloned().unwrap_or(Value::Null)
            } else {
                args
            };
            let progress = msg.pointer("/params/_meta/progressToken").cloned();
            let op_id = op.id.clone();
            if !op.streaming {
                let result = tool_result(
                    gate.call(&op_id, caller.auth.clone(), input, settings)
                        .await,
                    false,
                );
                return json_response(StatusCode::OK, &rpc_result(&id, result));
            }
            let inv =
                match gate
                    .ops
                    .invoke(&op_id, caller.auth.clone(), input, settings.request_timeout)
                {
                    Ok(inv) => inv,
                    Err(e) => {
                        return json_response(
                            StatusCode::OK,
                            &rpc_result(&id, tool_result(Err(e), true)),
                        );
                    }
                };
            struct St {
                inv: alknet_call::Invocation,
                results: Vec<Value>,
                progress: Option<Value>,
                id: Value,
                done: bool,
                _slot: crate::api::Slot,
            }
            let st = St {
                inv,
                results: Vec::new(),
                progress,
                id,
                done: false,
                _slot,
            };
            let stream = futures_util::stream::unfold(st, |mut st| async move {
                loop {
                    if st.done {
                        return None;
                    }
                    match st.inv.next().await {
                        Some(Ok(v)) => {
                            st.results.push(v.clone());
                            if st.results.len() > crate::api::MAX_COLLECTED {
                                st.done = true;
                                let e = alknet_call::CallError::unavailable(
                                    "too many results for one tool call",
                                );
                                let reply = rpc_result(&st.id, tool_result(Err(e), true));
                                return Some((event("message", &reply), st));
                            }
                            if let Some(token) = &st.progress {
                                let n = st.results.len();
                                let note = json!({
                                    "jsonrpc": "2.0",
                                    "method": "notifications/progress",
                                    "params": {
                                        "progressToken": token,
                                        "progress": n,
                                        "message": serde_json::to_string(&v).unwrap_or_default(),
                                    },
                                });
                                return Some((event("message", &note), st));
                            }
                        }
                        end => {
                            st.done = true;
                            let result = match end {
                                Some(Err(e)) => tool_result(Err(e), true),
                                _ => tool_result(
                                    Ok(Value::Array(std::mem::take(&mut st.results))),
                                    true,
                                ),
                            };
                            let reply = rpc_result(&st.id, result);
                            return Some((event("message", &reply), st));
                        }
                    }
                }
            });
            sse_response(Body::Stream(Box::pin(stream)))
        }
        other => json_response(
            StatusCode::OK,
            &rpc_error(
                &id,
                -32601,
                &format!("method {} not found", crate::api::quote(other)),
            ),
        ),
    }
}

/// A `tools/call` result: the output as text (and structured when it is an object), or the
/// call's error with `isError`.
fn tool_result(r: Result<Value, alknet_call::CallError>, streaming: bool) -> Value {
    match r {
        Ok(v) => {
            let content: Vec<Value> = match (&v, streaming) {
                (Value::Array(items), true) => items
                    .iter()
                    .map(|i| json!({"type": "text", "text": serde_json::to_string(i).unwrap_or_default()}))
                    .collect(),
                _ => vec![json!({"type": "text", "text": serde_json::to_string(&v).unwrap_or_default()})],
            };
            let mut out = json!({"content": content, "isError": false});
            if v.is_object()
                && let Some(m) = out.as_object_mut()
            {
                m.insert("structuredContent".into(), v);
            }
            out
        }
        Err(e) => json!({
            "content": [{"type": "text", "text": format!("{}: {}", e.code, e.message)}],
            "isError": true,
            "_meta": {"alknet/error": error_json(&e)},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_and_sessions() {
        assert_eq!(tool_name("/node/info"), "node__info");
        let s = Sessions::default();
        let idle = Duration::from_secs(60);
        let a = s.open("ada", 2, idle);
        assert!(s.touch(&a, "ada", idle));
        assert!(!s.touch(&a, "bob", idle), "a session belongs to its peer");
        let b = s.open("ada", 2, idle);
        let c = s.open("ada", 2, idle);
        assert_eq!(s.len(), 2, "bounded");
        assert!(s.touch(&c, "ada", idle) && s.touch(&b, "ada", idle));
        assert!(!s.close(&b, "bob"));
        assert!(s.close(&b, "ada"));
        assert!(!s.touch(&b, "ada", idle));
    }
}
