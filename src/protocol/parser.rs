//! The per-connection incremental parser of client input (PROTOCOL.md
//! sections 3, 4 and 7).
//!
//! [`FrameParser::peek`] looks at the unconsumed bytes of a connection's
//! read buffer and says what the next piece is ([`Parsed`]): a complete
//! frame, the start of a media frame, a chunk of a streamed body (FILE data
//! or a long length-prefixed media payload), a run of length-prefixed media
//! that may pass through unchanged, stale bytes to drop, or that it needs
//! more bytes. Peeking changes nothing: with the piece comes an [`Advance`]
//! (the bytes it takes and the parser state after it), which the caller
//! hands to [`FrameParser::commit`] once it has acted on the piece, or drops
//! if it decides to wait. Every claimed length is checked against [`Limits`]
//! before the parser waits for it, and nothing is allocated here.
//!
//! What the parser needs to know about the connection's call (the seed
//! continuation rule) arrives as plain bytes in [`SeedPhase`]; it knows
//! nothing of calls, sockets or buffers.

use std::fmt;

use super::frame::ClientFrame;
use super::qdatastream::{Cursor, FieldError, Short};
use super::{ErrorCode, Framing, Limits, MessageType};

/// A protocol error: the wire code and a short description for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// The ERROR code sent to the peer.
    pub code: ErrorCode,
    /// What was wrong, for the log and the ERROR detail.
    pub what: &'static str,
}

impl ProtocolError {
    fn new(code: ErrorCode, what: &'static str) -> ProtocolError {
        ProtocolError { code, what }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.what)
    }
}

/// What the parser found at the start of the unconsumed bytes.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The bytes are a strict prefix of the next piece: read more.
    NeedMore,
    /// A complete frame of `consumed` bytes. For FILE, only its header:
    /// the data follows as [`Parsed::Body`] pieces.
    Frame {
        /// The frame, borrowing the input.
        frame: ClientFrame<'a>,
        /// Bytes to consume.
        consumed: usize,
    },
    /// A media frame starts: `header` bytes to skip (type byte, length
    /// prefix; 0 for a seed continuation), then `in_hand` payload bytes of
    /// the `payload_len` the frame has. Consume `header + in_hand`; the rest
    /// of the payload, if any, follows as `Body` pieces.
    Media {
        /// Header bytes before the payload.
        header: usize,
        /// Payload bytes of the whole frame.
        payload_len: u32,
        /// Payload bytes present now (≤ `payload_len`).
        in_hand: usize,
    },
    /// The next `len` bytes belong to the body in progress; `last` when they
    /// complete it.
    Body {
        /// Which body.
        kind: BodyKind,
        /// Bytes to consume and forward.
        len: usize,
        /// True when this piece ends the body.
        last: bool,
    },
    /// Seed media still in flight after its call ended (the grace period):
    /// consume and drop.
    Stale {
        /// Bytes to drop.
        consumed: usize,
    },
    /// Length-prefixed media that a length-prefixed receiver must get
    /// exactly as it arrived: the rest of the media frame in progress,
    /// complete media frames, and the start of one more. Only offered when
    /// [`ParseContext::media_runs`] says the receiver takes runs.
    MediaRun(MediaRun),
}

/// Bytes of length-prefixed media that may pass through unchanged
/// ([`Parsed::MediaRun`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaRun {
    /// Frames that start in the run (the last may be incomplete).
    pub frames: u64,
    /// Bytes of the run, prefixes included.
    pub len: usize,
    /// Payload bytes of the frames that start in the run (whole frames,
    /// like the generic path counts them).
    pub payload: u64,
    /// Payload bytes of the run's last frame still to come (0 when the run
    /// ends at a frame boundary).
    pub rest: u64,
}

/// What committing a peeked piece does: the bytes it takes and the parser
/// state after it. Plain data, so the caller may act on the piece (and
/// borrow its connection mutably) before committing.
#[must_use = "an Advance does nothing until it is committed"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advance {
    consumed: usize,
    body: Option<BodyInProgress>,
    registered: bool,
}

impl Advance {
    /// Input bytes the piece takes.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

/// Which kind of streamed body a [`Parsed::Body`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// FILE data.
    File,
    /// The rest of a length-prefixed media payload.
    Media,
}

