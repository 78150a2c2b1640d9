//! Token authentication (PROTOCOL.md section 9): the secret file, the token
//! `USER:EXPIRY:KID:MAC` carried in the registration's user-id string, how
//! it is signed (`callrelay token`) and verified. HMAC-SHA256 is `ring`'s
//! (the MAC is checked in constant time by `ring::hmac::verify`); nothing
//! cryptographic is written here. Plain code: no sockets, and no clock of
//! its own (the caller passes the Unix time).

use std::fmt;

use ring::hmac;

/// The clock skew a token's expiry is allowed.
pub const SKEW_SECS: u64 = 60;
/// The longest registration string when authentication is on.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Characters of a MAC: base64url without padding of 32 bytes.
pub const MAC_CHARS: usize = 43;
/// The shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;
/// The longest key id.
pub const MAX_KID_BYTES: usize = 16;

/// Whether registrations must carry a token (`--auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Sections 3-8 as written: colons are ordinary id characters.
    Off,
    /// A valid token registers its USER; a string that is not token-shaped
    /// registers as a bare id; a token-shaped string that fails is refused.
    Optional,
    /// Every registration must be a valid token.
    Require,
}

impl AuthMode {
    /// Parses `off`, `optional` or `require`.
    pub fn parse(text: &str) -> Option<AuthMode> {
        match text {
            "off" => Some(AuthMode::Off),
            "optional" => Some(AuthMode::Optional),
            "require" => Some(AuthMode::Require),
            _ => None,
        }
    }

    /// The mode's name on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Require => "require",
        }
    }
}

/// Why a token is not valid (the ERROR `unauthorized` detail says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not `USER:EXPIRY:KID:MAC` with a decimal expiry, a key id of 1-16
    /// of `[A-Za-z0-9_-]` and a 43-character base64url MAC.
    Malformed,
    /// No key of that id.
    UnknownKey,
    /// The MAC does not match.
    BadSignature,
    /// Expired, beyond the allowed clock skew.
    Expired,
}

impl TokenError {
    /// The reason, for logs, metrics labels and the ERROR detail.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown key",
            TokenError::BadSignature => "bad signature",
            TokenError::Expired => "expired",
        }
    }

    /// Every reason, for counters.
    pub const ALL: [TokenError; 4] = [
        TokenError::Malformed,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
    ];
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret file that cannot be used, with the line at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysError {
    /// 1-based line number (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub what: &'static str,
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.what)
        } else {
            write!(f, "line {}: {}", self.line, self.what)
        }
    }
}

/// One key of the secret file.
struct Key {
    kid: String,
    hmac: hmac::Key,
}

/// The keys of a secret file: the first signs, every one verifies.
pub struct Keys {
    keys: Vec<Key>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids only: secrets are never printed.
        let kids: Vec<&str> = self.keys.iter().map(|key| key.kid.as_str()).collect();
        f.debug_struct("Keys").field("kids", &kids).finish()
    }
}

