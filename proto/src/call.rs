//! The `alknet/call` framing: 4-byte big-endian length, then that many bytes of JSON.
