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
//!
//! This file holds the state and one turn of the loop; the work is split by
//! what it is about: `admission` (accepting, limits), `input` (read, peek,
//! relay or pipe, commit), `output` (server frames, flushing, relay
//! actions), `timing` (deadlines), `operations` (signals, metrics) and
//! `closing`. Moving bytes between connections is `server::pipe`'s.

mod admission;
mod closing;
mod cluster;
mod cluster_files;
mod input;
mod operations;
mod output;
mod timing;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, error, info, log, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::buffer::BufferPool;
use super::connection::{Connection, Life, MediaLink, ReadOutcome, ReadSide, WriteEnd};
use super::log_budget::{self, LogBudget};
use super::metrics_http::{self, MetricsConn, Progress as HttpProgress, Request};
use super::pipe::Step;
use super::pipe::state::PausedAt;
use super::timers::Timers;
use super::transport::Transport;
use crate::config::Config;
use crate::ids::ConnId;
use crate::metrics::{self, Counters, Snapshot};
use crate::protocol::frame::{ClientFrame, ServerFrame, encode_server};
use crate::protocol::parser::{ParseContext, Parsed, ProtocolError};
use crate::protocol::{ErrorCode, Framing};
use crate::relay::{Action, Departure, Relay, RelayTimer};

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
/// Size of the read buffers lent to connections with input.
const READ_BUFFER_SIZE: usize = 64 * 1024;
/// Free read buffers kept for reuse.
const POOL_KEEP: usize = 32;
/// Reads per connection per turn before others get theirs (fairness).
const READS_PER_TURN: usize = 16;
/// Pause before accepting again after accept failed (e.g. out of fds).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What a deadline is for.
#[derive(Clone, Debug)]
pub(super) enum TimerKey {
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
    /// Time to sum up the log lines the budget held back.
    LogSummary,
    /// The stall window (opened at the instant given) of frames held for
    /// this connection ends.
    Stall(ConnId, Instant),
    /// The relay's own timer.
    Relay(RelayTimer),
    /// The cluster's housekeeping.
    ClusterTick,
}

/// Why a connection is being closed.
#[derive(Clone, Debug)]
pub(super) enum CloseReason {
    /// The peer closed or reset its socket, or the socket failed.
    PeerClosed,
    /// We close it with an ERROR frame, for cause.
    Error(ErrorCode, String),
    /// It was idle (PROTOCOL.md 8.1): ERROR `timeout`, and it counts as
    /// lost, not closed for cause.
    Idle(String),
}

impl CloseReason {
    /// What the close means for the connection's call (PROTOCOL.md 8.3):
    /// a connection lost (closed by its peer, failed, or idle) leaves its
    /// call waiting for it; one closed for cause (a protocol error, the
    /// output limit, a stalled frame, shutdown) ends it.
    fn departure(&self) -> Departure {
        match self {
            CloseReason::PeerClosed | CloseReason::Idle(_) => Departure::Lost,
            CloseReason::Error(..) => Departure::Ended,
        }
    }

