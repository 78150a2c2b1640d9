//! A deterministic randomized hostile-client test against the real binary.
//!
//! For about three seconds a thread opens 200 connections (at most 30 at
//! once) and feeds the relay what a broken or hostile client would: random
//! bytes, truncated valid frames, oversized length fields, unknown type
//! bytes, garbage after valid frames, a valid registration followed by
//! garbage, invalid registrations, valid frames with flipped bytes, a huge
//! media frame abandoned with a reset, all of it sometimes dripped one byte
//! at a time, and ended by FIN, by close, by reset (`SO_LINGER 0`, also in
//! the middle of a frame) or not at all.
//!
//! Meanwhile alice (seed) and bob (length-prefixed) are in an accepted call
//! streaming media both ways in lockstep (each side's chunk must arrive
//! before the next is sent, which keeps both output queues far below the
//! soft limit, so no frame may be dropped). Every byte of it must arrive
//! intact and in order: alice's stream is `A`..`Z` letters, a function of
//! their offset in the stream, relayed as media pieces whose concatenation
//! must be exactly that stream; bob's frames must reach alice as exactly
//! `6` + payload each. At the end the call still ends cleanly, a new
//! client works, the relay is running, hostile input caused protocol
//! errors, and the relay's RSS stayed bounded.
//!
//! Everything random comes from xorshift generators derived from one seed
//! (timing is not deterministic, the inputs are). The seed is printed and
//! named in failure messages; `CALLRELAY_HOSTILE_SEED=<seed>` replays it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::ClientMessage;
use common::{RelayProcess, accepted_call, encode_in, media_frame_bytes, q};
use socket2::SockRef;

/// The seed used unless `CALLRELAY_HOSTILE_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x0C41_1E1A_7E57_0001;
/// How long the hostile clients and the call run.
const RUN: Duration = Duration::from_secs(3);
/// Hostile connections over the run.
const TOTAL_CONNECTIONS: usize = 200;
/// Hostile connections open at once, at most.
const AT_ONCE: usize = 30;
/// Pause between hostile steps (pacing, not synchronisation).
const STEP: Duration = Duration::from_millis(2);
/// Largest chunk of the real call's media per direction and round.
const MAX_CHUNK: usize = 3000;
/// Bound on the relay's RSS over its baseline, in KiB. What the relay may
/// legitimately hold: per connection (at most 33 at once) its unparsed input
/// (64 KiB, growing to at most 128 KiB for a frame still arriving) and its
/// output queue (an ERROR, or for the call a few KiB in lockstep), about
/// 4 MiB in all, plus a pool of 32 free 64 KiB read buffers (2 MiB) and the
/// allocator's slack. 32 MiB is several times that, and far less than what
/// buffering hostile length fields (up to 4 GiB) or a huge media frame
/// would cost.
const RSS_BOUND_KIB: u64 = 32 * 1024;

// ----- randomness --------------------------------------------------------------

/// xorshift64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// Random bytes, `low..=high` of them.
    fn bytes(&mut self, low: usize, high: usize) -> Vec<u8> {
        let len = self.between(low, high);
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn framing(&mut self) -> Framing {
        if self.chance(50) {
            Seed
        } else {
            LengthPrefixed
        }
    }
}