/// Where a seed connection stands with respect to media (PROTOCOL.md
/// section 4). Length-prefixed connections ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedPhase<'a> {
    /// Ordinary parsing.
    Normal,
    /// In an accepted call after sending media: bytes at a frame boundary
    /// are media continuation unless they begin with `6`, `7` or a complete
    /// CALL_END whose ref is one of `end_refs` (each the full wire encoding
    /// of a QString: the call id, the peer's id, empty, null).
    MediaMode {
        /// Wire encodings of the refs that end this call.
        end_refs: &'a [Vec<u8>],
    },
    /// The call ended less than the grace period ago: bytes that are not a
    /// complete well-formed frame, or that begin with `6`, are stale.
    Grace,
}

/// What the parser is told about the connection besides its bytes.
#[derive(Clone, Copy, Debug)]
pub struct ParseContext<'a> {
    /// Size limits.
    pub limits: &'a Limits,
    /// The registered user id's bytes (empty before registration).
    pub user_id: &'a [u8],
    /// The seed media phase.
    pub seed_phase: SeedPhase<'a>,
    /// The receiver of this connection's media takes length-prefixed runs
    /// as they arrived ([`Parsed::MediaRun`]); otherwise media comes one
    /// piece at a time.
    pub media_runs: bool,
}

/// A body being streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BodyInProgress {
    kind: BodyKind,
    remaining: u64,
}

/// The parser's state between calls: the framing once chosen, whether the
/// registration frame has been seen, and the body being streamed.
#[derive(Clone, Debug, Default)]
pub struct FrameParser {
    framing: Option<Framing>,
    registered: bool,
    body: Option<BodyInProgress>,
}

/// Parsing failed: wait for more bytes, or the input is bad.
enum Fail {
    NeedMore,
    Bad(ProtocolError),
}

impl From<ProtocolError> for Fail {
    fn from(error: ProtocolError) -> Fail {
        Fail::Bad(error)
    }
}

/// Maps a field read failure to a parse failure, naming the field.
fn field(short: Short, what: &'static str, too_long: &'static str) -> Fail {
    match short {
        Short::NeedMore => Fail::NeedMore,
        Short::Invalid(FieldError::OddLength) => {
            Fail::Bad(ProtocolError::new(ErrorCode::Malformed, what))
        }
        Short::Invalid(FieldError::TooLong) => {
            Fail::Bad(ProtocolError::new(ErrorCode::TooLarge, too_long))
        }
    }
}

/// Reads a QString field, naming it in errors.
macro_rules! qstring {
    ($cursor:expr, $limit:expr, $name:literal) => {
        $cursor.qstring($limit).map_err(|short| {
            field(
                short,
                concat!("odd QString length in ", $name),
                concat!($name, " over its limit"),
            )
        })?
    };
}

/// A frame fully parsed from the start of a slice.
enum Whole<'a> {
    Frame(ClientFrame<'a>, usize),
    /// Seed media: the payload is every byte after the type byte.
    SeedMedia,
}

impl FrameParser {
    /// A parser for a new connection.
    pub fn new() -> FrameParser {
        FrameParser::default()
    }

    /// The framing, once the first three bytes have chosen it.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Chooses the framing from the first three bytes, once (PROTOCOL.md
    /// section 3). `None` until three bytes have arrived.
    pub fn choose_framing(&mut self, input: &[u8]) -> Option<Framing> {
        if self.framing.is_none() {
            self.framing = match input.get(..3) {
                None => None,
                Some([0, 0, 0]) => Some(Framing::LengthPrefixed),
                Some(_) => Some(Framing::Seed),
            };
        }
        self.framing
    }

    /// True while a FILE or media body is being streamed.
    pub fn in_body(&self) -> bool {
        self.body.is_some()
    }

    /// The kind of body being streamed, if any.
    pub fn body_kind(&self) -> Option<BodyKind> {
        self.body.map(|body| body.kind)
    }

    /// Bytes of the body in progress not parsed yet (0 if none).
    pub fn body_remaining(&self) -> u64 {
        self.body.map_or(0, |body| body.remaining)
    }

