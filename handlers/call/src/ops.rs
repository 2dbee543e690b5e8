//! The operation registry: typed handlers with their JSON Schemas and scopes.
//!
//! An operation is registered with Rust input and output types deriving serde and
//! `schemars::JsonSchema`; the registry keeps the erased handler (JSON in, JSON out) and the
//! schemas `/services/schema` returns. It knows nothing about streams or frames.

use crate::session::Session;
use crate::sync::Abort;
use alknet_core::{AuthContext, LocalBoxFuture};
use alknet_proto::call::{CallId, ErrorBody, ErrorCode};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use thiserror::Error;

/// A failed call, as the caller sees it (`call.error`).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{code}: {message}")]
pub struct CallError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// Whether retrying may succeed.
    pub retryable: bool,
    /// Structured detail.
    pub details: Option<Value>,
}

impl CallError {
    /// An error whose retryability follows from its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.retryable(),
            details: None,
        }
    }

    /// `INVALID_INPUT`.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// Attaches structured detail.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn to_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
            retryable: self.retryable,
            details: self.details.clone(),
        }
    }

    pub(crate) fn from_body(b: ErrorBody) -> Self {
        Self {
            code: b.code,
            message: b.message,
            retryable: b.retryable,
            details: b.details,
        }
    }
}

/// What an operation's handler learns about its call.
pub struct Call {
    pub(crate) origin: Origin,
    pub(crate) id: CallId,
    pub(crate) operation: Arc<OpInfo>,
    pub(crate) forwarded_for: Option<String>,
    pub(crate) abort: Rc<Abort>,
}

impl Call {
    /// The call's id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// The operation being called.
    pub fn operation(&self) -> &OpInfo {
        &self.operation
    }

    /// The authenticated caller; `None` when the caller is the server this node connected to
    /// (a client serving its server's calls trusts it).
    pub fn auth(&self) -> Option<&AuthContext> {
        match &self.origin {
            Origin::Session(s) => s.auth(),
            Origin::Local(l) => Some(&l.auth),
        }
    }

    /// Whether the caller holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        match &self.origin {
            Origin::Session(s) => s.has_scope(scope),
            Origin::Local(l) => l.auth.has_scope(scope),
        }
    }

    /// Whom the caller claims to call for (logged, never trusted).
    pub fn forwarded_for(&self) -> Option<&str> {
        self.forwarded_for.as_deref()
    }

    /// A client calling back to the caller over the same connection; `UNAVAILABLE` for a
    /// caller that serves no operations (one reaching the node over HTTP).
    pub fn peer(&self) -> Result<crate::client::CallClient, CallError> {
        match &self.origin {
            Origin::Session(s) => Ok(crate::client::CallClient::from_session(s.clone())),
            Origin::Local(_) => Err(CallError::unavailable(
                "this caller cannot be called back (it reached the node over HTTP)",
            )),
        }
    }

    /// The operations served to this caller.
    pub fn operations(&self) -> &Operations {
        match &self.origin {
            Origin::Session(s) => s.operations(),
            Origin::Local(l) => &l.ops,
        }
    }

    /// True once the caller aborted the call (the handler's future is dropped right after).
    pub fn is_aborted(&self) -> bool {
        self.abort.is_aborted()
    }
}

/// Where a streaming operation sends its results (`call.responded`, one per item).
pub struct Sink<O> {
    pub(crate) raw: RawSink,
    _out: PhantomData<fn(O)>,
}

impl<O: Serialize> Sink<O> {
    /// Sends one result; waits while the stream's send buffer is full.
    pub async fn send(&self, output: &O) -> Result<(), CallError> {
        let value = serde_json::to_value(output)
            .map_err(|e| CallError::internal(format!("cannot serialize output: {e}")))?;
        self.raw.send(value).await
    }
}

/// Who made a call: a peer over `alknet/call`, or a caller inside the node
/// ([`Operations::invoke`]).
pub(crate) enum Origin {
    Session(Rc<Session>),
    Local(Rc<crate::local::LocalCaller>),
}

/// Where results go: a call stream's channel, or an [`crate::Invocation`]'s queue.
pub(crate) enum SinkTo {
    Channel {
        session: Rc<Session>,
        channel: Rc<crate::session::Channel>,
        id: CallId,
    },
    Local(Rc<crate::local::Results>),
}

/// The untyped sink behind [`Sink`].
pub(crate) struct RawSink {
    pub(crate) to: SinkTo,
    pub(crate) abort: Rc<Abort>,
}

