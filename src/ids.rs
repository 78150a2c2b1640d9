//! Identifier newtypes shared by the layers: [`ConnId`] (a connection slot
//! plus a generation, so a stale reference never reaches a reused slot),
//! [`UserId`] (a validated registration id) and [`CallId`] (a UUID-formatted
//! call id). Validation and display only; no I/O.

use std::fmt;

/// A connection as other layers refer to it: its slab slot and the
/// generation that slot had when the connection was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Index in the server's connection slab.
    pub slot: u32,
    /// Bumped for every new connection; checked on every lookup. (32 bits:
    /// a stale reference would have to outlive four billion connections.)
    pub generation: u32,
}

impl ConnId {
    /// The slab index.
    pub fn index(&self) -> usize {
        self.slot as usize
    }

    /// The sender of a FILE coming over a trunk from another node, as the
    /// receiver's pipe knows it: generation 0, which no connection has.
    pub fn trunk_stream(number: u32) -> ConnId {
        ConnId {
            slot: number,
            generation: 0,
        }
    }

    /// True for a [`ConnId::trunk_stream`].
    pub fn is_trunk_stream(&self) -> bool {
        self.generation == 0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{}", self.slot, self.generation)
    }
}

/// The most bytes a user id may have (PROTOCOL.md section 3). The heartbeat
/// suffix rule relies on ids being at most this long.
pub const USER_ID_MAX_BYTES: usize = 128;

/// A valid user id: 1..=limit bytes of UTF-8 with no control character
/// (Unicode category Cc: C0, DEL and C1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

/// Why a user id was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserIdError {
    /// Zero bytes.
    Empty,
    /// More bytes than the limit.
    TooLong,
    /// Not valid UTF-8 (registration) or an unpaired surrogate (QString).
    BadEncoding,
    /// Contains a control character.
    ControlCharacter,
}

impl UserIdError {
    /// What was wrong, for the log and the ERROR detail (the one text of
    /// each error, wherever the id came from).
    pub fn text(&self) -> &'static str {
        match self {
            UserIdError::Empty => "empty user id",
            UserIdError::TooLong => "user id too long",
            UserIdError::BadEncoding => "user id is not valid UTF-8 or UTF-16",
            UserIdError::ControlCharacter => "user id contains a control character",
        }
    }
}

impl fmt::Display for UserIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl UserId {
    /// Validates registration bytes (UTF-8) against `max_bytes`.
    pub fn from_utf8(bytes: &[u8], max_bytes: usize) -> Result<UserId, UserIdError> {
        let text = std::str::from_utf8(bytes).map_err(|_| UserIdError::BadEncoding)?;
        UserId::from_string(text.to_owned(), max_bytes)
    }

    /// Validates an already decoded string against `max_bytes` (UTF-8 bytes).
    pub fn from_string(text: String, max_bytes: usize) -> Result<UserId, UserIdError> {
        if text.is_empty() {
            return Err(UserIdError::Empty);
        }
        if text.len() > max_bytes {
            return Err(UserIdError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(UserIdError::ControlCharacter);
        }
        Ok(UserId(text))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A call id: 36 characters in UUID format (8-4-4-4-12 lowercase hex).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(String);

impl CallId {
    /// Formats 16 random bytes as a version-4 UUID.
    pub fn from_random(mut bytes: [u8; 16]) -> CallId {
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        let mut text = String::with_capacity(36);
        for (index, byte) in bytes.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                text.push('-');
            }
            text.push_str(&format!("{byte:02x}"));
        }
        CallId(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rules() {
        assert!(UserId::from_utf8("alice".as_bytes(), 128).is_ok());
        assert!(UserId::from_utf8("用户😀".as_bytes(), 128).is_ok());
        assert_eq!(UserId::from_utf8(b"", 128), Err(UserIdError::Empty));
        assert_eq!(
            UserId::from_utf8(&[b'a'; 129], 128),
            Err(UserIdError::TooLong)
        );
        assert!(UserId::from_utf8(&[b'a'; 128], 128).is_ok());
        assert_eq!(
            UserId::from_utf8(&[0xC3, 0x28], 128),
            Err(UserIdError::BadEncoding)
        );
        for control in ["a\tb", "a\u{7f}", "a\u{85}", "\0"] {
            assert_eq!(
                UserId::from_utf8(control.as_bytes(), 128),
                Err(UserIdError::ControlCharacter),
                "{control:?}"
            );
        }
    }

    #[test]
    fn call_id_is_uuid_formatted() {
        let id = CallId::from_random([0xAB; 16]);
        assert_eq!(id.as_str(), "abababab-abab-4bab-abab-abababababab");
        assert_eq!(id.as_str().len(), 36);
    }
}

/// A cluster node's id (`--node-id`, PROTOCOL.md section 11).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// A node id: 1-64 bytes of `[A-Za-z0-9._:-]` (it is part of Redis keys
    /// and of the directory's values, which are split at spaces).
    pub fn new(text: &str) -> Option<NodeId> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
        valid.then(|| NodeId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl CallId {
    /// A call id received from another node: it must have the UUID shape.
    pub fn parse(text: &str) -> Option<CallId> {
        let shape = text.len() == 36
            && text.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        shape.then(|| CallId(text.to_owned()))
    }
}
