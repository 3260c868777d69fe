//! Minimal protobuf wire-format reader and writer for the hot-path messages
//! (the client envelope and the backend link's request/reply frames).
//!
//! The generated prost types own their bytes; these helpers read borrowed
//! views out of a frame and write fields straight into a reused buffer, so
//! that the message path allocates nothing per message. Tests check that both
//! agree with prost on every message they cover.

use crate::DecodeError;

/// Protobuf wire type of varint fields.
pub const VARINT: u8 = 0;
/// Protobuf wire type of 64-bit fields.
pub const I64: u8 = 1;
/// Protobuf wire type of length-delimited fields.
pub const LEN: u8 = 2;
/// Protobuf wire type of 32-bit fields.
pub const I32: u8 = 5;

/// A field value as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint (or a fixed-width integer widened to 64 bits).
    Int(u64),
    /// A length-delimited field: bytes, string or embedded message.
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The value as a `u32`, or an error naming `field` if it is not one.
    pub fn as_u32(self, field: &'static str) -> Result<u32, DecodeError> {
        match self {
            Value::Int(v) => u32::try_from(v).map_err(|_| DecodeError::Field(field)),
            Value::Bytes(_) => Err(DecodeError::Field(field)),
        }
    }

    /// The value as a `u64`, or an error naming `field`.
    pub fn as_u64(self, field: &'static str) -> Result<u64, DecodeError> {
        match self {
            Value::Int(v) => Ok(v),
            Value::Bytes(_) => Err(DecodeError::Field(field)),
        }
    }

    /// The value as bytes, or an error naming `field`.
    pub fn as_bytes(self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        match self {
            Value::Bytes(b) => Ok(b),
            Value::Int(_) => Err(DecodeError::Field(field)),
        }
    }

    /// The value as UTF-8 text, or an error naming `field`.
    pub fn as_str(self, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.as_bytes(field)?).map_err(|_| DecodeError::Field(field))
    }
}

/// Iterates over the fields of one encoded message without copying.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over one encoded message.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// The next `(field number, value)`, `None` at the end, or an error on
    /// truncated or malformed input. Never panics.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| DecodeError::Malformed)?;
        if field == 0 {
            return Err(DecodeError::Malformed);
        }
        let value = match (key & 7) as u8 {
            VARINT => Value::Int(self.varint()?),
            I64 => Value::Int(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Malformed)?;
                Value::Bytes(self.take(len)?)
            }
            I32 => Value::Int(u64::from(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))),
            _ => return Err(DecodeError::Malformed),
        };
        Ok(Some((field, value)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(DecodeError::Truncated);
            };
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed)
    }
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes `v` takes as a varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends a varint field, omitted when zero (proto3 default).
pub fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(out, u64::from(field << 3) | u64::from(VARINT));
        put_varint(out, v);
    }
}

/// Appends a length-delimited field, omitted when empty (proto3 default).
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_bytes_always(out, field, bytes);
    }
}

/// Appends a length-delimited field even when empty (proto3 `optional`).
pub fn put_bytes_always(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3) | u64::from(LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encoded size of a varint field written by [`put_uint`].
pub fn uint_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        varint_len(u64::from(field << 3)) + varint_len(v)
    }
}

/// Encoded size of a length-delimited field written by [`put_bytes_always`].
pub fn bytes_len_always(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3)) + varint_len(len as u64) + len
}

/// Encoded size of a length-delimited field written by [`put_bytes`].
pub fn bytes_len(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        bytes_len_always(field, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_length() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "length of {v}");
            let mut r = Reader::new(&out);
            assert_eq!(r.varint().unwrap(), v);
        }
    }

    #[test]
    fn truncated_and_overlong_input_is_an_error() {
        assert_eq!(Reader::new(&[0x08]).next_field(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[0x0a, 5, 1]).next_field(), Err(DecodeError::Truncated));
        let overlong = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&overlong).next_field(), Err(DecodeError::Malformed));
        assert_eq!(Reader::new(&[0x0b]).next_field(), Err(DecodeError::Malformed));
        assert_eq!(Reader::new(&[0x00, 0x01]).next_field(), Err(DecodeError::Malformed));
    }
}