fn seed() -> u64 {
    match std::env::var("CALLRELAY_HOSTILE_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("CALLRELAY_HOSTILE_SEED={text:?} is not a u64"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

// ----- hostile bytes -----------------------------------------------------------

/// `body` (type byte + fields) as a frame in `framing`.
fn frame(framing: Framing, body: &[u8]) -> Vec<u8> {
    match framing {
        Seed => body.to_vec(),
        LengthPrefixed => {
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(body);
            out
        }
    }
}

/// The wire encoding of a QString.
fn qs(text: &str) -> Vec<u8> {
    let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let mut out = (utf16.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&utf16);
    out
}

/// A hostile user id: never `alice` or `bob`; collisions among hostile
/// connections are intended (newest registration wins).
fn hostile_id(rng: &mut Rng) -> String {
    format!("h{}", rng.below(40))
}

/// A valid registration as `id` with a random kind byte.
fn registration(rng: &mut Rng, framing: Framing, id: &str) -> Vec<u8> {
    encode_in(
        &ClientMessage::Register {
            kind: rng.next() as u8,
            user: id.to_owned(),
        },
        framing,
    )
}

/// A well-formed frame a registered hostile client `me` may send. It never
/// sends TEXT or FILE to the real call's parties (they would be delivered);
/// calling them or acting on their call is fair game (busy, ignored).
fn valid_frame(rng: &mut Rng, framing: Framing, me: &str) -> Vec<u8> {
    let anyone = ["alice", "bob", me, "", "nobody"];
    let someone = anyone[rng.below(anyone.len())].to_owned();
    let other = hostile_id(rng);
    let message = match rng.below(9) {
        0 => ClientMessage::Heartbeat { suffix: None },
        1 => ClientMessage::Heartbeat {
            suffix: Some(me.to_owned()),
        },
        2 => ClientMessage::Text {
            to: q(if rng.chance(50) { me } else { &other }),
            text: q(&"x".repeat(rng.below(200))),
        },
        3 => ClientMessage::File {
            to: q(if rng.chance(50) { me } else { &other }),
            name: q("f.bin"),
            data: rng.bytes(0, 3000),
        },
        4 => ClientMessage::CallRequest {
            callee: q(if rng.chance(50) { &someone } else { &other }),
            video: rng.next() as u8,
        },
        5 => ClientMessage::CallAccept {
            call_ref: q(&someone),
        },
        6 => ClientMessage::CallReject {
            call_ref: q(&someone),
            reason: q("no"),
        },
        7 => ClientMessage::CallEnd {
            call_ref: q(&someone),
        },
        _ => ClientMessage::Media {
            payload: rng.bytes(0, 2000),
        },
    };
    encode_in(&message, framing)
}

/// `low..=high` frames from [`valid_frame`].
fn valid_frames(rng: &mut Rng, framing: Framing, me: &str, low: usize, high: usize) -> Vec<u8> {
    let count = rng.between(low, high);
    (0..count)
        .flat_map(|_| valid_frame(rng, framing, me))
        .collect()
}

/// A frame whose length field (or a field's) is far beyond any limit.
fn oversized(rng: &mut Rng, framing: Framing, me: &str) -> Vec<u8> {
    let huge = (rng.next() as u32) | 0x0100_0000;
    match (framing, rng.below(4)) {
        (LengthPrefixed, 0) => {
            let mut out = huge.to_be_bytes().to_vec();
            out.push(rng.below(8) as u8);
            out.extend(rng.bytes(0, 100));
            out
        }
        (LengthPrefixed, 1) => {
            // Media one byte over --max-media (4 MiB).
            let mut out = (1 + 4 * 1024 * 1024 + 1u32).to_be_bytes().to_vec();
            out.push(6);
            out.extend(rng.bytes(0, 1000));
            out
        }
        (_, 2) => {
            // TEXT whose text length is over --max-text, or odd.
            let mut body = vec![0];
            body.extend(qs(me));
            let len = if rng.chance(50) { 64 * 1024 + 2 } else { 7 };
            body.extend((len as u32).to_be_bytes());
            body.extend(rng.bytes(0, 100));
            frame(framing, &body)
        }
        _ => {
            // FILE whose data length is over --max-file, or a huge QString.
            let mut body = vec![1];
            if rng.chance(50) {
                body.extend(qs(me));
                body.extend(qs("f"));
                body.extend((64 * 1024 * 1024 + 1 + rng.below(1000) as u32).to_be_bytes());
            } else {
                body.extend(huge.to_be_bytes());
            }
            body.extend(rng.bytes(0, 100));
            frame(framing, &body)
        }
    }
}

/// How a hostile connection ends once its bytes are out.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Shut down the write side, then close a little later.
    Fin,
    /// Close (a reset if unread input is pending).
    Close,
    /// Reset (`SO_LINGER 0`).
    Reset,
    /// Stay open, silent, for a while.
    Hold,
}

/// What one hostile connection sends and how.
struct Script {
    kind: &'static str,
    bytes: Vec<u8>,
    /// One byte per step.
    drip: bool,
    /// Reset when this many bytes are out (mid-frame).
    reset_at: Option<usize>,
    end: End,
    /// Steps to stay open after the bytes (and FIN) are out.
    linger_steps: usize,
}

fn script(rng: &mut Rng) -> Script {
    let framing = rng.framing();
    let me = hostile_id(rng);
    let reg = registration(rng, framing, &me);
    let (kind, bytes) = match rng.below(10) {
        0 => {
            let mut bytes = if rng.chance(50) {
                vec![0, 0, 0]
            } else {
                Vec::new()
            };
            bytes.extend(rng.bytes(1, 400));
            ("random bytes", bytes)
        }
        1 => {
            let mut bytes = reg.clone();
            bytes.extend(valid_frames(rng, framing, &me, 1, 4));
            let cut = rng.between(1, bytes.len() - 1);
            bytes.truncate(cut);
            ("truncated valid frames", bytes)
        }
        2 => {
            let mut bytes = reg;
            bytes.extend(oversized(rng, framing, &me));
            ("oversized length", bytes)
        }
        3 => {
            let mut body = vec![rng.between(8, 255) as u8];
            body.extend(rng.bytes(0, 60));
            let mut bytes = reg;
            bytes.extend(frame(framing, &body));
            ("unknown type byte", bytes)
        }
        4 => {
            let mut bytes = reg;
            bytes.extend(valid_frames(rng, framing, &me, 1, 4));
            bytes.extend(rng.bytes(1, 200));
            ("garbage after valid frames", bytes)
        }
        5 => {
            let mut bytes = reg;
            bytes.extend(rng.bytes(1, 300));
            ("registration then garbage", bytes)
        }
        6 => {
            let long = "h".repeat(129);
            let ids: [&[u8]; 5] = [b"", long.as_bytes(), &[0xff, 0xfe], b"h\x01", &[0xc0, 0xaf]];
            let id = ids[rng.below(ids.len())];
            let mut body = vec![7];
            body.extend((id.len() as u16).to_be_bytes());
            body.extend_from_slice(id);
            ("bad registration", frame(framing, &body))
        }
        7 => {
            let mut bytes = reg;
            bytes.extend(valid_frames(rng, framing, &me, 1, 6));
            ("well-formed chatter", bytes)
        }
        8 => {
            // A 1 MiB media frame outside any call, abandoned.
            let mut bytes = registration(rng, LengthPrefixed, &me);
            bytes.extend((1 + 1024 * 1024u32).to_be_bytes());
            bytes.push(6);
            bytes.extend(rng.bytes(1, 64 * 1024));
            ("abandoned huge media frame", bytes)
        }
        _ => {
            let mut bytes = reg;
            bytes.extend(valid_frames(rng, framing, &me, 1, 4));
            for _ in 0..rng.between(1, 3) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            ("flipped bits", bytes)
        }
    };
    let end = match (kind, rng.below(4)) {
        ("abandoned huge media frame", _) | (_, 0) => End::Reset,
        (_, 1) => End::Fin,
        (_, 2) => End::Close,
        _ => End::Hold,
    };
    let reset_at = (rng.chance(15) && bytes.len() > 1).then(|| rng.between(1, bytes.len() - 1));
    Script {
        kind,
        drip: rng.chance(20) && bytes.len() < 400,
        reset_at,
        end,
        linger_steps: rng.below(100),
        bytes,
    }
}

// ----- the hostile driver ------------------------------------------------------

struct Hostile {
    stream: TcpStream,
    script: Script,
    sent: usize,
    fin_sent: bool,
}

/// What happened to the hostile connections.
#[derive(Debug, Default)]
struct HostileStats {
    opened: usize,
    resets: usize,
    closed_by_relay: usize,
    bytes_sent: usize,
}

fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

impl Hostile {
    /// One step; false when the connection is finished (and dropped).
    fn step(&mut self, rng: &mut Rng, stats: &mut HostileStats) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => {
                    stats.closed_by_relay += 1;
                    return false;
                }
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    stats.closed_by_relay += 1;
                    return false;
                }
            }
        }
        let total = self.script.bytes.len();
        if self.sent < total {
            if self.script.reset_at.is_some_and(|at| self.sent >= at) {
                stats.resets += 1;
                return false;
            }
            let limit = self.script.reset_at.unwrap_or(total);
            let room = limit.max(self.sent + 1) - self.sent;
            let len = if self.script.drip {
                1
            } else {
                rng.between(1, room.min(16 * 1024))
            };
            match self
                .stream
                .write(&self.script.bytes[self.sent..self.sent + len])
            {
                Ok(count) => {
                    self.sent += count;
                    stats.bytes_sent += count;
                }
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => {
                    stats.closed_by_relay += 1;
                    return false;
                }
            }
            return true;
        }
        match self.script.end {
            End::Reset => {
                stats.resets += 1;
                false
            }
            End::Close => false,
            End::Fin if !self.fin_sent => {
                self.fin_sent = true;
                let _ = self.stream.shutdown(Shutdown::Write);
                true
            }
            End::Fin | End::Hold => {
                if self.script.linger_steps == 0 {
                    return false;
                }
                self.script.linger_steps -= 1;
                true
            }
        }
    }

    /// Drops the socket as its script says (a reset where it asks for one).
    fn finish(self) {
        let wants_reset = matches!(self.script.end, End::Reset)
            || self.script.reset_at.is_some_and(|at| self.sent >= at);
        if wants_reset {
            reset(self.stream);
        }
    }
}

