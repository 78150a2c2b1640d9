//! `idle`: K registered connections that only send heartbeats, held for the
//! duration. Connections are spread over several loopback source addresses
//! (127.0.0.1, .2, ...) so more than the ~28k ephemeral ports of one source
//! address are possible; the open-files limit of this process and of the
//! relay is reported clearly when it is hit. At the end every connection
//! proves it is still registered (framed: a heartbeat answered; seed: a TEXT
//! to itself comes back).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing;
use callrelay::protocol::frame::{
    ClientMessage, DecodeError, ServerMessage, decode_server, encode_client,
};
use callrelay::protocol::qdatastream::QString;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

use crate::proc_stats::{self, Window};
use crate::report::Json;
use crate::session;
use crate::tls::{self, Stream};
use crate::{Common, Outcome, Progress};

/// Connections being opened at once (the relay's listen backlog is finite).
const CONNECTS_IN_FLIGHT: usize = 256;

/// Options of `idle`.
#[derive(Clone, Debug)]
pub struct IdleOptions {
    /// Connections to open and hold.
    pub connections: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Loopback source addresses to spread over.
    pub sources: u8,
    /// Client framing.
    pub framing: Framing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Registered,
    Verifying,
    Verified,
    Failed,
}

struct Conn {
    stream: Stream<TcpStream>,
    user: String,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    next_heartbeat: Instant,
}

