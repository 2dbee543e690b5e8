//! The `alknet/call` framing: 4-byte big-endian length, then that many bytes of JSON.
//!
//! A frame body is a UTF-8 JSON object `{"type": …, "id": …, "payload": …}`; the types are
//! `call.requested`, `call.responded`, `call.completed`, `call.aborted` and `call.error`.
//! This module turns bytes into [`Message`]s or a precise [`DecodeError`], and messages into
//! bytes ([`encode`]). It is incremental: a [`Decoder`] is fed whatever a read returned (a
//! frame split across any number of reads, or many frames in one read) and polled for
//! complete frames.
//!
//! It deliberately knows nothing of streams, calls in flight, timeouts or scopes: that is the
//! handler's business (`alknet-call`). No runtime, no clock, and no allocation beyond what the
//! bytes fed in bound: a frame is only buffered once its length header passed the limit.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Default largest frame body accepted: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// The largest frame body any configuration may accept: 64 MiB.
pub const MAX_FRAME_CAP: usize = 64 << 20;
/// Longest unknown `type` string quoted back in an error.
const MAX_QUOTED_TYPE: usize = 64;
/// Capacity a [`Decoder`] keeps after a poll whatever it holds: enough for the small frames
/// of ordinary calls without an allocation per read; above it, the buffer shrinks once it
/// holds under a quarter of its capacity.
pub const KEEP_CAPACITY: usize = 16 << 10;
/// Smallest allocation the decoder makes when it first needs room.
const MIN_CAPACITY: usize = 256;

/// Wire name of [`Body::Requested`].
pub const TYPE_REQUESTED: &str = "call.requested";
/// Wire name of [`Body::Responded`].
pub const TYPE_RESPONDED: &str = "call.responded";
/// Wire name of [`Body::Completed`].
pub const TYPE_COMPLETED: &str = "call.completed";
/// Wire name of [`Body::Aborted`].
pub const TYPE_ABORTED: &str = "call.aborted";
/// Wire name of [`Body::Error`].
pub const TYPE_ERROR: &str = "call.error";

/// A call's id: a UUID chosen by the caller (version 4 when Alknet chooses it). Held as its
/// 16 bytes; written in the canonical lowercase hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId([u8; 16]);

impl CallId {
    /// The nil UUID, used to answer a frame whose id could not be read.
    pub const NIL: CallId = CallId([0; 16]);

    /// A version-4 UUID made of 16 random bytes (the version and variant bits are set here).
    pub fn from_random(mut bytes: [u8; 16]) -> Self {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(bytes)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a UUID in its hyphenated form.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("not a UUID (expected 8-4-4-4-12 hex digits)")]
pub struct CallIdError;

impl FromStr for CallId {
    type Err = CallIdError;

    fn from_str(s: &str) -> Result<Self, CallIdError> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(CallIdError);
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < b.len() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b.get(i) != Some(&b'-') {
                    return Err(CallIdError);
                }
                i += 1;
                continue;
            }
            let hi = b.get(i).and_then(|c| hex_val(*c)).ok_or(CallIdError)?;
            let lo = b.get(i + 1).and_then(|c| hex_val(*c)).ok_or(CallIdError)?;
            *out.get_mut(n).ok_or(CallIdError)? = (hi << 4) | lo;
            n += 1;
            i += 2;
        }
        Ok(Self(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Serialize for CallId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CallId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CallId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UUID string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CallId, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The error codes of `call.error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No such operation (or none the caller may see).
    NotFound,
    /// The caller lacks a scope the operation requires.
    Forbidden,
    /// The input does not match the operation's schema, or the message was malformed.
    InvalidInput,
    /// The call ran out of time (retryable).
    Timeout,
    /// The operation failed.
    Internal,
    /// The service cannot take the call now (retryable).
    Unavailable,
}

impl ErrorCode {
    /// Whether a caller may retry the same call.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::Timeout | ErrorCode::Unavailable)
    }

    /// The wire name, e.g. `NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of `call.requested`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The operation, `/service/operation`.
    #[serde(rename = "operationId")]
    pub operation_id: String,
    /// The operation's input (`null` when absent).
    #[serde(default)]
    pub input: Value,
    /// A bearer token the call is made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Whom the caller says it calls for: logged, never used for access control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<String>,
}

impl fmt::Debug for Request {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("operation_id", &self.operation_id)
            .field("input", &self.input)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("forwarded_for", &self.forwarded_for)
            .finish()
    }
}