impl Keys {
    /// Parses a secret file: one `KID SECRET` per line (whitespace between;
    /// the secret is the rest of the line, trimmed, at least 16 bytes);
    /// blank lines and lines starting with `#` are ignored.
    pub fn parse(text: &str) -> Result<Keys, KeysError> {
        let mut keys: Vec<Key> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_matches(|c: char| c.is_ascii_whitespace());
            if line.is_empty() || raw.starts_with('#') {
                continue;
            }
            let error = |what| KeysError {
                line: index + 1,
                what,
            };
            let (kid, secret) = line
                .split_once(|c: char| c.is_ascii_whitespace())
                .ok_or_else(|| error("expected `KID SECRET`"))?;
            let secret = secret.trim_matches(|c: char| c.is_ascii_whitespace());
            if !valid_kid(kid) {
                return Err(error("the key id must be 1-16 of A-Z a-z 0-9 _ -"));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(error("the secret must be at least 16 bytes"));
            }
            if keys.iter().any(|key| key.kid == kid) {
                return Err(error("a key id may appear only once"));
            }
            keys.push(Key {
                kid: kid.to_owned(),
                hmac: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            });
        }
        if keys.is_empty() {
            return Err(KeysError {
                line: 0,
                what: "no key in the file",
            });
        }
        Ok(Keys { keys })
    }

    /// The key ids, signing key first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.kid.as_str())
    }

    /// A token for `user` valid until `expiry` (Unix seconds), signed with
    /// the first key.
    pub fn sign(&self, user: &str, expiry: u64) -> String {
        // invariant: `parse` never returns an empty key list.
        let key = self.keys.first().expect("a secret file has a key");
        let signed = format!("{user}:{expiry}:{}", key.kid);
        let tag = hmac::sign(&key.hmac, signed.as_bytes());
        format!("{signed}:{}", base64url_encode(tag.as_ref()))
    }

    /// Verifies `token` at `now` (Unix seconds); its USER part if valid.
    /// (Whether USER is a valid user id is the caller's check.)
    pub fn verify<'a>(&self, token: &'a str, now: u64) -> Result<&'a str, TokenError> {
        let parts = TokenParts::split(token).ok_or(TokenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|key| key.kid == parts.kid)
            .ok_or(TokenError::UnknownKey)?;
        hmac::verify(&key.hmac, parts.signed.as_bytes(), &parts.mac)
            .map_err(|_| TokenError::BadSignature)?;
        if parts.expiry.saturating_add(SKEW_SECS) < now {
            return Err(TokenError::Expired);
        }
        Ok(parts.user)
    }
}

/// A token split at its last three colons.
struct TokenParts<'a> {
    user: &'a str,
    expiry: u64,
    kid: &'a str,
    /// `USER:EXPIRY:KID`, what the MAC signs.
    signed: &'a str,
    mac: [u8; 32],
}

impl<'a> TokenParts<'a> {
    fn split(token: &'a str) -> Option<TokenParts<'a>> {
        let (signed, mac) = token.rsplit_once(':')?;
        let (rest, kid) = signed.rsplit_once(':')?;
        let (user, expiry) = rest.rsplit_once(':')?;
        if user.is_empty() || !valid_kid(kid) {
            return None;
        }
        // Decimal, canonical (no leading zero, at most 20 digits): one
        // string per token, and tokens stay well below 256 bytes.
        let canonical = !expiry.is_empty()
            && expiry.len() <= 20
            && expiry.bytes().all(|b| b.is_ascii_digit())
            && (expiry == "0" || !expiry.starts_with('0'));
        if !canonical {
            return None;
        }
        let expiry = expiry.parse().ok()?;
        let mac = base64url_decode_32(mac)?;
        Some(TokenParts {
            user,
            expiry,
            kid,
            signed,
            mac,
        })
    }
}

/// True if `text` looks like a token (at least three colons, and a last
/// part of 43 base64url characters): in `optional` mode such a string must
/// verify; anything else is a bare id.
pub fn token_shaped(text: &str) -> bool {
    text.matches(':').count() >= 3
        && text
            .rsplit_once(':')
            .is_some_and(|(_, mac)| mac.len() == MAC_CHARS && mac.bytes().all(is_base64url))
}

fn valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_BYTES).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

fn base64url_value(byte: u8) -> Option<u32> {
    ALPHABET
        .iter()
        .position(|candidate| *candidate == byte)
        .map(|at| at as u32)
}

