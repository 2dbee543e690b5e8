//! Calls made from inside the node: the HTTP gateway (REST, SSE, WebSocket, MCP) reaches the
//! operations through [`Operations::invoke`] instead of a QUIC stream.
//!
//! An [`Invocation`] owns the handler's future and polls it from [`Invocation::next`], so the
//! call runs exactly as long as its consumer wants it: dropping the invocation drops the
//! handler's future (and every call it made, whose handles send `call.aborted`: the abort
//! cascades as over `alknet/call`). Results wait in a queue of [`MAX_QUEUED`]; a streaming
//! handler whose consumer does not read stops at its next `send`.

use crate::ops::{Call, CallError, OpInfo, Operations, Origin, RawSink, SinkTo};
use crate::session::quote;
use crate::sync::{Abort, Notify, Outcome, run_guarded};
use alknet_core::{AuthContext, LocalBoxFuture};
use alknet_proto::call::{CallId, ErrorCode};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Results an invocation holds before its handler waits for the consumer.
pub(crate) const MAX_QUEUED: usize = 16;

/// The caller of a local call: who, and which operations it sees.
pub(crate) struct LocalCaller {
    pub(crate) auth: AuthContext,
    pub(crate) ops: Operations,
}

/// Results queued between a handler's sink and its [`Invocation`].
#[derive(Default)]
pub(crate) struct Results {
    queue: RefCell<VecDeque<Value>>,
    notify: Notify,
}

impl Results {
    pub(crate) async fn push(&self, v: Value) {
        self.notify
            .wait_until(|| self.queue.borrow().len() < MAX_QUEUED)
            .await;
        self.queue.borrow_mut().push_back(v);
    }

    fn pop(&self) -> Option<Value> {
        let v = self.queue.borrow_mut().pop_front();
        if v.is_some() {
            self.notify.notify();
        }
        v
    }
}

/// One call in progress, made with [`Operations::invoke`].
pub struct Invocation {
    operation: Arc<OpInfo>,
    work: Option<LocalBoxFuture<Outcome<Result<(), CallError>>>>,
    end: Option<Result<(), CallError>>,
    results: Rc<Results>,
    abort: Rc<Abort>,
    timeout: Duration,
}

impl Invocation {
    /// The operation called.
    pub fn operation(&self) -> &OpInfo {
        &self.operation
    }

