//! The cluster directory's decisions (PROTOCOL.md section 11,
//! docs/cluster.md): which node holds each user, which nodes are alive,
//! and what an event from Redis means here. Plain data: the Redis commands
//! it asks for are strings, the connections are the server's.
//!
//! Newest wins across nodes: a registration is one Lua script that sets
//! `users[user] = "NODE STAMP"` and publishes it; Redis runs scripts one at
//! a time and delivers the published events to every node in that order.
//! A node whose user was registered elsewhere after its own registration
//! (its own event came first) closes its connection as replaced; one
//! whose own registration is still unconfirmed when the other's event
//! arrives has the later one, and keeps its user.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::ids::{NodeId, UserId};

/// Registers `ARGV[1]` as `ARGV[2]` ("NODE STAMP"); KEYS: users hash,
/// events channel, this node's user set.
pub const REGISTER: &str = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
redis.call('SADD', KEYS[3], ARGV[1]) \
redis.call('PUBLISH', KEYS[2], 'reg ' .. ARGV[2] .. ' ' .. ARGV[1]) \
return 1";

/// Registers again after Redis came back, unless someone else registered
/// the user meanwhile (same keys and arguments as [`REGISTER`]).
pub const REPUBLISH: &str = "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
if v and v ~= ARGV[2] then return 0 end \
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
redis.call('SADD', KEYS[3], ARGV[1]) \
if not v then redis.call('PUBLISH', KEYS[2], 'reg ' .. ARGV[2] .. ' ' .. ARGV[1]) end \
return 1";

/// Unregisters `ARGV[1]` if it is still `ARGV[2]` (same keys).
pub const UNREGISTER: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
redis.call('HDEL', KEYS[1], ARGV[1]) \
redis.call('PUBLISH', KEYS[2], 'unreg ' .. ARGV[2] .. ' ' .. ARGV[1]) end \
redis.call('SREM', KEYS[3], ARGV[1]) \
return 1";

/// Removes dead node `ARGV[1]`: its users (those still its own), its user
/// set and its entry in the nodes hash, and says so. KEYS: users, events,
/// the dead node's user set, nodes.
pub const REAP: &str = "local users = redis.call('SMEMBERS', KEYS[3]) \
local mine = ARGV[1] .. ' ' \
for _, u in ipairs(users) do \
local v = redis.call('HGET', KEYS[1], u) \
if v and string.sub(v, 1, #mine) == mine then \
redis.call('HDEL', KEYS[1], u) \
redis.call('PUBLISH', KEYS[2], 'unreg ' .. v .. ' ' .. u) end end \
redis.call('DEL', KEYS[3]) \
redis.call('HDEL', KEYS[4], ARGV[1]) \
redis.call('PUBLISH', KEYS[2], 'gone ' .. ARGV[1]) \
return #users";

/// A node is alive while its last heartbeat is younger than this.
pub const STALE_AFTER_MS: u64 = 6_000;
/// Heartbeat (and node table refresh) interval.
pub const HEARTBEAT_MS: u64 = 2_000;

/// The Redis names, all under the prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Hash: user -> "NODE STAMP".
    pub users: String,
    /// Hash: node -> "TRUNK_ADDR UNIX_MS".
    pub nodes: String,
    /// Channel of directory events.
    pub events: String,
    prefix: String,
}

impl Keys {
    /// The names under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            users: format!("{prefix}users"),
            nodes: format!("{prefix}nodes"),
            events: format!("{prefix}events"),
            prefix: prefix.to_owned(),
        }
    }

    /// Set of the users registered on `node`.
    pub fn node_users(&self, node: &NodeId) -> String {
        format!("{}node-users:{node}", self.prefix)
    }
}

/// An event on the directory channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `user` registered on `node` with `stamp`.
    Registered {
        /// Where.
        node: NodeId,
        /// Which registration.
        stamp: u64,
        /// Who.
        user: UserId,
    },
    /// That registration ended.
    Unregistered {
        /// Where.
        node: NodeId,
        /// Which registration.
        stamp: u64,
        /// Who.
        user: UserId,
    },
    /// `node` was found dead and removed.
    Gone(NodeId),
}

/// Parses an event payload (`None`: not one of ours).
pub fn parse_event(payload: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(payload).ok()?;
    if let Some(node) = text.strip_prefix("gone ") {
        return Some(Event::Gone(NodeId::new(node)?));
    }
    let (kind, rest) = text.split_once(' ')?;
    let (node, stamp, user) = parse_holder_and_user(rest)?;
    match kind {
        "reg" => Some(Event::Registered { node, stamp, user }),
        "unreg" => Some(Event::Unregistered { node, stamp, user }),
        _ => None,
    }
}

/// "NODE STAMP USER" (USER may hold spaces: it comes last).
fn parse_holder_and_user(text: &str) -> Option<(NodeId, u64, UserId)> {
    let (node, rest) = text.split_once(' ')?;
    let (stamp, user) = rest.split_once(' ')?;
    let user = UserId::from_string(user.to_owned(), crate::ids::USER_ID_MAX_BYTES).ok()?;
    Some((NodeId::new(node)?, stamp.parse().ok()?, user))
}

