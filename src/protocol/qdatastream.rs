//! QDataStream (`Qt_5_9`, big-endian) primitives: a panic-free read cursor and
//! append-only writers for `quint8/16/32`, `QString` and `QByteArray`.
//!
//! This module knows no message types and no framing. Every getter returns a
//! [`Read`] that distinguishes "not enough bytes yet" from "these bytes can
//! never decode", so the frame parser above it can wait for more input without
//! consuming anything. Nothing here allocates according to a length a peer
//! claims: strings are returned as borrowed slices of the input.

use byteorder::{BigEndian, ByteOrder};

/// The `quint32` length that marks a null `QString` or `QByteArray`.
pub const NULL_LENGTH: u32 = 0xFFFF_FFFF;

/// Why a field could not be read from the bytes at hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Short {
    /// The bytes at hand are a strict prefix of the field: wait for more.
    NeedMore,
    /// The field can never decode: its length is odd (QString) or over the limit.
    Invalid(FieldError),
}

/// What is wrong with a field whose bytes can never decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldError {
    /// A `QString` byte length that is odd (UTF-16 needs pairs).
    OddLength,
    /// A length over the limit the caller gave.
    TooLong,
}

/// Result of reading one field.
pub type Read<T> = Result<T, Short>;

/// A `QString` as it stands on the wire: UTF-16BE code units, or null.
///
/// Kept as borrowed wire bytes so that text can be forwarded without being
/// decoded and re-encoded (and so that unpaired surrogates survive a relay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QStr<'a> {
    /// The UTF-16BE bytes (even length); empty for a null string.
    pub utf16: &'a [u8],
    /// True for the null string (length 0xFFFFFFFF on the wire).
    pub null: bool,
}

impl<'a> QStr<'a> {
    /// Number of bytes this string occupies on the wire (length field included).
    pub fn wire_len(&self) -> usize {
        4 + self.utf16.len()
    }

    /// True when the string is null or empty (both read as empty by Qt).
    pub fn is_empty(&self) -> bool {
        self.utf16.is_empty()
    }

    /// Decodes to UTF-8, or `None` if it contains an unpaired surrogate.
    pub fn to_string_strict(&self) -> Option<String> {
        let units = self
            .utf16
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .ok()
    }

    /// Decodes to UTF-8 for logs, replacing unpaired surrogates.
    pub fn to_string_lossy(&self) -> String {
        let units = self
            .utf16
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
        char::decode_utf16(units)
            .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }

    /// Copies the string into an owned [`QString`].
    pub fn to_owned_qstring(&self) -> QString {
        QString {
            utf16: self.utf16.to_vec(),
            null: self.null,
        }
    }
}

/// An owned `QString` in wire form (UTF-16BE bytes, or null).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QString {
    /// The UTF-16BE bytes; empty for a null string.
    pub utf16: Vec<u8>,
    /// True for the null string.
    pub null: bool,
}

impl QString {
    /// Encodes a Rust string as UTF-16BE. (Infallible, so `FromStr` with its
    /// error type would only add noise at every call site.)
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> QString {
        let mut utf16 = Vec::with_capacity(text.len() * 2);
        for unit in text.encode_utf16() {
            utf16.extend_from_slice(&unit.to_be_bytes());
        }
        QString { utf16, null: false }
    }

    /// The null string (`QString()`).
    pub fn null() -> QString {
        QString {
            utf16: Vec::new(),
            null: true,
        }
    }

    /// Borrows this string as a [`QStr`].
    pub fn as_qstr(&self) -> QStr<'_> {
        QStr {
            utf16: &self.utf16,
            null: self.null,
        }
    }

    /// Number of bytes this string occupies on the wire (length field included).
    pub fn wire_len(&self) -> usize {
        4 + self.utf16.len()
    }
}

/// A read cursor over a byte slice. Getters never panic and never index past
/// the end; a failed getter leaves the cursor where it was.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, position: 0 }
    }

    /// How many bytes have been read.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.position..).unwrap_or_default()
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    /// Takes the next `count` bytes as a slice.
    pub fn bytes(&mut self, count: usize) -> Read<&'a [u8]> {
        let end = self.position.checked_add(count).ok_or(Short::NeedMore)?;
        let taken = self.bytes.get(self.position..end).ok_or(Short::NeedMore)?;
        self.position = end;
        Ok(taken)
    }

    /// Reads a `quint8`.
    pub fn u8(&mut self) -> Read<u8> {
        Ok(self.bytes(1)?[0])
    }

    /// Reads a big-endian `quint16`.
    pub fn u16(&mut self) -> Read<u16> {
        Ok(BigEndian::read_u16(self.bytes(2)?))
    }

    /// Reads a big-endian `quint32`.
    pub fn u32(&mut self) -> Read<u32> {
        Ok(BigEndian::read_u32(self.bytes(4)?))
    }

    /// Reads a `QString` of at most `max_bytes` UTF-16 bytes. The length is
    /// checked before the body is awaited, so an oversized or odd length is
    /// reported as soon as its four bytes have arrived.
    pub fn qstring(&mut self, max_bytes: usize) -> Read<QStr<'a>> {
        let start = *self;
        let length = self.u32()?;
        if length == NULL_LENGTH {
            return Ok(QStr {
                utf16: &[],
                null: true,
            });
        }
        let length = length as usize;
        if length % 2 == 1 {
            *self = start;
            return Err(Short::Invalid(FieldError::OddLength));
        }
        if length > max_bytes {
            *self = start;
            return Err(Short::Invalid(FieldError::TooLong));
        }
        match self.bytes(length) {
            Ok(utf16) => Ok(QStr { utf16, null: false }),
            Err(short) => {
                *self = start;
                Err(short)
            }
        }
    }

    /// Reads a `QByteArray` length (null reads as 0) checked against
    /// `max_bytes`, without reading the body: bodies are streamed.
    pub fn qbytearray_len(&mut self, max_bytes: u64) -> Read<ByteArrayLen> {
        let start = *self;
        let length = self.u32()?;
        if length == NULL_LENGTH {
            return Ok(ByteArrayLen { len: 0, null: true });
        }
        if u64::from(length) > max_bytes {
            *self = start;
            return Err(Short::Invalid(FieldError::TooLong));
        }
        Ok(ByteArrayLen {
            len: length,
            null: false,
        })
    }
}