/// Runs `idle`.
pub fn run(common: &Common, options: &IdleOptions) -> io::Result<Outcome> {
    let prefix = session::run_prefix();
    let limit = proc_stats::open_files_limit();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Conn> = Vec::with_capacity(options.connections);
    let baseline = common.server_pid.and_then(proc_stats::sample);
    let mut progress = Progress::new(common.quiet, "idle");
    let mut fd_limit_hit: Option<String> = None;
    let mut buffer = vec![0u8; 16 * 1024];
    let open_deadline = Instant::now() + Duration::from_secs(60).max(common.duration);
    // Open: keep a bounded number of connects in flight.
    let mut connecting = 0usize;
    loop {
        let now = Instant::now();
        let want_more = conns.len() < options.connections && fd_limit_hit.is_none();
        if (!want_more && connecting == 0) || now >= open_deadline {
            break;
        }
        while want_more && conns.len() < options.connections && connecting < CONNECTS_IN_FLIGHT {
            let index = conns.len();
            match open(common.addr, index, options.sources) {
                Ok(mut stream) => {
                    poll.registry().register(
                        &mut stream,
                        Token(index),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let stream = tls::client(stream, common.addr)?;
                    let user = format!("{prefix}-{index}");
                    let mut output = Vec::new();
                    encode_client(
                        &ClientMessage::Register {
                            kind: 7,
                            user: crate::session::registration_string(&user),
                        },
                        options.framing,
                        &mut output,
                    );
                    let spread = options
                        .heartbeat
                        .mul_f64(index as f64 / options.connections.max(1) as f64);
                    conns.push(Conn {
                        stream,
                        user,
                        state: State::Connecting,
                        input: Vec::new(),
                        output,
                        next_heartbeat: now + options.heartbeat + spread,
                    });
                    connecting += 1;
                }
                Err(error) if error.raw_os_error() == Some(24) => {
                    fd_limit_hit = Some(format!(
                        "hit this process's open-files limit (RLIMIT_NOFILE soft/hard {limit:?}) after {index} connections; \
                         it cannot be raised on this machine, so ask for fewer connections"
                    ));
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        if progress.due(now) {
            progress.line(&format!("opened {} connecting {connecting}", conns.len()));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if conn.state == State::Connecting {
                if conn.stream.sock.peer_addr().is_ok() {
                    conn.state = State::Registered;
                    connecting -= 1;
                } else if event.is_error() || event.is_write_closed() || event.is_read_closed() {
                    conn.state = State::Failed;
                    connecting -= 1;
                }
            }
            service(conn, &mut buffer, options.framing);
        }
    }
    let established = conns
        .iter()
        .filter(|c| c.state == State::Registered)
        .count();
    let mut window = common.server_pid.and_then(Window::start);
    let hold_end = Instant::now() + common.duration;
    // Hold: heartbeats at the interval, nothing else.
    loop {
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        if progress.due(now) {
            if let Some(window) = window.as_mut() {
                window.tick();
            }
            let alive = conns
                .iter()
                .filter(|c| c.state == State::Registered)
                .count();
            progress.line(&format!("holding {alive} of {established}"));
        }
        for conn in conns
            .iter_mut()
            .filter(|c| c.state == State::Registered && c.next_heartbeat <= now)
        {
            encode_client(
                &ClientMessage::Heartbeat { suffix: None },
                options.framing,
                &mut conn.output,
            );
            conn.next_heartbeat = now + options.heartbeat;
            service(conn, &mut buffer, options.framing);
        }
        poll.poll(
            &mut events,
            Some(
                progress
                    .next(now)
                    .min(hold_end)
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(200)),
            ),
        )?;
        for event in events.iter() {
            service(&mut conns[event.token().0], &mut buffer, options.framing);
        }
    }
    if let Some(window) = window.as_mut() {
        window.finish();
    }
    // Verify: every held connection is still registered.
    for conn in conns.iter_mut().filter(|c| c.state == State::Registered) {
        conn.input.clear();
        let me = QString::from_str(&conn.user);
        let message = match options.framing {
            Framing::LengthPrefixed => ClientMessage::Heartbeat { suffix: None },
            Framing::Seed => ClientMessage::Text {
                to: me,
                text: QString::from_str("still here"),
            },
        };
        encode_client(&message, options.framing, &mut conn.output);
        conn.state = State::Verifying;
        service(conn, &mut buffer, options.framing);
    }
    let verify_end = Instant::now() + Duration::from_secs(10);
    while conns.iter().any(|c| c.state == State::Verifying) && Instant::now() < verify_end {
        poll.poll(&mut events, Some(Duration::from_millis(200)))?;
        for event in events.iter() {
            service(&mut conns[event.token().0], &mut buffer, options.framing);
        }
    }
    let held = conns.iter().filter(|c| c.state == State::Verified).count();
    let mut json = Json::default();
    json.str("mode", "idle")
        .str("framing", crate::framing_name(options.framing))
        .num("connections_requested", options.connections as f64)
        .num("established", established as f64)
        .num("held", held as f64)
        .num("duration_s", common.duration.as_secs_f64())
        .num("heartbeat_s", options.heartbeat.as_secs_f64())
        .num("sources", f64::from(options.sources))
        .num("errors", (options.connections - held) as f64)
        .num(
            "open_files_limit",
            limit.map_or(f64::NAN, |(soft, _)| soft as f64),
        );
    if let Some(reason) = &fd_limit_hit {
        json.str("limit_hit", reason);
    }
    let mut human = format!(
        "idle ({} framing): {} requested, {established} established, {held} held for {:.0} s (heartbeat every {:.0} s, {} source addresses)",
        crate::framing_name(options.framing),
        options.connections,
        common.duration.as_secs_f64(),
        options.heartbeat.as_secs_f64(),
        options.sources
    );
    if let Some(reason) = &fd_limit_hit {
        human.push_str(&format!("\n{reason}"));
    }
    if let (Some(window), Some(baseline)) = (window, baseline) {
        let per_connection = (window.rss_end_kib.saturating_sub(baseline.rss_kib)) as f64 * 1024.0
            / held.max(1) as f64;
        let mut stats = Json::default();
        stats
            .num("rss_before_kib", baseline.rss_kib as f64)
            .num("rss_kib", window.rss_end_kib as f64)
            .num("peak_rss_kib", window.peak_rss_kib as f64)
            .num("rss_per_connection_bytes", per_connection)
            .num("cpu_s", window.cpu_s);
        json.obj("server", &stats);
        human.push_str(&format!(
            "\nserver: RSS {} KiB before, {} KiB holding ({:.0} bytes per connection), {:.2} CPU s while holding",
            baseline.rss_kib, window.rss_end_kib, per_connection, window.cpu_s
        ));
    }
    let ok = held == options.connections;
    Ok(Outcome { json, human, ok })
}

/// Opens a non-blocking connection from 127.0.0.(1 + index % sources).
fn open(addr: SocketAddr, index: usize, sources: u8) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if addr.ip().is_loopback() && sources > 1 {
        let host = 1 + (index % usize::from(sources)) as u8;
        socket
            .bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), 0)).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(error)
            if error.raw_os_error() == Some(115) || error.kind() == io::ErrorKind::WouldBlock => {}
        Err(error) => return Err(error),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Writes pending output and reads answers.
fn service(conn: &mut Conn, buffer: &mut [u8], framing: Framing) {
    if matches!(conn.state, State::Connecting | State::Failed) {
        return;
    }
    // TLS records still queued from an earlier write go first.
    if conn.stream.flush_pending().is_err() {
        return fail(conn);
    }
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return fail(conn),
            Ok(count) => {
                conn.output.drain(..count);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return fail(conn),
        }
    }
    loop {
        match conn.stream.read(buffer) {
            Ok(0) => return fail(conn),
            Ok(count) => conn.input.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return fail(conn),
        }
    }
    while !conn.input.is_empty() {
        match decode_server(&conn.input, framing) {
            Ok((message, used)) => {
                conn.input.drain(..used);
                match (conn.state, message) {
                    (State::Verifying, ServerMessage::Heartbeat | ServerMessage::Text { .. }) => {
                        conn.state = State::Verified
                    }
                    (_, ServerMessage::Heartbeat) => {}
                    _ => return fail(conn),
                }
            }
            Err(DecodeError::NeedMore) => break,
            Err(DecodeError::Malformed) => return fail(conn),
        }
    }
}

fn fail(conn: &mut Conn) {
    conn.state = State::Failed;
}
