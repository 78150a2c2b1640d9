//! The messages of PROTOCOL.md section 2 in both directions, and their
//! byte encodings in either framing.
//!
//! - [`ClientFrame`]: what the server's parser yields (borrowed from the
//!   read buffer; FILE and media bodies stream separately).
//! - [`ServerFrame`]: what the relay asks the server to send; encoded by
//!   [`encode_server`].
//! - [`ClientMessage`] / [`encode_client`] and [`ServerMessage`] /
//!   [`decode_server`]: the client side, used by tests and the load tool.
//!
//! No buffers beyond the caller's `Vec`, no sockets.

use super::qdatastream::{
    ByteArrayLen, Cursor, NULL_LENGTH, QStr, QString, Short, put_qbytearray_len, put_qstr, put_str,
    put_u8, put_u16, put_u32, wire_u32,
};
use super::{ErrorCode, Framing, MessageType};
use crate::ids::{CallId, UserId};

/// A complete client frame as the parser yields it (media excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// The first frame: any kind byte, then the UTF-8 user id bytes.
    Register {
        /// The kind byte (the guide sends HEARTBEAT).
        kind: u8,
        /// The raw user id bytes (validated by the caller).
        user: &'a [u8],
    },
    /// TEXT to a user.
    Text {
        /// The addressee.
        to: QStr<'a>,
        /// The text, forwarded as is.
        text: QStr<'a>,
    },
    /// The header of a FILE; its data follows as body chunks.
    FileStart {
        /// The addressee.
        to: QStr<'a>,
        /// The file name, forwarded as is.
        name: QStr<'a>,
        /// Length of the data that follows.
        data: ByteArrayLen,
    },
    /// CALL_REQUEST.
    CallRequest {
        /// The user called.
        callee: QStr<'a>,
        /// Non-zero for a video call; forwarded as is.
        video: u8,
    },
    /// CALL_ACCEPT.
    CallAccept {
        /// Call id, peer user id, or empty for "my current call".
        call_ref: QStr<'a>,
    },
    /// CALL_REJECT.
    CallReject {
        /// Call id, peer user id, or empty.
        call_ref: QStr<'a>,
        /// Reason, forwarded as is.
        reason: QStr<'a>,
    },
    /// CALL_END.
    CallEnd {
        /// Call id, peer user id, or empty.
        call_ref: QStr<'a>,
    },
    /// HEARTBEAT (with or without the registration suffix).
    Heartbeat,
}

/// A message the server sends. Bodies of FILE and media frames are written
/// after the header by the caller; `trailing_len` says how many bytes follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// `0 from text`.
    Text {
        /// The sender, set by the server.
        from: UserId,
        /// The text as the sender wrote it.
        text: QString,
    },
    /// `1 from fileName` + data length; the data follows.
    FileHeader {
        /// The sender, set by the server.
        from: UserId,
        /// The file name as the sender wrote it.
        name: QString,
        /// The data length header.
        data: ByteArrayLen,
    },
    /// `2 callId caller isVideo`, to the callee.
    CallRequest {
        /// The new call.
        call_id: CallId,
        /// Who calls.
        caller: UserId,
        /// The caller's isVideo byte.
        video: u8,
    },
    /// `3 callId`.
    CallAccept {
        /// The call.
        call_id: CallId,
    },
    /// `4 callId reason`.
    CallReject {
        /// The call (a fresh id for a refused request).
        call_id: CallId,
        /// Why.
        reason: QString,
    },
    /// `5 callId`.
    CallEnd {
        /// The call.
        call_id: CallId,
    },
    /// `6`; `payload_len` bytes of media follow.
    MediaHeader {
        /// Payload length (used by the length prefix).
        payload_len: u32,
    },
    /// `7`, the answer to a length-prefixed heartbeat.
    Heartbeat,
    /// `0x20 code detail`.
    Error {
        /// The code.
        code: ErrorCode,
        /// Human-readable detail.
        detail: String,
    },
}

impl ServerFrame {
    /// Bytes the caller writes after the encoded header (FILE data, media).
    pub fn trailing_len(&self) -> u64 {
        match self {
            ServerFrame::FileHeader { data, .. } => u64::from(data.len),
            ServerFrame::MediaHeader { payload_len } => u64::from(*payload_len),
            _ => 0,
        }
    }
}