    /// The next result; then, once the handler finished, its error if it failed, and `None`.
    pub async fn next(&mut self) -> Option<Result<Value, CallError>> {
        poll_fn(|cx| {
            loop {
                if let Some(v) = self.results.pop() {
                    return Poll::Ready(Some(Ok(v)));
                }
                let Some(work) = self.work.as_mut() else {
                    return Poll::Ready(self.end.take().and_then(Result::err).map(Err));
                };
                match work.as_mut().poll(cx) {
                    Poll::Ready(outcome) => {
                        self.work = None;
                        self.end = Some(self.outcome(outcome));
                    }
                    Poll::Pending if self.results.queue.borrow().is_empty() => {
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
        })
        .await
    }

    fn outcome(&self, outcome: Outcome<Result<(), CallError>>) -> Result<(), CallError> {
        let id = quote(&self.operation.id);
        match outcome {
            Outcome::Done(r) => r,
            Outcome::Aborted => Err(CallError::unavailable("call aborted")),
            Outcome::TimedOut => Err(CallError::new(
                ErrorCode::Timeout,
                format!(
                    "{id} did not finish within {} s",
                    self.timeout.as_secs_f64()
                ),
            )),
            Outcome::Panicked => {
                tracing::warn!(operation = %id, "call handler panicked");
                Err(CallError::internal("the operation failed"))
            }
        }
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

pub(crate) fn invoke(
    ops: &Operations,
    id: &str,
    auth: AuthContext,
    input: Value,
    timeout: Duration,
) -> Result<Invocation, CallError> {
    let op_id = quote(id);
    let Some(entry) = ops.entry(id) else {
        return Err(CallError::not_found(format!("no operation {op_id}")));
    };
    if let Some(scope) = entry.info.scope.as_deref()
        && !auth.has_scope(scope)
    {
        return Err(CallError::forbidden(format!(
            "{op_id} needs scope `{scope}`"
        )));
    }
    // The top-level type the schema names, checked here: serde would take an array for a
    // struct, say, which JSON Schema does not.
    if !type_matches(&entry.info.input_schema, &input) {
        return Err(CallError::invalid_input(format!(
            "{op_id} takes {}",
            type_names(&entry.info.input_schema)
        )));
    }
    let mut raw = [0u8; 16];
    rand::fill(&mut raw[..]);
    let abort = Rc::new(Abort::default());
    let results = Rc::new(Results::default());
    let call = Call {
        origin: Origin::Local(Rc::new(LocalCaller {
            auth,
            ops: ops.clone(),
        })),
        id: CallId::from_random(raw),
        operation: entry.info.clone(),
        forwarded_for: None,
        abort: abort.clone(),
    };
    let sink = RawSink {
        to: SinkTo::Local(results.clone()),
        abort: abort.clone(),
    };
    let work = (entry.handler)(call, input, sink);
    let guard = abort.clone();
    Ok(Invocation {
        operation: entry.info.clone(),
        work: Some(Box::pin(
            async move { run_guarded(work, &guard, timeout).await },
        )),
        end: None,
        results,
        abort,
        timeout,
    })
}

/// The input an operation gets when its caller gave none: `{}` for one whose input is an
/// object (all its fields optional, or the call fails on the missing ones), else `null`.
pub(crate) fn absent_input(op: &OpInfo) -> Value {
    if takes_object(&op.input_schema) {
        Value::Object(Default::default())
    } else {
        Value::Null
    }
}

/// Whether a schema's `type` is `object` and does not admit `null`.
fn takes_object(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "object",
        _ => false,
    }
}

fn json_type_is(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        _ => true,
    }
}

/// Whether `v` has one of the types the schema's top-level `type` names (any, without one).
fn type_matches(schema: &Value, v: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => json_type_is(t, v),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .any(|t| json_type_is(t, v)),
        _ => true,
    }
}

fn type_names(schema: &Value) -> String {
    match schema.get("type") {
        Some(Value::String(t)) => format!("an input of type {t}"),
        Some(Value::Array(ts)) => format!(
            "an input of type {}",
            ts.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        _ => "any input".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NoInput, Sink};
    use std::cell::Cell;

    fn auth(scopes: &[&str]) -> AuthContext {
        AuthContext {
            identity: Some(alknet_core::Identity { id: "ada".into() }),
            scopes: scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into(),
            alpn: b"h2",
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            tls_client_fingerprint: None,
            forwarded_for: None,
        }
    }

    thread_local! {
        static SENT: Cell<u32> = const { Cell::new(0) };
        static DROPPED: Cell<bool> = const { Cell::new(false) };
    }

    struct Flag;
    impl Drop for Flag {
        fn drop(&mut self) {
            DROPPED.with(|d| d.set(true));
        }
    }

    fn ops() -> Operations {
        let mut ops = Operations::new();
        ops.streaming(
            "/t/forever",
            "sends until aborted",
            None,
            |_c, _: NoInput, sink: Sink<u32>| async move {
                let _flag = Flag;
                for i in 0.. {
                    sink.send(&i).await?;
                    SENT.with(|s| s.set(s.get() + 1));
                }
                Ok(())
            },
        )
        .unwrap();
        ops.unary("/t/slow", "sleeps", None, |_c, _: NoInput| async move {
            monoio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .unwrap();
        ops.unary(
            "/t/admin",
            "scoped",
            Some("admin"),
            |_c, _: NoInput| async { Ok(1) },
        )
        .unwrap();
        ops
    }

    #[test]
    fn results_are_bounded_and_dropping_the_invocation_aborts_the_call() {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                let ops = ops();
                let mut inv = ops
                    .invoke(
                        "/t/forever",
                        auth(&["call"]),
                        Value::Null,
                        Duration::from_secs(10),
                    )
                    .unwrap();
                for want in 0..3u32 {
                    assert_eq!(inv.next().await.unwrap().unwrap(), Value::from(want));
                }
                let sent = SENT.with(Cell::get);
                assert!(
                    sent as usize <= MAX_QUEUED + 3,
                    "the handler ran ahead of its reader: {sent}"
                );
                assert!(!DROPPED.with(Cell::get));
                drop(inv);
                assert!(
                    DROPPED.with(Cell::get),
                    "dropping the invocation drops the handler"
                );

                let mut slow = ops
                    .invoke(
                        "/t/slow",
                        auth(&["call"]),
                        Value::Null,
                        Duration::from_millis(50),
                    )
                    .unwrap();
                let e = slow.next().await.unwrap().unwrap_err();
                assert_eq!(e.code, ErrorCode::Timeout);
                assert!(slow.next().await.is_none());

                let e = ops
                    .invoke(
                        "/t/admin",
                        auth(&["call"]),
                        Value::Null,
                        Duration::from_secs(1),
                    )
                    .err()
                    .unwrap();
                assert_eq!(e.code, ErrorCode::Forbidden);
                let mut ok = ops
                    .invoke(
                        "/t/admin",
                        auth(&["call", "admin"]),
                        Value::Null,
                        Duration::from_secs(1),
                    )
                    .unwrap();
                assert_eq!(ok.next().await.unwrap().unwrap(), Value::from(1));
                let e = ops
                    .invoke("/t/none", auth(&["*"]), Value::Null, Duration::from_secs(1))
                    .err()
                    .unwrap();
                assert_eq!(e.code, ErrorCode::NotFound);
            });
    }
}
