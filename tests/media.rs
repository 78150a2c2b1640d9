//! MEDIA_DATA against the real binary (PROTOCOL.md section 4): byte-exact
//! relaying in every framing combination and both directions, a 4 MiB
//! length-prefixed frame, seed media delimited by arrival, media outside an
//! accepted call, the seed continuation rule ("media mode"), the grace
//! period after a call ends, and a burst of 1000 framed frames.
//!
//! Ordering across connections: after bytes written on one connection, a
//! [`Client::barrier`] on another connection returns only after the relay
//! has read those bytes. The writes reach the relay's socket before the
//! barrier's TEXT is even sent, and the single-threaded loop services every
//! readable connection of a poll turn before it flushes the barrier's reply.
//! A seed sender cannot use its own barrier for this: while it is in media
//! mode (or right after `6` outside a call) its TEXT would be read as media.

mod common;

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::{ClientMessage, ServerMessage};
use callrelay::protocol::qdatastream::QString;
use common::{
    Client, RelayProcess, accept_ringing, accepted_call, encode_in, expect_ended,
    media_frame_bytes, pattern, q, relay_with_call, relay_with_pair, ring, seed_safe_payload,
};

const BOTH: [Framing; 2] = [Seed, LengthPrefixed];

/// Sends `payload` as one media frame from `sender` and checks that
/// `receiver` gets exactly that: a length-prefixed sender's frame arrives
/// as exactly one frame; a seed sender's media is delimited by arrival, so
/// it may come in pieces (each `6` + bytes), but byte-exact and complete.
#[track_caller]
fn relay_media(sender: &mut Client, receiver: &mut Client, payload: &[u8]) {
    sender.media(payload);
    match sender.framing {
        LengthPrefixed => receiver.expect_media_frame(payload),
        Seed => receiver.expect_media_chunks(payload),
    }
}

/// Payloads of several sizes; sizes near the 64 KiB read buffer make the
/// relay cut seed media into pieces.
fn payloads(sender: Framing, salt: usize) -> Vec<Vec<u8>> {
    [1, 2, 100, 1000, 10_000, 60_000, 3]
        .iter()
        .enumerate()
        .map(|(k, &len)| match sender {
            // Only bytes a seed sender can send without them being read as
            // a new frame when the relay happens to read a piece on its own.
            Seed => seed_safe_payload(len, salt + k),
            LengthPrefixed => pattern(len + salt + k)[salt + k..].to_vec(),
        })
        .collect()
}

// Media is byte-exact both ways, for seed->seed, seed->framed,
// framed->seed and framed->framed. A seed sender waits until its frame has
// arrived before sending the next (otherwise the relay could not tell the
// frames apart); a framed sender writes all its frames back to back.
#[test]
fn media_is_byte_exact_both_ways_in_all_four_framing_combinations() {
    for alice_framing in BOTH {
        for bob_framing in BOTH {
            let (_relay, mut alice, mut bob, call_id) =
                relay_with_call(&[], alice_framing, bob_framing);
            for (sender_is_alice, salt) in [(true, 0), (false, 50)] {
                let (sender, receiver) = if sender_is_alice {
                    (&mut alice, &mut bob)
                } else {
                    (&mut bob, &mut alice)
                };
                let frames = payloads(sender.framing, salt);
                match sender.framing {
                    Seed => {
                        for payload in &frames {
                            relay_media(sender, receiver, payload);
                        }
                    }
                    LengthPrefixed => {
                        sender.send_media_burst(&frames);
                        for payload in &frames {
                            receiver.expect_media_frame(payload);
                        }
                    }
                }
            }
            // Nothing else arrived, and the call is intact.
            bob.end(&call_id);
            expect_ended(&mut alice, &mut bob, &call_id);
            bob.barrier();
        }
    }
}

// A 4 MiB length-prefixed media payload (the limit, inclusive) is relayed
// byte-exact, cut through, to a framed receiver (as one frame) and to a seed
// receiver (as `6` + the 4 MiB).
#[test]
fn four_mib_framed_media_frame_is_byte_exact() {
    let payload = pattern(4 * 1024 * 1024);
    for bob_framing in [LengthPrefixed, Seed] {
        let (_relay, mut alice, mut bob, call_id) =
            relay_with_call(&[], LengthPrefixed, bob_framing);
        let writer = alice.send_in_background(encode_in(
            &ClientMessage::Media {
                payload: payload.clone(),
            },
            LengthPrefixed,
        ));
        bob.expect_bytes(&media_frame_bytes(bob_framing, &payload));
        writer.join().expect("sender thread");
        // Both connections are still fine and nothing followed.
        alice.barrier();
        bob.barrier();
        alice.end("");
        expect_ended(&mut alice, &mut bob, &call_id);
    }
}

