//! The codec without sockets: golden byte vectors for every message type in
//! both directions and both framings, and a property test that the
//! incremental parser yields the same frames whatever the read boundaries.
//!
//! How the golden vectors were derived: by hand from PROTOCOL.md sections 1
//! and 2 (QDataStream `Qt_5_9`: `quint8` one byte; `quint16`/`quint32`
//! big-endian; `QString` = `quint32` byte length + UTF-16BE, null =
//! `FF FF FF FF`; `QByteArray` = `quint32` length + bytes), writing each
//! field's bytes out in the order the guide's `operator<<` calls appear.
//! Length-prefixed vectors add `quint32 n` where n counts the type byte and
//! the body. Example: `"bob"` is `00 00 00 06 | 00 62 00 6F 00 62`.

use callrelay::ids::{CallId, UserId};
use callrelay::protocol::frame::{
    ClientFrame, ClientMessage, ServerFrame, ServerMessage, decode_server, encode_client,
    encode_server,
};
use callrelay::protocol::parser::{FrameParser, ParseContext, Parsed, SeedPhase};
use callrelay::protocol::qdatastream::{ByteArrayLen, QString};
use callrelay::protocol::{ErrorCode, Framing, Limits};
use proptest::prelude::*;

fn q(text: &str) -> QString {
    QString::from_str(text)
}

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

fn client_bytes(message: &ClientMessage, framing: Framing) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client(message, framing, &mut out);
    out
}

fn server_bytes(frame: &ServerFrame, framing: Framing) -> Vec<u8> {
    let mut out = Vec::new();
    encode_server(frame, framing, &mut out);
    out
}

const BOB: &str = "00 00 00 06 00 62 00 6F 00 62";
const HI: &str = "00 00 00 04 00 68 00 69";
const ALICE: &str = "00 00 00 0A 00 61 00 6C 00 69 00 63 00 65";
/// "11111111-2222-4333-8444-555555555555" as a QString (72 bytes of UTF-16BE).
const CALL_ID_TEXT: &str = "11111111-2222-4333-8444-555555555555";

fn call_id() -> CallId {
    // from_random sets the version and variant nibbles: 4 and 8.
    let id = CallId::from_random([
        0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x43, 0x33, 0x84, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55,
        0x55,
    ]);
    assert_eq!(id.as_str(), CALL_ID_TEXT);
    id
}

fn call_id_qstring_hex() -> String {
    let mut text = String::from("00 00 00 48");
    for unit in CALL_ID_TEXT.encode_utf16() {
        text.push_str(&format!(" {:02X} {:02X}", unit >> 8, unit & 0xFF));
    }
    text
}

fn user(name: &str) -> UserId {
    UserId::from_utf8(name.as_bytes(), 128).expect("valid id")
}

