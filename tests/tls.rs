//! TLS on the client port (PROTOCOL.md section 10), against the real binary
//! over real sockets with a throwaway CA and certificate made by the
//! `openssl` command at test time, and rustls as the client: a TLS client
//! registers and talks, plain and TLS clients share one call, garbage after
//! `16 03` closes only that connection, `--require-tls` refuses plain
//! clients in their framing, and SIGHUP loads a new certificate for new
//! handshakes while an open TLS connection keeps working.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::{
    ClientMessage, DecodeError, ServerMessage, decode_server, encode_client,
};
use common::{Pki, RelayProcess, WAIT, q};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;

fn start(args: &[String]) -> RelayProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    RelayProcess::start(&args)
}

/// A TLS client of the relay (blocking, with read deadlines).
struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    framing: Framing,
    buffer: Vec<u8>,
    user: String,
}

impl TlsClient {
    fn connect(relay: &RelayProcess, pki: &Pki, framing: Framing) -> TlsClient {
        let tcp = TcpStream::connect(relay.addr()).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let session =
            rustls::ClientConnection::new(pki.client_config(), name).expect("client session");
        TlsClient {
            stream: rustls::StreamOwned::new(session, tcp),
            framing,
            buffer: Vec::new(),
            user: String::new(),
        }
    }

    fn online(relay: &RelayProcess, pki: &Pki, user: &str, framing: Framing) -> TlsClient {
        let mut client = TlsClient::connect(relay, pki, framing);
        client.send(&ClientMessage::Register {
            kind: 7,
            user: user.to_owned(),
        });
        client.user = user.to_owned();
        client.send(&ClientMessage::Text {
            to: q(user),
            text: q("ready"),
        });
        assert_eq!(
            client.recv(),
            ServerMessage::Text {
                from: q(user),
                text: q("ready")
            }
        );
        client
    }

    fn send(&mut self, message: &ClientMessage) {
        let mut bytes = Vec::new();
        encode_client(message, self.framing, &mut bytes);
        self.stream.write_all(&bytes).expect("TLS write");
        self.stream.flush().expect("TLS flush");
    }

    fn recv(&mut self) -> ServerMessage {
        let deadline = Instant::now() + WAIT;
        loop {
            match decode_server(&self.buffer, self.framing) {
                Ok((message, used)) => {
                    self.buffer.drain(..used);
                    return message;
                }
                Err(DecodeError::NeedMore) => {}
                Err(DecodeError::Malformed) => {
                    panic!("malformed from the relay: {:02x?}", self.buffer)
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "nothing from the relay within {WAIT:?}");
            self.stream
                .sock
                .set_read_timeout(Some(left))
                .expect("timeout");
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the relay closed the TLS connection"),
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error) => panic!("TLS read: {error}"),
            }
        }
    }
}

// A TLS client registers and talks in both framings; a plain client on the
// same port calls it, and media flows both ways through one encryption.
#[test]
fn plain_and_tls_clients_share_the_port_and_a_call() {
    let pki = Pki::new("share");
    let relay = start(&pki.args("server"));
    for framing in [Seed, LengthPrefixed] {
        let mut alice = TlsClient::online(&relay, &pki, "alice", framing);
        let mut bob = relay.client("bob", LengthPrefixed);
        bob.call("alice", true);
        let call_id = match alice.recv() {
            ServerMessage::CallRequest {
                call_id,
                caller,
                video,
            } => {
                assert_eq!((caller.as_str(), video), ("bob", 1));
                call_id
            }
            other => panic!("expected CALL_REQUEST, got {other:?}"),
        };
        alice.send(&ClientMessage::CallAccept {
            call_ref: q(&call_id),
        });
        bob.expect_accept(&call_id);
        assert_eq!(
            alice.recv(),
            ServerMessage::CallAccept {
                call_id: call_id.clone()
            }
        );
        bob.media(b"plain to tls");
        match alice.recv() {
            ServerMessage::Media { payload } => assert_eq!(payload, b"plain to tls"),
            other => panic!("expected media, got {other:?}"),
        }
        alice.send(&ClientMessage::Media {
            payload: b"tls to plain".to_vec(),
        });
        bob.expect_media(b"tls to plain");
        bob.end(&call_id);
        bob.expect_end(&call_id);
        assert_eq!(
            alice.recv(),
            ServerMessage::CallEnd {
                call_id: call_id.clone()
            }
        );
        drop(alice);
        relay.expect_log(&["(alice) closed by peer"]);
    }
}

// Garbage after `16 03` is a failed handshake: that connection is closed,
// the relay goes on serving others.
#[test]
fn garbage_after_a_tls_record_header_closes_only_that_connection() {
    let pki = Pki::new("garbage");
    let relay = start(&pki.args("server"));
    let mut other = relay.client("other", LengthPrefixed);
    let mut garbage = TcpStream::connect(relay.addr()).expect("connect");
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8])
        .expect("write");
    garbage.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    other.barrier();
}

// `--require-tls`: a plain client gets ERROR tls_required in its framing
// and is closed; a TLS client is served.
#[test]
fn require_tls_refuses_plain_clients_in_their_framing() {
    let pki = Pki::new("require");
    let mut args = pki.args("server");
    args.push("--require-tls".into());
    let relay = start(&args);
    for framing in [Seed, LengthPrefixed] {
        let mut plain = relay.connect(framing);
        plain.register("plain");
        plain.expect_error("tls_required");
        plain.expect_closed();
    }
    TlsClient::online(&relay, &pki, "secure", LengthPrefixed);
}

