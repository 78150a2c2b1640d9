//! The relay across nodes (PROTOCOL.md section 11): a call or a TEXT whose
//! other party is on another node of the cluster.
//!
//! Each node keeps the calls of its own users. A call between nodes is held
//! on both: the caller's node places it (and keeps its ring timeout), the
//! callee's node answers it; each applies section 5 to its own party and
//! tells the other node what its party must hear as a [`NodeEvent`]. Plain
//! code like the rest of the relay: which node a user is on comes from the
//! directory (the server keeps it current with [`Relay::set_remote`]).

use std::time::Instant;

use log::{debug, info};

use super::calls::{Attachment, Call, CallState, EndReason, Party};
use super::{Action, Away, NodeEvent, Relay, RelayTimer};

/// A [`NodeEvent::Resume`]'s fields.
struct Resumed {
    call_id: CallId,
    user: UserId,
    peer: UserId,
    user_is_caller: bool,
    active: bool,
    video: u8,
}
use crate::ids::{CallId, ConnId, NodeId, UserId};
use crate::protocol::frame::ServerFrame;
use crate::protocol::qdatastream::{QStr, QString};

/// Sends `frame` to `party`: to its connection if attached here, as a
/// [`NodeEvent`] to its node if remote, nowhere if detached (it is told
/// where the call stands when it comes back).
pub(super) fn tell(party: &Party, frame: ServerFrame, out: &mut Vec<Action>) {
    match &party.at {
        Attachment::Attached(conn) => out.push(Action::Send { to: *conn, frame }),
        Attachment::Remote(node) => {
            if let Some(event) = event_for(&party.user, frame) {
                out.push(Action::Forward {
                    node: node.clone(),
                    event,
                });
            }
        }
        Attachment::Detached { .. } => {}
    }
}

/// The event that tells a remote `user` what `frame` would tell it.
fn event_for(user: &UserId, frame: ServerFrame) -> Option<NodeEvent> {
    Some(match frame {
        ServerFrame::CallRequest {
            call_id,
            caller,
            video,
        } => NodeEvent::Ring {
            call_id,
            caller,
            callee: user.clone(),
            video,
        },
        ServerFrame::CallAccept { call_id } => NodeEvent::Accept { call_id },
        ServerFrame::CallReject { call_id, reason } => NodeEvent::Reject { call_id, reason },
        ServerFrame::CallEnd { call_id } => NodeEvent::End { call_id },
        _ => return None,
    })
}

/// Media from `conn` goes to `peer`, here or on another node.
pub(super) fn link(conn: ConnId, peer: &Party, call_id: &CallId) -> Action {
    match &peer.at {
        Attachment::Remote(node) => Action::LinkRemote {
            conn,
            node: node.clone(),
            call_id: call_id.clone(),
            peer_user: peer.user.clone(),
        },
        _ => Action::Link {
            conn,
            peer: peer.conn(),
            call_id: call_id.clone(),
            peer_user: peer.user.clone(),
        },
    }
}

/// `3 callId`.
pub(super) fn accepted(call_id: &CallId) -> ServerFrame {
    ServerFrame::CallAccept {
        call_id: call_id.clone(),
    }
}

/// `4 callId reason`.
pub(super) fn reject(call_id: &CallId, reason: QString) -> ServerFrame {
    ServerFrame::CallReject {
        call_id: call_id.clone(),
        reason,
    }
}

/// `5 callId`.
pub(super) fn end(call_id: &CallId) -> ServerFrame {
    ServerFrame::CallEnd {
        call_id: call_id.clone(),
    }
}

impl Relay {
    /// The directory says `user` is online on `node` (`None`: nowhere else).
    /// A user online here is found here first whatever this says.
    pub fn set_remote(&mut self, user: UserId, node: Option<NodeId>) {
        match node {
            Some(node) => {
                self.remote.insert(user, node);
            }
            None => {
                self.remote.remove(&user);
            }
        }
    }

    /// Forgets every remote user (the directory is being loaded afresh).
    pub fn clear_remote(&mut self) {
        self.remote.clear();
    }

    /// Users the directory places on other nodes.
    pub fn remote_users(&self) -> usize {
        self.remote.len()
    }

    /// Where media of `call_id` from another node goes: the party here, if
    /// the call is accepted and the party attached.
    pub fn media_receiver(&self, call_id: &CallId) -> Option<ConnId> {
        let call = self.calls.get(call_id)?;
        (call.state == CallState::Active)
            .then(|| call.local_party().conn())
            .flatten()
    }

