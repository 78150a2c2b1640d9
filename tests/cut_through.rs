//! Cut-through frames against the real binary (docs/protocol.md sections 4,
//! 6 and 7): regression tests for the review of how long frames (FILE data,
//! long length-prefixed media) are forwarded as they arrive while other
//! frames for the same receiver are held behind them.
//!
//! * Held TEXT past the soft limit pauses the TEXT's sender instead of
//!   deadlocking the FILE it waits behind (backpressure on the FILE sender
//!   looks only at what the receiver's socket has not taken).
//! * The same with whole media frames of a call held behind a FILE.
//! * A FILE to oneself: server-built frames (a TEXT from someone else) are
//!   held behind it too.
//! * A receiver closed in the middle of a frame (replaced) gets no ERROR
//!   inside that frame.
//! * Stall bound: a sender trickling a long frame while other frames wait
//!   behind it is closed with ERROR `timeout` after `--stall-timeout`, and
//!   its frame is completed with zeros as the receiver drains.
//!
//! All receivers and senders here are length-prefixed, so every frame
//! boundary is checkable. Synchronisation is by expected bytes, log lines
//! (`... paused until ... drains`) and barriers, never by sleeping.

mod common;

use std::time::{Duration, Instant};

use callrelay::protocol::Framing::LengthPrefixed;
use callrelay::protocol::frame::{ClientMessage, DecodeError, ServerMessage, decode_server};
use callrelay::protocol::qdatastream::{put_str, put_u32};
use common::{
    Client, RelayProcess, SplitFile, WAIT, accepted_call, encode_in, file_frame_bytes,
    file_message, pattern, q, relay_with_pair,
};

/// 1 MiB: the FILE the held frames wait behind.
const MIB: usize = 1024 * 1024;
/// The relay's default soft output limit (256 KiB).
const SOFT: usize = 256 * 1024;
/// File data bytes sent (and seen by the receiver) before the rest.
const FIRST_DATA: usize = 1000;

// ----- helpers ---------------------------------------------------------------

