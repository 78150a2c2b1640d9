//! The pipe: everything about moving bytes from one connection's input into
//! another connection's output.
//!
//! * [`state`]: each connection's two ends, one enum each ([`Outbound`]:
//!   what its input does to another connection; [`Inbound`]: what another
//!   connection's input does to it, with the frames held behind it).
//! * [`decide`]: the decisions (forward, hold, wait, drop; runs; wake;
//!   stall; padding) as pure functions of plain views, unit-tested and
//!   fuzzed without a socket.
//! * This file: the I/O that carries a decision out, on the server's
//!   connections. Every byte of a piece for a receiver, relayed or built
//!   by the server, goes through [`Server::write_piece`]: the one place of
//!   zero-copy writing, queueing, holding and their accounting.
//!
//! The lifetime of a piece of media is told in docs/architecture.md.

pub mod decide;
pub mod state;

use std::ops::Range;

use log::{debug, log};

use super::buffer::{PieceKind, PieceMeta};
use super::connection::{Connection, ReadSide};
use super::event_loop::{CloseReason, Server, TimerKey};
use super::socket::SocketResult;
use crate::ids::ConnId;
use crate::protocol::ErrorCode;
use crate::protocol::frame::{ServerFrame, encode_server};
use crate::protocol::parser::{BodyKind, MediaRun};
use crate::protocol::qdatastream::{ByteArrayLen, QString};
use crate::relay::FileRoute;
use decide::{
    Decision, DropWhy, Piece, Placement, StallVerdict, Wake, decide, padding_chunk, placement,
    stall_verdict,
};
use state::{CutShort, Inbound, Outbound, PausedAt, StallWindow};

/// Zeros written at a time when padding a frame whose sender vanished.
const PAD_CHUNK: usize = 16 * 1024;

/// What handling a piece of input came to.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The piece is handled: commit it.
    Done,
    /// The piece is handled and frames were held for this receiver (its
    /// producer may have to wait: [`decide::producer_waits`]).
    DoneHeld(ConnId),
    /// Leave the piece unconsumed; the sender waits for `on`.
    Wait {
        /// The receiver to wait for.
        on: ConnId,
        /// Where the sender stopped.
        at: PausedAt,
    },
}

/// Where [`Server::write_piece`] put the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Written or queued for the receiver's socket.
    Output,
    /// Held behind the frame in progress into the receiver.
    Held,
    /// Nowhere: the receiver is gone or closing.
    Nowhere,
}

impl Server {
    /// The receiver view of `id`, if it is open.
    pub(crate) fn receiver_view(&self, id: ConnId) -> Option<decide::ReceiverView> {
        self.conn(id).and_then(Connection::receiver_view)
    }

    /// The receiver of `id`'s media, if it is in an accepted call.
    fn media_peer(&self, id: ConnId) -> Option<ConnId> {
        self.conn(id)?.link.as_ref()?.peer
    }

    /// True when `id`'s length-prefixed media may pass to its peer in runs.
    pub(crate) fn takes_media_runs(&self, id: ConnId) -> bool {
        let Some(conn) = self.conn(id) else {
            return false;
        };
        let Some(peer) = self.media_peer(id) else {
            return false;
        };
        // A run continues only the sender's own media body towards its peer.
        let continuing_elsewhere = conn.parser.in_body() && conn.outbound.body_to() != Some(peer);
        !continuing_elsewhere
            && decide::takes_media_runs(id, self.receiver_view(peer).as_ref(), self.soft_limit())
    }

    fn soft_limit(&self) -> usize {
        self.config.output_soft
    }