    /// The ERROR it sends, if any.
    fn error(&self) -> Option<(ErrorCode, &str)> {
        match self {
            CloseReason::PeerClosed => None,
            CloseReason::Error(code, detail) => Some((*code, detail)),
            CloseReason::Idle(detail) => Some((ErrorCode::Timeout, detail)),
        }
    }
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
    // The fields `server::pipe` works on are visible to it; the rest are
    // the loop's own.
    poll: Poll,
    events: Events,
    listener: TcpListener,
    local_addr: SocketAddr,
    pub(super) config: Config,
    pub(super) conns: Slab<Connection>,
    next_generation: u32,
    pub(super) relay: Relay,
    pub(super) timers: Timers<TimerKey>,
    pool: BufferPool,
    max_input: usize,
    accepted: Vec<(TcpStream, SocketAddr)>,
    ready: VecDeque<ConnId>,
    dirty: Vec<ConnId>,
    reap: Vec<ConnId>,
    pub(super) closing_queue: Vec<(ConnId, CloseReason)>,
    pub(super) actions: Vec<Action>,
    pub(super) scratch: Vec<u8>,
    /// Reused for the frame offsets of a media run.
    pub(super) frame_starts: Vec<usize>,
    pub(super) counters: Counters,
    pub(super) now: Instant,
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
    /// Lines per second for what a flood of bad connections produces
    /// (PROTOCOL.md 8.5).
    pub(super) log_budget: LogBudget,
    /// Failed authentications by address (`--auth-fail-limit`).
    auth_failures: admission::AuthFailures,
    /// The TLS configuration new connections get, if TLS is on.
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The cluster's connections, if this node is in one.
    cluster: Option<Box<super::cluster::ClusterIo>>,
    /// The service manager (`$NOTIFY_SOCKET`), if any.
    notifier: super::notify::Notifier,
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

impl Server {
    /// Binds the listener and prepares the loop.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = bind_listener(config.listen, config.reuse_port)?;
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
        timers.arm(
            Instant::now() + log_budget::SUMMARY_INTERVAL,
            TimerKey::LogSummary,
        );
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
            relay: Relay::new(
                config.timeouts.ring,
                config.timeouts.resume_window,
                config.limits.max_user_id,
            ),
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
            frame_starts: Vec::new(),
            counters: Counters::default(),
            now: Instant::now(),
            metrics_listener,
            metrics_conns: Slab::new(),
            signals: None,
            lifecycle: Lifecycle::Running,
            per_ip: HashMap::new(),
            unregistered: 0,
            reserve_fd: File::open("/dev/null").ok(),
            log_budget: LogBudget::new(log_budget::LINES_PER_SECOND),
            auth_failures: admission::AuthFailures::default(),
            tls: None,
            cluster: None,
            notifier: super::notify::Notifier::none(),
        })
    }

    /// Handles SIGINT and SIGTERM (the first starts a graceful shutdown,
    /// a second ends the run at once) and SIGHUP (reload the secret file).
    /// Call before [`Server::run`].
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Turns token authentication on with `keys` (the mode is
    /// `config.auth.mode`; `off` ignores them).
    pub fn set_auth_keys(&mut self, keys: crate::auth::Keys) {
        let mode = self.config.auth.mode;
        if mode != crate::auth::AuthMode::Off {
            let kids: Vec<&str> = keys.kids().collect();
            info!("authentication {}: keys {}", mode.as_str(), kids.join(", "));
            self.relay.set_auth(Some(crate::relay::Auth { mode, keys }));
        }
    }

    /// Turns TLS on for new connections (PROTOCOL.md section 10).
    pub fn set_tls(&mut self, config: std::sync::Arc<rustls::ServerConfig>) {
        self.tls = Some(config);
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
        self.notifier = super::notify::Notifier::from_env();
        self.notifier
            .send(&format!("READY=1\nSTATUS={}", self.status_line()));
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
                token if self.cluster_event(token) => continue,
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
            let hangup = event.is_read_closed() || event.is_error();
            if event.is_readable() || hangup {
                conn.on_readable(hangup);
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
        self.flush_cluster();
        self.reap_closed();
        Ok(match self.lifecycle {
            Lifecycle::Draining { deadline } if self.conns.is_empty() || self.now >= deadline => {
                info!("shutdown complete ({} connections left)", self.conns.len());
                Some(Exit::Graceful)
            }
            _ => None,
        })
    }

    /// Queues a connection for input handling (once: every push onto the
    /// ready queue goes through here).
    pub(super) fn mark_ready(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id)
            && !conn.queued_ready
        {
            conn.queued_ready = true;
            self.ready.push_back(id);
        }
    }

    /// Queues a connection for a flush before the next poll (once).
    pub(super) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id)
            && !conn.queued_dirty
        {
            conn.queued_dirty = true;
            self.dirty.push(id);
        }
    }

    /// The level for a line about a connection event of kind `code`:
    /// `level` while the log budget allows, else debug (and counted).
    pub(super) fn budgeted(&mut self, code: &'static str, level: log::Level) -> log::Level {
        if self.log_budget.allow(self.now, code) {
            level
        } else {
            log::Level::Debug
        }
    }

    pub(super) fn conn(&self, id: ConnId) -> Option<&Connection> {
        self.conns.get(id.index()).filter(|conn| conn.id == id)
    }

    pub(super) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.conns.get_mut(id.index()).filter(|conn| conn.id == id)
    }
}

/// The client listener (with `reuse_port`, sharing its port with other
/// processes that set it too: one node per core).
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    if !reuse_port {
        return TcpListener::bind(addr);
    }
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

#[cfg(test)]
mod tests;
