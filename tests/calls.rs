//! Every row of PROTOCOL.md section 5 against the real binary, in both
//! framings, over real sockets.

mod common;

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::ServerMessage;
use common::{
    RelayProcess, accept_ringing, accepted_call, expect_ended, relay_with_call, relay_with_pair,
    ring,
};

const BOTH: [Framing; 2] = [Seed, LengthPrefixed];

#[test]
fn request_rings_the_callee_and_accept_reaches_both() {
    for framing in BOTH {
        let (_relay, mut alice, mut bob) = relay_with_pair(&[], framing, framing);
        let call_id = ring(&mut alice, &mut bob, false);
        alice.barrier();
        accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
    }
}

#[test]
fn refused_requests_get_their_reason_and_a_fresh_id() {
    let (relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, Seed);
    let mut carol = relay.client("carol", Seed);
    for (callee, reason) in [
        ("alice", "invalid"),
        ("", "invalid"),
        ("a\u{1}b", "invalid"),
        ("nobody", "offline"),
    ] {
        alice.call(callee, true);
        let refused_id = alice.expect_reject(reason);
        assert_eq!(refused_id.len(), 36);
    }
    let long = "x".repeat(129);
    alice.call(&long, true);
    alice.expect_reject("invalid");
    // bob is ringing (alice -> bob): carol calling bob gets busy, and bob
    // (the callee of a ringing call) calling carol gets busy too.
    let call_id = ring(&mut alice, &mut bob, true);
    carol.call("bob", false);
    let refused = carol.expect_reject("busy");
    assert_ne!(refused, call_id, "another user's call id is never revealed");
    bob.call("carol", false);
    bob.expect_reject("busy");
    // alice (caller of a ringing call) is busy too.
    alice.call("carol", false);
    alice.expect_reject("busy");
    carol.barrier();
    // accepted: still busy.
    accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
    carol.call("alice", false);
    carol.expect_reject("busy");
}

#[test]
fn callee_reject_sends_the_reason_to_both() {
    for framing in BOTH {
        let (_relay, mut alice, mut bob) = relay_with_pair(&[], framing, framing);
        let call_id = ring(&mut alice, &mut bob, true);
        bob.reject(&call_id, "在忙 😀");
        assert_eq!(alice.expect_reject("在忙 😀"), call_id);
        assert_eq!(bob.expect_reject("在忙 😀"), call_id);
        // Both are free again.
        ring(&mut bob, &mut alice, false);
    }
}

#[test]
fn either_party_ends_an_accepted_call_by_any_ref() {
    let (_relay, mut alice, mut bob, call_id) = relay_with_call(&[], Seed, LengthPrefixed);
    alice.end(&call_id);
    expect_ended(&mut alice, &mut bob, &call_id);
    let call_id = accepted_call(&mut alice, &mut bob);
    bob.end("alice");
    expect_ended(&mut alice, &mut bob, &call_id);
    let call_id = accepted_call(&mut alice, &mut bob);
    bob.end("");
    expect_ended(&mut alice, &mut bob, &call_id);
}

#[test]
fn caller_cancel_and_callee_reject_after_accept_end_the_call() {
    let (_relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, Seed);
    let call_id = ring(&mut alice, &mut bob, false);
    alice.reject(&call_id, "changed my mind");
    expect_ended(&mut alice, &mut bob, &call_id);
    let call_id = accepted_call(&mut alice, &mut bob);
    bob.reject(&call_id, "bye");
    expect_ended(&mut alice, &mut bob, &call_id);
    // Ending a ringing call from the callee side with END.
    let call_id = ring(&mut alice, &mut bob, false);
    bob.end(&call_id);
    expect_ended(&mut alice, &mut bob, &call_id);
}

#[test]
fn nobody_acts_on_a_call_they_are_not_in() {
    let (relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, LengthPrefixed);
    let mut mallory = relay.client("mallory", LengthPrefixed);
    let mut eve = relay.client("eve", Seed);
    let call_id = ring(&mut alice, &mut bob, true);
    // The caller accepting its own call is ignored (framed: ERROR).
    alice.accept(&call_id);
    alice.expect_error("no_such_call");
    // Outsiders, with the real id, a party's name, or empty.
    for call_ref in [call_id.as_str(), "alice", "bob", ""] {
        mallory.accept(call_ref);
        mallory.expect_error("no_such_call");
        mallory.end(call_ref);
        mallory.expect_error("no_such_call");
        mallory.reject(call_ref, "no");
        mallory.expect_error("no_such_call");
        eve.end(call_ref);
    }
    // A seed outsider gets nothing at all.
    eve.barrier();
    alice.barrier();
    bob.barrier();
    // The call is unharmed.
    accept_ringing(&mut alice, &mut bob, "alice", &call_id);
    // The callee accepting again is ignored without an ERROR.
    bob.accept(&call_id);
    bob.barrier();
    alice.barrier();
}

#[test]
fn disconnect_mid_call_ends_it_for_the_other_party() {
    for framing in BOTH {
        // Without a resume window (PROTOCOL.md 8.3) the call ends at once.
        let (relay, mut alice, bob, call_id) =
            relay_with_call(&["--resume-window", "0"], framing, framing);
        drop(bob);
        alice.expect_end(&call_id);
        // Ringing, the caller leaves.
        let mut bob = relay.client("bob", framing);
        let call_id = ring(&mut alice, &mut bob, false);
        drop(alice);
        bob.expect_end(&call_id);
    }
}

#[test]
fn duplicate_registration_replaces_the_old_connection() {
    // Without a resume window (PROTOCOL.md 8.3) the replaced connection's
    // call ends as on disconnect; tests/resume.rs has the call moving.
    let (relay, mut alice, mut bob, call_id) =
        relay_with_call(&["--resume-window", "0"], Seed, LengthPrefixed);
    let mut bob_again = relay.client("bob", LengthPrefixed);
    bob.expect_error("replaced");
    bob.expect_closed();
    alice.expect_end(&call_id);
    // The new connection is the one online.
    ring(&mut alice, &mut bob_again, false);
}

#[test]
fn ring_timeout_refuses_the_caller_and_ends_the_callee() {
    let (relay, mut alice, mut bob) =
        relay_with_pair(&["--ring-timeout", "0.3"], Seed, LengthPrefixed);
    let call_id = ring(&mut alice, &mut bob, true);
    assert_eq!(alice.expect_reject("timeout"), call_id);
    bob.expect_end(&call_id);
    relay.expect_log(&["ring_timeout"]);
}

#[test]
fn call_ids_are_distinct() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        alice.call("nobody", false);
        match alice.recv() {
            ServerMessage::CallReject { call_id, .. } => assert!(seen.insert(call_id)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
