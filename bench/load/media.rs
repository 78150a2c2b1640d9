//! `media` (and `sink`): streams of self-measuring media frames, flat out or
//! paced, through the relay, straight to an in-process sink ("direct"), or
//! through a byte pipe such as HAProxy ("pipe"), measured the same way.
//!
//! Set-up is blocking (register, call, accept); the measured run is one mio
//! loop. Frames whose send time falls in the window [warmup, warmup +
//! duration) are counted: sent, delivered (after a drain period), lost,
//! out of order, and their one-way latency, overall and per time slice of
//! arrival.
//!
//! A slow receiver (`--rx-rate`, `--rcvbuf`) reads at most that many bytes
//! a second through a receive buffer that small, like a client on a slow
//! link: the per-slice latency then shows whether the delay a server adds is
//! bounded or grows (PROTOCOL.md 8.2).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::payload::{self, MediaStream};
use crate::proc_stats::Window;
use crate::report::{self, Json};
use crate::session::{self, Session};
use crate::tls::{self, Stream};
use crate::{Common, Outcome, Progress};

/// Reads per socket per turn before the loop looks at the clock again.
const READS_PER_TURN: usize = 4;

/// Where the frames go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Through the relay at `--addr`, inside accepted calls.
    Relay,
    /// Over one plain loopback connection to a sink in this process.
    Direct,
    /// Through a byte pipe at `--addr` that forwards to `--sink`.
    Pipe,
}

impl Target {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Relay => "relay",
            Target::Direct => "direct",
            Target::Pipe => "pipe",
        }
    }
}

/// Options of `media`.
#[derive(Clone, Debug)]
pub struct MediaOptions {
    /// Caller/callee pairs.
    pub pairs: usize,
    /// Payload bytes per frame.
    pub size: usize,
    /// Frames per second per stream; 0 = as fast as possible.
    pub rate: f64,
    /// Streams in both directions of each pair.
    pub both: bool,
    /// Client framing.
    pub framing: Framing,
    /// Where the frames go.
    pub target: Target,
    /// Where this tool listens for the pipe's connections (pipe target).
    pub sink: Option<SocketAddr>,
    /// Flat out: most payload bytes a stream may have in flight (sent, not
    /// yet received). End-to-end flow control, like TCP's through a byte
    /// pipe, so a flood measures throughput rather than the relay's drops.
    pub window: usize,
    /// Receivers read at most this many bytes per second (slow link).
    pub rx_rate: Option<f64>,
    /// `SO_RCVBUF` of the receiving sockets.
    pub rcvbuf: Option<usize>,
    /// Length of the time slices the latency is also reported by.
    pub slice: Duration,
}

/// A receiver's read budget: `rate` bytes a second, in buckets of a tenth
/// of a second.
struct Throttle {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// A wake-up to read again is already scheduled.
    scheduled: bool,
}

impl Throttle {
    fn new(rate: f64, now: Instant) -> Throttle {
        Throttle {
            rate,
            tokens: 0.0,
            last: now,
            scheduled: false,
        }
    }

    fn capacity(&self) -> f64 {
        (self.rate / 10.0).max(1.0)
    }

    /// The least a read takes: a packet's worth, or the whole bucket if that
    /// is smaller (no reads of a few bytes at a time).
    fn chunk(&self) -> f64 {
        self.capacity().min(1500.0)
    }