/// The payload of `call.error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// Whether the same call may succeed if retried.
    pub retryable: bool,
    /// Structured detail, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ErrorBody {
    /// An error with `retryable` taken from the code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.retryable(),
            details: None,
        }
    }
}

/// What a message says about its call.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// `call.requested`: start a call.
    Requested(Request),
    /// `call.responded`: one result (a streaming call sends several).
    Responded {
        /// The result.
        output: Value,
    },
    /// `call.completed`: no more results.
    Completed,
    /// `call.aborted`: the caller cancels the call, or the callee confirms it stopped.
    Aborted,
    /// `call.error`: the call failed; no more results.
    Error(ErrorBody),
}

impl Body {
    /// The wire `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Requested(_) => TYPE_REQUESTED,
            Body::Responded { .. } => TYPE_RESPONDED,
            Body::Completed => TYPE_COMPLETED,
            Body::Aborted => TYPE_ABORTED,
            Body::Error(_) => TYPE_ERROR,
        }
    }
}

/// One frame: a call id and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The call this message belongs to.
    pub id: CallId,
    /// The content.
    pub body: Body,
}

/// Why bytes are not a valid frame or message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A length prefix of zero.
    #[error("zero-length frame")]
    ZeroLength,
    /// A length prefix above the limit; the stream cannot be resynchronised.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The announced length.
        len: u32,
        /// The limit.
        max: usize,
    },
    /// The body is not UTF-8.
    #[error("frame is not UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The body is not JSON.
    #[error("frame is not JSON: {reason}")]
    InvalidJson {
        /// The parser's complaint.
        reason: String,
    },
    /// The body is JSON but not an object.
    #[error("message is not a JSON object")]
    NotAnObject,
    /// `id` is missing or not a UUID string.
    #[error("message has no valid `id` (expected a UUID string)")]
    InvalidId,
    /// `type` is missing or not a string.
    #[error("message has no `type` string")]
    MissingType {
        /// The message's id.
        id: CallId,
    },
    /// `type` names no message type.
    #[error("unknown message type `{ty}`")]
    UnknownType {
        /// The message's id.
        id: CallId,
        /// The type received (at most 64 bytes of it).
        ty: String,
    },
    /// The payload does not fit the type.
    #[error("invalid `{ty}` payload: {reason}")]
    InvalidPayload {
        /// The message's id.
        id: CallId,
        /// The message type.
        ty: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl DecodeError {
    /// The id of the offending message, when it could be read.
    pub fn id(&self) -> Option<CallId> {
        match self {
            DecodeError::MissingType { id }
            | DecodeError::UnknownType { id, .. }
            | DecodeError::InvalidPayload { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// True when framing is lost: no further frame can be read from the stream.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DecodeError::TooLong { .. })
    }
}

/// Why a message cannot be encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The JSON body would exceed the limit.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLong {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The JSON serializer failed.
    #[error("cannot serialize message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes `msg` as one frame appended to `out`, failing if the body exceeds `max` (clamped to
/// [`MAX_FRAME_CAP`]). On error `out` is left as it was.
pub fn encode_into(msg: &Message, max: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let max = max.min(MAX_FRAME_CAP);
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let res = serde_json::to_writer(&mut *out, &WireOut::from(msg));
    let len = out.len() - start - HEADER_LEN;
    if let Err(e) = res {
        out.truncate(start);
        return Err(e.into());
    }
    let Ok(len32) = u32::try_from(len) else {
        out.truncate(start);
        return Err(EncodeError::TooLong { len, max });
    };
    if len > max {
        out.truncate(start);
        return Err(EncodeError::TooLong { len, max });
    }
    if let Some(h) = out.get_mut(start..start + HEADER_LEN) {
        h.copy_from_slice(&len32.to_be_bytes());
    }
    Ok(())
}

/// Encodes `msg` as one frame under the default limit.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(msg, DEFAULT_MAX_FRAME, &mut out)?;
    Ok(out)
}

struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

#[derive(Serialize)]
struct OutputRef<'a> {
    output: &'a Value,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PayloadOut<'a> {
    Request(&'a Request),
    Output(OutputRef<'a>),
    Empty(EmptyObject),
    Error(&'a ErrorBody),
}

#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    id: CallId,
    payload: PayloadOut<'a>,
}

impl<'a> From<&'a Message> for WireOut<'a> {
    fn from(m: &'a Message) -> Self {
        let payload = match &m.body {
            Body::Requested(r) => PayloadOut::Request(r),
            Body::Responded { output } => PayloadOut::Output(OutputRef { output }),
            Body::Completed | Body::Aborted => PayloadOut::Empty(EmptyObject),
            Body::Error(e) => PayloadOut::Error(e),
        };
        WireOut {
            ty: m.body.type_name(),
            id: m.id,
            payload,
        }
    }
}

/// Decodes one frame body (the bytes after the length prefix).
///
/// Unknown fields in the envelope and in payloads are ignored, so later versions may add
/// optional fields; unknown `type`s are errors.
pub fn decode_message(body: &[u8]) -> Result<Message, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson {
        reason: e.to_string(),
    })?;
    let Value::Object(mut map) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let id = match map.get("id") {
        Some(Value::String(s)) => s.parse::<CallId>().map_err(|_| DecodeError::InvalidId)?,
        _ => return Err(DecodeError::InvalidId),
    };
    let ty = match map.get("type") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(DecodeError::MissingType { id }),
    };
    let ty: &'static str = match ty {
        TYPE_REQUESTED => TYPE_REQUESTED,
        TYPE_RESPONDED => TYPE_RESPONDED,
        TYPE_COMPLETED => TYPE_COMPLETED,
        TYPE_ABORTED => TYPE_ABORTED,
        TYPE_ERROR => TYPE_ERROR,
        other => {
            return Err(DecodeError::UnknownType {
                id,
                ty: truncate(other, MAX_QUOTED_TYPE).to_owned(),
            });
        }
    };
    let payload = map
        .remove("payload")
        .unwrap_or_else(|| Value::Object(Map::new()));
    let bad = |reason: String| DecodeError::InvalidPayload { id, ty, reason };
    let body = match ty {
        TYPE_REQUESTED => {
            Body::Requested(serde_json::from_value(payload).map_err(|e| bad(e.to_string()))?)
        }
        TYPE_RESPONDED => {
            let Value::Object(mut p) = payload else {
                return Err(bad("expected an object".into()));
            };
            let output = p
                .remove("output")
                .ok_or_else(|| bad("missing field `output`".into()))?;
            Body::Responded { output }
        }
        TYPE_ERROR => Body::Error(serde_json::from_value(payload).map_err(|e| bad(e.to_string()))?),
        _ => {
            if !payload.is_object() {
                return Err(bad("expected an object".into()));
            }
            if ty == TYPE_COMPLETED {
                Body::Completed
            } else {
                Body::Aborted
            }
        }
    };
    Ok(Message { id, body })
}

