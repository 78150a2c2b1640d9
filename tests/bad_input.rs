//! The bad inputs of PROTOCOL.md section 7 against the real binary, in both
//! framings where they apply.
//!
//! Every case runs while an accepted call between a seed client (alice) and a
//! length-prefixed client (bob) has media in flight both ways. The bad
//! client must get ERROR with the right code (in its own framing) and then
//! EOF, the relay must log a protocol error naming the code, and once the bad
//! client is gone the call's media must still flow both ways byte-exact.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::{ClientMessage, ServerMessage, encode_client};
use common::{Client, RelayProcess, WAIT, accepted_call, expect_ended, q, relay_with_call};

const BOTH: [Framing; 2] = [Seed, LengthPrefixed];

// ----- byte builders ---------------------------------------------------------

/// The wire encoding of a QString.
fn qs(text: &str) -> Vec<u8> {
    let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let mut out = (utf16.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&utf16);
    out
}

/// `body` (type byte + fields) with a length prefix.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// `body` as a frame in `framing`.
fn frame(framing: Framing, body: &[u8]) -> Vec<u8> {
    match framing {
        Seed => body.to_vec(),
        LengthPrefixed => framed(body),
    }
}

/// A registration frame (kind HEARTBEAT) carrying raw id bytes, whatever
/// their length.
fn registration(framing: Framing, id: &[u8]) -> Vec<u8> {
    let mut body = vec![7];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    frame(framing, &body)
}

/// A client message encoded in `framing`.
fn encoded(framing: Framing, message: &ClientMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client(message, framing, &mut out);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Deterministic media payload. Bytes 5, 6 and 7 are left out: a seed
/// sender's media split across reads continues at a frame boundary, where
/// those bytes would start CALL_END, MEDIA_DATA or HEARTBEAT (PROTOCOL.md 4).
fn payload(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|at| {
            let byte = (at as u32)
                .wrapping_mul(31)
                .wrapping_add(seed.wrapping_mul(97)) as u8;
            if (5..=7).contains(&byte) { 0x55 } else { byte }
        })
        .collect()
}

// ----- the call that must survive --------------------------------------------

/// An accepted call: alice (seed) called bob (length-prefixed).
struct Call {
    alice: Client,
    bob: Client,
    call_id: String,
    round: u32,
}

impl Call {
    /// Starts a relay with `args` and the call on it, with a first exchange
    /// of media.
    #[track_caller]
    fn start(args: &[&str]) -> (RelayProcess, Call) {
        let (relay, alice, bob, call_id) = relay_with_call(args, Seed, LengthPrefixed);
        let mut call = Call {
            alice,
            bob,
            call_id,
            round: 0,
        };
        call.exchange(100);
        (relay, call)
    }

    fn next_payloads(&mut self, len: usize) -> (Vec<u8>, Vec<u8>) {
        self.round += 1;
        (
            payload(self.round * 2, len),
            payload(self.round * 2 + 1, len),
        )
    }

    /// alice -> bob, then bob -> alice, byte-exact.
    #[track_caller]
    fn exchange(&mut self, len: usize) {
        let (to_bob, to_alice) = self.next_payloads(len);
        self.alice.media(&to_bob);
        self.bob.expect_media(&to_bob);
        self.bob.media(&to_alice);
        self.alice.expect_bytes(&cat(&[&[6], &to_alice]));
    }

    /// Runs `bad` with media in flight both ways; then the media in flight
    /// arrives intact and more media flows both ways.
    #[track_caller]
    fn around(&mut self, bad: impl FnOnce()) {
        let (to_bob, to_alice) = self.next_payloads(777);
        self.alice.media(&to_bob);
        self.bob.media(&to_alice);
        bad();
        self.bob.expect_media(&to_bob);
        self.alice.expect_bytes(&cat(&[&[6], &to_alice]));
        for len in [1, 1000, 20_000] {
            self.exchange(len);
        }
    }

    /// alice ends the call: both get CALL_END and nothing else is pending.
    #[track_caller]
    fn finish(mut self) {
        self.alice.end(&self.call_id);
        expect_ended(&mut self.alice, &mut self.bob, &self.call_id);
        self.bob.barrier();
    }
}

// ----- the bad clients -------------------------------------------------------

/// The client gets ERROR `code` then EOF, and the relay logs a protocol
/// error with that code for the client's address.
#[track_caller]
fn expect_protocol_error(relay: &RelayProcess, client: &mut Client, code: &str) {
    client.expect_error(code);
    client.expect_closed();
    let who = format!("({}, ", client.local_addr());
    relay.expect_log(&[&who, "protocol error", code]);
}

