//! SFTP v3 framing around russh-sftp's codec: the bounds on incoming packets, the request id
//! of a packet that does not decode, and the two replies on the transfer path (DATA and
//! STATUS) encoded straight into their final buffer.
//!
//! Every other packet goes through `russh_sftp::protocol` (`Packet::try_from` / `Bytes::try_from`).
//! DATA is written here so a read lands in the reply buffer directly, without the codec's
//! second copy; the bytes are the codec's (a unit test compares them).

use bytes::{BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};

/// The largest packet a client may send, counted without its 4-byte length field, as
/// OpenSSH's `sftp-server` allows: a WRITE of [`MAX_DATA`] bytes plus its header fits.
pub(crate) const MAX_PACKET: u32 = 256 * 1024;

/// The largest READ or WRITE payload, advertised in `limits@openssh.com`. OpenSSH's client
/// uses it as its transfer block size, so larger blocks mean fewer requests per gigabyte.
pub(crate) const MAX_DATA: u32 = MAX_PACKET - 1024;

/// Packet types that appear in a server's dispatch.
pub(crate) mod kind {
    pub(crate) const INIT: u8 = 1;
    pub(crate) const FIRST_REQUEST: u8 = 3;
    pub(crate) const LAST_REQUEST: u8 = 20;
    pub(crate) const EXTENDED: u8 = 200;
    pub(crate) const STATUS: u8 = 101;
    pub(crate) const DATA: u8 = 103;
}

/// The request id of a packet body (type byte first), when it is long enough to carry one.
pub(crate) fn request_id(body: &[u8]) -> u32 {
    match body.get(1..5) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// A STATUS reply.
pub(crate) fn status(id: u32, code: StatusCode, message: &str) -> Bytes {
    let lang = b"en";
    let mut out = BytesMut::with_capacity(4 + 1 + 4 + 4 + 4 + message.len() + 4 + lang.len());
    let len = 1 + 4 + 4 + 4 + message.len() + 4 + lang.len();
    out.put_u32(len as u32);
    out.put_u8(kind::STATUS);
    out.put_u32(id);
    out.put_u32(code as u32);
    out.put_u32(message.len() as u32);
    out.put_slice(message.as_bytes());
    out.put_u32(lang.len() as u32);
    out.put_slice(lang);
    out.freeze()
}

/// A reply through russh-sftp's encoder; one it cannot encode becomes a FAILURE status.
pub(crate) fn encode(id: u32, packet: Packet) -> Bytes {
    Bytes::try_from(packet).unwrap_or_else(|e| {
        status(
            id,
            StatusCode::Failure,
            &format!("reply not encodable: {e}"),
        )
    })
}

/// Size of a DATA reply's header: length, type, id, data length.
pub(crate) const DATA_HEADER: usize = 4 + 1 + 4 + 4;

/// A buffer for a DATA reply of up to `cap` bytes: the header is reserved, the caller
/// appends the data and calls [`finish_data`].
pub(crate) fn data_buffer(cap: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(DATA_HEADER + cap);
    out.put_bytes(0, DATA_HEADER);
    out
}

/// Fills in the header of a DATA reply built by [`data_buffer`].
pub(crate) fn finish_data(id: u32, mut out: BytesMut) -> Bytes {
    let data_len = out.len().saturating_sub(DATA_HEADER) as u32;
    let mut header = [0u8; DATA_HEADER];
    header[0..4].copy_from_slice(&(data_len + 9).to_be_bytes());
    header[4] = kind::DATA;
    header[5..9].copy_from_slice(&id.to_be_bytes());
    header[9..13].copy_from_slice(&data_len.to_be_bytes());
    if let Some(head) = out.get_mut(..DATA_HEADER) {
        head.copy_from_slice(&header);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh_sftp::protocol::{Data, Status};

    #[test]
    fn data_reply_matches_the_codec() {
        for data in [vec![], vec![7u8; 1], vec![0x5a; 65536]] {
            let mut out = data_buffer(data.len());
            out.extend_from_slice(&data);
            let ours = finish_data(42, out);
            let theirs = Bytes::try_from(Packet::Data(Data { id: 42, data })).ok();
            assert_eq!(Some(ours), theirs);
        }
    }

    #[test]
    fn status_reply_matches_the_codec() {
        let ours = status(9, StatusCode::NoSuchFile, "no such file");
        let theirs = Bytes::try_from(Packet::Status(Status {
            id: 9,
            status_code: StatusCode::NoSuchFile,
            error_message: "no such file".into(),
            language_tag: "en".into(),
        }))
        .ok();
        assert_eq!(Some(ours), theirs);
    }

    #[test]
    fn request_id_of_short_packets_is_zero() {
        assert_eq!(request_id(&[5]), 0);
        assert_eq!(request_id(&[5, 0, 0, 1, 2, 9]), 258);
    }
}
