//! Test harness: starts the real `callrelay` binary on an ephemeral
//! loopback port and drives it with raw-socket clients.
//!
//! No sleeps stand in for synchronisation: every wait is for expected bytes
//! (or a log line, or EOF) with a deadline. To prove that *nothing* was sent
//! to a client, [`Client::barrier`] sends a TEXT to itself through the relay
//! and requires it to be the next message: anything sent before it would
//! arrive first.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing;
use callrelay::protocol::frame::{
    ClientMessage, DecodeError, ServerMessage, decode_server, encode_client,
};
use callrelay::protocol::qdatastream::QString;

/// How long any single expectation may wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running relay process; killed on drop.
pub struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl RelayProcess {
    /// Starts the relay with extra command-line arguments.
    pub fn start(args: &[&str]) -> RelayProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_callrelay"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        RelayProcess::spawn_command(command)
    }

    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until a log line containing every one of `needles` appears
    /// (lines logged earlier count too).
    #[track_caller]
    pub fn expect_log(&self, needles: &[&str]) -> String {
        let matches = |line: &str| needles.iter().all(|needle| line.contains(needle));
        if let Some(line) = self
            .log
            .lock()
            .expect("log lock")
            .iter()
            .find(|l| matches(l))
        {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!(
                        "no log line with {needles:?}; log:\n{}",
                        self.log.lock().expect("log lock").join("\n")
                    )
                }
            }
        }
    }

    /// True if the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size of the relay in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Connects a client with the given framing (not registered yet).
    pub fn connect(&self, framing: Framing) -> Client {
        Client::connect(self.addr, framing)
    }

    /// Connects and registers a client, and waits until the relay has
    /// processed the registration (a barrier through the relay).
    #[track_caller]
    pub fn client(&self, user: &str, framing: Framing) -> Client {
        let mut client = self.connect(framing);
        client.register(user);
        client.barrier();
        client
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The offset of the first byte in which `a` and `b` differ (0 if one is a
/// prefix of the other).
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0)
}

/// Builds a QString from text.
pub fn q(text: &str) -> QString {
    QString::from_str(text)
}

/// A raw-socket client.
pub struct Client {
    pub stream: TcpStream,
    pub framing: Framing,
    pub user: String,
    buffer: Vec<u8>,
}