    /// Bytes that may be read now.
    fn allowance(&mut self, now: Instant) -> usize {
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.capacity());
        self.last = now;
        self.tokens as usize
    }

    fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// When there is a chunk's worth of allowance again.
    fn next_read(&self) -> Instant {
        let missing = (self.chunk() - self.tokens).max(1.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// A sending stream.
struct Sender {
    stream_id: u32,
    next_sequence: u64,
    out: Vec<u8>,
    written: usize,
    sent_in_window: u64,
    bytes_in_window: u64,
}

/// A receiving end.
struct Receiver {
    parser: MediaStream,
    expected_from: u32,
    next_sequence: u64,
}

/// One socket of the run.
struct Endpoint {
    stream: Stream<TcpStream>,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    throttle: Option<Throttle>,
    closed: bool,
}

/// What the receivers measured.
struct Tally {
    delivered: u64,
    delivered_bytes: u64,
    lost_gaps: u64,
    out_of_order: u64,
    errors: u64,
    latency: Histogram<u64>,
    /// Latency of the frames that arrived in each slice of the window.
    slices: Vec<(u64, Histogram<u64>)>,
    /// The same per second of the window (the charts' series).
    seconds: Vec<(u64, Histogram<u64>)>,
}

/// The measurement window, in send stamps.
#[derive(Clone, Copy)]
struct StampWindow {
    start: u64,
    end: Option<u64>,
}

impl StampWindow {
    fn contains(&self, stamp: u64) -> bool {
        let after_start = payload::elapsed_nanos(self.start, stamp) < (1 << 47);
        let before_end = self
            .end
            .is_none_or(|end| payload::elapsed_nanos(stamp, end) < (1 << 47) && stamp != end);
        after_start && before_end
    }
}

fn pair_sessions(
    common: &Common,
    options: &MediaOptions,
    prefix: &str,
    index: usize,
) -> io::Result<(TcpStreamPair, Vec<u8>, Vec<u8>)> {
    // The caller receives too when streams go both ways.
    let caller_rcvbuf = options.rcvbuf.filter(|_| options.both);
    let mut caller = Session::register_with_rcvbuf(
        common.addr,
        options.framing,
        &format!("{prefix}-{index}a"),
        caller_rcvbuf,
    )?;
    let mut callee = Session::register_with_rcvbuf(
        common.callee_addr,
        options.framing,
        &format!("{prefix}-{index}b"),
        options.rcvbuf,
    )?;
    if common.callee_addr != common.addr {
        session::wait_reachable(&mut caller, &mut callee)?;
    }
    session::accepted_call(&mut caller, &mut callee)?;
    let (left_a, left_b) = (caller.take_input(), callee.take_input());
    Ok(((caller.stream, callee.stream), left_a, left_b))
}

type TcpStreamPair = (Stream<std::net::TcpStream>, Stream<std::net::TcpStream>);

/// Opens the two sockets of every pair for the chosen target.
fn connect_pairs(common: &Common, options: &MediaOptions) -> io::Result<Vec<TcpStreamPair>> {
    let prefix = session::run_prefix();
    let mut pairs = Vec::with_capacity(options.pairs);
    match options.target {
        Target::Relay => {
            for index in 0..options.pairs {
                let (pair, left_a, left_b) = pair_sessions(common, options, &prefix, index)?;
                if !left_a.is_empty() || !left_b.is_empty() {
                    return Err(io::Error::other(
                        "unexpected bytes after the call was accepted",
                    ));
                }
                pairs.push(pair);
            }
        }
        Target::Direct | Target::Pipe => {
            let listen = match options.target {
                Target::Direct => SocketAddr::from(([127, 0, 0, 1], 0)),
                _ => options.sink.ok_or_else(|| {
                    io::Error::other("--target pipe needs --sink ADDR (where the pipe forwards)")
                })?,
            };
            let listener = TcpListener::bind(listen)?;
            if let Some(rcvbuf) = options.rcvbuf {
                // Accepted sockets inherit it, window and all.
                socket2::SockRef::from(&listener).set_recv_buffer_size(rcvbuf)?;
            }
            let connect_to = match options.target {
                Target::Direct => listener.local_addr()?,
                _ => common.addr,
            };
            listener.set_nonblocking(true)?;
            for _ in 0..options.pairs {
                let a = std::net::TcpStream::connect_timeout(&connect_to, session::STEP_TIMEOUT)?;
                let mut a = tls::client(a, connect_to)?;
                if options.target == Target::Pipe {
                    // A pipe that terminates TLS (HAProxy `ssl crt`) connects
                    // to the sink only once the handshake is done.
                    a.handshake(session::STEP_TIMEOUT)?;
                }
                let b = accept_within(&listener, session::STEP_TIMEOUT)?;
                b.set_nonblocking(false)?;
                // The sink's handshakes (--sink-cert), and direct's client
                // ones, run in the media loop.
                pairs.push((a, tls::sink(b)?));
            }
        }
    }
    Ok(pairs)
}

/// Accepts one connection, failing after `timeout` (the pipe may never
/// connect to the sink).
fn accept_within(listener: &TcpListener, timeout: Duration) -> io::Result<std::net::TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Ok(stream),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nothing connected to the sink",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(error) => return Err(error),
        }
    }
}

