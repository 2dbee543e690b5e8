//! The perf request, sans-IO: an 8-byte big-endian count of response bytes, then a request
//! body that runs to the end of the stream and is discarded.
//!
//! [`RequestReader`] is fed the stream's bytes in whatever pieces they arrive and never
//! stores the body, so a request costs the same eight bytes of state whatever its size. The
//! requested size is a `u64` from the wire; it is checked against [`MAX_RESPONSE`] as soon as
//! the header is complete, so an absurd request is refused before the body is read. Nothing
//! here allocates, touches a stream or reads a clock.

use thiserror::Error;

/// Length of the request header: the response size as a big-endian `u64`.
pub const HEADER_LEN: usize = 8;

/// Largest response served (1 TiB). The response is generated, never buffered, so the limit
/// only bounds how long one request may keep a stream busy; raise it for longer soak runs.
pub const MAX_RESPONSE: u64 = 1 << 40;

/// Why a request cannot be answered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The stream ended inside the 8-byte header.
    #[error("request ended after {got} of 8 header bytes")]
    Truncated {
        /// Header bytes that arrived.
        got: usize,
    },
    /// The client asked for more than [`MAX_RESPONSE`] bytes.
    #[error("request asks for {requested} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The size on the wire.
        requested: u64,
        /// The limit.
        limit: u64,
    },
}

/// A complete request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes to send back.
    pub response_len: u64,
    /// Bytes of request body received (and discarded).
    pub body_len: u64,
}

/// Reads one request from the bytes of a stream, in pieces of any size.
#[derive(Debug, Default, Clone)]
pub struct RequestReader {
    header: [u8; HEADER_LEN],
    have: usize,
    body: u64,
}

impl RequestReader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the stream. Fails as soon as the header asks for more than
    /// [`MAX_RESPONSE`]; the caller then stops the stream instead of reading its body.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), RequestError> {
        if self.have < HEADER_LEN {
            let take = (HEADER_LEN - self.have).min(data.len());
            let (head, rest) = data.split_at(take);
            if let Some(dst) = self.header.get_mut(self.have..self.have + take) {
                dst.copy_from_slice(head);
            }
            self.have += take;
            data = rest;
            if let Some(n) = self.response_len()
                && n > MAX_RESPONSE
            {
                return Err(RequestError::TooLarge {
                    requested: n,
                    limit: MAX_RESPONSE,
                });
            }
        }
        self.body = self.body.saturating_add(data.len() as u64);
        Ok(())
    }

    /// The requested response size, once the header is complete.
    pub fn response_len(&self) -> Option<u64> {
        (self.have == HEADER_LEN).then(|| u64::from_be_bytes(self.header))
    }

    /// Body bytes seen so far.
    pub fn body_len(&self) -> u64 {
        self.body
    }

    /// The request, at the end of the stream.
    pub fn finish(&self) -> Result<Request, RequestError> {
        match self.response_len() {
            None => Err(RequestError::Truncated { got: self.have }),
            Some(n) if n > MAX_RESPONSE => Err(RequestError::TooLarge {
                requested: n,
                limit: MAX_RESPONSE,
            }),
            Some(response_len) => Ok(Request {
                response_len,
                body_len: self.body,
            }),
        }
    }
}

/// The header a client writes to ask for `response_len` bytes.
pub fn encode_header(response_len: u64) -> [u8; HEADER_LEN] {
    response_len.to_be_bytes()
}

/// Splits a response of `len` bytes into chunks of at most `chunk` bytes (sizes only; the
/// bytes come from a static buffer).
#[derive(Debug, Clone)]
pub struct ChunkSizes {
    remaining: u64,
    chunk: usize,
}

impl ChunkSizes {
    /// Chunk sizes for `len` bytes, each at most `chunk` (at least 1).
    pub fn new(len: u64, chunk: usize) -> Self {
        Self {
            remaining: len,
            chunk: chunk.max(1),
        }
    }

    /// Bytes not yet handed out.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Iterator for ChunkSizes {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(self.chunk);
        self.remaining -= n as u64;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_split_anywhere_gives_one_answer() {
        let mut wire = encode_header(1_000_000).to_vec();
        wire.extend_from_slice(&[7; 100]);
        for split in 0..wire.len() {
            let mut r = RequestReader::new();
            r.feed(&wire[..split]).unwrap();
            r.feed(&wire[split..]).unwrap();
            assert_eq!(
                r.finish(),
                Ok(Request {
                    response_len: 1_000_000,
                    body_len: 100
                })
            );
        }
    }

    #[test]
    fn truncated_header_is_an_error() {
        let mut r = RequestReader::new();
        r.feed(&[0, 0, 0]).unwrap();
        assert_eq!(r.finish(), Err(RequestError::Truncated { got: 3 }));
        assert_eq!(
            RequestReader::new().finish(),
            Err(RequestError::Truncated { got: 0 })
        );
    }

    #[test]
    fn oversized_request_fails_when_header_completes() {
        let mut r = RequestReader::new();
        r.feed(&encode_header(MAX_RESPONSE)[..7]).unwrap();
        assert!(r.feed(&[0]).is_ok());
        let mut r = RequestReader::new();
        assert_eq!(
            r.feed(&encode_header(u64::MAX)),
            Err(RequestError::TooLarge {
                requested: u64::MAX,
                limit: MAX_RESPONSE
            })
        );
    }

    #[test]
    fn chunk_sizes_cover_the_response() {
        for (len, chunk) in [
            (0u64, 10usize),
            (1, 10),
            (10, 10),
            (11, 10),
            (65_537, 65_536),
        ] {
            let sizes: Vec<usize> = ChunkSizes::new(len, chunk).collect();
            assert_eq!(sizes.iter().map(|&n| n as u64).sum::<u64>(), len);
            assert!(sizes.iter().all(|&n| n > 0 && n <= chunk));
        }
    }
}
