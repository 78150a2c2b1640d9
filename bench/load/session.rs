//! Blocking set-up steps shared by the modes: connect, register (and prove
//! the relay processed it), place and accept a call. Every read has a
//! deadline, so a relay that does not answer fails the run instead of
//! hanging it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing;
use callrelay::protocol::frame::{
    ClientMessage, DecodeError, ServerMessage, decode_server, encode_client,
};
use callrelay::protocol::qdatastream::QString;

use crate::tls::{self, Stream};

/// How long one set-up step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking connection to the relay with its framing and leftover input.
pub struct Session {
    /// The socket (blocking while setting up), plain or TLS (`--tls`).
    pub stream: Stream<TcpStream>,
    /// Its framing.
    pub framing: Framing,
    /// The registered user id.
    pub user: String,
    input: Vec<u8>,
}

fn other(message: String) -> io::Error {
    io::Error::other(message)
}

impl Session {
    /// Connects, registers `user` and waits until the relay has processed
    /// the registration (framed: a heartbeat answered; seed: a TEXT to
    /// itself comes back).
    pub fn register(addr: SocketAddr, framing: Framing, user: &str) -> io::Result<Session> {
        Session::register_with_rcvbuf(addr, framing, user, None)
    }

    /// [`Session::register`], with `SO_RCVBUF` set before connecting (so
    /// the window is small from the handshake on: a slow link's receiver).
    pub fn register_with_rcvbuf(
        addr: SocketAddr,
        framing: Framing,
        user: &str,
        rcvbuf: Option<usize>,
    ) -> io::Result<Session> {
        let stream = connect(addr, rcvbuf)?;
        stream.set_nodelay(true)?;
        let stream = tls::client(stream, addr)?;
        let mut session = Session {
            stream,
            framing,
            user: user.to_owned(),
            input: Vec::new(),
        };
        session.send(&ClientMessage::Register {
            kind: 7,
            user: registration_string(user),
        })?;
        session.sync()?;
        Ok(session)
    }

    /// Proves everything sent before has been processed by the relay.
    pub fn sync(&mut self) -> io::Result<()> {
        match self.framing {
            Framing::LengthPrefixed => {
                self.send(&ClientMessage::Heartbeat { suffix: None })?;
                match self.recv()? {
                    ServerMessage::Heartbeat => Ok(()),
                    other_message => Err(other(format!(
                        "{}: expected a heartbeat, got {other_message:?}",
                        self.user
                    ))),
                }
            }
            Framing::Seed => {
                let user = self.user.clone();
                self.send(&ClientMessage::Text {
                    to: QString::from_str(&user),
                    text: QString::from_str("sync"),
                })?;
                match self.recv()? {
                    ServerMessage::Text { .. } => Ok(()),
                    other_message => Err(other(format!(
                        "{user}: expected my TEXT back, got {other_message:?}"
                    ))),
                }
            }
        }
    }

    /// Sends one message.
    pub fn send(&mut self, message: &ClientMessage) -> io::Result<()> {
        let mut bytes = Vec::new();
        encode_client(message, self.framing, &mut bytes);
        self.stream.write_all(&bytes)
    }

    /// Waits for the next message (not media).
    pub fn recv(&mut self) -> io::Result<ServerMessage> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if !self.input.is_empty() {
                match decode_server(&self.input, self.framing) {
                    Ok((message, used)) => {
                        self.input.drain(..used);
                        return Ok(message);
                    }
                    Err(DecodeError::NeedMore) => {}
                    Err(DecodeError::Malformed) => {
                        return Err(other(format!(
                            "{}: malformed message from the relay",
                            self.user
                        )));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: no answer from the relay", self.user),
                ));
            }
            self.stream.sock.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(other(format!(
                        "{}: the relay closed the connection",
                        self.user
                    )));
                }
                Ok(count) => self.input.extend_from_slice(&chunk[..count]),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Bytes read past the last message (handed to the media parser).
    pub fn take_input(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }
}

/// Waits until `callee`, registered on another node of a cluster, can be
/// reached from `caller`'s node (its registration travels through Redis):
/// a framed TEXT to it is refused `offline` until then. Seed clients get no
/// such refusal, so cross-node runs need the framed framing.
pub fn wait_reachable(caller: &mut Session, callee: &mut Session) -> io::Result<()> {
    if caller.framing != Framing::LengthPrefixed {
        return Err(other(
            "callers and callees on two nodes need --framing framed".to_owned(),
        ));
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        caller.send(&ClientMessage::Text {
            to: QString::from_str(&callee.user),
            text: QString::from_str("reach"),
        })?;
        caller.send(&ClientMessage::Heartbeat { suffix: None })?;
        match caller.recv()? {
            ServerMessage::Heartbeat => break,
            ServerMessage::Error { .. } => {
                caller.recv()?; // the heartbeat
                if Instant::now() >= deadline {
                    return Err(other(format!(
                        "{} never became reachable from {}'s node",
                        callee.user, caller.user
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            message => {
                return Err(other(format!(
                    "{}: expected a heartbeat, got {message:?}",
                    caller.user
                )));
            }
        }
    }
    match callee.recv()? {
        ServerMessage::Text { .. } => Ok(()),
        message => Err(other(format!(
            "{}: expected the TEXT that proved it reachable, got {message:?}",
            callee.user
        ))),
    }
}

/// `caller` calls `callee`, which accepts. Returns the call id.
pub fn accepted_call(caller: &mut Session, callee: &mut Session) -> io::Result<String> {
    caller.send(&ClientMessage::CallRequest {
        callee: QString::from_str(&callee.user),
        video: 1,
    })?;
    let call_id = match callee.recv()? {
        ServerMessage::CallRequest { call_id, .. } => call_id,
        message => {
            return Err(other(format!(
                "{}: expected CALL_REQUEST, got {message:?}",
                callee.user
            )));
        }
    };
    callee.send(&ClientMessage::CallAccept {
        call_ref: QString::from_str(&call_id),
    })?;
    for session in [caller, callee] {
        match session.recv()? {
            ServerMessage::CallAccept { .. } => {}
            message => {
                return Err(other(format!(
                    "{}: expected CALL_ACCEPT, got {message:?}",
                    session.user
                )));
            }
        }
    }
    Ok(call_id)
}

/// A run-unique prefix for user ids, so runs never collide on one relay.
pub fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or(0);
    format!("load{:x}-{}", nanos % 0xFFFF_FFFF, std::process::id())
}

/// Connects within [`STEP_TIMEOUT`], with `SO_RCVBUF` set first if given.
pub fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let Some(rcvbuf) = rcvbuf else {
        return TcpStream::connect_timeout(&addr, STEP_TIMEOUT);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_recv_buffer_size(rcvbuf)?;
    socket.connect_timeout(&addr.into(), STEP_TIMEOUT)?;
    Ok(socket.into())
}

/// The keys that sign every registration of this run (`--secret-file`),
/// set once at start-up. A process-wide value: the tool is one run of one
/// mode, and every mode registers through [`registration_string`].
static SIGNER: std::sync::OnceLock<callrelay::auth::Keys> = std::sync::OnceLock::new();

/// Signs every registration from now on with the first key of `keys`.
pub fn sign_registrations(keys: callrelay::auth::Keys) {
    let _ = SIGNER.set(keys);
}

/// What registers `user`: the bare id, or with `--secret-file` a token for
/// it valid for an hour (PROTOCOL.md section 9).
pub fn registration_string(user: &str) -> String {
    match SIGNER.get() {
        Some(keys) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            keys.sign(user, now + 3600)
        }
        None => user.to_owned(),
    }
}
