//! Just enough DER to find the public key in an X.509 certificate.
//!
//! Alknet identifies peers by their Ed25519 key, whatever wrapper carries it, so it needs the
//! `subjectPublicKeyInfo` of a certificate and nothing else: no names, no dates, no
//! extensions. Signatures are checked by rustls; this reader only walks the structure, with
//! every length checked against the bytes actually present.

use thiserror::Error;

/// A DER structure did not have the expected shape.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DerError {
    /// The input ended inside a tag, length or value.
    #[error("truncated DER")]
    Truncated,
    /// A tag other than the expected one.
    #[error("unexpected DER tag {got:#04x}, expected {expected:#04x}")]
    UnexpectedTag {
        /// The tag the structure requires here.
        expected: u8,
        /// The tag found.
        got: u8,
    },
    /// A length encoding DER forbids (indefinite, non-minimal or over 4 octets).
    #[error("invalid DER length")]
    BadLength,
    /// Bytes after the outermost structure.
    #[error("trailing bytes after DER structure")]
    TrailingBytes,
}

/// A bounded reader over DER bytes.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next tag, without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one TLV; returns `(tag, value, whole_tlv)`.
    pub fn read_any(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), DerError> {
        let all = self.rest;
        let (&tag, rest) = all.split_first().ok_or(DerError::Truncated)?;
        let (&l0, mut rest) = rest.split_first().ok_or(DerError::Truncated)?;
        let len = if l0 < 0x80 {
            usize::from(l0)
        } else {
            let n = usize::from(l0 & 0x7f);
            if n == 0 || n > 4 {
                return Err(DerError::BadLength);
            }
            let (bytes, r) = rest.split_at_checked(n).ok_or(DerError::Truncated)?;
            rest = r;
            let mut len = 0usize;
            for &b in bytes {
                len = (len << 8) | usize::from(b);
            }
            // DER: the shortest form, and the long form only from 128 on.
            if len < 0x80 || bytes.first() == Some(&0) {
                return Err(DerError::BadLength);
            }
            len
        };
        let (value, rest) = rest.split_at_checked(len).ok_or(DerError::Truncated)?;
        let header = all.len() - rest.len() - value.len();
        let whole = all.get(..header + value.len()).ok_or(DerError::Truncated)?;
        self.rest = rest;
        Ok((tag, value, whole))
    }

    /// Reads one TLV that must carry `tag`; returns `(value, whole_tlv)`.
    pub fn read(&mut self, tag: u8) -> Result<(&'a [u8], &'a [u8]), DerError> {
        let (got, value, whole) = self.read_any()?;
        if got != tag {
            return Err(DerError::UnexpectedTag { expected: tag, got });
        }
        Ok((value, whole))
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;

/// Returns the complete `subjectPublicKeyInfo` TLV of a DER X.509 certificate.
pub fn certificate_spki(cert: &[u8]) -> Result<&[u8], DerError> {
    let mut outer = Reader::new(cert);
    let (certificate, _) = outer.read(SEQUENCE)?;
    if !outer.is_empty() {
        return Err(DerError::TrailingBytes);
    }
    let mut c = Reader::new(certificate);
    let (tbs, _) = c.read(SEQUENCE)?;
    let mut t = Reader::new(tbs);
    if t.peek_tag() == Some(VERSION) {
        t.read(VERSION)?;
    }
    t.read(INTEGER)?; // serialNumber
    t.read(SEQUENCE)?; // signature AlgorithmIdentifier
    t.read(SEQUENCE)?; // issuer
    t.read(SEQUENCE)?; // validity
    t.read(SEQUENCE)?; // subject
    let (_, spki) = t.read(SEQUENCE)?;
    Ok(spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(
            Reader::new(&[0x04, 0x01, 0xaa]).read_any().map(|r| r.1),
            Ok(&[0xaa][..])
        );
        assert_eq!(
            Reader::new(&[0x04, 0x02, 0xaa]).read_any(),
            Err(DerError::Truncated)
        );
        assert_eq!(
            Reader::new(&[0x04, 0x80]).read_any(),
            Err(DerError::BadLength)
        );
        assert_eq!(
            Reader::new(&[0x04, 0x81, 0x05]).read_any(),
            Err(DerError::BadLength)
        );
        assert_eq!(
            Reader::new(&[0x04, 0x85, 1, 1, 1, 1, 1]).read_any(),
            Err(DerError::BadLength)
        );
        assert_eq!(
            Reader::new(&[0x04, 0x82, 0xff, 0xff]).read_any(),
            Err(DerError::Truncated)
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend_from_slice(&[7; 0x80]);
        assert_eq!(Reader::new(&long).read_any().map(|r| r.1.len()), Ok(0x80));
    }

    #[test]
    fn not_a_certificate() {
        assert!(certificate_spki(&[]).is_err());
        assert!(certificate_spki(&[0x30, 0x00]).is_err());
        assert!(certificate_spki(&[0x30, 0x00, 0x00]).is_err());
    }
}