#[test]
fn client_messages_golden_seed() {
    let cases: Vec<(ClientMessage, String)> = vec![
        (
            ClientMessage::Register {
                kind: 7,
                user: "alice".into(),
            },
            "07 00 05 61 6C 69 63 65".into(),
        ),
        (
            ClientMessage::Text {
                to: q("bob"),
                text: q("hi"),
            },
            format!("00 {BOB} {HI}"),
        ),
        (
            ClientMessage::File {
                to: q("bob"),
                name: q("hi"),
                data: vec![0xDE, 0xAD],
            },
            format!("01 {BOB} {HI} 00 00 00 02 DE AD"),
        ),
        (
            ClientMessage::CallRequest {
                callee: q("bob"),
                video: 1,
            },
            format!("02 {BOB} 01"),
        ),
        (
            ClientMessage::CallAccept { call_ref: q("bob") },
            format!("03 {BOB}"),
        ),
        (
            ClientMessage::CallReject {
                call_ref: q("bob"),
                reason: q("hi"),
            },
            format!("04 {BOB} {HI}"),
        ),
        (
            ClientMessage::CallEnd {
                call_ref: QString::null(),
            },
            "05 FF FF FF FF".into(),
        ),
        (
            ClientMessage::Media {
                payload: vec![1, 2, 3],
            },
            "06 01 02 03".into(),
        ),
        (ClientMessage::Heartbeat { suffix: None }, "07".into()),
        (
            ClientMessage::Heartbeat {
                suffix: Some("alice".into()),
            },
            "07 00 05 61 6C 69 63 65".into(),
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(
            client_bytes(&message, Framing::Seed),
            hex(&expected),
            "{message:?}"
        );
        let framed = client_bytes(&message, Framing::LengthPrefixed);
        let body = hex(&expected);
        let mut expected_framed = (body.len() as u32).to_be_bytes().to_vec();
        expected_framed.extend_from_slice(&body);
        assert_eq!(framed, expected_framed, "{message:?} length-prefixed");
    }
}

#[test]
fn client_messages_parse_to_the_frames_they_encode() {
    let limits = Limits::default();
    for framing in [Framing::Seed, Framing::LengthPrefixed] {
        let mut input = client_bytes(
            &ClientMessage::Register {
                kind: 7,
                user: "alice".into(),
            },
            framing,
        );
        input.extend(client_bytes(
            &ClientMessage::CallReject {
                call_ref: q("bob"),
                reason: QString::null(),
            },
            framing,
        ));
        let mut parser = FrameParser::new();
        let context = ParseContext {
            limits: &limits,
            user_id: b"alice",
            seed_phase: SeedPhase::Normal,
            media_runs: false,
        };
        let Ok(Parsed::Frame { frame, consumed }) = parser.parse(&input, &context) else {
            panic!("registration parses");
        };
        assert_eq!(
            frame,
            ClientFrame::Register {
                kind: 7,
                user: b"alice"
            }
        );
        let Ok(Parsed::Frame { frame, .. }) = parser.parse(&input[consumed..], &context) else {
            panic!("reject parses");
        };
        let ClientFrame::CallReject { call_ref, reason } = frame else {
            panic!("a CALL_REJECT, got {frame:?}");
        };
        assert_eq!(call_ref.to_string_strict().as_deref(), Some("bob"));
        assert!(reason.null);
    }
}

#[test]
fn server_messages_golden_both_framings() {
    let id = call_id_qstring_hex();
    let cases: Vec<(ServerFrame, String, ServerMessage)> = vec![
        (
            ServerFrame::Text {
                from: user("alice"),
                text: q("hi"),
            },
            format!("00 {ALICE} {HI}"),
            ServerMessage::Text {
                from: q("alice"),
                text: q("hi"),
            },
        ),
        (
            ServerFrame::CallRequest {
                call_id: call_id(),
                caller: user("alice"),
                video: 1,
            },
            format!("02 {id} {ALICE} 01"),
            ServerMessage::CallRequest {
                call_id: CALL_ID_TEXT.into(),
                caller: "alice".into(),
                video: 1,
            },
        ),
        (
            ServerFrame::CallAccept { call_id: call_id() },
            format!("03 {id}"),
            ServerMessage::CallAccept {
                call_id: CALL_ID_TEXT.into(),
            },
        ),
        (
            ServerFrame::CallReject {
                call_id: call_id(),
                reason: q("hi"),
            },
            format!("04 {id} {HI}"),
            ServerMessage::CallReject {
                call_id: CALL_ID_TEXT.into(),
                reason: "hi".into(),
            },
        ),
        (
            ServerFrame::CallEnd { call_id: call_id() },
            format!("05 {id}"),
            ServerMessage::CallEnd {
                call_id: CALL_ID_TEXT.into(),
            },
        ),
        (
            ServerFrame::Heartbeat,
            "07".into(),
            ServerMessage::Heartbeat,
        ),
        (
            ServerFrame::Error {
                code: ErrorCode::Offline,
                detail: "hi".into(),
            },
            format!("20 00 00 00 0E 00 6F 00 66 00 66 00 6C 00 69 00 6E 00 65 {HI}"),
            ServerMessage::Error {
                code: "offline".into(),
                detail: "hi".into(),
            },
        ),
    ];
    for (frame, expected, decoded) in cases {
        let body = hex(&expected);
        assert_eq!(server_bytes(&frame, Framing::Seed), body, "{frame:?}");
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        assert_eq!(
            server_bytes(&frame, Framing::LengthPrefixed),
            framed,
            "{frame:?}"
        );
        assert_eq!(
            decode_server(&framed, Framing::LengthPrefixed),
            Ok((decoded.clone(), framed.len()))
        );
        assert_eq!(
            decode_server(&body, Framing::Seed),
            Ok((decoded, body.len()))
        );
    }
}

#[test]
fn server_headers_of_streamed_bodies_count_the_body_in_the_prefix() {
    // FILE: the header is written first, the data streamed after it; the
    // length prefix must count the data too.
    let header = ServerFrame::FileHeader {
        from: user("alice"),
        name: q("hi"),
        data: ByteArrayLen {
            len: 2,
            null: false,
        },
    };
    assert_eq!(
        server_bytes(&header, Framing::Seed),
        hex(&format!("01 {ALICE} {HI} 00 00 00 02"))
    );
    let framed = server_bytes(&header, Framing::LengthPrefixed);
    let body_len = 1 + 14 + 8 + 4 + 2;
    assert_eq!(framed[..4], (body_len as u32).to_be_bytes());
    // Media: `6`, prefixed by 1 + payload length.
    let media = ServerFrame::MediaHeader { payload_len: 3 };
    assert_eq!(server_bytes(&media, Framing::Seed), [6]);
    assert_eq!(
        server_bytes(&media, Framing::LengthPrefixed),
        [0, 0, 0, 4, 6]
    );
}

/// What a parse run produced, with streamed bodies joined, so runs that
/// saw different read boundaries can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame(String),
    Media(Vec<u8>),
    FileData(Vec<u8>),
    Error(ErrorCode),
}