    /// Says what the next piece of `input` (the unconsumed bytes) is,
    /// changing nothing. Commit the returned [`Advance`] once the piece is
    /// handled; a piece that is not committed is offered again.
    pub fn peek<'a>(
        &self,
        input: &'a [u8],
        context: &ParseContext<'_>,
    ) -> Result<(Parsed<'a>, Advance), ProtocolError> {
        let parsed = match self.peek_piece(input, context) {
            Ok(parsed) => parsed,
            Err(Fail::NeedMore) => Parsed::NeedMore,
            Err(Fail::Bad(error)) => return Err(error),
        };
        Ok((parsed, self.advance_for(&parsed)))
    }

    /// Moves past a peeked piece.
    pub fn commit(&mut self, advance: Advance) {
        self.body = advance.body;
        self.registered |= advance.registered;
    }

    /// Chooses the framing, peeks and commits in one call (for callers that
    /// always act on every piece: tests, fuzzing, the load tool).
    pub fn parse<'a>(
        &mut self,
        input: &'a [u8],
        context: &ParseContext<'_>,
    ) -> Result<Parsed<'a>, ProtocolError> {
        self.choose_framing(input);
        let (parsed, advance) = self.peek(input, context)?;
        self.commit(advance);
        Ok(parsed)
    }

    fn peek_piece<'a>(
        &self,
        input: &'a [u8],
        context: &ParseContext<'_>,
    ) -> Result<Parsed<'a>, Fail> {
        let Some(framing) = self.framing else {
            return Err(Fail::NeedMore);
        };
        if framing == Framing::LengthPrefixed
            && self.registered
            && context.media_runs
            && let Some(run) = self.media_run(input, context.limits)
        {
            return Ok(Parsed::MediaRun(run));
        }
        if let Some(body) = self.body {
            return Ok(continue_body(body, input.len()));
        }
        match (framing, self.registered) {
            (Framing::Seed, false) => parse_seed_registration(input, context.limits),
            (Framing::LengthPrefixed, false) => parse_framed_registration(input, context.limits),
            (Framing::Seed, true) => parse_seed(input, context),
            (Framing::LengthPrefixed, true) => parse_framed(input, context),
        }
    }

    /// The parser state after `parsed` (see [`Advance`]).
    fn advance_for(&self, parsed: &Parsed<'_>) -> Advance {
        let mut advance = Advance {
            consumed: 0,
            body: self.body,
            registered: false,
        };
        match *parsed {
            Parsed::NeedMore => {}
            Parsed::Frame { frame, consumed } => {
                advance.consumed = consumed;
                match frame {
                    ClientFrame::Register { .. } => advance.registered = true,
                    ClientFrame::FileStart { data, .. } => {
                        advance.body = body(BodyKind::File, u64::from(data.len));
                    }
                    _ => {}
                }
            }
            Parsed::Media {
                header,
                payload_len,
                in_hand,
            } => {
                advance.consumed = header + in_hand;
                let rest = u64::from(payload_len).saturating_sub(in_hand as u64);
                advance.body = body(BodyKind::Media, rest);
            }
            Parsed::Body { kind, len, last } => {
                advance.consumed = len;
                let remaining = self.body_remaining().saturating_sub(len as u64);
                advance.body = if last { None } else { body(kind, remaining) };
            }
            Parsed::Stale { consumed } => advance.consumed = consumed,
            Parsed::MediaRun(run) => {
                advance.consumed = run.len;
                advance.body = body(BodyKind::Media, run.rest);
            }
        }
        advance
    }

    /// The longest prefix of `input` made of the rest of the media frame in
    /// progress, complete media frames, and the start of one more media
    /// frame (its header in hand). `None` if that is nothing, or a FILE body
    /// is in progress. Frame headers go through [`framed_header`] and
    /// [`media_payload_len`], as in [`parse_framed`]: a header either path
    /// would refuse ends the run, and the next peek reports it.
    fn media_run(&self, input: &[u8], limits: &Limits) -> Option<MediaRun> {
        let mut run = MediaRun::default();
        let mut at = match self.body {
            None => 0usize,
            Some(BodyInProgress {
                kind: BodyKind::Media,
                remaining,
            }) => {
                // The frame in progress was counted when it started.
                let take = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                run.rest = remaining - take as u64;
                take
            }
            Some(_) => return None,
        };
        while run.rest == 0 {
            let Some(rest) = input.get(at..) else {
                break;
            };
            let Ok(header) = framed_header(rest) else {
                break;
            };
            if header.kind != MessageType::MediaData as u8 {
                break;
            }
            let Ok(payload) = media_payload_len(header.length, limits) else {
                break;
            };
            let in_hand = (rest.len() - FRAMED_HEADER).min(payload as usize);
            at += FRAMED_HEADER + in_hand;
            run.frames += 1;
            run.payload += u64::from(payload);
            run.rest = u64::from(payload) - in_hand as u64;
        }
        run.len = at;
        (run.len > 0).then_some(run)
    }
}