/// At most `max` bytes of `s`, cut at a character boundary (for peer text in errors).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Reassembles frames from a byte stream.
///
/// Feed it what each read returned, then call [`Decoder::poll`] until it returns `Ok(None)`
/// (more bytes needed). A frame is buffered only after its length header passed the limit,
/// so the buffer never holds more than one frame plus the last input fed.
///
/// Memory follows the bytes that arrived, never the length a header announces: the buffer
/// grows as bytes are fed (doubling, and never past the end of the frame being assembled),
/// and after a poll its capacity is at most [`KEEP_CAPACITY`] or four times the bytes
/// still held, so a large frame's allocation is given back once it is decoded. A peer that
/// sends a 16 MiB header and stops costs a few bytes, not 16 MiB. [`Decoder::capacity`] is
/// what the buffer costs; account that, not [`Decoder::buffered`].
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
    fatal: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default limit of 16 MiB per frame.
    pub fn new() -> Self {
        Self::with_max(DEFAULT_MAX_FRAME)
    }

    /// A decoder accepting frame bodies of up to `max` bytes, clamped to `1..=64 MiB`.
    pub fn with_max(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max: max.clamp(1, MAX_FRAME_CAP),
            fatal: None,
        }
    }

    /// The frame limit in force.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Bytes held that no poll has consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes the buffer has allocated: what this decoder costs in memory.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends bytes read from the stream. Ignored after a fatal error.
    pub fn feed(&mut self, data: &[u8]) {
        if self.fatal.is_some() {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            // Moving the tail is cheaper than the frames consumed before it: amortised O(1).
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.grow_for(data.len());
        self.buf.extend_from_slice(data);
    }

    /// Makes room for `extra` more bytes: doubling keeps appends amortised O(1), and the end
    /// of the frame being assembled (when its header is buffered) caps the doubling, so no
    /// allocation runs ahead of the bytes of the frame that are yet to come.
    fn grow_for(&mut self, extra: usize) {
        let need = self.buf.len().saturating_add(extra);
        let cap = self.buf.capacity();
        if need <= cap {
            return;
        }
        let mut target = cap.saturating_mul(2).max(MIN_CAPACITY);
        if let Some(end) = self.frame_end() {
            target = target.min(end);
        }
        let target = target.max(need);
        self.buf.reserve_exact(target - self.buf.len());
    }

    /// Where the frame at the front ends in `buf`, once its header is buffered and under the
    /// limit.
    fn frame_end(&self) -> Option<usize> {
        let header = self.buf.get(self.start..self.start + HEADER_LEN)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        (len <= self.max).then_some(self.start + HEADER_LEN + len)
    }

    /// Gives capacity back once it is more than [`KEEP_CAPACITY`] and four times what is
    /// held: after a large frame is decoded, its buffer does not stay allocated.
    fn compact(&mut self) {
        let cap = self.buf.capacity();
        let held = self.buffered();
        if cap <= KEEP_CAPACITY || held.saturating_mul(4) >= cap {
            return;
        }
        if held == 0 {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..self.start);
            self.buf.shrink_to(held.max(KEEP_CAPACITY.min(cap / 2)));
        }
        self.start = 0;
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    ///
    /// After a recoverable error (any but [`DecodeError::is_fatal`]) the offending frame has
    /// been consumed and polling may continue; after a fatal one every poll repeats it.
    pub fn poll(&mut self) -> Result<Option<Message>, DecodeError> {
        let res = self.poll_frame();
        self.compact();
        res
    }

    fn poll_frame(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        let avail = self.buf.get(self.start..).unwrap_or_default();
        let Some(header) = avail.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if len == 0 {
            self.start += HEADER_LEN;
            return Err(DecodeError::ZeroLength);
        }
        let body_len = len as usize;
        if body_len > self.max {
            let e = DecodeError::TooLong { len, max: self.max };
            self.fatal = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Err(e);
        }
        let Some(body) = avail.get(HEADER_LEN..HEADER_LEN + body_len) else {
            // Nothing is reserved for the rest of the frame: `feed` grows the buffer as its
            // bytes arrive (the announced length is only a promise).
            return Ok(None);
        };
        let res = decode_message(body);
        self.start += HEADER_LEN + body_len;
        res.map(Some)
    }
}

