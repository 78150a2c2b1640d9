//! The relay's decisions: registrations, calls (PROTOCOL.md section 5) and
//! the routing of text and files (section 6), as plain code.
//!
//! [`Relay`] is told what a connection did and answers with [`Action`]s that
//! the server applies: frames to send, connections to close, media links to
//! set or clear, timers to arm. It never sees a socket, a buffer or a token,
//! so every rule here is unit-tested without I/O.

pub mod call_id;
pub mod calls;
pub mod registry;
mod remote;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{debug, info};

use crate::auth::{AuthMode, Keys, TokenError};
use crate::ids::{CallId, ConnId, NodeId, USER_ID_MAX_BYTES, UserId, UserIdError};
use crate::protocol::ErrorCode;
use crate::protocol::frame::{ClientFrame, ServerFrame};
use crate::protocol::qdatastream::{QStr, QString};
use call_id::CallIdSource;
use calls::{Attachment, Call, CallState, Calls, EndReason, Party, Role};
use registry::Registry;
use remote::{accepted, end, link, reject, tell};

/// Something the server must do on the relay's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a frame (in the receiver's framing).
    Send {
        /// Receiver.
        to: ConnId,
        /// The frame.
        frame: ServerFrame,
    },
    /// Report a non-fatal error: length-prefixed connections get ERROR; seed
    /// connections get nothing (PROTOCOL.md section 2), the server logs it.
    Notify {
        /// Receiver.
        to: ConnId,
        /// The code.
        code: ErrorCode,
        /// Detail for the log and the frame.
        detail: String,
    },
    /// Send ERROR and close the connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// The code.
        code: ErrorCode,
        /// Detail for the log and the frame.
        detail: String,
    },
    /// Media from `conn` now goes to `peer` (one action per direction).
    Link {
        /// The sender side.
        conn: ConnId,
        /// Where its media goes (`None`: the peer is detached, its media is
        /// dropped until it comes back).
        peer: Option<ConnId>,
        /// The call that links them.
        call_id: CallId,
        /// The peer's user id (a CALL_END ref naming it ends the call).
        peer_user: UserId,
    },
    /// The call of `conn` goes on, its media now to `peer` (`None`: the
    /// peer is detached): a party came back on a new connection, or left.
    Relink {
        /// The sender side.
        conn: ConnId,
        /// Where its media goes now.
        peer: Option<ConnId>,
    },
    /// The call linking `conn` to a peer ended.
    Unlink {
        /// The connection.
        conn: ConnId,
    },
    /// Media from `conn` now goes to its peer on another node.
    LinkRemote {
        /// The sender side.
        conn: ConnId,
        /// The node the peer is on.
        node: NodeId,
        /// The call that links them (it names the media on the trunk).
        call_id: CallId,
        /// The peer's user id.
        peer_user: UserId,
    },
    /// Tell another node of the cluster (over the trunk to it).
    Forward {
        /// The node.
        node: NodeId,
        /// What happened.
        event: NodeEvent,
    },
    /// Call [`Relay::on_timer`] with `timer` at `at`.
    ArmTimer {
        /// When.
        at: Instant,
        /// What.
        timer: RelayTimer,
    },
}

/// What one node tells another about the calls and messages of their
/// users (PROTOCOL.md section 11; carried by the trunk, docs/cluster.md).
/// Each names the user on the receiving node it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// `caller` (on the sending node) calls `callee` (here).
    Ring {
        /// The call (its id is the caller's node's).
        call_id: CallId,
        /// The caller.
        caller: UserId,
        /// The callee, on the receiving node.
        callee: UserId,
        /// The caller's isVideo byte.
        video: u8,
    },
    /// The remote party accepted the call.
    Accept {
        /// The call.
        call_id: CallId,
    },
    /// The call is refused or rejected with `reason` (busy, offline, or
    /// the callee's own reason): its caller gets `4 callId reason`.
    Reject {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: QString,
    },
    /// The call ended: the party here gets `5 callId`.
    End {
        /// The call.
        call_id: CallId,
    },
    /// `user` registered on the receiving node while in `call_id` with
    /// `peer` on the sending node: the call goes on there (PROTOCOL.md 8.3
    /// across nodes); `user` is told where it stands.
    Resume {
        /// The call.
        call_id: CallId,
        /// The party that moved (on the receiving node now).
        user: UserId,
        /// The other party (on the sending node).
        peer: UserId,
        /// True if `user` placed the call.
        user_is_caller: bool,
        /// True if the call is accepted (else ringing).
        active: bool,
        /// The caller's isVideo byte.
        video: u8,
    },
    /// `user`, the sending node's party of `call_id` with the party here,
    /// registered on `node` (newest wins): this node hands the call over.
    Moved {
        /// The call.
        call_id: CallId,
        /// Who moved.
        user: UserId,
        /// Where to.
        node: NodeId,
    },
    /// A TEXT from `from` (server-set on its node) to `to` (here).
    Text {
        /// The sender.
        from: UserId,
        /// The receiver.
        to: UserId,
        /// The text.
        text: QString,
    },
}

