//! Framing of client streams: 4-byte big-endian length prefixes (binary
//! codecs) or newline-terminated lines (textual codecs), with a maximum frame
//! size.

use std::ops::Range;

/// Default maximum frame size: 64 KiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Size of the length prefix of [`Framing::LengthPrefixed`].
pub const LENGTH_PREFIX: usize = 4;

/// How frames are delimited on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `u32` big-endian length, then that many bytes.
    LengthPrefixed,
    /// Bytes up to a `\n` (an optional `\r` before it is dropped).
    Lines,
}

/// A framing violation. The stream cannot be resynchronised after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced (or already buffered) length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

impl Framing {
    /// Finds the first complete frame at the start of `buf`.
    ///
    /// Returns the frame's byte range in `buf` and how many bytes it consumed
    /// (frame plus delimiters), `Ok(None)` when more bytes are needed, or an
    /// error when the frame is longer than `max`.
    pub fn next_frame(self, buf: &[u8], max: usize) -> Result<Option<(Range<usize>, usize)>, FrameError> {
        self.next_frame_after(buf, max, 0)
    }

    /// [`Framing::next_frame`] for a `buf` whose first `scanned` bytes are
    /// known to hold no line end (they were there when it last returned
    /// `Ok(None)`): a line is scanned once however many reads it takes.
    pub fn next_frame_after(
        self,
        buf: &[u8],
        max: usize,
        scanned: usize,
    ) -> Result<Option<(Range<usize>, usize)>, FrameError> {
        match self {
            Framing::LengthPrefixed => {
                let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX>() else {
                    return Ok(None);
                };
                let len = u32::from_be_bytes(*prefix) as usize;
                if len > max {
                    return Err(FrameError::TooLarge { len, max });
                }
                let end = LENGTH_PREFIX + len;
                Ok((buf.len() >= end).then_some((LENGTH_PREFIX..end, end)))
            }
            Framing::Lines => match buf[scanned.min(buf.len())..].iter().position(|&b| b == b'\n').map(|i| i + scanned)
            {
                Some(nl) => {
                    let end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
                    if end > max {
                        return Err(FrameError::TooLarge { len: end, max });
                    }
                    Ok(Some((0..end, nl + 1)))
                }
                // A `\r` waiting for its `\n` is not part of the line.
                None if buf.len() - usize::from(buf.ends_with(b"\r")) > max => {
                    Err(FrameError::TooLarge { len: buf.len(), max })
                }
                None => Ok(None),
            },
        }
    }

    /// Bytes a frame takes on the wire beyond its body (the length prefix,
    /// or the `\n`): the frame limit counts the body only.
    pub fn overhead(self) -> usize {
        match self {
            Framing::LengthPrefixed => LENGTH_PREFIX,
            Framing::Lines => 1,
        }
    }

    /// Reserves room for a frame's header in `out` and returns a mark to
    /// pass to [`Framing::finish`] once the frame body has been appended.
    pub fn begin(self, out: &mut Vec<u8>) -> usize {
        let mark = out.len();
        if self == Framing::LengthPrefixed {
            out.extend_from_slice(&[0; LENGTH_PREFIX]);
        }
        mark
    }

    /// Completes the frame started at `mark`: writes the length prefix or
    /// the line terminator.
    pub fn finish(self, out: &mut Vec<u8>, mark: usize) {
        match self {
            Framing::LengthPrefixed => {
                let len = (out.len() - mark - LENGTH_PREFIX) as u32;
                out[mark..mark + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
            }
            Framing::Lines => out.push(b'\n'),
        }
    }

    /// `body` as one whole frame (a new buffer).
    pub fn frame(self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + self.overhead());
        let mark = self.begin(&mut out);
        out.extend_from_slice(body);
        self.finish(&mut out, mark);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        Framing::LengthPrefixed.frame(body)
    }

    #[test]
    fn length_prefixed_split_and_joined_frames() {
        let mut stream = framed(b"hello");
        stream.extend(framed(b""));
        stream.extend(framed(b"world"));
        let f = Framing::LengthPrefixed;
        // Every prefix of the first frame is incomplete.
        for cut in 0..9 {
            assert_eq!(f.next_frame(&stream[..cut], 64), Ok(None), "cut {cut}");
        }
        let (r, used) = f.next_frame(&stream, 64).unwrap().unwrap();
        assert_eq!(&stream[r], b"hello");
        let rest = &stream[used..];
        let (r, used) = f.next_frame(rest, 64).unwrap().unwrap();
        assert!(r.is_empty());
        let rest = &rest[used..];
        let (r, used) = f.next_frame(rest, 64).unwrap().unwrap();
        assert_eq!(&rest[r], b"world");
        assert_eq!(used, rest.len());
    }

    #[test]
    fn length_prefixed_max_size_is_inclusive() {
        let f = Framing::LengthPrefixed;
        assert!(f.next_frame(&framed(&[7; 16]), 16).unwrap().is_some());
        assert_eq!(f.next_frame(&framed(&[7; 17])[..4], 16), Err(FrameError::TooLarge { len: 17, max: 16 }));
    }

    #[test]
    fn lines_with_crlf_and_overlong_lines() {
        let f = Framing::Lines;
        let (r, used) = f.next_frame(b"ab\r\ncd\n", 8).unwrap().unwrap();
        assert_eq!((r, used), (0..2, 4));
        assert_eq!(f.next_frame(b"abc", 8), Ok(None));
        assert!(f.next_frame(b"123456789", 8).is_err());
        assert!(f.next_frame(b"123456789\n", 8).is_err());
        assert!(f.next_frame(b"12345678\n", 8).unwrap().is_some());
        // Bytes already scanned are not looked at again.
        assert_eq!(f.next_frame_after(b"ab\ncd\n", 8, 3).unwrap(), Some((0..5, 6)));
        assert_eq!(f.next_frame_after(b"abcd", 8, 2), Ok(None));
    }
}