/// Base64url without padding (RFC 4648 section 5).
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let value = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for index in 0..=chunk.len() {
            let sextet = (value >> (18 - 6 * index)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

/// Decodes 43 base64url characters into 32 bytes; `None` for anything
/// else, including non-zero bits after the last byte (one encoding per MAC).
fn base64url_decode_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != MAC_CHARS {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bits = 0u32;
    let mut count = 0u32;
    let mut at = 0;
    for byte in text.bytes() {
        bits = bits << 6 | base64url_value(byte)?;
        count += 6;
        if count >= 8 {
            count -= 8;
            *out.get_mut(at)? = (bits >> count) as u8;
            at += 1;
            bits &= (1 << count) - 1;
        }
    }
    (at == 32 && bits == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# rotation: new key first\nk2 a-newer-secret-of-32-bytes!!!!\nk1   an-older-secret-16+\n\n";

    fn keys() -> Keys {
        Keys::parse(FILE).expect("the test file parses")
    }

    #[test]
    fn a_signed_token_verifies_with_every_key_and_names_its_user() {
        let keys = keys();
        let token = keys.sign("alice", 1_000);
        assert!(token.starts_with("alice:1000:k2:"));
        assert_eq!(token.len(), "alice:1000:k2:".len() + MAC_CHARS);
        assert!(token_shaped(&token));
        assert_eq!(keys.verify(&token, 1_000), Ok("alice"));
        let old_only = Keys::parse("k1 an-older-secret-16+").expect("parses");
        let old_token = old_only.sign("bob", 5);
        assert_eq!(
            keys.verify(&old_token, 5),
            Ok("bob"),
            "a later key verifies"
        );
    }

    #[test]
    fn users_with_colons_split_at_the_last_three() {
        let keys = keys();
        let token = keys.sign("sip:alice:home", 99);
        assert_eq!(keys.verify(&token, 0), Ok("sip:alice:home"));
    }

    #[test]
    fn expiry_allows_sixty_seconds_of_skew() {
        let keys = keys();
        let token = keys.sign("alice", 1_000);
        assert_eq!(keys.verify(&token, 1_060), Ok("alice"));
        assert_eq!(keys.verify(&token, 1_061), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_fails() {
        let keys = keys();
        let token = keys.sign("alice", 1_000);
        let other_user = token.replacen("alice", "mallory", 1);
        assert_eq!(keys.verify(&other_user, 0), Err(TokenError::BadSignature));
        let later = token.replacen(":1000:", ":9000:", 1);
        assert_eq!(keys.verify(&later, 0), Err(TokenError::BadSignature));
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(matches!(
            keys.verify(&flipped, 0),
            Err(TokenError::BadSignature | TokenError::Malformed)
        ));
        let unknown = token.replacen(":k2:", ":k9:", 1);
        assert_eq!(keys.verify(&unknown, 0), Err(TokenError::UnknownKey));
    }

    #[test]
    fn malformed_tokens_are_refused_and_bare_ids_are_not_token_shaped() {
        let keys = keys();
        for bad in [
            "alice",
            "a:b:c",
            ":1:k2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "alice:x1:k2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "alice:1:k!:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "alice:1:k2:short",
            "alice:1:k2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "alice:0100:k2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "alice:123456789012345678901:k2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(keys.verify(bad, 0), Err(TokenError::Malformed), "{bad}");
        }
        assert!(!token_shaped("alice"));
        assert!(!token_shaped("sip:alice:home"));
        assert!(!token_shaped("a:b:c:not-a-mac"));
    }

    #[test]
    fn secret_files_that_cannot_be_used_name_the_line() {
        let short = Keys::parse("k1 short").expect_err("too short");
        assert_eq!(short.line, 1);
        let bad_kid = Keys::parse("\n# c\nk/1 a-secret-of-16-bytes").expect_err("bad kid");
        assert_eq!(bad_kid.line, 3);
        assert!(Keys::parse("# only comments\n").is_err());
        let twice = Keys::parse("k a-secret-of-16-bytes\nk a-secret-of-16-bytes").expect_err("dup");
        assert_eq!(twice.line, 2);
        assert_eq!(format!("{:?}", keys()), "Keys { kids: [\"k2\", \"k1\"] }");
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_encode(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        let mac: Vec<u8> = (0u8..32).collect();
        let text = base64url_encode(&mac);
        assert_eq!(base64url_decode_32(&text).map(|m| m.to_vec()), Some(mac));
    }
}
