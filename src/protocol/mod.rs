//! The wire protocol of PROTOCOL.md, with no sockets and no call logic.
//!
//! - [`qdatastream`]: QDataStream primitives (cursor and writers).
//! - [`frame`]: the messages in both directions and their encoders, plus a
//!   client-side decoder of server messages (tests and the load tool).
//! - [`parser`]: the per-connection incremental parser of client input.
//!
//! This module owns the type bytes, the error codes and the framing choice.

pub mod frame;
pub mod parser;
pub mod qdatastream;

use std::fmt;

/// Message type byte (PROTOCOL.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Text message.
    Text = 0,
    /// File transfer.
    File = 1,
    /// Call request (client) / incoming call (server).
    CallRequest = 2,
    /// Call accepted.
    CallAccept = 3,
    /// Call rejected or refused.
    CallReject = 4,
    /// Call ended.
    CallEnd = 5,
    /// Media payload.
    MediaData = 6,
    /// Heartbeat (and the registration kind the guide uses).
    Heartbeat = 7,
    /// Extension: error report.
    Error = 0x20,
}

impl MessageType {
    /// The type a client may send with this byte, if any.
    pub fn from_client_byte(byte: u8) -> Option<MessageType> {
        Some(match byte {
            0 => MessageType::Text,
            1 => MessageType::File,
            2 => MessageType::CallRequest,
            3 => MessageType::CallAccept,
            4 => MessageType::CallReject,
            5 => MessageType::CallEnd,
            6 => MessageType::MediaData,
            7 => MessageType::Heartbeat,
            _ => return None,
        })
    }
}

/// How a connection delimits frames (PROTOCOL.md section 3), chosen by its
/// first three bytes and used in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The guide's framing: frames back to back, media delimited by arrival.
    Seed,
    /// Every frame is `quint32 n` followed by n bytes (type + body).
    LengthPrefixed,
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Seed => "seed",
            Framing::LengthPrefixed => "length-prefixed",
        })
    }
}

/// ERROR codes (PROTOCOL.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The registration id is not a valid user id.
    BadUserId,
    /// A newer registration of the same id took over.
    Replaced,
    /// A call reference names no call of the sender.
    NoSuchCall,
    /// TEXT or FILE to a user who is not online.
    Offline,
    /// A frame that does not decode.
    Malformed,
    /// A type byte no client may send.
    UnknownType,
    /// A field or frame over its limit.
    TooLarge,
    /// Registration or idle timeout.
    Timeout,
    /// The output buffer passed its hard limit.
    OutputOverflow,
    /// The connection limit is reached.
    ServerFull,
    /// The server is stopping.
    ShuttingDown,
    /// The registration is not a valid token (PROTOCOL.md section 9).
    Unauthorized,
    /// A plain connection where TLS is required (PROTOCOL.md section 10).
    TlsRequired,
}

impl ErrorCode {
    /// Every code, for counters and docs.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadUserId,
        ErrorCode::Replaced,
        ErrorCode::NoSuchCall,
        ErrorCode::Offline,
        ErrorCode::Malformed,
        ErrorCode::UnknownType,
        ErrorCode::TooLarge,
        ErrorCode::Timeout,
        ErrorCode::OutputOverflow,
        ErrorCode::ServerFull,
        ErrorCode::ShuttingDown,
        ErrorCode::Unauthorized,
        ErrorCode::TlsRequired,
    ];

    /// The code as it is written on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadUserId => "bad_user_id",
            ErrorCode::Replaced => "replaced",
            ErrorCode::NoSuchCall => "no_such_call",
            ErrorCode::Offline => "offline",
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::OutputOverflow => "output_overflow",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TlsRequired => "tls_required",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The size limits the parser enforces (PROTOCOL.md section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most UTF-8 bytes in a user id (at most 128).
    pub max_user_id: usize,
    /// Most bytes of the registration string (the user id, or with
    /// authentication on a token carrying it: PROTOCOL.md section 9).
    pub max_registration: usize,
    /// Most UTF-16 bytes in a QString field other than TEXT's text.
    pub max_field: usize,
    /// Most UTF-16 bytes in TEXT's text.
    pub max_text: usize,
    /// Most bytes of FILE data.
    pub max_file: u64,
    /// Most bytes of a length-prefixed media payload.
    pub max_media: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_user_id: crate::ids::USER_ID_MAX_BYTES,
            max_registration: crate::ids::USER_ID_MAX_BYTES,
            max_field: 1024,
            max_text: 64 * 1024,
            max_file: 64 * 1024 * 1024,
            max_media: 4 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The most bytes a frame the parser must hold whole can take: the
    /// largest self-delimited frame, plus a length prefix. Media and file
    /// bodies are streamed and do not count.
    pub fn max_whole_frame(&self) -> usize {
        let text = 1 + 4 + self.max_field + 4 + self.max_text;
        let file_header = 1 + 4 + self.max_field + 4 + self.max_field + 4;
        let reject = 1 + 4 + self.max_field + 4 + self.max_field;
        let register = 1 + 2 + self.max_registration.max(self.max_user_id);
        4 + text.max(file_header).max(reject).max(register)
    }
}