/// Appends `frame` in `framing` to `out`. With length-prefixed framing the
/// prefix counts the trailing body too.
pub fn encode_server(frame: &ServerFrame, framing: Framing, out: &mut Vec<u8>) {
    let start = begin_frame(framing, out);
    match frame {
        ServerFrame::Text { from, text } => {
            put_u8(out, MessageType::Text as u8);
            put_str(out, from.as_str());
            put_qstr(out, text.as_qstr());
        }
        ServerFrame::FileHeader { from, name, data } => {
            put_u8(out, MessageType::File as u8);
            put_str(out, from.as_str());
            put_qstr(out, name.as_qstr());
            put_qbytearray_len(out, *data);
        }
        ServerFrame::CallRequest {
            call_id,
            caller,
            video,
        } => {
            put_u8(out, MessageType::CallRequest as u8);
            put_str(out, call_id.as_str());
            put_str(out, caller.as_str());
            put_u8(out, *video);
        }
        ServerFrame::CallAccept { call_id } => {
            put_u8(out, MessageType::CallAccept as u8);
            put_str(out, call_id.as_str());
        }
        ServerFrame::CallReject { call_id, reason } => {
            put_u8(out, MessageType::CallReject as u8);
            put_str(out, call_id.as_str());
            put_qstr(out, reason.as_qstr());
        }
        ServerFrame::CallEnd { call_id } => {
            put_u8(out, MessageType::CallEnd as u8);
            put_str(out, call_id.as_str());
        }
        ServerFrame::MediaHeader { .. } => put_u8(out, MessageType::MediaData as u8),
        ServerFrame::Heartbeat => put_u8(out, MessageType::Heartbeat as u8),
        ServerFrame::Error { code, detail } => {
            put_u8(out, MessageType::Error as u8);
            put_str(out, code.as_str());
            put_str(out, detail);
        }
    }
    finish_frame(start, frame.trailing_len(), out);
}

/// Where a frame's length prefix was reserved, if the framing has one.
struct FrameStart(Option<usize>);

fn begin_frame(framing: Framing, out: &mut Vec<u8>) -> FrameStart {
    match framing {
        Framing::Seed => FrameStart(None),
        Framing::LengthPrefixed => {
            let at = out.len();
            put_u32(out, 0);
            FrameStart(Some(at))
        }
    }
}

fn finish_frame(start: FrameStart, trailing: u64, out: &mut [u8]) {
    if let FrameStart(Some(at)) = start {
        let header = (out.len() - at - 4) as u64;
        let length = u32::try_from(header + trailing).unwrap_or(NULL_LENGTH - 1);
        out[at..at + 4].copy_from_slice(&length.to_be_bytes());
    }
}

/// A message a client sends, owned (tests and the load tool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Registration: kind byte, then `quint16` + UTF-8 id.
    Register {
        /// The kind byte.
        kind: u8,
        /// The user id.
        user: String,
    },
    /// `0 to text`.
    Text {
        /// Addressee.
        to: QString,
        /// Text.
        text: QString,
    },
    /// `1 to fileName data`.
    File {
        /// Addressee.
        to: QString,
        /// File name.
        name: QString,
        /// The data.
        data: Vec<u8>,
    },
    /// `2 callee isVideo`.
    CallRequest {
        /// Who to call.
        callee: QString,
        /// isVideo byte.
        video: u8,
    },
    /// `3 ref`.
    CallAccept {
        /// Call reference.
        call_ref: QString,
    },
    /// `4 ref reason`.
    CallReject {
        /// Call reference.
        call_ref: QString,
        /// Reason.
        reason: QString,
    },
    /// `5 ref`.
    CallEnd {
        /// Call reference.
        call_ref: QString,
    },
    /// `6` + payload.
    Media {
        /// The payload.
        payload: Vec<u8>,
    },
    /// `7`, optionally with the registration suffix.
    Heartbeat {
        /// The user id to repeat, if any.
        suffix: Option<String>,
    },
}

/// Appends a client message in `framing` (as a Qt client would write it).
pub fn encode_client(message: &ClientMessage, framing: Framing, out: &mut Vec<u8>) {
    let start = begin_frame(framing, out);
    match message {
        ClientMessage::Register { kind, user } => {
            put_u8(out, *kind);
            put_user_suffix(out, user);
        }
        ClientMessage::Text { to, text } => {
            put_u8(out, MessageType::Text as u8);
            put_qstr(out, to.as_qstr());
            put_qstr(out, text.as_qstr());
        }
        ClientMessage::File { to, name, data } => {
            put_u8(out, MessageType::File as u8);
            put_qstr(out, to.as_qstr());
            put_qstr(out, name.as_qstr());
            put_u32(out, wire_u32(data.len()));
            out.extend_from_slice(data);
        }
        ClientMessage::CallRequest { callee, video } => {
            put_u8(out, MessageType::CallRequest as u8);
            put_qstr(out, callee.as_qstr());
            put_u8(out, *video);
        }
        ClientMessage::CallAccept { call_ref } => {
            put_u8(out, MessageType::CallAccept as u8);
            put_qstr(out, call_ref.as_qstr());
        }
        ClientMessage::CallReject { call_ref, reason } => {
            put_u8(out, MessageType::CallReject as u8);
            put_qstr(out, call_ref.as_qstr());
            put_qstr(out, reason.as_qstr());
        }
        ClientMessage::CallEnd { call_ref } => {
            put_u8(out, MessageType::CallEnd as u8);
            put_qstr(out, call_ref.as_qstr());
        }
        ClientMessage::Media { payload } => {
            put_u8(out, MessageType::MediaData as u8);
            out.extend_from_slice(payload);
        }
        ClientMessage::Heartbeat { suffix } => {
            put_u8(out, MessageType::Heartbeat as u8);
            if let Some(user) = suffix {
                put_user_suffix(out, user);
            }
        }
    }
    finish_frame(start, 0, out);
}

