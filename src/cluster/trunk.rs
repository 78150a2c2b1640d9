//! The trunk framing: what two nodes of a cluster say to each other over
//! their one TCP connection (docs/cluster.md). Bytes only: no sockets.
//!
//! Every frame is `kind: u8`, `length: u32` (big-endian, of the body), then
//! the body. Strings in bodies are QDataStream `QString`s (so text passes
//! through unchanged, unpaired surrogates included) or, for ids,
//! QDataStream-style `u32` length + UTF-8.

use crate::ids::{CallId, NodeId, UserId};
use crate::protocol::qdatastream::{Cursor, QString, put_qstr, put_u8, put_u32};
use crate::relay::NodeEvent;

/// Bytes before a frame's body.
pub const HEADER_LEN: usize = 5;
/// Largest body a trunk frame may have (media payloads are cut to fit).
pub const MAX_BODY: usize = 64 * 1024;
/// Media payload bytes per frame at most (the rest of the body is its header).
pub const MEDIA_CHUNK: usize = MAX_BODY - 64;

const HELLO: u8 = 1;
const EVENT: u8 = 2;
const MEDIA: u8 = 3;
const CHALLENGE: u8 = 4;
const PROOF: u8 = 5;
const FILE_START: u8 = 6;
const FILE_DATA: u8 = 7;
const FILE_CREDIT: u8 = 8;
const FILE_END: u8 = 9;
const FILE_ABORT: u8 = 10;

const RING: u8 = 1;
const ACCEPT: u8 = 2;
const REJECT: u8 = 3;
const END: u8 = 4;
const TEXT: u8 = 5;
const RESUME: u8 = 6;
const MOVED: u8 = 7;

/// Media flags.
const FIRST: u8 = 1;
const LAST: u8 = 2;

/// One trunk frame, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrunkFrame {
    /// The dialling node says who it is (first frame on a trunk).
    Hello {
        /// Its node id.
        node: NodeId,
    },
    /// With `--cluster-secret-file`: a random nonce the other side must
    /// answer with a [`TrunkFrame::Proof`].
    Challenge {
        /// 32 random bytes.
        nonce: Vec<u8>,
    },
    /// HMAC-SHA256(secret, nonce || node id of the prover).
    Proof {
        /// The MAC.
        mac: Vec<u8>,
    },
    /// A call or TEXT event for a user of the receiving node.
    Event(NodeEvent),
    /// A FILE from `from` (on the sending node) to `to` (on the receiving
    /// node) starts on `stream`; `total` data bytes follow as FILE_DATA.
    FileStart {
        /// The sending node's stream number.
        stream: u32,
        /// The sender (server-set on its node).
        from: UserId,
        /// The receiver.
        to: UserId,
        /// The file name, as the sender gave it.
        name: QString,
        /// Data bytes.
        total: u64,
    },
    /// Data bytes of a FILE stream, in order.
    FileData {
        /// The stream.
        stream: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The receiving node takes data bytes of `stream` up to `granted`
    /// (counted from the first): per-stream backpressure.
    FileCredit {
        /// The stream.
        stream: u32,
        /// Data bytes it may have been sent in all.
        granted: u64,
    },
    /// The receiver of `stream` is gone (or never was): `delivered` data
    /// bytes reached it; the sender's node reads and drops the rest.
    FileEnd {
        /// The stream.
        stream: u32,
        /// Data bytes delivered.
        delivered: u64,
    },
    /// The sender of `stream` is gone mid-file: the receiving node completes
    /// the frame with zeros.
    FileAbort {
        /// The stream.
        stream: u32,
    },
    /// A piece of a media frame of `call_id` for the party on the
    /// receiving node.
    Media {
        /// The call.
        call_id: CallId,
        /// The whole payload's length, on the first piece of a frame.
        first: Option<u32>,
        /// True on the piece that completes the frame.
        last: bool,
        /// Payload bytes.
        payload: Vec<u8>,
    },
}

/// Why trunk bytes cannot be decoded (the trunk is then closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrunkError {
    /// A body longer than [`MAX_BODY`].
    TooLong,
    /// An unknown kind or a body that does not parse.
    Malformed,
}