/// A fresh (unregistered) connection sends `bytes`.
#[track_caller]
fn unregistered_sends(relay: &RelayProcess, framing: Framing, bytes: &[u8], code: &str) {
    let mut client = relay.connect(framing);
    client.send_raw(bytes);
    expect_protocol_error(relay, &mut client, code);
}

/// A registered `user` sends `bytes`.
#[track_caller]
fn registered_sends(relay: &RelayProcess, user: &str, framing: Framing, bytes: &[u8], code: &str) {
    let mut client = relay.client(user, framing);
    client.send_raw(bytes);
    expect_protocol_error(relay, &mut client, code);
}

// ----- the cases -------------------------------------------------------------

#[test]
fn bad_registration_id_gets_bad_user_id() {
    let (relay, mut call) = Call::start(&[]);
    let long = vec![b'a'; 129];
    let ids: [&[u8]; 9] = [
        b"",
        &long,
        &[0xff, 0xfe],
        &[b'a', 0xc3],             // truncated sequence
        &[0xc0, 0xaf],             // overlong
        &[0xed, 0xa0, 0x80],       // a surrogate
        b"a\tb",                   // TAB
        b"a\x7fb",                 // DEL
        &[b'a', 0xc2, 0x85, b'b'], // U+0085, a C1 control
    ];
    for framing in BOTH {
        for id in ids {
            call.around(|| {
                unregistered_sends(&relay, framing, &registration(framing, id), "bad_user_id")
            });
        }
    }
    call.finish();
}

#[test]
fn too_long_id_is_refused_before_its_bytes_arrive() {
    let (relay, mut call) = Call::start(&[]);
    for framing in BOTH {
        let whole = registration(framing, &[b'a'; 129]);
        let header = &whole[..whole.len() - 129];
        call.around(|| unregistered_sends(&relay, framing, header, "bad_user_id"));
    }
    call.finish();
}

#[test]
fn framed_registration_length_disagreeing_with_its_id_is_malformed() {
    let (relay, mut call) = Call::start(&[]);
    // Frame length 10, id length 5 (+3 = 8): two bytes too many.
    let too_long = cat(&[&[0, 0, 0, 10, 7, 0, 5], b"mallory"]);
    // Frame length 2: shorter than kind + id length.
    let too_short = [0, 0, 0, 2, 7, 0];
    for bytes in [&too_long[..], &too_short[..]] {
        call.around(|| unregistered_sends(&relay, LengthPrefixed, bytes, "malformed"));
    }
    call.finish();
}

#[test]
fn odd_qstring_length_is_malformed() {
    let (relay, mut call) = Call::start(&[]);
    let odd3 = [0, 0, 0, 3, 0, b'm', 0];
    let bodies: [Vec<u8>; 5] = [
        // TEXT with an odd recipient.
        cat(&[&[0], &odd3, &qs("hi")]),
        // TEXT with an odd text.
        cat(&[&[0], &qs("mallory"), &[0, 0, 0, 5, 0, b'h', 0, b'i', 0]]),
        // CALL_REQUEST with an odd callee.
        cat(&[&[2], &odd3, &[1]]),
        // CALL_ACCEPT with an odd ref.
        vec![3, 0, 0, 0, 1, b'x'],
        // CALL_ACCEPT with an odd ref and nothing after the length.
        vec![3, 0, 0, 0, 9],
    ];
    for framing in BOTH {
        for body in &bodies {
            let bytes = frame(framing, body);
            call.around(|| registered_sends(&relay, "mallory", framing, &bytes, "malformed"));
        }
    }
    call.finish();
}

#[test]
fn unknown_type_byte_is_refused() {
    let (relay, mut call) = Call::start(&[]);
    for framing in BOTH {
        for kind in [0x08, 0x1f, 0x20, 0xff] {
            let bytes = frame(framing, &[kind]);
            call.around(|| registered_sends(&relay, "mallory", framing, &bytes, "unknown_type"));
        }
    }
    call.finish();
}

#[test]
fn qstring_over_its_limit_is_too_large_before_its_body() {
    let (relay, mut call) = Call::start(&[]);
    for framing in BOTH {
        // CALL_REQUEST whose callee claims 2000 bytes (limit 1 KiB); the
        // frame length counts the body that is never sent.
        let mut body = vec![2];
        body.extend_from_slice(&2000u32.to_be_bytes());
        let bytes = match framing {
            Seed => body,
            LengthPrefixed => cat(&[&(1 + 4 + 2000 + 1u32).to_be_bytes(), &body]),
        };
        call.around(|| registered_sends(&relay, "mallory", framing, &bytes, "too_large"));
        // TEXT whose text claims 70000 bytes (limit 64 KiB).
        let body = cat(&[&[0], &qs("bob"), &70_000u32.to_be_bytes()]);
        let bytes = match framing {
            Seed => body,
            LengthPrefixed => {
                let length = (body.len() + 70_000) as u32;
                cat(&[&length.to_be_bytes(), &body])
            }
        };
        call.around(|| registered_sends(&relay, "mallory", framing, &bytes, "too_large"));
    }
    call.finish();
}

