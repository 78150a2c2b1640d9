//! Calls survive reconnects (PROTOCOL.md section 8.3), against the real
//! binary over real sockets: a party whose connection is lost is detached
//! for `--resume-window`; the user's next registration becomes the party
//! again and is told where the call stands; the window's end, a protocol
//! error, `--resume-window 0` and a replacement behave as the contract says.

mod common;

use std::time::{Duration, Instant};

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::{ClientMessage, ServerMessage};
use common::{
    Client, RelayProcess, accepted_call, expect_ended, media_both_ways, q, ring, sample, scrape,
};

const BOTH: [Framing; 2] = [Seed, LengthPrefixed];

/// Drops `client`'s connection and waits until the relay has detached it.
#[track_caller]
fn lose(relay: &RelayProcess, client: Client) {
    let user = client.user.clone();
    drop(client);
    relay.expect_log(&[&format!(": {user} detached")]);
}

/// A new connection registers `user` again (no barrier: what the relay
/// sends first is the point).
fn come_back(relay: &RelayProcess, user: &str, framing: Framing) -> Client {
    let mut client = relay.connect(framing);
    client.register(user);
    client
}

// An accepted call goes on when the callee's connection is lost: the caller
// hears nothing; the callee's new connection gets CALL_ACCEPT again, and
// media flows both ways between the caller and the new connection, in every
// framing combination.
#[test]
fn an_accepted_call_resumes_on_a_new_connection() {
    for alice_framing in BOTH {
        for bob_framing in BOTH {
            let relay = RelayProcess::start(&[]);
            let mut alice = relay.client("alice", alice_framing);
            let mut bob = relay.client("bob", bob_framing);
            let call_id = accepted_call(&mut alice, &mut bob);
            lose(&relay, bob);
            alice.barrier();
            let mut bob = come_back(&relay, "bob", bob_framing);
            bob.expect_accept(&call_id);
            media_both_ways(&mut alice, &mut bob, b"to the new bob", b"to alice");
            bob.end(&call_id);
            expect_ended(&mut bob, &mut alice, &call_id);
        }
    }
}

// Media towards a detached party is dropped and counted (`detached`); what
// the other party sends once it is back reaches it.
#[test]
fn media_to_a_detached_party_is_dropped_and_counted() {
    let relay = RelayProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut bob);
    lose(&relay, bob);
    alice.media(b"nobody hears this");
    alice.barrier();
    let metrics = scrape(relay.metrics_addr());
    assert_eq!(
        sample(
            &metrics,
            "callrelay_media_frames_dropped_total{reason=\"detached\"}"
        ),
        1
    );
    let mut bob = come_back(&relay, "bob", LengthPrefixed);
    bob.expect_accept(&call_id);
    alice.media(b"heard");
    bob.expect_media(b"heard");
}

// A ringing call whose callee comes back: the new connection gets the
// CALL_REQUEST again (caller and isVideo as first sent) and may answer it.
#[test]
fn a_returning_callee_of_a_ringing_call_is_rung_again() {
    for framing in BOTH {
        let relay = RelayProcess::start(&[]);
        let mut alice = relay.client("alice", LengthPrefixed);
        let bob = relay.client("bob", framing);
        let mut bob_first = bob;
        let call_id = ring(&mut alice, &mut bob_first, false);
        lose(&relay, bob_first);
        let mut bob = come_back(&relay, "bob", framing);
        assert_eq!(bob.expect_incoming("alice", 0), call_id);
        bob.accept(&call_id);
        alice.expect_accept(&call_id);
        bob.expect_accept(&call_id);
    }
}

// A ringing call whose caller comes back: the new connection gets nothing
// until the callee answers; the answer then reaches it.
#[test]
fn a_returning_caller_of_a_ringing_call_hears_the_answer() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let call_id = ring(&mut alice, &mut bob, true);
    lose(&relay, alice);
    let mut alice = come_back(&relay, "alice", LengthPrefixed);
    alice.barrier();
    bob.accept(&call_id);
    bob.expect_accept(&call_id);
    alice.expect_accept(&call_id);
    media_both_ways(&mut alice, &mut bob, b"hello bob", b"hello alice");
}

// The callee accepts while the caller is detached: the callee gets
// CALL_ACCEPT at once, the caller's new connection gets it when it comes
// back, and media flows.
#[test]
fn a_call_accepted_while_the_caller_was_away_is_accepted_on_return() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", Seed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let call_id = ring(&mut alice, &mut bob, true);
    lose(&relay, alice);
    bob.accept(&call_id);
    bob.expect_accept(&call_id);
    let mut alice = come_back(&relay, "alice", Seed);
    alice.expect_accept(&call_id);
    media_both_ways(&mut alice, &mut bob, b"late hello", b"welcome back");
}

