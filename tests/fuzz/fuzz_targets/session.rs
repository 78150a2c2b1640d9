//! Fuzz target: the real server. Each input builds a `callrelay::server::Server`
//! on 127.0.0.1:0 (short timeouts, small limits, a stats timer that keeps
//! `turn()` from ever blocking), connects up to four real TCP clients and runs
//! a script on them: register in seed or length-prefixed framing, write
//! well-formed frames (whole, or cut with the rest sent later or never),
//! bursts, arbitrary bytes, read, half-close or reset, turn the loop, sleep a
//! little so timers fire. The event loop, the parser, the relay and the pipe
//! (forwarding, holding, waiting, padding) all run as in production.
//!
//! Checks, besides "nothing panics":
//! * a client that never wrote three bytes (no framing) receives nothing;
//! * after the script and a bounded drain (turns until no byte moves for a
//!   few turns), every length-prefixed client's received bytes are whole,
//!   well-formed server frames (length prefix, known type, fields that
//!   decode), except for one trailing frame that may be cut short, and even
//!   that must have a plausible header (a desynchronised stream would not);
//! * the server's counters agree with what the clients saw: every connect
//!   was accepted or refused, and no client received more bytes than the
//!   server wrote or queued (plus the ERROR frames a close writes);
//! * for scripts of well-formed length-prefixed frames only, the media
//!   counters do not exceed the media the clients sent.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Once;
use std::time::Duration;

use callrelay::config::{Config, Timeouts};
use callrelay::protocol::frame::{ClientMessage, ServerMessage, decode_server, encode_client};
use callrelay::protocol::qdatastream::QString;
use callrelay::protocol::{Framing, Limits};
use callrelay::server::Server;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use socket2::{Domain, SockRef, Socket, Type};

const CLIENTS: usize = 4;
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const MAX_OPS: usize = 48;
/// Bytes the clients may write per input (bursts included).
const MAX_WRITE: usize = 192 * 1024;
const MAX_SCRIPT_TURNS: usize = 96;
const MAX_DRAIN_TURNS: usize = 200;
const QUIET_TURNS: usize = 3;
const MAX_SLEEP: Duration = Duration::from_millis(6);

const LIMITS: Limits = Limits {
    max_user_id: 16,
    max_registration: 16,
    max_field: 64,
    max_text: 256,
    max_file: 4096,
    max_media: 4096,
};

fn config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        limits: LIMITS,
        max_connections: CLIENTS,
        max_per_ip: 0,
        max_unregistered: CLIENTS - 1,
        output_soft: 4096,
        output_hard: 48 * 1024,
        timeouts: Timeouts {
            register: Duration::from_secs(2),
            idle: Duration::from_secs(2),
            ring: Duration::from_millis(4),
            media_grace: Duration::from_millis(1),
            linger: Duration::from_millis(5),
            shutdown: Duration::from_millis(50),
            // Always due: `turn()` polls without blocking.
            stats_interval: Duration::from_nanos(1),
            stall: Duration::from_millis(2),
            ..Timeouts::default()
        },
        ..Config::default()
    }
}

/// Every ERROR frame a close writes is at most this long (not counted in
/// the server's byte counters).
const ERROR_ALLOWANCE: usize = 256;

struct Client {
    stream: TcpStream,
    /// The framing its frames are encoded in until its bytes decide.
    intent: Framing,
    /// The first three bytes it wrote (they decide the framing).
    first: Vec<u8>,
    /// Script bytes the socket has not taken yet (written in order).
    pending: Vec<u8>,
    /// The rest of a frame cut short, sent only on a resume.
    deferred: Vec<u8>,
    received: Vec<u8>,
    /// Bytes of `received` decoded so far (length-prefixed only).
    decoded: usize,
    last_call: Option<String>,
    eof: bool,
    write_shut: bool,
}

impl Client {
    fn framing(&self) -> Option<Framing> {
        match self.first.get(..3) {
            None => None,
            Some([0, 0, 0]) => Some(Framing::LengthPrefixed),
            Some(_) => Some(Framing::Seed),
        }
    }

    fn encoding(&self) -> Framing {
        self.framing().unwrap_or(self.intent)
    }