/// Appends `frame` to `out`.
pub fn encode(frame: &TrunkFrame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let kind = match frame {
        TrunkFrame::Hello { node } => {
            put_id(out, node.as_str());
            HELLO
        }
        TrunkFrame::Challenge { nonce } => {
            out.extend_from_slice(nonce);
            CHALLENGE
        }
        TrunkFrame::Proof { mac } => {
            out.extend_from_slice(mac);
            PROOF
        }
        TrunkFrame::Event(event) => {
            encode_event(event, out);
            EVENT
        }
        TrunkFrame::FileStart {
            stream,
            from,
            to,
            name,
            total,
        } => {
            put_u32(out, *stream);
            put_id(out, from.as_str());
            put_id(out, to.as_str());
            put_qstr(out, name.as_qstr());
            put_u64(out, *total);
            FILE_START
        }
        TrunkFrame::FileData { stream, data } => {
            put_u32(out, *stream);
            out.extend_from_slice(data);
            FILE_DATA
        }
        TrunkFrame::FileCredit { stream, granted } => {
            put_u32(out, *stream);
            put_u64(out, *granted);
            FILE_CREDIT
        }
        TrunkFrame::FileEnd { stream, delivered } => {
            put_u32(out, *stream);
            put_u64(out, *delivered);
            FILE_END
        }
        TrunkFrame::FileAbort { stream } => {
            put_u32(out, *stream);
            FILE_ABORT
        }
        TrunkFrame::Media {
            call_id,
            first,
            last,
            payload,
        } => {
            media_header(call_id, *first, *last, out);
            out.extend_from_slice(payload);
            MEDIA
        }
    };
    let body = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
    out[start] = kind;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&body.to_be_bytes());
}

/// The header of a media frame whose `payload_len` payload bytes follow
/// (written separately, so they can come straight from a read buffer).
pub fn encode_media_header(
    call_id: &CallId,
    first: Option<u32>,
    last: bool,
    payload_len: usize,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    media_header(call_id, first, last, out);
    let body = u32::try_from(out.len() - start - HEADER_LEN + payload_len).unwrap_or(u32::MAX);
    out[start] = MEDIA;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&body.to_be_bytes());
}

fn media_header(call_id: &CallId, first: Option<u32>, last: bool, out: &mut Vec<u8>) {
    put_id(out, call_id.as_str());
    let flags = if first.is_some() { FIRST } else { 0 } | if last { LAST } else { 0 };
    put_u8(out, flags);
    if let Some(total) = first {
        put_u32(out, total);
    }
}

/// Decodes the frame at the start of `input`: `Ok(None)` until it is all
/// there, else the frame and the bytes it took.
pub fn decode(input: &[u8]) -> Result<Option<(TrunkFrame, usize)>, TrunkError> {
    let Some(header) = input.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let body_len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if body_len > MAX_BODY {
        return Err(TrunkError::TooLong);
    }
    let Some(body) = input.get(HEADER_LEN..HEADER_LEN + body_len) else {
        return Ok(None);
    };
    let frame = decode_body(header[0], body).ok_or(TrunkError::Malformed)?;
    Ok(Some((frame, HEADER_LEN + body_len)))
}

fn decode_body(kind: u8, body: &[u8]) -> Option<TrunkFrame> {
    let mut cursor = Cursor::new(body);
    let frame = match kind {
        HELLO => TrunkFrame::Hello {
            node: NodeId::new(&take_id(&mut cursor)?)?,
        },
        CHALLENGE => TrunkFrame::Challenge {
            nonce: cursor.bytes(cursor.remaining()).ok()?.to_vec(),
        },
        PROOF => TrunkFrame::Proof {
            mac: cursor.bytes(cursor.remaining()).ok()?.to_vec(),
        },
        EVENT => TrunkFrame::Event(decode_event(&mut cursor)?),
        FILE_START => TrunkFrame::FileStart {
            stream: cursor.u32().ok()?,
            from: take_user(&mut cursor)?,
            to: take_user(&mut cursor)?,
            name: cursor.qstring(MAX_BODY).ok()?.to_owned_qstring(),
            total: take_u64(&mut cursor)?,
        },
        FILE_DATA => TrunkFrame::FileData {
            stream: cursor.u32().ok()?,
            data: cursor.bytes(cursor.remaining()).ok()?.to_vec(),
        },
        FILE_CREDIT => TrunkFrame::FileCredit {
            stream: cursor.u32().ok()?,
            granted: take_u64(&mut cursor)?,
        },
        FILE_END => TrunkFrame::FileEnd {
            stream: cursor.u32().ok()?,
            delivered: take_u64(&mut cursor)?,
        },
        FILE_ABORT => TrunkFrame::FileAbort {
            stream: cursor.u32().ok()?,
        },
        MEDIA => {
            let call_id = CallId::parse(&take_id(&mut cursor)?)?;
            let flags = cursor.u8().ok()?;
            let first = if flags & FIRST != 0 {
                Some(cursor.u32().ok()?)
            } else {
                None
            };
            TrunkFrame::Media {
                call_id,
                first,
                last: flags & LAST != 0,
                payload: cursor.bytes(cursor.remaining()).ok()?.to_vec(),
            }
        }
        _ => return None,
    };
    (cursor.remaining() == 0).then_some(frame)
}