/// A timer the relay asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayTimer {
    /// The ring timeout of a call.
    Ring(CallId),
    /// The resume window of `user`, detached from `call`, ends.
    Resume {
        /// The call.
        call: CallId,
        /// The detached user.
        user: UserId,
        /// The end of the window this timer is for (a user lost again has
        /// a later one; this timer is then stale).
        until: Instant,
    },
}

/// How a connection went away (PROTOCOL.md section 8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// Lost: closed or reset by the peer, failed, or closed as idle. Its
    /// call waits for the user to come back within the resume window.
    Lost,
    /// Closed by the relay for cause (a protocol error, the output limit,
    /// shutdown): its call ends at once.
    Ended,
}

/// A user who left a call's connection behind, within the resume window,
/// and whether it had registered with a token (then only a token can bring
/// it back: PROTOCOL.md section 9).
#[derive(Clone, Debug, PartialEq, Eq)]
struct AwayUser {
    state: Away,
    token: bool,
    /// The end of its resume window.
    until: Instant,
    /// The node it was on when the trunk to that node went down (it comes
    /// back with the trunk), if that is how it was lost.
    lost_with: Option<NodeId>,
}

/// Where the call of a user who is away stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Away {
    /// The call goes on without the user.
    InCall(CallId),
    /// The call ended while the user was away: coming back, it is told so.
    CallEnded(CallId),
}

/// Where a FILE goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRoute {
    /// To this connection, with this sender id.
    Deliver {
        /// Receiver.
        to: ConnId,
        /// The sender's user id, for the `from` field.
        from: UserId,
    },
    /// To `to` on another node (over the trunk), with this sender id.
    Remote {
        /// The node.
        node: NodeId,
        /// Receiver.
        to: UserId,
        /// The sender's user id.
        from: UserId,
    },
    /// Nobody by that id is online: the data is discarded.
    Undeliverable,
}

/// Authentication (PROTOCOL.md section 9): the mode and the keys.
#[derive(Debug)]
pub struct Auth {
    /// `optional` or `require` (`off` is no `Auth` at all).
    pub mode: AuthMode,
    /// The keys of the secret file.
    pub keys: Keys,
}

/// Why a registration is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a valid user id (ERROR `bad_user_id`).
    BadUserId(UserIdError),
    /// Not a valid token (ERROR `unauthorized`).
    Unauthorized(TokenError),
    /// A bare id for a user registered with a token (ERROR `unauthorized`).
    BareIdForTokenUser,
}

impl Refusal {
    /// The ERROR code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::BadUserId(_) => ErrorCode::BadUserId,
            Refusal::Unauthorized(_) | Refusal::BareIdForTokenUser => ErrorCode::Unauthorized,
        }
    }

    /// What was wrong, for the log and the ERROR detail (never the token).
    pub fn text(&self) -> &'static str {
        match self {
            Refusal::BadUserId(error) => error.text(),
            Refusal::Unauthorized(TokenError::Malformed) => "token: malformed",
            Refusal::Unauthorized(TokenError::UnknownKey) => "token: unknown key",
            Refusal::Unauthorized(TokenError::BadSignature) => "token: bad signature",
            Refusal::Unauthorized(TokenError::Expired) => "token: expired",
            // Says no more than that a token is needed: not who is online.
            Refusal::BareIdForTokenUser => "token required for this user id",
        }
    }
}

