//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay test
//! (`tests/corpus.rs`): one `fuzz_<target>` per target, never a panic, an oracle asserted.

use crate::request::{ChunkSizes, HEADER_LEN, MAX_RESPONSE, Request, RequestError, RequestReader};

/// Feeds arbitrary bytes to the request reader, split where the first byte says, and
/// checks the answer against a one-shot decode; checks the chunking of small responses.
pub fn fuzz_perf_request(data: &[u8]) {
    let (split_seed, stream) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s), rest),
        None => (1, data),
    };
    // The oracle: decode the whole stream at once.
    let expected = match stream.get(..HEADER_LEN) {
        None => Err(RequestError::Truncated { got: stream.len() }),
        Some(h) => {
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(h);
            let n = u64::from_be_bytes(b);
            if n > MAX_RESPONSE {
                Err(RequestError::TooLarge {
                    requested: n,
                    limit: MAX_RESPONSE,
                })
            } else {
                Ok(Request {
                    response_len: n,
                    body_len: (stream.len() - HEADER_LEN) as u64,
                })
            }
        }
    };
    // Feed in pieces of 1..=split_seed+1 bytes.
    let step = split_seed % 13 + 1;
    let mut reader = RequestReader::new();
    let mut fed_err = None;
    for piece in stream.chunks(step) {
        if let Err(e) = reader.feed(piece) {
            fed_err = Some(e);
            break;
        }
    }
    let got = match fed_err {
        Some(e) => Err(e),
        None => reader.finish(),
    };
    assert_eq!(got, expected, "piecewise and one-shot decodes differ");
    if let Ok(req) = got
        && req.response_len <= 1 << 20
    {
        let chunk = (split_seed % 4096) + 1;
        let total: u64 = ChunkSizes::new(req.response_len, chunk)
            .map(|n| {
                assert!(n > 0 && n <= chunk);
                n as u64
            })
            .sum();
        assert_eq!(total, req.response_len);
    }
}