impl RawSink {
    pub(crate) async fn send(&self, output: Value) -> Result<(), CallError> {
        if self.abort.is_aborted() {
            return Err(CallError::unavailable("call aborted"));
        }
        match &self.to {
            SinkTo::Channel {
                session,
                channel,
                id,
            } => session.send_output(channel, *id, output).await,
            SinkTo::Local(results) => {
                results.push(output).await;
                Ok(())
            }
        }
    }
}

type Handler = dyn Fn(Call, Value, RawSink) -> LocalBoxFuture<Result<(), CallError>> + Send + Sync;

/// What is known about an operation without calling it.
#[derive(Debug, Clone, Serialize)]
pub struct OpInfo {
    /// `/service/operation`.
    pub id: String,
    /// One line for people.
    pub description: String,
    /// The scope a caller needs beyond `call`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Whether it may send more than one result.
    pub streaming: bool,
    /// JSON Schema of the input.
    #[serde(skip)]
    pub input_schema: Value,
    /// JSON Schema of each output.
    #[serde(skip)]
    pub output_schema: Value,
}

#[derive(Clone)]
pub(crate) struct OpEntry {
    pub(crate) info: Arc<OpInfo>,
    pub(crate) handler: Arc<Handler>,
}

/// A registration mistake.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// The id is not `/service/operation`.
    #[error(
        "invalid operation id `{0}`: expected /service/operation with lowercase letters, digits, `-`, `_` or `.`"
    )]
    BadId(String),
    /// Two operations with one id.
    #[error("operation `{0}` is registered twice")]
    Duplicate(String),
}

/// Checks the `/service/operation` shape.
pub fn valid_operation_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    let (Some(service), Some(op), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
    };
    ok(service) && ok(op)
}

/// The operations a node (or a client) serves. Cheap to clone; `Send + Sync`, so it can be
/// built once and handed to every shard.
#[derive(Clone, Default)]
pub struct Operations {
    // Shared: every call served in place (`invoke`) holds a clone; registering copies on
    // write.
    ops: Arc<BTreeMap<String, OpEntry>>,
}

fn schema_of<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

