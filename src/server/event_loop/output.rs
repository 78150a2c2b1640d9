//! Output and actions: server-built frames encoded in the receiver's framing,
//! flushing queued output before the next poll, poll interests, and applying
//! the relay's actions.

use super::*;
use crate::server::pipe::Placed;

impl Server {
    /// Encodes a frame in the receiver's framing and queues it (held
    /// behind a frame in progress into `to`, if there is one).
    pub(super) fn send_frame(&mut self, to: ConnId, frame: &ServerFrame) -> Placed {
        let Some(view) = self.receiver_view(to) else {
            return Placed::Nowhere;
        };
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        encode_server(frame, view.framing, &mut bytes);
        let placed = self.enqueue(to, &bytes);
        self.scratch = bytes;
        placed
    }

    /// Flushes every connection that output was added to or that became
    /// writable, and updates poll interests.
    pub(super) fn flush_dirty(&mut self) {
        let now = self.now;
        while let Some(id) = self.dirty.pop() {
            self.shed_late_media(id);
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            conn.queued_dirty = false;
            if !conn.flush(now) && !conn.is_closing() {
                self.begin_close(id, CloseReason::PeerClosed);
            }
            self.after_drain(id);
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
            match registry.reregister(&mut conn.transport, Token(id.index()), wanted) {
                Ok(()) => conn.registered_interest = wanted,
                Err(error) => warn!("{id}: reregister failed: {error}"),
            }
        }
    }

    /// Applies the relay's pending actions; returns the receivers that
    /// frames were held for (behind another sender's frame in progress).
    pub(super) fn apply_actions(&mut self) -> Vec<ConnId> {
        let mut held_for = Vec::new();
        while !self.actions.is_empty() {
            for action in std::mem::take(&mut self.actions) {
                if let Some(to) = self.apply(action) {
                    held_for.push(to);
                }
            }
        }
        held_for
    }

    /// Applies one action; `Some(to)` if it held a frame for `to`.
    fn apply(&mut self, action: Action) -> Option<ConnId> {
        let held = |placed: Placed, to: ConnId| (placed == Placed::Held).then_some(to);
        match action {
            Action::Send { to, frame } => return held(self.send_frame(to, &frame), to),
            Action::Notify { to, code, detail } => {
                match self.conn(to).and_then(Connection::framing) {
                    Some(Framing::LengthPrefixed) => {
                        let frame = ServerFrame::Error { code, detail };
                        return held(self.send_frame(to, &frame), to);
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
            Action::Close { conn, code, detail } => {
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
            Action::Relink { conn, peer } => {
                if let Some(link) = self.conn_mut(conn).and_then(|c| c.link.as_mut()) {
                    link.peer = peer;
                    link.remote = None;
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
            Action::LinkRemote {
                conn,
                node,
                call_id,
                peer_user,
            } => {
                if let Some(conn) = self.conn_mut(conn) {
                    let mut link = MediaLink::new(None, call_id, peer_user.as_str());
                    link.remote = Some(node);
                    conn.link = Some(Box::new(link));
                    conn.grace_until = None;
                }
            }
            Action::Forward { node, event } => self.forward(node, event),
            Action::ArmTimer { at, timer } => self.timers.arm(at, TimerKey::Relay(timer)),
        }
        None
    }
}
