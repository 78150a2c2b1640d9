//! Framing against the real binary (PROTOCOL.md section 3): input split
//! into single bytes, many frames coalesced into one write, HEARTBEAT with
//! and without the registration suffix in both framings, and the choice of
//! framing by the first three bytes.

mod common;

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::ClientMessage;
use common::{
    Client, RelayProcess, accept_ringing, expect_ended, media_frame_bytes, q, relay_with_call,
    seed_safe_payload,
};

const BOTH: [Framing; 2] = [Seed, LengthPrefixed];

/// The relay's answer to a length-prefixed heartbeat.
const FRAMED_HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 7];

/// Writes `message` one byte per write.
#[track_caller]
fn drip(client: &mut Client, message: &ClientMessage) {
    let bytes = client.encode(message);
    client.drip(&bytes);
}

/// Starts a relay with "bob" registered in `bob_framing`; then "alice",
/// in `alice_framing`, writes her registration, a TEXT to herself (which
/// she must get back) and a CALL_REQUEST to bob (with video or not), each
/// one byte per write. Returns once bob rings, with the call id.
#[track_caller]
fn dripped_call_request(
    alice_framing: Framing,
    bob_framing: Framing,
    video: bool,
) -> (RelayProcess, Client, Client, String) {
    let relay = RelayProcess::start(&[]);
    let mut bob = relay.client("bob", bob_framing);
    let mut alice = relay.connect(alice_framing);
    alice.user = "alice".to_owned();
    drip(
        &mut alice,
        &ClientMessage::Register {
            kind: 7,
            user: "alice".to_owned(),
        },
    );
    drip(&mut alice, &text("alice", "registered?"));
    alice.expect_text("alice", "registered?");
    drip(
        &mut alice,
        &ClientMessage::CallRequest {
            callee: q("bob"),
            video: u8::from(video),
        },
    );
    let call_id = bob.expect_incoming("alice", u8::from(video));
    (relay, alice, bob, call_id)
}

fn text(to: &str, text: &str) -> ClientMessage {
    ClientMessage::Text {
        to: q(to),
        text: q(text),
    }
}

fn media(payload: &[u8]) -> ClientMessage {
    ClientMessage::Media {
        payload: payload.to_vec(),
    }
}

fn heartbeat(suffix: Option<&str>) -> ClientMessage {
    ClientMessage::Heartbeat {
        suffix: suffix.map(str::to_owned),
    }
}

// A whole conversation written one byte per write by a seed client
// (registration, call, accept, text, heartbeats, media, end): every frame
// is parsed incrementally, the framing decision waits for three bytes,
// seed media is relayed as it arrives, a heartbeat's suffix decision waits
// for its two bytes, and in media mode a CALL_END arriving byte by byte is
// recognised (its prefix is not taken for media).
#[test]
fn a_seed_conversation_dripped_one_byte_at_a_time() {
    let (_relay, mut alice, mut bob, call_id) = dripped_call_request(Seed, LengthPrefixed, true);
    accept_ringing(&mut alice, &mut bob, "alice", &call_id);
    // Before any media, a TEXT is a TEXT; heartbeats go unanswered.
    drip(&mut alice, &text("bob", "hi bob 😀"));
    bob.expect_text("alice", "hi bob 😀");
    drip(&mut alice, &heartbeat(Some("alice")));
    drip(&mut alice, &heartbeat(None));
    let first = seed_safe_payload(40, 1);
    drip(&mut alice, &media(&first));
    bob.expect_media_chunks(&first);
    // Media mode: heartbeats are still heartbeats, then more media.
    drip(&mut alice, &heartbeat(None));
    drip(&mut alice, &heartbeat(Some("alice")));
    let second = seed_safe_payload(40, 2);
    drip(&mut alice, &media(&second));
    bob.expect_media_chunks(&second);
    drip(
        &mut alice,
        &ClientMessage::CallEnd {
            call_ref: q(&call_id),
        },
    );
    expect_ended(&mut alice, &mut bob, &call_id);
    alice.barrier();
    bob.barrier();
}