/// Feeds `chunks` one after another, as a server reading a socket would:
/// append, parse until NeedMore, consume what each result reports.
fn drive(chunks: &[&[u8]]) -> Vec<Event> {
    let limits = Limits::default();
    let mut parser = FrameParser::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut user_id: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut body: Option<(bool, Vec<u8>)> = None;
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        loop {
            let context = ParseContext {
                limits: &limits,
                user_id: &user_id,
                seed_phase: SeedPhase::Normal,
                media_runs: false,
            };
            let parsed = match parser.parse(&buffer, &context) {
                Ok(parsed) => parsed,
                Err(error) => {
                    events.push(Event::Error(error.code));
                    return events;
                }
            };
            let consumed = match parsed {
                Parsed::NeedMore => break,
                Parsed::Frame { frame, consumed } => {
                    if let ClientFrame::Register { user, .. } = frame {
                        user_id = user.to_vec();
                    }
                    if let ClientFrame::FileStart { data, .. } = frame
                        && data.len > 0
                    {
                        body = Some((false, Vec::new()));
                    }
                    events.push(Event::Frame(format!("{frame:?}")));
                    consumed
                }
                Parsed::Media {
                    header,
                    payload_len,
                    in_hand,
                } => {
                    let payload = buffer[header..header + in_hand].to_vec();
                    if in_hand as u32 == payload_len {
                        events.push(Event::Media(payload));
                    } else {
                        body = Some((true, payload));
                    }
                    header + in_hand
                }
                Parsed::Body { len, last, .. } => {
                    let (is_media, data) = body.as_mut().expect("a body is in progress");
                    data.extend_from_slice(&buffer[..len]);
                    if last {
                        let (is_media, data) = (*is_media, std::mem::take(data));
                        events.push(if is_media {
                            Event::Media(data)
                        } else {
                            Event::FileData(data)
                        });
                        body = None;
                    }
                    len
                }
                Parsed::Stale { consumed } => consumed,
                Parsed::MediaRun(_) => unreachable!("runs are off in this context"),
            };
            buffer.drain(..consumed);
        }
    }
    events
}

/// Any client message except media (seed media is delimited by arrival,
/// so its frames legitimately depend on read boundaries).
fn message_strategy(with_media: bool) -> impl Strategy<Value = ClientMessage> {
    let text = prop_oneof![Just(String::new()), "[a-z]{1,12}", "[\\p{Han}😀a-z]{1,8}",];
    let qtext = text.prop_map(|text| q(&text));
    let media = if with_media {
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|payload| ClientMessage::Media { payload })
            .boxed()
    } else {
        Just(ClientMessage::Heartbeat { suffix: None }).boxed()
    };
    prop_oneof![
        (qtext.clone(), qtext.clone()).prop_map(|(to, text)| ClientMessage::Text { to, text }),
        (
            qtext.clone(),
            qtext.clone(),
            proptest::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(to, name, data)| ClientMessage::File { to, name, data }),
        (qtext.clone(), any::<u8>())
            .prop_map(|(callee, video)| ClientMessage::CallRequest { callee, video }),
        qtext
            .clone()
            .prop_map(|call_ref| ClientMessage::CallAccept { call_ref }),
        (qtext.clone(), qtext.clone())
            .prop_map(|(call_ref, reason)| ClientMessage::CallReject { call_ref, reason }),
        Just(ClientMessage::CallEnd {
            call_ref: QString::null()
        }),
        Just(ClientMessage::Heartbeat {
            suffix: Some("alice".into())
        }),
        media,
    ]
}

/// Splits `input` at the given (sorted, deduplicated) offsets.
fn split_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&input[start..point]);
        start = point;
    }
    chunks.push(&input[start..]);
    chunks
}

