//! One client connection as the poll loop sees it: its socket, its buffers,
//! its parser, its lifecycle state and the links other connections hold to
//! it. It knows frame boundaries and who its media goes to, not why.

use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;

use super::buffer::{BufferPool, ReadBuffer, WriteQueue};
use super::socket::{self, SocketResult};
use crate::ids::{CallId, ConnId};
use crate::protocol::Framing;
use crate::protocol::parser::{FrameParser, SeedPhase};
use crate::protocol::qdatastream::{QString, put_qstr};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; the registration frame has not arrived.
    AwaitingRegistration,
    /// Registered; frames are parsed and relayed.
    Registered,
    /// Logically gone (calls ended, id offline): the last output is being
    /// written, then input is drained until the peer closes or `deadline`.
    Closing {
        /// When the socket is dropped regardless.
        deadline: Instant,
    },
}

/// The call link of a connection: where its media goes.
pub struct MediaLink {
    /// The other party.
    pub peer: ConnId,
    /// The call (for logs).
    pub call_id: CallId,
    /// Wire encodings of the CALL_END refs that end this call, for the seed
    /// continuation rule: the call id, the peer's id, empty and null.
    pub end_refs: Vec<Vec<u8>>,
    /// A seed connection that has sent media in this call is in "media
    /// mode" until the call ends (PROTOCOL.md section 4).
    pub media_mode: bool,
}

impl MediaLink {
    /// A link to `peer` for `call_id`, whose other party is `peer_user`.
    pub fn new(peer: ConnId, call_id: CallId, peer_user: &str) -> MediaLink {
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
        }
    }
}

/// Where the body being parsed (FILE data, a long media payload) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyTarget {
    /// Forwarded cut-through to this connection.
    To(ConnId),
    /// Discarded (nobody to deliver to, or dropped over the soft limit).
    Discard,
}

/// A client connection.
pub struct Connection {
    /// Its id.
    pub id: ConnId,
    /// The socket.
    pub socket: TcpStream,
    /// The peer's address, for logs.
    pub addr: SocketAddr,
    /// Lifecycle.
    pub state: ConnState,
    /// Input parser.
    pub parser: FrameParser,
    /// Unparsed input.
    pub input: ReadBuffer,
    /// Output not written yet.
    pub output: WriteQueue,
    /// The interest registered with the poll.
    pub registered_interest: Interest,
    /// The socket reported readable and has not returned WouldBlock since
    /// (edge-triggered polling sends no new event until it does).
    pub readable: bool,
    /// The peer closed its side (EOF) or reset.
    pub peer_closed: bool,
    /// The poll reported the peer's FIN or an error: read until EOF.
    pub read_closed: bool,
    /// The write side was shut down after the last output.
    pub shut_down: bool,
    /// The registered id's bytes (empty before registration).
    pub user_id: Box<[u8]>,
    /// When the last input byte arrived.
    pub last_input: Instant,
    /// The accepted call this connection is in, if any (boxed: most
    /// connections are idle and should stay small).
    pub link: Option<Box<MediaLink>>,
    /// Until when stale seed media is dropped after a call ended.
    pub grace_until: Option<Instant>,
    /// Where the body in progress goes.
    pub body_target: BodyTarget,
    /// Reading is paused until this connection's output drains.
    pub paused_on: Option<ConnId>,
    /// The connection whose cut-through frame is being written into this
    /// one; other senders' frames are held until it completes.
    pub inbound: Option<ConnId>,
    /// Zeros still owed to complete an inbound frame whose sender vanished.
    pub pad_remaining: u64,
    /// Since when frames have been held behind the inbound frame (the
    /// start of the current stall window).
    pub held_since: Option<Instant>,
    /// Bytes the inbound frame's sender moved in the current stall window.
    pub inbound_moved: u64,
    /// A stall timer for this receiver is pending.
    pub stall_armed: bool,
    /// Connections paused until this one's output drains.
    pub waiters: Vec<ConnId>,
    /// Media frames to this connection dropped over the soft limit.
    pub media_dropped: u64,
    /// Queued on the server's ready list.
    pub queued_ready: bool,
    /// Queued on the server's flush list.
    pub queued_dirty: bool,
}

impl Connection {
    /// A freshly accepted connection.
    pub fn new(id: ConnId, socket: TcpStream, addr: SocketAddr, now: Instant) -> Connection {
        Connection {
            id,
            socket,
            addr,
            state: ConnState::AwaitingRegistration,
            parser: FrameParser::new(),
            input: ReadBuffer::default(),
            output: WriteQueue::default(),
            registered_interest: Interest::READABLE,
            readable: false,
            peer_closed: false,
            read_closed: false,
            shut_down: false,
            user_id: Box::default(),
            last_input: now,
            link: None,
            grace_until: None,
            body_target: BodyTarget::Discard,
            paused_on: None,
            inbound: None,
            pad_remaining: 0,
            held_since: None,
            inbound_moved: 0,
            stall_armed: false,
            waiters: Vec::new(),
            media_dropped: 0,
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
        matches!(self.state, ConnState::Closing { .. })
    }

    /// The interest the poll should have: always readable (mio needs a
    /// non-empty interest; a paused connection is simply not read), plus
    /// writable while output waits.
    pub fn wanted_interest(&self) -> Interest {
        if self.output.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
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

    /// Reads from the socket into the input buffer once.
    pub fn read_some(&mut self, pool: &mut BufferPool, max_len: usize) -> ReadOutcome {
        let Ok(space) = self.input.space(pool, max_len) else {
            return ReadOutcome::BufferFull;
        };
        let room = space.len();
        match socket::read_once(&mut self.socket, space) {
            (count, SocketResult::Continue) => {
                self.input.fill(count);
                // A short read drained the socket: under edge-triggered
                // polling, bytes arriving later bring a new event, so the
                // read that would only return WouldBlock is skipped. Not
                // when the peer's FIN is already known (no event would
                // follow it).
                if count < room && !self.read_closed {
                    self.readable = false;
                }
                ReadOutcome::Read(count)
            }
            (_, SocketResult::WouldBlock) => {
                self.readable = false;
                self.input.release_if_empty(pool);
                ReadOutcome::WouldBlock
            }
            (_, SocketResult::Closed) => {
                self.readable = false;
                self.peer_closed = true;
                ReadOutcome::Closed
            }
            (_, SocketResult::Error) => {
                self.readable = false;
                self.peer_closed = true;
                ReadOutcome::Error
            }
        }
    }

    /// Writes queued output until it is empty or the socket would block.
    /// Returns false if the socket failed (the peer is gone).
    pub fn flush(&mut self) -> bool {
        while !self.output.is_empty() {
            let (count, result) =
                socket::write_all_vectored(&mut self.socket, &[self.output.pending()]);
            self.output.advance(count);
            match result {
                SocketResult::Continue => {}
                SocketResult::WouldBlock => return true,
                SocketResult::Closed | SocketResult::Error => {
                    self.peer_closed = true;
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
