//! Media payloads that measure themselves, and the receiver-side stream
//! parser that finds them again.
//!
//! Every payload starts with a header in a restricted alphabet: `M`, the
//! stream id, the sequence number and the send time, as fixed-width digits
//! written with the letters `A`..`P` (one letter per 4 bits), then `Z`
//! filler. No payload byte is ever `5`, `6` or `7`. That matters for seed
//! framing, where the relay delimits media by arrival and inserts a `6`
//! before every chunk it relays: the receiver drops every `6` byte and
//! parses fixed-size payloads from what is left. (It also keeps the seed
//! continuation rule from ever seeing a `5` or `7` at a chunk boundary.)

use std::time::{SystemTime, UNIX_EPOCH};

use callrelay::protocol::Framing;

/// Header: `M` + stream (6) + sequence (10) + time (12) letters.
pub const HEADER_LEN: usize = 1 + 6 + 10 + 12;
/// The byte that starts every payload.
const MAGIC: u8 = b'M';
/// Filler after the header.
const FILL: u8 = b'Z';
/// Send times are nanoseconds since the Unix epoch, kept modulo 2^48
/// (78 hours), so sender and receiver may be different processes.
const TIME_BITS: u32 = 48;

/// Nanoseconds since the Unix epoch modulo 2^48.
pub fn now_stamp() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or(0);
    (nanos % (1u128 << TIME_BITS)) as u64
}

/// Nanoseconds from `sent` to `now`, both [`now_stamp`] values.
pub fn elapsed_nanos(sent: u64, now: u64) -> u64 {
    now.wrapping_sub(sent) & ((1u64 << TIME_BITS) - 1)
}

fn put_letters(out: &mut Vec<u8>, value: u64, digits: usize) {
    for index in (0..digits).rev() {
        out.push(b'A' + ((value >> (4 * index)) & 0xF) as u8);
    }
}

fn read_letters(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |value, byte| {
        let digit = byte.checked_sub(b'A').filter(|digit| *digit < 16)?;
        Some((value << 4) | u64::from(digit))
    })
}

/// Appends a payload of `size` bytes (at least [`HEADER_LEN`]).
pub fn put_payload(out: &mut Vec<u8>, size: usize, stream: u32, sequence: u64, stamp: u64) {
    let start = out.len();
    out.push(MAGIC);
    put_letters(out, u64::from(stream), 6);
    put_letters(out, sequence, 10);
    put_letters(out, stamp, 12);
    out.resize(start + size.max(HEADER_LEN), FILL);
}

/// Appends one media frame as a client writes it in `framing`.
pub fn put_media_frame(
    out: &mut Vec<u8>,
    framing: Framing,
    size: usize,
    stream: u32,
    sequence: u64,
    stamp: u64,
) {
    if framing == Framing::LengthPrefixed {
        let length = u32::try_from(size.max(HEADER_LEN) + 1).unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_be_bytes());
    }
    out.push(6);
    put_payload(out, size, stream, sequence, stamp);
}

/// One payload found by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Stream id.
    pub stream: u32,
    /// Sequence number within the stream.
    pub sequence: u64,
    /// Send time ([`now_stamp`]).
    pub stamp: u64,
}

fn parse_header(payload: &[u8]) -> Option<Received> {
    if payload.first() != Some(&MAGIC) || payload.len() < HEADER_LEN {
        return None;
    }
    Some(Received {
        stream: u32::try_from(read_letters(payload.get(1..7)?)?).ok()?,
        sequence: read_letters(payload.get(7..17)?)?,
        stamp: read_letters(payload.get(17..29)?)?,
    })
}

/// Where the next plausible header starts: `M` followed by the 28 letters
/// `A`..`P` of the numbers, and not by another of them (filler or the end).
fn find_header(bytes: &[u8]) -> Option<usize> {
    let digit = |byte: &u8| (b'A'..=b'P').contains(byte);
    (0..bytes.len()).find(|&start| {
        bytes[start] == MAGIC
            && bytes
                .get(start + 1..start + HEADER_LEN)
                .is_some_and(|digits| digits.iter().all(digit))
            && bytes
                .get(start + HEADER_LEN)
                .is_none_or(|next| !digit(next))
    })
}

/// Why received bytes could not be parsed as media.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// A frame type other than media, or a payload without our header.
    Unexpected,
}

/// Turns the bytes a receiver reads into payloads.
pub struct MediaStream {
    framing: Framing,
    size: usize,
    pending: Vec<u8>,
}

