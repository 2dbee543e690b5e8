//! Criterion suite for the `alknet/call` framing (`cargo bench -p alknet-bench --bench call`):
//!
//! * `call_encode`: `encode_into` of a `call.requested` frame (operation `/bench/echo`, the
//!   input a JSON string of 64 B or 16 KiB) and of the matching `call.responded` frame, into
//!   a reused buffer, as the session does;
//! * `call_decode`: `Decoder` on one whole frame, on 64 frames in one buffer (many calls
//!   answered in one read) and on one frame fed in pieces (16 B pieces for the small frame,
//!   1 200 B, about one QUIC packet, for the large one);
//! * `grpc_prost` (**baseline**): the same payload as a protobuf `bytes` field, encoded and
//!   decoded with prost behind gRPC's 5-byte message header, which is what tonic's codec does
//!   per unary call.
//!
//! `Throughput::Bytes` is the frame bytes; ratios to read are `call_*` against `grpc_prost`
//! at the same payload size.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_proto::call::{
    Body, CallId, DEFAULT_MAX_FRAME, Decoder, Message, Request, encode, encode_into,
};
use bytes::{Buf, BufMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use serde_json::Value;
use std::hint::black_box;
use std::time::Duration;

const SIZES: [(&str, usize); 2] = [("64B", 64), ("16KiB", 16 * 1024)];

fn payload(n: usize) -> String {
    // Printable ASCII, so the JSON string is exactly `n` bytes between its quotes.
    (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

fn id(n: u64) -> CallId {
    CallId::from_random(u128::from(n).to_be_bytes())
}

fn request(n: usize) -> Message {
    Message {
        id: id(1),
        body: Body::Requested(Request {
            operation_id: "/bench/echo".into(),
            input: Value::String(payload(n)),
            auth_token: None,
            forwarded_for: None,
        }),
    }
}

fn response(n: usize) -> Message {
    Message {
        id: id(1),
        body: Body::Responded {
            output: Value::String(payload(n)),
        },
    }
}

fn call_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("call_encode");
    for (name, n) in SIZES {
        for (kind, msg) in [("requested", request(n)), ("responded", response(n))] {
            let len = encode(&msg).unwrap().len();
            g.throughput(Throughput::Bytes(len as u64));
            let mut out = Vec::with_capacity(len);
            g.bench_function(BenchmarkId::new(kind, name), |b| {
                b.iter(|| {
                    out.clear();
                    encode_into(black_box(&msg), DEFAULT_MAX_FRAME, &mut out).unwrap();
                    black_box(out.len())
                })
            });
        }
    }
    g.finish();
}

fn drain(dec: &mut Decoder) -> usize {
    let mut n = 0;
    while let Some(m) = dec.poll().unwrap() {
        black_box(m);
        n += 1;
    }
    n
}

fn call_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("call_decode");
    for (name, n) in SIZES {
        let frame = encode(&request(n)).unwrap();
        g.throughput(Throughput::Bytes(frame.len() as u64));
        let mut dec = Decoder::new();
        g.bench_function(BenchmarkId::new("one", name), |b| {
            b.iter(|| {
                dec.feed(black_box(&frame));
                assert_eq!(drain(&mut dec), 1);
            })
        });

        let batch = 64;
        let mut many = Vec::new();
        for i in 0..batch {
            let mut m = response(n);
            m.id = id(i);
            encode_into(&m, DEFAULT_MAX_FRAME, &mut many).unwrap();
        }
        g.throughput(Throughput::Bytes(many.len() as u64));
        g.bench_function(BenchmarkId::new("many_64", name), |b| {
            b.iter(|| {
                dec.feed(black_box(&many));
                assert_eq!(drain(&mut dec), batch as usize);
            })
        });

        let piece = if n <= 64 { 16 } else { 1200 };
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(BenchmarkId::new(format!("split_{piece}B"), name), |b| {
            b.iter(|| {
                let mut got = 0;
                for chunk in frame.chunks(piece) {
                    dec.feed(black_box(chunk));
                    got += drain(&mut dec);
                }
                assert_eq!(got, 1);
            })
        });
    }
    g.finish();
}

/// The gRPC echo message of `call-load`'s tonic server: `bytes data = 1`.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoMsg {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

fn grpc_prost(c: &mut Criterion) {
    let mut g = c.benchmark_group("grpc_prost");
    for (name, n) in SIZES {
        let msg = EchoMsg {
            data: payload(n).into_bytes(),
        };
        let body = msg.encoded_len();
        let len = 5 + body;
        g.throughput(Throughput::Bytes(len as u64));
        let mut out = Vec::with_capacity(len);
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                out.clear();
                out.put_u8(0);
                out.put_u32(black_box(&msg).encoded_len() as u32);
                msg.encode(&mut out).unwrap();
                black_box(out.len())
            })
        });
        let mut frame = Vec::with_capacity(len);
        frame.put_u8(0);
        frame.put_u32(body as u32);
        msg.encode(&mut frame).unwrap();
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                let mut buf = black_box(&frame[..]);
                let _compressed = buf.get_u8();
                let l = buf.get_u32() as usize;
                let m = EchoMsg::decode(&buf[..l]).unwrap();
                black_box(m.data.len())
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = call_encode, call_decode, grpc_prost
}
criterion_main!(benches);
