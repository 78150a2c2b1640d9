//! A tiny HTTP/1.1 responder for `GET /metrics`, `/healthz` and `/readyz`,
//! served from the same poll loop as the relay. One request per
//! connection: read the request head (at most 8 KiB), answer, close.
//! `GET /metrics` gets the Prometheus text; `/healthz` 200 while serving,
//! 503 once a drain started; `/readyz` 200 when new clients can be served
//! (in a cluster: Redis reachable), else 503; another path gets 404,
//! another method 405, anything that is not an HTTP request head 400. It
//! reads the counters and writes nothing else.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

/// The most bytes of a request head we read.
const MAX_HEAD: usize = 8 * 1024;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`: is the process serving (not draining)?
    Health,
    /// `GET /readyz`: may a load balancer send new clients?
    Ready,
    /// A well-formed request for another path.
    NotFound,
    /// A well-formed request with another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request head, or over the size limit.
    Bad,
}

/// Looks at the bytes received so far: `None` while the head is incomplete.
pub fn parse_request(input: &[u8]) -> Option<Request> {
    let Some(end) = input.windows(4).position(|window| window == b"\r\n\r\n") else {
        return (input.len() >= MAX_HEAD).then_some(Request::Bad);
    };
    let Ok(head) = std::str::from_utf8(&input[..end]) else {
        return Some(Request::Bad);
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Request::Bad);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Some(Request::Bad);
    }
    let path = target.split('?').next().unwrap_or_default();
    Some(match (method, path) {
        ("GET", "/metrics") => Request::Metrics,
        ("GET", "/healthz") => Request::Health,
        ("GET", "/readyz") => Request::Ready,
        ("GET" | "HEAD", _) => Request::NotFound,
        _ => Request::MethodNotAllowed,
    })
}

/// Builds a complete response with `Connection: close`.
pub fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a metrics connection should do next.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Wait for more readiness.
    Wait,
    /// The request head is complete: answer it.
    Answer(Request),
    /// Done or failed: drop the connection.
    Close,
}

/// One metrics client.
pub struct MetricsConn {
    /// The socket.
    pub socket: TcpStream,
    /// Dropped at this time whatever its state.
    pub deadline: Instant,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    answered: bool,
}

impl MetricsConn {
    /// A new metrics connection that must be done by `deadline`.
    pub fn new(socket: TcpStream, deadline: Instant) -> MetricsConn {
        MetricsConn {
            socket,
            deadline,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            answered: false,
        }
    }

    /// Reads what arrived; says whether the request can be answered.
    pub fn on_readable(&mut self) -> Progress {
        if self.answered {
            return self.drain();
        }
        let mut chunk = [0u8; 2048];
        loop {
            match self.socket.read(&mut chunk) {
                Ok(0) => return Progress::Close,
                Ok(count) => {
                    self.input.extend_from_slice(&chunk[..count]);
                    if let Some(request) = parse_request(&self.input) {
                        return Progress::Answer(request);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Progress::Wait,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Close,
            }
        }
    }

    /// Queues the response and writes what the socket takes.
    pub fn answer(&mut self, bytes: Vec<u8>) -> Progress {
        self.answered = true;
        self.output = bytes;
        self.on_writable()
    }

    /// Writes the rest of the response; closes once it is all written.
    pub fn on_writable(&mut self) -> Progress {
        if !self.answered {
            return Progress::Wait;
        }
        while self.written < self.output.len() {
            match self.socket.write(&self.output[self.written..]) {
                Ok(0) => return Progress::Close,
                Ok(count) => self.written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Progress::Wait,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Close,
            }
        }
        Progress::Close
    }

    /// After answering, reads and discards until the response is written.
    fn drain(&mut self) -> Progress {
        let mut chunk = [0u8; 2048];
        loop {
            match self.socket.read(&mut chunk) {
                Ok(0) => return Progress::Close,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Progress::Wait,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Close,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics)
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Request::Metrics)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n"),
            Some(Request::NotFound)
        );
        assert_eq!(
            parse_request(b"GET /healthz HTTP/1.1\r\n\r\n"),
            Some(Request::Health)
        );
        assert_eq!(
            parse_request(b"GET /readyz HTTP/1.0\r\n\r\n"),
            Some(Request::Ready)
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Request::MethodNotAllowed)
        );
        assert_eq!(parse_request(b"hello\r\n\r\n"), Some(Request::Bad));
        assert_eq!(
            parse_request(b"GET /metrics SPDY/3\r\n\r\n"),
            Some(Request::Bad)
        );
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\n"), None);
        assert_eq!(parse_request(&[b'a'; MAX_HEAD]), Some(Request::Bad));
        assert_eq!(
            parse_request(b"\xff\xfe /x HTTP/1.1\r\n\r\n"),
            Some(Request::Bad)
        );
    }
}