/// The length-prefixed header of a FILE declaring `data_len` bytes of data:
/// `quint32 frame length`, `1`, `QString party`, `QString name`,
/// `quint32 data_len`. Client and server headers have the same layout
/// (`party` is the addressee, or the sender the relay fills in).
fn file_header(party: &str, name: &str, data_len: u32) -> Vec<u8> {
    let mut body = vec![1u8];
    put_str(&mut body, party);
    put_str(&mut body, name);
    put_u32(&mut body, data_len);
    let frame_len = u32::try_from(body.len()).expect("small header") + data_len;
    let mut out = frame_len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A TEXT of 30 000 UTF-16 code units (60 000 wire bytes, under the
/// default 64 KiB `--max-text`), different for each `k`.
fn held_text(k: usize) -> String {
    (0..30_000)
        .map(|at| char::from(b'A' + ((at * 7 + k * 11 + at / 26) % 26) as u8))
        .collect()
}

/// A media payload of `len` bytes numbered `seq`: the number, then bytes
/// that depend on it, so a frame that is partial, merged, padded or out of
/// place is detected.
fn numbered_payload(seq: u32, len: usize) -> Vec<u8> {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.extend((4..len).map(|at| (at * 7 + seq as usize * 31 + at / 251) as u8));
    payload
}

/// The relay's connection id (`cN.G`) for `client`.
#[track_caller]
fn conn_id(relay: &RelayProcess, client: &Client) -> String {
    relay.conn_id_of(client.local_addr())
}

/// Waits until the relay logs that `sender` is paused until `dest` drains.
#[track_caller]
fn expect_paused(relay: &RelayProcess, sender: &Client, dest: &Client) {
    let line = format!(
        "{} paused until {} drains",
        conn_id(relay, sender),
        conn_id(relay, dest)
    );
    relay.expect_log(&[&line]);
}

// ----- 1. held text past the soft limit ----------------------------------------

// alice's 1 MiB FILE to bob is in progress (bob has its header and first
// 1000 data bytes) when carol sends bob five 60 000-byte TEXTs: they are
// held behind the FILE, and with the fifth the held bytes pass the 256 KiB
// soft limit, so carol is paused until bob drains. alice's FILE must not
// be paused by those held bytes (her backpressure looks only at what bob's
// socket has not taken): the rest of it goes through, byte-exact, then the
// five TEXTs follow intact and in order. Nobody is closed: before the fix
// the held text stopped the FILE (deadlock until alice was closed as idle
// or as a stalled sender, and bob got a zero-padded file).
#[test]
fn held_text_past_the_soft_limit_does_not_deadlock_the_file() {
    let (relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, LengthPrefixed);
    let mut carol = relay.client("carol", LengthPrefixed);
    let file = SplitFile::new(&alice, &bob, "big.bin", &pattern(MIB), FIRST_DATA);
    file.send_head(&mut alice, &mut bob);

    let texts: Vec<String> = (0..5).map(held_text).collect();
    let held: usize = texts
        .iter()
        .map(|text| 4 + 1 + 4 + 10 + 4 + 2 * text.len())
        .sum();
    assert!(held > SOFT, "the held TEXTs must pass the soft limit");
    for text in &texts {
        carol.text("bob", text);
    }
    // All five are handled and held: the fifth paused carol.
    expect_paused(&relay, &carol, &bob);

    file.send_rest(&alice, &mut bob);
    for text in &texts {
        bob.expect_text("carol", text);
    }
    carol.barrier();
    alice.barrier();
    bob.barrier();
}

// ----- 2. held media behind a FILE ------------------------------------------

// bob is in an accepted call with dave when alice's 1 MiB FILE to bob is
// mid-body; dave then sends twenty complete 20 000-byte media frames. They
// are held behind the FILE as whole frames: the first 13 (13 x 20 005
// bytes on bob's side) stay under the 256 KiB soft limit, the 14th passes
// it, which pauses dave; the last 6 may then be dropped whole. The FILE
// must still complete byte-exact (before the fix the held media stopped
// it: deadlock, then a zero-padded file), and the media bob receives after
// it are whole, correct frames in order, the 14 held ones at least (held
// frames are never dropped; bob had taken everything before, so nothing
// else counted against his limit). The call still works: dave's CALL_END
// reaches both parties.
//
// Each of the first 13 frames is followed by a barrier of dave's, so that
// it reaches the relay whole and is held (one write of many frames would
// be read in 64 KiB pieces, and a frame cut by a read is not held but
// waits, pausing dave before the held frames reach the soft limit).
#[test]
fn held_media_past_the_soft_limit_does_not_deadlock_the_file() {
    const FRAMES: u32 = 20;
    const PAYLOAD: usize = 20_000;
    /// Frames held before the one that passes the soft limit.
    const UNDER_SOFT: u32 = 13;
    assert!(UNDER_SOFT as usize * (PAYLOAD + 5) < SOFT);
    assert!((UNDER_SOFT + 1) as usize * (PAYLOAD + 5) >= SOFT);
    let (relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, LengthPrefixed);
    let mut dave = relay.client("dave", LengthPrefixed);
    let call_id = accepted_call(&mut dave, &mut bob);
    let file = SplitFile::new(&alice, &bob, "during-call.bin", &pattern(MIB), FIRST_DATA);
    file.send_head(&mut alice, &mut bob);

    let media = |seq: u32| {
        encode_in(
            &ClientMessage::Media {
                payload: numbered_payload(seq, PAYLOAD),
            },
            LengthPrefixed,
        )
    };
    for seq in 0..UNDER_SOFT {
        dave.send_raw(&media(seq));
        dave.barrier();
    }
    // The 14th passes the soft limit: dave waits for bob.
    dave.send_raw(&media(UNDER_SOFT));
    expect_paused(&relay, &dave, &bob);
    // The rest from another thread: the relay does not read them now.
    let rest: Vec<u8> = (UNDER_SOFT + 1..FRAMES).flat_map(media).collect();
    let dave_writer = dave.send_in_background(rest);

    file.send_rest(&alice, &mut bob);
    dave_writer.join().expect("dave's sender thread");

    dave.end("");
    let mut received = Vec::new();
    loop {
        match bob.recv() {
            ServerMessage::Media { payload } => {
                assert_eq!(payload.len(), PAYLOAD, "a media frame of the wrong size");
                let seq = u32::from_be_bytes(payload[..4].try_into().expect("four bytes"));
                assert!(
                    seq < FRAMES && payload == numbered_payload(seq, PAYLOAD),
                    "media frame {seq} arrived corrupted"
                );
                assert!(
                    received.last().is_none_or(|last| *last < seq),
                    "media frame {seq} out of order after {received:?}"
                );
                received.push(seq);
            }
            ServerMessage::CallEnd { call_id: ended } => {
                assert_eq!(ended, call_id);
                break;
            }
            other => panic!("expected media or CALL_END, got {other:?}"),
        }
    }
    assert!(
        received.len() > UNDER_SOFT as usize
            && received[..=UNDER_SOFT as usize] == (0..=UNDER_SOFT).collect::<Vec<_>>(),
        "held media frames are missing: bob got {received:?}"
    );
    dave.expect_end(&call_id);
    alice.barrier();
    bob.barrier();
    dave.barrier();
}

// ----- 3. FILE to oneself -----------------------------------------------------

// bob sends himself a 64 KiB FILE: the header and half the data, then
// (once bob has read the header the relay forwarded) carol sends bob a
// TEXT, then bob sends the rest. The TEXT, a frame the relay builds, must be
// held behind bob's own FILE: bob receives the complete FILE, then carol's
// TEXT, and the stream parses frame by frame (before the fix the TEXT was
// written into the middle of the file data).
#[test]
fn a_text_during_a_file_to_oneself_waits_for_the_whole_file() {
    let relay = RelayProcess::start(&[]);
    let mut bob = relay.client("bob", LengthPrefixed);
    let mut carol = relay.client("carol", LengthPrefixed);
    let data = pattern(64 * 1024);
    let half = data.len() / 2;
    let name = "note-to-self.bin";
    let sent = file_message(LengthPrefixed, "bob", name, &data);
    let expected = file_frame_bytes(LengthPrefixed, "bob", name, &data);
    let (sent_header, expected_header) = (sent.len() - data.len(), expected.len() - data.len());

    bob.send_raw(&sent[..sent_header + half]);
    let mut stream = bob.read_exact_bytes(expected_header);
    assert_eq!(stream, expected[..expected_header], "the FILE header");

    carol.text("bob", "while you were talking to yourself");
    // carol's TEXT to bob has been handled (held) once her barrier passes.
    carol.barrier();

    bob.send_raw(&sent[sent_header + half..]);
    stream.extend(bob.read_exact_bytes(expected.len() - expected_header));
    let (message, used) = match decode_server(&stream, LengthPrefixed) {
        Ok(decoded) => decoded,
        Err(DecodeError::NeedMore | DecodeError::Malformed) => {
            panic!("the FILE bob received does not parse")
        }
    };
    assert_eq!(used, stream.len(), "the FILE frame's length");
    let ServerMessage::File {
        from,
        name: got_name,
        data: got_data,
    } = message
    else {
        panic!("expected the FILE, got {message:?}");
    };
    assert_eq!((from, got_name), (q("bob"), q(name)));
    if let Some(at) = got_data.iter().zip(&data).position(|(a, b)| a != b) {
        panic!(
            "the FILE's data differs at byte {at} of {}: {:02x?}",
            data.len(),
            &got_data[at..(at + 32).min(got_data.len())]
        );
    }
    assert_eq!(got_data.len(), data.len(), "the FILE's data length");
    bob.expect_text("carol", "while you were talking to yourself");
    bob.barrier();
    carol.barrier();
}

// ----- 4. no ERROR inside an unfinished frame --------------------------------

// alice's 1 MiB FILE to bob is mid-body (bob has the header and 1000 data
// bytes) when a new connection registers as "bob". The old bob is closed
// as replaced, but an ERROR written now would land inside alice's
// unfinished frame, so he gets no ERROR: exactly the header and the 1000
// bytes, then EOF. docs/protocol.md section 4 states this decision
// ("Decision: closing a receiver mid-frame"). alice's rest is discarded;
// the new bob and alice go on working.
#[test]
fn a_receiver_replaced_mid_frame_gets_no_error_inside_the_frame() {
    let (relay, mut alice, mut old_bob) = relay_with_pair(&[], LengthPrefixed, LengthPrefixed);
    let file = SplitFile::new(
        &alice,
        &old_bob,
        "interrupted.bin",
        &pattern(MIB),
        FIRST_DATA,
    );
    file.send_head(&mut alice, &mut old_bob);

    let mut new_bob = relay.client("bob", LengthPrefixed);
    // Everything up to EOF: nothing (no ERROR `replaced`) after the
    // partial frame.
    old_bob.expect_closed();
    relay.expect_log(&[&conn_id(&relay, &old_bob), "closed: replaced"]);

    let writer = file.send_rest_in_background(&alice);
    writer.join().expect("alice's sender thread");
    // The rest was discarded; alice is told her FILE was cut short
    // (PROTOCOL.md 8.4).
    alice.expect_error("offline");
    alice.barrier();
    new_bob.barrier();
    alice.text("bob", "are you the new bob?");
    new_bob.expect_text("alice", "are you the new bob?");
    new_bob.barrier();
}

// ----- 5. stall bound ----------------------------------------------------------

/// mallory declares a 64 MiB FILE to bob and trickles one byte every
/// 100 ms while carol's TEXT to bob waits behind it. After `stall`,
/// mallory is closed with ERROR `timeout` (within `stall` + a margin, and
/// not before `stall`), and the relay logs "stalled"; bob receives the
/// FILE header, the trickled bytes that reached the relay before the
/// close, zeros up to the declared 64 MiB, then carol's TEXT, and is still
/// registered and was never closed.
fn trickled_file_sender_is_closed_after_the_stall_timeout(args: &[&str], stall: Duration) {
    const DECLARED: u32 = 64 * 1024 * 1024;
    let trickle_limit = stall + Duration::from_millis(2500);
    let relay = RelayProcess::start(args);
    let mut mallory = relay.client("mallory", LengthPrefixed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let mut carol = relay.client("carol", LengthPrefixed);
    let (mallory_id, bob_id) = (conn_id(&relay, &mallory), conn_id(&relay, &bob));
    let name = "endless.bin";

    mallory.send_raw(&file_header("bob", name, DECLARED));
    bob.expect_bytes(&file_header("mallory", name, DECLARED));

    let before_text = Instant::now();
    carol.text("bob", "can you hear me?");
    carol.barrier();

    // Nonzero bytes, so that bob can tell them from the padding.
    let trickle: Vec<u8> = (0..)
        .map(|at: u32| 0x80 | (at % 0x7f) as u8)
        .take(100)
        .collect();
    let mut trickled = 0;
    let error = loop {
        assert!(
            before_text.elapsed() < trickle_limit,
            "mallory was not closed within {trickle_limit:?} of frames waiting behind her FILE"
        );
        mallory.send_raw(&trickle[trickled..=trickled]);
        trickled += 1;
        // Paces the trickle: 100 ms unless the relay answers first.
        if let Some(message) = mallory.recv_before(Instant::now() + Duration::from_millis(100)) {
            break message;
        }
    };
    let closed_after = before_text.elapsed();
    match error {
        ServerMessage::Error { code, .. } => assert_eq!(code, "timeout"),
        other => panic!("expected ERROR timeout for mallory, got {other:?}"),
    }
    assert!(
        closed_after >= stall,
        "mallory was closed after {closed_after:?}, before the stall timeout {stall:?}"
    );
    mallory.expect_closed();
    relay.expect_log(&[&format!("{mallory_id}: "), "stalled"]);

    // The trickled bytes that made it (a prefix of what was sent), then
    // zeros to the declared length.
    let mut at = 0u64;
    let mut forwarded = 0usize;
    bob.stream_bytes(u64::from(DECLARED), WAIT, |piece| {
        let mut piece = piece;
        if forwarded as u64 == at {
            let nonzero = piece.iter().take_while(|byte| **byte != 0).count();
            assert!(
                forwarded + nonzero <= trickled
                    && piece[..nonzero] == trickle[forwarded..forwarded + nonzero],
                "bob's FILE data at {at}: {:02x?} is not what mallory trickled",
                &piece[..nonzero.min(16)]
            );
            forwarded += nonzero;
            at += nonzero as u64;
            piece = &piece[nonzero..];
        }
        if let Some(offset) = piece.iter().position(|byte| *byte != 0) {
            panic!(
                "padding byte {} of bob's FILE data is {:#04x}, not zero",
                at + offset as u64,
                piece[offset]
            );
        }
        at += piece.len() as u64;
    });
    assert!(
        forwarded >= 1,
        "none of mallory's {trickled} trickled bytes reached bob"
    );
    bob.expect_text("carol", "can you hear me?");
    bob.barrier();
    carol.barrier();
    let bob_closed = format!("{bob_id} (bob) closed");
    assert!(!relay.log_contains(&bob_closed), "bob was closed");
}

// The stall bound with `--stall-timeout 0.5`, as the review asked.
#[test]
fn trickled_file_sender_is_closed_after_a_half_second_stall_timeout() {
    trickled_file_sender_is_closed_after_the_stall_timeout(
        &["--stall-timeout", "0.5"],
        Duration::from_millis(500),
    );
}

// ----- 6. a pause is only for the connection whose input held frames ------------

// alice's FILE to bob is open and carol's texts held behind it have paused
// carol. Then eve, bob's call partner, disconnects: the relay's CALL_END to
// bob is held too, outside any client's input. That must not pause the next
// connection whose input is handled (dave, who only sends a heartbeat).
// Before the fix, dave was paused until alice's frame ended.
#[test]
fn a_frame_held_outside_any_input_pauses_nobody() {
    let (relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, LengthPrefixed);
    let mut carol = relay.client("carol", LengthPrefixed);
    let mut dave = relay.client("dave", LengthPrefixed);
    let mut eve = relay.client("eve", LengthPrefixed);
    accepted_call(&mut eve, &mut bob);
    let declared = 10_000_000u32;
    let mut start = file_header("bob", "f", declared);
    start.extend_from_slice(&[b'x'; 10]);
    alice.send_raw(&start);
    let mut expected = file_header("alice", "f", declared);
    expected.extend_from_slice(&[b'x'; 10]);
    bob.expect_bytes(&expected);
    for k in 0..5 {
        carol.text("bob", &held_text(k));
    }
    expect_paused(&relay, &carol, &bob);
    let eve_id = conn_id(&relay, &eve);
    drop(eve);
    relay.expect_log(&[&format!("{eve_id} (eve) closed by peer")]);
    dave.send_heartbeat(false);
    dave.expect_bytes(&[0, 0, 0, 1, 7]);
    dave.barrier();
}