    /// A run of length-prefixed media from `id` for its length-prefixed
    /// peer: the bytes go out exactly as they arrived, in one write.
    pub(crate) fn pipe_media_run(&mut self, id: ConnId, run: MediaRun) -> Step {
        let Some(peer) = self.media_peer(id) else {
            return Step::Done;
        };
        // Where each frame of the run starts, so that what is queued of it
        // can be dropped by age frame by frame (PROTOCOL.md 8.2).
        let mut starts = std::mem::take(&mut self.frame_starts);
        starts.clear();
        if let Some(conn) = self.conn(id) {
            let continued = usize::try_from(conn.parser.body_remaining()).unwrap_or(usize::MAX);
            media_run_frame_starts(
                conn.input.data(),
                continued.min(run.len),
                run.len,
                &mut starts,
            );
        }
        let _ = self.write_piece(Some(id), peer, &[], 0..run.len, PieceKind::Media, &starts);
        self.frame_starts = starts;
        self.counters.media_frames_relayed += run.frames;
        self.counters.media_bytes_relayed += run.payload;
        if run.rest > 0 {
            self.begin_body(id, peer, BodyKind::Media);
        } else {
            self.set_outbound(id, Outbound::Idle);
            if self.conn(peer).and_then(|p| p.inbound.owner()) == Some(id) {
                self.end_inbound(peer);
            }
        }
        Step::Done
    }

    /// A media frame from `id` starts: `header` bytes of its own header,
    /// then `in_hand` of its `payload_len` payload bytes.
    pub(crate) fn pipe_media(
        &mut self,
        id: ConnId,
        header: usize,
        payload_len: u32,
        in_hand: usize,
    ) -> Step {
        let Some(conn) = self.conn_mut(id) else {
            return Step::Done;
        };
        let is_seed = conn.framing() == Some(crate::protocol::Framing::Seed);
        if let Some(link) = conn.link.as_mut()
            && let Some(node) = link.remote.clone()
        {
            link.media_mode |= is_seed;
            if is_seed && payload_len == 0 {
                return Step::Done;
            }
            let call_id = link.call_id.clone();
            let complete = in_hand as u64 == u64::from(payload_len);
            let range = header..header + in_hand;
            let sent = self.media_to_trunk(id, &node, &call_id, range, Some(payload_len), complete);
            if let Some(link) = self.conn_mut(id).and_then(|c| c.link.as_mut()) {
                link.remote_body = !complete && sent;
            }
            if !complete && !sent {
                self.set_outbound(id, Outbound::Discard { cut_short: None });
            }
            return Step::Done;
        }
        let link = conn.link.as_mut().map(|link| {
            link.media_mode |= is_seed;
            link.peer
        });
        // In a call whose other party is detached: dropped, and counted so.
        let detached = matches!(link, Some(None));
        let peer = link.flatten();
        if is_seed && payload_len == 0 {
            // A seed `6` that arrived alone: its payload comes in the next
            // read as a continuation. Relaying an empty frame would only
            // make the receiver play nothing.
            return Step::Done;
        }
        let complete = in_hand as u64 == u64::from(payload_len);
        let view = peer.and_then(|peer| self.receiver_view(peer));
        let piece = Piece::MediaFrame { complete };
        match (
            decide(piece, id, view.as_ref(), self.soft_limit()),
            peer,
            view,
        ) {
            (Decision::Wait, Some(peer), _) => Step::Wait {
                on: peer,
                at: PausedAt::FrameStart,
            },
            (Decision::Forward | Decision::Hold, Some(peer), Some(view)) => {
                let mut out_header = std::mem::take(&mut self.scratch);
                out_header.clear();
                encode_server(
                    &ServerFrame::MediaHeader { payload_len },
                    view.framing,
                    &mut out_header,
                );
                let placed = self.write_piece(
                    Some(id),
                    peer,
                    &out_header,
                    header..header + in_hand,
                    PieceKind::Media,
                    &[0],
                );
                self.scratch = out_header;
                self.counters.media_frames_relayed += 1;
                self.counters.media_bytes_relayed += u64::from(payload_len);
                if complete {
                    self.set_outbound(id, Outbound::Idle);
                } else {
                    self.begin_body(id, peer, BodyKind::Media);
                }
                match placed {
                    Placed::Held => Step::DoneHeld(peer),
                    Placed::Output | Placed::Nowhere => Step::Done,
                }
            }
            (decision, _, _) => {
                match decision {
                    Decision::Drop(DropWhy::SoftLimit) => self.counters.media_dropped_overflow += 1,
                    _ if detached => self.counters.media_dropped_detached += 1,
                    _ => self.counters.media_dropped_no_call += 1,
                }
                let rest = if complete {
                    Outbound::Idle
                } else {
                    Outbound::Discard { cut_short: None }
                };
                self.set_outbound(id, rest);
                Step::Done
            }
        }
    }

