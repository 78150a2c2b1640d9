//! Slow, stalled and vanishing peers against the real binary (PROTOCOL.md
//! sections 4 and 7): a media receiver that never reads (framed and seed)
//! has whole frames dropped above the soft output limit while the relay's
//! memory stays bounded and the sender is unaffected; a receiver of text
//! that never reads is closed with `output_overflow` above the hard limit;
//! a FILE to a receiver that never reads pauses its sender instead of
//! buffering; a half-open peer is ended by the idle timeout; and a sender
//! reset in the middle of a media frame leaves the receiver a complete,
//! zero-padded frame.
//!
//! Stalled media and text receivers get a small `SO_RCVBUF` (set before
//! connecting, which also turns off receive-buffer autotuning), so the
//! kernel cannot absorb much and the relay's own output queue is what fills
//! up. (The FILE receiver keeps the default buffer, which does not grow
//! while nobody reads, so that the 32 MiB go through quickly once he does.)
//!
//! RSS bounds: the relay is a debug build whose resident set after setup
//! (the baseline) is a few MiB. What a stalled receiver may legitimately
//! cost the relay is its output queue (at most the soft limit plus one
//! forwarded read for media, the hard limit plus one frame for text) plus
//! the read buffers of the connections with input (64 KiB each, up to about
//! 128 KiB for a frame still arriving). Each bound below is that plus a
//! slack of 8 MiB for the allocator and the log; a relay that buffered what
//! it should drop or pause would pass it within a fraction of a second at
//! the rates these tests send.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::{ClientMessage, ServerMessage};
use common::{
    Client, RelayProcess, WAIT, accepted_call, expect_ended, file_frame_bytes, file_message,
    media_frame_bytes, pattern, q, relay_with_call, relay_with_pair, sample, scrape,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Payload size of the flood's media frames.
const FRAME: usize = 1024;
/// How long a flood lasts at most.
const FLOOD_TIME: Duration = Duration::from_secs(3);
/// How many media frames a flood sends at most (100 MiB).
const FLOOD_FRAMES: u32 = 100_000;
/// Frames per write of the flood.
const BATCH: u32 = 32;
/// The allocator and log slack of every RSS bound (module doc).
const SLACK_KIB: u64 = 8 * 1024;

// ----- helpers ---------------------------------------------------------------

/// Connects with a receive buffer of `rcvbuf` bytes (set before connecting
/// so the window stays small), registers `user` and waits for a barrier.
#[track_caller]
fn small_window_client(
    relay: &RelayProcess,
    user: &str,
    framing: Framing,
    rcvbuf: usize,
) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    socket
        .connect(&relay.addr().into())
        .expect("connect to the relay");
    let mut client = Client::from_stream(socket.into(), framing);
    client.register(user);
    client.barrier();
    client
}

/// A 1 KiB media payload numbered `seq`: the number, then bytes that depend
/// on it, so a frame that is partial, merged or out of place is detected.
fn numbered_payload(seq: u32) -> Vec<u8> {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.extend((4..FRAME).map(|at| (at * 7 + seq as usize * 31 + at / 251) as u8));
    payload
}

/// The number of a payload made by [`numbered_payload`], checking it whole.
#[track_caller]
fn payload_number(payload: &[u8]) -> u32 {
    assert_eq!(
        payload.len(),
        FRAME,
        "a media frame of the wrong size arrived"
    );
    let seq = u32::from_be_bytes(payload[..4].try_into().expect("four bytes"));
    assert!(
        payload == numbered_payload(seq),
        "media frame {seq} arrived corrupted"
    );
    seq
}

/// The numbered media frames a receiver got: each whole and uncorrupted,
/// and numbered higher than the one before.
#[derive(Default)]
struct InOrder {
    last: Option<u32>,
    count: u64,
}

impl InOrder {
    #[track_caller]
    fn push(&mut self, payload: &[u8]) {
        let seq = payload_number(payload);
        let last = self.last;
        assert!(
            last.is_none_or(|last| seq > last),
            "frame {seq} after frame {last:?}"
        );
        self.last = Some(seq);
        self.count += 1;
    }
}

const DROPPED_SOFT: &str = "callrelay_media_frames_dropped_total{reason=\"output_soft_limit\"}";
const RELAYED: &str = "callrelay_media_frames_relayed_total";