/// The length header of a `QByteArray` whose body follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteArrayLen {
    /// Body length in bytes (0 for null).
    pub len: u32,
    /// True for a null array.
    pub null: bool,
}

/// Appends a `quint8`.
pub fn put_u8(out: &mut Vec<u8>, value: u8) {
    out.push(value);
}

/// Appends a big-endian `quint16`.
pub fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a big-endian `quint32`.
pub fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a `QString` given as wire form. The caller bounds the length
/// (every string the relay writes is one it read under a limit, a call id or
/// a user id), so it always fits a `quint32`.
pub fn put_qstr(out: &mut Vec<u8>, text: QStr<'_>) {
    if text.null {
        put_u32(out, NULL_LENGTH);
    } else {
        put_u32(out, wire_u32(text.utf16.len()));
        out.extend_from_slice(text.utf16);
    }
}

/// Appends a Rust string as a `QString` (UTF-16BE).
pub fn put_str(out: &mut Vec<u8>, text: &str) {
    let length_at = out.len();
    put_u32(out, 0);
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_be_bytes());
    }
    let length = wire_u32(out.len() - length_at - 4);
    out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
}

/// Appends a `QByteArray` length header (the body is written separately).
pub fn put_qbytearray_len(out: &mut Vec<u8>, header: ByteArrayLen) {
    put_u32(out, if header.null { NULL_LENGTH } else { header.len });
}

/// Converts a length the relay itself bounded to a wire `quint32`,
/// saturating below the null marker (never reached under the limits).
pub fn wire_u32(length: usize) -> u32 {
    u32::try_from(length)
        .unwrap_or(NULL_LENGTH - 1)
        .min(NULL_LENGTH - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qstring_round_trip_including_non_bmp() {
        let mut out = Vec::new();
        put_str(&mut out, "a😀");
        // 'a' = 0x0061, U+1F600 = D83D DE00: 6 bytes of UTF-16BE.
        assert_eq!(out, [0, 0, 0, 6, 0x00, 0x61, 0xD8, 0x3D, 0xDE, 0x00]);
        let mut cursor = Cursor::new(&out);
        let text = cursor.qstring(1024).expect("complete");
        assert_eq!(text.to_string_strict().as_deref(), Some("a😀"));
        assert_eq!(cursor.remaining(), 0);
    }

    #[test]
    fn null_and_empty_qstrings_differ_on_the_wire() {
        let mut out = Vec::new();
        put_qstr(&mut out, QString::null().as_qstr());
        put_str(&mut out, "");
        assert_eq!(out, [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
        let mut cursor = Cursor::new(&out);
        assert!(cursor.qstring(8).expect("null").null);
        let empty = cursor.qstring(8).expect("empty");
        assert!(!empty.null && empty.is_empty());
    }

    #[test]
    fn every_strict_prefix_needs_more_and_consumes_nothing() {
        let mut out = Vec::new();
        put_str(&mut out, "hello");
        for cut in 0..out.len() {
            let mut cursor = Cursor::new(&out[..cut]);
            assert_eq!(cursor.qstring(1024), Err(Short::NeedMore));
            assert_eq!(cursor.position(), 0);
        }
    }

    #[test]
    fn odd_and_oversized_lengths_are_invalid_before_the_body_arrives() {
        let mut cursor = Cursor::new(&[0, 0, 0, 3]);
        assert_eq!(
            cursor.qstring(1024),
            Err(Short::Invalid(FieldError::OddLength))
        );
        let mut cursor = Cursor::new(&[0x7F, 0xFF, 0xFF, 0xFE]);
        assert_eq!(
            cursor.qstring(1024),
            Err(Short::Invalid(FieldError::TooLong))
        );
        assert_eq!(cursor.position(), 0);
    }

    #[test]
    fn unpaired_surrogate_is_not_strict_utf16() {
        let text = QStr {
            utf16: &[0xD8, 0x3D],
            null: false,
        };
        assert_eq!(text.to_string_strict(), None);
        assert_eq!(text.to_string_lossy(), "\u{FFFD}");
    }

    #[test]
    fn bytearray_length_header() {
        let mut cursor = Cursor::new(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            cursor.qbytearray_len(10),
            Ok(ByteArrayLen { len: 0, null: true })
        );
        let mut cursor = Cursor::new(&[0, 0, 0, 11]);
        assert_eq!(
            cursor.qbytearray_len(10),
            Err(Short::Invalid(FieldError::TooLong))
        );
    }
}
