//! The pipe's decisions, as pure functions of plain views: no sockets, no
//! server, no clock of their own (the quiche way). The I/O code in
//! `pipe/mod.rs` builds a [`ReceiverView`], asks, and carries out the
//! answer; the unit tests below and the `pipe` fuzz target ask directly.
//!
//! One measure decides every soft-limit question: [`ReceiverView::ahead_of`],
//! the bytes that will reach the receiver before a given sender's next byte.

use std::time::{Duration, Instant};

use crate::ids::ConnId;
use crate::protocol::Framing;
use crate::protocol::parser::BodyKind;

use super::state::StallWindow;

/// Bytes a cut-through frame's sender must move per `--stall-timeout`
/// window while other frames wait behind it.
pub const STALL_MIN_PROGRESS: u64 = 64 * 1024;

/// Who is writing a frame into the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundView {
    /// Nobody: frames go straight to its queue.
    Idle,
    /// This sender's frame is being cut through.
    From(ConnId),
    /// A vanished sender's frame is being completed with zeros.
    Padding,
}

/// What a decision needs to know about a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverView {
    /// Bytes in its write queue (its socket drains these).
    pub queued: usize,
    /// Bytes held behind the frame in progress.
    pub held: usize,
    /// The frame in progress into it.
    pub inbound: InboundView,
    /// Its framing.
    pub framing: Framing,
}

impl ReceiverView {
    /// The soft-limit measure: bytes that reach the receiver before the
    /// next byte from `sender` (`None`: a frame the server builds). The
    /// frame in progress goes before held frames, so its own sender has
    /// only the queue ahead of it; everyone else has the held frames too.
    pub fn ahead_of(&self, sender: Option<ConnId>) -> usize {
        match (self.inbound, sender) {
            (InboundView::From(owner), Some(sender)) if owner == sender => self.queued,
            _ => self.queued + self.held,
        }
    }

    /// True when bytes from `sender` cannot be written now without landing
    /// inside another sender's frame.
    pub fn busy_for(&self, sender: Option<ConnId>) -> bool {
        match (self.inbound, sender) {
            (InboundView::Idle, _) => false,
            (InboundView::From(owner), Some(sender)) => owner != sender,
            (InboundView::From(_), None) | (InboundView::Padding, _) => true,
        }
    }
}

/// The piece of a sender's input a decision is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The start of a media frame; `complete` if its whole payload is in
    /// hand.
    MediaFrame {
        /// The whole frame is in hand.
        complete: bool,
    },
    /// The header of a FILE frame (its data follows as body).
    FileFrame,
    /// More of the sender's body in progress.
    BodyRest {
        /// FILE data or media payload.
        kind: BodyKind,
    },
}

/// What to do with a piece.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write it to the receiver now (zero-copy when its queue is empty).
    Forward,
    /// Keep it whole in the receiver's held frames until the frame in
    /// progress completes.
    Hold,
    /// Leave it unconsumed and pause the sender until the receiver can take
    /// it.
    Wait,
    /// Read it and drop it (a body's rest is dropped with it).
    Drop(DropWhy),
}

/// Why a piece is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropWhy {
    /// There is nobody to deliver to (no call, receiver gone or closing).
    NoReceiver,
    /// The receiver is over its soft output limit (media only).
    SoftLimit,
}

/// Decides what happens to `piece` from `sender` for `receiver` (`None`
/// when there is no open receiver), with `soft` the soft output limit.
///
/// * Media is dropped whole at its start past the soft limit; a complete
///   frame waits in the held frames behind another sender's frame, an
///   incomplete one waits unread. Once started, a media frame is finished.
/// * FILE is never dropped: its sender waits while the receiver is full or
///   busy with another frame.
pub fn decide(
    piece: Piece,
    sender: ConnId,
    receiver: Option<&ReceiverView>,
    soft: usize,
) -> Decision {
    let Some(receiver) = receiver else {
        return Decision::Drop(DropWhy::NoReceiver);
    };
    let full = receiver.ahead_of(Some(sender)) >= soft;
    let busy = receiver.busy_for(Some(sender));
    match piece {
        Piece::MediaFrame { .. } if full => Decision::Drop(DropWhy::SoftLimit),
        Piece::MediaFrame { complete: true } if busy => Decision::Hold,
        Piece::MediaFrame { complete: false } if busy => Decision::Wait,
        Piece::MediaFrame { .. } => Decision::Forward,
        Piece::FileFrame if full || busy => Decision::Wait,
        Piece::FileFrame => Decision::Forward,
        // The rest of a body can only follow its own start: anything else
        // means the receiver was replaced under it.
        Piece::BodyRest { .. } if busy => Decision::Drop(DropWhy::NoReceiver),
        Piece::BodyRest {
            kind: BodyKind::File,
        } if full => Decision::Wait,
        Piece::BodyRest { .. } => Decision::Forward,
    }
}

