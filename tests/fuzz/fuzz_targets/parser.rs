//! Fuzz target: the frame parser must never panic, must consume only what
//! it reports, and must yield the same frames whatever the read boundaries
//! (the first input byte chooses where the input is split).
#![no_main]

use callrelay::protocol::Limits;
use callrelay::protocol::parser::{FrameParser, ParseContext, Parsed, SeedPhase};
use libfuzzer_sys::fuzz_target;

/// What one parse run produced (frames as debug text, bodies joined).
fn drive(input: &[u8], chunk: usize, phase_refs: &[Vec<u8>]) -> (Vec<String>, Option<String>) {
    let limits = Limits {
        max_user_id: 16,
        max_field: 64,
        max_text: 256,
        max_file: 4096,
        max_media: 4096,
    };
    let mut parser = FrameParser::new();
    let mut buffer = Vec::new();
    let mut user_id: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buffer.extend_from_slice(piece);
        loop {
            let phase = if phase_refs.is_empty() {
                SeedPhase::Normal
            } else {
                SeedPhase::MediaMode { end_refs: phase_refs }
            };
            let context = ParseContext { limits: &limits, user_id: &user_id, seed_phase: phase };
            let parsed = match parser.parse(&buffer, &context) {
                Ok(parsed) => parsed,
                Err(error) => return (out, Some(format!("{error}"))),
            };
            let consumed = match parsed {
                Parsed::NeedMore => break,
                Parsed::Frame { frame, consumed } => {
                    if let callrelay::protocol::frame::ClientFrame::Register { user, .. } = frame {
                        user_id = user.to_vec();
                    }
                    out.push(format!("{frame:?}"));
                    consumed
                }
                Parsed::Media { header, in_hand, .. } => header + in_hand,
                Parsed::Body { len, .. } => len,
                Parsed::Stale { consumed } => consumed,
            };
            assert!(consumed > 0 && consumed <= buffer.len(), "consumed {consumed} of {}", buffer.len());
            buffer.drain(..consumed);
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = drive(input, input.len(), &[]);
    // Framing decided by the first three bytes: only length-prefixed input
    // is boundary-independent (seed media is delimited by arrival).
    if input.starts_with(&[0, 0, 0]) {
        assert_eq!(whole, drive(input, usize::from(split) + 1, &[]));
    }
    // Media mode with plausible refs must not panic either.
    let _ = drive(input, usize::from(split % 7) + 1, &[vec![0, 0, 0, 0], vec![0xFF; 4], vec![0, 0, 0, 2, 0, 0x61]]);
});