    /// A FILE header from `id` was parsed; the relay routed it.
    pub(crate) fn pipe_file(
        &mut self,
        id: ConnId,
        route: FileRoute,
        name: QString,
        data: ByteArrayLen,
    ) -> Step {
        let (to, from) = match route {
            FileRoute::Deliver { to, from } => (to, from),
            FileRoute::Remote { node, to, from } => {
                return self.file_to_trunk(id, node, from, to, name, data);
            }
            FileRoute::Undeliverable => return self.file_undeliverable(id, data),
        };
        let Some(view) = self.receiver_view(to) else {
            return self.file_undeliverable(id, data);
        };
        match decide(Piece::FileFrame, id, Some(&view), self.soft_limit()) {
            Decision::Wait => Step::Wait {
                on: to,
                at: PausedAt::FrameStart,
            },
            Decision::Forward | Decision::Hold => {
                self.relay.note_file(true);
                let mut header = Vec::new();
                encode_server(
                    &ServerFrame::FileHeader { from, name, data },
                    view.framing,
                    &mut header,
                );
                let _ = self.write_piece(Some(id), to, &header, 0..0, PieceKind::Reliable, &[0]);
                if data.len > 0 {
                    self.begin_body(id, to, BodyKind::File);
                }
                Step::Done
            }
            Decision::Drop(_) => self.file_undeliverable(id, data),
        }
    }

    pub(crate) fn file_undeliverable(&mut self, id: ConnId, data: ByteArrayLen) -> Step {
        self.relay.note_file(false);
        if data.len > 0 {
            self.set_outbound(id, Outbound::Discard { cut_short: None });
        }
        self.actions.push(crate::relay::Action::Notify {
            to: id,
            code: ErrorCode::Offline,
            detail: "the FILE's recipient is not online".to_owned(),
        });
        Step::Done
    }

    /// The next `len` input bytes of `id` continue its body in progress
    /// (`last`: they complete it).
    pub(crate) fn pipe_body(&mut self, id: ConnId, kind: BodyKind, len: usize, last: bool) -> Step {
        let Some(conn) = self.conn(id) else {
            return Step::Done;
        };
        if kind == BodyKind::Media
            && let Some(link) = conn.link.as_ref()
            && link.remote_body
            && let Some(node) = link.remote.clone()
        {
            let call_id = link.call_id.clone();
            self.media_to_trunk(id, &node, &call_id, 0..len, None, last);
            if last && let Some(link) = self.conn_mut(id).and_then(|c| c.link.as_mut()) {
                link.remote_body = false;
            }
            return Step::Done;
        }
        if kind == BodyKind::File
            && let Some(step) = self.file_body_to_trunk(id, len, last)
        {
            return step;
        }
        let Some(conn) = self.conn(id) else {
            return Step::Done;
        };
        let (outbound, remaining) = (conn.outbound, conn.parser.body_remaining());
        if let Some(to) = outbound.body_to() {
            let view = self.receiver_view(to);
            match decide(
                Piece::BodyRest { kind },
                id,
                view.as_ref(),
                self.soft_limit(),
            ) {
                Decision::Wait => {
                    let sent = outbound.sent();
                    return Step::Wait {
                        on: to,
                        at: PausedAt::FileBody { sent },
                    };
                }
                Decision::Forward | Decision::Hold => {
                    let piece_kind = match kind {
                        BodyKind::Media => PieceKind::Media,
                        BodyKind::File => PieceKind::Reliable,
                    };
                    let _ = self.write_piece(Some(id), to, &[], 0..len, piece_kind, &[]);
                    let sent = outbound.sent() + len as u64;
                    self.set_outbound(id, Outbound::Body { to, kind, sent });
                }
                Decision::Drop(_) => {
                    let cut_short = (kind == BodyKind::File).then(|| CutShort {
                        delivered: outbound.sent(),
                        total: outbound.sent() + remaining,
                    });
                    debug!("{id}: receiver {to} of the body in progress is gone: discarding");
                    self.set_outbound(id, Outbound::Discard { cut_short });
                }
            }
        }
        if last {
            if let Some(Outbound::Discard {
                cut_short: Some(cut_short),
            }) = self.conn(id).map(|c| c.outbound)
            {
                self.file_cut_short(id, cut_short);
            }
            self.set_outbound(id, Outbound::Idle);
            if let Some(to) = outbound.body_to()
                && self.conn(to).and_then(|c| c.inbound.owner()) == Some(id)
            {
                self.end_inbound(to);
            }
        }
        Step::Done
    }