fn encode_event(event: &NodeEvent, out: &mut Vec<u8>) {
    match event {
        NodeEvent::Ring {
            call_id,
            caller,
            callee,
            video,
        } => {
            put_u8(out, RING);
            put_id(out, call_id.as_str());
            put_id(out, caller.as_str());
            put_id(out, callee.as_str());
            put_u8(out, *video);
        }
        NodeEvent::Accept { call_id } => {
            put_u8(out, ACCEPT);
            put_id(out, call_id.as_str());
        }
        NodeEvent::Reject { call_id, reason } => {
            put_u8(out, REJECT);
            put_id(out, call_id.as_str());
            put_qstr(out, reason.as_qstr());
        }
        NodeEvent::End { call_id } => {
            put_u8(out, END);
            put_id(out, call_id.as_str());
        }
        NodeEvent::Resume {
            call_id,
            user,
            peer,
            user_is_caller,
            active,
            video,
        } => {
            put_u8(out, RESUME);
            put_id(out, call_id.as_str());
            put_id(out, user.as_str());
            put_id(out, peer.as_str());
            put_u8(out, u8::from(*user_is_caller) | u8::from(*active) << 1);
            put_u8(out, *video);
        }
        NodeEvent::Moved {
            call_id,
            user,
            node,
        } => {
            put_u8(out, MOVED);
            put_id(out, call_id.as_str());
            put_id(out, user.as_str());
            put_id(out, node.as_str());
        }
        NodeEvent::Text { from, to, text } => {
            put_u8(out, TEXT);
            put_id(out, from.as_str());
            put_id(out, to.as_str());
            put_qstr(out, text.as_qstr());
        }
    }
}

fn decode_event(cursor: &mut Cursor<'_>) -> Option<NodeEvent> {
    let call = |cursor: &mut Cursor<'_>| CallId::parse(&take_id(cursor)?);
    let user = take_user;
    let text = |cursor: &mut Cursor<'_>| {
        cursor
            .qstring(MAX_BODY)
            .ok()
            .map(|text| text.to_owned_qstring())
    };
    Some(match cursor.u8().ok()? {
        RING => NodeEvent::Ring {
            call_id: call(cursor)?,
            caller: user(cursor)?,
            callee: user(cursor)?,
            video: cursor.u8().ok()?,
        },
        ACCEPT => NodeEvent::Accept {
            call_id: call(cursor)?,
        },
        REJECT => NodeEvent::Reject {
            call_id: call(cursor)?,
            reason: text(cursor)?,
        },
        END => NodeEvent::End {
            call_id: call(cursor)?,
        },
        RESUME => {
            let (call_id, user, peer) = (call(cursor)?, user(cursor)?, user(cursor)?);
            let flags = cursor.u8().ok()?;
            NodeEvent::Resume {
                call_id,
                user,
                peer,
                user_is_caller: flags & 1 != 0,
                active: flags & 2 != 0,
                video: cursor.u8().ok()?,
            }
        }
        MOVED => NodeEvent::Moved {
            call_id: call(cursor)?,
            user: user(cursor)?,
            node: NodeId::new(&take_id(cursor)?)?,
        },
        TEXT => NodeEvent::Text {
            from: user(cursor)?,
            to: user(cursor)?,
            text: text(cursor)?,
        },
        _ => return None,
    })
}

