//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay test.
//!
//! The call engine's per-connection state is driven here without sockets or tasks: the
//! same [`Inbound`] each stream reader uses (frame decoder and connection-wide memory
//! account) and the same [`admit`] decision on each call, fed frames across several
//! streams as a stream reader would meet them. The queues, tasks and operations around them
//! need a connection and a runtime and are left to the integration tests.

use crate::inbound::{Admit, Inbound, READ_CHUNK, admit};
use alknet_proto::call::{Body, CallId, DecodeError, Decoder, KEEP_CAPACITY, Message};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

/// Streams the fuzzer addresses (the low three bits of a record's control byte).
const STREAMS: usize = 8;
/// Frame limit of the fuzzed connection.
const MAX_FRAME: usize = 4096;
/// The connection's decoder budget: room for one read plus 8 KiB, so the fuzzer reaches it.
const MAX_BUFFERED: usize = READ_CHUNK + (8 << 10);
/// Calls served at once.
const MAX_CONCURRENT: usize = 4;
/// Violations after which the connection is closed.
const MAX_VIOLATIONS: u32 = 8;

/// Drives one connection's receiving side with a sequence of records `[control, length,
/// bytes…]`: control `>> 5` is the action (`0..=5` the bytes arrive on stream `control & 7`,
/// `6` that stream ends, `7` the oldest call being served finishes).
///
/// Oracles: no panic; the connection's account equals the capacity of the live decoders and
/// stays within its budget, and each decoder's capacity stays within `KEEP_CAPACITY` or
/// four times what it holds; calls served never exceed the limit, and an id is never served
/// twice at once; what each stream decoded, however its bytes were split and interleaved
/// with other streams, is what decoding its bytes in one piece gives.
pub fn fuzz_session(data: &[u8]) {
    let total = Rc::new(Cell::new(0usize));
    let mut streams: Vec<Option<Inbound>> = (0..STREAMS)
        .map(|_| Some(Inbound::new(MAX_FRAME, total.clone())))
        .collect();
    let mut fed: Vec<Vec<u8>> = vec![Vec::new(); STREAMS];
    let mut got: Vec<Vec<Result<Message, DecodeError>>> = vec![Vec::new(); STREAMS];
    // Calls being served, with the order they started in.
    let mut served: HashMap<CallId, u64> = HashMap::new();
    let mut started = 0u64;
    let mut violations = 0u32;
    let mut rest = data;
    while let [control, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let s = usize::from(control & 7);
        match control >> 5 {
            6 => {
                if let Some(slot) = streams.get_mut(s) {
                    *slot = None;
                }
            }
            7 => {
                if let Some(oldest) = served.iter().min_by_key(|(_, n)| **n).map(|(id, _)| *id) {
                    served.remove(&oldest);
                }
            }
            _ => {
                let (Some(slot), Some(fed), Some(got)) =
                    (streams.get_mut(s), fed.get_mut(s), got.get_mut(s))
                else {
                    continue;
                };
                let Some(inbound) = slot.as_mut() else {
                    continue;
                };
                if !inbound.may_read(MAX_BUFFERED) {
                    // The reader answers "receive buffer full" and ends the stream.
                    *slot = None;
                    continue;
                }
                inbound.feed(chunk);
                fed.extend_from_slice(chunk);
                let mut ended = false;
                // Each message consumes at least a header: bounded by the bytes fed.
                for _ in 0..=fed.len() {
                    match inbound.poll() {
                        Ok(None) => break,
                        Ok(Some((msg, frame_len))) => {
                            assert!(frame_len > 4, "a message of {frame_len} frame bytes");
                            let id = msg.id;
                            let request = matches!(msg.body, Body::Requested(_));
                            got.push(Ok(msg));
                            if !request {
                                continue;
                            }
                            match admit(&served, id, MAX_CONCURRENT) {
                                Admit::Serve => {
                                    started += 1;
                                    served.insert(id, started);
                                }
                                Admit::Busy => assert_eq!(served.len(), MAX_CONCURRENT),
                                Admit::Duplicate => {
                                    assert!(served.contains_key(&id));
                                    violations += 1;
                                    ended = true;
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            got.push(Err(e));
                            violations += 1;
                            ended = true;
                            break;
                        }
                    }
                }
                if let Some(inbound) = slot.as_ref() {
                    let cap = inbound.capacity();
                    assert!(
                        cap <= KEEP_CAPACITY.max(4 * fed.len()),
                        "decoder capacity {cap} for {} bytes fed",
                        fed.len()
                    );
                }
                if ended {
                    *slot = None;
                }
            }
        }
        let live: usize = streams.iter().flatten().map(Inbound::capacity).sum();
        assert_eq!(
            total.get(),
            live,
            "connection account differs from its decoders"
        );
        assert!(
            total.get() <= MAX_BUFFERED,
            "decoders hold {} bytes (budget {MAX_BUFFERED})",
            total.get()
        );
        assert!(
            served.len() <= MAX_CONCURRENT,
            "{} calls served",
            served.len()
        );
        if violations >= MAX_VIOLATIONS {
            // The connection is closed.
            break;
        }
    }
    drop(streams);
    assert_eq!(
        total.get(),
        0,
        "account not returned when the streams ended"
    );
    for (bytes, got) in fed.iter().zip(&got) {
        let whole = decode_whole(bytes);
        assert!(
            whole.len() >= got.len() && whole.get(..got.len()) == Some(got.as_slice()),
            "interleaved reads decoded {got:?}, one read {whole:?}"
        );
    }
}

/// Everything `bytes` decode to in one read, up to a fatal error.
fn decode_whole(bytes: &[u8]) -> Vec<Result<Message, DecodeError>> {
    let mut dec = Decoder::with_max(MAX_FRAME);
    dec.feed(bytes);
    let mut out = Vec::new();
    for _ in 0..=bytes.len() {
        match dec.poll() {
            Ok(None) => break,
            Ok(Some(m)) => out.push(Ok(m)),
            Err(e) => {
                let fatal = e.is_fatal();
                out.push(Err(e));
                if fatal {
                    break;
                }
            }
        }
    }
    out
}

/// Feeds every file of a committed corpus directory to `target`; returns how many there
/// were. Fails when the directory is missing or empty.
pub fn replay_corpus(dir: &std::path::Path, target: fn(&[u8])) -> Result<usize, String> {
    alknet_proto::fuzzing::replay_corpus(dir, target)
}