/// True when `sender`'s length-prefixed media may go to `receiver` as
/// runs of bytes exactly as they arrived: the receiver is length-prefixed
/// too, under the soft limit, and nobody else's frame (nor frames held
/// behind `sender`'s own) must come first.
pub fn takes_media_runs(sender: ConnId, receiver: Option<&ReceiverView>, soft: usize) -> bool {
    receiver.is_some_and(|receiver| {
        receiver.framing == Framing::LengthPrefixed
            && receiver.ahead_of(Some(sender)) < soft
            && !receiver.busy_for(Some(sender))
            && receiver.held == 0
    })
}

/// Where bytes for a receiver go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Straight to its socket if nothing is queued; the rest is queued.
    Write,
    /// Behind its queue, flushed before the next poll (server frames).
    Queue,
    /// Into its held frames, behind the frame in progress.
    Hold,
}

/// Where bytes from `sender` (`None`: built by the server) go in
/// `receiver`.
pub fn placement(sender: Option<ConnId>, receiver: &ReceiverView) -> Placement {
    if receiver.busy_for(sender) {
        Placement::Hold
    } else if sender.is_some() {
        Placement::Write
    } else {
        Placement::Queue
    }
}

/// True when the producer of frames just held for `receiver` must stop
/// until the frame in progress completes: text and signaling are never
/// dropped, so their sender waits instead of growing the held frames.
pub fn producer_waits(producer: ConnId, receiver: &ReceiverView, soft: usize) -> bool {
    receiver.held > 0 && receiver.ahead_of(Some(producer)) >= soft
}

/// Who may go on after the receiver drained some output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Nobody yet.
    Nobody,
    /// Only the sender of the frame in progress (the others wait for it to
    /// end).
    Owner(ConnId),
    /// Every sender waiting on the receiver.
    All,
}

/// Who wakes when `receiver` has drained to its current queue.
pub fn wake(receiver: &ReceiverView, soft: usize) -> Wake {
    match receiver.inbound {
        InboundView::Idle if receiver.ahead_of(None) < soft => Wake::All,
        InboundView::From(owner) if receiver.ahead_of(Some(owner)) < soft => Wake::Owner(owner),
        _ => Wake::Nobody,
    }
}

/// What a stall window's end means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallVerdict {
    /// The window moved on since this timer was armed: ignore.
    Stale,
    /// The sender moved enough, or is itself waiting for the receiver to
    /// drain: a new window starts now.
    NewWindow,
    /// The sender trickled while frames waited: close it.
    CloseOwner,
}

/// Judges the stall window armed at `armed` against the current one.
pub fn stall_verdict(
    armed: Instant,
    window: Option<StallWindow>,
    owner_waits_for_receiver: bool,
    now: Instant,
    stall: Duration,
) -> StallVerdict {
    match window {
        Some(window) if window.start == armed && now >= window.start + stall => {
            if window.moved >= STALL_MIN_PROGRESS || owner_waits_for_receiver {
                StallVerdict::NewWindow
            } else {
                StallVerdict::CloseOwner
            }
        }
        _ => StallVerdict::Stale,
    }
}