/// Runs the hostile connections for [`RUN`].
fn run_hostile(addr: SocketAddr, seed: u64) -> HostileStats {
    let mut rng = Rng::new(seed ^ 0xD1CE_D1CE_D1CE_D1CE);
    let mut stats = HostileStats::default();
    let mut live: Vec<Hostile> = Vec::new();
    let start = Instant::now();
    let mut kinds: Vec<&'static str> = Vec::new();
    while start.elapsed() < RUN {
        // Open connections evenly over the first 80% of the run.
        let due = (start.elapsed().as_secs_f64() / (RUN.as_secs_f64() * 0.8)
            * TOTAL_CONNECTIONS as f64) as usize;
        while stats.opened < due.min(TOTAL_CONNECTIONS) && live.len() < AT_ONCE {
            let script = script(&mut rng);
            let stream = TcpStream::connect(addr).expect("connect to the relay");
            stream.set_nodelay(true).expect("nodelay");
            stream.set_nonblocking(true).expect("nonblocking");
            stats.opened += 1;
            kinds.push(script.kind);
            live.push(Hostile {
                stream,
                script,
                sent: 0,
                fin_sent: false,
            });
        }
        let mut at = 0;
        while at < live.len() {
            if live[at].step(&mut rng, &mut stats) {
                at += 1;
            } else {
                live.swap_remove(at).finish();
            }
        }
        std::thread::sleep(STEP);
    }
    for (k, hostile) in live.into_iter().enumerate() {
        if k % 2 == 0 {
            reset(hostile.stream);
        }
    }
    kinds.sort_unstable();
    kinds.dedup();
    assert!(
        kinds.len() >= 8,
        "too few kinds of hostile input: {kinds:?}"
    );
    stats
}