/// Counters the relay keeps for operators.
#[derive(Clone, Debug, Default)]
pub struct RelayStats {
    /// Calls placed (rung), ever.
    pub calls_started: u64,
    /// Calls accepted, ever.
    pub calls_accepted: u64,
    /// REQUESTs refused (invalid, busy, offline), ever.
    pub calls_refused: u64,
    /// Calls ended, by reason (indexed like [`EndReason::ALL`]).
    pub calls_ended: [u64; EndReason::ALL.len()],
    /// TEXT messages delivered.
    pub texts_relayed: u64,
    /// TEXT messages to nobody online.
    pub texts_undeliverable: u64,
    /// FILE messages routed to an online user.
    pub files_relayed: u64,
    /// FILE messages to nobody online.
    pub files_undeliverable: u64,
}

/// Registrations and calls.
pub struct Relay {
    registry: Registry,
    calls: Calls,
    /// Users detached from a call, within its resume window.
    away: HashMap<UserId, AwayUser>,
    auth: Option<Auth>,
    resume_window: Duration,
    ring_timeout: Duration,
    max_user_id: usize,
    ids: CallIdSource,
    stats: RelayStats,
    /// Users online on other nodes of the cluster (the directory's view).
    remote: HashMap<UserId, NodeId>,
}

impl Relay {
    /// A relay with no users, ringing calls for `ring_timeout`; a lost
    /// party may come back within `resume_window` (zero: calls end when a
    /// party's connection goes).
    pub fn new(ring_timeout: Duration, resume_window: Duration, max_user_id: usize) -> Relay {
        Relay {
            registry: Registry::default(),
            calls: Calls::default(),
            away: HashMap::new(),
            auth: None,
            resume_window,
            ring_timeout,
            max_user_id: max_user_id.min(USER_ID_MAX_BYTES),
            ids: CallIdSource::new(),
            stats: RelayStats::default(),
            remote: HashMap::new(),
        }
    }

    /// New ring timeout and resume window (SIGHUP): for calls from now on.
    pub fn set_timeouts(&mut self, ring_timeout: Duration, resume_window: Duration) {
        self.ring_timeout = ring_timeout;
        self.resume_window = resume_window;
    }

    /// Counters so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Users online.
    pub fn online(&self) -> usize {
        self.registry.online()
    }

    /// Live calls (ringing or active), in constant time.
    pub fn live_calls(&self) -> usize {
        self.calls.len()
    }

    /// (ringing, active) calls (counts every call: for metrics, not hot paths).
    pub fn call_counts(&self) -> (usize, usize) {
        self.calls.counts()
    }

    /// `conn` sent the registration string `text`: a valid id, or with
    /// authentication on a valid token (PROTOCOL.md section 9, checked at
    /// `unix_now`), registers its user (a connection already holding it is
    /// replaced); anything else is refused, and the caller closes `conn`
    /// with the refusal's ERROR code. Returns the user.
    pub fn register(
        &mut self,
        conn: ConnId,
        text: &[u8],
        now: Instant,
        unix_now: u64,
        out: &mut Vec<Action>,
    ) -> Result<UserId, Refusal> {
        let (user, token) = self.authenticate(text, unix_now)?;
        self.register_as(conn, user.clone(), token, now, out);
        Ok(user)
    }

    /// Who `text` registers as, and whether with a token.
    fn authenticate(&self, text: &[u8], unix_now: u64) -> Result<(UserId, bool), Refusal> {
        let bare = || UserId::from_utf8(text, self.max_user_id).map_err(Refusal::BadUserId);
        let Some(auth) = &self.auth else {
            return Ok((bare()?, false));
        };
        // With tokens required, anything that is not a valid token is
        // unauthorized, even bytes that are no id at all.
        let not_a_token = match auth.mode {
            AuthMode::Require => Refusal::Unauthorized(TokenError::Malformed),
            _ => Refusal::BadUserId(UserIdError::BadEncoding),
        };
        let string = std::str::from_utf8(text).map_err(|_| not_a_token)?;
        if auth.mode == AuthMode::Optional && !crate::auth::token_shaped(string) {
            let user = bare()?;
            if self.held_by_token(&user) {
                return Err(Refusal::BareIdForTokenUser);
            }
            return Ok((user, false));
        }
        let name = auth
            .keys
            .verify(string, unix_now)
            .map_err(Refusal::Unauthorized)?;
        let user = UserId::from_string(name.to_owned(), self.max_user_id)
            .map_err(|_| Refusal::Unauthorized(TokenError::Malformed))?;
        Ok((user, true))
    }

