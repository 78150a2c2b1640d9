//! One client connection as the poll loop sees it: its transport, its
//! buffers, its parser, where it is in its life, and its two ends of the
//! pipe (what its input does to another connection, what another
//! connection's input does to it). It knows frame boundaries and who its
//! media goes to, not why.

use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;

use super::buffer::{BufferPool, ReadBuffer, WriteQueue};
use super::pipe::decide::{InboundView, ReceiverView};
use super::pipe::state::{Inbound, Outbound};
use super::socket::SocketResult;
use super::transport::Transport;
use crate::ids::{CallId, ConnId};
use crate::protocol::Framing;
use crate::protocol::parser::{FrameParser, SeedPhase};
use crate::protocol::qdatastream::{QString, put_qstr};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Accepted; the registration frame has not arrived.
    AwaitingRegistration,
    /// Registered; frames are parsed and relayed.
    Registered,
    /// Logically gone (calls ended, id offline): the last output is being
    /// written, then input is drained until the peer closes or `deadline`.
    Closing {
        /// When the socket is dropped regardless.
        deadline: Instant,
        /// Whether the write side is shut down yet.
        write: WriteEnd,
    },
}

/// The write side of a closing connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEnd {
    /// The last output is still being written.
    Flushing,
    /// Everything is written and the write side is shut down.
    Shut,
}

/// What the read side of the socket is known to hold (edge-triggered: a
/// readable edge stays until a read drains it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadSide {
    /// Drained: the next bytes bring a new event.
    Drained,
    /// Readable since the last event.
    Ready,
    /// The poll reported the peer's FIN or an error: read until EOF, since
    /// no further event will come (a short read does not mean drained).
    ReadyUntilEof,
    /// The peer closed or reset, or the socket failed: nothing more comes.
    Eof,
}

/// The call link of a connection: where its media goes.
pub struct MediaLink {
    /// The other party's connection (`None` while it is detached: its
    /// media is dropped until it comes back, PROTOCOL.md 8.3).
    pub peer: Option<ConnId>,
    /// The call (for logs).
    pub call_id: CallId,
    /// Wire encodings of the CALL_END refs that end this call, for the seed
    /// continuation rule: the call id, the peer's id, empty and null.
    pub end_refs: Vec<Vec<u8>>,
    /// A seed connection that has sent media in this call is in "media
    /// mode" until the call ends (PROTOCOL.md section 4).
    pub media_mode: bool,
    /// The node the peer is on, if another (its media goes to the trunk).
    pub remote: Option<crate::ids::NodeId>,
    /// A media frame whose first piece went to the trunk is in progress.
    pub remote_body: bool,
}

impl MediaLink {
    /// A link to `peer` for `call_id`, whose other party is `peer_user`.
    pub fn new(peer: Option<ConnId>, call_id: CallId, peer_user: &str) -> MediaLink {
        let mut end_refs = Vec::with_capacity(4);
        for text in [
            QString::from_str(call_id.as_str()),
            QString::from_str(peer_user),
            QString::from_str(""),
            QString::null(),
        ] {
            let mut wire = Vec::new();
            put_qstr(&mut wire, text.as_qstr());
            end_refs.push(wire);
        }
        MediaLink {
            peer,
            call_id,
            end_refs,
            media_mode: false,
            remote: None,
            remote_body: false,
        }
    }
}

/// A client connection.
pub struct Connection {
    /// Its id.
    pub id: ConnId,
    /// Its byte stream.
    pub transport: Transport,
    /// The peer's address, for logs.
    pub addr: SocketAddr,
    /// Where it is in its life.
    pub life: Life,
    /// What the socket's read side holds.
    pub read_side: ReadSide,
    /// Input parser.
    pub parser: FrameParser,
    /// Unparsed input.
    pub input: ReadBuffer,
    /// Output not written yet.
    pub output: WriteQueue,
    /// The interest registered with the poll.
    pub registered_interest: Interest,
    /// The registered user id's bytes (empty before registration): what
    /// logs name it by.
    pub user_id: Box<[u8]>,
    /// The registration string as sent (the id, or a token carrying it):
    /// what a heartbeat's registration suffix must repeat.
    pub registration: Box<[u8]>,
    /// When it last made progress: a byte arrived from it, or its socket
    /// took a byte of its output (PROTOCOL.md section 8.1: a listener is
    /// not idle while its output flows).
    pub last_progress: Instant,
    /// The accepted call this connection is in, if any (boxed: most
    /// connections are idle and should stay small).
    pub link: Option<Box<MediaLink>>,
    /// Until when stale seed media is dropped after a call ended.
    pub grace_until: Option<Instant>,
    /// What its input is doing to another connection.
    pub outbound: Outbound,
    /// What another connection's input is doing to it.
    pub inbound: Inbound,
    /// Senders paused until this connection can take more.
    pub waiters: Vec<ConnId>,
    /// Queued on the server's ready list.
    pub queued_ready: bool,
    /// Queued on the server's flush list.
    pub queued_dirty: bool,
}