    /// The whole of a FILE whose receiver went away has been read from its
    /// sender: a length-prefixed sender is told how much arrived
    /// (PROTOCOL.md 8.4); a seed sender cannot be told, so it is logged.
    pub(crate) fn file_cut_short(&mut self, id: ConnId, cut_short: CutShort) {
        let CutShort { delivered, total } = cut_short;
        self.counters.files_cut_short += 1;
        let level = self.budgeted("file_cut_short", log::Level::Info);
        log!(
            level,
            "{id}: FILE receiver went away: {delivered} of {total} data bytes delivered"
        );
        self.actions.push(crate::relay::Action::Notify {
            to: id,
            code: ErrorCode::Offline,
            detail: format!(
                "the FILE's recipient went away: {delivered} of {total} data bytes delivered"
            ),
        });
    }

    /// Writes one piece for `to`: `header` (already in the receiver's
    /// framing), then the `payload` range of `from`'s unconsumed input.
    /// Where it goes is [`decide::placement`]: straight to the socket when
    /// nothing is queued (zero-copy; only what the socket refuses is
    /// copied), behind the queue, or into the frames held behind another
    /// sender's frame in progress. `from` is `None` for server frames.
    /// `frame_starts` are the offsets (into header and payload) where frames
    /// begin: what is queued keeps them, and what the socket took of a
    /// frame makes the rest of it a frame that has begun to go out.
    pub(crate) fn write_piece(
        &mut self,
        from: Option<ConnId>,
        to: ConnId,
        header: &[u8],
        payload: Range<usize>,
        kind: PieceKind,
        frame_starts: &[usize],
    ) -> Placed {
        let Some(view) = self.receiver_view(to) else {
            return Placed::Nowhere;
        };
        let place = placement(from, &view);
        let meta = PieceMeta {
            kind,
            arrived: self.now,
            starts_frame: true,
        };
        let mut own_copy = None;
        let Server {
            conns,
            counters,
            closing_queue,
            ..
        } = self;
        let (src, dst) = match from {
            // A trunk stream's bytes come in `header`: it has no input.
            Some(from) if from.index() != to.index() && !from.is_trunk_stream() => {
                match conns.get2_mut(from.index(), to.index()) {
                    Some((src, dst)) if src.id == from && dst.id == to => (Some(&*src), dst),
                    _ => return Placed::Nowhere,
                }
            }
            _ => {
                let Some(dst) = conns.get_mut(to.index()).filter(|c| c.id == to) else {
                    return Placed::Nowhere;
                };
                // A piece to oneself (a FILE to one's own id) is copied out
                // of the input first: one buffer cannot be both ends.
                own_copy = dst.input.data().get(payload.clone()).map(<[u8]>::to_vec);
                (None, dst)
            }
        };
        let body = match src {
            Some(src) => src.input.data().get(payload).unwrap_or_default(),
            None => own_copy.as_deref().unwrap_or_default(),
        };
        let parts = [header, body];
        let total = (header.len() + body.len()) as u64;
        if let Inbound::CutThrough(cut) = &mut dst.inbound
            && Some(cut.from) == from
            && let Some(stall) = cut.stall.as_mut()
        {
            stall.moved += total;
        }
        let placed = match place {
            Placement::Hold => {
                if let Some(held) = dst.inbound.held_mut() {
                    held.push_frames(&parts, frame_starts, meta);
                }
                counters.bytes_queued += total;
                Placed::Held
            }
            Placement::Write if dst.output.is_empty() => {
                let (written, result) = dst.transport.write(&parts);
                counters.bytes_zero_copy += written as u64;
                if written > 0 {
                    dst.last_progress = meta.arrived;
                }
                if (written as u64) < total {
                    let header_left = header.get(written..).unwrap_or_default();
                    let body_left = body
                        .get(written.saturating_sub(header.len())..)
                        .unwrap_or_default();
                    // A frame the socket took part of has begun to go out:
                    // its rest is no frame start (it must be finished).
                    let rest_starts: Vec<usize> = frame_starts
                        .iter()
                        .filter(|at| **at >= written)
                        .map(|at| at - written)
                        .collect();
                    dst.output
                        .push_frames(&[header_left, body_left], &rest_starts, meta);
                    counters.bytes_queued += total - written as u64;
                }
                if matches!(result, SocketResult::Closed | SocketResult::Error) {
                    dst.read_side = ReadSide::Eof;
                    closing_queue.push((to, CloseReason::PeerClosed));
                }
                Placed::Output
            }
            Placement::Write | Placement::Queue => {
                dst.output.push_frames(&parts, frame_starts, meta);
                counters.bytes_queued += total;
                Placed::Output
            }
        };
        if placed == Placed::Held {
            self.open_stall_window(to);
        }
        self.after_output(to);
        placed
    }

