//! Fuzz target: token parsing and verification (PROTOCOL.md section 9).
//! Arbitrary strings never panic the verifier (and what verifies names a
//! user at its start); a token signed for any user string verifies to exactly
//! that user, and changing any one byte of it makes it fail.
#![no_main]

use callrelay::auth::{Keys, token_shaped};
use libfuzzer_sys::fuzz_target;

const SECRETS: &str = "new a-fuzzing-secret-of-32-bytes!!\nold another-secret-16b\n";

fuzz_target!(|data: &[u8]| {
    let keys = Keys::parse(SECRETS).expect("the fuzz secret file parses");
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let now = u64::from(selector) * 1_000;
    // Arbitrary input: no panic; what verifies names a user inside it.
    if let Ok(user) = keys.verify(text, now) {
        assert!(text.starts_with(user));
    }
    let _ = token_shaped(text);
    // Signed input: verifies to its user, and one changed byte breaks it.
    if text.is_empty() || text.len() > 128 {
        return;
    }
    let expiry = now + 10;
    let token = keys.sign(text, expiry);
    assert_eq!(keys.verify(&token, now), Ok(text), "{token:?}");
    assert!(token_shaped(&token));
    let mut bytes = token.clone().into_bytes();
    let at = usize::from(selector) % bytes.len();
    bytes[at] ^= 0x01;
    if let Ok(changed) = String::from_utf8(bytes) {
        assert!(keys.verify(&changed, now).is_err(), "{changed:?} still verifies");
    }
});