    /// The connection `user` is registered on here, if any.
    pub fn local_conn(&self, user: &UserId) -> Option<ConnId> {
        self.registry.lookup(user)
    }

    /// `name` as a user online on another node (and not here).
    pub(super) fn remote_user(&self, name: QStr<'_>) -> Option<(UserId, NodeId)> {
        let user = UserId::from_string(name.to_string_strict()?, self.max_user_id).ok()?;
        let node = self.remote.get(&user)?.clone();
        Some((user, node))
    }

    /// `node` told this node `event`.
    pub fn on_node_event(
        &mut self,
        node: &NodeId,
        event: NodeEvent,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match event {
            NodeEvent::Ring {
                call_id,
                caller,
                callee,
                video,
            } => self.remote_ring(node, call_id, caller, callee, video, now, out),
            NodeEvent::Accept { call_id } => self.remote_accept(node, &call_id, out),
            NodeEvent::Reject { call_id, reason } => {
                let Some(call) = self.call_with(node, &call_id) else {
                    return;
                };
                let local = call.local_party().clone();
                info!("call {call_id}: rejected on {node} ({reason:?})");
                tell(&local, reject(&call_id, reason), out);
                self.end_call(&call_id, EndReason::Rejected, &[], out);
            }
            NodeEvent::End { call_id } => {
                let Some(call) = self.call_with(node, &call_id) else {
                    return;
                };
                let local = call.local_party().clone();
                self.end_call(&call_id, EndReason::Hangup, &[local], out);
            }
            NodeEvent::Resume {
                call_id,
                user,
                peer,
                user_is_caller,
                active,
                video,
            } => {
                let resumed = Resumed {
                    call_id,
                    user,
                    peer,
                    user_is_caller,
                    active,
                    video,
                };
                self.take_over(node, resumed, now, out);
            }
            NodeEvent::Moved {
                call_id,
                user,
                node: to,
            } => {
                if self.call_with(node, &call_id).is_some() {
                    self.hand_over(&call_id, &user, &to, out);
                }
            }
            NodeEvent::Text { from, to, text } => match self.registry.lookup(&to) {
                Some(receiver) => {
                    self.stats.texts_relayed += 1;
                    out.push(Action::Send {
                        to: receiver,
                        frame: ServerFrame::Text { from, text },
                    });
                }
                None => {
                    self.stats.texts_undeliverable += 1;
                    debug!("TEXT from {from} on {node} to {to}: not online here");
                }
            },
        }
    }

    /// `conn`'s user registered on `node`, which wins (newest wins across
    /// nodes): its call goes there. If the other party is here, this node
    /// hands the call over; if it is on a third node, that node does and
    /// the call is forgotten here. Call before closing `conn`.
    pub fn moved(&mut self, conn: ConnId, node: &NodeId, out: &mut Vec<Action>) {
        let Some(session) = self.registry.session(conn) else {
            return;
        };
        let (user, Some(call_id)) = (session.user.clone(), session.call.clone()) else {
            return;
        };
        self.set_call(conn, None);
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        if call.state == CallState::Active {
            out.push(Action::Unlink { conn });
        }
        match call.other_than_user(&user).node().cloned() {
            Some(other_node) => {
                self.calls.remove(&call_id);
                info!("call {call_id}: {user} moved to {node}; {other_node} hands it over");
                let event = NodeEvent::Moved {
                    call_id,
                    user,
                    node: node.clone(),
                };
                out.push(Action::Forward {
                    node: other_node,
                    event,
                });
            }
            None => self.hand_over(&call_id, &user, node, out),
        }
    }

    /// The directory places `user` on `node`: a call waiting here for it
    /// to come back (detached, within its window) goes on there.
    pub fn user_moved(&mut self, user: &UserId, node: &NodeId, out: &mut Vec<Action>) {
        if let Some(Away::InCall(call_id)) = self.away.get(user).map(|away| away.state.clone()) {
            self.away.remove(user);
            self.hand_over(&call_id, user, node, out);
        }
    }