// Seed media is delimited by arrival: a seed client sending small frames
// with pauses (frame k+1 only after the receiver has frame k) gets each
// frame through byte-exact, and a new `6` after a pause starts a new frame
// (it is not relayed as payload).
#[test]
fn seed_sender_with_pauses_between_frames() {
    for bob_framing in BOTH {
        let (_relay, mut alice, mut bob, call_id) = relay_with_call(&[], Seed, bob_framing);
        for k in 0..20 {
            let payload = seed_safe_payload(1 + k * 37, k);
            relay_media(&mut alice, &mut bob, &payload);
        }
        bob.barrier();
        alice.end(&call_id);
        expect_ended(&mut alice, &mut bob, &call_id);
    }
}

// MEDIA_DATA outside an accepted call (no call; a ringing call) is dropped:
// the would-be receiver gets nothing (barrier), nobody else either, and the
// sender's connection keeps working. Once the call is accepted the same
// sender's media does arrive, so the barriers could have seen it.
#[test]
fn media_outside_an_accepted_call_is_not_delivered() {
    for alice_framing in BOTH {
        for bob_framing in BOTH {
            let (relay, mut alice, mut bob) = relay_with_pair(&[], alice_framing, bob_framing);
            let mut carol = relay.client("carol", LengthPrefixed);
            // No call at all.
            alice.media(&seed_safe_payload(500, 1));
            bob.barrier(); // orders alice's media before it (module doc)
            carol.barrier();
            alice.barrier();
            // Ringing, not accepted.
            let call_id = ring(&mut alice, &mut bob, true);
            alice.media(&seed_safe_payload(500, 2));
            bob.barrier();
            carol.barrier();
            alice.barrier();
            bob.media(&seed_safe_payload(500, 3));
            alice.barrier();
            bob.barrier();
            // Accepted: now media flows, and still only to the peer.
            accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
            let payload = seed_safe_payload(300, 4);
            relay_media(&mut alice, &mut bob, &payload);
            carol.barrier();
            bob.barrier();
        }
    }
}

/// The seed wire bytes of a CALL_END naming `call_ref`.
fn seed_call_end(call_ref: &QString) -> Vec<u8> {
    encode_in(
        &ClientMessage::CallEnd {
            call_ref: call_ref.clone(),
        },
        Seed,
    )
}

// Seed continuation rule: once a seed client has sent media in an accepted
// call, bytes at a frame boundary that begin with anything but 6, 7 or a
// CALL_END of this call are media continuation: a well-formed TEXT (also
// after a heartbeat) and a CALL_END naming another call reach the peer as
// `6` + those exact bytes, never as a TEXT or an end, and the TEXT's
// addressee gets nothing.
#[test]
fn seed_media_mode_relays_other_frames_as_media() {
    for bob_framing in BOTH {
        let (relay, mut alice, mut bob) = relay_with_pair(&[], Seed, bob_framing);
        let mut carol = relay.client("carol", LengthPrefixed);
        let call_id = accepted_call(&mut alice, &mut bob);
        relay_media(&mut alice, &mut bob, &seed_safe_payload(64, 0));

        let text_to_carol = encode_in(
            &ClientMessage::Text {
                to: q("carol"),
                text: q("looks like a TEXT"),
            },
            Seed,
        );
        alice.send_raw(&text_to_carol);
        bob.expect_media_frame(&text_to_carol);
        carol.barrier();

        let text_to_bob = encode_in(
            &ClientMessage::Text {
                to: q("bob"),
                text: q("hi"),
            },
            Seed,
        );
        alice.send_raw(&text_to_bob);
        bob.expect_media_frame(&text_to_bob);

        // After a heartbeat, too: the `7` is not relayed, the TEXT is media.
        alice.send_heartbeat(false);
        alice.send_raw(&text_to_bob);
        bob.expect_media_frame(&text_to_bob);
        alice.send_heartbeat(true);
        alice.send_raw(&text_to_bob);
        bob.expect_media_frame(&text_to_bob);

        // A CALL_END naming no ref of this call is media too.
        for other in ["carol", "alice", "00000000-0000-0000-0000-000000000000"] {
            let end_other = seed_call_end(&q(other));
            alice.send_raw(&end_other);
            bob.expect_media_frame(&end_other);
        }

        // The call is intact: media still flows, and nothing else arrived.
        relay_media(&mut alice, &mut bob, &seed_safe_payload(10, 9));
        bob.barrier();
        carol.barrier();
        bob.end(&call_id);
        expect_ended(&mut alice, &mut bob, &call_id);
    }
}

