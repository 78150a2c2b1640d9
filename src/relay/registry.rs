//! Who is online: user id <-> connection, newest registration wins. Knows
//! nothing of calls; the relay keeps each session's call beside it.

use std::collections::HashMap;

use crate::ids::{CallId, ConnId, UserId};

/// A registered connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// The id it registered.
    pub user: UserId,
    /// It registered with a valid token (PROTOCOL.md section 9): a bare id
    /// can never replace it.
    pub token: bool,
    /// The call it takes part in (ringing or accepted), if any.
    pub call: Option<CallId>,
}

/// The online users.
#[derive(Default)]
pub struct Registry {
    by_user: HashMap<UserId, ConnId>,
    sessions: HashMap<ConnId, Session>,
}

impl Registry {
    /// Registers `user` on `conn`. Returns the connection the id was online
    /// on before, which the caller must close as replaced.
    pub fn register(&mut self, conn: ConnId, user: UserId, token: bool) -> Option<ConnId> {
        let replaced = self.by_user.insert(user.clone(), conn);
        let session = Session {
            user,
            token,
            call: None,
        };
        self.sessions.insert(conn, session);
        replaced.filter(|old| *old != conn)
    }

    /// Forgets `conn`; its user id goes offline unless a newer connection
    /// holds it. Returns the session it had.
    pub fn remove(&mut self, conn: ConnId) -> Option<Session> {
        let session = self.sessions.remove(&conn)?;
        if self.by_user.get(&session.user) == Some(&conn) {
            self.by_user.remove(&session.user);
        }
        Some(session)
    }

    /// The connection `user` is online on.
    pub fn lookup(&self, user: &UserId) -> Option<ConnId> {
        self.by_user.get(user).copied()
    }

    /// The session of a registered connection.
    pub fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions.get(&conn)
    }

    /// The session of a registered connection, mutably.
    pub fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        self.sessions.get_mut(&conn)
    }

    /// How many users are online.
    pub fn online(&self) -> usize {
        self.by_user.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32) -> ConnId {
        ConnId {
            slot,
            generation: 1,
        }
    }

    #[test]
    fn newest_registration_wins_and_old_removal_keeps_it() {
        let mut registry = Registry::default();
        let alice = UserId::from_utf8(b"alice", 128).expect("valid");
        assert_eq!(registry.register(conn(1), alice.clone(), false), None);
        assert_eq!(
            registry.register(conn(2), alice.clone(), false),
            Some(conn(1))
        );
        assert!(registry.remove(conn(1)).is_some());
        assert_eq!(registry.lookup(&alice), Some(conn(2)));
        assert!(registry.remove(conn(2)).is_some());
        assert_eq!(registry.lookup(&alice), None);
        assert_eq!(registry.online(), 0);
    }
}
