//! `calls`: call set-up and tear-down rate. Each pair loops REQUEST ->
//! (callee rung) ACCEPT -> (both accepted) END -> (both ended), and the
//! latency of each step is recorded: ring (request sent -> callee has
//! CALL_REQUEST), accept (accept sent -> both have CALL_ACCEPT) and end
//! (end sent -> both have CALL_END). With `reconnect`, the callee hangs up
//! its connection after every call and registers again on a new one, so
//! each call also costs one connection, one registration (with
//! `--secret-file`, one token verified) and, with `--tls`, one handshake.

use std::io::{self, Read, Write};
use std::time::Instant;

use callrelay::protocol::Framing;
use callrelay::protocol::frame::{
    ClientMessage, DecodeError, ServerMessage, decode_server, encode_client,
};
use callrelay::protocol::qdatastream::QString;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::proc_stats::Window;
use crate::report::{self, Json};
use crate::session::{self, Session};
use crate::tls::Stream;
use crate::{Common, Outcome, Progress};

/// One side of a pair.
struct Side {
    stream: Stream<TcpStream>,
    input: Vec<u8>,
    output: Vec<u8>,
    closed: bool,
}

/// Where a pair is in its loop.
#[derive(Clone, Debug)]
enum Step {
    /// REQUEST sent at `since`; waiting for the callee's CALL_REQUEST.
    Ringing { since: Instant },
    /// ACCEPT sent at `since`; waiting for both CALL_ACCEPTs.
    Accepting {
        since: Instant,
        caller: bool,
        callee: bool,
    },
    /// END sent at `since`; waiting for both CALL_ENDs.
    Ending {
        since: Instant,
        caller: bool,
        callee: bool,
    },
}

struct Pair {
    callee_user: String,
    step: Step,
}

struct Histograms {
    ring: Histogram<u64>,
    accept: Histogram<u64>,
    end: Histogram<u64>,
}

/// How a `calls` run goes.
pub struct Options {
    /// Caller-callee pairs.
    pub pairs: usize,
    /// Their framing.
    pub framing: Framing,
    /// The callee registers again on a new connection after every call.
    pub reconnect: bool,
}

