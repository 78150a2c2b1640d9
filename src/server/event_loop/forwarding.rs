//! Media and FILE bodies: the length-prefixed pass-through, per-frame media
//! decisions (forward, hold, wait, drop), cut-through FILE forwarding, the
//! zero-copy `forward`, held frames behind a cut-through frame, the stall
//! bound, and pausing and waking senders.

use super::*;

impl Server {
    /// The fast path for media between two length-prefixed connections:
    /// the rest of the frame in progress, complete media frames and the
    /// start of the next one are exactly what the peer must receive, so they
    /// go out in one write (zero-copy when the peer has nothing queued).
    /// `None` when this does not apply; the generic path then handles the
    /// input (one frame at a time, with the soft-limit drop decided at each
    /// frame's start).
    pub(super) fn forward_media_run(&mut self, id: ConnId) -> Option<Option<Flow>> {
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
    pub(super) fn start_media(
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
    pub(super) fn start_file(
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
    pub(super) fn forward_body(&mut self, id: ConnId, len: usize, last: bool) {
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
    pub(super) fn set_inbound(&mut self, dest: ConnId, owner: ConnId) {
        if let Some(dest) = self.conn_mut(dest) {
            dest.inbound = Some(owner);
        }
    }

    /// The cut-through frame into `dest` is complete: frames held for it go
    /// out, and senders waiting for it may go on.
    pub(super) fn end_inbound(&mut self, dest: ConnId) {
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
    pub(super) fn forward(
        &mut self,
        from: ConnId,
        to: ConnId,
        header: &[u8],
        offset: usize,
        len: usize,
    ) {
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
        if dst.inbound == Some(from) {
            dst.inbound_moved += (header.len() + payload.len()) as u64;
        }
        let total = header.len() + payload.len();
        if dst.inbound.is_some_and(|owner| owner != from) {
            let first_held = dst.output.held_len() == 0;
            dst.output.hold(&parts);
            self.counters.bytes_queued += total as u64;
            self.after_hold(to, first_held);
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
    pub(super) fn enqueue(&mut self, to: ConnId, from: Option<ConnId>, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        let Some(dst) = self.conn_mut(to) else {
            return;
        };
        if dst.inbound.is_some() && dst.inbound != from {
            let first_held = dst.output.held_len() == 0;
            dst.output.hold(parts);
            self.after_hold(to, first_held);
        } else {
            dst.output.push(parts);
        }
        self.counters.bytes_queued += total as u64;
        self.after_output(to);
    }

    /// Frames were just held for `to`: the first opens a stall window, and
    /// past the soft limit the sender of the input that produced them waits.
    fn after_hold(&mut self, to: ConnId, first_held: bool) {
        if first_held {
            self.start_holding(to);
        }
        self.check_stalled_inbound(to);
    }

    /// Frames start waiting for `to` behind `owner`'s cut-through frame:
    /// they may wait `--stall-timeout` at most.
    pub(super) fn start_holding(&mut self, to: ConnId) {
        let (now, stall) = (self.now, self.config.timeouts.stall);
        let Some(dst) = self.conn_mut(to) else {
            return;
        };
        dst.held_since = Some(now);
        dst.inbound_moved = 0;
        // One stall timer per receiver at a time: `check_stall` re-arms it.
        if !dst.stall_armed {
            dst.stall_armed = true;
            self.timers.arm(now + stall, TimerKey::Stall(to));
        }
    }

    /// Frames are held for `to` behind a cut-through frame. Past the soft
    /// limit, the connection whose input produced them is paused until the
    /// frame completes (recorded here, applied by `drain_input`): text and
    /// signaling are never dropped, so their sender waits instead.
    pub(super) fn check_stalled_inbound(&mut self, to: ConnId) {
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
    pub(super) fn close_stalled_owner(&mut self, to: ConnId) {
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
    pub(super) fn after_output(&mut self, to: ConnId) {
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
    pub(super) fn pause(&mut self, id: ConnId, dest: ConnId) {
        if self.conn(dest).is_none_or(|d| d.is_closing()) {
            // Nothing to wait for: the caller stops, so come back at once.
            self.mark_ready(id);
            return;
        }
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
    pub(super) fn wake_one(&mut self, dest: ConnId, waiter: ConnId) {
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
    pub(super) fn wake_waiters(&mut self, dest: ConnId) {
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
