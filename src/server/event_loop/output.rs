//! Output and actions: server-built frames encoded in the receiver's framing,
//! flushing queued output before the next poll, poll interests, and applying
//! the relay's actions.

use super::*;

impl Server {
    /// Encodes a frame in the receiver's framing and queues it.
    pub(super) fn send_frame(&mut self, to: ConnId, frame: &ServerFrame) {
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
    pub(super) fn flush_dirty(&mut self) {
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

    pub(super) fn update_interest(&mut self, id: ConnId) {
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

    pub(super) fn apply_actions(&mut self) {
        while !self.actions.is_empty() {
            for action in std::mem::take(&mut self.actions) {
                self.apply(action);
            }
        }
    }

    pub(super) fn apply(&mut self, action: Action) {
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
}
