//! The call table: each call's parties and its state machine. Plain data;
//! the decisions (who may do what) are in `relay/mod.rs`.

use std::collections::HashMap;
use std::time::Instant;

use crate::ids::{CallId, ConnId, NodeId, UserId};

/// Whether a party's user has a connection (PROTOCOL.md section 8.3), or
/// is on another node of the cluster (section 11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// This connection is the party.
    Attached(ConnId),
    /// The party's connection was lost; the call waits for the user to
    /// register again until `until`.
    Detached {
        /// When the resume window ends.
        until: Instant,
    },
    /// The party's user is on this other node: what it must hear goes
    /// there as a [`crate::relay::NodeEvent`].
    Remote(NodeId),
}

/// One side of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// Its connection, or that it has none for now.
    pub at: Attachment,
    /// Its user id.
    pub user: UserId,
}

impl Party {
    /// An attached party.
    pub fn attached(conn: ConnId, user: UserId) -> Party {
        Party {
            at: Attachment::Attached(conn),
            user,
        }
    }

    /// A party on another node.
    pub fn remote(node: NodeId, user: UserId) -> Party {
        Party {
            at: Attachment::Remote(node),
            user,
        }
    }

    /// Its connection, if it is attached here.
    pub fn conn(&self) -> Option<ConnId> {
        match self.at {
            Attachment::Attached(conn) => Some(conn),
            Attachment::Detached { .. } | Attachment::Remote(_) => None,
        }
    }

    /// The node it is on, if another.
    pub fn node(&self) -> Option<&NodeId> {
        match &self.at {
            Attachment::Remote(node) => Some(node),
            _ => None,
        }
    }
}

/// Where a call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    /// Sent to the callee, not answered yet; times out at `deadline`.
    Ringing {
        /// When the ring timeout fires.
        deadline: Instant,
    },
    /// Accepted: media flows between the parties.
    Active,
}

/// A call between two users.
#[derive(Clone, Debug)]
pub struct Call {
    /// Its id.
    pub id: CallId,
    /// Who called.
    pub caller: Party,
    /// Who was called.
    pub callee: Party,
    /// The caller's isVideo byte.
    pub video: u8,
    /// Its state.
    pub state: CallState,
}

/// Which side of a call a connection is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It placed the call.
    Caller,
    /// It was called.
    Callee,
}

impl Call {
    /// The role `conn` has in this call, if any.
    pub fn role_of(&self, conn: ConnId) -> Option<Role> {
        if self.caller.conn() == Some(conn) {
            Some(Role::Caller)
        } else if self.callee.conn() == Some(conn) {
            Some(Role::Callee)
        } else {
            None
        }
    }

    /// The party that `user` is, if either is.
    pub fn party_of_user_mut(&mut self, user: &UserId) -> Option<&mut Party> {
        if self.caller.user == *user {
            Some(&mut self.caller)
        } else if self.callee.user == *user {
            Some(&mut self.callee)
        } else {
            None
        }
    }

    /// The party other than `user`'s.
    pub fn other_than_user(&self, user: &UserId) -> &Party {
        if self.caller.user == *user {
            &self.callee
        } else {
            &self.caller
        }
    }

    /// The party that is not on another node (every call has one here).
    pub fn local_party(&self) -> &Party {
        if self.caller.node().is_some() {
            &self.callee
        } else {
            &self.caller
        }
    }

    /// True if a party is on `node`.
    pub fn has_party_on(&self, node: &NodeId) -> bool {
        self.caller.node() == Some(node) || self.callee.node() == Some(node)
    }

    /// The party other than `conn`.
    pub fn other_party(&self, conn: ConnId) -> &Party {
        if self.caller.conn() == Some(conn) {
            &self.callee
        } else {
            &self.caller
        }
    }
}

/// Why a call ended, for the log and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// A party sent CALL_END.
    Hangup,
    /// The callee rejected a ringing call.
    Rejected,
    /// The caller rejected (cancelled) its own call.
    Cancelled,
    /// Nobody answered within the ring timeout.
    RingTimeout,
    /// A party's connection closed for good (a protocol error, the output
    /// limit, a replacement or loss with no resume window).
    PartyLeft,
    /// A party's connection was lost and it did not come back within the
    /// resume window.
    ResumeExpired,
    /// The server shut down.
    Shutdown,
}

impl EndReason {
    /// Every reason, for counters.
    pub const ALL: [EndReason; 7] = [
        EndReason::Hangup,
        EndReason::Rejected,
        EndReason::Cancelled,
        EndReason::RingTimeout,
        EndReason::PartyLeft,
        EndReason::ResumeExpired,
        EndReason::Shutdown,
    ];

    /// A short name for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::Rejected => "rejected",
            EndReason::Cancelled => "cancelled",
            EndReason::RingTimeout => "ring_timeout",
            EndReason::PartyLeft => "party_left",
            EndReason::ResumeExpired => "resume_expired",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// The live calls by id.
#[derive(Default)]
pub struct Calls {
    by_id: HashMap<CallId, Call>,
}

impl Calls {
    /// Adds a call.
    pub fn insert(&mut self, call: Call) {
        self.by_id.insert(call.id.clone(), call);
    }

    /// Looks a call up.
    pub fn get(&self, id: &CallId) -> Option<&Call> {
        self.by_id.get(id)
    }

    /// Looks a call up, mutably.
    pub fn get_mut(&mut self, id: &CallId) -> Option<&mut Call> {
        self.by_id.get_mut(id)
    }

    /// Removes a call.
    pub fn remove(&mut self, id: &CallId) -> Option<Call> {
        self.by_id.remove(id)
    }

    /// True if `id` names a live call.
    pub fn contains(&self, id: &CallId) -> bool {
        self.by_id.contains_key(id)
    }

    /// The ids of the live calls.
    pub fn ids(&self) -> impl Iterator<Item = &CallId> {
        self.by_id.keys()
    }

    /// Live calls (ringing or active).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there is no call.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// (ringing, active) counts.
    pub fn counts(&self) -> (usize, usize) {
        let ringing = self
            .by_id
            .values()
            .filter(|call| matches!(call.state, CallState::Ringing { .. }))
            .count();
        (ringing, self.by_id.len() - ringing)
    }
}
