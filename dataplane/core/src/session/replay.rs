//! The replay buffer of a session: every sequenced server message, encoded,
//! until the client acknowledges it. On RESUME the rest is sent again, in
//! order. Bounded in messages and bytes; the bytes live in one buffer that is
//! reused, so steady traffic allocates nothing.

use std::collections::VecDeque;

/// Why a message could not be kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// More unacknowledged messages or bytes than the limits allow.
    #[error("more than {max_messages} messages or {max_bytes} bytes unacknowledged")]
    Overflow {
        /// Message limit.
        max_messages: usize,
        /// Byte limit.
        max_bytes: usize,
    },
    /// The encoded frame is longer than the connection may receive.
    #[error("a frame of {len} bytes is longer than the limit of {max}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The limits a frame must fit to be kept.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Unacknowledged messages at most.
    pub max_messages: usize,
    /// Unacknowledged bytes at most.
    pub max_bytes: usize,
    /// The longest frame, in bytes on the wire.
    pub max_frame: usize,
}

/// Unacknowledged sequenced messages of one session.
#[derive(Debug, Default)]
pub struct ReplayBuffer {
    /// Encoded frames back to back, from `start`.
    bytes: Vec<u8>,
    start: usize,
    /// `(server_seq, frame length)` of each frame in `bytes`, oldest first.
    index: VecDeque<(u64, u32)>,
    /// The last sequence number handed out.
    last_seq: u64,
}

/// Above this much spare capacity, an emptied buffer gives its memory back.
const KEEP_CAPACITY: usize = 16 * 1024;

impl ReplayBuffer {
    /// The next sequence number, consumed.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends a frame with sequence number `seq` (the last one handed
    /// out), encoded by `encode` into the buffer. Returns the frame's bytes,
    /// or an error if it does not fit `bounds`: the frame is then not kept
    /// and its number is given back.
    pub fn push(&mut self, seq: u64, bounds: Bounds, encode: impl FnOnce(&mut Vec<u8>)) -> Result<&[u8], ReplayError> {
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        let mark = self.bytes.len();
        encode(&mut self.bytes);
        let len = self.bytes.len() - mark;
        let Bounds { max_messages, max_bytes, max_frame } = bounds;
        let refused = if len > max_frame {
            Some(ReplayError::TooLarge { len, max: max_frame })
        } else if self.index.len() >= max_messages || self.len_bytes() > max_bytes {
            Some(ReplayError::Overflow { max_messages, max_bytes })
        } else {
            None
        };
        if let Some(e) = refused {
            self.bytes.truncate(mark);
            if seq == self.last_seq {
                self.last_seq -= 1;
            }
            return Err(e);
        }
        self.index.push_back((seq, len as u32));
        Ok(&self.bytes[mark..])
    }

    /// Takes back the frame just pushed (a frame that came out too long
    /// once sealed for its connection), and its number.
    pub fn pop_last(&mut self) {
        if let Some((seq, len)) = self.index.pop_back() {
            self.bytes.truncate(self.bytes.len() - len as usize);
            if seq == self.last_seq {
                self.last_seq -= 1;
            }
        }
    }

    /// Each unacknowledged frame, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = self.start;
        self.index.iter().map(move |&(_, len)| {
            let frame = &self.bytes[at..at + len as usize];
            at += len as usize;
            frame
        })
    }

    /// Drops every message up to and including `seq`.
    pub fn ack(&mut self, seq: u64) {
        while let Some(&(s, len)) = self.index.front() {
            if s > seq {
                break;
            }
            self.index.pop_front();
            self.start += len as usize;
        }
        if self.index.is_empty() {
            self.bytes.clear();
            self.start = 0;
            if self.bytes.capacity() > KEEP_CAPACITY {
                self.bytes = Vec::new();
                self.index = VecDeque::new();
            }
        }
    }

    /// Unacknowledged messages.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether every message was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of unacknowledged messages.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// The unacknowledged frames, oldest first, back to back.
    pub fn frames(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(r: &mut ReplayBuffer, text: &str) -> Result<u64, ReplayError> {
        let seq = r.next_seq();
        let bounds = Bounds { max_messages: 4, max_bytes: 64, max_frame: 32 };
        r.push(seq, bounds, |out| out.extend_from_slice(text.as_bytes())).map(|_| seq)
    }

    #[test]
    fn ack_trims_in_order_and_replay_is_the_rest() {
        let mut r = ReplayBuffer::default();
        for t in ["a1", "b2", "c3"] {
            push(&mut r, t).unwrap();
        }
        assert_eq!(r.frames(), b"a1b2c3");
        r.ack(1);
        assert_eq!((r.frames(), r.len()), (&b"b2c3"[..], 2));
        r.ack(1);
        assert_eq!(r.len(), 2, "acks are idempotent");
        r.ack(99);
        assert!(r.is_empty() && r.frames().is_empty());
        assert_eq!(push(&mut r, "d4"), Ok(4), "sequence numbers keep counting");
    }

    #[test]
    fn limits_refuse_the_message_and_keep_the_rest() {
        let mut r = ReplayBuffer::default();
        for t in ["1", "2", "3", "4"] {
            push(&mut r, t).unwrap();
        }
        assert_eq!(push(&mut r, "5"), Err(ReplayError::Overflow { max_messages: 4, max_bytes: 64 }));
        assert_eq!(r.frames(), b"1234");
        r.ack(4);
        for _ in 0..2 {
            push(&mut r, &"x".repeat(30)).unwrap();
        }
        assert_eq!(push(&mut r, "yyyyy"), Err(ReplayError::Overflow { max_messages: 4, max_bytes: 64 }), "byte limit");
        assert_eq!(r.frames().len(), 60);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_and_gives_its_number_back() {
        let mut r = ReplayBuffer::default();
        assert_eq!(push(&mut r, "a"), Ok(1));
        assert_eq!(push(&mut r, &"x".repeat(33)), Err(ReplayError::TooLarge { len: 33, max: 32 }));
        assert_eq!(push(&mut r, "b"), Ok(2), "no gap in the client's sequence");
        assert_eq!(r.frames(), b"ab");
    }

    #[test]
    fn space_is_reused_under_steady_traffic() {
        let mut r = ReplayBuffer::default();
        for i in 0..10_000u64 {
            let seq = r.next_seq();
            let bounds = Bounds { max_messages: 1024, max_bytes: 1 << 20, max_frame: 1 << 16 };
            r.push(seq, bounds, |out| out.extend_from_slice(&[i as u8; 100])).unwrap();
            if i % 8 == 7 {
                r.ack(seq - 2);
            }
        }
        assert!(r.bytes.capacity() < 8 * 1024, "capacity {}", r.bytes.capacity());
    }
}
