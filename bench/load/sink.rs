//! `sink`: accepts connections and reads media frames from them for the
//! duration (the far end of a byte pipe set up by hand), reporting frames,
//! bytes and one-way latency (send stamps are wall-clock, so the sender may
//! be another process on this machine).

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::Instant;

use callrelay::protocol::Framing;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::payload::{self, MediaStream};
use crate::report::{self, Json};
use crate::tls::{self, Stream};
use crate::{Common, Outcome, Progress};

const LISTENER: Token = Token(usize::MAX - 1);

/// Runs `sink` on `listen` for frames of `size` bytes in `framing`.
pub fn run(
    common: &Common,
    listen: SocketAddr,
    framing: Framing,
    size: usize,
) -> io::Result<Outcome> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    if !common.quiet {
        eprintln!("sink listening on {}", listener.local_addr()?);
    }
    let mut conns: Vec<(Stream<TcpStream>, MediaStream, bool)> = Vec::new();
    let (mut frames, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut latency = report::latency_histogram();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut events = Events::with_capacity(1024);
    let mut progress = Progress::new(common.quiet, "sink");
    let end = Instant::now() + common.duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if progress.due(now) {
            progress.line(&format!("connections {} frames {frames}", conns.len()));
        }
        poll.poll(
            &mut events,
            Some(progress.next(now).min(end).saturating_duration_since(now)),
        )?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    // Writable too: a TLS sink's handshake answers may wait
                    // for room in the socket.
                    poll.registry().register(
                        &mut stream,
                        Token(conns.len()),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.push((tls::sink(stream)?, MediaStream::new(framing, size), false));
                }
                continue;
            }
            let Some((stream, parser, closed)) = conns.get_mut(event.token().0) else {
                continue;
            };
            if !*closed && stream.flush_pending().is_err() {
                *closed = true;
                errors += 1;
            }
            while !*closed {
                let count = match stream.read(&mut buffer) {
                    Ok(0) => {
                        *closed = true;
                        break;
                    }
                    Ok(count) => count,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        *closed = true;
                        errors += 1;
                        break;
                    }
                };
                let arrival = payload::now_stamp();
                let fed = parser.feed(&buffer[..count], |frame| {
                    frames += 1;
                    bytes += size as u64;
                    let _ = latency.record(payload::elapsed_nanos(frame.stamp, arrival).max(1));
                });
                if fed.is_err() {
                    errors += 1;
                    *closed = true;
                }
            }
        }
    }
    let seconds = common.duration.as_secs_f64();
    let mut json = Json::default();
    json.str("mode", "sink")
        .num("connections", conns.len() as f64)
        .num("frames_delivered", frames as f64)
        .num("bytes_delivered", bytes as f64)
        .num("delivered_fps", frames as f64 / seconds)
        .num("delivered_mibps", report::mib_per_s(bytes, seconds))
        .obj("latency_us", &report::latency_json(&latency))
        .num("errors", errors as f64);
    let human = format!(
        "sink: {} connections, {frames} frames ({:.0} frames/s, {:.2} MiB/s), errors {errors}\nlatency: {}",
        conns.len(),
        frames as f64 / seconds,
        report::mib_per_s(bytes, seconds),
        report::latency_line(&latency)
    );
    Ok(Outcome {
        json,
        human,
        ok: errors == 0,
    })
}
