//! Closing: protocol errors, the logical close (ERROR, calls ended, frames in
//! progress completed with padding), flushing and lingering, and reaping.

use super::*;

impl Server {
    pub(super) fn protocol_error(&mut self, id: ConnId, error: ProtocolError) {
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

    pub(super) fn close_queued(&mut self) {
        while let Some((id, reason)) = self.closing_queue.pop() {
            self.begin_close(id, reason);
        }
    }

    /// Closes a connection logically: ERROR if it has a framing and a code,
    /// its calls end, its id goes offline, frames it was cutting through to
    /// another connection are completed with padding; then its last output
    /// is flushed and the socket dropped (after the peer closes, or at the
    /// linger deadline).
    pub(super) fn begin_close(&mut self, id: ConnId, reason: CloseReason) {
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
    pub(super) fn pad_frame(&mut self, from: ConnId, dest: ConnId, remaining: u64) {
        warn!("{from} left mid-frame: padding {remaining} bytes to {dest}");
        if let Some(conn) = self.conn_mut(dest) {
            conn.pad_remaining = remaining;
        }
        self.refill_padding(dest);
    }

    /// Writes owed padding as the receiver drains (never past the soft
    /// limit, so a long abandoned frame cannot push the receiver over its
    /// hard limit); frames held behind it go out once it is complete.
    pub(super) fn refill_padding(&mut self, dest: ConnId) {
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
    pub(super) fn finish_if_done(&mut self, id: ConnId) {
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

    pub(super) fn reap_closed(&mut self) {
        while let Some(id) = self.reap.pop() {
            if self.conn(id).is_none() {
                continue;
            }
            self.wake_waiters(id);
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