impl Client {
    /// Connects without registering.
    pub fn connect(addr: SocketAddr, framing: Framing) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the relay");
        Client::from_stream(stream, framing)
    }

    /// Sends raw bytes.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the relay");
    }

    /// Encodes and sends a message in this client's framing.
    #[track_caller]
    pub fn send(&mut self, message: &ClientMessage) {
        let mut bytes = Vec::new();
        encode_client(message, self.framing, &mut bytes);
        self.send_raw(&bytes);
    }

    /// Registers `user` (kind HEARTBEAT, as the guide does).
    #[track_caller]
    pub fn register(&mut self, user: &str) {
        self.user = user.to_owned();
        self.send(&ClientMessage::Register {
            kind: 7,
            user: user.to_owned(),
        });
    }

    /// CALL_REQUEST.
    pub fn call(&mut self, callee: &str, video: bool) {
        self.send(&ClientMessage::CallRequest {
            callee: q(callee),
            video: u8::from(video),
        });
    }

    /// CALL_ACCEPT.
    pub fn accept(&mut self, call_ref: &str) {
        self.send(&ClientMessage::CallAccept {
            call_ref: q(call_ref),
        });
    }

    /// CALL_REJECT.
    pub fn reject(&mut self, call_ref: &str, reason: &str) {
        self.send(&ClientMessage::CallReject {
            call_ref: q(call_ref),
            reason: q(reason),
        });
    }

    /// CALL_END.
    pub fn end(&mut self, call_ref: &str) {
        self.send(&ClientMessage::CallEnd {
            call_ref: q(call_ref),
        });
    }

    /// MEDIA_DATA.
    pub fn media(&mut self, payload: &[u8]) {
        self.send(&ClientMessage::Media {
            payload: payload.to_vec(),
        });
    }

    /// TEXT.
    pub fn text(&mut self, to: &str, text: &str) {
        self.send(&ClientMessage::Text {
            to: q(to),
            text: q(text),
        });
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`.
    /// Returns false on EOF.
    #[track_caller]
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for the relay; have {} bytes: {:02x?}",
            self.buffer.len(),
            &self.buffer[..self.buffer.len().min(64)]
        );
        self.stream
            .set_read_timeout(Some(left))
            .expect("set read timeout");
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(count) => {
                self.buffer.extend_from_slice(&chunk[..count]);
                true
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                true
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => true,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => false,
            Err(error) => panic!("read from the relay failed: {error}"),
        }
    }

    /// Waits for exactly these bytes next.
    #[track_caller]
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while self.buffer.len() < expected.len() {
            assert!(
                self.fill(deadline),
                "connection closed after {} of {} expected bytes",
                self.buffer.len(),
                expected.len()
            );
        }
        let got: Vec<u8> = self.buffer.drain(..expected.len()).collect();
        if got != expected {
            let at = first_difference(&got, expected);
            panic!(
                "bytes differ at offset {at} of {}: got {:02x?}, expected {:02x?}",
                expected.len(),
                &got[at..(at + 32).min(got.len())],
                &expected[at..(at + 32).min(expected.len())]
            );
        }
    }

    /// Waits for exactly `count` bytes and returns them.
    #[track_caller]
    pub fn read_exact_bytes(&mut self, count: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        while self.buffer.len() < count {
            assert!(self.fill(deadline), "connection closed early");
        }
        self.buffer.drain(..count).collect()
    }

    /// Waits for the next complete non-media message (framed connections
    /// may also receive media this way; seed media needs [`Client::expect_media`]).
    #[track_caller]
    pub fn recv(&mut self) -> ServerMessage {
        let deadline = Instant::now() + WAIT;
        loop {
            if !self.buffer.is_empty() {
                if self.framing == Framing::Seed && self.buffer[0] == 6 {
                    panic!(
                        "seed media arrived where a message was expected: {:02x?}",
                        &self.buffer[..self.buffer.len().min(32)]
                    );
                }
                match decode_server(&self.buffer, self.framing) {
                    Ok((message, used)) => {
                        self.buffer.drain(..used);
                        return message;
                    }
                    Err(DecodeError::NeedMore) => {}
                    Err(DecodeError::Malformed) => {
                        panic!("relay sent a malformed message: {:02x?}", self.buffer)
                    }
                }
            }
            assert!(
                self.fill(deadline),
                "connection closed while waiting for a message"
            );
        }
    }

    /// Waits for media carrying exactly `payload`, in one frame or several
    /// (seed framing delimits media by arrival, so `6` headers may split it).
    #[track_caller]
    pub fn expect_media(&mut self, payload: &[u8]) {
        let mut got = Vec::new();
        while got.len() < payload.len() {
            match self.framing {
                Framing::LengthPrefixed => match self.recv() {
                    ServerMessage::Media { payload } => got.extend_from_slice(&payload),
                    other => panic!("expected media, got {other:?}"),
                },
                Framing::Seed => {
                    let header = self.read_exact_bytes(1);
                    assert_eq!(header, [6], "expected a media frame");
                    let want = payload.len() - got.len();
                    let deadline = Instant::now() + WAIT;
                    if self.buffer.is_empty() {
                        assert!(self.fill(deadline), "closed while waiting for media");
                    }
                    let take = want.min(self.buffer.len());
                    got.extend(self.buffer.drain(..take));
                }
            }
        }
        assert_eq!(got.len(), payload.len());
        if got != payload {
            let at = first_difference(&got, payload);
            panic!("media differs at byte {at} of {}", payload.len());
        }
    }

    /// Waits for a CALL_REQUEST and returns its call id.
    #[track_caller]
    pub fn expect_incoming(&mut self, caller: &str, video: u8) -> String {
        match self.recv() {
            ServerMessage::CallRequest {
                call_id,
                caller: from,
                video: got_video,
            } => {
                assert_eq!((from.as_str(), got_video), (caller, video));
                assert_eq!(call_id.len(), 36);
                call_id
            }
            other => panic!("expected CALL_REQUEST from {caller}, got {other:?}"),
        }
    }

    /// Waits for CALL_ACCEPT of `call_id`.
    #[track_caller]
    pub fn expect_accept(&mut self, call_id: &str) {
        assert_eq!(
            self.recv(),
            ServerMessage::CallAccept {
                call_id: call_id.to_owned()
            }
        );
    }

    /// Waits for CALL_REJECT with `reason`; returns the call id.
    #[track_caller]
    pub fn expect_reject(&mut self, reason: &str) -> String {
        match self.recv() {
            ServerMessage::CallReject {
                call_id,
                reason: got,
            } => {
                assert_eq!(got, reason);
                call_id
            }
            other => panic!("expected CALL_REJECT {reason:?}, got {other:?}"),
        }
    }

    /// Waits for CALL_END of `call_id`.
    #[track_caller]
    pub fn expect_end(&mut self, call_id: &str) {
        assert_eq!(
            self.recv(),
            ServerMessage::CallEnd {
                call_id: call_id.to_owned()
            }
        );
    }

    /// Waits for ERROR with `code` (length-prefixed connections, or the
    /// last message before a close).
    #[track_caller]
    pub fn expect_error(&mut self, code: &str) {
        match self.recv() {
            ServerMessage::Error { code: got, .. } => assert_eq!(got, code),
            other => panic!("expected ERROR {code}, got {other:?}"),
        }
    }

    /// Waits for the relay to close the connection (EOF or reset); bytes
    /// still unread fail the test.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + WAIT;
        while self.fill(deadline) {
            assert!(
                self.buffer.is_empty(),
                "unexpected bytes before close: {:02x?}",
                &self.buffer[..self.buffer.len().min(64)]
            );
        }
    }

    /// Proves that nothing is pending for this client: a TEXT to itself
    /// must be the very next message.
    #[track_caller]
    pub fn barrier(&mut self) {
        let token = format!("barrier-{:?}", Instant::now());
        let me = self.user.clone();
        self.text(&me, &token);
        assert_eq!(
            self.recv(),
            ServerMessage::Text {
                from: q(&me),
                text: q(&token)
            },
            "something arrived before the barrier"
        );
    }

    /// Closes the write side (the relay sees EOF).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Sets up alice calling bob, bob accepting; returns the call id.
#[track_caller]
pub fn accepted_call(alice: &mut Client, bob: &mut Client) -> String {
    let call_id = ring(alice, bob, true);
    accept_ringing(alice, bob, &call_id, &call_id);
    call_id
}

// ----- call and connection setup shared by the tests ------------------------

/// `caller` calls `callee` (with video or not) and `callee` gets the
/// CALL_REQUEST; returns the call id.
#[track_caller]
pub fn ring(caller: &mut Client, callee: &mut Client, video: bool) -> String {
    caller.call(&callee.user, video);
    callee.expect_incoming(&caller.user, u8::from(video))
}

/// `callee` accepts the ringing call naming it by `call_ref` (the call id,
/// or the caller's id); both get CALL_ACCEPT of `call_id`, `caller` first.
#[track_caller]
pub fn accept_ringing(caller: &mut Client, callee: &mut Client, call_ref: &str, call_id: &str) {
    callee.accept(call_ref);
    caller.expect_accept(call_id);
    callee.expect_accept(call_id);
}

/// Both parties get CALL_END of `call_id`, `first` first.
#[track_caller]
pub fn expect_ended(first: &mut Client, second: &mut Client, call_id: &str) {
    first.expect_end(call_id);
    second.expect_end(call_id);
}

/// A relay started with `args`, and "alice" and "bob" registered on it in
/// these framings (alice first).
#[track_caller]
pub fn relay_with_pair(
    args: &[&str],
    alice: Framing,
    bob: Framing,
) -> (RelayProcess, Client, Client) {
    let relay = RelayProcess::start(args);
    let alice = relay.client("alice", alice);
    let bob = relay.client("bob", bob);
    (relay, alice, bob)
}

/// [`relay_with_pair`], then alice calls bob and bob accepts
/// ([`accepted_call`]); returns the call id too. Keep the relay bound to a
/// name (`_relay`, not `_`): dropping it kills the relay.
#[track_caller]
pub fn relay_with_call(
    args: &[&str],
    alice: Framing,
    bob: Framing,
) -> (RelayProcess, Client, Client, String) {
    let (relay, mut alice, mut bob) = relay_with_pair(args, alice, bob);
    let call_id = accepted_call(&mut alice, &mut bob);
    (relay, alice, bob, call_id)
}

/// Media in a call both ways: `a` sends `to_b` and `b` receives it (in any
/// number of pieces), then `b` sends `to_a` and `a` receives it.
#[track_caller]
pub fn media_both_ways(a: &mut Client, b: &mut Client, to_b: &[u8], to_a: &[u8]) {
    a.media(to_b);
    b.expect_media_chunks(to_b);
    b.media(to_a);
    a.expect_media_chunks(to_a);
}

impl Client {
    /// Waits for a TEXT from `from` with `text` as the next message.
    #[track_caller]
    pub fn expect_text(&mut self, from: &str, text: &str) {
        assert_eq!(
            self.recv(),
            ServerMessage::Text {
                from: q(from),
                text: q(text),
            }
        );
    }
}

// ----- helpers for the bad-input, timeout and CLI tests ----------------------

impl RelayProcess {
    /// Every log line seen so far.
    pub fn log_snapshot(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// True if a line containing `needle` has been logged so far.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .any(|line| line.contains(needle))
    }

    /// The address of the metrics endpoint the relay logged ("metrics on
    /// http://ADDR/metrics"; start it with `--metrics-listen`).
    #[track_caller]
    pub fn metrics_addr(&self) -> SocketAddr {
        let line = self.expect_log(&["metrics on http://"]);
        line.split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
    }

    /// The connection id (`cN.G`) the relay logged when it accepted the
    /// client whose local address is `addr`.
    #[track_caller]
    pub fn conn_id_of(&self, addr: SocketAddr) -> String {
        let marker = format!(" connected from {addr}");
        let line = self.expect_log(&[&marker]);
        let before = line.split(&marker).next().unwrap_or_default();
        before
            .split_whitespace()
            .last()
            .expect("a connection id before \"connected from\"")
            .to_owned()
    }
}

impl Client {
    /// This client's local address (the peer address the relay logs).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Waits until `deadline` for the next complete message; `None` if none
    /// is complete by then. EOF or a malformed message fails the test.
    #[track_caller]
    pub fn recv_before(&mut self, deadline: Instant) -> Option<ServerMessage> {
        loop {
            if !self.buffer.is_empty() {
                match decode_server(&self.buffer, self.framing) {
                    Ok((message, used)) => {
                        self.buffer.drain(..used);
                        return Some(message);
                    }
                    Err(DecodeError::NeedMore) => {}
                    Err(DecodeError::Malformed) => {
                        panic!("relay sent a malformed message: {:02x?}", self.buffer)
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("connection closed while waiting for a message"),
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(error) => panic!("read from the relay failed: {error}"),
            }
        }
    }
}

// ----- helpers for the media, file and framing tests ------------------------

/// Encodes a client message in `framing` (the bytes a Qt client writes).
pub fn encode_in(message: &ClientMessage, framing: Framing) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_client(message, framing, &mut bytes);
    bytes
}

/// The exact bytes the relay sends for a FILE from `from` in `framing`.
pub fn file_frame_bytes(framing: Framing, from: &str, name: &str, data: &[u8]) -> Vec<u8> {
    use callrelay::protocol::qdatastream::{put_str, put_u32};
    let mut body = vec![1u8];
    put_str(&mut body, from);
    put_str(&mut body, name);
    put_u32(
        &mut body,
        u32::try_from(data.len()).expect("file fits a quint32"),
    );
    body.extend_from_slice(data);
    prefixed(framing, body)
}

/// The wire bytes of a FILE from a client in `framing`.
pub fn file_message(framing: Framing, to: &str, name: &str, data: &[u8]) -> Vec<u8> {
    encode_in(
        &ClientMessage::File {
            to: q(to),
            name: q(name),
            data: data.to_vec(),
        },
        framing,
    )
}

/// A FILE from `sender` to `receiver` sent in two parts: the header and the
/// first `first_data` bytes of data, then the rest.
pub struct SplitFile {
    /// What the sender writes.
    pub sent: Vec<u8>,
    /// What the receiver must get.
    pub expected: Vec<u8>,
    /// Where the rest begins in `sent`.
    pub sent_at: usize,
    /// Where the rest begins in `expected`.
    pub expected_at: usize,
}

impl SplitFile {
    /// The FILE `name` with `data` from `sender` (in its framing) to
    /// `receiver` (in its framing).
    pub fn new(
        sender: &Client,
        receiver: &Client,
        name: &str,
        data: &[u8],
        first_data: usize,
    ) -> SplitFile {
        let sent = file_message(sender.framing, &receiver.user, name, data);
        let expected = file_frame_bytes(receiver.framing, &sender.user, name, data);
        let sent_at = sent.len() - data.len() + first_data;
        let expected_at = expected.len() - data.len() + first_data;
        SplitFile {
            sent,
            expected,
            sent_at,
            expected_at,
        }
    }

    /// The sender writes the first part and the receiver gets exactly its
    /// bytes (cut through).
    #[track_caller]
    pub fn send_head(&self, sender: &mut Client, receiver: &mut Client) {
        sender.send_raw(&self.sent[..self.sent_at]);
        receiver.expect_bytes(&self.expected[..self.expected_at]);
    }

    /// The sender writes the rest from another thread (join the handle).
    pub fn send_rest_in_background(&self, sender: &Client) -> std::thread::JoinHandle<()> {
        sender.send_in_background(self.sent[self.sent_at..].to_vec())
    }

    /// The sender writes the rest from another thread while the receiver
    /// gets exactly its bytes; then the writer has finished.
    #[track_caller]
    pub fn send_rest(&self, sender: &Client, receiver: &mut Client) {
        let writer = self.send_rest_in_background(sender);
        receiver.expect_bytes(&self.expected[self.expected_at..]);
        writer.join().expect("the file sender's thread");
    }
}

/// The exact bytes the relay sends for one media frame in `framing`.
pub fn media_frame_bytes(framing: Framing, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![6u8];
    body.extend_from_slice(payload);
    prefixed(framing, body)
}

fn prefixed(framing: Framing, body: Vec<u8>) -> Vec<u8> {
    match framing {
        Framing::Seed => body,
        Framing::LengthPrefixed => {
            let length = u32::try_from(body.len()).expect("frame fits a quint32");
            let mut out = length.to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            out
        }
    }
}

/// A media payload a seed client can send safely: only `A`..=`Z`, never
/// `5`, `6` or `7`, so a piece of it that reaches the relay on its own is
/// always a continuation, and a seed receiver can tell `6` headers from
/// payload bytes. `salt` makes payloads distinct.
pub fn seed_safe_payload(len: usize, salt: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b'A' + ((i * 7 + salt * 13 + i / 26) % 26) as u8)
        .collect()
}

/// A non-constant pattern over every byte value: `(i*7 + i/251) as u8`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

impl Client {
    /// Encodes `message` in this client's framing.
    pub fn encode(&self, message: &ClientMessage) -> Vec<u8> {
        encode_in(message, self.framing)
    }

    /// FILE.
    #[track_caller]
    pub fn send_file(&mut self, to: &str, name: &str, data: &[u8]) {
        self.send(&ClientMessage::File {
            to: q(to),
            name: q(name),
            data: data.to_vec(),
        });
    }

    /// HEARTBEAT, with the registration suffix if `suffix`.
    #[track_caller]
    pub fn send_heartbeat(&mut self, suffix: bool) {
        let suffix = suffix.then(|| self.user.clone());
        self.send(&ClientMessage::Heartbeat { suffix });
    }

    /// A MEDIA_DATA for each of `payloads`, all in one write.
    #[track_caller]
    pub fn send_media_burst<P: AsRef<[u8]>>(&mut self, payloads: impl IntoIterator<Item = P>) {
        let mut burst = Vec::new();
        for payload in payloads {
            burst.extend(self.encode(&ClientMessage::Media {
                payload: payload.as_ref().to_vec(),
            }));
        }
        self.send_raw(&burst);
    }

    /// Writes `bytes` one byte per write (TCP_NODELAY is on).
    #[track_caller]
    pub fn drip(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.send_raw(std::slice::from_ref(byte));
        }
    }

    /// Writes `bytes` from another thread (for frames larger than the
    /// socket buffers while this thread reads elsewhere). Join the handle
    /// to see a write failure.
    pub fn send_in_background(&self, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
        let mut stream = self.stream.try_clone().expect("clone the socket");
        std::thread::spawn(move || {
            stream
                .write_all(&bytes)
                .expect("background send to the relay")
        })
    }

    /// Waits for one media frame with exactly `payload`: on a
    /// length-prefixed connection one frame, on a seed one `6` + payload.
    #[track_caller]
    pub fn expect_media_frame(&mut self, payload: &[u8]) {
        let expected = media_frame_bytes(self.framing, payload);
        self.expect_bytes(&expected);
    }

    /// Waits for media carrying exactly `payload`, cut into any number of
    /// frames (empty ones included), as seed media delimited by arrival is.
    /// For a seed receiver the payload must not contain the byte 6 (see
    /// [`seed_safe_payload`]) so that headers are unambiguous; unlike
    /// [`Client::expect_media`] this copes with any split of the relay's
    /// writes by TCP.
    #[track_caller]
    pub fn expect_media_chunks(&mut self, payload: &[u8]) {
        let mut got = 0;
        match self.framing {
            Framing::LengthPrefixed => {
                while got < payload.len() {
                    match self.recv() {
                        ServerMessage::Media { payload: piece } => {
                            let end = got + piece.len();
                            assert!(
                                end <= payload.len() && piece == payload[got..end],
                                "media piece of {} bytes at offset {got} of {} differs",
                                piece.len(),
                                payload.len()
                            );
                            got = end;
                        }
                        other => panic!("expected media at offset {got}, got {other:?}"),
                    }
                }
            }
            Framing::Seed => {
                assert!(
                    !payload.contains(&6),
                    "expect_media_chunks on a seed connection needs a payload without 6"
                );
                let deadline = Instant::now() + WAIT;
                let mut header_seen = false;
                loop {
                    let mut used = 0;
                    while used < self.buffer.len() && got < payload.len() {
                        let byte = self.buffer[used];
                        if byte == 6 {
                            header_seen = true;
                        } else {
                            assert!(
                                header_seen,
                                "media bytes without a 6 header: {:02x?}",
                                &self.buffer[..self.buffer.len().min(32)]
                            );
                            assert_eq!(
                                byte,
                                payload[got],
                                "media differs at byte {got} of {}",
                                payload.len()
                            );
                            got += 1;
                        }
                        used += 1;
                    }
                    self.buffer.drain(..used);
                    if got == payload.len() {
                        break;
                    }
                    assert!(
                        self.fill(deadline),
                        "closed after {got} of {} media bytes",
                        payload.len()
                    );
                }
            }
        }
    }
}

// ----- helpers for the load-tool smoke tests ---------------------------------

impl RelayProcess {
    /// The relay's process id (for `callrelay-load --server-pid`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

// ----- helpers for the operations tests (signals, limits, fd exhaustion) -----

impl RelayProcess {
    /// Starts the relay through a wrapper command: runs `wrapper[0]` with
    /// `wrapper[1..]`, then the relay binary's path, `--listen 127.0.0.1:0`
    /// and `args` (e.g. `bash -c 'ulimit -n 40 && exec "$0" "$@"'`). The
    /// wrapper must `exec` the relay so that [`RelayProcess::pid`] is the
    /// relay's.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> RelayProcess {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
        let mut command = Command::new(program);
        command
            .args(wrapper_args)
            .arg(env!("CARGO_BIN_EXE_callrelay"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        RelayProcess::spawn_command(command)
    }

    /// Spawns `command` (the relay, possibly wrapped), captures its log and
    /// waits for its listening address.
    pub fn spawn_command(mut command: Command) -> RelayProcess {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = channel();
        let shared = Arc::clone(&log);
        let child = spawn_with_stderr_lines(command.env("RUST_LOG", "debug"), move |line| {
            shared.lock().expect("log lock").push(line.clone());
            let _ = sender.send(line);
            true
        });
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("relay printed its listening address");
            if let Some(at) = line.find("listening on ") {
                break line[at + "listening on ".len()..]
                    .trim()
                    .parse()
                    .expect("listening address parses");
            }
        };
        RelayProcess {
            child,
            addr,
            log,
            lines,
        }
    }

    /// Waits at most `timeout` for the relay to exit; its status, or `None`
    /// if it is still running then. (Polls the exit status: nothing about
    /// the protocol is synchronised by this.)
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the relay") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Spawns `command` (the relay) with stdin and stdout on /dev/null and
/// stderr piped, and hands each line of its stderr to `on_line`, on another
/// thread, until `on_line` returns false or stderr closes.
pub fn spawn_with_stderr_lines(
    command: &mut Command,
    mut on_line: impl FnMut(String) -> bool + Send + 'static,
) -> Child {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start callrelay");
    let stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !on_line(line) {
                break;
            }
        }
    });
    child
}

/// Everything `reader` yields until its end (what was read before an
/// error, if one ends it).
pub fn read_all(mut reader: impl Read) -> String {
    let mut text = String::new();
    let _ = reader.read_to_string(&mut text);
    text
}

/// [`read_all`] on another thread (e.g. a child's stdout); join for the text.
pub fn read_all_in_background(
    reader: impl Read + Send + 'static,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || read_all(reader))
}

/// Fails unless `stdout`, what `flag` (e.g. `--help`) printed, mentions
/// every one of `options`.
#[track_caller]
pub fn assert_mentions_every(stdout: &str, flag: &str, options: &[&str]) {
    for option in options {
        assert!(
            stdout.contains(option),
            "{flag} does not mention {option}:\n{stdout}"
        );
    }
}

impl Client {
    /// Wraps an already connected socket (e.g. one bound to a chosen local
    /// address) as a client with the given framing.
    pub fn from_stream(stream: TcpStream, framing: Framing) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            framing,
            user: String::new(),
            buffer: Vec::new(),
        }
    }
}

// ----- helpers for the cut-through tests -------------------------------------

impl Client {
    /// Reads exactly the next `count` bytes (those already buffered first)
    /// within `wait`, passing them to `check` piece by piece without keeping
    /// them, with a 1 MiB read buffer: for frames of many MiB. Never reads
    /// past `count`, so the bytes after them are still there for
    /// [`Client::recv`].
    #[track_caller]
    pub fn stream_bytes(&mut self, count: u64, wait: Duration, mut check: impl FnMut(&[u8])) {
        let deadline = Instant::now() + wait;
        let buffered =
            usize::try_from(count).map_or(self.buffer.len(), |count| count.min(self.buffer.len()));
        if buffered > 0 {
            check(&self.buffer[..buffered]);
            self.buffer.drain(..buffered);
        }
        let mut left = count - buffered as u64;
        let mut chunk = vec![0u8; 1024 * 1024];
        while left > 0 {
            let time_left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !time_left.is_zero(),
                "timed out with {left} of {count} bytes still to come"
            );
            self.stream
                .set_read_timeout(Some(time_left))
                .expect("set read timeout");
            let want = usize::try_from(left).map_or(chunk.len(), |left| left.min(chunk.len()));
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => panic!("connection closed with {left} of {count} bytes still to come"),
                Ok(read) => {
                    check(&chunk[..read]);
                    left -= read as u64;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(error) => panic!("read from the relay failed: {error}"),
            }
        }
    }
}

// ----- metrics ----------------------------------------------------------------

/// `GET /metrics` over a raw socket; returns the body.
#[track_caller]
pub fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to metrics");
    stream
        .set_read_timeout(Some(WAIT))
        .expect("set read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the whole response");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "metrics answered: {response:?}"
    );
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    body.to_owned()
}

/// The value of the sample `series` (name and labels exactly as written).
#[track_caller]
pub fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

// ----- TLS certificates ---------------------------------------------------------

/// A throwaway CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`), made with the `openssl` command in a fresh
/// folder (make test installs it), removed on drop.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("callrelay-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pki = Pki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=callrelay test CA",
        ]);
        pki.leaf("server");
        pki
    }

    /// A new key and certificate `NAME.key` / `NAME.pem` signed by the CA.
    pub fn leaf(&self, name: &str) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            self.dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("ext");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run openssl (make test installs it)");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    }

    /// A file of the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Relay options for the certificate `NAME.pem`.
    pub fn args(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{name}.pem")).display().to_string(),
            "--tls-key".into(),
            self.path(&format!("{name}.key")).display().to_string(),
        ]
    }

    /// A rustls client configuration that trusts only the CA.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls::pki_types::CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca")
        {
            roots.add(cert.expect("ca cert")).expect("add the CA");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