/// Zeros to write now towards `remaining` owed padding, never past the
/// soft limit (a long abandoned frame must not push the receiver over its
/// hard limit); 0 means wait for the receiver to drain.
pub fn padding_chunk(remaining: u64, queued: usize, soft: usize, chunk: usize) -> usize {
    if queued >= soft {
        return 0;
    }
    usize::try_from(remaining).map_or(chunk, |left| left.min(chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOFT: usize = 1000;

    fn conn(slot: u32) -> ConnId {
        ConnId {
            slot,
            generation: 1,
        }
    }

    fn receiver(queued: usize, held: usize, inbound: InboundView) -> ReceiverView {
        ReceiverView {
            queued,
            held,
            inbound,
            framing: Framing::LengthPrefixed,
        }
    }

    const ALICE: u32 = 1;
    const CAROL: u32 = 3;

    #[test]
    fn media_to_nobody_is_dropped() {
        let piece = Piece::MediaFrame { complete: true };
        assert_eq!(
            decide(piece, conn(ALICE), None, SOFT),
            Decision::Drop(DropWhy::NoReceiver)
        );
    }

    #[test]
    fn media_over_the_soft_limit_is_dropped_whole_at_its_start() {
        let full = receiver(SOFT, 0, InboundView::Idle);
        for complete in [true, false] {
            let piece = Piece::MediaFrame { complete };
            assert_eq!(
                decide(piece, conn(ALICE), Some(&full), SOFT),
                Decision::Drop(DropWhy::SoftLimit)
            );
        }
        // Held frames count for everyone but the frame's own sender.
        let held = receiver(SOFT / 2, SOFT / 2, InboundView::From(conn(CAROL)));
        let piece = Piece::MediaFrame { complete: true };
        assert_eq!(
            decide(piece, conn(ALICE), Some(&held), SOFT),
            Decision::Drop(DropWhy::SoftLimit)
        );
    }

    #[test]
    fn a_started_media_frame_is_finished_even_over_the_soft_limit() {
        let full = receiver(10 * SOFT, 0, InboundView::From(conn(ALICE)));
        let piece = Piece::BodyRest {
            kind: BodyKind::Media,
        };
        assert_eq!(
            decide(piece, conn(ALICE), Some(&full), SOFT),
            Decision::Forward
        );
    }

    #[test]
    fn media_behind_another_senders_frame_is_held_or_waits() {
        let busy = receiver(0, 0, InboundView::From(conn(CAROL)));
        assert_eq!(
            decide(
                Piece::MediaFrame { complete: true },
                conn(ALICE),
                Some(&busy),
                SOFT
            ),
            Decision::Hold
        );
        assert_eq!(
            decide(
                Piece::MediaFrame { complete: false },
                conn(ALICE),
                Some(&busy),
                SOFT
            ),
            Decision::Wait
        );
        let padding = receiver(0, 0, InboundView::Padding);
        assert_eq!(
            decide(
                Piece::MediaFrame { complete: true },
                conn(ALICE),
                Some(&padding),
                SOFT
            ),
            Decision::Hold
        );
    }

    #[test]
    fn file_waits_instead_of_being_dropped() {
        for view in [
            receiver(SOFT, 0, InboundView::Idle),
            receiver(0, 0, InboundView::From(conn(CAROL))),
        ] {
            assert_eq!(
                decide(Piece::FileFrame, conn(ALICE), Some(&view), SOFT),
                Decision::Wait
            );
        }
        let own = receiver(SOFT, 5 * SOFT, InboundView::From(conn(ALICE)));
        let rest = Piece::BodyRest {
            kind: BodyKind::File,
        };
        assert_eq!(decide(rest, conn(ALICE), Some(&own), SOFT), Decision::Wait);
        // Held frames wait for the FILE itself: they never hold it back.
        let own = receiver(SOFT - 1, 5 * SOFT, InboundView::From(conn(ALICE)));
        assert_eq!(
            decide(rest, conn(ALICE), Some(&own), SOFT),
            Decision::Forward
        );
    }

    #[test]
    fn a_body_whose_receiver_changed_hands_is_dropped() {
        let other = receiver(0, 0, InboundView::From(conn(CAROL)));
        let rest = Piece::BodyRest {
            kind: BodyKind::File,
        };
        assert_eq!(
            decide(rest, conn(ALICE), Some(&other), SOFT),
            Decision::Drop(DropWhy::NoReceiver)
        );
    }

    #[test]
    fn runs_need_an_idle_length_prefixed_receiver_under_the_limit() {
        let idle = receiver(0, 0, InboundView::Idle);
        assert!(takes_media_runs(conn(ALICE), Some(&idle), SOFT));
        let own = receiver(0, 0, InboundView::From(conn(ALICE)));
        assert!(takes_media_runs(conn(ALICE), Some(&own), SOFT));
        let seed = ReceiverView {
            framing: Framing::Seed,
            ..idle
        };
        assert!(!takes_media_runs(conn(ALICE), Some(&seed), SOFT));
        let full = receiver(SOFT, 0, InboundView::Idle);
        assert!(!takes_media_runs(conn(ALICE), Some(&full), SOFT));
        let busy = receiver(0, 0, InboundView::From(conn(CAROL)));
        assert!(!takes_media_runs(conn(ALICE), Some(&busy), SOFT));
        // Frames held behind its own frame go out when it ends: no run may
        // carry the sender's next frames past them.
        let held = receiver(0, 10, InboundView::From(conn(ALICE)));
        assert!(!takes_media_runs(conn(ALICE), Some(&held), SOFT));
        assert!(!takes_media_runs(conn(ALICE), None, SOFT));
    }

    #[test]
    fn server_frames_are_queued_or_held_never_written_inline() {
        let idle = receiver(0, 0, InboundView::Idle);
        assert_eq!(placement(None, &idle), Placement::Queue);
        assert_eq!(placement(Some(conn(ALICE)), &idle), Placement::Write);
        let busy = receiver(0, 0, InboundView::From(conn(ALICE)));
        assert_eq!(placement(None, &busy), Placement::Hold);
        assert_eq!(placement(Some(conn(ALICE)), &busy), Placement::Write);
        assert_eq!(placement(Some(conn(CAROL)), &busy), Placement::Hold);
    }

    #[test]
    fn producers_of_held_frames_wait_past_the_soft_limit() {
        let view = receiver(0, SOFT, InboundView::From(conn(CAROL)));
        assert!(producer_waits(conn(ALICE), &view, SOFT));
        let view = receiver(0, SOFT - 1, InboundView::From(conn(CAROL)));
        assert!(!producer_waits(conn(ALICE), &view, SOFT));
        let nothing_held = receiver(SOFT, 0, InboundView::Idle);
        assert!(!producer_waits(conn(ALICE), &nothing_held, SOFT));
    }

    #[test]
    fn draining_wakes_the_frame_owner_alone_while_its_frame_is_in_progress() {
        let view = receiver(SOFT - 1, 5 * SOFT, InboundView::From(conn(CAROL)));
        assert_eq!(wake(&view, SOFT), Wake::Owner(conn(CAROL)));
        assert_eq!(
            wake(&receiver(SOFT - 1, 0, InboundView::Idle), SOFT),
            Wake::All
        );
        assert_eq!(
            wake(&receiver(SOFT, 0, InboundView::Idle), SOFT),
            Wake::Nobody
        );
        assert_eq!(
            wake(&receiver(0, 0, InboundView::Padding), SOFT),
            Wake::Nobody
        );
    }

    #[test]
    fn a_trickling_frame_is_cut_after_its_window() {
        let start = Instant::now();
        let stall = Duration::from_secs(5);
        let trickle = StallWindow { start, moved: 10 };
        let at_end = start + stall;
        assert_eq!(
            stall_verdict(start, Some(trickle), false, at_end, stall),
            StallVerdict::CloseOwner
        );
        assert_eq!(
            stall_verdict(start, Some(trickle), true, at_end, stall),
            StallVerdict::NewWindow,
            "a sender waiting for the receiver itself is not trickling"
        );
        let moving = StallWindow {
            start,
            moved: STALL_MIN_PROGRESS,
        };
        assert_eq!(
            stall_verdict(start, Some(moving), false, at_end, stall),
            StallVerdict::NewWindow
        );
        let later = StallWindow {
            start: start + Duration::from_secs(1),
            moved: 0,
        };
        assert_eq!(
            stall_verdict(start, Some(later), false, at_end, stall),
            StallVerdict::Stale
        );
        assert_eq!(
            stall_verdict(start, None, false, at_end, stall),
            StallVerdict::Stale
        );
    }

    #[test]
    fn padding_is_written_as_the_receiver_drains() {
        assert_eq!(padding_chunk(100, 0, SOFT, 16), 16);
        assert_eq!(padding_chunk(10, 0, SOFT, 16), 10);
        assert_eq!(padding_chunk(100, SOFT, SOFT, 16), 0);
        assert_eq!(padding_chunk(u64::MAX, 0, SOFT, 16), 16);
    }
}