fn into_endpoint(
    stream: Stream<std::net::TcpStream>,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    options: &MediaOptions,
) -> io::Result<Endpoint> {
    stream.sock.set_nodelay(true)?;
    stream.sock.set_nonblocking(true)?;
    let throttle = options
        .rx_rate
        .filter(|_| receiver.is_some())
        .map(|rate| Throttle::new(rate, Instant::now()));
    Ok(Endpoint {
        stream: stream.map(TcpStream::from_std),
        sender,
        receiver,
        throttle,
        closed: false,
    })
}

fn new_sender(stream_id: u32) -> Sender {
    Sender {
        stream_id,
        next_sequence: 0,
        out: Vec::new(),
        written: 0,
        sent_in_window: 0,
        bytes_in_window: 0,
    }
}

fn new_receiver(options: &MediaOptions, from: u32) -> Receiver {
    Receiver {
        parser: MediaStream::new(options.framing, options.size),
        expected_from: from,
        next_sequence: 0,
    }
}

/// Runs `media`; returns the JSON result.
pub fn run(common: &Common, options: &MediaOptions) -> io::Result<Outcome> {
    if options.size < payload::HEADER_LEN {
        return Err(io::Error::other(format!(
            "--size must be at least {} bytes",
            payload::HEADER_LEN
        )));
    }
    let pairs = connect_pairs(common, options)?;
    let mut endpoints = Vec::with_capacity(pairs.len() * 2);
    for (index, (a, b)) in pairs.into_iter().enumerate() {
        let (a_id, b_id) = (2 * index as u32, 2 * index as u32 + 1);
        let b_sends = options.both.then(|| new_sender(b_id));
        let a_receives = options.both.then(|| new_receiver(options, b_id));
        endpoints.push(into_endpoint(
            a,
            Some(new_sender(a_id)),
            a_receives,
            options,
        )?);
        endpoints.push(into_endpoint(
            b,
            b_sends,
            Some(new_receiver(options, a_id)),
            options,
        )?);
    }
    let poll = Poll::new()?;
    for (index, endpoint) in endpoints.iter_mut().enumerate() {
        poll.registry().register(
            &mut endpoint.stream.sock,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    Run::new(common, options, endpoints, poll).execute()
}

struct Run<'a> {
    common: &'a Common,
    options: &'a MediaOptions,
    endpoints: Vec<Endpoint>,
    poll: Poll,
    tally: Tally,
    window: StampWindow,
    sending: bool,
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    interval: Option<Duration>,
    read_buffer: Vec<u8>,
    /// Some socket speaks TLS.
    tls: bool,
    /// Throttled receivers and when they may read again.
    throttled: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl<'a> Run<'a> {
    fn new(
        common: &'a Common,
        options: &'a MediaOptions,
        endpoints: Vec<Endpoint>,
        poll: Poll,
    ) -> Run<'a> {
        let interval = (options.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / options.rate));
        Run {
            common,
            options,
            endpoints,
            poll,
            tally: Tally {
                delivered: 0,
                delivered_bytes: 0,
                lost_gaps: 0,
                out_of_order: 0,
                errors: 0,
                latency: report::latency_histogram(),
                slices: Vec::new(),
                seconds: Vec::new(),
            },
            window: StampWindow {
                start: u64::MAX,
                end: None,
            },
            sending: true,
            due: BinaryHeap::new(),
            interval,
            read_buffer: vec![0; 256 * 1024],
            tls: tls::client_enabled() || tls::sink_enabled(),
            throttled: BinaryHeap::new(),
        }
    }

    fn execute(mut self) -> io::Result<Outcome> {
        let started = Instant::now();
        let window_start = started + self.common.warmup;
        let window_end = window_start + self.common.duration;
        let drain_end = window_end + self.common.drain;
        self.window.start = payload::now_stamp() + self.common.warmup.as_nanos() as u64;
        if let Some(interval) = self.interval {
            let senders: Vec<usize> = (0..self.endpoints.len())
                .filter(|i| self.endpoints[*i].sender.is_some())
                .collect();
            let count = senders.len().max(1) as u32;
            for (order, index) in senders.into_iter().enumerate() {
                // Spread the streams over one interval so frames do not all go out at once.
                self.due
                    .push(Reverse((started + interval * order as u32 / count, index)));
            }
        }
        let mut server: Option<Window> = None;
        let mut progress = Progress::new(self.common.quiet, "media");
        let mut events = Events::with_capacity(1024);
        let mut reread: Vec<usize> = Vec::new();
        loop {
            let now = Instant::now();
            if server.is_none() && now >= window_start {
                server = self.common.server_pid.and_then(Window::start);
            }
            if self.sending && now >= window_end {
                self.sending = false;
                self.window.end = Some(payload::now_stamp());
                if let Some(server) = server.as_mut() {
                    server.finish();
                }
            }
            if !self.sending && (now >= drain_end || self.all_delivered()) {
                break;
            }
            if progress.due(now) {
                if let Some(server) = server.as_mut().filter(|_| self.sending) {
                    server.tick();
                }
                progress.line(&format!(
                    "sent {} delivered {} lost {} errors {}",
                    self.sent_total(),
                    self.tally.delivered,
                    self.tally.lost_gaps,
                    self.tally.errors
                ));
            }
            let mut timeout =
                progress
                    .next(now)
                    .min(if self.sending { window_end } else { drain_end });
            if !reread.is_empty() {
                timeout = now;
            }
            if let Some(Reverse((at, _))) = self.due.peek().filter(|_| self.sending) {
                timeout = timeout.min(*at);
            }
            if let Some(Reverse((at, _))) = self.throttled.peek() {
                timeout = timeout.min(*at);
            }
            self.poll
                .poll(&mut events, Some(timeout.saturating_duration_since(now)))?;
            for event in events.iter() {
                let index = event.token().0;
                if (event.is_readable() || event.is_read_closed() || event.is_error())
                    && self.read(index)
                {
                    reread.push(index);
                }
                if event.is_writable() {
                    self.flush_pending(index);
                }
                // TLS: a read may have finished a handshake, so the sender
                // may write now without a writable edge to tell it.
                if event.is_writable() || self.tls {
                    self.write(index);
                }
            }
            for index in std::mem::take(&mut reread) {
                if self.read(index) {
                    reread.push(index);
                }
            }
            let now = Instant::now();
            while let Some(Reverse((at, index))) = self.throttled.peek().copied() {
                if at > now {
                    break;
                }
                self.throttled.pop();
                if let Some(throttle) = self.endpoints[index].throttle.as_mut() {
                    throttle.scheduled = false;
                }
                if self.read(index) {
                    reread.push(index);
                }
            }
            if self.interval.is_some() {
                self.send_due();
            }
        }
        let elapsed = self.common.duration.as_secs_f64();
        Ok(self.result(elapsed, server))
    }

    fn sent_total(&self) -> u64 {
        self.endpoints
            .iter()
            .filter_map(|e| e.sender.as_ref())
            .map(|s| s.sent_in_window)
            .sum()
    }

    fn all_delivered(&self) -> bool {
        self.tally.delivered + self.tally.lost_gaps >= self.sent_total()
            && self
                .endpoints
                .iter()
                .all(|e| e.sender.as_ref().is_none_or(|s| s.written == s.out.len()))
    }

    /// Appends one frame to a sender's output.
    fn generate(&mut self, index: usize, stamp: u64) {
        let (framing, size, window) = (self.options.framing, self.options.size, self.window);
        let Some(sender) = self.endpoints[index].sender.as_mut() else {
            return;
        };
        payload::put_media_frame(
            &mut sender.out,
            framing,
            size,
            sender.stream_id,
            sender.next_sequence,
            stamp,
        );
        sender.next_sequence += 1;
        if window.contains(stamp) {
            sender.sent_in_window += 1;
            sender.bytes_in_window += size as u64;
        }
    }

    /// Writes the TLS records still queued (nothing for plain sockets).
    fn flush_pending(&mut self, index: usize) {
        let endpoint = &mut self.endpoints[index];
        if !endpoint.closed && endpoint.stream.flush_pending().is_err() {
            endpoint.closed = true;
            self.tally.errors += 1;
        }
    }

    /// Writes pending output; flat-out senders generate more while the socket takes it.
    fn write(&mut self, index: usize) {
        let flat_out = self.interval.is_none() && self.sending;
        loop {
            let endpoint = &mut self.endpoints[index];
            if endpoint.closed {
                return;
            }
            let Some(sender) = endpoint.sender.as_mut() else {
                return;
            };
            if sender.written == sender.out.len() {
                sender.out.clear();
                sender.written = 0;
                if !flat_out {
                    return;
                }
                let frames = self.frames_allowed(index);
                if frames == 0 {
                    return;
                }
                let stamp = payload::now_stamp();
                for _ in 0..frames {
                    self.generate(index, stamp);
                }
                continue;
            }
            let endpoint = &mut self.endpoints[index];
            let Some(sender) = endpoint.sender.as_mut() else {
                return;
            };
            match endpoint.stream.write(&sender.out[sender.written..]) {
                Ok(0) => {
                    endpoint.closed = true;
                    self.tally.errors += 1;
                    return;
                }
                Ok(count) => sender.written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    endpoint.closed = true;
                    self.tally.errors += 1;
                    return;
                }
            }
        }
    }

    /// How many frames a flat-out stream may generate now: a batch of about
    /// 64 KiB, within its in-flight window.
    fn frames_allowed(&self, index: usize) -> u64 {
        let size = self.options.size as u64;
        let batch = (64 * 1024 / (size + 5)).max(1);
        let Some(sender) = self.endpoints[index].sender.as_ref() else {
            return 0;
        };
        // Stream ids are endpoint indexes; a pair's endpoints are 2i and 2i+1.
        // What the receiver has seen up to (gaps count as seen), so frames
        // dropped on the way do not shrink the window for good.
        let received = self
            .endpoints
            .get(index ^ 1)
            .and_then(|e| e.receiver.as_ref())
            .map_or(0, |r| r.next_sequence);
        let in_flight = sender.next_sequence.saturating_sub(received) * size;
        // At least one frame may always be in flight, whatever the window.
        let room = (self.options.window as u64).saturating_sub(in_flight) / size;
        let room = if in_flight == 0 { room.max(1) } else { room };
        batch.min(room)
    }

    /// Paced senders: one frame per due stream, written at once.
    fn send_due(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        while self.sending {
            match self.due.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, index))) = self.due.pop() else {
                break;
            };
            self.generate(index, payload::now_stamp());
            self.write_paced(index);
            // Next due time from the schedule, not from now, so the rate holds.
            let mut next = at + interval;
            if next < now {
                next = now;
            }
            self.due.push(Reverse((next, index)));
        }
    }

    fn write_paced(&mut self, index: usize) {
        let endpoint = &mut self.endpoints[index];
        if endpoint.closed {
            return;
        }
        if let Some(sender) = endpoint.sender.as_mut() {
            while sender.written < sender.out.len() {
                match endpoint.stream.write(&sender.out[sender.written..]) {
                    Ok(0) => break,
                    Ok(count) => sender.written += count,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if sender.written == sender.out.len() {
                sender.out.clear();
                sender.written = 0;
            }
        }
    }

    /// Reads until WouldBlock, or until the budget of reads is spent
    /// (returns true: read again next turn, the loop must not starve).
    fn read(&mut self, index: usize) -> bool {
        for _ in 0..READS_PER_TURN {
            let endpoint = &mut self.endpoints[index];
            if endpoint.closed {
                return false;
            }
            // A slow receiver reads only its allowance, then comes back on
            // its own timer (no readiness event would bring it back).
            let mut limit = self.read_buffer.len();
            if let Some(throttle) = endpoint.throttle.as_mut() {
                let allowance = throttle.allowance(Instant::now());
                if (allowance as f64) < throttle.chunk() {
                    if !throttle.scheduled {
                        throttle.scheduled = true;
                        self.throttled.push(Reverse((throttle.next_read(), index)));
                    }
                    return false;
                }
                limit = limit.min(allowance);
            }
            let count = match endpoint.stream.read(&mut self.read_buffer[..limit]) {
                Ok(0) => {
                    endpoint.closed = true;
                    if self.sending {
                        self.tally.errors += 1;
                    }
                    return false;
                }
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    endpoint.closed = true;
                    self.tally.errors += 1;
                    return false;
                }
            };
            if let Some(throttle) = endpoint.throttle.as_mut() {
                throttle.spend(count);
            }
            let arrival = payload::now_stamp();
            let slice_ns = self.options.slice.as_nanos().max(1) as u64;
            let (window, size) = (self.window, self.options.size as u64);
            let tally = &mut self.tally;
            let Some(receiver) = endpoint.receiver.as_mut() else {
                tally.errors += 1;
                continue;
            };
            let (expected_from, next) = (receiver.expected_from, &mut receiver.next_sequence);
            let fed = receiver.parser.feed(&self.read_buffer[..count], |frame| {
                if frame.stream != expected_from {
                    tally.errors += 1;
                    return;
                }
                if frame.sequence < *next {
                    tally.out_of_order += 1;
                } else {
                    if window.contains(frame.stamp) {
                        tally.lost_gaps += frame.sequence - *next;
                    }
                    *next = frame.sequence + 1;
                }
                if window.contains(frame.stamp) {
                    tally.delivered += 1;
                    tally.delivered_bytes += size;
                    let latency = payload::elapsed_nanos(frame.stamp, arrival).max(1);
                    let _ = tally.latency.record(latency);
                    let since = payload::elapsed_nanos(window.start, arrival);
                    record_in_slice(&mut tally.slices, since, slice_ns, latency);
                    record_in_slice(&mut tally.seconds, since, 1_000_000_000, latency);
                }
            });
            if fed.is_err() {
                tally.errors += 1;
                endpoint.closed = true;
                return false;
            }
            if self.interval.is_none() && self.sending {
                // Received frames open the window of the stream feeding us.
                self.write(index ^ 1);
            }
        }
        true
    }

    fn result(self, seconds: f64, server: Option<Window>) -> Outcome {
        let sent = self.sent_total();
        let sent_bytes: u64 = self
            .endpoints
            .iter()
            .filter_map(|e| e.sender.as_ref())
            .map(|s| s.bytes_in_window)
            .sum();
        let tally = &self.tally;
        let lost = sent.saturating_sub(tally.delivered);
        let mut json = Json::default();
        json.str("mode", "media")
            .str("target", self.options.target.name())
            .str("framing", crate::framing_name(self.options.framing))
            .num("pairs", self.options.pairs as f64)
            .num(
                "streams",
                self.endpoints.iter().filter(|e| e.sender.is_some()).count() as f64,
            )
            .num("size", self.options.size as f64)
            .num("rate", self.options.rate)
            .bool("both", self.options.both)
            .num("duration_s", seconds)
            .num("frames_sent", sent as f64)
            .num("frames_delivered", tally.delivered as f64)
            .num("frames_lost", lost as f64)
            .num("frames_out_of_order", tally.out_of_order as f64)
            .num("bytes_sent", sent_bytes as f64)
            .num("bytes_delivered", tally.delivered_bytes as f64)
            .num("sent_fps", sent as f64 / seconds)
            .num("delivered_fps", tally.delivered as f64 / seconds)
            .num("sent_mibps", report::mib_per_s(sent_bytes, seconds))
            .num(
                "delivered_mibps",
                report::mib_per_s(tally.delivered_bytes, seconds),
            )
            .obj("latency_us", &report::latency_json(&tally.latency))
            .num(
                "delivered_share",
                if sent > 0 {
                    tally.delivered as f64 / sent as f64
                } else {
                    f64::NAN
                },
            )
            .num("slice_s", self.options.slice.as_secs_f64())
            .arr("slices", &slice_json(&tally.slices))
            .arr("seconds", &slice_json(&tally.seconds))
            .arr("latency_cdf_us", &report::latency_cdf_json(&tally.latency))
            .num("errors", tally.errors as f64);
        if let Some(server) = server {
            let gib = tally.delivered_bytes as f64 / (1024.0 * 1024.0 * 1024.0);
            let mut stats = Json::default();
            stats
                .num("cpu_s", server.cpu_s)
                .num("peak_rss_kib", server.peak_rss_kib as f64)
                .num(
                    "cpu_s_per_gib",
                    if gib > 0.0 {
                        server.cpu_s / gib
                    } else {
                        f64::NAN
                    },
                )
                .num(
                    "cpu_us_per_frame",
                    if tally.delivered > 0 {
                        server.cpu_s * 1e6 / tally.delivered as f64
                    } else {
                        f64::NAN
                    },
                )
                .num(
                    "cpu_s_per_million_frames",
                    if tally.delivered > 0 {
                        server.cpu_s * 1e6 / tally.delivered as f64
                    } else {
                        f64::NAN
                    },
                );
            json.obj("server", &stats);
        }
        let mut human = format!(
            "media via {} ({} framing): {} pairs, {} streams, {} B frames, {}\n\
             sent      {sent} frames ({:.0} frames/s, {:.2} MiB/s)\n\
             delivered {} frames ({:.0} frames/s, {:.2} MiB/s)\n\
             lost {lost}, out of order {}, errors {}\n\
             one-way latency: {}",
            self.options.target.name(),
            crate::framing_name(self.options.framing),
            self.options.pairs,
            self.endpoints.iter().filter(|e| e.sender.is_some()).count(),
            self.options.size,
            if self.options.rate > 0.0 {
                format!("{} frames/s per stream", self.options.rate)
            } else {
                "flat out".to_owned()
            },
            sent as f64 / seconds,
            report::mib_per_s(sent_bytes, seconds),
            tally.delivered,
            tally.delivered as f64 / seconds,
            report::mib_per_s(tally.delivered_bytes, seconds),
            tally.out_of_order,
            tally.errors,
            report::latency_line(&tally.latency),
        );
        if self.options.rx_rate.is_some() || tally.slices.len() > 1 {
            human.push_str(&format!(
                "\ndelivered share {:.2}; one-way latency by arrival slice:",
                tally.delivered as f64 / sent.max(1) as f64
            ));
            for (start, histogram) in &tally.slices {
                human.push_str(&format!(
                    "\n  {:>6.1} s: {} frames, {}",
                    *start as f64 / 1e9,
                    histogram.len(),
                    report::latency_line(histogram)
                ));
            }
        }
        if let Some(server) = server {
            let gib = tally.delivered_bytes as f64 / (1024.0 * 1024.0 * 1024.0);
            human.push_str(&format!(
                "\nserver: {:.2} CPU s, peak RSS {} KiB, {:.2} CPU s/GiB, {:.2} CPU us/frame",
                server.cpu_s,
                server.peak_rss_kib,
                server.cpu_s / gib,
                server.cpu_s * 1e6 / tally.delivered.max(1) as f64
            ));
        }
        Outcome {
            json,
            human,
            ok: tally.errors == 0 && sent > 0,
        }
    }
}

/// Records `latency` in the slice of `slice_ns` that `since` (ns from the
/// window start) falls in, adding slices as needed (bounded: 2^20).
fn record_in_slice(
    slices: &mut Vec<(u64, Histogram<u64>)>,
    since: u64,
    slice_ns: u64,
    latency: u64,
) {
    let slice = since / slice_ns;
    if slice >= 1 << 20 {
        return;
    }
    let slice = slice as usize;
    while slices.len() <= slice {
        let start = slices.len() as u64 * slice_ns;
        slices.push((start, report::latency_histogram()));
    }
    let _ = slices[slice].1.record(latency);
}

/// The per-slice latency as JSON objects (start of the slice from the
/// window start, frames, percentiles in microseconds).
fn slice_json(slices: &[(u64, Histogram<u64>)]) -> Vec<Json> {
    slices
        .iter()
        .map(|(start, histogram)| {
            let mut json = Json::default();
            json.num("start_s", *start as f64 / 1e9)
                .num("frames", histogram.len() as f64)
                .obj("latency_us", &report::latency_json(histogram));
            json
        })
        .collect()
}