/// A users-hash value "NODE STAMP".
pub fn parse_holder(value: &[u8]) -> Option<(NodeId, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (node, stamp) = text.split_once(' ')?;
    Some((NodeId::new(node)?, stamp.parse().ok()?))
}

/// A nodes-hash value "TRUNK_ADDR UNIX_MS".
pub fn parse_node(value: &[u8]) -> Option<(SocketAddr, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (addr, seen) = text.split_once(' ')?;
    Some((addr.parse().ok()?, seen.parse().ok()?))
}

/// What the server must do about a directory change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `user` is on `node` now (`None`: on no other node).
    Remote(UserId, Option<NodeId>),
    /// A newer registration on the node given replaces this node's `user`:
    /// its call moves there, its connection is closed with ERROR `replaced`.
    Replaced(UserId, NodeId),
    /// `node` is gone: its calls' parties are detached.
    NodeGone(NodeId),
}

/// One of this node's registrations.
#[derive(Clone, Copy, Debug)]
struct Local {
    stamp: u64,
    /// Its own event has come back from Redis.
    confirmed: bool,
}

/// This node's view of the directory.
#[derive(Debug)]
pub struct Directory {
    me: NodeId,
    next_stamp: u64,
    local: HashMap<UserId, Local>,
    remote: HashMap<UserId, (NodeId, u64)>,
    /// Other nodes by id: trunk address and last heartbeat (Unix ms).
    nodes: HashMap<NodeId, (SocketAddr, u64)>,
}