fn stream(framing: Framing, messages: &[ClientMessage]) -> Vec<u8> {
    let mut input = client_bytes(
        &ClientMessage::Register {
            kind: 7,
            user: "alice".into(),
        },
        framing,
    );
    for message in messages {
        input.extend(client_bytes(message, framing));
    }
    // A final CALL_END makes the end of the stream unambiguous (a bare
    // seed heartbeat waits for the two bytes after it).
    input.extend(client_bytes(
        &ClientMessage::CallEnd { call_ref: q("end") },
        framing,
    ));
    input
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn length_prefixed_parsing_ignores_read_boundaries(
        messages in proptest::collection::vec(message_strategy(true), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let input = stream(Framing::LengthPrefixed, &messages);
        let whole = drive(&[&input]);
        prop_assert_eq!(whole.len(), messages.len() + 2 + messages.iter().filter(|m| matches!(m, ClientMessage::File { data, .. } if !data.is_empty())).count());
        prop_assert_eq!(drive(&split_at(&input, &cuts)), whole);
    }

    #[test]
    fn seed_parsing_ignores_read_boundaries(
        messages in proptest::collection::vec(message_strategy(false), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let input = stream(Framing::Seed, &messages);
        let whole = drive(&[&input]);
        prop_assert!(!whole.iter().any(|event| matches!(event, Event::Error(_))), "{:?}", whole);
        prop_assert_eq!(drive(&split_at(&input, &cuts)), whole);
    }

    #[test]
    fn one_byte_at_a_time_equals_whole(
        messages in proptest::collection::vec(message_strategy(false), 0..6),
        framed in any::<bool>(),
    ) {
        let framing = if framed { Framing::LengthPrefixed } else { Framing::Seed };
        let input = stream(framing, &messages);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(drive(&bytes), drive(&[&input]));
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600),
                                   cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let _ = drive(&split_at(&input, &cuts));
    }
}

#[test]
fn every_strict_prefix_of_every_frame_needs_more() {
    let limits = Limits::default();
    let messages = [
        ClientMessage::Text {
            to: q("bob"),
            text: q("hi"),
        },
        ClientMessage::CallRequest {
            callee: q("bob"),
            video: 0,
        },
        ClientMessage::CallAccept { call_ref: q("x") },
        ClientMessage::CallReject {
            call_ref: q("x"),
            reason: q("y"),
        },
        ClientMessage::CallEnd { call_ref: q("x") },
        ClientMessage::Heartbeat {
            suffix: Some("alice".into()),
        },
        ClientMessage::File {
            to: q("bob"),
            name: q("n"),
            data: vec![],
        },
    ];
    for framing in [Framing::Seed, Framing::LengthPrefixed] {
        for message in &messages {
            let bytes = client_bytes(message, framing);
            for cut in 0..bytes.len() {
                let mut parser = FrameParser::new();
                let registration = client_bytes(
                    &ClientMessage::Register {
                        kind: 7,
                        user: "alice".into(),
                    },
                    framing,
                );
                let context = ParseContext {
                    limits: &limits,
                    user_id: b"alice",
                    seed_phase: SeedPhase::Normal,
                    media_runs: false,
                };
                assert!(matches!(
                    parser.parse(&registration, &context),
                    Ok(Parsed::Frame { .. })
                ));
                assert_eq!(
                    parser.parse(&bytes[..cut], &context),
                    Ok(Parsed::NeedMore),
                    "{message:?} cut at {cut} ({framing})"
                );
            }
        }
    }
}

/// Forwards framed media the way the server does: runs where the receiver
/// takes them (`runs`, cycled through one parse step at a time, says when),
/// the generic pieces elsewhere; returns the bytes a framed receiver would
/// get.
fn forward_framed_media(chunks: &[&[u8]], runs: &[bool]) -> Vec<u8> {
    let limits = Limits::default();
    let mut parser = FrameParser::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut runs = runs.iter().copied().cycle();
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        loop {
            let context = ParseContext {
                limits: &limits,
                user_id: b"alice",
                seed_phase: SeedPhase::Normal,
                media_runs: runs.next().unwrap_or(true),
            };
            let consumed = match parser.parse(&buffer, &context).expect("valid media") {
                Parsed::NeedMore => break,
                Parsed::Frame { consumed, .. } => consumed,
                Parsed::Media {
                    header, in_hand, ..
                } => {
                    out.extend_from_slice(&buffer[..header + in_hand]);
                    header + in_hand
                }
                Parsed::Body { len, .. } => {
                    out.extend_from_slice(&buffer[..len]);
                    len
                }
                Parsed::Stale { consumed } => consumed,
                Parsed::MediaRun(run) => {
                    out.extend_from_slice(&buffer[..run.len]);
                    run.len
                }
            };
            buffer.drain(..consumed);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn media_passthrough_forwards_every_byte_exactly_once(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
        runs in proptest::collection::vec(any::<bool>(), 1..6),
    ) {
        let registration = client_bytes(&ClientMessage::Register { kind: 7, user: "alice".into() }, Framing::LengthPrefixed);
        let mut media = Vec::new();
        for payload in &payloads {
            encode_client(&ClientMessage::Media { payload: payload.clone() }, Framing::LengthPrefixed, &mut media);
        }
        let mut input = registration.clone();
        input.extend_from_slice(&media);
        let forwarded = forward_framed_media(&split_at(&input, &cuts), &runs);
        prop_assert_eq!(forwarded, media);
    }
}
