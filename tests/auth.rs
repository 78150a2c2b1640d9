//! Token authentication (PROTOCOL.md section 9), against the real binary
//! over real sockets: tokens minted with the library's own signer and with
//! `callrelay token`, checked independently with Python's hmac; every row of
//! the section: valid and invalid tokens, what peers see, the modes, the
//! heartbeat suffix, SIGHUP rotation and the per-address failure limit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use callrelay::auth::Keys;
use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::{ClientMessage, ServerMessage};
use common::{Client, RelayProcess, accept_ringing};

const FIRST: &str = "k1 the-first-secret-of-this-test";
const SECOND: &str = "k0 an-older-secret-still-valid";

/// A secret file with `lines`, unique to this test process and name.
fn secret_file(name: &str, lines: &[&str]) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("callrelay-auth-{}-{name}.keys", std::process::id()));
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the secret file");
    path
}

fn keys(lines: &[&str]) -> Keys {
    Keys::parse(&lines.join("\n")).expect("test keys parse")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A relay with authentication from `file` and `extra` options.
fn relay(file: &Path, extra: &[&str]) -> RelayProcess {
    let mut args = vec!["--auth-secret-file", file.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    RelayProcess::start(&args)
}

/// Registers with `token` on a new connection; `user` is who the client is
/// to others (its barrier TEXT goes to `user`).
fn token_client(relay: &RelayProcess, token: &str, user: &str, framing: Framing) -> Client {
    let mut client = relay.connect(framing);
    client.register(token);
    client.user = user.to_owned();
    client.barrier();
    client
}

/// Registers `text` and expects ERROR unauthorized with `why` in its
/// detail, then the close.
#[track_caller]
fn expect_unauthorized(relay: &RelayProcess, text: &str, why: &str) {
    let mut client = relay.connect(LengthPrefixed);
    client.register(text);
    match client.recv() {
        ServerMessage::Error { code, detail } => {
            assert_eq!(code, "unauthorized");
            assert!(
                detail.contains(why),
                "ERROR detail {detail:?}, wanted {why:?}"
            );
            assert!(!detail.contains(text), "the detail repeats the token");
        }
        other => panic!("expected ERROR unauthorized, got {other:?}"),
    }
    client.expect_closed();
}

// A valid token registers its USER: others call it by USER, see USER as
// `caller` and `from`, and refs by USER work; nothing sent shows the token.
#[test]
fn a_valid_token_registers_its_user_and_peers_see_only_the_user() {
    let file = secret_file("valid", &[FIRST]);
    let relay = relay(&file, &[]);
    let keys = keys(&[FIRST]);
    for framing in [Seed, LengthPrefixed] {
        let alice_token = keys.sign("alice", unix_now() + 600);
        let bob_token = keys.sign("bob", unix_now() + 600);
        let mut alice = token_client(&relay, &alice_token, "alice", framing);
        let mut bob = token_client(&relay, &bob_token, "bob", LengthPrefixed);
        alice.call("bob", true);
        let call_id = bob.expect_incoming("alice", 1);
        accept_ringing(&mut alice, &mut bob, "alice", &call_id);
        bob.text("alice", "hi");
        alice.expect_text("bob", "hi");
        bob.end("alice");
        bob.expect_end(&call_id);
        alice.expect_end(&call_id);
    }
    let log = relay.log_snapshot().join("\n");
    let mac = keys
        .sign("alice", 1)
        .rsplit_once(':')
        .map(|(_, m)| m.to_owned());
    assert!(
        !log.contains(":k1:"),
        "a token (or its MAC) reached the log"
    );
    assert!(mac.is_some_and(|mac| !log.contains(&mac)));
}

// Expiry: 60 s of skew are allowed, more are not.
#[test]
fn expired_tokens_are_refused_beyond_the_skew() {
    let file = secret_file("expiry", &[FIRST]);
    let relay = relay(&file, &[]);
    let keys = keys(&[FIRST]);
    let within = keys.sign("alice", unix_now() - 30);
    token_client(&relay, &within, "alice", LengthPrefixed);
    let beyond = keys.sign("bob", unix_now() - 120);
    expect_unauthorized(&relay, &beyond, "expired");
}

// Unknown key, a flipped MAC, a MAC made for another user, and strings that
// are not tokens at all are refused, each with its reason.
#[test]
fn invalid_tokens_are_refused_with_their_reason() {
    let file = secret_file("invalid", &[FIRST]);
    let relay = relay(&file, &[]);
    let keys = keys(&[FIRST]);
    let expiry = unix_now() + 600;
    let stranger = Keys::parse("k9 a-secret-nobody-configured").expect("parses");
    expect_unauthorized(&relay, &stranger.sign("alice", expiry), "unknown key");
    let token = keys.sign("alice", expiry);
    let mut flipped = token.clone().into_bytes();
    let at = flipped.len() - 5;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    expect_unauthorized(
        &relay,
        &String::from_utf8(flipped).expect("ascii"),
        "bad signature",
    );
    let (_, mac) = token.rsplit_once(':').expect("a MAC");
    expect_unauthorized(
        &relay,
        &format!("mallory:{expiry}:k1:{mac}"),
        "bad signature",
    );
    expect_unauthorized(&relay, "alice", "malformed");
    expect_unauthorized(&relay, "alice:1:k1:short", "malformed");
}

// USER may contain colons: the token is split at its last three.
#[test]
fn a_user_with_colons_registers() {
    let file = secret_file("colons", &[FIRST]);
    let relay = relay(&file, &[]);
    let token = keys(&[FIRST]).sign("sip:alice:home", unix_now() + 600);
    let mut alice = token_client(&relay, &token, "sip:alice:home", LengthPrefixed);
    alice.text("sip:alice:home", "to myself");
    alice.expect_text("sip:alice:home", "to myself");
}

// Every key of the file verifies; the first signs (`callrelay token`).
#[test]
fn the_second_key_verifies_and_callrelay_token_signs_with_the_first() {
    let file = secret_file("rotation", &[FIRST, SECOND]);
    let relay = relay(&file, &[]);
    let old = keys(&[SECOND]).sign("olduser", unix_now() + 600);
    token_client(&relay, &old, "olduser", LengthPrefixed);
    let output = Command::new(env!("CARGO_BIN_EXE_callrelay"))
        .args(["token", "carol", "--ttl", "120", "--auth-secret-file"])
        .arg(&file)
        .output()
        .expect("run callrelay token");
    assert!(
        output.status.success(),
        "callrelay token failed: {output:?}"
    );
    let token = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(
        token.starts_with("carol:") && token.contains(":k1:"),
        "{token}"
    );
    token_client(&relay, &token, "carol", Seed);
    verify_with_python(&token, "the-first-secret-of-this-test");
}

/// Checks `token`'s MAC with Python's hmac and base64 (an implementation
/// other than ours), and that its expiry is about two minutes away.
fn verify_with_python(token: &str, secret: &str) {
    let script = r#"
import base64, hmac, hashlib, sys, time
token, secret = sys.argv[1], sys.argv[2]
signed, mac = token.rsplit(":", 1)
user, expiry, kid = signed.rsplit(":", 2)
want = base64.urlsafe_b64encode(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
assert hmac.compare_digest(want, mac), (want, mac)
assert 100 <= int(expiry) - time.time() <= 130, expiry
print("ok", user)
"#;
    let output = Command::new("python3")
        .args(["-c", script, token, secret])
        .output()
        .expect("run python3");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("ok carol"),
        "python3 does not verify the token: {output:?}"
    );
}

// `optional`: bare ids register as before, a token-shaped string that fails
// is refused, and a bare id can never replace a user registered with a
// token: it is refused, and the token holder keeps its call.
#[test]
fn optional_mode_takes_bare_ids_but_never_over_a_token_holder() {
    let file = secret_file("optional", &[FIRST]);
    let relay = relay(&file, &["--auth", "optional"]);
    let keys = keys(&[FIRST]);
    let mut bare = relay.client("bare:with:colons", LengthPrefixed);
    let token = keys.sign("alice", unix_now() + 600);
    let mut alice = token_client(&relay, &token, "alice", LengthPrefixed);
    bare.call("alice", false);
    let call_id = alice.expect_incoming("bare:with:colons", 0);
    accept_ringing(&mut bare, &mut alice, &call_id, &call_id);
    let stranger = Keys::parse("k9 a-secret-nobody-configured").expect("parses");
    expect_unauthorized(
        &relay,
        &stranger.sign("eve", unix_now() + 600),
        "unknown key",
    );
    // A bare "alice" cannot take alice's place.
    expect_unauthorized(&relay, "alice", "token required");
    alice.barrier();
    bare.end(&call_id);
    alice.expect_end(&call_id);
    bare.expect_end(&call_id);
}

// The heartbeat's registration suffix repeats the whole registration
// string (the token) byte for byte.
#[test]
fn the_heartbeat_suffix_carries_the_whole_token() {
    let file = secret_file("suffix", &[FIRST]);
    let relay = relay(&file, &[]);
    let token = keys(&[FIRST]).sign("alice", unix_now() + 600);
    for framing in [Seed, LengthPrefixed] {
        let mut alice = token_client(&relay, &token, "alice", framing);
        alice.send(&ClientMessage::Heartbeat {
            suffix: Some(token.clone()),
        });
        if framing == LengthPrefixed {
            assert_eq!(alice.recv(), ServerMessage::Heartbeat);
        }
        alice.barrier();
    }
}

// SIGHUP reloads the secret file: a token of a new key is accepted after
// it; a file that does not parse keeps the keys in use.
#[test]
fn sighup_rotates_keys_and_a_broken_file_keeps_the_old_ones() {
    let file = secret_file("sighup", &[FIRST]);
    let relay = relay(&file, &[]);
    let newer = "k2 a-secret-added-at-run-time";
    let new_token = keys(&[newer]).sign("dave", unix_now() + 600);
    expect_unauthorized(&relay, &new_token, "unknown key");
    std::fs::write(&file, format!("{newer}\n{FIRST}\n")).expect("rewrite");
    hup(&relay);
    relay.expect_log(&["SIGHUP: reloaded"]);
    token_client(&relay, &new_token, "dave", LengthPrefixed);
    std::fs::write(&file, "k3 short\n").expect("break the file");
    hup(&relay);
    relay.expect_log(&["the keys in use stay"]);
    let still = keys(&[FIRST]).sign("erin", unix_now() + 600);
    token_client(&relay, &still, "erin", LengthPrefixed);
}

fn hup(relay: &RelayProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

// Beyond --auth-fail-limit failures from one address within 10 s, that
// address's new connections are closed at once (and counted).
#[test]
fn an_address_over_the_failure_limit_is_refused() {
    let file = secret_file("limit", &[FIRST]);
    let relay = relay(&file, &["--auth-fail-limit", "3"]);
    // Opened before the failures: it registers only after the limit is
    // passed, so even a valid token is refused then.
    let mut early = relay.connect(LengthPrefixed);
    for _ in 0..4 {
        expect_unauthorized(&relay, "nobody", "malformed");
    }
    early.register(&keys(&[FIRST]).sign("early", unix_now() + 600));
    early.expect_error("unauthorized");
    relay.expect_log(&["unauthorized"]);
    let mut refused = relay.connect(LengthPrefixed);
    refused.expect_closed();
    relay.expect_log(&["authentication failures (--auth-fail-limit)"]);
}