impl Connection {
    /// A freshly accepted connection.
    pub fn new(id: ConnId, transport: Transport, addr: SocketAddr, now: Instant) -> Connection {
        Connection {
            id,
            transport,
            addr,
            life: Life::AwaitingRegistration,
            read_side: ReadSide::Drained,
            parser: FrameParser::new(),
            input: ReadBuffer::default(),
            output: WriteQueue::default(),
            registered_interest: Interest::READABLE,
            user_id: Box::default(),
            registration: Box::default(),
            last_progress: now,
            link: None,
            grace_until: None,
            outbound: Outbound::Idle,
            inbound: Inbound::Idle,
            waiters: Vec::new(),
            queued_ready: false,
            queued_dirty: false,
        }
    }

    /// The framing, once chosen.
    pub fn framing(&self) -> Option<Framing> {
        self.parser.framing()
    }

    /// True once the connection is logically closed.
    pub fn is_closing(&self) -> bool {
        matches!(self.life, Life::Closing { .. })
    }

    /// How a decision sees this connection as a receiver: `None` while it
    /// is closing or has no framing (nothing may be written to it).
    pub fn receiver_view(&self) -> Option<ReceiverView> {
        if self.is_closing() {
            return None;
        }
        let inbound = match &self.inbound {
            Inbound::Idle => InboundView::Idle,
            Inbound::CutThrough(cut) => InboundView::From(cut.from),
            Inbound::Padding(_) => InboundView::Padding,
        };
        Some(ReceiverView {
            queued: self.output.len(),
            held: self.inbound.held_len(),
            inbound,
            framing: self.framing()?,
        })
    }

    /// The interest the poll should have: always readable (mio needs a
    /// non-empty interest; a paused connection is simply not read), plus
    /// writable while output waits.
    pub fn wanted_interest(&self) -> Interest {
        if self.output.is_empty() && !self.transport.wants_write() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Notes a readiness event (`hangup`: the poll saw FIN or an error).
    pub fn on_readable(&mut self, hangup: bool) {
        self.read_side = match self.read_side {
            ReadSide::Eof => ReadSide::Eof,
            _ if hangup => ReadSide::ReadyUntilEof,
            ReadSide::ReadyUntilEof => ReadSide::ReadyUntilEof,
            ReadSide::Drained | ReadSide::Ready => ReadSide::Ready,
        };
    }

    /// The seed media phase at `now` (PROTOCOL.md section 4).
    pub fn seed_phase(
        link: Option<&MediaLink>,
        grace_until: Option<Instant>,
        now: Instant,
    ) -> SeedPhase<'_> {
        match link {
            Some(link) if link.media_mode => SeedPhase::MediaMode {
                end_refs: &link.end_refs,
            },
            Some(_) => SeedPhase::Normal,
            None if grace_until.is_some_and(|until| now < until) => SeedPhase::Grace,
            None => SeedPhase::Normal,
        }
    }

    /// Reads from the transport into the input buffer once.
    pub fn read_some(&mut self, pool: &mut BufferPool, max_len: usize) -> ReadOutcome {
        let Ok(space) = self.input.space(pool, max_len) else {
            return ReadOutcome::BufferFull;
        };
        let room = space.len();
        match self.transport.read(space) {
            (count, SocketResult::Continue) => {
                self.input.fill(count);
                // A short read drained the socket: under edge-triggered
                // polling, bytes arriving later bring a new event, so the
                // read that would only return WouldBlock is skipped. Not
                // when the peer's FIN is already known (no event would
                // follow it).
                if count < room && self.read_side == ReadSide::Ready {
                    self.read_side = ReadSide::Drained;
                }
                ReadOutcome::Read(count)
            }
            (_, SocketResult::WouldBlock) => {
                self.read_side = ReadSide::Drained;
                self.input.release_if_empty(pool);
                ReadOutcome::WouldBlock
            }
            (_, SocketResult::Closed) => {
                self.read_side = ReadSide::Eof;
                ReadOutcome::Closed
            }
            (_, SocketResult::Error) => {
                self.read_side = ReadSide::Eof;
                ReadOutcome::Error
            }
        }
    }

    /// Writes queued output until it is empty or the transport would block
    /// (taken bytes count as progress at `now`). Returns false if the
    /// socket failed (the peer is gone).
    pub fn flush(&mut self, now: Instant) -> bool {
        // TLS records of earlier writes (or of the handshake) go first.
        if !self.transport.flush_pending() {
            self.read_side = ReadSide::Eof;
            return false;
        }
        while !self.output.is_empty() {
            let (count, result) = self.transport.write(&[self.output.pending()]);
            self.output.advance(count);
            if count > 0 {
                self.last_progress = now;
            }
            match result {
                SocketResult::Continue => {}
                SocketResult::WouldBlock => return true,
                SocketResult::Closed | SocketResult::Error => {
                    self.read_side = ReadSide::Eof;
                    return false;
                }
            }
        }
        true
    }
}

/// What one read did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes arrived.
    Read(usize),
    /// Nothing more now.
    WouldBlock,
    /// The peer closed.
    Closed,
    /// The socket failed.
    Error,
    /// The input buffer is full of one frame that is still arriving (the
    /// parser's limits make this unreachable; treated as a protocol error).
    BufferFull,
}