    /// True if `user` registered with a token and is online or away.
    fn held_by_token(&self, user: &UserId) -> bool {
        let online = self
            .registry
            .lookup(user)
            .and_then(|conn| self.registry.session(conn))
            .is_some_and(|session| session.token);
        online || self.away.get(user).is_some_and(|away| away.token)
    }

    /// Turns authentication on (`Some`) or off, or swaps the keys (SIGHUP).
    pub fn set_auth(&mut self, auth: Option<Auth>) {
        self.auth = auth;
    }

    /// `conn` registered the valid id `user` (see [`Relay::register`]).
    ///
    /// With a resume window (PROTOCOL.md 8.3), the new connection takes the
    /// place of the old one in its call, and a user who was detached from a
    /// call comes back into it; either way it is told where the call stands.
    pub fn register_user(
        &mut self,
        conn: ConnId,
        user: UserId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.register_as(conn, user, false, now, out);
    }

    /// [`Relay::register_user`], recording whether `user` came with a token.
    fn register_as(
        &mut self,
        conn: ConnId,
        user: UserId,
        token: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        debug!("{conn} registered as {user}");
        if let Some(old) = self.registry.register(conn, user.clone(), token) {
            debug!("{old} replaced by {conn} for {user}");
            let call = self.registry.session(old).and_then(|s| s.call.clone());
            match call {
                Some(call_id) if !self.resume_window.is_zero() => {
                    self.set_call(old, None);
                    self.attach(&call_id, &user, conn, out);
                }
                _ => self.leave(old, Departure::Ended, now, out),
            }
            self.registry.remove(old);
            out.push(Action::Close {
                conn: old,
                code: ErrorCode::Replaced,
                detail: "a newer connection registered this user id".to_owned(),
            });
            return;
        }
        match self.away.remove(&user).map(|away| away.state) {
            Some(Away::InCall(call_id)) => self.attach(&call_id, &user, conn, out),
            Some(Away::CallEnded(call_id)) => {
                info!("call {call_id}: {user} came back after it ended");
                out.push(Action::Send {
                    to: conn,
                    frame: ServerFrame::CallEnd { call_id },
                });
            }
            None => {}
        }
    }

    /// `conn` becomes `user`'s party in `call_id` and is told where the
    /// call stands (PROTOCOL.md 8.3): accepted, `3 callId`; ringing to it,
    /// the CALL_REQUEST again; ringing from it, nothing.
    fn attach(&mut self, call_id: &CallId, user: &UserId, conn: ConnId, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(party) = call.party_of_user_mut(user) else {
            return;
        };
        party.at = Attachment::Attached(conn);
        let role = call.role_of(conn);
        let (state, video, caller) = (call.state, call.video, call.caller.user.clone());
        let other = call.other_than_user(user).clone();
        debug!("call {call_id}: {user} attached on {conn}");
        self.set_call(conn, Some(call_id.clone()));
        match (state, role) {
            (CallState::Active, _) => {
                out.push(Action::Send {
                    to: conn,
                    frame: ServerFrame::CallAccept {
                        call_id: call_id.clone(),
                    },
                });
                out.push(link(conn, &other, call_id));
                if let Some(other) = other.conn() {
                    out.push(Action::Relink {
                        conn: other,
                        peer: Some(conn),
                    });
                }
            }
            (CallState::Ringing { .. }, Some(Role::Callee)) => out.push(Action::Send {
                to: conn,
                frame: ServerFrame::CallRequest {
                    call_id: call_id.clone(),
                    caller,
                    video,
                },
            }),
            (CallState::Ringing { .. }, _) => {}
        }
    }

