//! The state of a connection's two ends of the pipe, one enum per concern:
//! [`Outbound`] is what its input is doing into another connection,
//! [`Inbound`] what another connection's input is doing into it. Together
//! with the list of senders waiting on it, that is all the cut-through
//! state there is; closing a connection is a `match` on these.

use std::time::Instant;

use crate::ids::ConnId;
use crate::protocol::parser::BodyKind;
use crate::server::buffer::WriteQueue;

/// What this connection's input is doing to another connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outbound {
    /// At a frame boundary.
    #[default]
    Idle,
    /// The body in progress (FILE data or a media payload) is cut through
    /// to `to`.
    Body {
        /// The receiver.
        to: ConnId,
        /// FILE or media.
        kind: BodyKind,
        /// Body bytes forwarded so far.
        sent: u64,
    },
    /// The body in progress is read and dropped (its receiver is gone, or
    /// the media frame was dropped at its start).
    Discard {
        /// A FILE whose receiver went away mid-frame: its sender is told
        /// how much arrived once the rest is read (PROTOCOL.md 8.4).
        cut_short: Option<CutShort>,
    },
    /// Input is not read until `on` can take more.
    Paused {
        /// The receiver this sender waits for.
        on: ConnId,
        /// Where the sender resumes.
        at: PausedAt,
    },
}

/// Where a paused sender stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PausedAt {
    /// At a frame boundary: the next frame is peeked again on waking.
    FrameStart,
    /// Inside a FILE body to the receiver it waits on.
    FileBody {
        /// Body bytes forwarded before the pause.
        sent: u64,
    },
}

/// A FILE frame whose receiver went away before all of it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutShort {
    /// Data bytes the receiver was given.
    pub delivered: u64,
    /// Data bytes of the frame.
    pub total: u64,
}

impl Outbound {
    /// The receiver this connection is paused on, if it is.
    pub fn paused_on(&self) -> Option<ConnId> {
        match *self {
            Outbound::Paused { on, .. } => Some(on),
            _ => None,
        }
    }

    /// The connection a body in progress goes to (paused inside it too).
    pub fn body_to(&self) -> Option<ConnId> {
        match *self {
            Outbound::Body { to, .. } => Some(to),
            Outbound::Paused {
                on,
                at: PausedAt::FileBody { .. },
            } => Some(on),
            _ => None,
        }
    }

    /// Body bytes forwarded so far (0 outside a forwarded body).
    pub fn sent(&self) -> u64 {
        match *self {
            Outbound::Body { sent, .. }
            | Outbound::Paused {
                at: PausedAt::FileBody { sent },
                ..
            } => sent,
            _ => 0,
        }
    }

    /// The state after waking from a pause.
    pub fn resumed(self) -> Outbound {
        match self {
            Outbound::Paused {
                on,
                at: PausedAt::FileBody { sent },
            } => Outbound::Body {
                to: on,
                kind: BodyKind::File,
                sent,
            },
            Outbound::Paused {
                at: PausedAt::FrameStart,
                ..
            } => Outbound::Idle,
            other => other,
        }
    }
}

/// What another connection is writing into this one.
#[derive(Default)]
pub enum Inbound {
    /// Nothing in progress: frames from anyone go straight to the queue.
    #[default]
    Idle,
    /// `from`'s frame is being cut through into this connection; other
    /// frames wait in `held` until it is complete.
    CutThrough(Box<CutThrough>),
    /// The frame's sender vanished mid-frame: `remaining` zeros complete it
    /// as this connection drains, then `held` goes out.
    Padding(Box<Padding>),
}

/// A cut-through frame in progress.
pub struct CutThrough {
    /// Its sender.
    pub from: ConnId,
    /// Whole frames of other senders waiting for it to complete.
    pub held: WriteQueue,
    /// The stall window, while frames are held.
    pub stall: Option<StallWindow>,
}

/// A frame being completed with zeros.
pub struct Padding {
    /// Zeros still owed.
    pub remaining: u64,
    /// Whole frames waiting for the padding to complete.
    pub held: WriteQueue,
}

/// Frames have waited behind a cut-through frame since `start`; its sender
/// moved `moved` bytes in that time (the stall bound: PROTOCOL.md section 4
/// and docs/architecture.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallWindow {
    /// When the window began (also the key of its timer).
    pub start: Instant,
    /// Bytes of the frame moved since.
    pub moved: u64,
}

impl Inbound {
    /// Starts `from`'s cut-through frame.
    pub fn cut_through(from: ConnId) -> Inbound {
        Inbound::CutThrough(Box::new(CutThrough {
            from,
            held: WriteQueue::default(),
            stall: None,
        }))
    }

    /// The sender whose frame is in progress, if one is.
    pub fn owner(&self) -> Option<ConnId> {
        match self {
            Inbound::CutThrough(cut) => Some(cut.from),
            _ => None,
        }
    }

    /// Frames waiting for the frame in progress, if any is.
    pub fn held(&self) -> Option<&WriteQueue> {
        match self {
            Inbound::Idle => None,
            Inbound::CutThrough(cut) => Some(&cut.held),
            Inbound::Padding(padding) => Some(&padding.held),
        }
    }

    /// Mutable access to the held frames.
    pub fn held_mut(&mut self) -> Option<&mut WriteQueue> {
        match self {
            Inbound::Idle => None,
            Inbound::CutThrough(cut) => Some(&mut cut.held),
            Inbound::Padding(padding) => Some(&mut padding.held),
        }
    }

    /// Bytes held.
    pub fn held_len(&self) -> usize {
        self.held().map_or(0, WriteQueue::len)
    }
}