// The same for a length-prefixed client: the first three zero bytes
// arrive one by one, every frame (including a media frame's payload, cut
// through to the peer as it arrives) is reassembled, each heartbeat gets
// exactly one HEARTBEAT back, and a TEXT after media is a TEXT.
#[test]
fn a_framed_conversation_dripped_one_byte_at_a_time() {
    for bob_framing in BOTH {
        let (_relay, mut alice, mut bob, call_id) =
            dripped_call_request(LengthPrefixed, bob_framing, false);
        accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
        drip(&mut alice, &text("bob", "hi bob"));
        bob.expect_text("alice", "hi bob");
        let payload: Vec<u8> = (0..=255u8).collect();
        drip(&mut alice, &media(&payload));
        bob.expect_bytes(&media_frame_bytes(bob_framing, &payload));
        drip(&mut alice, &heartbeat(None));
        alice.expect_bytes(&FRAMED_HEARTBEAT);
        drip(&mut alice, &heartbeat(Some("alice")));
        alice.expect_bytes(&FRAMED_HEARTBEAT);
        drip(&mut alice, &text("bob", "still text"));
        bob.expect_text("alice", "still text");
        drip(&mut alice, &ClientMessage::CallEnd { call_ref: q("") });
        expect_ended(&mut alice, &mut bob, &call_id);
        alice.barrier();
        bob.barrier();
    }
}

// Twenty frames in one write (and the registration in that same write)
// are all handled, in order, in both framings.
#[test]
fn twenty_text_frames_coalesced_in_one_write() {
    for framing in BOTH {
        let relay = RelayProcess::start(&[]);
        let mut alice = relay.connect(framing);
        alice.user = "alice".to_owned();
        let mut burst = alice.encode(&ClientMessage::Register {
            kind: 7,
            user: "alice".to_owned(),
        });
        for k in 0..20 {
            burst.extend(alice.encode(&text("alice", &format!("text {k}"))));
        }
        alice.send_raw(&burst);
        for k in 0..20 {
            alice.expect_text("alice", &format!("text {k}"));
        }
        alice.barrier();
    }
}

// Twenty length-prefixed media frames in one write, interleaved with a
// heartbeat and a TEXT, are relayed as twenty separate frames, in order,
// to a framed and to a seed peer.
#[test]
fn twenty_framed_media_frames_coalesced_in_one_write() {
    for bob_framing in BOTH {
        let (_relay, mut alice, mut bob, call_id) =
            relay_with_call(&[], LengthPrefixed, bob_framing);
        let frames: Vec<Vec<u8>> = (0..20u8)
            .map(|k| (0..(k as usize * 11 + 1)).map(|i| (i as u8) ^ k).collect())
            .collect();
        let mut burst = Vec::new();
        for (k, payload) in frames.iter().enumerate() {
            burst.extend(alice.encode(&media(payload)));
            if k == 9 {
                burst.extend(alice.encode(&heartbeat(None)));
                burst.extend(alice.encode(&text("bob", "in the middle")));
            }
        }
        alice.send_raw(&burst);
        for (k, payload) in frames.iter().enumerate() {
            bob.expect_media_frame(payload);
            if k == 9 {
                bob.expect_text("alice", "in the middle");
            }
        }
        alice.expect_bytes(&FRAMED_HEARTBEAT);
        bob.barrier();
        alice.end(&call_id);
        expect_ended(&mut alice, &mut bob, &call_id);
    }
}

// A length-prefixed connection gets exactly `00 00 00 01 07` for each
// HEARTBEAT, with or without the registration suffix, one at a time or
// several in one write, and nothing more (barrier).
#[test]
fn framed_heartbeats_are_answered_one_for_one() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", LengthPrefixed);
    alice.send_heartbeat(false);
    alice.expect_bytes(&FRAMED_HEARTBEAT);
    alice.send_heartbeat(true);
    alice.expect_bytes(&FRAMED_HEARTBEAT);
    let mut burst = Vec::new();
    for suffix in [false, true, true, false] {
        burst.extend(alice.encode(&heartbeat(suffix.then_some("alice"))));
    }
    alice.send_raw(&burst);
    for _ in 0..4 {
        alice.expect_bytes(&FRAMED_HEARTBEAT);
    }
    alice.barrier();
}