    /// Queues a frame the server built (in the receiver's framing) for `to`.
    pub(crate) fn enqueue(&mut self, to: ConnId, bytes: &[u8]) -> Placed {
        self.write_piece(None, to, bytes, 0..0, PieceKind::Reliable, &[0])
    }

    /// Output was added to `to`: check the hard limit, schedule a flush.
    fn after_output(&mut self, to: ConnId) {
        let hard = self.config.output_hard;
        let Some(dst) = self.conn(to) else {
            return;
        };
        let total = dst.output.len() + dst.inbound.held_len();
        // TLS records the socket did not take count as pending output too.
        let pending = !dst.output.is_empty() || dst.transport.wants_write();
        let closing = dst.is_closing();
        if pending {
            self.mark_dirty(to);
        }
        if total > hard && !closing {
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

    pub(crate) fn set_outbound(&mut self, id: ConnId, outbound: Outbound) {
        if let Some(conn) = self.conn_mut(id) {
            conn.outbound = outbound;
        }
    }

    /// `from`'s body in progress goes to `to`, cut through.
    fn begin_body(&mut self, from: ConnId, to: ConnId, kind: BodyKind) {
        self.set_outbound(from, Outbound::Body { to, kind, sent: 0 });
        self.start_inbound(to, from);
    }

    /// `from`'s cut-through frame into `to` has started.
    pub(crate) fn start_inbound(&mut self, to: ConnId, from: ConnId) {
        if let Some(dst) = self.conn_mut(to)
            && dst.inbound.owner() != Some(from)
        {
            dst.inbound = Inbound::cut_through(from);
        }
    }

    /// The frame in progress into `to` is complete: the frames held behind
    /// it go out, and every sender waiting on `to` may go on.
    pub(crate) fn end_inbound(&mut self, to: ConnId) {
        if let Some(dst) = self.conn_mut(to) {
            let mut inbound = std::mem::take(&mut dst.inbound);
            if let Some(held) = inbound.held_mut() {
                dst.output.append(held);
            }
            self.mark_dirty(to);
        }
        self.wake(to, Wake::All);
    }

    /// Frames were just held for `to`: the first opens a stall window.
    fn open_stall_window(&mut self, to: ConnId) {
        let now = self.now;
        let Some(dst) = self.conn_mut(to) else {
            return;
        };
        if let Inbound::CutThrough(cut) = &mut dst.inbound
            && cut.stall.is_none()
        {
            cut.stall = Some(StallWindow {
                start: now,
                moved: 0,
            });
            let at = now + self.config.timeouts.stall;
            self.timers.arm(at, TimerKey::Stall(to, now));
        }
    }

    /// The stall window armed at `armed` for frames held for `to` ended:
    /// the frame's sender, if it moved less than
    /// [`decide::STALL_MIN_PROGRESS`] bytes in it (and is not itself
    /// waiting for `to` to drain), is closed; otherwise a new window
    /// starts. One peer must not silence another by trickling a long frame.
    pub(crate) fn on_stall_timer(&mut self, to: ConnId, armed: std::time::Instant) {
        let (now, stall) = (self.now, self.config.timeouts.stall);
        let Some(Inbound::CutThrough(cut)) = self.conn(to).map(|c| &c.inbound) else {
            return;
        };
        let owner = cut.from;
        let owner_waits = self
            .conn(owner)
            .is_some_and(|o| o.outbound.paused_on() == Some(to));
        match stall_verdict(armed, cut.stall, owner_waits, now, stall) {
            StallVerdict::Stale => {}
            StallVerdict::NewWindow => {
                if let Some(Inbound::CutThrough(cut)) = self.conn_mut(to).map(|c| &mut c.inbound) {
                    cut.stall = None;
                }
                self.open_stall_window(to);
            }
            StallVerdict::CloseOwner if owner.is_trunk_stream() => {
                self.trunk_file_stalled(owner, to);
            }
            StallVerdict::CloseOwner => {
                let detail = format!("a frame to {to} stalled while other frames for it waited");
                let level = self.budgeted("stalled", log::Level::Warn);
                log!(level, "{owner}: {detail}");
                self.closing_queue
                    .push((owner, CloseReason::Error(ErrorCode::Timeout, detail)));
            }
        }
    }

    /// Stops reading `id` until `on` can take more. If `on` is gone there
    /// is nothing to wait for: `id` is served again at once.
    pub(crate) fn pause(&mut self, id: ConnId, on: ConnId, at: PausedAt) {
        if self.receiver_view(on).is_none() {
            self.mark_ready(id);
            return;
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.outbound = Outbound::Paused { on, at };
        }
        if let Some(dst) = self.conn_mut(on)
            && !dst.waiters.contains(&id)
        {
            dst.waiters.push(id);
        }
        debug!("{id} paused until {on} drains");
    }

    /// Lets the senders `wake` names go on if they are paused on `dest`.
    pub(crate) fn wake(&mut self, dest: ConnId, wake: Wake) {
        let waiters = match (wake, self.conn_mut(dest)) {
            (Wake::Nobody, _) | (_, None) => return,
            (Wake::All, Some(conn)) => std::mem::take(&mut conn.waiters),
            (Wake::Owner(owner), Some(conn)) => match conn.waiters.iter().position(|w| *w == owner)
            {
                Some(at) => vec![conn.waiters.swap_remove(at)],
                None => return,
            },
        };
        for waiter in waiters {
            if let Some(conn) = self.conn_mut(waiter)
                && conn.outbound.paused_on() == Some(dest)
            {
                conn.outbound = conn.outbound.resumed();
                self.mark_ready(waiter);
            }
        }
    }

    /// Drops the media frames queued for `id` that have waited longer than
    /// `--media-max-delay` (PROTOCOL.md 8.2), before its queue is written.
    pub(crate) fn shed_late_media(&mut self, id: ConnId) {
        let max_delay = self.config.timeouts.media_max_delay;
        let Some(cutoff) = self
            .now
            .checked_sub(max_delay)
            .filter(|_| !max_delay.is_zero())
        else {
            return;
        };
        let Some(conn) = self.conn_mut(id).filter(|c| !c.output.is_empty()) else {
            return;
        };
        // A frame still being cut through into it is the queue's last one:
        // its rest is on its way, so it is finished whatever its age.
        let keep_last = !matches!(conn.inbound, Inbound::Idle);
        let dropped = conn.output.drop_late_media(cutoff, keep_last);
        if dropped > 0 {
            self.counters.media_dropped_late += dropped;
            debug!("{id}: dropped {dropped} late media frame(s)");
        }
    }

    /// `dest` drained some output: wake whoever may go on, and write owed
    /// padding.
    pub(crate) fn after_drain(&mut self, dest: ConnId) {
        if matches!(
            self.conn(dest).map(|c| &c.inbound),
            Some(Inbound::Padding(_))
        ) {
            self.refill_padding(dest);
        }
        if let Some(view) = self.receiver_view(dest)
            && self.conn(dest).is_some_and(|c| !c.waiters.is_empty())
        {
            self.wake(dest, decide::wake(&view, self.soft_limit()));
        }
        self.trunk_file_drained(dest);
    }

    /// A sender vanished inside a frame it was cutting through into `dest`
    /// (`remaining` bytes short): the frame is completed with zeros, so the
    /// receiver's stream stays parseable.
    pub(crate) fn pad_frame(&mut self, from: ConnId, dest: ConnId, remaining: u64) {
        if self.conn(dest).and_then(|d| d.inbound.owner()) != Some(from) {
            return;
        }
        let level = self.budgeted("padded", log::Level::Warn);
        log!(
            level,
            "{from} left mid-frame: padding {remaining} bytes to {dest}"
        );
        let Some(dst) = self.conn_mut(dest) else {
            return;
        };
        let held = match std::mem::take(&mut dst.inbound) {
            Inbound::CutThrough(cut) => cut.held,
            _ => Default::default(),
        };
        dst.inbound = Inbound::Padding(Box::new(state::Padding { remaining, held }));
        self.refill_padding(dest);
    }

    /// Writes owed padding as the receiver drains; the frames held behind
    /// it go out once it is complete.
    fn refill_padding(&mut self, dest: ConnId) {
        let (soft, now) = (self.soft_limit(), self.now);
        let zeros = [0u8; PAD_CHUNK];
        loop {
            let Some(dst) = self.conn_mut(dest).filter(|c| !c.is_closing()) else {
                return;
            };
            let Inbound::Padding(padding) = &mut dst.inbound else {
                return;
            };
            let chunk = padding_chunk(padding.remaining, dst.output.len(), soft, PAD_CHUNK);
            if padding.remaining == 0 {
                break;
            }
            if chunk == 0 {
                return;
            }
            padding.remaining -= chunk as u64;
            let meta = PieceMeta {
                kind: PieceKind::Reliable,
                arrived: now,
                starts_frame: false,
            };
            dst.output
                .push(&[zeros.get(..chunk).unwrap_or_default()], meta);
            self.counters.bytes_queued += chunk as u64;
            self.after_output(dest);
        }
        self.end_inbound(dest);
    }
}

/// The offsets where the length-prefixed media frames of a run begin: the
/// run's first `continued` bytes finish the frame in progress, then frames
/// (`quint32 n` + n bytes) follow back to back up to `len`.
fn media_run_frame_starts(input: &[u8], continued: usize, len: usize, starts: &mut Vec<usize>) {
    let mut at = continued;
    while at < len {
        starts.push(at);
        let Some(&[a, b, c, d]) = input.get(at..at + 4) else {
            break;
        };
        let frame = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
        at = at.saturating_add(4).saturating_add(frame);
    }
}