    /// `user`'s party of `call_id` (whose other party is here) is on `node`
    /// now: that node is told where the call stands, media goes there.
    fn hand_over(&mut self, call_id: &CallId, user: &UserId, node: &NodeId, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let user_is_caller = call.caller.user == *user;
        let Some(party) = call.party_of_user_mut(user) else {
            return;
        };
        party.at = Attachment::Remote(node.clone());
        let moved = party.clone();
        let active = call.state == CallState::Active;
        let other = call.other_than_user(user).clone();
        info!("call {call_id}: {user} goes on from {node}");
        if let (true, Some(conn)) = (active, other.conn()) {
            out.push(link(conn, &moved, call_id));
        }
        let event = NodeEvent::Resume {
            call_id: call_id.clone(),
            user: user.clone(),
            peer: other.user,
            user_is_caller,
            active,
            video: call.video,
        };
        out.push(Action::Forward {
            node: node.clone(),
            event,
        });
    }

    /// The trunk to `node` is up again: the parties lost with it come back
    /// (each node tells the other where its calls stand, with RESUME).
    pub fn node_back(&mut self, node: &NodeId, out: &mut Vec<Action>) {
        let back: Vec<(UserId, CallId)> = self
            .away
            .iter()
            .filter(|(_, away)| away.lost_with.as_ref() == Some(node))
            .filter_map(|(user, away)| match &away.state {
                Away::InCall(call_id) => Some((user.clone(), call_id.clone())),
                Away::CallEnded(_) => None,
            })
            .collect();
        for (user, call_id) in back {
            self.away.remove(&user);
            self.hand_over(&call_id, &user, node, out);
        }
    }

    /// A RESUME for a call this node holds too (the trunk came back): its
    /// party from `node` is there again, and media flows. False if the call
    /// is not one of those.
    fn rejoin(&mut self, node: &NodeId, resumed: &Resumed, out: &mut Vec<Action>) -> bool {
        let Some(call) = self.calls.get_mut(&resumed.call_id) else {
            return false;
        };
        let mine = call.party_of_user_mut(&resumed.user).and_then(|p| p.conn());
        let Some(peer) = call.party_of_user_mut(&resumed.peer) else {
            return false;
        };
        let waiting = match &peer.at {
            Attachment::Detached { .. } => true,
            Attachment::Remote(on) => on == node,
            Attachment::Attached(_) => false,
        };
        if !waiting {
            return false;
        }
        peer.at = Attachment::Remote(node.clone());
        let peer = peer.clone();
        let active = call.state == CallState::Active;
        if matches!(self.away.get(&resumed.peer).map(|a| &a.state), Some(Away::InCall(id)) if *id == resumed.call_id)
        {
            self.away.remove(&resumed.peer);
        }
        info!(
            "call {}: {} on {node} is back",
            resumed.call_id, resumed.peer
        );
        if let (true, Some(conn)) = (active, mine) {
            out.push(link(conn, &peer, &resumed.call_id));
        }
        true
    }

    /// The call of a user who registered here goes on here, its other
    /// party on `node`; the user is told where it stands (8.3). A user no
    /// longer here, or in another call, ends it.
    fn take_over(&mut self, node: &NodeId, resumed: Resumed, now: Instant, out: &mut Vec<Action>) {
        if self.rejoin(node, &resumed, out) {
            return;
        }
        let Resumed {
            call_id,
            user,
            peer,
            user_is_caller,
            active,
            video,
        } = resumed;
        let conn = self
            .registry
            .lookup(&user)
            .filter(|conn| !self.in_call(*conn));
        if conn.is_none() || self.calls.contains(&call_id) {
            debug!("call {call_id}: {user} cannot take it over here; it ends");
            out.push(Action::Forward {
                node: node.clone(),
                event: NodeEvent::End { call_id },
            });
            return;
        }
        let Some(conn) = conn else {
            return;
        };
        let here = Party {
            at: Attachment::Detached { until: now },
            user: user.clone(),
        };
        let there = Party::remote(node.clone(), peer);
        let (caller, callee) = if user_is_caller {
            (here, there)
        } else {
            (there, here)
        };
        let deadline = now + self.ring_timeout;
        let state = if active {
            CallState::Active
        } else {
            CallState::Ringing { deadline }
        };
        self.calls.insert(Call {
            id: call_id.clone(),
            caller,
            callee,
            video,
            state,
        });
        if !active && user_is_caller {
            // The caller's node keeps the ring timeout: this one now.
            out.push(Action::ArmTimer {
                at: deadline,
                timer: RelayTimer::Ring(call_id.clone()),
            });
        }
        self.attach(&call_id, &user, conn, out);
    }