fn take_user(cursor: &mut Cursor<'_>) -> Option<UserId> {
    UserId::from_string(take_id(cursor)?, crate::ids::USER_ID_MAX_BYTES).ok()
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn take_u64(cursor: &mut Cursor<'_>) -> Option<u64> {
    let bytes = cursor.bytes(8).ok()?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// A `u32` byte length and UTF-8.
fn put_id(out: &mut Vec<u8>, text: &str) {
    put_u32(out, u32::try_from(text.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(text.as_bytes());
}

fn take_id(cursor: &mut Cursor<'_>) -> Option<String> {
    let len = cursor.u32().ok()? as usize;
    if len > MAX_BODY {
        return None;
    }
    String::from_utf8(cursor.bytes(len).ok()?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> QString {
        QString::from_str(text)
    }

    fn call() -> CallId {
        CallId::from_random([7; 16])
    }

    fn user(name: &str) -> UserId {
        UserId::from_string(name.to_owned(), 128).expect("valid")
    }

    #[test]
    fn every_frame_round_trips_and_waits_for_its_last_byte() {
        let frames = [
            TrunkFrame::Hello {
                node: NodeId::new("node-a:8888").expect("valid"),
            },
            TrunkFrame::Challenge { nonce: vec![1; 32] },
            TrunkFrame::Proof { mac: vec![2; 32] },
            TrunkFrame::Event(NodeEvent::Ring {
                call_id: call(),
                caller: user("alice smith"),
                callee: user("bob:1"),
                video: 1,
            }),
            TrunkFrame::Event(NodeEvent::Accept { call_id: call() }),
            TrunkFrame::Event(NodeEvent::Reject {
                call_id: call(),
                reason: reason("busy"),
            }),
            TrunkFrame::Event(NodeEvent::End { call_id: call() }),
            TrunkFrame::Event(NodeEvent::Resume {
                call_id: call(),
                user: user("alice"),
                peer: user("bob"),
                user_is_caller: true,
                active: false,
                video: 1,
            }),
            TrunkFrame::Event(NodeEvent::Moved {
                call_id: call(),
                user: user("alice"),
                node: NodeId::new("node-c").expect("valid"),
            }),
            TrunkFrame::Event(NodeEvent::Text {
                from: user("alice"),
                to: user("bob"),
                text: reason("hello 😀"),
            }),
            TrunkFrame::FileStart {
                stream: 7,
                from: user("alice"),
                to: user("bob"),
                name: reason("notes.txt"),
                total: 8 << 20,
            },
            TrunkFrame::FileData {
                stream: 7,
                data: vec![3; 9],
            },
            TrunkFrame::FileCredit {
                stream: 7,
                granted: 1 << 40,
            },
            TrunkFrame::FileEnd {
                stream: 7,
                delivered: 12,
            },
            TrunkFrame::FileAbort { stream: 7 },
            TrunkFrame::Media {
                call_id: call(),
                first: Some(10),
                last: false,
                payload: vec![9; 4],
            },
            TrunkFrame::Media {
                call_id: call(),
                first: None,
                last: true,
                payload: vec![8; 6],
            },
        ];
        for frame in frames {
            let mut bytes = Vec::new();
            encode(&frame, &mut bytes);
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None), "{frame:?} cut at {cut}");
            }
            assert_eq!(decode(&bytes), Ok(Some((frame.clone(), bytes.len()))));
        }
    }

    #[test]
    fn a_media_header_written_apart_matches_the_whole_frame() {
        let payload = vec![5u8; 100];
        let mut whole = Vec::new();
        encode(
            &TrunkFrame::Media {
                call_id: call(),
                first: Some(100),
                last: true,
                payload: payload.clone(),
            },
            &mut whole,
        );
        let mut apart = Vec::new();
        encode_media_header(&call(), Some(100), true, payload.len(), &mut apart);
        apart.extend_from_slice(&payload);
        assert_eq!(apart, whole);
    }

    #[test]
    fn oversized_unknown_and_trailing_bytes_are_errors() {
        assert_eq!(decode(&[2, 0xFF, 0, 0, 0]), Err(TrunkError::TooLong));
        assert_eq!(decode(&[99, 0, 0, 0, 0]), Err(TrunkError::Malformed));
        let mut bytes = Vec::new();
        encode(
            &TrunkFrame::Event(NodeEvent::End { call_id: call() }),
            &mut bytes,
        );
        bytes[4] += 1;
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(TrunkError::Malformed));
    }
}