    /// Writes what it can of the pending bytes; the count written.
    fn flush(&mut self) -> usize {
        if self.write_shut || self.pending.is_empty() {
            return 0;
        }
        let mut total = 0;
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => break,
                Ok(n) => {
                    let take = n.min(3 - self.first.len().min(3));
                    self.first.extend_from_slice(&self.pending[..take]);
                    self.pending.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    // Reset or closed by the server: nothing more goes out.
                    self.pending.clear();
                    self.write_shut = true;
                    break;
                }
            }
        }
        total
    }

    /// Reads what is there; the count read.
    fn read(&mut self) -> usize {
        let mut total = 0;
        let mut buf = [0u8; 16 * 1024];
        while !self.eof {
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.received.extend_from_slice(&buf[..n]);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => self.eof = true,
            }
        }
        self.decode();
        total
    }

    /// Follows complete length-prefixed frames to learn call ids.
    fn decode(&mut self) {
        if self.framing() != Some(Framing::LengthPrefixed) {
            return;
        }
        while let Ok((message, used)) = decode_server(&self.received[self.decoded..], Framing::LengthPrefixed) {
            match message {
                ServerMessage::CallRequest { call_id, .. } | ServerMessage::CallAccept { call_id } => {
                    self.last_call = Some(call_id);
                }
                _ => {}
            }
            self.decoded += used;
        }
    }

    /// The stream checks (see the top of the file).
    fn check(&self, who: usize) {
        let Some(framing) = self.framing() else {
            assert!(
                self.received.is_empty(),
                "client {who} chose no framing yet received {:?}",
                self.received
            );
            return;
        };
        if framing != Framing::LengthPrefixed {
            return;
        }
        check_stream(&self.received, who);
    }

    /// Resets the connection (no TIME_WAIT left behind).
    fn reset(self) {
        let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// The most a server frame in these limits can claim: a FILE header plus
/// its data is the largest, except media from a seed sender, whose payload
/// is whatever one read brought (at most the server's 64 KiB read buffer).
const MAX_SERVER_FRAME: usize = 1 + 4 + 2 * 16 + 4 + LIMITS.max_field + 4 + LIMITS.max_file as usize;
const MAX_SERVER_MEDIA_FRAME: usize = 1 + 64 * 1024;

fn check_stream(bytes: &[u8], who: usize) {
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let context = || format!("client {who}, frame at {at} of {}: {:02x?}", bytes.len(), &rest[..rest.len().min(64)]);
        if rest.len() < 4 {
            // A cut prefix: nothing to judge yet.
            return;
        }
        let length = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert!(length >= 1, "empty server frame: {}", context());
        if let Some(&kind) = rest.get(4) {
            assert!(matches!(kind, 0..=7 | 0x20), "unknown server frame type {kind}: {}", context());
            let bound = if kind == 6 { MAX_SERVER_MEDIA_FRAME } else { MAX_SERVER_FRAME };
            assert!(length <= bound, "server frame of {length} bytes: {}", context());
        }
        if rest.len() < 4 + length {
            // The trailing frame may be cut short (a body in progress that
            // its sender never finished, or a close mid-frame).
            return;
        }
        match decode_server(&rest[..4 + length], Framing::LengthPrefixed) {
            Ok((ServerMessage::Unknown { kind }, _)) => panic!("unknown type {kind}: {}", context()),
            Ok((_, used)) => assert_eq!(used, 4 + length),
            Err(error) => panic!("server frame does not decode ({error:?}): {}", context()),
        }
        at += 4 + length;
    }
}

fn ignore_sigpipe() {
    static ONCE: Once = Once::new();
    // libFuzzer's main, not Rust's, starts this process: SIGPIPE is not
    // ignored as in the relay's binary, and a write to a reset socket (by
    // the server or a client) would kill the process.
    ONCE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
}

struct Session {
    server: Server,
    addr: SocketAddr,
    clients: Vec<Option<Client>>,
    connects: u64,
    written: usize,
    turns: usize,
    slept: Duration,
    /// Only well-formed length-prefixed frames were written.
    clean: bool,
    media_frames_sent: u64,
    media_bytes_sent: u64,
    received_by_gone: usize,
}

impl Session {
    fn new() -> Session {
        let server = Server::bind(config()).expect("bind the relay");
        let addr = server.local_addr();
        Session {
            server,
            addr,
            clients: (0..CLIENTS).map(|_| None).collect(),
            connects: 0,
            written: 0,
            turns: 0,
            slept: Duration::ZERO,
            clean: true,
            media_frames_sent: 0,
            media_bytes_sent: 0,
            received_by_gone: 0,
        }
    }

