//! Reading and parsing: each ready connection alternates handling its
//! buffered input with one read (a bounded number per turn), and each parsed
//! piece goes to the relay or to forwarding.

use super::*;

impl Server {
    pub(super) fn service_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.conn_mut(id) {
                conn.queued_ready = false;
                self.service(id);
            }
        }
    }

    /// Handles buffered input, then reads and handles more, for a bounded
    /// number of reads; a connection with input left goes to the back of the
    /// ready queue. End of input closes the connection once every byte
    /// before it has been handled.
    pub(super) fn service(&mut self, id: ConnId) {
        for _ in 0..READS_PER_TURN {
            if self.drain_input(id) == Flow::Stop {
                return;
            }
            let now = self.now;
            let (pool, max_input) = (&mut self.pool, self.max_input);
            let Some(conn) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
                return;
            };
            if conn.peer_closed {
                conn.input.release_if_empty(pool);
                if conn.is_closing() {
                    self.finish_if_done(id);
                } else {
                    self.begin_close(id, CloseReason::PeerClosed);
                }
                return;
            }
            if !conn.readable {
                conn.input.release_if_empty(pool);
                return;
            }
            match conn.read_some(pool, max_input) {
                ReadOutcome::Read(_) => conn.last_input = now,
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => {}
                ReadOutcome::Error => debug!("{id}: socket error on read"),
                ReadOutcome::BufferFull => {
                    self.protocol_error(
                        id,
                        ProtocolError {
                            code: ErrorCode::TooLarge,
                            what: "frame larger than the input buffer",
                        },
                    );
                    return;
                }
            }
        }
        if self
            .conn(id)
            .is_some_and(|conn| conn.readable || conn.peer_closed)
        {
            self.ready.push_back(id);
        }
    }

    /// Handles the parsable input in the connection's buffer.
    pub(super) fn drain_input(&mut self, id: ConnId) -> Flow {
        loop {
            // Only this connection's own input may set it during the step.
            self.held_over = None;
            let flow = self.step(id);
            self.apply_actions();
            self.close_queued();
            let held_for = self.held_over.take().filter(|to| {
                *to != id
                    && self
                        .conn(*to)
                        .is_some_and(|c| !c.is_closing() && c.inbound.is_some())
            });
            if let Some(to) = held_for {
                self.pause(id, to);
                return Flow::Stop;
            }
            match flow {
                Some(flow) => return flow,
                None => continue,
            }
        }
    }

    /// Handles one piece of input: `None` to go on, `Some` to stop.
    pub(super) fn step(&mut self, id: ConnId) -> Option<Flow> {
        let soft = self.config.output_soft;
        let Some(conn) = self.conn_mut(id) else {
            return Some(Flow::Stop);
        };
        if conn.is_closing() {
            let all = conn.input.len();
            conn.input.consume(all);
            return Some(Flow::ReadMore);
        }
        if conn.paused_on.is_some() {
            return Some(Flow::Stop);
        }
        if conn.input.is_empty() {
            return Some(Flow::ReadMore);
        }
        if let Some(flow) = self.forward_media_run(id) {
            return flow;
        }
        let Some(conn) = self.conn_mut(id) else {
            return Some(Flow::Stop);
        };
        if let (true, BodyTarget::To(dest)) = (conn.parser.in_body(), conn.body_target)
            && conn.parser.body_kind() == Some(BodyKind::File)
            && self
                .conn(dest)
                .is_some_and(|d| d.output.pending_len() >= soft && !d.is_closing())
        {
            self.pause(id, dest);
            return Some(Flow::Stop);
        }
        self.parse_one(id)
    }

    /// Parses the next piece of a connection's input and acts on it.
    pub(super) fn parse_one(&mut self, id: ConnId) -> Option<Flow> {
        let Server {
            conns,
            relay,
            actions,
            config,
            counters,
            now,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id.index()).filter(|c| c.id == id) else {
            return Some(Flow::Stop);
        };
        let saved_parser = conn.parser.clone();
        let context = ParseContext {
            limits: &config.limits,
            user_id: &conn.user_id,
            seed_phase: Connection::seed_phase(conn.link.as_deref(), conn.grace_until, *now),
        };
        let parsed = match conn.parser.parse(conn.input.data(), &context) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.protocol_error(id, error);
                return Some(Flow::Stop);
            }
        };
        match parsed {
            Parsed::NeedMore => return Some(Flow::ReadMore),
            Parsed::Stale { consumed } => {
                counters.media_dropped_stale += 1;
                conn.input.consume(consumed);
            }
            Parsed::Frame {
                frame: ClientFrame::Register { user, .. },
                consumed,
            } => {
                let user = match UserId::from_utf8(user, config.limits.max_user_id) {
                    Ok(user) => user,
                    Err(why) => {
                        let error = ProtocolError {
                            code: ErrorCode::BadUserId,
                            what: user_id_error_text(why),
                        };
                        self.protocol_error(id, error);
                        return Some(Flow::Stop);
                    }
                };
                conn.user_id = user.as_str().as_bytes().into();
                conn.state = ConnState::Registered;
                self.unregistered -= 1;
                conn.input.consume(consumed);
                relay.register(id, user, actions);
                // The liveness deadline armed at accept checks idleness from
                // then on; only an idle timeout shorter than the
                // registration timeout needs an earlier check.
                if config.timeouts.idle < config.timeouts.register {
                    self.timers
                        .arm(*now + config.timeouts.idle, TimerKey::Liveness(id));
                }
            }
            Parsed::Frame {
                frame: ClientFrame::Heartbeat,
                consumed,
            } => {
                conn.input.consume(consumed);
                if conn.framing() == Some(Framing::LengthPrefixed) {
                    self.send_frame(id, &ServerFrame::Heartbeat);
                }
            }
            Parsed::Frame {
                frame: ClientFrame::FileStart { to, name, data },
                consumed,
            } => {
                let route = relay.route_file(id, to);
                let name = name.to_owned_qstring();
                return self.start_file(id, route, name, data, consumed, saved_parser);
            }
            Parsed::Frame { frame, consumed } => {
                relay.on_frame(id, &frame, *now, actions);
                conn.input.consume(consumed);
            }
            Parsed::Media {
                header,
                payload_len,
                in_hand,
            } => return self.start_media(id, header, payload_len, in_hand, saved_parser),
            Parsed::Body { len, last, .. } => self.forward_body(id, len, last),
        }
        None
    }
}

pub(super) fn user_id_error_text(error: crate::ids::UserIdError) -> &'static str {
    match error {
        crate::ids::UserIdError::Empty => "empty user id",
        crate::ids::UserIdError::TooLong => "user id too long",
        crate::ids::UserIdError::BadEncoding => "user id is not valid UTF-8",
        crate::ids::UserIdError::ControlCharacter => "user id contains a control character",
    }
}
