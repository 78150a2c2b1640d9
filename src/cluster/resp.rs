//! RESP2 for the cluster's Redis connections, on the `redis-protocol`
//! crate's sans-IO codec: commands encoded into a byte buffer, replies
//! decoded from one (`None` while a reply is incomplete). No sockets.

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};

/// A decoded reply (or pushed message).
pub type Reply = OwnedFrame;

/// Appends the command `args` (an array of bulk strings) to `out`.
pub fn command(args: &[&[u8]], out: &mut Vec<u8>) {
    let frame = OwnedFrame::Array(
        args.iter()
            .map(|arg| OwnedFrame::BulkString(arg.to_vec()))
            .collect(),
    );
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by the codec itself: encoding cannot run short.
    let written = encode(&mut out[start..], &frame, false).unwrap_or(0);
    out.truncate(start + written);
}

/// The reply at the start of `input`: `Ok(None)` until it is complete, else
/// the reply and the bytes it took. `Err` means Redis sent bytes that are
/// not RESP (the connection is then dropped and made again).
pub fn reply(input: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    decode(input).map_err(|error| error.to_string())
}

/// A bulk or simple string reply as bytes.
pub fn bytes(reply: &Reply) -> Option<&[u8]> {
    match reply {
        OwnedFrame::BulkString(bytes) | OwnedFrame::SimpleString(bytes) => Some(bytes),
        _ => None,
    }
}

/// An array reply's items (empty for anything else).
pub fn items(reply: &Reply) -> &[Reply] {
    match reply {
        OwnedFrame::Array(items) => items,
        _ => &[],
    }
}

/// The error text, if the reply is an error.
pub fn error(reply: &Reply) -> Option<&str> {
    match reply {
        OwnedFrame::Error(text) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        command(&[b"HSET", b"k", b"a b"], &mut out);
        assert_eq!(out, b"*3\r\n$4\r\nHSET\r\n$1\r\nk\r\n$3\r\na b\r\n");
    }

    #[test]
    fn replies_wait_for_their_last_byte() {
        let wire = b"*2\r\n$7\r\nmessage\r\n:5\r\n";
        for cut in 0..wire.len() {
            assert_eq!(reply(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (decoded, used) = reply(wire).expect("valid").expect("complete");
        assert_eq!(used, wire.len());
        assert_eq!(bytes(&items(&decoded)[0]), Some(&b"message"[..]));
        assert_eq!(items(&decoded)[1], OwnedFrame::Integer(5));
        assert_eq!(
            error(&reply(b"-ERR no\r\n").expect("valid").expect("complete").0),
            Some("ERR no")
        );
    }
}