    /// The live call `call_id`, if it has a party on `node` (a node speaks
    /// only for its own users).
    fn call_with(&self, node: &NodeId, call_id: &CallId) -> Option<&Call> {
        let call = self.calls.get(call_id).filter(|c| c.has_party_on(node));
        if call.is_none() {
            debug!("{node} names call {call_id}, which has no party there; ignored");
        }
        call
    }

    /// A caller on `node` calls `callee` here: the rows of section 5 that
    /// concern the callee decide (offline, busy), else it rings.
    #[allow(clippy::too_many_arguments)]
    fn remote_ring(
        &mut self,
        node: &NodeId,
        call_id: CallId,
        caller: UserId,
        callee: UserId,
        video: u8,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.calls.contains(&call_id) {
            debug!("{node} rings call {call_id} again; ignored");
            return;
        }
        let away_in_call = matches!(
            self.away.get(&callee).map(|away| &away.state),
            Some(Away::InCall(_))
        );
        let refusal = match self.registry.lookup(&callee) {
            _ if away_in_call => Err("busy"),
            None => Err("offline"),
            Some(conn) if self.in_call(conn) => Err("busy"),
            Some(conn) => Ok(conn),
        };
        let callee_conn = match refusal {
            Ok(conn) => conn,
            Err(reason) => {
                debug!("call {call_id} from {caller} on {node} to {callee}: {reason}");
                self.stats.calls_refused += 1;
                let caller = Party::remote(node.clone(), caller);
                tell(&caller, reject(&call_id, QString::from_str(reason)), out);
                return;
            }
        };
        info!("call {call_id}: {caller} on {node} -> {callee} ringing (video {video})");
        let ring = ServerFrame::CallRequest {
            call_id: call_id.clone(),
            caller: caller.clone(),
            video,
        };
        out.push(Action::Send {
            to: callee_conn,
            frame: ring,
        });
        self.set_call(callee_conn, Some(call_id.clone()));
        // The ring timeout is the caller's node's; this deadline is only
        // for where the call stands.
        self.calls.insert(Call {
            id: call_id,
            caller: Party::remote(node.clone(), caller),
            callee: Party::attached(callee_conn, callee),
            video,
            state: CallState::Ringing {
                deadline: now + self.ring_timeout,
            },
        });
    }

    /// The callee on `node` accepted a call placed here.
    fn remote_accept(&mut self, node: &NodeId, call_id: &CallId, out: &mut Vec<Action>) {
        let Some(call) = self
            .calls
            .get_mut(call_id)
            .filter(|c| c.callee.node() == Some(node))
        else {
            debug!("{node} accepts call {call_id}, which it was not called in; ignored");
            return;
        };
        if call.state != CallState::Active {
            call.state = CallState::Active;
            self.stats.calls_accepted += 1;
            info!("call {call_id}: accepted by {} on {node}", call.callee.user);
            let (caller, callee) = (call.caller.clone(), call.callee.clone());
            tell(&caller, accepted(call_id), out);
            if let Some(conn) = caller.conn() {
                out.push(link(conn, &callee, call_id));
            }
        }
    }

    /// The trunk to `node` is down (or the node is gone): the parties of
    /// its calls count as detached (PROTOCOL.md 8.3, 11); a call whose
    /// party does not come back here within the resume window ends.
    pub fn node_lost(&mut self, node: &NodeId, now: Instant, out: &mut Vec<Action>) {
        let ids: Vec<CallId> = self
            .calls
            .ids()
            .filter(|id| self.calls.get(id).is_some_and(|c| c.has_party_on(node)))
            .cloned()
            .collect();
        for call_id in ids {
            let Some(call) = self.calls.get_mut(&call_id) else {
                continue;
            };
            if self.resume_window.is_zero() {
                let local = call.local_party().clone();
                self.end_call(&call_id, EndReason::PartyLeft, &[local], out);
                continue;
            }
            let until = now + self.resume_window;
            let remote = if call.caller.node() == Some(node) {
                &mut call.caller
            } else {
                &mut call.callee
            };
            remote.at = Attachment::Detached { until };
            let user = remote.user.clone();
            if let (CallState::Active, Some(local)) = (call.state, call.local_party().conn()) {
                out.push(Action::Relink {
                    conn: local,
                    peer: None,
                });
            }
            info!("call {call_id}: {user} on {node} detached (node unreachable)");
            // Only a token may take the call over when tokens are on.
            let token = self.auth.is_some();
            self.await_return(call_id, user.clone(), token, until, out);
            if let Some(away) = self.away.get_mut(&user) {
                away.lost_with = Some(node.clone());
            }
        }
    }
}