// SIGHUP with a new certificate: new handshakes get it, an open TLS
// connection keeps working.
#[test]
fn sighup_loads_a_new_certificate_for_new_handshakes() {
    let pki = Pki::new("reload");
    let relay = start(&pki.args("server"));
    let mut early = TlsClient::online(&relay, &pki, "early", LengthPrefixed);
    let old = std::fs::read(pki.path("server.pem")).expect("old cert");
    pki.leaf("server");
    assert_ne!(
        old,
        std::fs::read(pki.path("server.pem")).expect("new cert")
    );
    let status = Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    relay.expect_log(&["SIGHUP: reloaded"]);
    let late = TlsClient::online(&relay, &pki, "late", LengthPrefixed);
    let served = late.stream.conn.peer_certificates().expect("a certificate")[0].to_vec();
    let new_der = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("server.pem"))
        .expect("pem")
        .next()
        .expect("one cert")
        .expect("parses");
    assert_eq!(
        served,
        new_der.to_vec(),
        "the new handshake got the old certificate"
    );
    early.send(&ClientMessage::Text {
        to: q("early"),
        text: q("still here"),
    });
    assert_eq!(
        early.recv(),
        ServerMessage::Text {
            from: q("early"),
            text: q("still here")
        }
    );
}

impl TlsClient {
    /// Exactly the next `count` bytes.
    fn read_exact_bytes(&mut self, count: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        while self.buffer.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} of {count} bytes within {WAIT:?}",
                self.buffer.len()
            );
            self.stream
                .sock
                .set_read_timeout(Some(left))
                .expect("timeout");
            let mut chunk = vec![0u8; 256 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the relay closed the TLS connection"),
                Ok(got) => self.buffer.extend_from_slice(&chunk[..got]),
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error) => panic!("TLS read: {error}"),
            }
        }
        self.buffer.drain(..count).collect()
    }
}

// A 4 MiB FILE each way between a TLS and a plain client arrives byte-exact:
// cut-through through one encryption or decryption, with backpressure.
#[test]
fn a_file_crosses_between_tls_and_plain_byte_exact() {
    let pki = Pki::new("file");
    let relay = start(&pki.args("server"));
    for (index, framing) in [LengthPrefixed, Seed].into_iter().enumerate() {
        let (alice_id, bob_id) = (format!("alice{index}"), format!("bob{index}"));
        file_both_ways(&relay, &pki, framing, &alice_id, &bob_id);
    }
}

/// `alice` (TLS, `framing`) and `bob` (plain, the other framing) send each
/// other a 4 MiB FILE.
fn file_both_ways(relay: &RelayProcess, pki: &Pki, framing: Framing, alice_id: &str, bob_id: &str) {
    let bob_framing = if framing == Seed {
        LengthPrefixed
    } else {
        Seed
    };
    let alice = TlsClient::online(relay, pki, alice_id, framing);
    let mut bob = relay.client(bob_id, bob_framing);
    let data = common::pattern(4 << 20);
    let sent = common::file_message(framing, bob_id, "to-plain.bin", &data);
    // The TLS session is one object: a thread owns it while it writes.
    let sending = std::thread::spawn(move || {
        let mut alice = alice;
        alice
            .stream
            .write_all(&sent)
            .expect("TLS write of the FILE");
        alice.stream.flush().expect("flush");
        alice
    });
    bob.expect_bytes(&common::file_frame_bytes(
        bob_framing,
        alice_id,
        "to-plain.bin",
        &data,
    ));
    let mut alice = sending.join().expect("alice's writer");
    let back = common::file_message(bob_framing, alice_id, "to-tls.bin", &data);
    let writer = bob.send_in_background(back);
    let expected = common::file_frame_bytes(framing, bob_id, "to-tls.bin", &data);
    let got = alice.read_exact_bytes(expected.len());
    writer.join().expect("bob's writer");
    assert!(got == expected, "the FILE arrived changed over TLS");
}

// A handshake that never finishes is closed at the registration timeout;
// failed handshakes are counted.
#[test]
fn a_handshake_that_never_finishes_is_closed_at_the_registration_timeout() {
    let pki = Pki::new("stall");
    let mut args = pki.args("server");
    args.extend([
        "--register-timeout".into(),
        "0.5".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let relay = start(&args);
    let started = Instant::now();
    let mut stalled = TcpStream::connect(relay.addr()).expect("connect");
    // The start of a TLS record, and nothing more.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    stalled.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut sink = Vec::new();
    let _ = stalled.read_to_end(&mut sink);
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(450),
        "closed after {waited:?}"
    );
    assert!(waited < WAIT, "never closed");
    let mut garbage = TcpStream::connect(relay.addr()).expect("connect");
    // A handshake record holding a message of a type that does not exist.
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0x00, 0x00, 0x00])
        .expect("write");
    let _ = garbage.read_to_end(&mut sink);
    relay.expect_log(&["TLS handshake failed"]);
    let metrics = common::scrape(relay.metrics_addr());
    assert!(
        common::sample(&metrics, "callrelay_tls_handshake_failures_total") >= 1,
        "{metrics}"
    );
    assert!(
        common::sample(&metrics, "callrelay_tls_accepted_total") >= 2,
        "{metrics}"
    );
}
