//! The codec pinned to what Qt really writes: tests/qt/golden.txt holds the
//! bytes QDataStream (Qt_5_9) produced for every message of PROTOCOL.md
//! section 2, in both framings (regenerate with `make qt-golden`, which runs
//! `target/qt/qtclient golden`). Our encoders must produce the same bytes,
//! and our parser and client decoder must read them back.

use std::collections::BTreeMap;

use callrelay::ids::{CallId, UserId};
use callrelay::protocol::frame::{
    ClientMessage, ServerFrame, ServerMessage, decode_server, encode_client, encode_server,
};
use callrelay::protocol::parser::{FrameParser, ParseContext, Parsed, SeedPhase};
use callrelay::protocol::qdatastream::{ByteArrayLen, QString};
use callrelay::protocol::{ErrorCode, Framing, Limits};

const GOLDEN: &str = include_str!("qt/golden.txt");
const CALL_ID: &str = "11111111-2222-4333-8444-555555555555";
const EMOJI_USER: &str = "😀user";
const EMOJI_TEXT: &str = "héllo 😀 你好";

fn golden() -> BTreeMap<String, Vec<u8>> {
    GOLDEN
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, hex) = line.split_once(' ').unwrap_or((line, ""));
            let bytes = hex
                .split_whitespace()
                .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
                .collect();
            (name.to_owned(), bytes)
        })
        .collect()
}

fn q(text: &str) -> QString {
    QString::from_str(text)
}

fn user(name: &str) -> UserId {
    UserId::from_utf8(name.as_bytes(), 128).expect("valid id")
}

fn call_id() -> CallId {
    let id = CallId::from_random([
        0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x43, 0x33, 0x84, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55,
        0x55,
    ]);
    assert_eq!(id.as_str(), CALL_ID);
    id
}

fn client_messages() -> Vec<(&'static str, ClientMessage)> {
    vec![
        (
            "client.register",
            ClientMessage::Register {
                kind: 7,
                user: "alice".into(),
            },
        ),
        (
            "client.register.emoji",
            ClientMessage::Register {
                kind: 7,
                user: EMOJI_USER.into(),
            },
        ),
        (
            "client.text",
            ClientMessage::Text {
                to: q("bob"),
                text: q("hi"),
            },
        ),
        (
            "client.text.null_and_empty",
            ClientMessage::Text {
                to: QString::null(),
                text: q(""),
            },
        ),
        (
            "client.text.emoji",
            ClientMessage::Text {
                to: q(EMOJI_USER),
                text: q(EMOJI_TEXT),
            },
        ),
        (
            "client.file",
            ClientMessage::File {
                to: q("bob"),
                name: q("a.bin"),
                data: vec![1, 2],
            },
        ),
        (
            "client.call_request",
            ClientMessage::CallRequest {
                callee: q("bob"),
                video: 1,
            },
        ),
        (
            "client.call_accept",
            ClientMessage::CallAccept {
                call_ref: q(CALL_ID),
            },
        ),
        (
            "client.call_reject",
            ClientMessage::CallReject {
                call_ref: q(CALL_ID),
                reason: q("busy"),
            },
        ),
        (
            "client.call_end.null",
            ClientMessage::CallEnd {
                call_ref: QString::null(),
            },
        ),
        (
            "client.media",
            ClientMessage::Media {
                payload: vec![1, 2, 3],
            },
        ),
        (
            "client.heartbeat",
            ClientMessage::Heartbeat { suffix: None },
        ),
        (
            "client.heartbeat.suffix",
            ClientMessage::Heartbeat {
                suffix: Some("alice".into()),
            },
        ),
    ]
}

/// Server frames with the body bytes that follow their header.
fn server_frames() -> Vec<(&'static str, ServerFrame, Vec<u8>)> {
    vec![
        (
            "server.text",
            ServerFrame::Text {
                from: user("alice"),
                text: q("hi"),
            },
            vec![],
        ),
        (
            "server.text.emoji",
            ServerFrame::Text {
                from: user(EMOJI_USER),
                text: q(EMOJI_TEXT),
            },
            vec![],
        ),
        (
            "server.file",
            ServerFrame::FileHeader {
                from: user("alice"),
                name: q("a.bin"),
                data: ByteArrayLen {
                    len: 2,
                    null: false,
                },
            },
            vec![1, 2],
        ),
        (
            "server.call_request",
            ServerFrame::CallRequest {
                call_id: call_id(),
                caller: user("alice"),
                video: 1,
            },
            vec![],
        ),
        (
            "server.call_accept",
            ServerFrame::CallAccept { call_id: call_id() },
            vec![],
        ),
        (
            "server.call_reject",
            ServerFrame::CallReject {
                call_id: call_id(),
                reason: q("timeout"),
            },
            vec![],
        ),
        (
            "server.call_end",
            ServerFrame::CallEnd { call_id: call_id() },
            vec![],
        ),
        (
            "server.media",
            ServerFrame::MediaHeader { payload_len: 3 },
            vec![1, 2, 3],
        ),
        ("server.heartbeat", ServerFrame::Heartbeat, vec![]),
        (
            "server.error",
            ServerFrame::Error {
                code: ErrorCode::Offline,
                detail: "hi".into(),
            },
            vec![],
        ),
    ]
}

