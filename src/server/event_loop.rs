//! The poll loop: accept, read, parse, forward, write, time out, close.
//!
//! [`Server`] owns the mio `Poll`, the listener, a `Slab` of connections,
//! the deadline heap and the [`Relay`]. It turns bytes into parser results,
//! hands frames to the relay, applies the relay's [`Action`]s, and forwards
//! media and file bodies from a sender's read buffer straight to the peer's
//! socket. It knows frame boundaries and who is linked to whom, never why.
//!
//! One iteration: poll; note readiness (accepted sockets are queued and
//! inserted only after the batch, so a slot is never reused within it);
//! service the connections with input; fire due timers; flush output that
//! frames were appended to; reap closed connections.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::buffer::BufferPool;
use super::connection::{BodyTarget, ConnState, Connection, MediaLink, ReadOutcome};
use super::metrics_http::{self, MetricsConn, Progress as HttpProgress, Request};
use super::socket::{self, SocketResult};
use super::timers::Timers;
use crate::config::Config;
use crate::ids::{ConnId, UserId};
use crate::metrics::{self, Counters, Snapshot};
use crate::protocol::frame::{ClientFrame, ServerFrame, encode_server};
use crate::protocol::parser::{BodyKind, ParseContext, Parsed, ProtocolError};
use crate::protocol::qdatastream::QString;
use crate::protocol::{ErrorCode, Framing};
use crate::relay::{Action, FileRoute, Relay, RelayTimer};

/// The listener's token; connection tokens are slab slots.
const LISTENER: Token = Token(usize::MAX - 1);
/// The metrics listener's token.
const METRICS_LISTENER: Token = Token(usize::MAX - 2);
/// The signal pipe's token.
const SIGNALS: Token = Token(usize::MAX - 3);
/// Metrics connections use tokens from here up (slot + base).
const METRICS_BASE: usize = usize::MAX / 2;
/// A metrics client must be done within this.
const METRICS_DEADLINE: Duration = Duration::from_secs(10);
/// Refused connections are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Size of the read buffers lent to connections with input.
const READ_BUFFER_SIZE: usize = 64 * 1024;
/// Free read buffers kept for reuse.
const POOL_KEEP: usize = 32;
/// Reads per connection per turn before others get theirs (fairness).
const READS_PER_TURN: usize = 16;
/// Pause before accepting again after accept failed (e.g. out of fds).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Zeros written at a time when padding a frame whose sender vanished.
const PAD_CHUNK: usize = 16 * 1024;

/// What a deadline is for.
#[derive(Clone, Debug)]
enum TimerKey {
    /// The connection must have registered by now, or (once registered)
    /// may have been idle too long. One deadline per connection at a time.
    Liveness(ConnId),
    /// A closing connection's socket is dropped now at the latest.
    Linger(ConnId),
    /// Try accepting again after an accept error.
    AcceptRetry,
    /// A metrics connection's deadline.
    Metrics(usize),
    /// Time for the stats log line.
    Stats,
    /// The graceful shutdown's deadline (wakes the loop).
    ShutdownDeadline,
    /// Frames for this connection have been held behind a cut-through
    /// frame since the timer was armed.
    Stall(ConnId, ConnId),
    /// The relay's own timer.
    Relay(RelayTimer),
}

/// Why a connection is being closed.
#[derive(Clone, Debug)]
enum CloseReason {
    /// The peer closed or reset its socket, or the socket failed.
    PeerClosed,
    /// We close it with an ERROR frame.
    Error(ErrorCode, String),
}

/// What to do after looking at a connection's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// All parsable input is handled: read more if the socket has some.
    ReadMore,
    /// Stop: the connection is paused, closing or gone.
    Stop,
}

/// The relay server: one poll loop on one thread.
pub struct Server {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    conns: Slab<Connection>,
    next_generation: u32,
    relay: Relay,
    timers: Timers<TimerKey>,
    pool: BufferPool,
    max_input: usize,
    accepted: Vec<(TcpStream, SocketAddr)>,
    ready: VecDeque<ConnId>,
    dirty: Vec<ConnId>,
    reap: Vec<ConnId>,
    closing_queue: Vec<(ConnId, CloseReason)>,
    actions: Vec<Action>,
    scratch: Vec<u8>,
    counters: Counters,
    now: Instant,
    metrics_listener: Option<TcpListener>,
    metrics_conns: Slab<MetricsConn>,
    signals: Option<Signals>,
    lifecycle: Lifecycle,
    per_ip: HashMap<IpAddr, u32>,
    unregistered: usize,
    /// A file descriptor kept in reserve: when accept fails for lack of
    /// descriptors, it is released to accept and close one connection, so
    /// the pending connection does not keep waking the loop.
    reserve_fd: Option<File>,
    refusals: Refusals,
    /// A connection whose held frames passed the soft limit during the
    /// current input step: the sender of that input waits for it.
    held_over: Option<ConnId>,
}

/// Whether the server runs or is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    /// Accepting and relaying.
    Running,
    /// A signal arrived: no accepting, connections closing; exit when all
    /// are gone or at `deadline`.
    Draining {
        /// When the loop exits regardless.
        deadline: Instant,
    },
}

/// How the run ended.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A signal was handled: calls ended, output flushed (or the shutdown
    /// timeout passed).
    Graceful,
    /// A second signal arrived during the graceful shutdown.
    Forced,
}

/// Connections refused since the last log line about them.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_reason: &'static str,
    last_log: Option<Instant>,
}