/// What a flood did.
struct Flood {
    /// Media frames sent (numbered 0..sent).
    sent: u32,
    /// Largest relay RSS seen during the flood, in KiB.
    max_rss_kib: u64,
    /// Barriers `sender` passed during the flood.
    barriers: u32,
}

/// `sender` (length-prefixed) streams numbered 1 KiB media frames in
/// batches for [`FLOOD_TIME`] or [`FLOOD_FRAMES`], whichever ends first,
/// passing a barrier every quarter second (its session must stay usable)
/// and sampling the relay's RSS; ends with a barrier, so the relay has read
/// every frame when this returns.
#[track_caller]
fn flood(relay: &RelayProcess, sender: &mut Client) -> Flood {
    assert_eq!(sender.framing, LengthPrefixed);
    let start = Instant::now();
    let mut next_check = start + Duration::from_millis(250);
    let mut result = Flood {
        sent: 0,
        max_rss_kib: relay.rss_kib(),
        barriers: 0,
    };
    while start.elapsed() < FLOOD_TIME && result.sent < FLOOD_FRAMES {
        sender.send_media_burst((result.sent..result.sent + BATCH).map(numbered_payload));
        result.sent += BATCH;
        if Instant::now() >= next_check {
            sender.barrier();
            result.barriers += 1;
            result.max_rss_kib = result.max_rss_kib.max(relay.rss_kib());
            next_check = Instant::now() + Duration::from_millis(250);
        }
        // Pacing (about 32 MiB/s), not synchronisation.
        std::thread::sleep(Duration::from_millis(1));
    }
    sender.barrier();
    result.barriers += 1;
    result.max_rss_kib = result.max_rss_kib.max(relay.rss_kib());
    result
}