#[test]
fn framed_empty_frame_is_malformed() {
    let (relay, mut call) = Call::start(&[]);
    call.around(|| {
        registered_sends(
            &relay,
            "mallory",
            LengthPrefixed,
            &[0, 0, 0, 0],
            "malformed",
        )
    });
    call.finish();
}

#[test]
fn framed_media_over_4_mib_is_too_large() {
    let (relay, mut call) = Call::start(&[]);
    // Type byte + 4 MiB + 1 of payload; only the header is sent.
    let length: u32 = 1 + 4 * 1024 * 1024 + 1;
    let bytes = cat(&[&length.to_be_bytes(), &[6], &[0xaa; 100]]);
    call.around(|| registered_sends(&relay, "mallory", LengthPrefixed, &bytes, "too_large"));
    call.finish();
}

#[test]
fn framed_trailing_bytes_after_the_fields_are_malformed() {
    let (relay, mut call) = Call::start(&[]);
    // CALL_END with an empty ref (4 bytes) in a frame two bytes longer.
    let bytes = framed(&[5, 0, 0, 0, 0, 0xab, 0xcd]);
    call.around(|| registered_sends(&relay, "mallory", LengthPrefixed, &bytes, "malformed"));
    call.finish();
}

#[test]
fn framed_file_length_disagreeing_with_its_data_is_malformed() {
    let (relay, mut call) = Call::start(&[]);
    let data = [0x42u8; 10];
    let body = cat(&[
        &[1],
        &qs("mallory"),
        &qs("f.bin"),
        &10u32.to_be_bytes(),
        &data,
    ]);
    for delta in [5i64, -5] {
        let length = (body.len() as i64 + delta) as u32;
        let bytes = cat(&[&length.to_be_bytes(), &body]);
        call.around(|| registered_sends(&relay, "mallory", LengthPrefixed, &bytes, "malformed"));
    }
    call.finish();
}

#[test]
fn file_over_max_file_is_too_large() {
    let (relay, mut call) = Call::start(&["--max-file", "1K"]);
    for framing in BOTH {
        // 1025 bytes of data claimed; only the header is sent.
        let header = cat(&[&[1], &qs("mallory"), &qs("f.bin"), &1025u32.to_be_bytes()]);
        let bytes = match framing {
            Seed => header,
            LengthPrefixed => cat(&[&((header.len() + 1025) as u32).to_be_bytes(), &header]),
        };
        call.around(|| registered_sends(&relay, "mallory", framing, &bytes, "too_large"));
    }
    // A FILE at the limit still goes through (the limit is the option's).
    let mut carol = relay.client("carol", LengthPrefixed);
    carol.send(&ClientMessage::File {
        to: q("carol"),
        name: q("f.bin"),
        data: vec![9; 1024],
    });
    match carol.recv() {
        ServerMessage::File { from, name, data } => {
            assert_eq!((from, name), (q("carol"), q("f.bin")));
            assert_eq!(data, vec![9; 1024]);
        }
        other => panic!("expected the FILE back, got {other:?}"),
    }
    call.finish();
}

#[test]
fn heartbeat_suffix_naming_another_id_is_malformed() {
    let (relay, mut call) = Call::start(&[]);
    // Registered as "carol" (5 bytes); the suffix names "mallo".
    let body = cat(&[&[7, 0, 5], b"mallo"]);
    for framing in BOTH {
        let bytes = frame(framing, &body);
        call.around(|| registered_sends(&relay, "carol", framing, &bytes, "malformed"));
    }
    // Framed: a heartbeat body that is no registration suffix at all.
    let bytes = framed(&[7, 0, 3, b'a', b'b', b'c']);
    call.around(|| registered_sends(&relay, "carol", LengthPrefixed, &bytes, "malformed"));
    call.finish();
}

#[test]
fn closing_before_choosing_a_framing_gets_no_error() {
    let (relay, mut call) = Call::start(&[]);
    let prefixes: [&[u8]; 5] = [b"", &[7], &[7, 0], &[0], &[0, 0]];
    for prefix in prefixes {
        call.around(|| {
            let mut client = relay.connect(Seed);
            let addr = client.local_addr();
            client.send_raw(prefix);
            client.shutdown_write();
            // No ERROR: the very next thing is EOF.
            client.expect_closed();
            let id = relay.conn_id_of(addr);
            relay.expect_log(&[&format!("{id} ("), "closed by peer"]);
            let who = format!("({addr}, ");
            let errors: Vec<String> = relay
                .log_snapshot()
                .into_iter()
                .filter(|line| line.contains(&who) && line.contains("protocol error"))
                .collect();
            assert!(errors.is_empty(), "{prefix:?}: {errors:?}");
        });
    }
    // A client that connects and closes at once.
    call.around(|| {
        let client = relay.connect(Seed);
        let addr = client.local_addr();
        drop(client);
        let id = relay.conn_id_of(addr);
        relay.expect_log(&[&format!("{id} ("), "closed by peer"]);
    });
    call.finish();
}