impl MediaStream {
    /// A parser for payloads of `size` bytes arriving in `framing`.
    pub fn new(framing: Framing, size: usize) -> MediaStream {
        MediaStream {
            framing,
            size: size.max(HEADER_LEN),
            pending: Vec::new(),
        }
    }

    /// Feeds received bytes; calls `found` for every complete payload.
    /// Returns the payload bytes consumed (for throughput accounting).
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut found: impl FnMut(Received),
    ) -> Result<(), StreamError> {
        match self.framing {
            Framing::Seed => self
                .pending
                .extend(bytes.iter().copied().filter(|byte| *byte != 6)),
            Framing::LengthPrefixed => self.pending.extend_from_slice(bytes),
        }
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            let (payload, used) = match self.framing {
                Framing::Seed => match rest.get(..self.size) {
                    Some(payload) => (payload, self.size),
                    None => break,
                },
                Framing::LengthPrefixed => {
                    let Some(header) = rest.get(..5) else { break };
                    let length =
                        u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                    if header[4] != 6 {
                        return Err(StreamError::Unexpected);
                    }
                    match rest.get(5..4 + length) {
                        Some(payload) => (payload, 4 + length),
                        None => break,
                    }
                }
            };
            match (parse_header(payload), self.framing) {
                (Some(received), _) => {
                    found(received);
                    at += used;
                }
                // Seed media can lose a chunk cut anywhere (the relay drops
                // whole relayed chunks above its soft limit): find the next
                // header and go on; the sequence gap counts the loss.
                (None, Framing::Seed) => match find_header(&self.pending[at + 1..]) {
                    Some(skip) => at += 1 + skip,
                    None => {
                        at = self.pending.len().saturating_sub(HEADER_LEN);
                        break;
                    }
                },
                (None, Framing::LengthPrefixed) => return Err(StreamError::Unexpected),
            }
        }
        self.pending.drain(..at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_avoid_the_bytes_seed_framing_reserves() {
        let mut out = Vec::new();
        put_payload(&mut out, 64, 0xABCDEF, u64::MAX >> 24, now_stamp());
        assert_eq!(out.len(), 64);
        assert!(!out.iter().any(|byte| matches!(byte, 5..=7)));
    }

    #[test]
    fn seed_stream_with_relay_headers_anywhere_parses() {
        let mut sent = Vec::new();
        for sequence in 0..5 {
            put_payload(&mut sent, 40, 3, sequence, 1000 + sequence);
        }
        // The relay may cut anywhere and put a 6 before every chunk.
        let mut relayed = Vec::new();
        for chunk in sent.chunks(17) {
            relayed.push(6);
            relayed.extend_from_slice(chunk);
        }
        let mut stream = MediaStream::new(Framing::Seed, 40);
        let mut got = Vec::new();
        for piece in relayed.chunks(9) {
            stream
                .feed(piece, |received| got.push(received))
                .expect("media");
        }
        let sequences: Vec<u64> = got.iter().map(|r| r.sequence).collect();
        assert_eq!(sequences, [0, 1, 2, 3, 4]);
        assert!(
            got.iter()
                .all(|r| r.stream == 3 && r.stamp == 1000 + r.sequence)
        );
    }

    #[test]
    fn seed_stream_resynchronises_after_a_lost_chunk() {
        let mut sent = Vec::new();
        for sequence in 0..6 {
            put_payload(&mut sent, 64, 1, sequence, 7);
        }
        // A chunk from the middle of payload 1 to the middle of payload 3 is lost.
        let mut relayed = vec![6];
        relayed.extend_from_slice(&sent[..64 + 10]);
        relayed.push(6);
        relayed.extend_from_slice(&sent[3 * 64 + 20..]);
        let mut stream = MediaStream::new(Framing::Seed, 64);
        let mut got = Vec::new();
        stream
            .feed(&relayed, |received| got.push(received.sequence))
            .expect("media");
        assert_eq!(got, [0, 4, 5]);
    }

    #[test]
    fn framed_stream_parses_exact_frames() {
        let mut bytes = Vec::new();
        for sequence in 0..3 {
            put_media_frame(&mut bytes, Framing::LengthPrefixed, 100, 9, sequence, 5);
        }
        let mut stream = MediaStream::new(Framing::LengthPrefixed, 100);
        let mut count = 0;
        stream.feed(&bytes, |_| count += 1).expect("media");
        assert_eq!(count, 3);
    }

    #[test]
    fn elapsed_wraps() {
        assert_eq!(elapsed_nanos((1 << 48) - 10, 5), 15);
    }
}