/// Runs `calls`.
pub fn run(common: &Common, options: &Options) -> io::Result<Outcome> {
    let Options {
        pairs,
        framing,
        reconnect,
    } = *options;
    let prefix = session::run_prefix();
    let mut poll = Poll::new()?;
    let mut sides = Vec::with_capacity(pairs * 2);
    let mut pair_states = Vec::with_capacity(pairs);
    for index in 0..pairs {
        let mut caller = Session::register(common.addr, framing, &format!("{prefix}-{index}a"))?;
        let mut callee =
            Session::register(common.callee_addr, framing, &format!("{prefix}-{index}b"))?;
        if common.callee_addr != common.addr {
            session::wait_reachable(&mut caller, &mut callee)?;
        }
        pair_states.push(Pair {
            callee_user: callee.user.clone(),
            step: Step::Ringing {
                since: Instant::now(),
            },
        });
        for session in [caller, callee] {
            let side = Side::polled(session, &poll, Token(sides.len()))?;
            sides.push(side);
        }
    }
    let mut histograms = Histograms {
        ring: report::latency_histogram(),
        accept: report::latency_histogram(),
        end: report::latency_histogram(),
    };
    let started = Instant::now();
    let window_start = started + common.warmup;
    let window_end = window_start + common.duration;
    let mut completed = 0u64;
    let mut errors = 0u64;
    for index in 0..pairs {
        start_call(&mut sides, &mut pair_states, index, framing);
    }
    let mut server: Option<Window> = None;
    let mut progress = Progress::new(common.quiet, "calls");
    let mut events = Events::with_capacity(1024);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if server.is_none() && now >= window_start {
            server = common.server_pid.and_then(Window::start);
        }
        if now >= window_end {
            break;
        }
        if progress.due(now) {
            if let Some(server) = server.as_mut() {
                server.tick();
            }
            progress.line(&format!("calls completed {completed} errors {errors}"));
        }
        let timeout = progress
            .next(now)
            .min(window_end)
            .saturating_duration_since(now);
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            let side = event.token().0;
            if event.is_writable() {
                flush(&mut sides[side]);
            }
            if event.is_readable() || event.is_read_closed() {
                read_side(&mut sides[side], &mut buffer, &mut errors);
            }
            while let Some(message) = next_message(&mut sides[side], framing, &mut errors) {
                let pair = side / 2;
                let in_window = Instant::now() >= window_start;
                match on_message(
                    &mut pair_states[pair],
                    side % 2 == 0,
                    &message,
                    &mut histograms,
                    in_window,
                ) {
                    Reaction::Nothing => {}
                    Reaction::Accept(call_id) => {
                        send(
                            &mut sides[pair * 2 + 1],
                            framing,
                            &ClientMessage::CallAccept {
                                call_ref: QString::from_str(&call_id),
                            },
                        );
                    }
                    Reaction::End => {
                        send(
                            &mut sides[pair * 2],
                            framing,
                            &ClientMessage::CallEnd {
                                call_ref: QString::from_str(""),
                            },
                        );
                    }
                    Reaction::Completed => {
                        if in_window {
                            completed += 1;
                        }
                        if reconnect {
                            let callee = pair * 2 + 1;
                            let user = &pair_states[pair].callee_user;
                            match Side::registered_again(common, framing, user, &poll, callee) {
                                Ok(side) => {
                                    let _ =
                                        poll.registry().deregister(&mut sides[callee].stream.sock);
                                    sides[callee] = side;
                                }
                                Err(_) => errors += 1,
                            }
                        }
                        start_call(&mut sides, &mut pair_states, pair, framing);
                    }
                    Reaction::Unexpected => {
                        errors += 1;
                    }
                }
            }
        }
    }
    if let Some(server) = server.as_mut() {
        server.finish();
    }
    let seconds = common.duration.as_secs_f64();
    let mut json = Json::default();
    json.str("mode", "calls")
        .str("framing", crate::framing_name(framing))
        .num("pairs", pairs as f64)
        .bool("reconnect", reconnect)
        .num("duration_s", seconds)
        .num("calls", completed as f64)
        .num("calls_per_s", completed as f64 / seconds)
        .obj("ring_us", &report::latency_json(&histograms.ring))
        .obj("accept_us", &report::latency_json(&histograms.accept))
        .obj("end_us", &report::latency_json(&histograms.end))
        .num("errors", errors as f64);
    let mut human = format!(
        "calls ({} framing): {pairs} pairs, {completed} calls in {seconds:.1} s ({:.0} calls/s), errors {errors}\n\
         ring:   {}\naccept: {}\nend:    {}",
        crate::framing_name(framing),
        completed as f64 / seconds,
        report::latency_line(&histograms.ring),
        report::latency_line(&histograms.accept),
        report::latency_line(&histograms.end),
    );
    if let Some(server) = server {
        let mut stats = Json::default();
        stats
            .num("cpu_s", server.cpu_s)
            .num("peak_rss_kib", server.peak_rss_kib as f64)
            .num(
                "cpu_us_per_call",
                server.cpu_s * 1e6 / completed.max(1) as f64,
            );
        json.obj("server", &stats);
        human.push_str(&format!(
            "\nserver: {:.2} CPU s, peak RSS {} KiB, {:.1} CPU us/call",
            server.cpu_s,
            server.peak_rss_kib,
            server.cpu_s * 1e6 / completed.max(1) as f64
        ));
    }
    Ok(Outcome {
        json,
        human,
        ok: errors == 0 && completed > 0,
    })
}

