//! The transport seam: every byte a client connection reads or writes goes
//! through [`Transport`], so a decrypting/encrypting layer (TLS) or a trunk
//! to another node can be added as a variant without a new forwarding path.
//! Today there is one variant, a plain TCP stream, and its writes stay
//! zero-copy: a vectored write of slices of the sender's read buffer.
//!
//! It owns the socket and nothing else: no buffers, no frames, no calls.

use std::io;
use std::net::Shutdown;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::socket::{self, SocketResult};

/// A client connection's byte stream.
pub enum Transport {
    /// Plain TCP: reads and vectored writes go straight to the socket.
    Plain(TcpStream),
}

impl Transport {
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