/// The body in progress of `length` more bytes (none if zero).
fn body(kind: BodyKind, length: u64) -> Option<BodyInProgress> {
    (length > 0).then_some(BodyInProgress {
        kind,
        remaining: length,
    })
}

/// The next piece of a body in progress, given `available` input bytes.
fn continue_body(body: BodyInProgress, available: usize) -> Parsed<'static> {
    if available == 0 {
        return Parsed::NeedMore;
    }
    let len = usize::try_from(body.remaining).map_or(available, |left| left.min(available));
    Parsed::Body {
        kind: body.kind,
        len,
        last: len as u64 == body.remaining,
    }
}

/// Bytes of a length-prefixed frame's prefix plus its type byte.
const FRAMED_HEADER: usize = 5;

/// The start of a length-prefixed frame.
struct FramedHeader {
    /// The prefix: type byte plus body.
    length: u32,
    /// The type byte.
    kind: u8,
}

/// Decodes a length-prefixed frame's prefix and type byte: the one decoder
/// of framed headers (media runs and single frames alike).
fn framed_header(input: &[u8]) -> Result<FramedHeader, Fail> {
    let mut cursor = Cursor::new(input);
    let length = cursor.u32().map_err(|_| Fail::NeedMore)?;
    if length == 0 {
        return Err(malformed("empty frame"));
    }
    let kind = cursor.u8().map_err(|_| Fail::NeedMore)?;
    Ok(FramedHeader { length, kind })
}

/// The payload length of a length-prefixed media frame, checked against its
/// limit.
fn media_payload_len(length: u32, limits: &Limits) -> Result<u32, Fail> {
    let payload_len = length.saturating_sub(1);
    if payload_len > limits.max_media {
        return Err(too_large("media payload over its limit"));
    }
    Ok(payload_len)
}

fn parse_seed<'a>(input: &'a [u8], context: &ParseContext<'_>) -> Result<Parsed<'a>, Fail> {
    let Some(&first) = input.first() else {
        return Err(Fail::NeedMore);
    };
    match context.seed_phase {
        SeedPhase::Normal => {}
        SeedPhase::MediaMode { end_refs } => {
            if let Some(parsed) = media_mode_boundary(input, first, end_refs) {
                return parsed;
            }
        }
        SeedPhase::Grace => {
            return Ok(parse_seed_whole(input, context).unwrap_or(Parsed::Stale {
                consumed: input.len(),
            }));
        }
    }
    parse_seed_whole(input, context)
}

/// Parses one seed frame from the start of `input` (no media-mode rule).
/// Grace treats every failure here as stale bytes.
fn parse_seed_whole<'a>(input: &'a [u8], context: &ParseContext<'_>) -> Result<Parsed<'a>, Fail> {
    match parse_body(input, context, Framing::Seed)? {
        Whole::SeedMedia if context.seed_phase == SeedPhase::Grace => Ok(Parsed::Stale {
            consumed: input.len(),
        }),
        Whole::SeedMedia => {
            let in_hand = input.len() - 1;
            Ok(Parsed::Media {
                header: 1,
                payload_len: u32::try_from(in_hand).unwrap_or(u32::MAX),
                in_hand,
            })
        }
        Whole::Frame(frame, consumed) => Ok(Parsed::Frame { frame, consumed }),
    }
}

fn parse_framed<'a>(input: &'a [u8], context: &ParseContext<'_>) -> Result<Parsed<'a>, Fail> {
    let FramedHeader { length, kind } = framed_header(input)?;
    let limits = context.limits;
    match MessageType::from_client_byte(kind) {
        None => Err(unknown_type()),
        Some(MessageType::MediaData) => {
            let payload_len = media_payload_len(length, limits)?;
            let in_hand = (input.len() - FRAMED_HEADER).min(payload_len as usize);
            Ok(Parsed::Media {
                header: FRAMED_HEADER,
                payload_len,
                in_hand,
            })
        }
        Some(MessageType::File) => parse_framed_file(input, length, context),
        Some(other) => {
            if length as usize > frame_bound(other, limits) {
                return Err(too_large("frame over its limit"));
            }
            let body = input.get(4..4 + length as usize).ok_or(Fail::NeedMore)?;
            match parse_body(body, context, Framing::LengthPrefixed) {
                Ok(Whole::Frame(frame, used)) if used == body.len() => Ok(Parsed::Frame {
                    frame,
                    consumed: 4 + body.len(),
                }),
                Ok(_) => Err(malformed("trailing bytes after the frame's fields")),
                Err(Fail::NeedMore) => Err(malformed("frame shorter than its fields")),
                Err(bad) => Err(bad),
            }
        }
    }
}