// ----- the real call -----------------------------------------------------------

/// Byte `at` of media stream `stream`: a letter `A`..`Z` that depends on its
/// offset, so a lost, repeated or reordered piece shows.
fn letter(stream: u64, at: usize) -> u8 {
    let mut x = (at as u64 ^ stream).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    b'A' + (x % 26) as u8
}

fn letters(stream: u64, from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|at| letter(stream, at)).collect()
}

#[test]
fn hostile_clients_do_not_disturb_a_call_or_the_relay() {
    let seed = seed();
    eprintln!("hostile seed {seed:#x} (replay: CALLRELAY_HOSTILE_SEED={seed:#x})");
    let mut relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", Seed);
    let mut bob = relay.client("bob", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut bob);
    let baseline = relay.rss_kib();

    let addr = relay.addr();
    let hostile = std::thread::spawn(move || run_hostile(addr, seed));

    let mut rng = Rng::new(seed);
    let (mut to_bob, mut to_alice) = (0usize, 0usize);
    let mut rounds = 0usize;
    let mut max_rss = baseline;
    let mut next_sample = Instant::now();
    let start = Instant::now();
    while start.elapsed() < RUN {
        // alice: `6` + letters (a new seed frame) or bare letters (a
        // continuation: she is in media mode). Lockstep means each write
        // reaches the relay at a frame boundary.
        let chunk = letters(1, to_bob, rng.between(1, MAX_CHUNK));
        to_bob += chunk.len();
        if rounds == 0 || rng.chance(50) {
            alice.send_raw(&[&[6], &chunk[..]].concat());
        } else {
            alice.send_raw(&chunk);
        }
        // bob: one framed media frame.
        let payload = letters(2, to_alice, rng.between(1, MAX_CHUNK));
        to_alice += payload.len();
        bob.media(&payload);
        bob.expect_media_chunks(&chunk);
        alice.expect_bytes(&media_frame_bytes(Seed, &payload));
        rounds += 1;
        if Instant::now() >= next_sample {
            max_rss = max_rss.max(relay.rss_kib());
            next_sample = Instant::now() + Duration::from_millis(50);
        }
    }
    let stats = hostile
        .join()
        .unwrap_or_else(|_| panic!("the hostile thread failed (seed {seed:#x})"));
    max_rss = max_rss.max(relay.rss_kib());
    eprintln!(
        "seed {seed:#x}: {rounds} rounds, {to_bob} bytes to bob, {to_alice} to alice; \
         hostile {stats:?}; RSS baseline {baseline} KiB, max {max_rss} KiB"
    );

    assert!(relay.is_running(), "the relay died (seed {seed:#x})");
    assert!(
        stats.opened == TOTAL_CONNECTIONS,
        "only {} hostile connections opened (seed {seed:#x})",
        stats.opened
    );
    assert!(
        rounds >= 100,
        "the call made too little progress: {rounds} rounds (seed {seed:#x})"
    );
    assert!(
        max_rss < baseline + RSS_BOUND_KIB,
        "relay RSS {max_rss} KiB, over baseline {baseline} KiB + {RSS_BOUND_KIB} KiB (seed {seed:#x})"
    );
    let protocol_errors = relay
        .log_snapshot()
        .iter()
        .filter(|line| line.contains("protocol error"))
        .count();
    eprintln!("seed {seed:#x}: {protocol_errors} protocol errors logged");
    assert!(
        protocol_errors >= 50,
        "only {protocol_errors} protocol errors logged: the hostile input missed (seed {seed:#x})"
    );

    // The call is intact and ends cleanly; nothing else reached its parties.
    let end = encode_in(
        &ClientMessage::CallEnd {
            call_ref: q(&call_id),
        },
        Seed,
    );
    alice.send_raw(&end);
    alice.expect_end(&call_id);
    bob.expect_end(&call_id);
    bob.barrier();
    // A new client works.
    let mut carol = relay.client("carol", LengthPrefixed);
    carol.barrier();
    assert!(relay.is_running(), "the relay died (seed {seed:#x})");
}