impl Server {
    /// Binds the listener and prepares the loop.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        let max_input = config.limits.max_whole_frame().max(READ_BUFFER_SIZE);
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let mut metrics = TcpListener::bind(addr)?;
                poll.registry()
                    .register(&mut metrics, METRICS_LISTENER, Interest::READABLE)?;
                Some(metrics)
            }
            None => None,
        };
        let mut timers = Timers::default();
        if !config.timeouts.stats_interval.is_zero() {
            timers.arm(
                Instant::now() + config.timeouts.stats_interval,
                TimerKey::Stats,
            );
        }
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            listener,
            local_addr,
            relay: Relay::new(config.timeouts.ring, config.limits.max_user_id),
            config,
            conns: Slab::new(),
            next_generation: 0,
            timers,
            pool: BufferPool::new(READ_BUFFER_SIZE, POOL_KEEP),
            max_input,
            accepted: Vec::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            reap: Vec::new(),
            closing_queue: Vec::new(),
            actions: Vec::new(),
            scratch: Vec::new(),
            counters: Counters::default(),
            now: Instant::now(),
            metrics_listener,
            metrics_conns: Slab::new(),
            signals: None,
            lifecycle: Lifecycle::Running,
            per_ip: HashMap::new(),
            unregistered: 0,
            reserve_fd: File::open("/dev/null").ok(),
            refusals: Refusals::default(),
            held_over: None,
        })
    }

    /// Handles SIGINT and SIGTERM: the first starts a graceful shutdown,
    /// a second ends the run at once. Call before [`Server::run`].
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The address metrics are served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Server-side counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Runs the loop until a signal ends it (see [`Server::handle_signals`])
    /// or polling itself fails.
    pub fn run(&mut self) -> io::Result<Exit> {
        info!("listening on {}", self.local_addr);
        if let Some(addr) = self.metrics_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        loop {
            if let Some(exit) = self.turn()? {
                return Ok(exit);
            }
        }
    }

    /// One iteration of the loop; `Some` when the run is over.
    pub fn turn(&mut self) -> io::Result<Option<Exit>> {
        let timeout = if self.ready.is_empty() {
            self.timers.poll_timeout(Instant::now())
        } else {
            Some(Duration::ZERO)
        };
        if let Err(error) = self.poll.poll(&mut self.events, timeout)
            && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(error);
        }
        self.now = Instant::now();
        let mut accept = false;
        // Taken out for the batch so the handlers below may borrow `self`.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let mut signalled = false;
        for event in events.iter() {
            match event.token() {
                LISTENER => {
                    accept = true;
                    continue;
                }
                METRICS_LISTENER => {
                    self.accept_metrics();
                    continue;
                }
                SIGNALS => {
                    signalled = true;
                    continue;
                }
                Token(token) if token >= METRICS_BASE => {
                    self.metrics_event(
                        token - METRICS_BASE,
                        event.is_readable(),
                        event.is_writable(),
                    );
                    continue;
                }
                Token(_) => {}
            }
            let slot = event.token().0;
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            let id = conn.id;
            if event.is_read_closed() || event.is_error() {
                conn.read_closed = true;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                conn.readable = true;
                self.mark_ready(id);
            }
            if event.is_writable() || event.is_write_closed() {
                self.mark_dirty(id);
            }
        }
        self.events = events;
        if signalled && let Some(exit) = self.on_signals() {
            return Ok(Some(exit));
        }
        if accept && self.lifecycle == Lifecycle::Running {
            self.accept_all();
        }
        self.insert_accepted();
        self.service_ready();
        self.fire_timers();
        self.compact_timers();
        self.flush_dirty();
        self.reap_closed();
        Ok(match self.lifecycle {
            Lifecycle::Draining { deadline } if self.conns.is_empty() || self.now >= deadline => {
                info!("shutdown complete ({} connections left)", self.conns.len());
                Some(Exit::Graceful)
            }
            _ => None,
        })
    }

    /// Queues a connection for input handling (once).
    fn mark_ready(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id)
            && !conn.queued_ready
        {
            conn.queued_ready = true;
            self.ready.push_back(id);
        }
    }

    /// Queues a connection for a flush before the next poll (once).
    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id)
            && !conn.queued_dirty
        {
            conn.queued_dirty = true;
            self.dirty.push(id);
        }
    }

    fn conn(&self, id: ConnId) -> Option<&Connection> {
        self.conns.get(id.index()).filter(|conn| conn.id == id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.conns.get_mut(id.index()).filter(|conn| conn.id == id)
    }

    // ----- accepting -------------------------------------------------------

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    if let Some(reason) = self.refusal(addr.ip()) {
                        self.refuse(stream, addr, reason);
                        continue;
                    }
                    *self.per_ip.entry(addr.ip()).or_insert(0) += 1;
                    self.unregistered += 1;
                    self.accepted.push((stream, addr));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if is_out_of_fds(&error) && self.reserve_fd.take().is_some() => {
                    // Out of descriptors: free the reserve, accept the pending
                    // connection and close it at once, take the reserve back.
                    // Without this the connection would stay pending and wake
                    // the loop again and again.
                    let accepted = self.listener.accept();
                    let pending = accepted.is_ok();
                    if let Ok((stream, addr)) = accepted {
                        self.refuse(stream, addr, "out of file descriptors");
                    }
                    // Only now is a descriptor free again for the reserve.
                    self.reserve_fd = File::open("/dev/null").ok();
                    if !pending {
                        // Nothing was pending after all (Linux reports EMFILE
                        // before it looks at the queue): stop, or this loop
                        // would never see WouldBlock.
                        return;
                    }
                }
                Err(error) => {
                    warn!("accept failed: {error}; retrying in {ACCEPT_RETRY:?}");
                    self.timers
                        .arm(self.now + ACCEPT_RETRY, TimerKey::AcceptRetry);
                    return;
                }
            }
        }
    }

    /// Why a new connection from `ip` must be refused, if it must.
    fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let config = &self.config;
        if self.conns.len() + self.accepted.len() >= config.max_connections {
            Some("connection limit (--max-connections)")
        } else if self.unregistered >= config.max_unregistered {
            Some("unregistered connection limit (--max-unregistered)")
        } else if config.max_per_ip > 0
            && self.per_ip.get(&ip).copied().unwrap_or(0) as usize >= config.max_per_ip
        {
            Some("per-address limit (--max-per-ip)")
        } else {
            None
        }
    }

    /// Closes a just-accepted connection; logs refusals at most once a second.
    fn refuse(&mut self, stream: TcpStream, addr: SocketAddr, reason: &'static str) {
        drop(stream);
        self.counters.connections_refused += 1;
        let refusals = &mut self.refusals;
        refusals.since_log += 1;
        refusals.last_reason = reason;
        if refusals
            .last_log
            .is_none_or(|at| self.now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            warn!(
                "refused {} connection(s) in the last second, the latest from {addr}: {reason}",
                refusals.since_log
            );
            refusals.since_log = 0;
            refusals.last_log = Some(self.now);
        }
    }

    fn insert_accepted(&mut self) {
        for (mut stream, addr) in std::mem::take(&mut self.accepted) {
            if let Err(error) = stream.set_nodelay(true) {
                debug!("{addr}: TCP_NODELAY failed: {error}");
            }
            let entry = self.conns.vacant_entry();
            self.next_generation = self.next_generation.wrapping_add(1);
            let Ok(slot) = u32::try_from(entry.key()) else {
                warn!("{addr}: no connection slot left");
                self.forget_address(addr.ip());
                self.unregistered -= 1;
                continue;
            };
            let id = ConnId {
                slot,
                generation: self.next_generation,
            };
            if let Err(error) =
                self.poll
                    .registry()
                    .register(&mut stream, Token(id.index()), Interest::READABLE)
            {
                warn!("{addr}: cannot register with the poll: {error}");
                continue;
            }
            entry.insert(Connection::new(id, stream, addr, self.now));
            self.counters.connections_accepted += 1;
            info!("{id} connected from {addr}");
            self.timers.arm(
                self.now + self.config.timeouts.register,
                TimerKey::Liveness(id),
            );
        }
    }

    // ----- input -----------------------------------------------------------

    fn service_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.conn_mut(id) {
                conn.queued_ready = false;
                self.service(id);
            }
        }
    }

    /// Handles buffered input, then reads and handles more, for a bounded
    /// number of reads; a connection with input left goes to the back of the
    /// ready queue. End of input closes the connection once every byte
    /// before it has been handled.
    fn service(&mut self, id: ConnId) {
        for _ in 0..READS_PER_TURN {
            if self.drain_input(id) == Flow::Stop {
                return;
            }
            let now = self.now;
            let (pool, max_input) = (&mut self.pool, self.max_input);
            let Some(conn) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
                return;
            };
            if conn.peer_closed {
                conn.input.release_if_empty(pool);
                if conn.is_closing() {
                    self.finish_if_done(id);
                } else {
                    self.begin_close(id, CloseReason::PeerClosed);
                }
                return;
            }
            if !conn.readable {
                conn.input.release_if_empty(pool);
                return;
            }
            match conn.read_some(pool, max_input) {
                ReadOutcome::Read(_) => conn.last_input = now,
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => {}
                ReadOutcome::Error => debug!("{id}: socket error on read"),
                ReadOutcome::BufferFull => {
                    self.protocol_error(
                        id,
                        ProtocolError {
                            code: ErrorCode::TooLarge,
                            what: "frame larger than the input buffer",
                        },
                    );
                    return;
                }
            }
        }
        if self
            .conn(id)
            .is_some_and(|conn| conn.readable || conn.peer_closed)
        {
            self.ready.push_back(id);
        }
    }

    /// Handles the parsable input in the connection's buffer.
    fn drain_input(&mut self, id: ConnId) -> Flow {
        loop {
            let flow = self.step(id);
            self.apply_actions();
            self.close_queued();
            if let Some(to) = self.held_over.take().filter(|to| *to != id) {
                self.pause(id, to);
                return Flow::Stop;
            }
            match flow {
                Some(flow) => return flow,
                None => continue,
            }
        }
    }

    /// Handles one piece of input: `None` to go on, `Some` to stop.
    fn step(&mut self, id: ConnId) -> Option<Flow> {
        let soft = self.config.output_soft;
        let Some(conn) = self.conn_mut(id) else {
            return Some(Flow::Stop);
        };
        if conn.is_closing() {
            let all = conn.input.len();
            conn.input.consume(all);
            return Some(Flow::ReadMore);
        }
        if conn.paused_on.is_some() {
            return Some(Flow::Stop);
        }
        if conn.input.is_empty() {
            return Some(Flow::ReadMore);
        }
        if let Some(flow) = self.forward_media_run(id) {
            return flow;
        }
        let Some(conn) = self.conn_mut(id) else {
            return Some(Flow::Stop);
        };
        if let (true, BodyTarget::To(dest)) = (conn.parser.in_body(), conn.body_target)
            && conn.parser.body_kind() == Some(BodyKind::File)
            && self
                .conn(dest)
                .is_some_and(|d| d.output.pending_len() >= soft && !d.is_closing())
        {
            self.pause(id, dest);
            return Some(Flow::Stop);
        }
        self.parse_one(id)
    }

    /// Parses the next piece of a connection's input and acts on it.
    fn parse_one(&mut self, id: ConnId) -> Option<Flow> {
        let Server {
            conns,
            relay,
            actions,
            config,
            counters,
            now,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id.index()).filter(|c| c.id == id) else {
            return Some(Flow::Stop);
        };
        let saved_parser = conn.parser.clone();
        let context = ParseContext {
            limits: &config.limits,
            user_id: &conn.user_id,
            seed_phase: Connection::seed_phase(conn.link.as_deref(), conn.grace_until, *now),
        };
        let parsed = match conn.parser.parse(conn.input.data(), &context) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.protocol_error(id, error);
                return Some(Flow::Stop);
            }
        };
        match parsed {
            Parsed::NeedMore => return Some(Flow::ReadMore),
            Parsed::Stale { consumed } => {
                counters.media_dropped_stale += 1;
                conn.input.consume(consumed);
            }
            Parsed::Frame {
                frame: ClientFrame::Register { user, .. },
                consumed,
            } => {
                let user = match UserId::from_utf8(user, config.limits.max_user_id) {
                    Ok(user) => user,
                    Err(why) => {
                        let error = ProtocolError {
                            code: ErrorCode::BadUserId,
                            what: user_id_error_text(why),
                        };
                        self.protocol_error(id, error);
                        return Some(Flow::Stop);
                    }
                };
                conn.user_id = user.as_str().as_bytes().into();
                conn.state = ConnState::Registered;
                self.unregistered -= 1;
                conn.input.consume(consumed);
                relay.register(id, user, actions);
                // The liveness deadline armed at accept checks idleness from
                // then on; only an idle timeout shorter than the
                // registration timeout needs an earlier check.
                if config.timeouts.idle < config.timeouts.register {
                    self.timers
                        .arm(*now + config.timeouts.idle, TimerKey::Liveness(id));
                }
            }
            Parsed::Frame {
                frame: ClientFrame::Heartbeat,
                consumed,
            } => {
                conn.input.consume(consumed);
                if conn.framing() == Some(Framing::LengthPrefixed) {
                    self.send_frame(id, &ServerFrame::Heartbeat);
                }
            }
            Parsed::Frame {
                frame: ClientFrame::FileStart { to, name, data },
                consumed,
            } => {
                let route = relay.route_file(id, to);
                let name = name.to_owned_qstring();
                return self.start_file(id, route, name, data, consumed, saved_parser);
            }
            Parsed::Frame { frame, consumed } => {
                relay.on_frame(id, &frame, *now, actions);
                conn.input.consume(consumed);
            }
            Parsed::Media {
                header,
                payload_len,
                in_hand,
            } => return self.start_media(id, header, payload_len, in_hand, saved_parser),
            Parsed::Body { len, last, .. } => self.forward_body(id, len, last),
        }
        None
    }

    // ----- media and file bodies -------------------------------------------

    /// The fast path for media between two length-prefixed connections:
    /// the rest of the frame in progress, complete media frames and the
    /// start of the next one are exactly what the peer must receive, so they
    /// go out in one write (zero-copy when the peer has nothing queued).
    /// `None` when this does not apply; the generic path then handles the
    /// input (one frame at a time, with the soft-limit drop decided at each
    /// frame's start).
    fn forward_media_run(&mut self, id: ConnId) -> Option<Option<Flow>> {
        let (soft, limits) = (self.config.output_soft, self.config.limits);
        let conn = self.conn(id)?;
        let peer = conn.link.as_ref()?.peer;
        let continuing = conn.parser.in_body();
        if continuing && conn.body_target != BodyTarget::To(peer) {
            return None;
        }
        let target = self.conn(peer).filter(|p| !p.is_closing())?;
        if target.framing() != Some(Framing::LengthPrefixed)
            || target.inbound.is_some_and(|owner| owner != id)
            || target.output.len() >= soft
        {
            return None;
        }
        // Even a lone frame: one plain write of the bytes as received is
        // cheaper than re-encoding its header for a two-part writev.
        let min_frames = 1;
        let conn = self.conn_mut(id)?;
        let run = conn
            .parser
            .media_passthrough(conn.input.data(), &limits, min_frames)?;
        let in_body = conn.parser.in_body();
        conn.body_target = if in_body {
            BodyTarget::To(peer)
        } else {
            BodyTarget::Discard
        };
        self.forward(id, peer, &[], 0, run.len);
        self.counters.media_frames_relayed += run.frames;
        self.counters.media_bytes_relayed += run.payload;
        self.conn_mut(id)?.input.consume(run.len);
        if in_body {
            self.set_inbound(peer, id);
        } else if self.conn(peer).is_some_and(|p| p.inbound == Some(id)) {
            self.end_inbound(peer);
        }
        Some(None)
    }

    /// A media frame from `id` starts with `in_hand` payload bytes after
    /// `header` bytes of its own header.
    fn start_media(
        &mut self,
        id: ConnId,
        header: usize,
        payload_len: u32,
        in_hand: usize,
        saved_parser: crate::protocol::parser::FrameParser,
    ) -> Option<Flow> {
        let soft = self.config.output_soft;
        let conn = self.conn_mut(id)?;
        let is_seed = conn.framing() == Some(Framing::Seed);
        let peer = match conn.link.as_mut() {
            Some(link) => {
                link.media_mode |= is_seed;
                Some(link.peer)
            }
            None => None,
        };
        if is_seed && payload_len == 0 {
            // A seed `6` that arrived alone: its payload comes in the next
            // read as a continuation. Relaying an empty frame would only
            // make the receiver play nothing.
            conn.input.consume(header);
            return None;
        }
        let complete = in_hand as u64 == u64::from(payload_len);
        let target = peer.and_then(|peer| {
            self.conn(peer)
                .filter(|p| !p.is_closing())
                .map(|p| (peer, p))
        });
        let decision = match target {
            None => MediaDecision::Drop(DropWhy::NoCall),
            Some((_, p)) if p.output.len() >= soft => MediaDecision::Drop(DropWhy::Overflow),
            Some((peer, p)) if p.inbound.is_some_and(|owner| owner != id) => {
                if complete {
                    MediaDecision::Hold(peer)
                } else {
                    MediaDecision::Wait(peer)
                }
            }
            Some((peer, _)) => MediaDecision::Forward(peer),
        };
        match decision {
            MediaDecision::Wait(peer) => {
                if let Some(conn) = self.conn_mut(id) {
                    conn.parser = saved_parser;
                }
                self.pause(id, peer);
                return Some(Flow::Stop);
            }
            MediaDecision::Drop(why) => {
                match why {
                    DropWhy::NoCall => self.counters.media_dropped_no_call += 1,
                    DropWhy::Overflow => {
                        self.counters.media_dropped_overflow += 1;
                        if let Some(peer) = peer.and_then(|peer| self.conn_mut(peer)) {
                            peer.media_dropped += 1;
                        }
                    }
                }
                if let Some(conn) = self.conn_mut(id) {
                    conn.input.consume(header + in_hand);
                    conn.body_target = BodyTarget::Discard;
                }
            }
            MediaDecision::Hold(peer) | MediaDecision::Forward(peer) => {
                let peer_framing = self
                    .conn(peer)
                    .and_then(Connection::framing)
                    .unwrap_or(Framing::Seed);
                self.scratch.clear();
                let mut out_header = std::mem::take(&mut self.scratch);
                encode_server(
                    &ServerFrame::MediaHeader { payload_len },
                    peer_framing,
                    &mut out_header,
                );
                self.forward(id, peer, &out_header, header, in_hand);
                self.scratch = out_header;
                self.counters.media_frames_relayed += 1;
                self.counters.media_bytes_relayed += u64::from(payload_len);
                if let Some(conn) = self.conn_mut(id) {
                    conn.input.consume(header + in_hand);
                    conn.body_target = if complete {
                        BodyTarget::Discard
                    } else {
                        BodyTarget::To(peer)
                    };
                }
                if !complete {
                    self.set_inbound(peer, id);
                }
            }
        }
        None
    }

    /// A FILE header from `id` was parsed (`consumed` bytes).
    fn start_file(
        &mut self,
        id: ConnId,
        route: FileRoute,
        name: QString,
        data: crate::protocol::qdatastream::ByteArrayLen,
        consumed: usize,
        saved_parser: crate::protocol::parser::FrameParser,
    ) -> Option<Flow> {
        let soft = self.config.output_soft;
        let delivery = match route {
            FileRoute::Deliver { to, from } => {
                self.conn(to).filter(|dest| !dest.is_closing()).map(|dest| {
                    (
                        to,
                        from,
                        dest.output.pending_len() >= soft || dest.inbound.is_some_and(|o| o != id),
                    )
                })
            }
            FileRoute::Undeliverable => None,
        };
        match delivery {
            Some((dest, _, true)) => {
                if let Some(conn) = self.conn_mut(id) {
                    conn.parser = saved_parser;
                }
                self.pause(id, dest);
                Some(Flow::Stop)
            }
            Some((dest, from, false)) => {
                self.relay.note_file(true);
                let framing = self
                    .conn(dest)
                    .and_then(Connection::framing)
                    .unwrap_or(Framing::Seed);
                let mut header = Vec::new();
                encode_server(
                    &ServerFrame::FileHeader { from, name, data },
                    framing,
                    &mut header,
                );
                self.forward(id, dest, &header, 0, 0);
                let conn = self.conn_mut(id)?;
                conn.input.consume(consumed);
                if conn.parser.in_body() {
                    conn.body_target = BodyTarget::To(dest);
                    self.set_inbound(dest, id);
                }
                None
            }
            None => {
                self.relay.note_file(false);
                let conn = self.conn_mut(id)?;
                conn.input.consume(consumed);
                conn.body_target = BodyTarget::Discard;
                self.actions.push(Action::Notify {
                    to: id,
                    code: ErrorCode::Offline,
                    detail: "the FILE's recipient is not online".to_owned(),
                });
                None
            }
        }
    }

    /// The next `len` input bytes of `id` continue its body in progress.
    fn forward_body(&mut self, id: ConnId, len: usize, last: bool) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let target = match conn.body_target {
            BodyTarget::To(dest) if self.conn(dest).is_some_and(|d| !d.is_closing()) => Some(dest),
            _ => None,
        };
        if let Some(dest) = target {
            self.forward(id, dest, &[], 0, len);
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.input.consume(len);
            if last {
                conn.body_target = BodyTarget::Discard;
            }
        }
        if let (Some(dest), true) = (target, last) {
            self.end_inbound(dest);
        }
    }

    /// A cut-through frame from `owner` into `dest` has started.
    fn set_inbound(&mut self, dest: ConnId, owner: ConnId) {
        if let Some(dest) = self.conn_mut(dest) {
            dest.inbound = Some(owner);
        }
    }

    /// The cut-through frame into `dest` is complete: frames held for it go
    /// out, and senders waiting for it may go on.
    fn end_inbound(&mut self, dest: ConnId) {
        if let Some(conn) = self.conn_mut(dest) {
            conn.inbound = None;
            conn.held_since = None;
            conn.output.release_held();
            self.mark_dirty(dest);
        }
        self.wake_waiters(dest);
    }

    /// Writes `header` and `len` bytes of `from`'s input (from offset
    /// `offset`) to `to`: straight to its socket when nothing is queued
    /// before them, copying into its queue only what the socket does not
    /// take now. While another sender's cut-through frame is being written
    /// into `to`, whole frames are held until it completes.
    fn forward(&mut self, from: ConnId, to: ConnId, header: &[u8], offset: usize, len: usize) {
        if from.index() == to.index() {
            let payload = self
                .conn(from)
                .and_then(|conn| conn.input.data().get(offset..offset + len))
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            self.enqueue(to, Some(from), &[header, &payload]);
            return;
        }
        let Some((src, dst)) = self.conns.get2_mut(from.index(), to.index()) else {
            return;
        };
        if src.id != from || dst.id != to {
            return;
        }
        let payload = src
            .input
            .data()
            .get(offset..offset + len)
            .unwrap_or_default();
        let parts = [header, payload];
        let total = header.len() + payload.len();
        if let Some(owner) = dst.inbound.filter(|owner| *owner != from) {
            if dst.output.held_len() == 0 {
                dst.held_since = Some(self.now);
                let at = self.now + self.config.timeouts.stall;
                self.timers.arm(at, TimerKey::Stall(to, owner));
            }
            dst.output.hold(&parts);
            self.counters.bytes_queued += total as u64;
            self.check_stalled_inbound(to);
        } else if dst.output.is_empty() {
            let (written, result) = socket::write_all_vectored(&mut dst.socket, &parts);
            self.counters.bytes_zero_copy += written as u64;
            if written < total {
                let header_left = header.get(written..).unwrap_or_default();
                let payload_left = payload
                    .get(written.saturating_sub(header.len())..)
                    .unwrap_or_default();
                dst.output.push(&[header_left, payload_left]);
                self.counters.bytes_queued += (total - written) as u64;
            }
            if matches!(result, SocketResult::Closed | SocketResult::Error) {
                dst.peer_closed = true;
                self.closing_queue.push((to, CloseReason::PeerClosed));
            }
        } else {
            dst.output.push(&parts);
            self.counters.bytes_queued += total as u64;
        }
        self.after_output(to);
    }

    /// Appends bytes for `to` to its queue: held while a cut-through frame
    /// is being written into `to`, unless they continue that very frame
    /// (`from` is its sender). Server-built frames have no sender (`None`),
    /// so they are always held then, even for a FILE a user sends itself.
    fn enqueue(&mut self, to: ConnId, from: Option<ConnId>, parts: &[&[u8]]) {
        let Some(dst) = self.conn_mut(to) else {
            return;
        };
        let total: usize = parts.iter().map(|part| part.len()).sum();
        let held = dst.inbound.is_some() && dst.inbound != from;
        if held {
            if dst.output.held_len() == 0
                && let Some(owner) = dst.inbound
            {
                self.start_holding(to, owner);
            }
            let Some(dst) = self.conn_mut(to) else {
                return;
            };
            dst.output.hold(parts);
        } else {
            dst.output.push(parts);
        }
        self.counters.bytes_queued += total as u64;
        if held {
            self.check_stalled_inbound(to);
        }
        self.after_output(to);
    }

    /// Frames start waiting for `to` behind `owner`'s cut-through frame:
    /// they may wait `--stall-timeout` at most.
    fn start_holding(&mut self, to: ConnId, owner: ConnId) {
        let now = self.now;
        if let Some(dst) = self.conn_mut(to) {
            dst.held_since = Some(now);
        }
        self.timers
            .arm(now + self.config.timeouts.stall, TimerKey::Stall(to, owner));
    }

    /// Frames are held for `to` behind a cut-through frame. Past the soft
    /// limit, the connection whose input produced them is paused until the
    /// frame completes (recorded here, applied by `drain_input`): text and
    /// signaling are never dropped, so their sender waits instead.
    fn check_stalled_inbound(&mut self, to: ConnId) {
        let soft = self.config.output_soft;
        if self
            .conn(to)
            .is_some_and(|dst| dst.output.held_len() >= soft)
        {
            self.held_over = Some(to);
        }
    }

    /// Frames for `to` waited `--stall-timeout` behind a cut-through frame:
    /// its sender is closed (and the frame padded) unless it is waiting for
    /// `to` itself to drain (then `to` reads slowly, and its own limits
    /// apply). One peer must not silence another by trickling a long frame.
    fn close_stalled_owner(&mut self, to: ConnId) {
        let Some(owner) = self.conn(to).and_then(|dst| dst.inbound) else {
            return;
        };
        if self.conn(owner).is_some_and(|o| o.paused_on == Some(to)) {
            return;
        }
        let detail = format!("a frame to {to} stalled while other frames for it waited");
        warn!("{owner}: {detail}");
        self.closing_queue
            .push((owner, CloseReason::Error(ErrorCode::Timeout, detail)));
    }

    /// Output was added to `to`: check the hard limit, schedule a flush.
    fn after_output(&mut self, to: ConnId) {
        let hard = self.config.output_hard;
        let Some(dst) = self.conn(to) else {
            return;
        };
        let (queued, closing) = (dst.output.len(), dst.is_closing());
        if !dst.output.is_empty() {
            self.mark_dirty(to);
        }
        if queued > hard && !closing {
            self.counters.output_overflow_closes += 1;
            self.closing_queue.push((
                to,
                CloseReason::Error(
                    ErrorCode::OutputOverflow,
                    format!("output buffer over {hard} bytes"),
                ),
            ));
        }
    }

    /// Stops reading `id` until `dest`'s output drains.
    fn pause(&mut self, id: ConnId, dest: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.paused_on = Some(dest);
        }
        if let Some(dest_conn) = self.conn_mut(dest)
            && !dest_conn.waiters.contains(&id)
        {
            dest_conn.waiters.push(id);
        }
        debug!("{id} paused until {dest} drains");
    }

    /// Lets `waiter` go on if it is paused on `dest`.
    fn wake_one(&mut self, dest: ConnId, waiter: ConnId) {
        let Some(conn) = self.conn_mut(dest) else {
            return;
        };
        let Some(at) = conn.waiters.iter().position(|w| *w == waiter) else {
            return;
        };
        conn.waiters.swap_remove(at);
        if let Some(conn) = self.conn_mut(waiter)
            && conn.paused_on == Some(dest)
        {
            conn.paused_on = None;
            self.mark_ready(waiter);
        }
    }

    /// Lets the connections paused on `dest` go on.
    fn wake_waiters(&mut self, dest: ConnId) {
        let waiters = match self.conn_mut(dest) {
            Some(conn) => std::mem::take(&mut conn.waiters),
            None => return,
        };
        for waiter in waiters {
            if let Some(conn) = self.conn_mut(waiter)
                && conn.paused_on == Some(dest)
            {
                conn.paused_on = None;
                self.ready.push_back(waiter);
            }
        }
    }

    // ----- output ----------------------------------------------------------

    /// Encodes a frame in the receiver's framing and queues it.
    fn send_frame(&mut self, to: ConnId, frame: &ServerFrame) {
        let Some(framing) = self
            .conn(to)
            .filter(|c| !c.is_closing())
            .and_then(Connection::framing)
        else {
            return;
        };
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        encode_server(frame, framing, &mut bytes);
        self.enqueue(to, None, &[&bytes]);
        self.scratch = bytes;
    }

    /// Flushes every connection that output was added to or that became
    /// writable, and updates poll interests.
    fn flush_dirty(&mut self) {
        let soft = self.config.output_soft;
        while let Some(id) = self.dirty.pop() {
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            conn.queued_dirty = false;
            if !conn.flush() && !conn.is_closing() {
                self.begin_close(id, CloseReason::PeerClosed);
            }
            let Some(conn) = self.conn(id) else {
                continue;
            };
            if conn.pad_remaining > 0 {
                self.refill_padding(id);
            }
            let Some(conn) = self.conn(id) else {
                continue;
            };
            if conn.output.pending_len() < soft && !conn.waiters.is_empty() {
                // While a cut-through frame is in progress only its sender
                // waits for this queue to drain; the others wait for the
                // frame to end (`end_inbound` wakes them).
                match conn.inbound {
                    None => self.wake_waiters(id),
                    Some(owner) => self.wake_one(id, owner),
                }
            }
            self.finish_if_done(id);
            self.update_interest(id);
            self.close_queued();
        }
    }

    fn update_interest(&mut self, id: ConnId) {
        let registry = self.poll.registry();
        let Some(conn) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
            return;
        };
        let wanted = conn.wanted_interest();
        if wanted != conn.registered_interest {
            match registry.reregister(&mut conn.socket, Token(id.index()), wanted) {
                Ok(()) => conn.registered_interest = wanted,
                Err(error) => warn!("{id}: reregister failed: {error}"),
            }
        }
    }

    // ----- actions ---------------------------------------------------------

    fn apply_actions(&mut self) {
        while !self.actions.is_empty() {
            for action in std::mem::take(&mut self.actions) {
                self.apply(action);
            }
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Send { to, frame } => self.send_frame(to, &frame),
            Action::Notify { to, code, detail } => {
                match self.conn(to).and_then(Connection::framing) {
                    Some(Framing::LengthPrefixed) => {
                        self.send_frame(to, &ServerFrame::Error { code, detail })
                    }
                    Some(Framing::Seed) => {
                        self.counters.errors_unreported_seed += 1;
                        debug!(
                            "{to}: {code} ({detail}) not reported: seed connections get no ERROR"
                        );
                    }
                    None => {}
                }
            }
            Action::Close { conn, code } => {
                let detail = "a newer connection registered this user id".to_owned();
                self.begin_close(conn, CloseReason::Error(code, detail));
            }
            Action::Link {
                conn,
                peer,
                call_id,
                peer_user,
            } => {
                if let Some(conn) = self.conn_mut(conn) {
                    conn.link = Some(Box::new(MediaLink::new(peer, call_id, peer_user.as_str())));
                    conn.grace_until = None;
                }
            }
            Action::Unlink { conn } => {
                let (now, grace) = (self.now, self.config.timeouts.media_grace);
                if let Some(conn) = self.conn_mut(conn) {
                    let was_media = conn.link.take().is_some_and(|link| link.media_mode);
                    if was_media && conn.framing() == Some(Framing::Seed) && !grace.is_zero() {
                        conn.grace_until = Some(now + grace);
                    }
                }
            }
            Action::ArmTimer { at, timer } => self.timers.arm(at, TimerKey::Relay(timer)),
        }
    }

    // ----- timers ----------------------------------------------------------

    fn fire_timers(&mut self) {
        while let Some(key) = self.timers.pop_expired(self.now) {
            match key {
                TimerKey::Liveness(id) => match self.conn(id).map(|c| c.state) {
                    Some(ConnState::AwaitingRegistration) => {
                        let detail = "no registration within the registration timeout".to_owned();
                        self.begin_close(id, CloseReason::Error(ErrorCode::Timeout, detail));
                    }
                    Some(ConnState::Registered) => self.check_idle(id),
                    Some(ConnState::Closing { .. }) | None => {}
                },
                TimerKey::Linger(id) => {
                    if self.conn(id).is_some_and(Connection::is_closing) {
                        self.reap.push(id);
                    }
                }
                TimerKey::AcceptRetry if self.lifecycle == Lifecycle::Running => self.accept_all(),
                TimerKey::AcceptRetry | TimerKey::ShutdownDeadline => {}
                TimerKey::Stall(to, owner) => {
                    let stall = self.config.timeouts.stall;
                    let since = self
                        .conn(to)
                        .filter(|dst| dst.inbound == Some(owner) && dst.output.held_len() > 0)
                        .and_then(|dst| dst.held_since);
                    match since {
                        Some(at) if self.now >= at + stall => {
                            self.close_stalled_owner(to);
                            self.close_queued();
                        }
                        Some(at) => self.timers.arm(at + stall, TimerKey::Stall(to, owner)),
                        None => {}
                    }
                }
                TimerKey::Metrics(key) => {
                    if self
                        .metrics_conns
                        .get(key)
                        .is_some_and(|c| c.deadline <= self.now)
                    {
                        self.drop_metrics_conn(key);
                    }
                }
                TimerKey::Stats => {
                    info!("{}", metrics::stats_line(&self.snapshot()));
                    self.timers.arm(
                        self.now + self.config.timeouts.stats_interval,
                        TimerKey::Stats,
                    );
                }
                TimerKey::Relay(timer) => {
                    self.relay.on_timer(&timer, self.now, &mut self.actions);
                }
            }
            self.apply_actions();
            self.close_queued();
        }
    }

    /// Drops stale deadlines once they clearly outnumber the live ones
    /// (a liveness and a linger deadline per connection, one per call).
    fn compact_timers(&mut self) {
        let live_bound = 2 * self.conns.len() + self.relay.live_calls() + 1024;
        if self.timers.len() <= 2 * live_bound {
            return;
        }
        let (conns, relay) = (&self.conns, &self.relay);
        let alive = |id: &ConnId| conns.get(id.index()).is_some_and(|conn| conn.id == *id);
        self.timers.retain(|key| match key {
            TimerKey::Liveness(id) | TimerKey::Linger(id) => alive(id),
            TimerKey::AcceptRetry | TimerKey::Stats | TimerKey::ShutdownDeadline => true,
            TimerKey::Metrics(_) => true,
            TimerKey::Stall(to, _) => alive(to),
            TimerKey::Relay(timer) => relay.timer_is_live(timer),
        });
        debug!("timers compacted to {}", self.timers.len());
    }

    fn check_idle(&mut self, id: ConnId) {
        let idle = self.config.timeouts.idle;
        let Some(conn) = self.conn(id).filter(|c| c.state == ConnState::Registered) else {
            return;
        };
        // A connection the relay stopped reading (backpressure) is not idle.
        let deadline = if conn.paused_on.is_some() {
            self.now + idle
        } else {
            conn.last_input + idle
        };
        if self.now >= deadline {
            let detail = format!("no input for {idle:?}");
            self.begin_close(id, CloseReason::Error(ErrorCode::Timeout, detail));
        } else {
            self.timers.arm(deadline, TimerKey::Liveness(id));
        }
    }

    // ----- operations: signals, metrics ------------------------------------

    /// Reads pending signals: the first starts a graceful shutdown, a
    /// second one forces the exit.
    fn on_signals(&mut self) -> Option<Exit> {
        let count = self
            .signals
            .as_mut()
            .map_or(0, |signals| signals.pending().count());
        for _ in 0..count {
            match self.lifecycle {
                Lifecycle::Running => self.begin_shutdown(),
                Lifecycle::Draining { .. } => {
                    warn!("second signal: exiting at once");
                    return Some(Exit::Forced);
                }
            }
        }
        None
    }

    /// Stops accepting, ends every call (CALL_END to both parties), and
    /// closes every connection with ERROR `shutting_down` after its output.
    fn begin_shutdown(&mut self) {
        let deadline = self.now + self.config.timeouts.shutdown;
        info!(
            "signal received: shutting down ({} connections, {} calls; at most {:?})",
            self.conns.len(),
            self.relay.live_calls(),
            self.config.timeouts.shutdown
        );
        self.lifecycle = Lifecycle::Draining { deadline };
        if let Err(error) = self.poll.registry().deregister(&mut self.listener) {
            debug!("deregister listener: {error}");
        }
        self.relay.end_all(&mut self.actions);
        self.apply_actions();
        let ids: Vec<ConnId> = self.conns.iter().map(|(_, conn)| conn.id).collect();
        for id in ids {
            let detail = "the server is shutting down".to_owned();
            self.begin_close(id, CloseReason::Error(ErrorCode::ShuttingDown, detail));
        }
        self.timers.arm(deadline, TimerKey::ShutdownDeadline);
    }

    /// The counters and gauges, read now.
    fn snapshot(&self) -> Snapshot<'_> {
        let (calls_ringing, calls_active) = self.relay.call_counts();
        let (mut paused, mut queued_bytes) = (0, 0);
        for (_, conn) in &self.conns {
            paused += usize::from(conn.paused_on.is_some());
            queued_bytes += conn.output.len();
        }
        Snapshot {
            counters: &self.counters,
            relay: self.relay.stats(),
            connections: self.conns.len(),
            unregistered: self.unregistered,
            registered: self.relay.online(),
            calls_ringing,
            calls_active,
            paused,
            queued_bytes,
        }
    }

    fn accept_metrics(&mut self) {
        loop {
            let Some(listener) = self.metrics_listener.as_ref() else {
                return;
            };
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    if error.kind() != io::ErrorKind::WouldBlock {
                        warn!("metrics accept failed: {error}");
                    }
                    return;
                }
            };
            let entry = self.metrics_conns.vacant_entry();
            let key = entry.key();
            let token = Token(METRICS_BASE + key);
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            let deadline = self.now + METRICS_DEADLINE;
            entry.insert(MetricsConn::new(stream, deadline));
            self.timers.arm(deadline, TimerKey::Metrics(key));
        }
    }

    fn metrics_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.metrics_conns.get_mut(key) else {
            return;
        };
        let mut progress = if readable {
            conn.on_readable()
        } else {
            HttpProgress::Wait
        };
        if writable && progress == HttpProgress::Wait {
            progress = conn.on_writable();
        }
        if let HttpProgress::Answer(request) = progress {
            let bytes = match request {
                Request::Metrics => metrics_http::response(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &metrics::render_prometheus(&self.snapshot()),
                ),
                Request::NotFound => {
                    metrics_http::response("404 Not Found", "text/plain", "try /metrics\n")
                }
                Request::MethodNotAllowed => {
                    metrics_http::response("405 Method Not Allowed", "text/plain", "GET only\n")
                }
                Request::Bad => {
                    metrics_http::response("400 Bad Request", "text/plain", "bad request\n")
                }
            };
            progress = match self.metrics_conns.get_mut(key) {
                Some(conn) => conn.answer(bytes),
                None => HttpProgress::Close,
            };
        }
        if progress == HttpProgress::Close {
            self.drop_metrics_conn(key);
        }
    }

    fn drop_metrics_conn(&mut self, key: usize) {
        if self.metrics_conns.contains(key) {
            let mut conn = self.metrics_conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.socket);
        }
    }

    fn forget_address(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    // ----- closing ---------------------------------------------------------

    fn protocol_error(&mut self, id: ConnId, error: ProtocolError) {
        self.counters.protocol_error(error.code);
        if let Some(conn) = self.conn(id) {
            warn!(
                "{id} ({}, {}) protocol error: {error}",
                conn.addr,
                String::from_utf8_lossy(&conn.user_id)
            );
        }
        self.begin_close(id, CloseReason::Error(error.code, error.what.to_owned()));
    }

    fn close_queued(&mut self) {
        while let Some((id, reason)) = self.closing_queue.pop() {
            self.begin_close(id, reason);
        }
    }

    /// Closes a connection logically: ERROR if it has a framing and a code,
    /// its calls end, its id goes offline, frames it was cutting through to
    /// another connection are completed with padding; then its last output
    /// is flushed and the socket dropped (after the peer closes, or at the
    /// linger deadline).
    fn begin_close(&mut self, id: ConnId, reason: CloseReason) {
        let deadline = self.now + self.config.timeouts.linger;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        let user = String::from_utf8_lossy(&conn.user_id).into_owned();
        match &reason {
            CloseReason::PeerClosed => info!("{id} ({user}) closed by peer"),
            CloseReason::Error(code, detail) => info!("{id} ({user}) closed: {code} ({detail})"),
        }
        // An ERROR written while another sender's frame is being cut
        // through into this connection would land inside that frame.
        let mid_frame = conn.inbound.is_some();
        if mid_frame {
            conn.output.discard_held();
        }
        if let (CloseReason::Error(code, detail), Some(framing), false) =
            (&reason, conn.framing(), mid_frame)
        {
            let mut bytes = Vec::new();
            let frame = ServerFrame::Error {
                code: *code,
                detail: detail.clone(),
            };
            encode_server(&frame, framing, &mut bytes);
            conn.output.push(&[&bytes]);
        }
        let was_unregistered = conn.state == ConnState::AwaitingRegistration;
        conn.state = ConnState::Closing { deadline };
        conn.link = None;
        let inbound = conn.inbound.take();
        let outbound = match conn.body_target {
            BodyTarget::To(dest) if conn.parser.in_body() => {
                Some((dest, conn.parser.body_remaining()))
            }
            _ => None,
        };
        conn.body_target = BodyTarget::Discard;
        if was_unregistered {
            self.unregistered -= 1;
        }
        if let Some(sender) = inbound.and_then(|sender| self.conn_mut(sender)) {
            sender.body_target = BodyTarget::Discard;
        }
        if let Some((dest, remaining)) = outbound {
            self.pad_frame(id, dest, remaining);
        }
        self.relay.leave(id, &mut self.actions);
        self.apply_actions();
        self.wake_waiters(id);
        self.timers.arm(deadline, TimerKey::Linger(id));
        self.mark_dirty(id);
    }

    /// Completes a cut-through frame from a sender that vanished mid-frame
    /// with zeros, so the receiver's stream stays parseable.
    fn pad_frame(&mut self, from: ConnId, dest: ConnId, remaining: u64) {
        warn!("{from} left mid-frame: padding {remaining} bytes to {dest}");
        if let Some(conn) = self.conn_mut(dest) {
            conn.pad_remaining = remaining;
        }
        self.refill_padding(dest);
    }

    /// Writes owed padding as the receiver drains (never past the soft
    /// limit, so a long abandoned frame cannot push the receiver over its
    /// hard limit); frames held behind it go out once it is complete.
    fn refill_padding(&mut self, dest: ConnId) {
        let soft = self.config.output_soft;
        let Some(owner) = self.conn(dest).and_then(|d| d.inbound) else {
            return;
        };
        let zeros = [0u8; PAD_CHUNK];
        loop {
            let Some(conn) = self.conn_mut(dest) else {
                return;
            };
            if conn.is_closing() || conn.pad_remaining == 0 {
                break;
            }
            if conn.output.pending_len() >= soft {
                return;
            }
            let chunk =
                usize::try_from(conn.pad_remaining).map_or(PAD_CHUNK, |left| left.min(PAD_CHUNK));
            conn.pad_remaining -= chunk as u64;
            self.enqueue(dest, Some(owner), &[zeros.get(..chunk).unwrap_or_default()]);
        }
        self.end_inbound(dest);
    }

    /// A closing connection whose output is written shuts its write side;
    /// once the peer has closed too (or failed), it is reaped.
    fn finish_if_done(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn.is_closing() || !conn.output.is_empty() {
            return;
        }
        if !conn.shut_down {
            conn.shut_down = true;
            if let Err(error) = conn.socket.shutdown(Shutdown::Write) {
                debug!("{id}: shutdown: {error}");
                conn.peer_closed = true;
            }
        }
        if conn.peer_closed {
            self.reap.push(id);
        }
    }

    fn reap_closed(&mut self) {
        while let Some(id) = self.reap.pop() {
            if self.conn(id).is_none() {
                continue;
            }
            let mut conn = self.conns.remove(id.index());
            if let Err(error) = self.poll.registry().deregister(&mut conn.socket) {
                debug!("{id}: deregister: {error}");
            }
            self.forget_address(conn.addr.ip());
            conn.input.release_if_empty(&mut self.pool);
            debug!("{id} reaped");
        }
    }
}

/// What to do with a media frame.
enum MediaDecision {
    /// Write it to the peer (straight to its socket when possible).
    Forward(ConnId),
    /// Hold it (complete) until the peer's inbound cut-through frame ends.
    Hold(ConnId),
    /// Wait (incomplete frame) until the peer's inbound frame ends.
    Wait(ConnId),
    /// Drop it whole.
    Drop(DropWhy),
}

/// Why a media frame is dropped.
enum DropWhy {
    /// The sender is in no accepted call.
    NoCall,
    /// The peer's output is over its soft limit.
    Overflow,
}

fn is_out_of_fds(error: &io::Error) -> bool {
    // EMFILE (process limit) or ENFILE (system limit).
    matches!(error.raw_os_error(), Some(24) | Some(23))
}

fn user_id_error_text(error: crate::ids::UserIdError) -> &'static str {
    match error {
        crate::ids::UserIdError::Empty => "empty user id",
        crate::ids::UserIdError::TooLong => "user id too long",
        crate::ids::UserIdError::BadEncoding => "user id is not valid UTF-8",
        crate::ids::UserIdError::ControlCharacter => "user id contains a control character",
    }
}