impl Operations {
    /// No operations.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, info: OpInfo, handler: Arc<Handler>) -> Result<&mut Self, RegisterError> {
        if !valid_operation_id(&info.id) {
            return Err(RegisterError::BadId(info.id));
        }
        if self.ops.contains_key(&info.id) {
            return Err(RegisterError::Duplicate(info.id));
        }
        Arc::make_mut(&mut self.ops).insert(
            info.id.clone(),
            OpEntry {
                info: Arc::new(info),
                handler,
            },
        );
        Ok(self)
    }

    /// Registers an operation with one result. `scope`, if set, is required of callers in
    /// addition to `call`.
    pub fn unary<I, O, F, Fut>(
        &mut self,
        id: &str,
        description: &str,
        scope: Option<&str>,
        f: F,
    ) -> Result<&mut Self, RegisterError>
    where
        I: DeserializeOwned + JsonSchema + 'static,
        O: Serialize + JsonSchema + 'static,
        F: Fn(Call, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, CallError>> + 'static,
    {
        let handler = move |call: Call, input: Value, sink: RawSink| -> LocalBoxFuture<_> {
            match serde_json::from_value::<I>(input) {
                Err(e) => Box::pin(std::future::ready(Err(CallError::invalid_input(
                    e.to_string(),
                )))),
                Ok(input) => {
                    let fut = f(call, input);
                    Box::pin(async move {
                        let out = fut.await?;
                        let value = serde_json::to_value(&out).map_err(|e| {
                            CallError::internal(format!("cannot serialize output: {e}"))
                        })?;
                        sink.send(value).await
                    })
                }
            }
        };
        self.insert(
            OpInfo {
                id: id.to_owned(),
                description: description.to_owned(),
                scope: scope.map(str::to_owned),
                streaming: false,
                input_schema: schema_of::<I>(),
                output_schema: schema_of::<O>(),
            },
            Arc::new(handler),
        )
    }

    /// Registers an operation that sends any number of results through its [`Sink`].
    pub fn streaming<I, O, F, Fut>(
        &mut self,
        id: &str,
        description: &str,
        scope: Option<&str>,
        f: F,
    ) -> Result<&mut Self, RegisterError>
    where
        I: DeserializeOwned + JsonSchema + 'static,
        O: Serialize + JsonSchema + 'static,
        F: Fn(Call, I, Sink<O>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CallError>> + 'static,
    {
        let handler = move |call: Call, input: Value, raw: RawSink| -> LocalBoxFuture<_> {
            match serde_json::from_value::<I>(input) {
                Err(e) => Box::pin(std::future::ready(Err(CallError::invalid_input(
                    e.to_string(),
                )))),
                Ok(input) => Box::pin(f(
                    call,
                    input,
                    Sink {
                        raw,
                        _out: PhantomData,
                    },
                )),
            }
        };
        self.insert(
            OpInfo {
                id: id.to_owned(),
                description: description.to_owned(),
                scope: scope.map(str::to_owned),
                streaming: true,
                input_schema: schema_of::<I>(),
                output_schema: schema_of::<O>(),
            },
            Arc::new(handler),
        )
    }

    /// Adds every operation of `other`; fails on the first duplicate.
    pub fn merge(&mut self, other: &Operations) -> Result<&mut Self, RegisterError> {
        for (id, e) in other.ops.iter() {
            if self.ops.contains_key(id) {
                return Err(RegisterError::Duplicate(id.clone()));
            }
            Arc::make_mut(&mut self.ops).insert(id.clone(), e.clone());
        }
        Ok(self)
    }

    /// The operation `id`.
    pub fn get(&self, id: &str) -> Option<&OpInfo> {
        self.ops.get(id).map(|e| &*e.info)
    }

    /// Calls operation `id` as `auth`'s caller, from inside the node (the HTTP gateway): the
    /// same handlers, the same scope rule as over `alknet/call` (an operation's own scope,
    /// besides whatever admitted the caller), the same time limit. Its results come from
    /// [`crate::Invocation::next`]; dropping the invocation aborts the call, and with it the
    /// calls its handler made.
    pub fn invoke(
        &self,
        id: &str,
        auth: AuthContext,
        input: Value,
        timeout: std::time::Duration,
    ) -> Result<crate::Invocation, CallError> {
        crate::local::invoke(self, id, auth, input, timeout)
    }

    /// The input to call `id` with when the caller gave none (no body, no `input`): `{}`
    /// for an operation taking an object, else `null`.
    pub fn absent_input(&self, id: &str) -> Value {
        self.get(id).map_or(Value::Null, crate::local::absent_input)
    }

    pub(crate) fn entry(&self, id: &str) -> Option<&OpEntry> {
        self.ops.get(id)
    }

    /// Every operation, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &OpInfo> {
        self.ops.values().map(|e| &*e.info)
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when none is registered.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Input of operations that take none: accepts `null` or any object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NoInput {}

impl<'de> serde::Deserialize<'de> for NoInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Option::<serde_json::Map<String, Value>>::deserialize(d)?;
        drop(v);
        Ok(NoInput {})
    }
}

impl JsonSchema for NoInput {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NoInput".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["object", "null"] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids() {
        for ok in ["/services/list", "/node/info", "/a-b/c_d.e", "/x1/y2"] {
            assert!(valid_operation_id(ok), "{ok}");
        }
        for bad in [
            "",
            "/",
            "services/list",
            "/services",
            "/a/b/c",
            "/A/b",
            "/a//b",
            "/a/ b",
        ] {
            assert!(!valid_operation_id(bad), "{bad}");
        }
    }

    #[test]
    fn registration_keeps_schemas_and_refuses_duplicates() {
        #[derive(serde::Deserialize, JsonSchema)]
        struct In {
            #[allow(dead_code)]
            a: u32,
        }
        let mut ops = Operations::new();
        ops.unary("/t/one", "one", None, |_c, i: In| async move { Ok(i.a) })
            .unwrap();
        let info = ops.get("/t/one").unwrap();
        assert_eq!(info.input_schema["properties"]["a"]["type"], "integer");
        assert_eq!(info.output_schema["type"], "integer");
        assert_eq!(
            ops.unary("/t/one", "", None, |_c, _i: NoInput| async { Ok(()) })
                .err(),
            Some(RegisterError::Duplicate("/t/one".into()))
        );
        assert!(matches!(
            ops.unary("bad", "", None, |_c, _i: NoInput| async { Ok(()) }),
            Err(RegisterError::BadId(_))
        ));
        let n: NoInput = serde_json::from_value(Value::Null).unwrap();
        assert_eq!(n, NoInput {});
        assert!(serde_json::from_value::<NoInput>(serde_json::json!({"x": 1})).is_ok());
        assert!(serde_json::from_value::<NoInput>(serde_json::json!(3)).is_err());
    }
}
