//! Fuzz target: the frame parser must never panic, must consume only what
//! it reports, and must yield the same frames and the same body bytes
//! whatever the read boundaries and whether media comes as runs.
//!
//! Input layout: `[split] [n] [n control bytes] [input...]`. `split` chooses
//! where the input is cut into reads; control byte `k % n` decides whether
//! the receiver takes media runs at step `k` (bit 0) and, in the media-mode
//! drive, the seed phase (bits 1-2). `n = 0` means never runs.
//!
//! Every step of the peek drives checks the peek/commit contract: peeking
//! twice gives the same answer, an uncommitted peek (even one with the
//! other `media_runs`) changes nothing, the [`Advance`] consumes exactly
//! the bytes the piece reports, and a [`Parsed::MediaRun`] is exactly the
//! media frames it claims (decoded independently here), is offered only
//! when allowed, and is the longest such prefix. The reference drive uses
//! `FrameParser::parse` with runs off; the others must match it.
#![no_main]

use callrelay::protocol::frame::ClientFrame;
use callrelay::protocol::parser::{
    BodyKind, FrameParser, MediaRun, ParseContext, Parsed, SeedPhase,
};
use callrelay::protocol::{Framing, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_user_id: 16,
    max_registration: 16,
    max_field: 64,
    max_text: 256,
    max_file: 4096,
    max_media: 4096,
};

/// What a drive produced, normalised so that read boundaries and runs do
/// not matter: frames in order, consecutive media payload bytes merged
/// (with the number of media frames that started in them), FILE data
/// merged per FILE.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    Frame(String),
    Media { frames: u64, payload: Vec<u8> },
    File(Vec<u8>),
    Stale(usize),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    tokens: Vec<Token>,
    error: Option<String>,
}

impl Outcome {
    fn media(&mut self, frames: u64, bytes: &[u8]) {
        if let Some(Token::Media { frames: f, payload }) = self.tokens.last_mut() {
            *f += frames;
            payload.extend_from_slice(bytes);
        } else {
            self.tokens.push(Token::Media { frames, payload: bytes.to_vec() });
        }
    }