    /// `conn` is gone: its id goes offline. A call it was in ends for the
    /// other party, unless the connection was lost and a resume window is
    /// set: then the party is detached and the call waits for the user to
    /// register again (PROTOCOL.md 8.3).
    pub fn leave(
        &mut self,
        conn: ConnId,
        departure: Departure,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let session = self.registry.remove(conn);
        let Some((user, Some(call_id), session_token)) = session.map(|s| (s.user, s.call, s.token))
        else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if departure == Departure::Ended || self.resume_window.is_zero() {
            let other = call.other_party(conn).clone();
            self.end_call(&call_id, EndReason::PartyLeft, &[other], out);
            return;
        }
        let until = now + self.resume_window;
        if let Some(party) = call.party_of_user_mut(&user) {
            party.at = Attachment::Detached { until };
        }
        let other = call.other_than_user(&user).conn();
        if let (CallState::Active, Some(other)) = (call.state, other) {
            out.push(Action::Relink {
                conn: other,
                peer: None,
            });
        }
        info!(
            "call {call_id}: {user} detached; waiting {:?} for it to come back",
            self.resume_window
        );
        self.await_return(call_id, user, session_token, until, out);
    }

    /// `user`, detached from `call_id`, may come back until `until` (only
    /// with a token if `token`): remembered as away, its window timed.
    fn await_return(
        &mut self,
        call_id: CallId,
        user: UserId,
        token: bool,
        until: Instant,
        out: &mut Vec<Action>,
    ) {
        self.away.insert(
            user.clone(),
            AwayUser {
                state: Away::InCall(call_id.clone()),
                token,
                until,
                lost_with: None,
            },
        );
        out.push(Action::ArmTimer {
            at: until,
            timer: RelayTimer::Resume {
                call: call_id,
                user,
                until,
            },
        });
    }

    /// The user id `conn` registered, if it did.
    pub fn user_of(&self, conn: ConnId) -> Option<&UserId> {
        self.registry.session(conn).map(|session| &session.user)
    }

