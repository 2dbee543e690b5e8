//! The response body: whole, or a stream of chunks produced on the shard (Server-Sent
//! Events). Dropping a streaming body (the client went away) drops its producer, which
//! aborts the call behind it.

use bytes::Bytes;
use futures_util::Stream;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A shard-local stream of body chunks.
pub(crate) type Chunks = Pin<Box<dyn Stream<Item = Bytes>>>;

/// A response body.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(Chunks),
}

impl Body {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        Body::Full(Some(b.into()))
    }

    pub(crate) fn empty() -> Self {
        Body::Full(None)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(http_body::Frame::data(b)))),
            Body::Stream(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|c| c.map(|b| Ok(http_body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => http_body::SizeHint::with_exact(0),
            Body::Stream(_) => http_body::SizeHint::default(),
        }
    }
}