/// The oracle behind [`crate::fuzzing::fuzz_call`], beside the private decoder it checks.
pub(crate) fn fuzz_call(data: &[u8]) {
    let whole = decode_all(data, &[data.len().max(1)]);
    for msg in whole.iter().flatten() {
        let frame = match encode_into_vec(msg) {
            Ok(f) => f,
            Err(e) => panic!("re-encoding a decoded message failed: {e}"),
        };
        let again = frame.get(HEADER_LEN..).map(decode_message);
        assert_eq!(
            again,
            Some(Ok(msg.clone())),
            "round trip changed the message"
        );
    }
    // Split points taken from the data itself, so the fuzzer explores them too.
    let sizes: Vec<usize> = data
        .iter()
        .take(16)
        .map(|b| usize::from(*b % 13) + 1)
        .collect();
    let split = decode_all(data, if sizes.is_empty() { &[1] } else { &sizes });
    assert_eq!(whole, split, "split reads decoded differently");
    let bytewise = decode_all(data, &[1]);
    assert_eq!(whole, bytewise, "byte-at-a-time reads decoded differently");
}

fn encode_into_vec(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(msg, MAX_FRAME_CAP, &mut out)?;
    Ok(out)
}

/// Feeds `data` in pieces cycling through `sizes`, polling after each, until the data is
/// consumed or a fatal error.
fn decode_all(data: &[u8], sizes: &[usize]) -> Vec<Result<Message, DecodeError>> {
    let mut dec = Decoder::with_max(1 << 20);
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    loop {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        i += 1;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        dec.feed(piece);
        assert!(
            dec.buffered() <= data.len(),
            "decoder holds more than it was fed"
        );
        // Memory follows the bytes fed, never an announced length.
        assert!(
            dec.capacity() <= KEEP_CAPACITY.max(2 * data.len()).max(MIN_CAPACITY),
            "decoder allocated {} bytes for {} fed",
            dec.capacity(),
            data.len()
        );
        // Each poll that returns something consumes at least a header, so this is bounded.
        for _ in 0..=data.len() / HEADER_LEN + 1 {
            match dec.poll() {
                Ok(None) => break,
                Ok(Some(m)) => out.push(Ok(m)),
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        return out;
                    }
                }
            }
        }
        assert!(
            dec.capacity() <= KEEP_CAPACITY.max(4 * dec.buffered()),
            "decoder kept {} bytes of capacity for {} held (limit KEEP_CAPACITY or 4x held)",
            dec.capacity(),
            dec.buffered()
        );
        if rest.is_empty() {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "6f1c2a4e-8b3d-4c5e-9f70-112233445566";

    fn id() -> CallId {
        ID.parse().unwrap()
    }

    fn frame(json: &str) -> Vec<u8> {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    fn samples() -> Vec<Message> {
        vec![
            Message {
                id: id(),
                body: Body::Requested(Request {
                    operation_id: "/math/add".into(),
                    input: json!({"a": 1, "b": [2.5, "x", null]}),
                    auth_token: Some("alk_secret".into()),
                    forwarded_for: Some("node-b".into()),
                }),
            },
            Message {
                id: id(),
                body: Body::Responded {
                    output: json!("ok"),
                },
            },
            Message {
                id: id(),
                body: Body::Completed,
            },
            Message {
                id: CallId::NIL,
                body: Body::Aborted,
            },
            Message {
                id: id(),
                body: Body::Error(ErrorBody {
                    details: Some(json!({"why": 1})),
                    ..ErrorBody::new(ErrorCode::Timeout, "too slow")
                }),
            },
        ]
    }

    #[test]
    fn call_id_text_round_trips() {
        assert_eq!(id().to_string(), ID);
        assert_eq!(ID.to_uppercase().parse::<CallId>(), Ok(id()));
        for bad in [
            "",
            "6f1c2a4e8b3d4c5e9f70112233445566",
            "6f1c2a4e-8b3d-4c5e-9f70-11223344556g",
            "6f1c2a4e-8b3d-4c5e-9f70_112233445566",
            "6f1c2a4e-8b3d-4c5e-9f70-1122334455667",
            "é6f1c2a4-8b3d-4c5e-9f70-11223344556",
        ] {
            assert_eq!(bad.parse::<CallId>(), Err(CallIdError), "{bad}");
        }
        let v4 = CallId::from_random([0xff; 16]).to_string();
        assert_eq!(v4.get(14..15), Some("4"));
        assert_eq!(v4.get(19..20), Some("b"));
    }

    #[test]
    fn encodes_the_documented_wire_form() {
        let bytes = encode(&samples()[0]).unwrap();
        let body: Value = serde_json::from_slice(&bytes[4..]).unwrap();
        assert_eq!(
            body,
            json!({
                "type": "call.requested",
                "id": ID,
                "payload": {
                    "operationId": "/math/add",
                    "input": {"a": 1, "b": [2.5, "x", null]},
                    "auth_token": "alk_secret",
                    "forwarded_for": "node-b"
                }
            })
        );
        assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - 4
        );
        let done = encode(&samples()[2]).unwrap();
        assert_eq!(
            &done[4..],
            format!(r#"{{"type":"call.completed","id":"{ID}","payload":{{}}}}"#).as_bytes()
        );
        let err: Value = serde_json::from_slice(&encode(&samples()[4]).unwrap()[4..]).unwrap();
        assert_eq!(
            err["payload"],
            json!({"code": "TIMEOUT", "message": "too slow", "retryable": true, "details": {"why": 1}})
        );
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let bytes = encode(&m).unwrap();
            let mut d = Decoder::new();
            d.feed(&bytes);
            assert_eq!(d.poll(), Ok(Some(m)));
            assert_eq!(d.poll(), Ok(None));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let text = format!("{:?}", samples()[0]);
        assert!(!text.contains("alk_secret"), "{text}");
    }

    #[test]
    fn many_frames_in_one_read() {
        let all: Vec<u8> = samples().iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut d = Decoder::new();
        d.feed(&all);
        for m in samples() {
            assert_eq!(d.poll(), Ok(Some(m)));
        }
        assert_eq!(d.poll(), Ok(None));
    }

    #[test]
    fn frame_split_across_every_boundary() {
        let all: Vec<u8> = samples().iter().flat_map(|m| encode(m).unwrap()).collect();
        for cut in 0..all.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for part in [&all[..cut], &all[cut..]] {
                d.feed(part);
                while let Some(m) = d.poll().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, samples(), "cut at {cut}");
        }
        // One byte at a time.
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &all {
            d.feed(std::slice::from_ref(b));
            while let Some(m) = d.poll().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn incomplete_until_the_whole_frame_is_there() {
        let bytes = encode(&samples()[1]).unwrap();
        let mut d = Decoder::new();
        d.feed(&bytes[..3]);
        assert_eq!(d.poll(), Ok(None));
        d.feed(&bytes[3..bytes.len() - 1]);
        assert_eq!(d.poll(), Ok(None));
        d.feed(&bytes[bytes.len() - 1..]);
        assert!(matches!(d.poll(), Ok(Some(_))));
    }

    #[test]
    fn zero_length_is_an_error_and_the_stream_goes_on() {
        let mut d = Decoder::new();
        d.feed(&[0, 0, 0, 0]);
        d.feed(&encode(&samples()[2]).unwrap());
        assert_eq!(d.poll(), Err(DecodeError::ZeroLength));
        assert_eq!(d.poll(), Ok(Some(samples()[2].clone())));
    }

    #[test]
    fn too_long_is_fatal() {
        let mut d = Decoder::new();
        d.feed(&[0xff, 0xff, 0xff, 0xff, b'{']);
        let e = DecodeError::TooLong {
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME,
        };
        assert_eq!(d.poll(), Err(e.clone()));
        assert!(e.is_fatal());
        d.feed(&encode(&samples()[2]).unwrap());
        assert_eq!(d.poll(), Err(e));
        assert_eq!(d.buffered(), 0);

        let mut d = Decoder::with_max(10);
        d.feed(&frame(r#"{"type":"x"}"#));
        assert_eq!(d.poll(), Err(DecodeError::TooLong { len: 12, max: 10 }));
        assert_eq!(Decoder::with_max(usize::MAX).max_frame(), MAX_FRAME_CAP);
        assert_eq!(Decoder::with_max(0).max_frame(), 1);
    }

    #[test]
    fn limit_is_inclusive() {
        let f = encode(&samples()[2]).unwrap();
        let mut d = Decoder::with_max(f.len() - 4);
        d.feed(&f);
        assert!(matches!(d.poll(), Ok(Some(_))));
        let m = &samples()[2];
        let mut out = Vec::new();
        assert!(matches!(
            encode_into(m, f.len() - 5, &mut out),
            Err(EncodeError::TooLong { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn precise_errors() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (
                {
                    let mut v = vec![0, 0, 0, 3];
                    v.extend_from_slice(&[b'{', 0xff, b'}']);
                    v
                },
                DecodeError::InvalidUtf8 { valid_up_to: 1 },
            ),
            (frame("[1,2]"), DecodeError::NotAnObject),
            (
                frame(r#"{"type":"call.completed"}"#),
                DecodeError::InvalidId,
            ),
            (
                frame(r#"{"type":"call.completed","id":"nope"}"#),
                DecodeError::InvalidId,
            ),
            (
                frame(&format!(r#"{{"id":"{ID}"}}"#)),
                DecodeError::MissingType { id: id() },
            ),
            (
                frame(&format!(r#"{{"type":"call.teleport","id":"{ID}"}}"#)),
                DecodeError::UnknownType {
                    id: id(),
                    ty: "call.teleport".into(),
                },
            ),
            (
                frame(&format!(
                    r#"{{"type":"call.responded","id":"{ID}","payload":{{}}}}"#
                )),
                DecodeError::InvalidPayload {
                    id: id(),
                    ty: TYPE_RESPONDED,
                    reason: "missing field `output`".into(),
                },
            ),
            (
                frame(&format!(
                    r#"{{"type":"call.completed","id":"{ID}","payload":3}}"#
                )),
                DecodeError::InvalidPayload {
                    id: id(),
                    ty: TYPE_COMPLETED,
                    reason: "expected an object".into(),
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut d = Decoder::new();
            d.feed(&bytes);
            assert_eq!(d.poll(), Err(want.clone()));
            assert!(!want.is_fatal());
            assert_eq!(d.poll(), Ok(None), "frame consumed after {want}");
        }
        let mut d = Decoder::new();
        d.feed(&frame("{not json"));
        assert!(matches!(d.poll(), Err(DecodeError::InvalidJson { .. })));
        let mut d = Decoder::new();
        d.feed(&frame(&format!(
            r#"{{"type":"call.requested","id":"{ID}","payload":{{"input":1}}}}"#
        )));
        assert!(matches!(
            d.poll(),
            Err(DecodeError::InvalidPayload {
                ty: TYPE_REQUESTED,
                ..
            })
        ));
        let long = "x".repeat(1000);
        let mut d = Decoder::new();
        d.feed(&frame(&format!(r#"{{"type":"{long}","id":"{ID}"}}"#)));
        match d.poll() {
            Err(DecodeError::UnknownType { ty, .. }) => assert_eq!(ty.len(), MAX_QUOTED_TYPE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn optional_parts_may_be_absent() {
        let mut d = Decoder::new();
        d.feed(&frame(&format!(
            r#"{{"type":"call.completed","id":"{ID}"}}"#
        )));
        d.feed(&frame(&format!(
            r#"{{"type":"call.requested","id":"{ID}","payload":{{"operationId":"/a/b"}},"extra":1}}"#
        )));
        assert_eq!(
            d.poll(),
            Ok(Some(Message {
                id: id(),
                body: Body::Completed
            }))
        );
        match d.poll() {
            Ok(Some(Message {
                body: Body::Requested(r),
                ..
            })) => {
                assert_eq!(r.operation_id, "/a/b");
                assert_eq!(r.input, Value::Null);
                assert_eq!(r.auth_token, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn announced_length_is_not_reserved() {
        // A 16 MiB header and nothing more costs a few bytes, not 16 MiB.
        let mut d = Decoder::new();
        d.feed(&(16u32 << 20).to_be_bytes());
        assert_eq!(d.poll(), Ok(None));
        assert!(d.capacity() <= MIN_CAPACITY, "capacity {}", d.capacity());
        // Bytes of the body grow the buffer as they come, by doubling.
        d.feed(&[b' '; 1000]);
        assert_eq!(d.poll(), Ok(None));
        assert!(
            d.capacity() <= 2048,
            "capacity {} for 1004 bytes",
            d.capacity()
        );
    }

    #[test]
    fn growth_stops_at_the_end_of_the_frame() {
        let msg = Message {
            id: id(),
            body: Body::Responded {
                output: json!("y".repeat(3 << 20)),
            },
        };
        let bytes = encode(&msg).unwrap();
        let mut d = Decoder::new();
        let mut max_cap = 0;
        for piece in bytes.chunks(64 << 10) {
            d.feed(piece);
            max_cap = max_cap.max(d.capacity());
            if d.buffered() < bytes.len() {
                assert_eq!(d.poll(), Ok(None));
            }
        }
        // Doubling would have reached 4 MiB; the frame's end caps it.
        assert_eq!(
            max_cap,
            bytes.len(),
            "capacity beyond the frame being assembled"
        );
        assert_eq!(d.poll(), Ok(Some(msg)));
        assert!(
            d.capacity() <= KEEP_CAPACITY,
            "capacity {} kept after a {}-byte frame (limit KEEP_CAPACITY)",
            d.capacity(),
            bytes.len()
        );
    }

    #[test]
    fn capacity_is_given_back_with_a_partial_frame_behind() {
        let big = encode(&Message {
            id: id(),
            body: Body::Responded {
                output: json!("z".repeat(1 << 20)),
            },
        })
        .unwrap();
        let small = encode(&samples()[2]).unwrap();
        let mut d = Decoder::new();
        d.feed(&big);
        d.feed(&small[..small.len() - 1]);
        assert!(d.capacity() >= big.len());
        assert!(matches!(d.poll(), Ok(Some(_))));
        // What is left is the partial small frame: the megabyte is returned.
        assert_eq!(d.buffered(), small.len() - 1);
        assert!(d.capacity() <= KEEP_CAPACITY, "capacity {}", d.capacity());
        d.feed(&small[small.len() - 1..]);
        assert_eq!(d.poll(), Ok(Some(samples()[2].clone())));
        // Small frames keep a small buffer across polls (no allocation per read).
        for _ in 0..3 {
            d.feed(&small);
            assert!(matches!(d.poll(), Ok(Some(_))));
            assert!(d.capacity() > 0 && d.capacity() <= KEEP_CAPACITY);
        }
    }

    #[test]
    fn fuzz_oracle_holds_on_samples() {
        let all: Vec<u8> = samples().iter().flat_map(|m| encode(m).unwrap()).collect();
        fuzz_call(&all);
        fuzz_call(&[]);
        fuzz_call(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    }
}