impl Side {
    /// `session`'s socket, nonblocking and polled under `token`.
    fn polled(session: Session, poll: &Poll, token: Token) -> io::Result<Side> {
        session.stream.sock.set_nonblocking(true)?;
        let mut stream = session.stream.map(TcpStream::from_std);
        poll.registry().register(
            &mut stream.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(Side {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            closed: false,
        })
    }

    /// `user` registered on a new connection (replacing its old one),
    /// polled as side `index`.
    fn registered_again(
        common: &Common,
        framing: Framing,
        user: &str,
        poll: &Poll,
        index: usize,
    ) -> io::Result<Side> {
        let session = Session::register(common.callee_addr, framing, user)?;
        Side::polled(session, poll, Token(index))
    }
}

fn start_call(sides: &mut [Side], pairs: &mut [Pair], index: usize, framing: Framing) {
    let callee = QString::from_str(&pairs[index].callee_user);
    pairs[index].step = Step::Ringing {
        since: Instant::now(),
    };
    send(
        &mut sides[index * 2],
        framing,
        &ClientMessage::CallRequest { callee, video: 0 },
    );
}

enum Reaction {
    Nothing,
    Accept(String),
    End,
    Completed,
    Unexpected,
}

fn on_message(
    pair: &mut Pair,
    from_caller: bool,
    message: &ServerMessage,
    histograms: &mut Histograms,
    record: bool,
) -> Reaction {
    let now = Instant::now();
    let nanos = |since: Instant| (now - since).as_nanos().max(1) as u64;
    match (&mut pair.step, message, from_caller) {
        (Step::Ringing { since }, ServerMessage::CallRequest { call_id, .. }, false) => {
            if record {
                let _ = histograms.ring.record(nanos(*since));
            }
            let call_id = call_id.clone();
            pair.step = Step::Accepting {
                since: now,
                caller: false,
                callee: false,
            };
            Reaction::Accept(call_id)
        }
        (
            Step::Accepting {
                since,
                caller,
                callee,
            },
            ServerMessage::CallAccept { .. },
            from_caller,
        ) => {
            if from_caller {
                *caller = true
            } else {
                *callee = true
            }
            if *caller && *callee {
                if record {
                    let _ = histograms.accept.record(nanos(*since));
                }
                pair.step = Step::Ending {
                    since: now,
                    caller: false,
                    callee: false,
                };
                return Reaction::End;
            }
            Reaction::Nothing
        }
        (
            Step::Ending {
                since,
                caller,
                callee,
            },
            ServerMessage::CallEnd { .. },
            from_caller,
        ) => {
            if from_caller {
                *caller = true
            } else {
                *callee = true
            }
            if *caller && *callee {
                if record {
                    let _ = histograms.end.record(nanos(*since));
                }
                return Reaction::Completed;
            }
            Reaction::Nothing
        }
        _ => Reaction::Unexpected,
    }
}

fn send(side: &mut Side, framing: Framing, message: &ClientMessage) {
    encode_client(message, framing, &mut side.output);
    flush(side);
}

fn flush(side: &mut Side) {
    // TLS records still queued from an earlier write go first.
    if !side.closed && side.stream.flush_pending().is_err() {
        side.closed = true;
    }
    while !side.output.is_empty() && !side.closed {
        match side.stream.write(&side.output) {
            Ok(0) => side.closed = true,
            Ok(count) => {
                side.output.drain(..count);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => side.closed = true,
        }
    }
}

fn read_side(side: &mut Side, buffer: &mut [u8], errors: &mut u64) {
    while !side.closed {
        match side.stream.read(buffer) {
            Ok(0) => {
                side.closed = true;
                *errors += 1;
            }
            Ok(count) => side.input.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                side.closed = true;
                *errors += 1;
            }
        }
    }
}

fn next_message(side: &mut Side, framing: Framing, errors: &mut u64) -> Option<ServerMessage> {
    if side.input.is_empty() {
        return None;
    }
    match decode_server(&side.input, framing) {
        Ok((message, used)) => {
            side.input.drain(..used);
            Some(message)
        }
        Err(DecodeError::NeedMore) => None,
        Err(DecodeError::Malformed) => {
            *errors += 1;
            side.input.clear();
            None
        }
    }
}