impl Directory {
    /// The directory of node `me`; stamps start at `first_stamp` (the
    /// start time, so a restarted node's stamps are new).
    pub fn new(me: NodeId, first_stamp: u64) -> Directory {
        Directory {
            me,
            next_stamp: first_stamp,
            local: HashMap::new(),
            remote: HashMap::new(),
            nodes: HashMap::new(),
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// `user` registered here: the "NODE STAMP" value to publish.
    pub fn register(&mut self, user: &UserId) -> String {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.local.insert(
            user.clone(),
            Local {
                stamp,
                confirmed: false,
            },
        );
        format!("{} {stamp}", self.me)
    }

    /// `user` is no longer registered here: the value to withdraw.
    pub fn unregister(&mut self, user: &UserId) -> Option<String> {
        let local = self.local.remove(user)?;
        Some(format!("{} {}", self.me, local.stamp))
    }

    /// Every local registration as (user, value), to publish again.
    pub fn local_values(&self) -> Vec<(UserId, String)> {
        self.local
            .iter()
            .map(|(user, local)| (user.clone(), format!("{} {}", self.me, local.stamp)))
            .collect()
    }

    /// The directory was loaded afresh (`entries`: user -> holder): the
    /// remote view becomes exactly that.
    pub fn load(&mut self, entries: Vec<(UserId, NodeId, u64)>) -> Vec<Effect> {
        let mut effects: Vec<Effect> = self
            .remote
            .drain()
            .map(|(user, _)| Effect::Remote(user, None))
            .collect();
        for (user, node, stamp) in entries {
            if node == self.me {
                if let Some(local) = self.local.get_mut(&user).filter(|l| l.stamp == stamp) {
                    local.confirmed = true;
                }
                continue;
            }
            if self.local.contains_key(&user) {
                // Registered here too: whichever event comes next decides.
                continue;
            }
            self.remote.insert(user.clone(), (node.clone(), stamp));
            effects.push(Effect::Remote(user, Some(node)));
        }
        effects
    }

    /// An event from the channel.
    pub fn on_event(&mut self, event: Event) -> Vec<Effect> {
        match event {
            Event::Registered { node, stamp, user } if node == self.me => {
                if let Some(local) = self.local.get_mut(&user).filter(|l| l.stamp == stamp) {
                    local.confirmed = true;
                }
                Vec::new()
            }
            Event::Registered { node, stamp, user } => {
                let mut effects = Vec::new();
                match self.local.get(&user) {
                    // Ours came first: the other one is newer.
                    Some(local) if local.confirmed => {
                        self.local.remove(&user);
                        effects.push(Effect::Replaced(user.clone(), node.clone()));
                    }
                    // Ours is still on its way: it is the newer one.
                    Some(_) => return effects,
                    None => {}
                }
                self.remote.insert(user.clone(), (node.clone(), stamp));
                effects.push(Effect::Remote(user, Some(node)));
                effects
            }
            Event::Unregistered { node, stamp, user } => {
                if self.remote.get(&user) == Some(&(node, stamp)) {
                    self.remote.remove(&user);
                    vec![Effect::Remote(user, None)]
                } else {
                    Vec::new()
                }
            }
            Event::Gone(node) if node == self.me => Vec::new(),
            Event::Gone(node) => self.node_gone(&node),
        }
    }

    fn node_gone(&mut self, node: &NodeId) -> Vec<Effect> {
        self.nodes.remove(node);
        let mut effects: Vec<Effect> = Vec::new();
        self.remote.retain(|user, (on, _)| {
            if on == node {
                effects.push(Effect::Remote(user.clone(), None));
                false
            } else {
                true
            }
        });
        effects.push(Effect::NodeGone(node.clone()));
        effects
    }

    /// The nodes hash, read at `now_ms`: the live nodes are remembered;
    /// returns the nodes found dead (to reap) .
    pub fn node_table(
        &mut self,
        entries: Vec<(NodeId, SocketAddr, u64)>,
        now_ms: u64,
    ) -> Vec<NodeId> {
        let mut dead = Vec::new();
        self.nodes.clear();
        for (node, addr, seen) in entries {
            if node == self.me {
                continue;
            }
            if now_ms.saturating_sub(seen) > STALE_AFTER_MS {
                dead.push(node);
            } else {
                self.nodes.insert(node, (addr, seen));
            }
        }
        dead
    }

    /// The trunk address of live node `node`.
    pub fn trunk_addr(&self, node: &NodeId) -> Option<SocketAddr> {
        self.nodes.get(node).map(|(addr, _)| *addr)
    }

    /// The live nodes this node dials (one trunk per pair: the node with
    /// the smaller id dials).
    pub fn to_dial(&self) -> Vec<(NodeId, SocketAddr)> {
        self.nodes
            .iter()
            .filter(|(node, _)| **node > self.me)
            .map(|(node, (addr, _))| (node.clone(), *addr))
            .collect()
    }

    /// True if `node` is in the live table.
    pub fn is_alive(&self, node: &NodeId) -> bool {
        self.nodes.contains_key(node)
    }

    /// Users online here that Redis holds.
    pub fn local_count(&self) -> usize {
        self.local.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).expect("valid")
    }

    fn user(name: &str) -> UserId {
        UserId::from_string(name.to_owned(), 128).expect("valid")
    }

    fn reg(on: &str, stamp: u64, who: &str) -> Event {
        Event::Registered {
            node: node(on),
            stamp,
            user: user(who),
        }
    }

    #[test]
    fn events_parse_with_spaces_in_user_ids() {
        assert_eq!(
            parse_event(b"reg a:1 42 alice smith"),
            Some(reg("a:1", 42, "alice smith"))
        );
        assert_eq!(
            parse_event(b"unreg b 7 bob"),
            Some(Event::Unregistered {
                node: node("b"),
                stamp: 7,
                user: user("bob")
            })
        );
        assert_eq!(parse_event(b"gone b"), Some(Event::Gone(node("b"))));
        assert_eq!(parse_event(b"reg b x bob"), None);
        assert_eq!(parse_event(b"hello"), None);
    }

    #[test]
    fn the_registration_redis_ran_last_wins_on_both_nodes() {
        // alice registers on a and on b at once; Redis runs a's script first.
        let mut a = Directory::new(node("a"), 0);
        let mut b = Directory::new(node("b"), 100);
        let value_a = a.register(&user("alice"));
        let value_b = b.register(&user("alice"));
        assert_eq!(value_a, "a 1");
        assert_eq!(value_b, "b 101");
        let events = [reg("a", 1, "alice"), reg("b", 101, "alice")];
        let seen_a: Vec<Effect> = events.iter().flat_map(|e| a.on_event(e.clone())).collect();
        let seen_b: Vec<Effect> = events.iter().flat_map(|e| b.on_event(e.clone())).collect();
        assert_eq!(
            seen_a,
            vec![
                Effect::Replaced(user("alice"), node("b")),
                Effect::Remote(user("alice"), Some(node("b")))
            ]
        );
        assert!(seen_b.is_empty(), "{seen_b:?}");
        assert_eq!(a.local_count(), 0);
        assert_eq!(b.local_count(), 1);
    }

    #[test]
    fn unregistration_of_an_older_registration_changes_nothing() {
        let mut a = Directory::new(node("a"), 0);
        a.on_event(reg("b", 5, "bob"));
        a.on_event(reg("c", 9, "bob"));
        let older = Event::Unregistered {
            node: node("b"),
            stamp: 5,
            user: user("bob"),
        };
        assert!(a.on_event(older).is_empty());
        let current = Event::Unregistered {
            node: node("c"),
            stamp: 9,
            user: user("bob"),
        };
        assert_eq!(a.on_event(current), vec![Effect::Remote(user("bob"), None)]);
    }

    #[test]
    fn stale_nodes_are_dead_and_their_users_go_when_reaped() {
        let mut a = Directory::new(node("a"), 0);
        let addr: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let dead = a.node_table(
            vec![
                (node("a"), addr, 10_000),
                (node("b"), addr, 9_000),
                (node("c"), addr, 1_000),
            ],
            10_000,
        );
        assert_eq!(dead, vec![node("c")]);
        assert!(a.is_alive(&node("b")));
        assert_eq!(a.to_dial(), vec![(node("b"), addr)]);
        a.on_event(reg("c", 3, "carol"));
        assert_eq!(
            a.on_event(Event::Gone(node("c"))),
            vec![
                Effect::Remote(user("carol"), None),
                Effect::NodeGone(node("c"))
            ]
        );
    }
}
