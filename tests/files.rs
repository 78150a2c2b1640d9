//! TEXT and FILE against the real binary (PROTOCOL.md section 6): delivery
//! in both framings with `from` set by the server, to oneself, non-BMP
//! characters, offline recipients, byte-exact 8 MiB files, backpressure on
//! a file sender whose receiver does not read, and frames never
//! interleaving with a file being cut through.

mod common;

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::ClientMessage;
use common::{
    RelayProcess, SplitFile, encode_in, file_frame_bytes, file_message, pattern, q, relay_with_pair,
};

const BOTH: [Framing; 2] = [Seed, LengthPrefixed];

// TEXT reaches the named user in every framing combination, with `from`
// being the sender's registered id (the client message has no sender
// field; the server fills it in), and nobody else gets it.
#[test]
fn text_is_delivered_with_from_set_by_the_server() {
    for alice_framing in BOTH {
        for bob_framing in BOTH {
            let (relay, mut alice, mut bob) = relay_with_pair(&[], alice_framing, bob_framing);
            let mut carol = relay.client("carol", Seed);
            alice.text("bob", "hello bob");
            bob.expect_text("alice", "hello bob");
            bob.text("alice", "");
            alice.expect_text("bob", "");
            // A text that names another user is still from its sender.
            alice.text("bob", "from carol, honestly");
            bob.expect_text("alice", "from carol, honestly");
            carol.barrier();
            alice.barrier();
            bob.barrier();
        }
    }
}

// A TEXT to oneself is delivered like any other; user ids and text with
// characters outside the BMP (UTF-16 surrogate pairs on the wire, 4-byte
// UTF-8 in the registration) are matched and relayed exactly.
#[test]
fn text_to_oneself_and_non_bmp_characters() {
    let text = "emoji 😀🎉, clef 𝄞, 中文, e\u{301}";
    for framing in BOTH {
        let relay = RelayProcess::start(&[]);
        let mut smile = relay.client("😀smile", framing);
        let mut clef = relay.client("𝄞clef", framing);
        smile.text("😀smile", text);
        smile.expect_text("😀smile", text);
        smile.text("𝄞clef", text);
        clef.expect_text("😀smile", text);
        clef.text("😀smile", "🎉");
        smile.expect_text("𝄞clef", "🎉");
        smile.barrier();
        clef.barrier();
    }
}

// TEXT to an offline or unknown user is not delivered: a framed sender
// gets ERROR offline, a seed sender gets nothing (barrier). A user who has
// left counts as offline.
#[test]
fn text_to_an_offline_user() {
    let relay = RelayProcess::start(&[]);
    let mut framed = relay.client("framed", LengthPrefixed);
    let mut seed = relay.client("seed", Seed);
    framed.text("nobody", "hello?");
    framed.expect_error("offline");
    framed.barrier();
    seed.text("nobody", "hello?");
    seed.barrier();
    let gone = relay.client("gone", Seed);
    drop(gone);
    relay.expect_log(&["(gone) closed by peer"]);
    framed.text("gone", "still there?");
    framed.expect_error("offline");
    seed.text("gone", "still there?");
    seed.barrier();
    framed.barrier();
}

// An 8 MiB FILE is relayed byte-exact with its file name and `from`, in
// all four framing combinations (the receiver reads while the sender
// writes from another thread).
#[test]
fn an_8_mib_file_is_byte_exact_in_every_framing_combination() {
    let data = pattern(8 * 1024 * 1024);
    let name = "résumé 😀.bin";
    for alice_framing in BOTH {
        for bob_framing in BOTH {
            let (_relay, mut alice, mut bob) = relay_with_pair(&[], alice_framing, bob_framing);
            let writer = alice.send_in_background(file_message(alice_framing, "bob", name, &data));
            bob.expect_bytes(&file_frame_bytes(bob_framing, "alice", name, &data));
            writer.join().expect("sender thread");
            bob.barrier();
            alice.barrier();
        }
    }
}

// FILE to an offline user: a framed sender gets ERROR offline, a seed
// sender nothing; in both cases the data is skipped exactly (it is made of
// frames addressed to bob, which must not leak out as frames), so the
// sender can go on using its connection.
#[test]
fn file_to_an_offline_user_is_discarded_exactly() {
    for framing in BOTH {
        let (_relay, mut alice, mut bob) = relay_with_pair(&[], framing, LengthPrefixed);
        let mut data = Vec::new();
        while data.len() < 1024 * 1024 {
            data.extend(encode_in(
                &ClientMessage::Text {
                    to: q("bob"),
                    text: q("leaked out of a file body"),
                },
                framing,
            ));
        }
        alice.send_raw(&file_message(framing, "nobody", "lost.bin", &data));
        if framing == LengthPrefixed {
            alice.expect_error("offline");
        }
        alice.barrier();
        bob.barrier();
        alice.text("bob", "after the file");
        bob.expect_text("alice", "after the file");
    }
}

// Backpressure: while the receiver reads nothing, the relay pauses the
// file sender (logged "paused") instead of buffering the file; once the
// receiver reads, all 16 MiB arrive byte-exact (nothing dropped, and the
// receiver was never closed for output overflow, whose hard limit is 8 MiB).
#[test]
fn a_file_sender_is_paused_while_the_receiver_does_not_read() {
    let data = pattern(16 * 1024 * 1024);
    let (relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, LengthPrefixed);
    let writer = alice.send_in_background(file_message(LengthPrefixed, "bob", "big", &data));
    relay.expect_log(&["paused until"]);
    bob.expect_bytes(&file_frame_bytes(LengthPrefixed, "alice", "big", &data));
    writer.join().expect("sender thread");
    alice.barrier();
    bob.barrier();
}

// Frames never interleave: a TEXT from carol to bob, handled while alice's
// FILE to bob is half cut through, is held and arrives intact right after
// the complete file.
#[test]
fn a_text_during_a_file_arrives_after_the_whole_file() {
    let data = pattern(2 * 1024 * 1024);
    let name = "part.bin";
    for (alice_framing, bob_framing) in [(LengthPrefixed, Seed), (Seed, LengthPrefixed)] {
        let (relay, mut alice, mut bob) = relay_with_pair(&[], alice_framing, bob_framing);
        let mut carol = relay.client("carol", LengthPrefixed);
        // The header and the first data bytes; bob sees them cut through.
        let file = SplitFile::new(&alice, &bob, name, &data, 100_000);
        file.send_head(&mut alice, &mut bob);
        // carol's TEXT is handled now (carol's barrier follows it).
        carol.text("bob", "between?");
        carol.barrier();
        // The rest of the file, while bob reads.
        file.send_rest(&alice, &mut bob);
        bob.expect_text("carol", "between?");
        bob.barrier();
        alice.barrier();
    }
}
