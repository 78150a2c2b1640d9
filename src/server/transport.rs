//! The transport seam: every byte a client connection reads or writes goes
//! through [`Transport`]. A plain TCP stream writes zero-copy (a vectored
//! write of slices of the sender's read buffer); a TLS stream (rustls,
//! PROTOCOL.md section 10) passes bytes through one encryption or
//! decryption, still cut-through; a connection on a listener that offers
//! TLS starts `Sniffing` until its first two bytes say which it is.
//!
//! It owns the socket and the TLS session and nothing else: no buffers,
//! no frames, no calls.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection};

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::socket::{self, SocketResult};

/// A client connection's byte stream: the socket, and what runs over it.
pub struct Transport {
    tcp: TcpStream,
    layer: Layer,
}

/// What runs over a client socket.
enum Layer {
    /// Plain TCP: reads and vectored writes go straight to the socket.
    Plain,
    /// Not known yet: TLS is offered, and the first two bytes decide
    /// (`16 03`, a TLS handshake record, is TLS; anything else is plain).
    Sniffing(Arc<ServerConfig>),
    /// TLS.
    Tls(Box<ServerConnection>),
}

/// Plaintext rustls buffers at most, so delay-bounded media stays bounded
/// under TLS (PROTOCOL.md 8.2): past it, the relay's own queue holds it.
const TLS_BUFFER_LIMIT: usize = 16 * 1024;

/// The socket options every client connection gets (PROTOCOL.md 8.1, 8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// `TCP_USER_TIMEOUT`: written data unacknowledged this long fails the
    /// socket, so a vanished peer is found in about the idle timeout
    /// instead of the kernel's ~15 minutes of retransmissions.
    pub user_timeout: Duration,
    /// `TCP_NOTSENT_LOWAT` (0: leave the kernel's default): the kernel
    /// takes at most this many unsent bytes, so a slow receiver's backlog
    /// builds up in the relay's queue, where late media can be dropped.
    pub send_lowat: u32,
}

impl Transport {
    /// A client connection, tuned; with `tls`, it may speak TLS (decided by
    /// its first bytes). A failed option is logged by the caller and the
    /// connection kept: it still works, only less well.
    pub fn accepted(
        stream: TcpStream,
        tuning: &Tuning,
        tls: Option<Arc<ServerConfig>>,
    ) -> (Transport, Vec<(&'static str, io::Error)>) {
        let mut failures = Vec::new();
        if let Err(error) = stream.set_nodelay(true) {
            failures.push(("TCP_NODELAY", error));
        }
        let socket = socket2::SockRef::from(&stream);
        if let Err(error) = socket.set_tcp_user_timeout(Some(tuning.user_timeout)) {
            failures.push(("TCP_USER_TIMEOUT", error));
        }
        if tuning.send_lowat > 0
            && let Err(error) = socket.set_tcp_notsent_lowat(tuning.send_lowat)
        {
            failures.push(("TCP_NOTSENT_LOWAT", error));
        }
        let layer = match tls {
            Some(config) => Layer::Sniffing(config),
            None => Layer::Plain,
        };
        (Transport { tcp: stream, layer }, failures)
    }

    /// Reads once into `buf`: the byte count and how it ended. A short
    /// count means the socket is drained (TLS reads until the socket would
    /// block or `buf` is full).
    pub fn read(&mut self, buf: &mut [u8]) -> (usize, SocketResult) {
        if let Layer::Sniffing(config) = &self.layer {
            match sniff(&self.tcp) {
                Sniffed::Tls => match ServerConnection::new(Arc::clone(config)) {
                    Ok(mut session) => {
                        session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                        self.layer = Layer::Tls(Box::new(session));
                    }
                    Err(_) => return (0, SocketResult::Error),
                },
                Sniffed::Plain => self.layer = Layer::Plain,
                Sniffed::Wait(result) => return (0, result),
            }
        }
        match &mut self.layer {
            Layer::Plain | Layer::Sniffing(_) => socket::read_once(&mut self.tcp, buf),
            Layer::Tls(session) => tls_read(session, &mut self.tcp, buf),
        }
    }

    /// Writes `parts` in order until all are written or the transport would
    /// block: the byte count taken and how it ended.
    pub fn write(&mut self, parts: &[&[u8]]) -> (usize, SocketResult) {
        match &mut self.layer {
            Layer::Plain | Layer::Sniffing(_) => socket::write_all_vectored(&mut self.tcp, parts),
            Layer::Tls(session) => tls_write(session, &mut self.tcp, parts),
        }
    }

    /// True while TLS records wait for the socket (the poll must watch for
    /// writability even with the relay's own queue empty).
    pub fn wants_write(&self) -> bool {
        matches!(&self.layer, Layer::Tls(session) if session.wants_write())
    }

    /// Writes the TLS records waiting for the socket; false if it failed.
    pub fn flush_pending(&mut self) -> bool {
        match &mut self.layer {
            Layer::Tls(session) => !matches!(
                tls_flush(session, &mut self.tcp),
                SocketResult::Error | SocketResult::Closed
            ),
            _ => true,
        }
    }

    /// True for a TLS connection whose handshake is not complete.
    pub fn handshaking(&self) -> bool {
        matches!(&self.layer, Layer::Tls(session) if session.is_handshaking())
    }

    /// True until the first bytes have said plain or TLS.
    pub fn is_sniffing(&self) -> bool {
        matches!(self.layer, Layer::Sniffing(_))
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self.layer, Layer::Tls(_))
    }

