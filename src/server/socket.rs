//! The one boundary between the relay and the kernel's sockets: reads,
//! writes and vectored writes that turn `io::Result` into [`SocketResult`].
//! `Interrupted` is retried here and nowhere else; a reset, an abort or a
//! broken pipe is the peer closing, not an error of ours.

use std::io::{self, IoSlice, Read, Write};

/// What a socket operation ended with.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketResult {
    /// Bytes moved; the socket may take or give more.
    Continue,
    /// The kernel has nothing more now; wait for readiness.
    WouldBlock,
    /// The peer closed (EOF, reset, aborted, broken pipe).
    Closed,
    /// Any other error.
    Error,
}

fn classify(error: &io::Error) -> SocketResult {
    match error.kind() {
        io::ErrorKind::WouldBlock => SocketResult::WouldBlock,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => SocketResult::Closed,
        _ => SocketResult::Error,
    }
}

/// Reads once into `buf`: the byte count and how it ended.
pub fn read_once(socket: &mut impl Read, buf: &mut [u8]) -> (usize, SocketResult) {
    loop {
        match socket.read(buf) {
            Ok(0) if !buf.is_empty() => return (0, SocketResult::Closed),
            Ok(count) => return (count, SocketResult::Continue),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return (0, classify(&error)),
        }
    }
}

/// Writes `parts` in order until all are written or the socket would block:
/// the byte count written and how it ended.
pub fn write_all_vectored(socket: &mut impl Write, parts: &[&[u8]]) -> (usize, SocketResult) {
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let mut written = 0;
    while written < total {
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        let used = remaining_slices(parts, written, &mut slices);
        match socket.write_vectored(&slices[..used]) {
            Ok(0) => return (written, SocketResult::Closed),
            Ok(count) => written += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return (written, classify(&error)),
        }
    }
    (written, SocketResult::Continue)
}

/// Most slices handed to one `writev`; more parts are written by later calls.
const MAX_PARTS: usize = 4;

/// Fills `slices` with the parts after the first `skip` bytes; returns how
/// many slices it filled. No allocation: this is on the media path.
fn remaining_slices<'a>(parts: &[&'a [u8]], mut skip: usize, slices: &mut [IoSlice<'a>]) -> usize {
    let mut used = 0;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let Some(slot) = slices.get_mut(used) else {
            break;
        };
        *slot = IoSlice::new(part.get(skip..).unwrap_or_default());
        used += 1;
        skip = 0;
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_slices_skip_across_parts() {
        let parts: [&[u8]; 3] = [b"ab", b"cde", b"f"];
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        let used = remaining_slices(&parts, 3, &mut slices);
        let joined: Vec<u8> = slices[..used]
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect();
        assert_eq!(joined, b"def");
    }

    #[test]
    fn vectored_write_into_a_vec_writes_everything() {
        let mut sink = Vec::new();
        let (count, result) = write_all_vectored(&mut sink, &[b"head", b"payload"]);
        assert_eq!((count, result), (11, SocketResult::Continue));
        assert_eq!(sink, b"headpayload");
    }
}