// Seed continuation rule, the way out: in media mode a seed client's
// CALL_END naming the call id, the peer's user id, the empty string or the
// null string ends the call (both parties get CALL_END), also when it
// arrives in two pieces (a strict prefix waits for the rest).
#[test]
fn seed_media_mode_call_end_with_a_ref_of_this_call_ends_it() {
    for bob_framing in BOTH {
        let (_relay, mut alice, mut bob) = relay_with_pair(&[], Seed, bob_framing);
        for (round, how) in ["call id", "peer id", "empty", "null", "split call id"]
            .into_iter()
            .enumerate()
        {
            let call_id = accepted_call(&mut alice, &mut bob);
            relay_media(&mut alice, &mut bob, &seed_safe_payload(200, round));
            let call_ref = match how {
                "call id" | "split call id" => q(&call_id),
                "peer id" => q("bob"),
                "empty" => q(""),
                _ => QString::null(),
            };
            let end = seed_call_end(&call_ref);
            if how == "split call id" {
                alice.send_raw(&end[..7]);
                bob.barrier(); // the relay has read the prefix (module doc)
                alice.send_raw(&end[7..]);
            } else {
                alice.send_raw(&end);
            }
            expect_ended(&mut alice, &mut bob, &call_id);
            bob.barrier();
        }
    }
}

/// Sets up alice (seed, in media mode) and bob (framed) in a call, ends it
/// from bob's side, and returns both once alice has seen the CALL_END.
fn call_ended_after_seed_media(relay: &RelayProcess) -> (Client, Client) {
    let mut alice = relay.client("alice", Seed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut bob);
    relay_media(&mut alice, &mut bob, &seed_safe_payload(100, 0));
    bob.end(&call_id);
    expect_ended(&mut bob, &mut alice, &call_id);
    (alice, bob)
}

// Grace period (default 1 s): right after its call ended, a seed client's
// stale media in flight (`6` + bytes) and bytes that are not a well-formed
// frame are dropped silently: no ERROR, no close, nothing to the old peer,
// and later frames work.
#[test]
fn stale_seed_media_within_the_grace_period_is_dropped_silently() {
    let relay = RelayProcess::start(&[]);
    let (mut alice, mut bob) = call_ended_after_seed_media(&relay);
    alice.media(&seed_safe_payload(3000, 1));
    bob.barrier(); // the relay has read the stale media (module doc)
    // A continuation piece that is no frame at all (0x99 is no type).
    alice.send_raw(&[0x99, 0x42, 0x43, 0x44]);
    bob.barrier();
    alice.barrier();
    bob.barrier();
}

// With `--media-grace 0` nothing is stale: after the call, a seed client's
// `6` + bytes is ordinary media outside a call (dropped, no error, the
// connection keeps working), while bytes that are no frame are a protocol
// error (ERROR unknown_type, then close), unlike within a grace period.
#[test]
fn without_a_grace_period_seed_bytes_after_a_call_are_parsed_normally() {
    let relay = RelayProcess::start(&["--media-grace", "0"]);
    let (mut alice, mut bob) = call_ended_after_seed_media(&relay);
    alice.media(&seed_safe_payload(3000, 1));
    bob.barrier();
    alice.barrier();
    alice.send_raw(&[0x99, 0x42, 0x43, 0x44]);
    alice.expect_error("unknown_type");
    alice.expect_closed();
    bob.barrier();
}

// 1000 small length-prefixed media frames written in one burst reach the
// framed peer complete, in order, each as its own frame (none dropped: the
// burst stays far below the soft output limit).
#[test]
fn a_burst_of_1000_framed_media_frames_arrives_complete_and_in_order() {
    let (_relay, mut alice, mut bob, call_id) =
        relay_with_call(&[], LengthPrefixed, LengthPrefixed);
    let frames: Vec<Vec<u8>> = (0..1000u32)
        .map(|k| {
            let mut payload = k.to_be_bytes().to_vec();
            payload.extend(pattern(8 + (k as usize * 13) % 60));
            payload
        })
        .collect();
    alice.send_media_burst(&frames);
    for (k, payload) in frames.iter().enumerate() {
        match bob.recv() {
            ServerMessage::Media { payload: got } => {
                assert_eq!(&got, payload, "frame {k} differs")
            }
            other => panic!("frame {k}: expected media, got {other:?}"),
        }
    }
    bob.barrier();
    alice.end(&call_id);
    expect_ended(&mut alice, &mut bob, &call_id);
}
