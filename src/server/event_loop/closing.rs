//! Closing: protocol errors, the logical close (ERROR, calls ended, frames in
//! progress completed with padding), flushing and lingering, and reaping.

use super::*;
use crate::server::pipe::decide::Wake;
use crate::server::pipe::state::Inbound;

impl Server {
    pub(super) fn protocol_error(&mut self, id: ConnId, error: ProtocolError) {
        self.counters.protocol_error(error.code);
        let registered = self.conn(id).is_some_and(|c| c.life == Life::Registered);
        let level = if registered {
            self.budgeted(error.code.as_str(), log::Level::Warn)
        } else {
            log::Level::Debug
        };
        if let Some(conn) = self.conn(id) {
            log!(
                level,
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
    /// its calls end, its id goes offline, a frame it was cutting through
    /// into another connection is completed with padding, and senders
    /// waiting on it go on (their pieces for it are then dropped); then its
    /// last output is flushed and the socket dropped (after the peer
    /// closes, or at the linger deadline).
    pub(super) fn begin_close(&mut self, id: ConnId, reason: CloseReason) {
        let deadline = self.now + self.config.timeouts.linger;
        let Some(conn) = self.conn(id).filter(|c| !c.is_closing()) else {
            return;
        };
        let level = match (conn.life, reason.error()) {
            (Life::AwaitingRegistration, _) => log::Level::Debug,
            (_, None) => self.budgeted("closed_by_peer", log::Level::Info),
            (_, Some((code, _))) => self.budgeted(code.as_str(), log::Level::Info),
        };
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let user = String::from_utf8_lossy(&conn.user_id).into_owned();
        match reason.error() {
            None => log!(level, "{id} ({user}) closed by peer"),
            Some((code, detail)) => log!(level, "{id} ({user}) closed: {code} ({detail})"),
        }
        // An ERROR written while another sender's frame is being written
        // into this connection would land inside that frame; the frames
        // held behind it go nowhere now.
        let mid_frame = !matches!(conn.inbound, Inbound::Idle);
        conn.inbound = Inbound::Idle;
        if let (Some((code, detail)), false) = (reason.error(), mid_frame) {
            // Through the one write path (no frame is in progress into it
            // now, so it is queued, and counted, like any server frame).
            let frame = ServerFrame::Error {
                code,
                detail: detail.to_owned(),
            };
            let _ = self.send_frame(id, &frame);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let was_unregistered = conn.life == Life::AwaitingRegistration;
        conn.life = Life::Closing {
            deadline,
            write: WriteEnd::Flushing,
        };
        conn.link = None;
        let outbound = std::mem::take(&mut conn.outbound);
        let cut_short = outbound
            .body_to()
            .map(|dest| (dest, conn.parser.body_remaining()));
        if was_unregistered {
            self.unregistered -= 1;
        }
        if let Some((dest, remaining)) = cut_short {
            self.pad_frame(id, dest, remaining);
        }
        self.trunk_files_left(id);
        let user = self.relay.user_of(id).cloned();
        self.relay
            .leave(id, reason.departure(), self.now, &mut self.actions);
        if let Some(user) = user
            && self.relay.local_conn(&user).is_none()
        {
            self.cluster_unregistered(&user);
        }
        let _ = self.apply_actions();
        self.wake(id, Wake::All);
        self.timers.arm(deadline, TimerKey::Linger(id));
        self.mark_dirty(id);
    }

    /// A closing connection whose output is written shuts its write side;
    /// once the peer has closed too (or failed), it is reaped.
    pub(super) fn finish_if_done(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Life::Closing { deadline, write } = conn.life else {
            return;
        };
        if !conn.output.is_empty() || conn.transport.wants_write() {
            return;
        }
        if write == WriteEnd::Flushing {
            conn.life = Life::Closing {
                deadline,
                write: WriteEnd::Shut,
            };
            if let Err(error) = conn.transport.shutdown_write() {
                debug!("{id}: shutdown: {error}");
                conn.read_side = ReadSide::Eof;
            }
        }
        if conn.read_side == ReadSide::Eof {
            self.reap.push(id);
        }
    }

    pub(super) fn reap_closed(&mut self) {
        while let Some(id) = self.reap.pop() {
            if self.conn(id).is_none() {
                continue;
            }
            self.wake(id, Wake::All);
            let mut conn = self.conns.remove(id.index());
            if let Err(error) = self.poll.registry().deregister(&mut conn.transport) {
                debug!("{id}: deregister: {error}");
            }
            self.forget_address(conn.addr.ip());
            conn.input.release_if_empty(&mut self.pool);
            debug!("{id} reaped");
        }
    }
}