    /// A signaling or TEXT frame from registered `conn`. Registration,
    /// heartbeats and FILE headers have their own entry points.
    pub fn on_frame(
        &mut self,
        conn: ConnId,
        frame: &ClientFrame<'_>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.registry.session(conn).is_none() {
            return;
        }
        match *frame {
            ClientFrame::CallRequest { callee, video } => {
                self.request(conn, callee, video, now, out)
            }
            ClientFrame::CallAccept { call_ref } => self.accept(conn, call_ref, out),
            ClientFrame::CallReject { call_ref, reason } => {
                self.reject(conn, call_ref, reason, out)
            }
            ClientFrame::CallEnd { call_ref } => self.hang_up(conn, call_ref, out),
            ClientFrame::Text { to, text } => self.text(conn, to, text, out),
            ClientFrame::Register { .. }
            | ClientFrame::FileStart { .. }
            | ClientFrame::Heartbeat => {}
        }
    }

    /// Where a FILE from `conn` to `to` would go. No side effect: the
    /// server may ask again for the same FILE after waiting for the
    /// receiver; it reports the outcome with [`Relay::note_file`].
    pub fn route_file(&self, conn: ConnId, to: QStr<'_>) -> FileRoute {
        let Some(from) = self.user_of(conn).cloned() else {
            return FileRoute::Undeliverable;
        };
        if let (None, Some((receiver, node))) = (self.online_user(to), self.remote_user(to)) {
            return FileRoute::Remote {
                node,
                to: receiver,
                from,
            };
        }
        match self.online_user(to) {
            Some(receiver) => FileRoute::Deliver { to: receiver, from },
            None => {
                debug!(
                    "{conn} ({from}) FILE to {:?}: not online",
                    to.to_string_lossy()
                );
                FileRoute::Undeliverable
            }
        }
    }

    /// Counts a FILE the server delivered or discarded.
    pub fn note_file(&mut self, delivered: bool) {
        if delivered {
            self.stats.files_relayed += 1;
        } else {
            self.stats.files_undeliverable += 1;
        }
    }

    /// A timer the relay armed has fired.
    pub fn on_timer(&mut self, timer: &RelayTimer, now: Instant, out: &mut Vec<Action>) {
        match timer {
            RelayTimer::Ring(call_id) => self.ring_timeout(call_id, now, out),
            RelayTimer::Resume { call, user, until } => {
                self.resume_expired(call, user, *until, out)
            }
        }
    }

    /// `user`'s resume window in `call_id` ended: still detached, the call
    /// ends (the other party gets CALL_END); a call that already ended
    /// while it was away is forgotten.
    fn resume_expired(
        &mut self,
        call_id: &CallId,
        user: &UserId,
        until: Instant,
        out: &mut Vec<Action>,
    ) {
        // A user who came back and was lost again has a later window (and
        // timer) of its own: this one is stale.
        let Some(away) = self.away.get(user).filter(|away| away.until == until) else {
            return;
        };
        match &away.state {
            Away::CallEnded(id) if id == call_id => {
                self.away.remove(user);
            }
            Away::InCall(id) if id == call_id => {
                self.away.remove(user);
                let Some(call) = self.calls.get(call_id) else {
                    return;
                };
                let other = call.other_than_user(user).clone();
                info!("call {call_id}: {user} did not come back within the resume window");
                self.end_call(call_id, EndReason::ResumeExpired, &[other], out);
            }
            _ => {}
        }
    }

    fn ring_timeout(&mut self, call_id: &CallId, now: Instant, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if let CallState::Ringing { deadline } = call.state
            && now >= deadline
        {
            let reason = QString::from_str("timeout");
            tell(&call.caller, reject(call_id, reason), out);
            tell(&call.callee, end(call_id), out);
            self.end_call(call_id, EndReason::RingTimeout, &[], out);
        }
    }

    /// Ends every call, telling both parties (graceful shutdown).
    pub fn end_all(&mut self, out: &mut Vec<Action>) {
        let ids: Vec<CallId> = self.calls.ids().cloned().collect();
        for call_id in ids {
            let Some(call) = self.calls.get(&call_id) else {
                continue;
            };
            let both = [call.caller.clone(), call.callee.clone()];
            self.end_call(&call_id, EndReason::Shutdown, &both, out);
        }
        self.away.clear();
    }

    /// False once a timer can no longer do anything (its call was answered
    /// or ended), so the server may forget it.
    pub fn timer_is_live(&self, timer: &RelayTimer) -> bool {
        match timer {
            RelayTimer::Ring(call_id) => self
                .calls
                .get(call_id)
                .is_some_and(|call| matches!(call.state, CallState::Ringing { .. })),
            RelayTimer::Resume { call, user, until } => self.away.get(user).is_some_and(|away| {
                away.until == *until
                    && matches!(&away.state, Away::InCall(id) | Away::CallEnded(id) if id == call)
            }),
        }
    }

    fn online_user(&self, name: QStr<'_>) -> Option<ConnId> {
        let user = UserId::from_string(name.to_string_strict()?, self.max_user_id).ok()?;
        self.registry.lookup(&user)
    }

    fn request(
        &mut self,
        conn: ConnId,
        callee: QStr<'_>,
        video: u8,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(caller) = self.user_of(conn).cloned() else {
            return;
        };
        let callee_user = callee
            .to_string_strict()
            .and_then(|name| UserId::from_string(name, self.max_user_id).ok());
        let refusal = match &callee_user {
            None => Some("invalid"),
            Some(user) if *user == caller => Some("invalid"),
            Some(_) if self.in_call(conn) => Some("busy"),
            Some(user)
                if matches!(
                    self.away.get(user).map(|away| &away.state),
                    Some(Away::InCall(_))
                ) =>
            {
                Some("busy")
            }
            Some(user) => match self.registry.lookup(user) {
                // On another node, that node decides (busy or offline).
                None if self.remote.contains_key(user) => None,
                None => Some("offline"),
                Some(callee_conn) if self.in_call(callee_conn) => Some("busy"),
                Some(_) => None,
            },
        };
        let call_id = self.fresh_id();
        let (Some(callee_user), None) = (callee_user, refusal) else {
            let reason = refusal.unwrap_or("invalid");
            self.stats.calls_refused += 1;
            debug!(
                "{conn} ({caller}) call to {:?} refused: {reason} (call {call_id})",
                callee.to_string_lossy()
            );
            out.push(Action::Send {
                to: conn,
                frame: ServerFrame::CallReject {
                    call_id,
                    reason: QString::from_str(reason),
                },
            });
            return;
        };
        let callee = match self.registry.lookup(&callee_user) {
            Some(callee_conn) => Party::attached(callee_conn, callee_user),
            None => match self.remote.get(&callee_user) {
                Some(node) => Party::remote(node.clone(), callee_user),
                None => return,
            },
        };
        // The caller's node keeps the ring timeout of every call it places.
        let deadline = now + self.ring_timeout;
        info!(
            "call {call_id}: {caller} -> {}{} ringing (video {video})",
            callee.user,
            callee
                .node()
                .map(|node| format!(" on {node}"))
                .unwrap_or_default()
        );
        self.stats.calls_started += 1;
        let ring = ServerFrame::CallRequest {
            call_id: call_id.clone(),
            caller: caller.clone(),
            video,
        };
        tell(&callee, ring, out);
        out.push(Action::ArmTimer {
            at: deadline,
            timer: RelayTimer::Ring(call_id.clone()),
        });
        self.set_call(conn, Some(call_id.clone()));
        if let Some(callee_conn) = callee.conn() {
            self.set_call(callee_conn, Some(call_id.clone()));
        }
        self.calls.insert(Call {
            id: call_id,
            caller: Party::attached(conn, caller),
            callee,
            video,
            state: CallState::Ringing { deadline },
        });
    }

    fn accept(&mut self, conn: ConnId, call_ref: QStr<'_>, out: &mut Vec<Action>) {
        let Some(call_id) = self.resolve(conn, call_ref) else {
            return self.no_such_call(conn, "CALL_ACCEPT", call_ref, out);
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        match (call.role_of(conn), call.state) {
            (Some(Role::Callee), CallState::Ringing { .. }) => {
                call.state = CallState::Active;
                self.stats.calls_accepted += 1;
                info!("call {call_id}: accepted by {}", call.callee.user);
                let (caller, callee) = (call.caller.clone(), call.callee.clone());
                for (me, peer) in [(&caller, &callee), (&callee, &caller)] {
                    // A detached caller hears of it when it comes back; a
                    // caller on another node from its node.
                    tell(me, accepted(&call_id), out);
                    if let Some(me_conn) = me.conn() {
                        out.push(link(me_conn, peer, &call_id));
                    }
                }
            }
            (Some(Role::Callee), CallState::Active) => {
                debug!("call {call_id}: accepted again by {conn}; ignored");
            }
            _ => self.no_such_call(conn, "CALL_ACCEPT", call_ref, out),
        }
    }

    fn reject(
        &mut self,
        conn: ConnId,
        call_ref: QStr<'_>,
        reason: QStr<'_>,
        out: &mut Vec<Action>,
    ) {
        let Some(call_id) = self.resolve(conn, call_ref) else {
            return self.no_such_call(conn, "CALL_REJECT", call_ref, out);
        };
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let both = [call.caller.clone(), call.callee.clone()];
        match (call.role_of(conn), call.state) {
            (Some(Role::Callee), CallState::Ringing { .. }) => {
                info!(
                    "call {call_id}: rejected by {} ({:?})",
                    call.callee.user,
                    reason.to_string_lossy()
                );
                for party in &both {
                    tell(party, reject(&call_id, reason.to_owned_qstring()), out);
                }
                self.end_call(&call_id, EndReason::Rejected, &[], out);
            }
            (Some(Role::Caller), _) => self.end_call(&call_id, EndReason::Cancelled, &both, out),
            (Some(Role::Callee), CallState::Active) => {
                self.end_call(&call_id, EndReason::Hangup, &both, out)
            }
            (None, _) => self.no_such_call(conn, "CALL_REJECT", call_ref, out),
        }
    }

    fn hang_up(&mut self, conn: ConnId, call_ref: QStr<'_>, out: &mut Vec<Action>) {
        let Some(call_id) = self.resolve(conn, call_ref) else {
            return self.no_such_call(conn, "CALL_END", call_ref, out);
        };
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let both = [call.caller.clone(), call.callee.clone()];
        self.end_call(&call_id, EndReason::Hangup, &both, out);
    }

    fn text(&mut self, conn: ConnId, to: QStr<'_>, text: QStr<'_>, out: &mut Vec<Action>) {
        let Some(from) = self.user_of(conn).cloned() else {
            return;
        };
        if self.online_user(to).is_none()
            && let Some((receiver, node)) = self.remote_user(to)
        {
            self.stats.texts_relayed += 1;
            debug!("{conn} ({from}) TEXT to {receiver} on {node}");
            let text = text.to_owned_qstring();
            let event = NodeEvent::Text {
                from,
                to: receiver,
                text,
            };
            out.push(Action::Forward { node, event });
            return;
        }
        match self.online_user(to) {
            Some(receiver) => {
                self.stats.texts_relayed += 1;
                debug!("{conn} ({from}) TEXT to {receiver}");
                out.push(Action::Send {
                    to: receiver,
                    frame: ServerFrame::Text {
                        from,
                        text: text.to_owned_qstring(),
                    },
                });
            }
            None => {
                self.stats.texts_undeliverable += 1;
                let detail = format!("{:?} is not online", to.to_string_lossy());
                debug!(
                    "{conn} ({from}) TEXT to {}: not online",
                    to.to_string_lossy()
                );
                out.push(Action::Notify {
                    to: conn,
                    code: ErrorCode::Offline,
                    detail,
                });
            }
        }
    }

    /// Removes a call, unlinks its attached parties and sends CALL_END to
    /// the parties in `notify` (detached parties are told when they come
    /// back within their window; remote ones by their node).
    fn end_call(
        &mut self,
        call_id: &CallId,
        reason: EndReason,
        notify: &[Party],
        out: &mut Vec<Action>,
    ) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        info!(
            "call {call_id}: ended ({}) between {} and {}",
            reason.as_str(),
            call.caller.user,
            call.callee.user
        );
        if let Some(index) = EndReason::ALL.iter().position(|r| *r == reason) {
            self.stats.calls_ended[index] += 1;
        }
        for party in notify {
            tell(party, end(call_id), out);
        }
        for party in [&call.caller, &call.callee] {
            match party.at {
                Attachment::Remote(_) => {}
                Attachment::Attached(conn) => {
                    self.set_call(conn, None);
                    if call.state == CallState::Active {
                        out.push(Action::Unlink { conn });
                    }
                }
                Attachment::Detached { .. } => {
                    if let Some(away) = self.away.get_mut(&party.user) {
                        away.state = Away::CallEnded(call_id.clone());
                    }
                }
            }
        }
    }

    /// The sender's call that `call_ref` names: its id, the other party's
    /// user id, or empty/null for "my current call".
    fn resolve(&self, conn: ConnId, call_ref: QStr<'_>) -> Option<CallId> {
        let call_id = self.registry.session(conn)?.call.clone()?;
        let call = self.calls.get(&call_id)?;
        if call_ref.is_empty() {
            return Some(call_id);
        }
        let named = call_ref.to_string_strict()?;
        (named == call_id.as_str() || named == call.other_party(conn).user.as_str())
            .then_some(call_id)
    }

    fn no_such_call(&self, conn: ConnId, what: &str, call_ref: QStr<'_>, out: &mut Vec<Action>) {
        let shown = call_ref.to_string_lossy();
        debug!("{conn} {what} {shown:?}: names no call of the sender; ignored");
        out.push(Action::Notify {
            to: conn,
            code: ErrorCode::NoSuchCall,
            detail: format!("{what} {shown:?} names no call of yours"),
        });
    }

    fn in_call(&self, conn: ConnId) -> bool {
        self.registry
            .session(conn)
            .is_some_and(|session| session.call.is_some())
    }

    fn set_call(&mut self, conn: ConnId, call: Option<CallId>) {
        if let Some(session) = self.registry.session_mut(conn) {
            session.call = call;
        }
    }

    fn fresh_id(&mut self) -> CallId {
        loop {
            let id = self.ids.next_id();
            if !self.calls.contains(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests;