fn framings() -> [(Framing, &'static str); 2] {
    [(Framing::Seed, "seed"), (Framing::LengthPrefixed, "framed")]
}

/// The golden bytes of the entry `name` in each framing, with their key
/// (`name.seed`, `name.framed`).
fn golden_in_each_framing<'a>(
    golden: &'a BTreeMap<String, Vec<u8>>,
    name: &str,
) -> Vec<(Framing, String, &'a Vec<u8>)> {
    framings()
        .into_iter()
        .map(|(framing, suffix)| {
            let key = format!("{name}.{suffix}");
            let expected = golden
                .get(&key)
                .unwrap_or_else(|| panic!("{key} missing from golden.txt"));
            (framing, key, expected)
        })
        .collect()
}

#[test]
fn our_client_encoder_writes_what_qt_writes() {
    let golden = golden();
    for (name, message) in client_messages() {
        for (framing, key, expected) in golden_in_each_framing(&golden, name) {
            let mut ours = Vec::new();
            encode_client(&message, framing, &mut ours);
            assert_eq!(&ours, expected, "{key}");
        }
    }
}

#[test]
fn our_server_encoder_writes_what_qt_writes() {
    let golden = golden();
    for (name, frame, body) in server_frames() {
        for (framing, key, expected) in golden_in_each_framing(&golden, name) {
            let mut ours = Vec::new();
            encode_server(&frame, framing, &mut ours);
            ours.extend_from_slice(&body);
            assert_eq!(&ours, expected, "{key}");
        }
    }
}

#[test]
fn our_client_decoder_reads_what_qt_writes() {
    let golden = golden();
    let bytes = &golden["server.call_request.framed"];
    assert_eq!(
        decode_server(bytes, Framing::LengthPrefixed),
        Ok((
            ServerMessage::CallRequest {
                call_id: CALL_ID.into(),
                caller: "alice".into(),
                video: 1
            },
            bytes.len()
        ))
    );
    let bytes = &golden["server.text.emoji.seed"];
    assert_eq!(
        decode_server(bytes, Framing::Seed),
        Ok((
            ServerMessage::Text {
                from: q(EMOJI_USER),
                text: q(EMOJI_TEXT)
            },
            bytes.len()
        ))
    );
}

#[test]
fn our_parser_reads_every_qt_client_message() {
    let golden = golden();
    let limits = Limits::default();
    for (framing, suffix) in framings() {
        let mut parser = FrameParser::new();
        let context = ParseContext {
            limits: &limits,
            user_id: b"alice",
            seed_phase: SeedPhase::Normal,
            media_runs: false,
        };
        let registration = &golden[&format!("client.register.{suffix}")];
        assert!(
            matches!(parser.parse(registration, &context), Ok(Parsed::Frame { consumed, .. }) if consumed == registration.len())
        );
        for (name, _) in client_messages().into_iter().skip(2) {
            let mut bytes = golden[&format!("{name}.{suffix}")].clone();
            if (name, framing) == ("client.heartbeat", Framing::Seed) {
                // A bare seed heartbeat is decided by the two bytes after it
                // (PROTOCOL.md section 3): give it a following frame.
                let next = &golden["client.text.seed"];
                assert!(matches!(
                    parser.parse(&bytes, &context),
                    Ok(Parsed::NeedMore)
                ));
                bytes.extend_from_slice(next);
                assert!(matches!(
                    parser.parse(&bytes, &context),
                    Ok(Parsed::Frame { consumed: 1, .. })
                ));
                bytes.drain(..1);
            }
            let bytes = &bytes;
            let taken = match parser.parse(bytes, &context) {
                Ok(Parsed::Frame { consumed, .. }) => consumed,
                Ok(Parsed::Media {
                    header, in_hand, ..
                }) => header + in_hand,
                other => panic!("{name}.{suffix}: {other:?}"),
            };
            let mut taken = taken;
            while taken < bytes.len() {
                match parser.parse(&bytes[taken..], &context) {
                    Ok(Parsed::Body { len, .. }) => taken += len,
                    other => panic!("{name}.{suffix} body: {other:?}"),
                }
            }
            assert_eq!(taken, bytes.len(), "{name}.{suffix}");
        }
    }
}

#[test]
fn golden_file_has_no_entry_we_do_not_check() {
    let checked: Vec<String> = client_messages()
        .iter()
        .map(|(name, _)| *name)
        .chain(server_frames().iter().map(|(name, _, _)| *name))
        .chain(["client.file.null"])
        .flat_map(|name| framings().map(|(_, suffix)| format!("{name}.{suffix}")))
        .collect();
    for key in golden().keys() {
        assert!(
            checked.contains(key),
            "{key} is in golden.txt but no test checks it"
        );
    }
}

#[test]
fn null_file_name_and_null_data_as_qt_writes_them() {
    let golden = golden();
    // QString() and QByteArray() are both written as FF FF FF FF.
    let expected = &golden["client.file.null.seed"];
    let mut ours = vec![1];
    callrelay::protocol::qdatastream::put_str(&mut ours, "bob");
    ours.extend_from_slice(&[0xFF; 8]);
    assert_eq!(&ours, expected);
}