fn parse_framed_file<'a>(
    input: &'a [u8],
    length: u32,
    context: &ParseContext<'_>,
) -> Result<Parsed<'a>, Fail> {
    let frame_end = 4usize.saturating_add(length as usize);
    let in_frame = input.get(4..frame_end.min(input.len())).unwrap_or_default();
    let complete = input.len() >= frame_end;
    match parse_body(in_frame, context, Framing::LengthPrefixed) {
        Ok(Whole::Frame(frame @ ClientFrame::FileStart { data, .. }, used)) => {
            if used as u64 + u64::from(data.len) != u64::from(length) {
                return Err(malformed(
                    "FILE frame length disagrees with its data length",
                ));
            }
            Ok(Parsed::Frame {
                frame,
                consumed: 4 + used,
            })
        }
        Ok(_) => Err(malformed("FILE frame did not decode")),
        Err(Fail::NeedMore) if complete => Err(malformed("frame shorter than its fields")),
        Err(failure) => Err(failure),
    }
}

/// At a seed frame boundary in media mode: `Some` decides (media, wait, or a
/// CALL_END of this call), `None` lets ordinary parsing go on (`6`, `7`).
fn media_mode_boundary<'a>(
    input: &'a [u8],
    first: u8,
    end_refs: &[Vec<u8>],
) -> Option<Result<Parsed<'a>, Fail>> {
    if first == MessageType::MediaData as u8 || first == MessageType::Heartbeat as u8 {
        return None;
    }
    if first == MessageType::CallEnd as u8 {
        let after = input.get(1..).unwrap_or_default();
        let mut may_complete = false;
        for candidate in end_refs {
            if after.starts_with(candidate)
                && let Ok(call_ref) = Cursor::new(after).qstring(usize::MAX)
            {
                return Some(Ok(Parsed::Frame {
                    frame: ClientFrame::CallEnd { call_ref },
                    consumed: 1 + candidate.len(),
                }));
            }
            may_complete |= candidate.starts_with(after);
        }
        if may_complete {
            return Some(Err(Fail::NeedMore));
        }
    }
    let in_hand = input.len();
    Some(Ok(Parsed::Media {
        header: 0,
        payload_len: u32::try_from(in_hand).unwrap_or(u32::MAX),
        in_hand,
    }))
}

fn malformed(what: &'static str) -> Fail {
    Fail::Bad(ProtocolError::new(ErrorCode::Malformed, what))
}

fn too_large(what: &'static str) -> Fail {
    Fail::Bad(ProtocolError::new(ErrorCode::TooLarge, what))
}

fn unknown_type() -> Fail {
    Fail::Bad(ProtocolError::new(
        ErrorCode::UnknownType,
        "unknown message type",
    ))
}

fn bad_user_id(what: &'static str) -> Fail {
    Fail::Bad(ProtocolError::new(ErrorCode::BadUserId, what))
}

/// The largest length-prefixed frame of a self-delimited type.
fn frame_bound(kind: MessageType, limits: &Limits) -> usize {
    let field = 4 + limits.max_field;
    match kind {
        MessageType::Text => 1 + field + 4 + limits.max_text,
        MessageType::CallRequest => 1 + field + 1,
        MessageType::CallReject => 1 + 2 * field,
        MessageType::Heartbeat => 1 + 2 + limits.max_registration.max(limits.max_user_id),
        _ => 1 + field,
    }
}

/// Checks a registration id length before waiting for its bytes.
fn check_id_length(length: u16, limits: &Limits) -> Result<usize, Fail> {
    match length as usize {
        0 => Err(bad_user_id("empty user id")),
        n if n > limits.max_registration.max(limits.max_user_id) => {
            Err(bad_user_id("user id too long"))
        }
        n => Ok(n),
    }
}

fn parse_seed_registration<'a>(input: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, Fail> {
    let mut cursor = Cursor::new(input);
    let kind = cursor.u8().map_err(|_| Fail::NeedMore)?;
    let length = cursor.u16().map_err(|_| Fail::NeedMore)?;
    let length = check_id_length(length, limits)?;
    let user = cursor.bytes(length).map_err(|_| Fail::NeedMore)?;
    Ok(Parsed::Frame {
        frame: ClientFrame::Register { kind, user },
        consumed: cursor.position(),
    })
}

