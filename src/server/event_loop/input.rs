//! Reading and parsing: each ready connection alternates handling its
//! buffered input with one read (a bounded number per turn). Each piece of
//! input is peeked, handed to the relay (frames) or the pipe (media, FILE,
//! bodies), and committed only once handled; a piece its receiver cannot
//! take yet stays unconsumed while the sender waits.

use super::*;
use crate::relay::Refusal;

/// The Unix time in seconds (tokens carry their expiry in it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

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
    /// ready queue. What the last read brought is handled before the turn
    /// ends (a short last read leaves no readiness to come back for). End of
    /// input closes the connection once every byte before it has been
    /// handled.
    pub(super) fn service(&mut self, id: ConnId) {
        for reads in 0..=READS_PER_TURN {
            if self.drain_input(id) == Flow::Stop {
                return;
            }
            let now = self.now;
            let (pool, max_input) = (&mut self.pool, self.max_input);
            let Some(conn) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
                return;
            };
            match conn.read_side {
                ReadSide::Eof => {
                    conn.input.release_if_empty(pool);
                    if conn.is_closing() {
                        self.finish_if_done(id);
                    } else {
                        self.begin_close(id, CloseReason::PeerClosed);
                    }
                    return;
                }
                ReadSide::Drained => {
                    conn.input.release_if_empty(pool);
                    return;
                }
                ReadSide::Ready | ReadSide::ReadyUntilEof => {}
            }
            if reads == READS_PER_TURN {
                break;
            }
            let was_sniffing = conn.transport.is_sniffing();
            let outcome = conn.read_some(pool, max_input);
            let (tls, handshaking) = (conn.transport.is_tls(), conn.transport.handshaking());
            if was_sniffing && tls {
                self.counters.tls_accepted += 1;
            }
            if handshaking && matches!(outcome, ReadOutcome::Closed | ReadOutcome::Error) {
                self.tls_handshake_failed(id);
            }
            let Some(conn) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
                return;
            };
            if conn.transport.wants_write() {
                // TLS handshake records to write: flush and watch for room.
                self.mark_dirty(id);
            }
            let Some(conn) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
                return;
            };
            match outcome {
                ReadOutcome::Read(_) => conn.last_progress = now,
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
            .is_some_and(|conn| conn.read_side != ReadSide::Drained)
        {
            self.mark_ready(id);
        }
    }

    /// Handles the parsable input in the connection's buffer.
    pub(super) fn drain_input(&mut self, id: ConnId) -> Flow {
        loop {
            if let Some(flow) = self.step(id) {
                return flow;
            }
        }
    }

    /// Handles one piece of input: read -> peek -> relay or pipe -> commit.
    /// `None` to go on, `Some` to stop.
    fn step(&mut self, id: ConnId) -> Option<Flow> {
        let runs = self.takes_media_runs(id);
        let Server {
            conns,
            relay,
            actions,
            config,
            counters,
            now,
            auth_failures,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id.index()).filter(|c| c.id == id) else {
            return Some(Flow::Stop);
        };
        if conn.is_closing() {
            let all = conn.input.len();
            conn.input.consume(all);
            return Some(Flow::ReadMore);
        }
        if conn.outbound.paused_on().is_some() {
            return Some(Flow::Stop);
        }
        if conn.input.is_empty() || conn.parser.choose_framing(conn.input.data()).is_none() {
            return Some(Flow::ReadMore);
        }
        if config.tls.require && conn.transport.is_plain() {
            // Told in its own framing, now that it has one.
            let error = ProtocolError {
                code: ErrorCode::TlsRequired,
                what: "this relay takes TLS connections only",
            };
            self.protocol_error(id, error);
            return Some(Flow::Stop);
        }
        let context = ParseContext {
            limits: &config.limits,
            user_id: &conn.registration,
            seed_phase: Connection::seed_phase(conn.link.as_deref(), conn.grace_until, *now),
            media_runs: runs,
        };
        let (parsed, advance) = match conn.parser.peek(conn.input.data(), &context) {
            Ok(peeked) => peeked,
            Err(error) => {
                self.protocol_error(id, error);
                return Some(Flow::Stop);
            }
        };
        let step = match parsed {
            Parsed::NeedMore => return Some(Flow::ReadMore),
            Parsed::Stale { .. } => {
                counters.media_dropped_stale += 1;
                Step::Done
            }
            Parsed::Frame {
                frame: ClientFrame::Register { .. },
                ..
            } if auth_failures.blocked(conn.addr.ip(), *now) => {
                // Over the failure limit since it connected: refused before
                // its token is even looked at.
                let refusal = Refusal::Unauthorized(crate::auth::TokenError::Malformed);
                let error = ProtocolError {
                    code: refusal.code(),
                    what: "too many failed authentications from this address",
                };
                self.protocol_error(id, error);
                return Some(Flow::Stop);
            }
            Parsed::Frame {
                frame: ClientFrame::Register { user, .. },
                ..
            } => match relay.register(id, user, *now, unix_now(), actions) {
                Ok(registered) => {
                    conn.user_id = registered.as_str().as_bytes().into();
                    conn.registration = user.into();
                    conn.life = Life::Registered;
                    self.registered(id);
                    Step::Done
                }
                Err(refusal) => {
                    if let Refusal::Unauthorized(_) | Refusal::BareIdForTokenUser = refusal {
                        self.auth_failed(id, refusal);
                    }
                    let error = ProtocolError {
                        code: refusal.code(),
                        what: refusal.text(),
                    };
                    self.protocol_error(id, error);
                    return Some(Flow::Stop);
                }
            },
            Parsed::Frame {
                frame: ClientFrame::Heartbeat,
                ..
            } => {
                if conn.framing() == Some(Framing::LengthPrefixed) {
                    self.send_frame(id, &ServerFrame::Heartbeat);
                }
                Step::Done
            }
            Parsed::Frame {
                frame: ClientFrame::FileStart { to, name, data },
                ..
            } => {
                let route = relay.route_file(id, to);
                let name = name.to_owned_qstring();
                self.pipe_file(id, route, name, data)
            }
            Parsed::Frame { frame, .. } => {
                relay.on_frame(id, &frame, *now, actions);
                Step::Done
            }
            Parsed::Media {
                header,
                payload_len,
                in_hand,
            } => self.pipe_media(id, header, payload_len, in_hand),
            Parsed::Body { kind, len, last } => self.pipe_body(id, kind, len, last),
            Parsed::MediaRun(run) => self.pipe_media_run(id, run),
        };
        let held_for = match step {
            Step::Wait { on, at } => {
                self.pause(id, on, at);
                return Some(Flow::Stop);
            }
            Step::Done => None,
            Step::DoneHeld(to) => Some(to),
        };
        let Some(conn) = self.conn_mut(id) else {
            return Some(Flow::Stop);
        };
        conn.parser.commit(advance);
        conn.input.consume(advance.consumed());
        let mut held_for: Vec<ConnId> = held_for.into_iter().collect();
        held_for.extend(self.apply_actions());
        self.close_queued();
        self.wait_behind_held(id, &held_for)
    }

    /// The piece `id` just sent made frames wait behind another sender's
    /// frame into some receiver: past the soft limit, `id` waits until that
    /// frame completes (text and signaling are never dropped).
    fn wait_behind_held(&mut self, id: ConnId, held_for: &[ConnId]) -> Option<Flow> {
        let soft = self.config.output_soft;
        let over = held_for.iter().copied().find(|to| {
            *to != id
                && self.receiver_view(*to).is_some_and(|view| {
                    crate::server::pipe::decide::producer_waits(id, &view, soft)
                })
        })?;
        self.pause(id, over, PausedAt::FrameStart);
        Some(Flow::Stop)
    }

    /// A TLS handshake of `id` failed: counted, and logged within the log
    /// budget (PROTOCOL.md 10, 8.5).
    fn tls_handshake_failed(&mut self, id: ConnId) {
        self.counters.tls_handshake_failures += 1;
        let level = self.budgeted("tls_handshake", log::Level::Warn);
        if let Some(conn) = self.conn(id) {
            log!(level, "{id} ({}): TLS handshake failed", conn.addr);
        }
    }

    /// An authentication failure of `id`: counted by reason, and against
    /// its address (`--auth-fail-limit`).
    fn auth_failed(&mut self, id: ConnId, refusal: Refusal) {
        self.counters.auth_failure(refusal);
        let (now, limit) = (self.now, self.config.auth.fail_limit);
        if let Some(ip) = self.conn(id).map(|c| c.addr.ip()) {
            self.auth_failures.record(ip, now, limit);
        }
    }

    /// `id` has just registered: admission stops counting it, and its
    /// liveness deadline follows the idle timeout from now on.
    fn registered(&mut self, id: ConnId) {
        self.unregistered -= 1;
        if let Some(user) = self.relay.user_of(id).cloned() {
            self.cluster_registered(&user);
        }
        let level = self.budgeted("registered", log::Level::Info);
        if let Some(conn) = self.conn(id) {
            log!(
                level,
                "{id} ({}) registered as {}",
                conn.addr,
                String::from_utf8_lossy(&conn.user_id)
            );
        }
        // The liveness deadline armed at accept checks idleness from then
        // on; only an idle timeout shorter than the registration timeout
        // needs an earlier check.
        let timeouts = &self.config.timeouts;
        if timeouts.idle < timeouts.register {
            self.timers
                .arm(self.now + timeouts.idle, TimerKey::Liveness(id));
        }
    }
}