/// Starts a relay with a 64 KiB soft and a 1 MiB hard output limit and
/// metrics; alice (framed) is in an accepted call with bob (`bob_framing`,
/// small window, never reading) and [`flood`]s him. The relay's RSS during
/// and after the flood stays under the bound: baseline + the hard limit
/// (the queue never legitimately gets near it: soft limit + one forwarded
/// read) + slack. `label` names the case in the test's output. Returns the
/// relay, its metrics address, alice, bob, the call id and the flood.
#[track_caller]
fn flood_a_receiver_that_never_reads(
    bob_framing: Framing,
    label: &str,
) -> (RelayProcess, SocketAddr, Client, Client, String, Flood) {
    // No delay bound: these floods are about the soft limit (the delay
    // bound of PROTOCOL.md 8.2 is tests/real_networks.rs's).
    let relay = RelayProcess::start(&[
        "--output-soft",
        "64K",
        "--output-hard",
        "1M",
        "--media-max-delay",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = relay.metrics_addr();
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = small_window_client(&relay, "bob", bob_framing, 4096);
    let call_id = accepted_call(&mut alice, &mut bob);
    let baseline = relay.rss_kib();

    let flood = flood(&relay, &mut alice);
    let after = relay.rss_kib();
    let bound = baseline + MIB / KIB + SLACK_KIB;
    eprintln!(
        "{label}: sent {} frames, RSS baseline {baseline} KiB, max {} KiB, after {after} KiB",
        flood.sent, flood.max_rss_kib
    );
    assert!(
        flood.max_rss_kib.max(after) < bound,
        "relay RSS {} KiB over {bound} KiB (baseline {baseline} KiB)",
        flood.max_rss_kib.max(after)
    );
    (relay, metrics, alice, bob, call_id, flood)
}

/// Scrapes `metrics` after a flood of `sent` frames: some were dropped at
/// the soft limit, and every frame was either relayed or dropped. Returns
/// the number relayed.
#[track_caller]
fn relayed_with_soft_drops(metrics: SocketAddr, label: &str, sent: u32) -> u64 {
    let text = scrape(metrics);
    let (dropped, relayed) = (sample(&text, DROPPED_SOFT), sample(&text, RELAYED));
    eprintln!("{label}: relayed {relayed}, dropped {dropped}");
    assert!(dropped > 0, "no media was dropped at the soft limit");
    assert_eq!(
        dropped + relayed,
        u64::from(sent),
        "every frame is either relayed or dropped"
    );
    relayed
}

// ----- 1. a framed media receiver that never reads ---------------------------

// alice floods bob (framed, small window, not reading) with 1 KiB media
// frames for about 3 s. Above the 64 KiB soft limit frames are dropped
// whole: the metrics count drops, the relay's RSS stays bounded, alice's
// barriers keep passing. When bob reads, every frame he gets is a complete,
// uncorrupted frame, in order, exactly as many as the relay counted as
// relayed; then alice's TEXT, and CALL_END works for both.
#[test]
fn framed_media_receiver_that_never_reads_gets_whole_frames_dropped() {
    let (_relay, metrics, mut alice, mut bob, call_id, flood) =
        flood_a_receiver_that_never_reads(LengthPrefixed, "framed receiver");
    assert!(flood.barriers >= 2, "alice passed too few barriers");
    let relayed = relayed_with_soft_drops(metrics, "framed receiver", flood.sent);

    // A marker behind the media: text is never dropped.
    alice.text("bob", "after the flood");
    let mut received = InOrder::default();
    loop {
        match bob.recv() {
            ServerMessage::Media { payload } => received.push(&payload),
            ServerMessage::Text { from, text } => {
                assert_eq!((from, text), (q("alice"), q("after the flood")));
                break;
            }
            other => panic!("bob got {other:?} among the media"),
        }
    }
    assert_eq!(
        received.count, relayed,
        "bob got a different number of frames"
    );
    alice.end(&call_id);
    expect_ended(&mut alice, &mut bob, &call_id);
    alice.barrier();
    bob.barrier();
}

// ----- 2. a seed media receiver that never reads -----------------------------

// The same flood to a seed receiver: drops happen, alice is unaffected, and
// bob's connection stays open. When the flood is over and alice has ended
// the call, bob reads `6` + one whole 1 KiB payload at a time (the relay
// writes each framed frame as one seed frame and drops whole frames), and
// then exactly the CALL_END of the call.
#[test]
fn seed_media_receiver_that_never_reads_gets_whole_frames_dropped() {
    let (_relay, metrics, mut alice, mut bob, call_id, flood) =
        flood_a_receiver_that_never_reads(Seed, "seed receiver");
    let relayed = relayed_with_soft_drops(metrics, "seed receiver", flood.sent);

    alice.end(&call_id);
    alice.expect_end(&call_id);
    let mut call_end = vec![5u8];
    call_end.extend_from_slice(&(call_id.len() as u32 * 2).to_be_bytes());
    call_end.extend(call_id.encode_utf16().flat_map(u16::to_be_bytes));
    let mut received = InOrder::default();
    loop {
        let kind = bob.read_exact_bytes(1)[0];
        match kind {
            6 => received.push(&bob.read_exact_bytes(FRAME)),
            5 => {
                let rest = bob.read_exact_bytes(call_end.len() - 1);
                assert_eq!(rest, call_end[1..], "the CALL_END bytes differ");
                break;
            }
            other => panic!(
                "bob's stream is unparseable: type byte {other:#04x} after {} frames",
                received.count
            ),
        }
    }
    assert_eq!(
        received.count, relayed,
        "bob got a different number of frames"
    );
    alice.barrier();
    bob.barrier();
}

// ----- 3. a text receiver over the hard limit is closed ----------------------

/// The `k`th 60 KiB text (30 720 UTF-16 code units).
fn big_text(k: u32) -> String {
    let mut text = format!("{k:06}:");
    let fill = char::from(b'a' + (k % 26) as u8);
    text.extend(std::iter::repeat_n(fill, 30 * 1024 - text.len()));
    text
}

// carol sends 60 KiB TEXTs to bob (in a call with alice), who never reads.
// Text is never dropped, so bob's queue passes the 256 KiB hard limit and
// the relay closes him with ERROR output_overflow: alice gets CALL_END,
// carol keeps working, and every text is either delivered to bob (all of
// them up to some k, in order, before the ERROR and EOF) or reported
// `offline` to carol. The linger timeout is raised so bob has time to read
// his queue after the close.
#[test]
fn text_receiver_over_the_hard_limit_is_closed_with_output_overflow() {
    let relay = RelayProcess::start(&[
        "--output-soft",
        "128K",
        "--output-hard",
        "256K",
        "--linger-timeout",
        "10",
    ]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = small_window_client(&relay, "bob", LengthPrefixed, 4096);
    let mut carol = relay.client("carol", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut bob);
    let bob_id = relay.conn_id_of(bob.local_addr());
    let closed = format!("{bob_id} (bob) closed: output_overflow");
    let baseline = relay.rss_kib();

    let start = Instant::now();
    let mut sent = 0u32;
    let mut max_rss = baseline;
    while sent < 500 && start.elapsed() < Duration::from_secs(5) {
        carol.text("bob", &big_text(sent));
        sent += 1;
        max_rss = max_rss.max(relay.rss_kib());
        if relay.log_contains(&closed) {
            break;
        }
    }
    relay.expect_log(&[&closed]);
    // A few more, which must find bob offline.
    for _ in 0..3 {
        carol.text("bob", &big_text(sent));
        sent += 1;
    }
    eprintln!("hard limit: {sent} texts sent, RSS baseline {baseline} KiB, max {max_rss} KiB");
    // Bound: the hard limit plus one 60 KiB text, plus slack.
    assert!(
        max_rss < baseline + 256 + 64 + SLACK_KIB,
        "relay RSS {max_rss} KiB (baseline {baseline} KiB)"
    );
    alice.expect_end(&call_id);
    alice.barrier();

    // bob reads his queue: texts 0..n in order, then the ERROR, then EOF.
    let mut delivered = 0u32;
    loop {
        match bob.recv() {
            ServerMessage::Text { from, text } => {
                assert_eq!(from, q("carol"));
                assert!(
                    text == q(&big_text(delivered)),
                    "text {delivered} arrived wrong"
                );
                delivered += 1;
            }
            ServerMessage::Error { code, .. } => {
                assert_eq!(code, "output_overflow");
                break;
            }
            other => panic!("bob got {other:?}"),
        }
    }
    bob.expect_closed();

    // carol: an `offline` notice for each text that found bob gone, then
    // her barrier.
    carol.text("carol", "still here");
    let mut offline = 0u32;
    loop {
        match carol.recv() {
            ServerMessage::Error { code, .. } if code == "offline" => offline += 1,
            ServerMessage::Text { from, text } => {
                assert_eq!((from, text), (q("carol"), q("still here")));
                break;
            }
            other => panic!("carol got {other:?}"),
        }
    }
    eprintln!("hard limit: {delivered} delivered to bob, {offline} reported offline");
    assert!(
        delivered > 0 && offline >= 3,
        "no text reached bob, or none found him gone"
    );
    assert_eq!(delivered + offline, sent, "a text was lost");
    carol.barrier();
    alice.barrier();
}

// ----- 4. a FILE to a receiver that never reads ------------------------------

// alice sends a 32 MiB FILE (and then a TEXT) to bob, who does not read.
// The relay pauses alice instead of buffering: it logs the pause, alice's
// writer cannot finish (the kernel buffers on the way hold a few MiB at
// most: socket send buffers are capped at 4 MiB here and a receive buffer
// only grows while its owner reads), and the relay's RSS stays far below
// 32 MiB over the baseline.
// Then bob reads the file byte-exact and alice's TEXT after it.
#[test]
fn file_to_a_receiver_that_never_reads_pauses_the_sender() {
    let (relay, mut alice, mut bob) = relay_with_pair(&[], LengthPrefixed, LengthPrefixed);
    let alice_id = relay.conn_id_of(alice.local_addr());
    let bob_id = relay.conn_id_of(bob.local_addr());
    let baseline = relay.rss_kib();

    let data = pattern(32 * 1024 * 1024);
    let mut bytes = file_message(LengthPrefixed, "bob", "big.bin", &data);
    bytes.extend(alice.encode(&ClientMessage::Text {
        to: q("bob"),
        text: q("after the file"),
    }));
    let writer = alice.send_in_background(bytes);
    relay.expect_log(&[&format!("{alice_id} paused until {bob_id} drains")]);

    // Watch for a second while bob reads nothing (sampling pace, not sync).
    let mut max_rss = relay.rss_kib();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        max_rss = max_rss.max(relay.rss_kib());
    }
    assert!(
        !writer.is_finished(),
        "alice wrote 32 MiB although bob read nothing: the relay buffered it"
    );
    eprintln!("file: RSS baseline {baseline} KiB, max while paused {max_rss} KiB");
    // Bound: soft limit (256 KiB) + read buffers + slack, far below 32 MiB.
    let bound = baseline + SLACK_KIB;
    assert!(
        max_rss < bound,
        "relay RSS {max_rss} KiB while paused, over {bound} KiB"
    );

    // A MiB at a time, so the deadline is per MiB of progress.
    let read_start = Instant::now();
    for piece in file_frame_bytes(LengthPrefixed, "alice", "big.bin", &data).chunks(1 << 20) {
        bob.expect_bytes(piece);
    }
    eprintln!("file: bob read the 32 MiB in {:?}", read_start.elapsed());
    bob.expect_text("alice", "after the file");
    writer.join().expect("alice's writer");
    let after = relay.rss_kib();
    eprintln!("file: RSS after the transfer {after} KiB");
    assert!(after < bound, "relay RSS {after} KiB after the transfer");
    alice.barrier();
    bob.barrier();
}

// ----- 5. a half-open peer ---------------------------------------------------

// bob, in an accepted call with alice, stops sending (no FIN) and reads
// nothing; alice sends heartbeats. After the 0.5 s idle timeout the relay
// closes bob: alice gets CALL_END (and keeps her connection), bob finds
// ERROR timeout and then EOF when he finally reads.
#[test]
fn half_open_peer_is_ended_by_the_idle_timeout() {
    let (relay, mut alice, mut bob, call_id) = relay_with_call(
        &["--idle-timeout", "0.5", "--resume-window", "0"],
        LengthPrefixed,
        LengthPrefixed,
    );
    let bob_id = relay.conn_id_of(bob.local_addr());

    let deadline = Instant::now() + WAIT;
    let mut next_heartbeat = Instant::now();
    loop {
        assert!(Instant::now() < deadline, "the call did not end");
        if Instant::now() >= next_heartbeat {
            alice.send_heartbeat(false);
            next_heartbeat = Instant::now() + Duration::from_millis(100);
        }
        match alice.recv_before(next_heartbeat) {
            None | Some(ServerMessage::Heartbeat) => {}
            Some(ServerMessage::CallEnd { call_id: ended }) => {
                assert_eq!(ended, call_id);
                break;
            }
            Some(other) => panic!("alice got {other:?}"),
        }
    }
    relay.expect_log(&[&format!("{bob_id} (bob) closed: timeout")]);
    // alice is still connected (heartbeat answers may come before her TEXT).
    alice.text("alice", "after the end");
    loop {
        match alice.recv() {
            ServerMessage::Heartbeat => {}
            ServerMessage::Text { from, text } => {
                assert_eq!((from, text), (q("alice"), q("after the end")));
                break;
            }
            other => panic!("alice got {other:?}"),
        }
    }
    bob.expect_error("timeout");
    bob.expect_closed();
}

// ----- 6. a sender reset in the middle of a media frame ----------------------

// alice (framed) sends the header and first 100 KiB of a 1 MiB media frame
// to bob (framed); once bob has those bytes (so the relay has read them),
// alice's socket is reset (SO_LINGER 0). bob receives one complete 1 MiB
// frame, the rest zeros, then CALL_END; the relay logs the padding and
// still works (a new call between bob and carol carries media).
#[test]
fn sender_reset_mid_media_frame_leaves_a_complete_padded_frame() {
    const TOTAL: usize = 1024 * 1024;
    const SENT: usize = 100 * 1024;
    let (relay, mut alice, mut bob, call_id) = relay_with_call(&[], LengthPrefixed, LengthPrefixed);
    let alice_id = relay.conn_id_of(alice.local_addr());

    let payload = pattern(TOTAL);
    let whole = media_frame_bytes(LengthPrefixed, &payload);
    let head = &whole[..5 + SENT];
    alice.send_raw(head);
    bob.expect_bytes(head);
    SockRef::from(&alice.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(alice);

    bob.expect_bytes(&vec![0u8; TOTAL - SENT]);
    bob.expect_end(&call_id);
    relay.expect_log(&[&format!(
        "{alice_id} left mid-frame: padding {} bytes",
        TOTAL - SENT
    )]);
    bob.barrier();

    let mut carol = relay.client("carol", LengthPrefixed);
    let call_id = accepted_call(&mut carol, &mut bob);
    let payload = pattern(5000);
    carol.media(&payload);
    bob.expect_media_frame(&payload);
    bob.end(&call_id);
    expect_ended(&mut bob, &mut carol, &call_id);
}