#[test]
fn garbage_after_a_valid_frame_is_an_error_after_the_frame() {
    let (relay, mut call) = Call::start(&[]);
    for framing in BOTH {
        let text = encoded(
            framing,
            &ClientMessage::Text {
                to: q("mallory"),
                text: q("before the garbage"),
            },
        );
        let garbage = frame(framing, &[0xff, 0, 1]);
        let expect_text_then_error = |client: &mut Client| {
            client.expect_text("mallory", "before the garbage");
            expect_protocol_error(&relay, client, "unknown_type");
        };
        // Registered first, then TEXT + garbage in one write.
        call.around(|| {
            let mut client = relay.client("mallory", framing);
            client.send_raw(&cat(&[&text, &garbage]));
            expect_text_then_error(&mut client);
        });
        // Registration + TEXT + garbage in one write.
        call.around(|| {
            let mut client = relay.connect(framing);
            client.send_raw(&cat(&[&registration(framing, b"mallory"), &text, &garbage]));
            expect_text_then_error(&mut client);
        });
    }
    call.finish();
}

// ----- random input ----------------------------------------------------------

/// xorshift64*: deterministic, good enough to make bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn bytes(&mut self, count: usize) -> Vec<u8> {
        (0..count).map(|_| self.next() as u8).collect()
    }
}

/// Random input for connection `index`: pure noise, or noise after a valid
/// start, or frames with valid type bytes and random fields.
fn random_input(rng: &mut XorShift, index: usize) -> Vec<u8> {
    let user = format!("fuzz{index}");
    let noise = rng.below(2000) as usize;
    match index % 6 {
        0 => rng.bytes(noise),
        1 => cat(&[&[0, 0, 0], &rng.bytes(noise)]),
        2 => cat(&[&registration(Seed, user.as_bytes()), &rng.bytes(noise)]),
        3 => cat(&[
            &registration(LengthPrefixed, user.as_bytes()),
            &rng.bytes(noise),
        ]),
        4 => {
            let mut out = registration(Seed, user.as_bytes());
            for _ in 0..rng.below(20) {
                out.push(rng.below(9) as u8);
                let len = rng.below(12) as usize;
                out.extend(rng.bytes(len));
            }
            out
        }
        _ => {
            let mut out = registration(LengthPrefixed, user.as_bytes());
            for _ in 0..rng.below(20) {
                let len = rng.below(12) as usize;
                let mut body = vec![rng.below(9) as u8];
                body.extend(rng.bytes(len));
                let claimed = if rng.below(4) == 0 {
                    rng.next() as u32
                } else {
                    body.len() as u32
                };
                out.extend_from_slice(&claimed.to_be_bytes());
                out.extend(body);
            }
            out
        }
    }
}

/// Reads until the relay closes the connection (EOF or reset).
fn drain_to_eof(stream: &mut TcpStream, index: usize) {
    let deadline = Instant::now() + WAIT;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "fuzz connection {index} was never closed");
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return;
            }
            Err(error) => panic!("fuzz connection {index}: {error}"),
        }
    }
}

#[test]
fn random_bytes_from_50_connections_never_crash_the_relay() {
    let (mut relay, mut call) = Call::start(&[]);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    call.around(|| {
        let mut streams: Vec<TcpStream> = (0..50)
            .map(|_| TcpStream::connect(relay.addr()).expect("connect"))
            .collect();
        for (index, stream) in streams.iter_mut().enumerate() {
            let input = random_input(&mut rng, index);
            // The relay may already have closed it: write errors are fine.
            let _ = stream.write_all(&input);
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        for (index, stream) in streams.iter_mut().enumerate() {
            drain_to_eof(stream, index);
        }
    });
    assert!(relay.is_running(), "the relay died");
    call.finish();
    // A new call works too.
    let mut carol = relay.client("carol", LengthPrefixed);
    let mut dave = relay.client("dave", Seed);
    let call_id = accepted_call(&mut carol, &mut dave);
    carol.media(b"still alive");
    dave.expect_bytes(b"\x06still alive");
    carol.end(&call_id);
    expect_ended(&mut carol, &mut dave, &call_id);
    assert!(relay.is_running(), "the relay died");
}