    fn turn(&mut self) {
        let exit = self.server.turn().expect("turn");
        assert!(exit.is_none(), "the loop ended without a signal");
        self.turns += 1;
    }

    fn connect(&mut self, slot: usize, small_buffer: bool) -> bool {
        if self.clients[slot].is_some() {
            return true;
        }
        let Ok(socket) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
            return false;
        };
        if small_buffer {
            // Backpressure with little data: the server's writes to this
            // client stop early, so its output queues and limits are used.
            let _ = socket.set_recv_buffer_size(4096);
        }
        if socket.connect(&self.addr.into()).is_err() {
            return false;
        }
        let stream: TcpStream = socket.into();
        let _ = stream.set_nodelay(true);
        stream.set_nonblocking(true).expect("nonblocking");
        self.connects += 1;
        self.clients[slot] = Some(Client {
            stream,
            intent: Framing::LengthPrefixed,
            first: Vec::new(),
            pending: Vec::new(),
            deferred: Vec::new(),
            received: Vec::new(),
            decoded: 0,
            last_call: None,
            eof: false,
            write_shut: false,
        });
        true
    }

    fn client(&mut self, slot: usize) -> Option<&mut Client> {
        if !self.connect(slot, false) {
            return None;
        }
        self.clients[slot].as_mut()
    }

    /// Queues bytes on a client (within the input's write budget).
    fn write(&mut self, slot: usize, bytes: &[u8]) {
        let room = MAX_WRITE.saturating_sub(self.written);
        let bytes = &bytes[..bytes.len().min(room)];
        self.written += bytes.len();
        let Some(client) = self.client(slot) else {
            return;
        };
        // Bytes inside a frame cut short: no longer well-formed.
        let inside_cut = !client.deferred.is_empty();
        client.pending.extend_from_slice(bytes);
        client.flush();
        self.clean &= !inside_cut;
    }

    fn message(&mut self, u: &mut Unstructured<'_>, slot: usize) -> Result<ClientMessage> {
        let pick_user = |u: &mut Unstructured<'_>| -> Result<QString> {
            Ok(match u.int_in_range(0..=5)? {
                0..=3 => QString::from_str(USERS[u.int_in_range(0..=3)?]),
                4 => QString::from_str(""),
                _ => QString::null(),
            })
        };
        let last_call = self.clients[slot].as_ref().and_then(|c| c.last_call.clone());
        let call_ref = |u: &mut Unstructured<'_>| -> Result<QString> {
            match (u.int_in_range(0..=2)?, &last_call) {
                (0, Some(id)) => Ok(QString::from_str(id)),
                (1, _) => Ok(QString::from_str("")),
                _ => pick_user(u),
            }
        };
        let text = |u: &mut Unstructured<'_>, max: usize| -> Result<QString> {
            let len = u.int_in_range(0..=max)?;
            Ok(QString::from_str(&"x".repeat(len)))
        };
        Ok(match u.int_in_range(0..=8)? {
            0 => ClientMessage::Text { to: pick_user(u)?, text: text(u, 100)? },
            1 => {
                let len = match u.int_in_range(0..=3)? {
                    0 => 0,
                    1 => LIMITS.max_file as usize + u.int_in_range(0..=1)?,
                    _ => u.int_in_range(1..=1500)?,
                };
                let fill: u8 = u.arbitrary()?;
                ClientMessage::File { to: pick_user(u)?, name: text(u, 8)?, data: vec![fill; len] }
            }
            2 => ClientMessage::CallRequest { callee: pick_user(u)?, video: u.arbitrary()? },
            3 => ClientMessage::CallAccept { call_ref: call_ref(u)? },
            4 => ClientMessage::CallReject { call_ref: call_ref(u)?, reason: text(u, 8)? },
            5 => ClientMessage::CallEnd { call_ref: call_ref(u)? },
            6 | 7 => {
                let len = match u.int_in_range(0..=3)? {
                    0 => 0,
                    1 => LIMITS.max_media as usize + u.int_in_range(0..=1)?,
                    _ => u.int_in_range(1..=1200)?,
                };
                // Seed media must not look like CALL_END or a new frame to
                // stay one frame; anything else is fine.
                let fill = u.int_in_range(8..=255)?;
                ClientMessage::Media { payload: vec![fill; len] }
            }
            _ => {
                let own = USERS[slot].to_owned();
                ClientMessage::Heartbeat { suffix: if u.arbitrary()? { Some(own) } else { None } }
            }
        })
    }

    /// Registers a client that has written nothing yet as its own user, so
    /// most scripts get past registration and reach calls and the pipe.
    fn ensure_registered(&mut self, u: &mut Unstructured<'_>, slot: usize) -> Result<()> {
        let framing = if u.ratio(3, 4)? { Framing::LengthPrefixed } else { Framing::Seed };
        let Some(client) = self.client(slot) else {
            return Ok(());
        };
        if !client.first.is_empty() || !client.pending.is_empty() {
            return Ok(());
        }
        client.intent = framing;
        if framing == Framing::Seed {
            self.clean = false;
        }
        let mut bytes = Vec::new();
        encode_client(&ClientMessage::Register { kind: 7, user: USERS[slot].to_owned() }, framing, &mut bytes);
        self.write(slot, &bytes);
        Ok(())
    }

    /// Sends a well-formed message from a client.
    fn send(&mut self, slot: usize, message: &ClientMessage) {
        let Some(framing) = self.client(slot).map(|c| c.encoding()) else {
            return;
        };
        self.note(message, framing);
        let mut bytes = Vec::new();
        encode_client(message, framing, &mut bytes);
        self.write(slot, &bytes);
    }

    fn settle(&mut self, turns: usize) {
        for _ in 0..turns {
            self.turn();
            self.pump();
        }
    }

    /// Counts the media a well-formed length-prefixed frame carries.
    fn note(&mut self, message: &ClientMessage, framing: Framing) {
        match (message, framing) {
            (ClientMessage::Media { payload }, Framing::LengthPrefixed) => {
                self.media_frames_sent += 1;
                self.media_bytes_sent += payload.len() as u64;
            }
            (_, Framing::Seed) => self.clean = false,
            _ => {}
        }
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let slot = u.int_in_range(0..=CLIENTS - 1)?;
        match u.int_in_range(0..=12)? {
            0 => {
                let small = u.arbitrary()?;
                self.connect(slot, small);
            }
            1 => {
                // Register, as the guide does (kind 7) or with another kind.
                let framing = if u.arbitrary()? { Framing::LengthPrefixed } else { Framing::Seed };
                let user = match u.int_in_range(0..=5)? {
                    0..=3 => USERS[slot].to_owned(),
                    4 => USERS[u.int_in_range(0..=3)?].to_owned(),
                    _ => String::new(),
                };
                let kind = if u.ratio(7, 8)? { 7 } else { u.arbitrary()? };
                if kind != 7 {
                    // Parsed as another frame once registered.
                    self.clean = false;
                }
                let framing = match self.client(slot) {
                    Some(client) => {
                        client.intent = framing;
                        client.encoding()
                    }
                    None => return Ok(()),
                };
                if framing == Framing::Seed {
                    self.clean = false;
                }
                let mut bytes = Vec::new();
                encode_client(&ClientMessage::Register { kind, user }, framing, &mut bytes);
                self.write(slot, &bytes);
            }
            2 | 3 => {
                self.ensure_registered(u, slot)?;
                let message = self.message(u, slot)?;
                self.send(slot, &message);
            }
            12 => {
                // A call set up between two clients: request, accept.
                let peer = (slot + u.int_in_range(1..=CLIENTS - 1)?) % CLIENTS;
                self.ensure_registered(u, slot)?;
                self.ensure_registered(u, peer)?;
                self.settle(2);
                let video = u.arbitrary()?;
                self.send(slot, &ClientMessage::CallRequest { callee: QString::from_str(USERS[peer]), video });
                self.settle(2);
                self.send(peer, &ClientMessage::CallAccept { call_ref: QString::from_str("") });
                self.settle(2);
            }
            4 => {
                self.ensure_registered(u, slot)?;
                // A frame cut short: the rest waits for a resume (or never).
                let message = self.message(u, slot)?;
                let Some(framing) = self.client(slot).map(|c| c.encoding()) else {
                    return Ok(());
                };
                self.note(&message, framing);
                let mut bytes = Vec::new();
                encode_client(&message, framing, &mut bytes);
                let cut = u.int_in_range(0..=bytes.len())?;
                let rest = bytes.split_off(cut);
                self.write(slot, &bytes);
                if let Some(client) = self.clients[slot].as_mut() {
                    client.deferred.extend_from_slice(&rest);
                }
            }
            5 => {
                let rest = self.clients[slot].as_mut().map(|c| std::mem::take(&mut c.deferred)).unwrap_or_default();
                self.write(slot, &rest);
            }
            6 => {
                self.ensure_registered(u, slot)?;
                // A burst of media frames (or one long FILE), to fill
                // someone's output.
                let Some(framing) = self.client(slot).map(|c| c.encoding()) else {
                    return Ok(());
                };
                let (count, size) = (u.int_in_range(1..=24)?, u.int_in_range(256..=LIMITS.max_media as usize)?);
                let mut bytes = Vec::new();
                for i in 0..count {
                    let message = ClientMessage::Media { payload: vec![8 + (i % 200) as u8; size] };
                    self.note(&message, framing);
                    encode_client(&message, framing, &mut bytes);
                }
                self.write(slot, &bytes);
            }
            7 => {
                let len = u.int_in_range(0..=64)?;
                let bytes = u.bytes(len)?.to_vec();
                self.clean = false;
                self.write(slot, &bytes);
            }
            8 => {
                if let Some(client) = self.clients[slot].as_mut() {
                    client.read();
                }
            }
            9 => {
                let Some(client) = self.clients[slot].as_mut() else {
                    return Ok(());
                };
                match u.int_in_range(0..=2)? {
                    // Half-close: the server sees EOF, the client still reads.
                    0 => {
                        client.flush();
                        let _ = client.stream.shutdown(Shutdown::Write);
                        client.write_shut = true;
                    }
                    // Gone: checked now, reset (reads cut short are fine).
                    _ => {
                        let client = self.clients[slot].take().expect("client");
                        client.check(slot);
                        self.received_by_gone += client.received.len();
                        client.reset();
                    }
                }
            }
            10 => {
                let n = u.int_in_range(1..=4)?;
                for _ in 0..n {
                    if self.turns >= MAX_SCRIPT_TURNS {
                        break;
                    }
                    self.turn();
                    self.pump();
                }
            }
            11 => {
                // Let a few milliseconds pass: ring, stall and grace timers.
                let ms = Duration::from_millis(u.int_in_range(1..=3)?);
                if self.slept + ms <= MAX_SLEEP {
                    self.slept += ms;
                    std::thread::sleep(ms);
                    self.turn();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Every client writes what it can and reads what arrived; bytes moved.
    fn pump(&mut self) -> usize {
        let mut moved = 0;
        for client in self.clients.iter_mut().flatten() {
            moved += client.flush();
            moved += client.read();
        }
        moved
    }

    fn drain(&mut self) {
        let mut quiet = 0;
        for _ in 0..MAX_DRAIN_TURNS {
            self.turn();
            if self.pump() == 0 {
                quiet += 1;
                if quiet >= QUIET_TURNS {
                    break;
                }
            } else {
                quiet = 0;
            }
        }
    }

    fn check(&self) {
        let mut received = self.received_by_gone;
        for (slot, client) in self.clients.iter().enumerate() {
            if let Some(client) = client {
                client.check(slot);
                received += client.received.len();
            }
        }
        let counters = self.server.counters();
        assert_eq!(
            counters.connections_accepted + counters.connections_refused,
            self.connects,
            "every connect is accepted or refused: {counters:?}"
        );
        let sent = counters.bytes_zero_copy + counters.bytes_queued;
        let allowance = (self.connects as usize * ERROR_ALLOWANCE) as u64;
        assert!(
            received as u64 <= sent + allowance,
            "clients received {received} bytes, the server wrote or queued {sent}: {counters:?}"
        );
        assert!(counters.output_overflow_closes <= counters.connections_accepted);
        if self.clean {
            assert!(
                counters.media_frames_relayed + counters.media_dropped() <= self.media_frames_sent,
                "more media frames counted than sent ({}): {counters:?}",
                self.media_frames_sent
            );
            assert!(
                counters.media_bytes_relayed <= self.media_bytes_sent,
                "more media bytes relayed than sent ({}): {counters:?}",
                self.media_bytes_sent
            );
            assert_eq!(counters.media_dropped_stale, 0, "stale media without seed clients");
        }
    }

    fn finish(self) {
        for client in self.clients.into_iter().flatten() {
            client.reset();
        }
        // Dropping the server now closes its sockets after the resets.
    }
}

fuzz_target!(|data: &[u8]| {
    ignore_sigpipe();
    let mut u = Unstructured::new(data);
    let mut session = Session::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() || session.step(&mut u).is_err() {
            break;
        }
    }
    session.drain();
    session.check();
    session.finish();
});