fn parse_framed_registration<'a>(input: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, Fail> {
    let mut cursor = Cursor::new(input);
    let frame_length = cursor.u32().map_err(|_| Fail::NeedMore)?;
    if frame_length < 3 {
        return Err(malformed("registration frame shorter than its fields"));
    }
    if frame_length as usize > 3 + limits.max_registration.max(limits.max_user_id) {
        return Err(bad_user_id("user id too long"));
    }
    let kind = cursor.u8().map_err(|_| Fail::NeedMore)?;
    let length = cursor.u16().map_err(|_| Fail::NeedMore)?;
    let length = check_id_length(length, limits)?;
    if frame_length as usize != 3 + length {
        return Err(malformed(
            "registration frame length disagrees with the id length",
        ));
    }
    let user = cursor.bytes(length).map_err(|_| Fail::NeedMore)?;
    Ok(Parsed::Frame {
        frame: ClientFrame::Register { kind, user },
        consumed: cursor.position(),
    })
}

/// Parses the type byte and fields of one frame at the start of `input`
/// (for length-prefixed framing, `input` is the frame without its prefix).
fn parse_body<'a>(
    input: &'a [u8],
    context: &ParseContext<'_>,
    framing: Framing,
) -> Result<Whole<'a>, Fail> {
    let limits = context.limits;
    let mut cursor = Cursor::new(input);
    let kind = cursor.u8().map_err(|_| Fail::NeedMore)?;
    let field = limits.max_field;
    let frame = match MessageType::from_client_byte(kind).ok_or_else(unknown_type)? {
        MessageType::Text => ClientFrame::Text {
            to: qstring!(cursor, field, "TEXT recipient"),
            text: qstring!(cursor, limits.max_text, "TEXT text"),
        },
        MessageType::File => {
            let to = qstring!(cursor, field, "FILE recipient");
            let name = qstring!(cursor, field, "FILE name");
            let data = cursor
                .qbytearray_len(limits.max_file)
                .map_err(field_error_file)?;
            ClientFrame::FileStart { to, name, data }
        }
        MessageType::CallRequest => ClientFrame::CallRequest {
            callee: qstring!(cursor, field, "CALL_REQUEST callee"),
            video: cursor.u8().map_err(|_| Fail::NeedMore)?,
        },
        MessageType::CallAccept => ClientFrame::CallAccept {
            call_ref: qstring!(cursor, field, "CALL_ACCEPT ref"),
        },
        MessageType::CallReject => ClientFrame::CallReject {
            call_ref: qstring!(cursor, field, "CALL_REJECT ref"),
            reason: qstring!(cursor, field, "CALL_REJECT reason"),
        },
        MessageType::CallEnd => ClientFrame::CallEnd {
            call_ref: qstring!(cursor, field, "CALL_END ref"),
        },
        MessageType::MediaData => return Ok(Whole::SeedMedia),
        MessageType::Heartbeat => {
            parse_heartbeat_suffix(&mut cursor, context.user_id, framing)?;
            ClientFrame::Heartbeat
        }
        MessageType::Error => return Err(unknown_type()),
    };
    Ok(Whole::Frame(frame, cursor.position()))
}

fn field_error_file(short: Short) -> Fail {
    field(short, "FILE data length", "FILE data over its limit")
}

/// After a HEARTBEAT's type byte: consumes the registration suffix if the
/// next two bytes announce the registered id's length (PROTOCOL.md 3).
fn parse_heartbeat_suffix(
    cursor: &mut Cursor<'_>,
    user_id: &[u8],
    framing: Framing,
) -> Result<(), Fail> {
    if framing == Framing::LengthPrefixed && cursor.remaining() == 0 {
        return Ok(());
    }
    let mut lookahead = *cursor;
    let length = lookahead.u16().map_err(|_| match framing {
        Framing::Seed => Fail::NeedMore,
        Framing::LengthPrefixed => malformed("heartbeat body is not a registration suffix"),
    })?;
    if length as usize != user_id.len() || user_id.is_empty() {
        return match framing {
            Framing::Seed => Ok(()),
            Framing::LengthPrefixed => {
                Err(malformed("heartbeat body is not a registration suffix"))
            }
        };
    }
    let repeated = lookahead.bytes(user_id.len()).map_err(|_| Fail::NeedMore)?;
    if repeated != user_id {
        return Err(malformed("heartbeat suffix names another user id"));
    }
    *cursor = lookahead;
    Ok(())
}
