//! `mixed`: the soak scenario. Worker threads loop over rounds of what real
//! clients do, with fresh connections every round (churn): register two
//! users, call, accept, exchange media both ways, send text both ways, hang
//! up, disconnect; plus a refused call, a hostile connection sending
//! garbage, and a connection that leaves without registering. Every
//! unexpected answer is an error. The server's RSS is sampled over time,
//! and at the end, after every client left, the relay's /metrics must show
//! zero connections, calls and users (nothing leaked).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use callrelay::protocol::Framing;
use callrelay::protocol::frame::{ClientMessage, ServerMessage};
use callrelay::protocol::qdatastream::QString;

use crate::proc_stats;
use crate::report::Json;
use crate::session::{self, Session};
use crate::tls::{self, Stream};
use crate::{Common, Outcome, Progress};

/// Counts shared by the workers.
#[derive(Default)]
struct Totals {
    rounds: AtomicU64,
    errors: AtomicU64,
    media_frames: AtomicU64,
}

/// Runs `mixed` with `workers` threads; `metrics` is the relay's metrics address.
pub fn run(common: &Common, workers: usize, metrics: Option<SocketAddr>) -> io::Result<Outcome> {
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let prefix = session::run_prefix();
    let baseline = common.server_pid.and_then(proc_stats::sample);
    let mut handles = Vec::new();
    for worker in 0..workers {
        let (totals, stop, prefix, addr) = (
            Arc::clone(&totals),
            Arc::clone(&stop),
            prefix.clone(),
            common.addr,
        );
        handles.push(thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let framing = if (worker + round as usize).is_multiple_of(2) {
                    Framing::Seed
                } else {
                    Framing::LengthPrefixed
                };
                let name = format!("{prefix}-w{worker}-r{round}");
                if let Err(error) = one_round(addr, framing, &name, &totals) {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("mixed: worker {worker} round {round}: {error}");
                }
                totals.rounds.fetch_add(1, Ordering::Relaxed);
                round += 1;
            }
        }));
    }
    let started = Instant::now();
    let end = started + common.duration;
    let mut progress = Progress::new(common.quiet, "mixed");
    let mut rss_series: Vec<(f64, u64)> = Vec::new();
    let mut next_sample = started;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            if let Some(sample) = common.server_pid.and_then(proc_stats::sample) {
                rss_series.push((started.elapsed().as_secs_f64(), sample.rss_kib));
            }
            next_sample = now
                + Duration::from_secs(10).min(common.duration / 10 + Duration::from_millis(100));
        }
        if progress.due(now) {
            progress.line(&format!(
                "rounds {} errors {} rss {} KiB",
                totals.rounds.load(Ordering::Relaxed),
                totals.errors.load(Ordering::Relaxed),
                rss_series.last().map_or(0, |(_, rss)| *rss)
            ));
        }
        thread::sleep(
            Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        let _ = handle.join();
    }
    let after = common.server_pid.and_then(proc_stats::sample);
    if let Some(sample) = after {
        rss_series.push((started.elapsed().as_secs_f64(), sample.rss_kib));
    }
    let leak = metrics.map(leak_check);
    let rounds = totals.rounds.load(Ordering::Relaxed);
    let errors = totals.errors.load(Ordering::Relaxed);
    let mut json = Json::default();
    json.str("mode", "mixed")
        .num("workers", workers as f64)
        .num("duration_s", common.duration.as_secs_f64())
        .num("rounds", rounds as f64)
        .num(
            "media_frames",
            totals.media_frames.load(Ordering::Relaxed) as f64,
        )
        .num("errors", errors as f64);
    let series: Vec<String> = rss_series
        .iter()
        .map(|(t, rss)| format!("{t:.0}s {rss} KiB"))
        .collect();
    let mut human = format!(
        "mixed: {workers} workers, {rounds} rounds in {:.0} s, errors {errors}\nserver RSS over time: {}",
        common.duration.as_secs_f64(),
        if series.is_empty() {
            "(no --server-pid)".to_owned()
        } else {
            series.join(", ")
        }
    );
    if let (Some(first), Some(last)) = (baseline, after) {
        json.num("rss_start_kib", first.rss_kib as f64)
            .num("rss_end_kib", last.rss_kib as f64);
        json.num(
            "rss_peak_kib",
            rss_series.iter().map(|(_, rss)| *rss).max().unwrap_or(0) as f64,
        );
    }
    let mut ok = errors == 0 && rounds > 0;
    match leak {
        Some(Ok(())) => {
            json.bool("leak_free", true);
            human.push_str(
                "\nafter the clients left: 0 connections, 0 calls, 0 users (nothing leaked)",
            );
        }
        Some(Err(message)) => {
            ok = false;
            json.bool("leak_free", false).str("leak", &message);
            human.push_str(&format!("\nLEAK: {message}"));
        }
        None => human.push_str("\n(no --metrics address: leak check skipped)"),
    }
    Ok(Outcome { json, human, ok })
}