    /// True once the first bytes showed a plain connection.
    pub fn is_plain(&self) -> bool {
        matches!(self.layer, Layer::Plain)
    }

    /// Ends the write side once the last output is written (TLS first says
    /// close_notify).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Layer::Tls(session) = &mut self.layer {
            session.send_close_notify();
            let _ = tls_flush(session, &mut self.tcp);
        }
        self.tcp.shutdown(Shutdown::Write)
    }

    /// The TCP socket underneath (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

/// What the first bytes of a connection on a TLS-offering listener said.
enum Sniffed {
    Tls,
    Plain,
    /// Not enough yet, or the socket ended or failed.
    Wait(SocketResult),
}

/// Peeks at the first two bytes (nothing is consumed).
fn sniff(tcp: &TcpStream) -> Sniffed {
    let mut first = [0u8; 2];
    loop {
        match tcp.peek(&mut first) {
            Ok(0) => return Sniffed::Wait(SocketResult::Closed),
            // One byte: the next one brings a new readiness event.
            Ok(1) => return Sniffed::Wait(SocketResult::WouldBlock),
            Ok(_) if first == [0x16, 0x03] => return Sniffed::Tls,
            Ok(_) => return Sniffed::Plain,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                return Sniffed::Wait(SocketResult::WouldBlock);
            }
            Err(_) => return Sniffed::Wait(SocketResult::Error),
        }
    }
}

/// Decrypted bytes into `buf`: what rustls holds first, then records read
/// from the socket until it would block or `buf` is full.
fn tls_read(
    session: &mut ServerConnection,
    tcp: &mut TcpStream,
    buf: &mut [u8],
) -> (usize, SocketResult) {
    let mut filled = 0;
    let ended = |filled: usize| {
        if filled > 0 {
            (filled, SocketResult::Continue)
        } else {
            (0, SocketResult::Closed)
        }
    };
    loop {
        if filled == buf.len() {
            return (filled, SocketResult::Continue);
        }
        match session
            .reader()
            .read(buf.get_mut(filled..).unwrap_or_default())
        {
            // close_notify: the peer ended the stream cleanly.
            Ok(0) => return ended(filled),
            Ok(count) => {
                filled += count;
                continue;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return ended(filled),
        }
        match session.read_tls(tcp) {
            Ok(0) => return ended(filled),
            Ok(_) => {
                let processed = session.process_new_packets();
                // Handshake messages and alerts go out at once.
                let flushed = tls_flush(session, tcp);
                if processed.is_err() || flushed == SocketResult::Error {
                    return (filled, SocketResult::Error);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let _ = tls_flush(session, tcp);
                let result = if filled > 0 {
                    SocketResult::Continue
                } else {
                    SocketResult::WouldBlock
                };
                return (filled, result);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (filled, SocketResult::Error),
        }
    }
}

/// Encrypts `parts` and writes the records, a rustls buffer at a time,
/// until all is taken or the socket would block (only then may the caller
/// wait for writability: an edge comes only once the socket was full).
fn tls_write(
    session: &mut ServerConnection,
    tcp: &mut TcpStream,
    parts: &[&[u8]],
) -> (usize, SocketResult) {
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let mut taken = 0;
    // Rounds in a row in which rustls took nothing.
    let mut idle_rounds = 0;
    loop {
        let before = taken;
        // One vectored write, so that a frame's header and payload travel in
        // one TLS record: Qt's QSslSocket signals readyRead per record, and
        // the guide's client reads one message per readyRead (a seed media
        // frame split in two records would reach it as two frames).
        let mut skip = taken;
        let mut slices = [io::IoSlice::new(&[]); 4];
        let mut used = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            if let Some(slot) = slices.get_mut(used) {
                *slot = io::IoSlice::new(part.get(skip..).unwrap_or_default());
                used += 1;
            }
            skip = 0;
        }
        match session
            .writer()
            .write_vectored(slices.get(..used).unwrap_or_default())
        {
            Ok(count) => taken += count,
            Err(_) => return (taken, SocketResult::Error),
        }
        idle_rounds = if taken == before { idle_rounds + 1 } else { 0 };
        match tls_flush(session, tcp) {
            // Nothing taken although the records were all written just
            // before: rustls will take no more (the session is closing). A
            // first empty round only means its buffer was full of records
            // the socket has taken since.
            SocketResult::Continue if idle_rounds >= 2 && taken < total => {
                return (taken, SocketResult::Error);
            }
            SocketResult::Continue if taken < total => continue,
            SocketResult::Continue => return (taken, SocketResult::Continue),
            SocketResult::WouldBlock => {
                let result = if taken < total {
                    SocketResult::WouldBlock
                } else {
                    SocketResult::Continue
                };
                return (taken, result);
            }
            other => return (taken, other),
        }
    }
}

/// Writes pending records until none is left or the socket would block.
fn tls_flush(session: &mut ServerConnection, tcp: &mut TcpStream) -> SocketResult {
    while session.wants_write() {
        match session.write_tls(tcp) {
            Ok(0) => return SocketResult::Closed,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                return SocketResult::WouldBlock;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return SocketResult::Closed;
            }
            Err(_) => return SocketResult::Error,
        }
    }
    SocketResult::Continue
}

impl Source for Transport {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.tcp.register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.tcp.reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.tcp.deregister(registry)
    }
}
