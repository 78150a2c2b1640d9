//! The transport seam: every byte a client connection reads or writes goes
//! through [`Transport`], so a decrypting/encrypting layer (TLS) or a trunk
//! to another node can be added as a variant without a new forwarding path.
//! Today there is one variant, a plain TCP stream, and its writes stay
//! zero-copy: a vectored write of slices of the sender's read buffer.
//!
//! It owns the socket and nothing else: no buffers, no frames, no calls.

use std::io;
use std::net::Shutdown;
use std::time::Duration;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::socket::{self, SocketResult};

/// A client connection's byte stream.
pub enum Transport {
    /// Plain TCP: reads and vectored writes go straight to the socket.
    Plain(TcpStream),
}

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
    /// A plain TCP client connection, tuned. A failed option is logged by
    /// the caller and the connection kept: it still works, only less well.
    pub fn plain(
        stream: TcpStream,
        tuning: &Tuning,
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
        (Transport::Plain(stream), failures)
    }

    /// Reads once into `buf`: the byte count and how it ended.
    pub fn read(&mut self, buf: &mut [u8]) -> (usize, SocketResult) {
        match self {
            Transport::Plain(stream) => socket::read_once(stream, buf),
        }
    }

    /// Writes `parts` in order until all are written or the transport would
    /// block: the byte count taken and how it ended.
    pub fn write(&mut self, parts: &[&[u8]]) -> (usize, SocketResult) {
        match self {
            Transport::Plain(stream) => socket::write_all_vectored(stream, parts),
        }
    }

    /// Ends the write side once the last output is written.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.shutdown(Shutdown::Write),
        }
    }

    /// The TCP socket underneath (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
        }
    }
}

impl Source for Transport {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.deregister(registry),
        }
    }
}