    fn file(&mut self, bytes: &[u8]) {
        if let Some(Token::File(data)) = self.tokens.last_mut() {
            data.extend_from_slice(bytes);
        } else {
            self.tokens.push(Token::File(bytes.to_vec()));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `FrameParser::parse`, runs never offered.
    Reference,
    /// choose_framing + checked peeks + commit, runs from the control bytes.
    Peek,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phases {
    Normal,
    /// Seed phase per step from the control bytes.
    Mixed,
}

struct Control<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl Control<'_> {
    fn next(&mut self) -> u8 {
        let byte = if self.bytes.is_empty() { 0 } else { self.bytes[self.step % self.bytes.len()] };
        self.step += 1;
        byte
    }
}

/// The state the parser shows from outside.
fn state(parser: &FrameParser) -> String {
    format!("{parser:?}")
}

/// Decodes a run's bytes independently and checks the run's claims; returns
/// the payload bytes it carries.
fn check_run(run: MediaRun, buffer: &[u8], parser: &FrameParser) -> Vec<u8> {
    assert!(run.len > 0 && run.len <= buffer.len(), "run of {} bytes of {}", run.len, buffer.len());
    let bytes = &buffer[..run.len];
    let mut payload = Vec::new();
    let mut rest = match parser.body_kind() {
        None => 0,
        Some(BodyKind::Media) => parser.body_remaining(),
        Some(BodyKind::File) => panic!("a media run offered inside a FILE body"),
    };
    let take = usize::try_from(rest).map_or(bytes.len(), |r| r.min(bytes.len()));
    payload.extend_from_slice(&bytes[..take]);
    rest -= take as u64;
    let (mut at, mut frames, mut total) = (take, 0u64, 0u64);
    while rest == 0 && at < run.len {
        assert!(at + 5 <= run.len, "run ends inside a frame header");
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert!(length >= 1, "run includes an empty frame");
        assert_eq!(bytes[at + 4], 6, "run includes a non-media frame");
        let payload_len = length - 1;
        assert!(payload_len <= LIMITS.max_media, "run includes media over the limit");
        at += 5;
        let in_hand = (payload_len as usize).min(run.len - at);
        payload.extend_from_slice(&bytes[at..at + in_hand]);
        at += in_hand;
        frames += 1;
        total += u64::from(payload_len);
        rest = u64::from(payload_len) - in_hand as u64;
    }
    assert_eq!(at, run.len, "run length disagrees with its frames: {run:?}");
    assert_eq!(frames, run.frames, "run frame count: {run:?}");
    assert_eq!(total, run.payload, "run payload count: {run:?}");
    assert_eq!(rest, run.rest, "run rest: {run:?}");
    if run.rest > 0 {
        assert_eq!(run.len, buffer.len(), "a run ending mid-frame must take all input");
    } else if let Some(next) = buffer.get(run.len..run.len + 5) {
        // The longest prefix: the next frame is not one a run could take.
        let length = u32::from_be_bytes(next[..4].try_into().unwrap());
        assert!(
            length == 0 || next[4] != 6 || length - 1 > LIMITS.max_media,
            "run {run:?} stops before a valid media frame"
        );
    }
    payload
}

fn drive(input: &[u8], chunk: usize, control: &[u8], mode: Mode, phases: Phases) -> Outcome {
    let refs = [vec![0, 0, 0, 0], vec![0xFF; 4], vec![0, 0, 0, 2, 0, 0x61]];
    let mut control = Control { bytes: control, step: 0 };
    let mut parser = FrameParser::new();
    let mut buffer = Vec::new();
    let mut user_id: Vec<u8> = Vec::new();
    let mut out = Outcome { tokens: Vec::new(), error: None };
    for piece in input.chunks(chunk.max(1)) {
        buffer.extend_from_slice(piece);
        loop {
            let byte = if mode == Mode::Peek { control.next() } else { 0 };
            let runs = byte & 1 == 1;
            let phase = match (phases, (byte >> 1) % 3) {
                (Phases::Normal, _) | (Phases::Mixed, 0) => SeedPhase::Normal,
                (Phases::Mixed, 1) => SeedPhase::MediaMode { end_refs: &refs },
                (Phases::Mixed, _) => SeedPhase::Grace,
            };
            let context =
                ParseContext { limits: &LIMITS, user_id: &user_id, seed_phase: phase, media_runs: runs };
            let before_remaining = parser.body_remaining();
            let result = match mode {
                Mode::Reference => parser.parse(&buffer, &context).map(|parsed| (parsed, None)),
                Mode::Peek => {
                    parser.choose_framing(&buffer);
                    let before = state(&parser);
                    let first = parser.peek(&buffer, &context);
                    assert_eq!(state(&parser), before, "peek changed the parser");
                    assert_eq!(parser.peek(&buffer, &context), first, "peek twice differs");
                    // An uncommitted peek, even asking about runs the other
                    // way, leaves the parser as it was.
                    let other = ParseContext { media_runs: !runs, ..context };
                    let _ = parser.peek(&buffer, &other);
                    assert_eq!(state(&parser), before, "uncommitted peek changed the parser");
                    assert_eq!(parser.peek(&buffer, &context), first, "peek after an uncommitted peek differs");
                    first.map(|(parsed, advance)| (parsed, Some(advance)))
                }
            };
            let (parsed, advance) = match result {
                Ok(peeked) => peeked,
                Err(error) => {
                    out.error = Some(format!("{error}"));
                    return out;
                }
            };
            let consumed = match parsed {
                Parsed::NeedMore => 0,
                Parsed::Frame { frame, consumed } => {
                    if let ClientFrame::Register { user, .. } = frame {
                        user_id = user.to_vec();
                    }
                    out.tokens.push(Token::Frame(format!("{frame:?}")));
                    consumed
                }
                Parsed::Media { header, in_hand, payload_len } => {
                    assert!(in_hand as u64 <= u64::from(payload_len));
                    out.media(1, &buffer[header..header + in_hand]);
                    header + in_hand
                }
                Parsed::Body { kind, len, last } => {
                    assert!(len > 0 && len as u64 <= before_remaining, "Body beyond the body");
                    assert_eq!(last, len as u64 == before_remaining, "Body last flag");
                    match kind {
                        BodyKind::Media => out.media(0, &buffer[..len]),
                        BodyKind::File => out.file(&buffer[..len]),
                    }
                    len
                }
                Parsed::Stale { consumed } => {
                    out.tokens.push(Token::Stale(consumed));
                    consumed
                }
                Parsed::MediaRun(run) => {
                    assert!(
                        mode == Mode::Peek
                            && runs
                            && parser.framing() == Some(Framing::LengthPrefixed)
                            && !user_id.is_empty(),
                        "a media run offered when not allowed"
                    );
                    let payload = check_run(run, &buffer, &parser);
                    out.media(run.frames, &payload);
                    run.len
                }
            };
            if let Some(advance) = advance {
                assert_eq!(advance.consumed(), consumed, "Advance disagrees with {parsed:?}");
                parser.commit(advance);
                // The body state after the piece is what the piece said.
                match parsed {
                    Parsed::Media { payload_len, in_hand, .. } => {
                        assert_eq!(parser.body_remaining(), u64::from(payload_len) - in_hand as u64);
                    }
                    Parsed::MediaRun(run) => {
                        assert_eq!(parser.body_remaining(), run.rest);
                        assert_eq!(parser.in_body(), run.rest > 0);
                    }
                    Parsed::Body { len, last, .. } => {
                        assert_eq!(parser.body_remaining(), before_remaining - len as u64);
                        assert_eq!(parser.in_body(), !last);
                    }
                    _ => {}
                }
            }
            if consumed == 0 {
                assert_eq!(parsed, Parsed::NeedMore, "a piece that consumes nothing");
                break;
            }
            assert!(consumed <= buffer.len(), "consumed {consumed} of {}", buffer.len());
            buffer.drain(..consumed);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (control, input) = match rest.split_first() {
        Some((&n, tail)) => tail.split_at(usize::from(n).min(tail.len())),
        None => (&[][..], rest),
    };
    let whole = input.len();
    let reference = drive(input, whole, &[], Mode::Reference, Phases::Normal);
    // Same reads, runs as the control bytes say: the same frames and bytes.
    assert_eq!(drive(input, whole, control, Mode::Peek, Phases::Normal), reference);
    // Framing decided by the first three bytes: only length-prefixed input
    // is boundary-independent (seed media is delimited by arrival).
    if input.starts_with(&[0, 0, 0]) {
        assert_eq!(drive(input, usize::from(split) + 1, control, Mode::Peek, Phases::Normal), reference);
    }
    // Every seed phase, mixed step by step, must not panic either.
    let _ = drive(input, usize::from(split % 7) + 1, control, Mode::Peek, Phases::Mixed);
});