// A seed connection's heartbeats (bare `7`, or `7` + the registration
// suffix), alone or followed in the same write by other frames, are
// accepted and never answered.
#[test]
fn seed_heartbeats_are_accepted_and_not_answered() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", Seed);
    alice.send_heartbeat(false);
    alice.barrier();
    alice.send_heartbeat(true);
    alice.barrier();
    let mut burst = Vec::new();
    for suffix in [false, true, false, false, true] {
        burst.extend(alice.encode(&heartbeat(suffix.then_some("alice"))));
        burst.extend(alice.encode(&text("alice", "after a heartbeat")));
    }
    alice.send_raw(&burst);
    for _ in 0..5 {
        alice.expect_text("alice", "after a heartbeat");
    }
    alice.barrier();
}

// A heartbeat whose two bytes announce the registered id's length must
// repeat exactly that id: another id of the same length is malformed
// (ERROR, close), in both framings.
#[test]
fn a_heartbeat_suffix_naming_another_id_is_malformed() {
    for framing in BOTH {
        let relay = RelayProcess::start(&[]);
        let mut alice = relay.client("alice", framing);
        let mut bob = relay.client("bobby", LengthPrefixed);
        alice.send(&heartbeat(Some("bobby")));
        alice.expect_error("malformed");
        alice.expect_closed();
        bob.barrier();
    }
}

/// A raw registration: `kind`, `quint16` length, UTF-8 id.
fn seed_registration(kind: u8, user: &str) -> Vec<u8> {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(&(user.len() as u16).to_be_bytes());
    bytes.extend_from_slice(user.as_bytes());
    bytes
}

// The framing is chosen by the first three bytes: `00 00 00` means
// length-prefixed (the connection's heartbeats are answered and replies
// carry a length prefix), anything else is seed, including a seed
// registration with kind 0 (`00 00 05 ...`).
#[test]
fn framing_is_chosen_by_the_first_three_bytes() {
    let relay = RelayProcess::start(&[]);
    // Length-prefixed, registration kind 0 and kind 7, and the three zero
    // bytes written separately.
    for (user, kind, split) in [("framed0", 0u8, false), ("framed7", 7, true)] {
        let mut client = relay.connect(LengthPrefixed);
        client.user = user.to_owned();
        let body = seed_registration(kind, user);
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        assert_eq!(&bytes[..3], [0, 0, 0]);
        bytes.extend_from_slice(&body);
        if split {
            client.drip(&bytes[..3]);
            client.send_raw(&bytes[3..]);
        } else {
            client.send_raw(&bytes);
        }
        client.send_raw(&[0, 0, 0, 1, 7]);
        client.expect_bytes(&FRAMED_HEARTBEAT);
        client.barrier();
    }
    // Seed, registration kind 0: the first three bytes are 00 00 05.
    let mut seed = relay.connect(Seed);
    seed.user = "seed0".to_owned();
    let registration = seed_registration(0, "seed0");
    assert_eq!(&registration[..3], [0, 0, 5]);
    seed.send_raw(&registration);
    seed.send_raw(&[7]);
    seed.barrier();
    // Seed, kind 7 (as the guide writes it), with a one-byte id.
    let mut short = relay.connect(Seed);
    short.user = "s".to_owned();
    short.send_raw(&seed_registration(7, "s"));
    short.barrier();
    // Each gets the other's TEXT in its own framing.
    seed.text("s", "seed to seed");
    short.expect_text("seed0", "seed to seed");
    let mut framed = relay.client("framed", LengthPrefixed);
    framed.text("seed0", "framed to seed");
    seed.expect_text("framed", "framed to seed");
    framed.barrier();
    seed.barrier();
    short.barrier();
}