/// One round of a worker.
fn one_round(addr: SocketAddr, framing: Framing, name: &str, totals: &Totals) -> io::Result<()> {
    let fail = |what: String| io::Error::other(what);
    let mut alice = Session::register(addr, framing, &format!("{name}a"))?;
    let mut bob = Session::register(addr, framing, &format!("{name}b"))?;
    // A refused call first.
    alice.send(&ClientMessage::CallRequest {
        callee: QString::from_str(&format!("{name}-nobody")),
        video: 0,
    })?;
    match alice.recv()? {
        ServerMessage::CallReject { reason, .. } if reason == "offline" => {}
        other => return Err(fail(format!("expected an offline refusal, got {other:?}"))),
    }
    let call_id = session::accepted_call(&mut alice, &mut bob)?;
    // Media both ways, each frame waited for (seed media is delimited by arrival).
    for index in 0..5u8 {
        let payload: Vec<u8> = (0..200u32)
            .map(|i| b'A' + ((i + u32::from(index)) % 26) as u8)
            .collect();
        for alice_sends in [true, false] {
            let (sender, receiver) = if alice_sends {
                (&mut alice, &mut bob)
            } else {
                (&mut bob, &mut alice)
            };
            sender.send(&ClientMessage::Media {
                payload: payload.clone(),
            })?;
            let got = read_media(receiver, payload.len())?;
            if got != payload {
                return Err(fail("media arrived changed".to_owned()));
            }
            totals.media_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
    alice.send(&ClientMessage::CallEnd {
        call_ref: QString::from_str(&call_id),
    })?;
    for party in [&mut alice, &mut bob] {
        match party.recv()? {
            ServerMessage::CallEnd { call_id: ended } if ended == call_id => {}
            other => return Err(fail(format!("expected CALL_END, got {other:?}"))),
        }
    }
    // Text both ways (seed parties left media mode with the call; within
    // the grace period a seed party's complete frames still count).
    alice.send(&ClientMessage::Text {
        to: QString::from_str(&bob.user),
        text: QString::from_str("hello 😀"),
    })?;
    match bob.recv()? {
        ServerMessage::Text { text, .. } if text == QString::from_str("hello 😀") => {}
        other => return Err(fail(format!("expected TEXT, got {other:?}"))),
    }
    hostile(addr, name)?;
    silent(addr)?;
    Ok(())
}

/// Reads `count` media payload bytes (seed: `6` headers stripped).
fn read_media(session: &mut Session, count: usize) -> io::Result<Vec<u8>> {
    let mut got = session.take_input();
    let deadline = Instant::now() + session::STEP_TIMEOUT;
    let mut payload = Vec::new();
    loop {
        match session.framing {
            Framing::Seed => {
                payload.extend(got.drain(..).filter(|byte| *byte != 6));
            }
            Framing::LengthPrefixed => {
                while got.len() >= 5 {
                    let length = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
                    if got.len() < 4 + length {
                        break;
                    }
                    if got[4] != 6 {
                        return Err(io::Error::other("expected media"));
                    }
                    payload.extend_from_slice(&got[5..4 + length]);
                    got.drain(..4 + length);
                }
            }
        }
        if payload.len() >= count {
            return Ok(payload);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::other("media did not arrive"));
        }
        session.stream.sock.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 4096];
        match session.stream.read(&mut chunk) {
            Ok(0) => return Err(io::Error::other("closed while waiting for media")),
            Ok(read) => got.extend_from_slice(&chunk[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(error) => return Err(error),
        }
    }
}

/// A registered connection that sends garbage: it must get an ERROR and be closed.
fn hostile(addr: SocketAddr, name: &str) -> io::Result<()> {
    let mut stream = connect(addr)?;
    let user = format!("{name}x");
    let mut bytes = vec![7, 0, user.len() as u8];
    bytes.extend_from_slice(user.as_bytes());
    bytes.extend_from_slice(&[0x42, 0xFF, 0x00, 0x13, 0x37]);
    stream.write_all(&bytes)?;
    stream.flush()?;
    stream.sock.set_read_timeout(Some(session::STEP_TIMEOUT))?;
    let mut answer = Vec::new();
    // To the end of the stream (a TLS relay may end it without
    // close_notify once the ERROR is out: that counts as the end too).
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => answer.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if !answer.is_empty() && error.kind() != io::ErrorKind::WouldBlock => break,
            Err(error) => return Err(error),
        }
    }
    if answer.first() != Some(&0x20) {
        return Err(io::Error::other(format!(
            "garbage did not get an ERROR: {answer:02x?}"
        )));
    }
    Ok(())
}

/// A connection that sends two bytes and leaves (no framing chosen).
fn silent(addr: SocketAddr) -> io::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(&[7, 0])?;
    stream.flush()
}

/// A new connection to the relay, TLS with `--tls` (handshake done).
fn connect(addr: SocketAddr) -> io::Result<Stream<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, session::STEP_TIMEOUT)?;
    let mut stream = tls::client(stream, addr)?;
    stream.handshake(session::STEP_TIMEOUT)?;
    Ok(stream)
}

/// After the clients left: the relay's gauges must return to zero.
fn leak_check(metrics: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        match scrape(metrics) {
            Ok(text) => {
                let value = |name: &str| {
                    text.lines()
                        .find(|line| line.starts_with(name))
                        .and_then(|line| line.rsplit(' ').next())
                        .and_then(|value| value.parse::<u64>().ok())
                };
                let connections = value("callrelay_connections ");
                let users = value("callrelay_users_registered ");
                let ringing = value("callrelay_calls{state=\"ringing\"} ");
                let active = value("callrelay_calls{state=\"active\"} ");
                if [connections, users, ringing, active]
                    .iter()
                    .all(|v| *v == Some(0))
                {
                    return Ok(());
                }
                last = format!(
                    "connections {connections:?}, users {users:?}, calls ringing {ringing:?} active {active:?}"
                );
            }
            Err(error) => last = format!("cannot scrape {metrics}: {error}"),
        }
        thread::sleep(Duration::from_millis(200));
    }
    Err(format!("15 s after the clients left: {last}"))
}

fn scrape(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}
