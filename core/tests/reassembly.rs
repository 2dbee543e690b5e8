//! One-byte stream fragments delivered backwards: the server must reassemble them exactly.
//!
//! (Memory: quinn-proto's assembler defragments when its allocation estimate exceeds the
//! buffered bytes; Alknet copies each received datagram into an exact-size buffer so that
//! estimate is true. Client, server and harness share this process here, so resident memory
//! cannot single out the server; the bound is checked against a real server in
//! `tests/integration/abuse.rs` for streams never read.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn reversed_one_byte_fragments_are_reassembled_exactly() {
    let mut pair = alknet_core::fuzzing::EndpointPair::connected().expect("handshake");
    let n = 20_000;
    let (packets, bytes) = pair
        .reversed_one_byte_fragments(n)
        .expect("the server closed the connection");
    // The attack really happened: (nearly) one packet per byte, delivered backwards.
    assert!(
        packets >= n * 9 / 10,
        "only {packets} packets for {n} bytes"
    );
    assert_eq!(bytes.len(), n);
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    // The connection goes on serving.
    assert!(pair.client_sends(b"after the storm"));
}