// A call that ended while a party was detached: coming back, the party
// gets CALL_END of it (the other party ended it, and is free again).
#[test]
fn a_call_ended_while_a_party_was_away_is_reported_on_return() {
    for framing in BOTH {
        let relay = RelayProcess::start(&[]);
        let mut alice = relay.client("alice", LengthPrefixed);
        let mut bob = relay.client("bob", framing);
        let call_id = accepted_call(&mut alice, &mut bob);
        lose(&relay, bob);
        alice.end(&call_id);
        alice.expect_end(&call_id);
        let mut bob = come_back(&relay, "bob", framing);
        bob.expect_end(&call_id);
        bob.barrier();
    }
}

// While a party is detached it is still in the call: a CALL_REQUEST to it
// is refused "busy", TEXT to it goes as to an offline user.
#[test]
fn a_detached_party_is_busy_and_offline_for_text() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let mut carol = relay.client("carol", LengthPrefixed);
    accepted_call(&mut alice, &mut bob);
    lose(&relay, bob);
    carol.call("bob", false);
    carol.expect_reject("busy");
    carol.text("bob", "are you there?");
    carol.expect_error("offline");
}

// The window passes with the party still detached: the call ends and the
// other party gets CALL_END, about the window after the loss.
#[test]
fn the_call_ends_when_the_resume_window_passes() {
    let window = Duration::from_millis(600);
    let relay = RelayProcess::start(&["--resume-window", "0.6"]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = relay.client("bob", Seed);
    let call_id = accepted_call(&mut alice, &mut bob);
    let lost_at = Instant::now();
    lose(&relay, bob);
    alice.expect_end(&call_id);
    let waited = lost_at.elapsed();
    assert!(waited >= window, "CALL_END after {waited:?}");
    relay.expect_log(&["did not come back within the resume window"]);
    // bob coming back later finds no call.
    let mut bob = come_back(&relay, "bob", Seed);
    bob.barrier();
}

// `--resume-window 0`: a lost connection ends its call at once, as before.
#[test]
fn with_no_resume_window_a_lost_party_ends_the_call_at_once() {
    let relay = RelayProcess::start(&["--resume-window", "0"]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let bob = relay.client("bob", LengthPrefixed);
    let mut bob_first = bob;
    let call_id = accepted_call(&mut alice, &mut bob_first);
    drop(bob_first);
    alice.expect_end(&call_id);
}

// A newer registration of a party's id (newest wins) takes the call over:
// the old connection gets ERROR replaced and is closed, the new one gets
// CALL_ACCEPT, the other party hears nothing, and media flows to the new
// connection.
#[test]
fn a_replacing_connection_takes_the_call_over() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut old_bob = relay.client("bob", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut old_bob);
    let mut bob = come_back(&relay, "bob", LengthPrefixed);
    old_bob.expect_error("replaced");
    old_bob.expect_closed();
    bob.expect_accept(&call_id);
    alice.barrier();
    media_both_ways(&mut alice, &mut bob, b"to the newest bob", b"from it");
}

// A connection closed for a protocol error ends its call at once (no
// detachment): the other party gets CALL_END.
#[test]
fn a_protocol_error_ends_the_call_at_once() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut bob);
    bob.send_raw(&[0, 0, 0, 1, 0x55]);
    bob.expect_error("unknown_type");
    alice.expect_end(&call_id);
    // Nothing waits for bob: a new bob registration finds no call.
    let mut bob = come_back(&relay, "bob", LengthPrefixed);
    bob.barrier();
    alice.call("bob", false);
    let new_call = bob.expect_incoming("alice", 0);
    assert_ne!(new_call, call_id);
}

// The caller comes back on a seed connection while still in media mode on
// the other side: the guide's client restarts media on CALL_ACCEPT, and the
// relay's seed media-mode rule starts afresh for the new connection (its
// first TEXT after coming back is a TEXT, not media).
#[test]
fn a_returning_seed_client_starts_in_normal_mode() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", Seed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut bob);
    alice.media(b"seed media before the loss");
    bob.expect_media_chunks(b"seed media before the loss");
    lose(&relay, alice);
    let mut alice = come_back(&relay, "alice", Seed);
    alice.expect_accept(&call_id);
    alice.send(&ClientMessage::Text {
        to: q("bob"),
        text: q("back"),
    });
    assert_eq!(
        bob.recv(),
        ServerMessage::Text {
            from: q("alice"),
            text: q("back")
        }
    );
}