fn put_user_suffix(out: &mut Vec<u8>, user: &str) {
    put_u16(out, u16::try_from(user.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(user.as_bytes());
}

/// A message as a client decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// `0 from text`.
    Text {
        /// Sender.
        from: QString,
        /// Text.
        text: QString,
    },
    /// `1 from fileName data`.
    File {
        /// Sender.
        from: QString,
        /// File name.
        name: QString,
        /// Data.
        data: Vec<u8>,
    },
    /// `2 callId caller isVideo`.
    CallRequest {
        /// Call id.
        call_id: String,
        /// Caller.
        caller: String,
        /// isVideo.
        video: u8,
    },
    /// `3 callId`.
    CallAccept {
        /// Call id.
        call_id: String,
    },
    /// `4 callId reason`.
    CallReject {
        /// Call id.
        call_id: String,
        /// Reason.
        reason: String,
    },
    /// `5 callId`.
    CallEnd {
        /// Call id.
        call_id: String,
    },
    /// `6` + payload (seed framing: every byte after the type in the input).
    Media {
        /// Payload.
        payload: Vec<u8>,
    },
    /// `7`.
    Heartbeat,
    /// `0x20 code detail`.
    Error {
        /// Code.
        code: String,
        /// Detail.
        detail: String,
    },
    /// A type byte this decoder does not know (a Qt client ignores it).
    Unknown {
        /// The type byte.
        kind: u8,
    },
}

/// Why a server message could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is a strict prefix of a message.
    NeedMore,
    /// The input can never decode.
    Malformed,
}

impl From<Short> for DecodeError {
    fn from(short: Short) -> DecodeError {
        match short {
            Short::NeedMore => DecodeError::NeedMore,
            Short::Invalid(_) => DecodeError::Malformed,
        }
    }
}

/// Decodes one server message from the start of `input`, returning it and
/// the bytes it took. In seed framing a media message takes all of `input`.
pub fn decode_server(
    input: &[u8],
    framing: Framing,
) -> Result<(ServerMessage, usize), DecodeError> {
    match framing {
        Framing::Seed => decode_server_body(input),
        Framing::LengthPrefixed => {
            let mut cursor = Cursor::new(input);
            let length = cursor.u32()? as usize;
            let body = cursor.bytes(length)?;
            let (message, used) = decode_server_body(body)?;
            if used != body.len() {
                return Err(DecodeError::Malformed);
            }
            Ok((message, 4 + length))
        }
    }
}

fn decode_server_body(input: &[u8]) -> Result<(ServerMessage, usize), DecodeError> {
    const ANY: usize = usize::MAX;
    let mut cursor = Cursor::new(input);
    let kind = cursor.u8()?;
    let strict = |text: QStr<'_>| text.to_string_strict().ok_or(DecodeError::Malformed);
    let message = match kind {
        0 => ServerMessage::Text {
            from: cursor.qstring(ANY)?.to_owned_qstring(),
            text: cursor.qstring(ANY)?.to_owned_qstring(),
        },
        1 => {
            let from = cursor.qstring(ANY)?.to_owned_qstring();
            let name = cursor.qstring(ANY)?.to_owned_qstring();
            let data = cursor.qbytearray_len(u64::MAX)?;
            let data = cursor.bytes(data.len as usize)?.to_vec();
            ServerMessage::File { from, name, data }
        }
        2 => ServerMessage::CallRequest {
            call_id: strict(cursor.qstring(ANY)?)?,
            caller: strict(cursor.qstring(ANY)?)?,
            video: cursor.u8()?,
        },
        3 => ServerMessage::CallAccept {
            call_id: strict(cursor.qstring(ANY)?)?,
        },
        4 => ServerMessage::CallReject {
            call_id: strict(cursor.qstring(ANY)?)?,
            reason: cursor.qstring(ANY)?.to_string_lossy(),
        },
        5 => ServerMessage::CallEnd {
            call_id: strict(cursor.qstring(ANY)?)?,
        },
        6 => ServerMessage::Media {
            payload: cursor.bytes(cursor.remaining())?.to_vec(),
        },
        7 => ServerMessage::Heartbeat,
        0x20 => ServerMessage::Error {
            code: cursor.qstring(ANY)?.to_string_lossy(),
            detail: cursor.qstring(ANY)?.to_string_lossy(),
        },
        other => ServerMessage::Unknown { kind: other },
    };
    Ok((message, cursor.position()))
}
