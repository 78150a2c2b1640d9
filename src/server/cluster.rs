//! The cluster's connections, driven by the server's one poll loop
//! (PROTOCOL.md section 11, docs/cluster.md): two Redis connections (one
//! for commands, one subscribed to the directory's events) and the trunks
//! to the other nodes. Bytes in and out, reconnects with backoff, command
//! timeouts; what the bytes mean is `crate::cluster`'s, what to do about
//! it is the relay's.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::cluster::directory::{self, Directory, Effect, Event, Keys};
use crate::cluster::resp::{self, Reply};
use crate::cluster::trunk::{self, TrunkFrame};
use crate::config::ClusterOptions;
use crate::ids::{CallId, ConnId, NodeId};
use crate::relay::NodeEvent;

/// Token of the Redis command connection.
pub const REDIS_COMMANDS: Token = Token(usize::MAX - 4);
/// Token of the Redis subscriber connection.
pub const REDIS_EVENTS: Token = Token(usize::MAX - 5);
/// Token of the trunk listener.
pub const TRUNK_LISTENER: Token = Token(usize::MAX - 6);
/// Trunks use tokens from here up (slot + base).
pub const TRUNK_BASE: usize = usize::MAX / 4;
/// How often the cluster's housekeeping runs.
pub const TICK: Duration = Duration::from_millis(250);
/// A Redis command unanswered this long drops its connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Media is dropped at frame starts once this much waits for a trunk.
pub const TRUNK_MEDIA_LIMIT: usize = 4 << 20;
/// A trunk with this much unsent is closed (its peer is not reading).
const TRUNK_HARD_LIMIT: usize = 64 << 20;
/// First wait before dialling a node whose trunk failed again.
const DIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest such wait.
const MAX_DIAL_BACKOFF: Duration = Duration::from_secs(10);
/// Events kept for a node whose trunk is being dialled.
const PENDING_LIMIT: usize = 10_000;

/// What a Redis reply answers.
#[derive(Clone, Debug)]
enum Pending {
    /// Nothing to do with the reply (errors are logged).
    Ignore,
    /// HGETALL of the nodes hash.
    NodeTable,
    /// HGETALL of the users hash, after (re)subscribing.
    UsersLoad,
    /// SUBSCRIBE's confirmation (on the events connection).
    Subscribed,
}

/// One Redis connection.
struct RedisConn {
    token: Token,
    state: RedisState,
    input: Vec<u8>,
    output: Vec<u8>,
    pending: VecDeque<(Pending, Instant)>,
    backoff: Duration,
}

enum RedisState {
    Down { retry_at: Instant },
    Connecting(TcpStream),
    Up(TcpStream),
}

/// Where a trunk stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TrunkState {
    /// Dialled, not connected yet.
    Connecting,
    /// Waiting for the other node's hello (and proof).
    Greeting,
    /// Carrying traffic.
    Up,
}

/// One trunk connection.
struct Trunk {
    stream: TcpStream,
    state: TrunkState,
    node: Option<NodeId>,
    /// The nonce this side sent (with a cluster secret).
    nonce: Vec<u8>,
    proven: bool,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// Media frames in reassembly, by call.
    partial: HashMap<CallId, Vec<u8>>,
}

impl Trunk {
    fn unsent(&self) -> usize {
        self.output.len() - self.sent
    }
}

/// A FILE this node sends over a trunk.
#[derive(Debug)]
pub struct Outgoing {
    /// Its sender here.
    pub sender: ConnId,
    /// The receiver's node.
    pub node: NodeId,
    /// Data bytes in all.
    pub total: u64,
    /// Data bytes sent so far.
    pub sent: u64,
    /// Data bytes the receiving node takes (its credit).
    pub granted: u64,
}

/// A FILE another node sends over a trunk to a receiver here.
#[derive(Debug)]
pub struct Incoming {
    /// Its receiver.
    pub to: ConnId,
    /// The stream as the receiver's pipe knows it ([`ConnId::trunk_stream`]).
    pub as_sender: ConnId,
    /// Its header, encoded for the receiver, until it is written.
    pub header: Option<Vec<u8>>,
    /// Data bytes in all.
    pub total: u64,
    /// Data bytes received (and given to the receiver).
    pub received: u64,
    /// Data bytes granted to the sending node so far.
    pub granted: u64,
}

/// The FILE streams on the trunks (per-stream credit: a slow receiver
/// holds back only its own sender).
#[derive(Debug, Default)]
pub struct Files {
    next_stream: u32,
    /// Streams this node sends, by stream number.
    pub outgoing: HashMap<u32, Outgoing>,
    /// The stream each sender here is sending.
    pub sending: HashMap<ConnId, u32>,
    /// Streams coming in, by (node, stream number).
    pub incoming: HashMap<(NodeId, u32), Incoming>,
    /// The streams waiting for or going to each receiver here, in order.
    pub receiving: HashMap<ConnId, Vec<(NodeId, u32)>>,
}

impl Files {
    /// A new stream number.
    pub fn next_stream(&mut self) -> u32 {
        self.next_stream = self.next_stream.wrapping_add(1);
        self.next_stream
    }

    /// Forgets incoming stream `key`.
    pub fn forget_incoming(&mut self, key: &(NodeId, u32)) -> Option<Incoming> {
        let incoming = self.incoming.remove(key)?;
        if let Some(keys) = self.receiving.get_mut(&incoming.to) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.receiving.remove(&incoming.to);
            }
        }
        Some(incoming)
    }

    /// Forgets outgoing stream `stream`.
    pub fn forget_outgoing(&mut self, stream: u32) -> Option<Outgoing> {
        let outgoing = self.outgoing.remove(&stream)?;
        self.sending.remove(&outgoing.sender);
        Some(outgoing)
    }
}

/// What the server must act on after cluster I/O.
#[derive(Debug)]
pub enum Happened {
    /// A directory change.
    Directory(Effect),
    /// A node sent a frame.
    Frame(NodeId, TrunkFrame),
    /// The trunk to a node closed.
    TrunkDown(NodeId),
    /// The trunk to a node is up.
    TrunkUp(NodeId),
}

/// The cluster's side of the server.
pub struct ClusterIo {
    options: ClusterOptions,
    keys: Keys,
    /// The directory as this node sees it.
    pub directory: Directory,
    commands: RedisConn,
    events: RedisConn,
    listener: TcpListener,
    trunks: Slab<Trunk>,
    by_node: HashMap<NodeId, usize>,
    /// Frames for nodes whose trunk is being dialled, and since when.
    pending: HashMap<NodeId, (Instant, Vec<Vec<u8>>)>,
    /// Events that came while the users hash was being loaded.
    loading: Option<Vec<Event>>,
    secret: Option<Vec<u8>>,
    next_heartbeat: Instant,
    /// Read the nodes hash at the next tick (a node is not known yet).
    refresh_nodes: bool,
    /// Nodes whose trunk failed: not dialled before this, and the backoff.
    dial_backoff: HashMap<NodeId, (Instant, Duration)>,
    /// Happenings for the server to handle.
    pub happened: Vec<Happened>,
    /// FILE streams over the trunks.
    pub files: Files,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClusterIo {
    /// Binds the trunk listener; Redis is dialled by the first tick.
    pub fn new(
        options: ClusterOptions,
        secret: Option<Vec<u8>>,
        registry: &Registry,
    ) -> io::Result<ClusterIo> {
        let mut options = options;
        let mut listener = TcpListener::bind(options.trunk_listen)?;
        registry.register(&mut listener, TRUNK_LISTENER, Interest::READABLE)?;
        let bound = listener.local_addr()?;
        if options.trunk_advertise.port() == 0 {
            options.trunk_advertise.set_port(bound.port());
        }
        options.trunk_listen = bound;
        let now = Instant::now();
        let down = |token| RedisConn {
            token,
            state: RedisState::Down { retry_at: now },
            input: Vec::new(),
            output: Vec::new(),
            pending: VecDeque::new(),
            backoff: Duration::from_millis(100),
        };
        info!(
            "cluster: node {} (trunks on {}, advertised as {}), Redis {} db {}, prefix {:?}{}",
            options.node_id,
            options.trunk_listen,
            options.trunk_advertise,
            options.redis,
            options.redis_db,
            options.prefix,
            if secret.is_some() {
                ", trunks authenticated"
            } else {
                ""
            }
        );
        Ok(ClusterIo {
            keys: Keys::new(&options.prefix),
            directory: Directory::new(options.node_id.clone(), unix_ms()),
            options,
            commands: down(REDIS_COMMANDS),
            events: down(REDIS_EVENTS),
            listener,
            trunks: Slab::new(),
            by_node: HashMap::new(),
            pending: HashMap::new(),
            loading: None,
            secret,
            next_heartbeat: now,
            files: Files::default(),
            refresh_nodes: false,
            dial_backoff: HashMap::new(),
            happened: Vec::new(),
        })
    }

    /// True while both Redis connections are up.
    pub fn redis_up(&self) -> bool {
        matches!(self.commands.state, RedisState::Up(_))
            && matches!(self.events.state, RedisState::Up(_))
    }

    /// Trunks carrying traffic.
    pub fn trunks_up(&self) -> usize {
        self.trunks
            .iter()
            .filter(|(_, t)| t.state == TrunkState::Up)
            .count()
    }

    // ----- directory commands ------------------------------------------------

    /// A registration script on this node's keys (users, events, its set).
    fn script(&mut self, script: &str, node_users: &str, args: &[&str]) {
        let keys = [
            self.keys.users.as_str(),
            self.keys.events.as_str(),
            node_users,
        ];
        eval(&mut self.commands, script, &keys, args);
    }

    /// A user registered here: publish it (newest wins across nodes).
    pub fn registered(&mut self, user: &crate::ids::UserId) {
        let value = self.directory.register(user);
        let node_users = self.keys.node_users(self.directory.me());
        if matches!(self.commands.state, RedisState::Up(_)) {
            self.script(directory::REGISTER, &node_users, &[user.as_str(), &value]);
        }
    }

    /// A user is no longer registered here.
    pub fn unregistered(&mut self, user: &crate::ids::UserId) {
        if let Some(value) = self.directory.unregister(user) {
            let node_users = self.keys.node_users(self.directory.me());
            if matches!(self.commands.state, RedisState::Up(_)) {
                self.script(directory::UNREGISTER, &node_users, &[user.as_str(), &value]);
            }
        }
    }

    // ----- trunks ------------------------------------------------------------

    /// Sends `frame` to `node`: over its trunk, or queued while one is
    /// dialled. False if the node cannot be reached (not alive, too much
    /// queued).
    pub fn send(&mut self, node: &NodeId, frame: &TrunkFrame, registry: &Registry) -> bool {
        let mut bytes = Vec::new();
        trunk::encode(frame, &mut bytes);
        self.send_bytes(node, bytes, registry)
    }

    fn send_bytes(&mut self, node: &NodeId, bytes: Vec<u8>, registry: &Registry) -> bool {
        if let Some(&slot) = self.by_node.get(node)
            && let Some(trunk) = self.trunks.get_mut(slot)
            && trunk.state == TrunkState::Up
        {
            trunk.output.extend_from_slice(&bytes);
            return true;
        }
        // Its trunk failed a moment ago (and is dialled again later): what
        // is for it now cannot be delivered, rather than wait for that.
        if self.dial_backoff.contains_key(node) && !self.dialling(node) {
            return false;
        }
        let (_, queue) = self
            .pending
            .entry(node.clone())
            .or_insert_with(|| (Instant::now(), Vec::new()));
        if queue.len() >= PENDING_LIMIT {
            return false;
        }
        queue.push(bytes);
        match self.directory.trunk_addr(node) {
            Some(addr) if !self.dialling(node) => self.dial(node.clone(), addr, registry),
            Some(_) => {}
            // A node heard of before its heartbeat: read the node table now.
            None => self.refresh_nodes = true,
        }
        true
    }

    /// Room for media towards `node` (its trunk is up and not backed up).
    pub fn media_room(&self, node: &NodeId) -> Option<usize> {
        let trunk = self.trunks.get(*self.by_node.get(node)?)?;
        (trunk.state == TrunkState::Up && trunk.unsent() < TRUNK_MEDIA_LIMIT)
            .then(|| TRUNK_MEDIA_LIMIT - trunk.unsent())
    }

    /// Appends a media piece for `node`'s trunk (`header` from
    /// [`trunk::encode_media_header`], then the payload bytes).
    pub fn send_media(&mut self, node: &NodeId, header: &[u8], payload: &[u8]) {
        if let Some(trunk) = self
            .by_node
            .get(node)
            .and_then(|slot| self.trunks.get_mut(*slot))
        {
            trunk.output.extend_from_slice(header);
            trunk.output.extend_from_slice(payload);
        }
    }

    fn dialling(&self, node: &NodeId) -> bool {
        self.trunks
            .iter()
            .any(|(_, t)| t.node.as_ref() == Some(node) && t.state != TrunkState::Up)
    }

    fn dial(&mut self, node: NodeId, addr: SocketAddr, registry: &Registry) {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                debug!("cluster: dialling {node} at {addr}");
                let mut trunk = self.new_trunk(stream, TrunkState::Connecting);
                trunk.node = Some(node);
                self.insert_trunk(trunk, registry);
            }
            Err(error) => warn!("cluster: cannot dial {node} at {addr}: {error}"),
        }
    }

    fn new_trunk(&self, stream: TcpStream, state: TrunkState) -> Trunk {
        let _ = stream.set_nodelay(true);
        Trunk {
            stream,
            state,
            node: None,
            nonce: Vec::new(),
            proven: self.secret.is_none(),
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            partial: HashMap::new(),
        }
    }

    fn insert_trunk(&mut self, trunk: Trunk, registry: &Registry) {
        let entry = self.trunks.vacant_entry();
        let slot = entry.key();
        let trunk = entry.insert(trunk);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(error) = registry.register(&mut trunk.stream, Token(TRUNK_BASE + slot), interest)
        {
            warn!("cluster: cannot poll a trunk: {error}");
            self.trunks.remove(slot);
            return;
        }
        if trunk.state == TrunkState::Greeting {
            self.greet(slot);
        }
    }

    /// Hello (and with a secret, a challenge) to the other node.
    fn greet(&mut self, slot: usize) {
        let me = self.directory.me().clone();
        let nonce = self.secret.as_ref().map(|_| {
            let mut nonce = vec![0u8; 32];
            let _ = getrandom::fill(&mut nonce);
            nonce
        });
        let Some(trunk) = self.trunks.get_mut(slot) else {
            return;
        };
        trunk.state = TrunkState::Greeting;
        trunk::encode(&TrunkFrame::Hello { node: me }, &mut trunk.output);
        if let Some(nonce) = nonce {
            trunk::encode(
                &TrunkFrame::Challenge {
                    nonce: nonce.clone(),
                },
                &mut trunk.output,
            );
            trunk.nonce = nonce;
        }
    }

    /// Accepts trunks from other nodes.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    debug!("cluster: trunk from {addr}");
                    let trunk = self.new_trunk(stream, TrunkState::Greeting);
                    self.insert_trunk(trunk, registry);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    warn!("cluster: trunk accept failed: {error}");
                    return;
                }
            }
        }
    }

    /// A trunk's socket is ready.
    pub fn trunk_event(&mut self, slot: usize, registry: &Registry) {
        let Some(trunk) = self.trunks.get_mut(slot) else {
            return;
        };
        if trunk.state == TrunkState::Connecting {
            match trunk.stream.peer_addr() {
                Ok(_) => self.greet(slot),
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => return self.close_trunk(slot, "could not connect", registry),
            }
        }
        if let Err(why) = self.read_trunk(slot) {
            return self.close_trunk(slot, &why, registry);
        }
        self.flush_trunk(slot, registry);
    }

    fn read_trunk(&mut self, slot: usize) -> Result<(), String> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let Some(trunk) = self.trunks.get_mut(slot) else {
                return Ok(());
            };
            match trunk.stream.read(&mut buf) {
                Ok(0) => return Err("closed by the other node".to_owned()),
                Ok(count) => trunk.input.extend_from_slice(&buf[..count]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("read failed: {error}")),
            }
            self.decode_trunk(slot)?;
        }
        self.decode_trunk(slot)
    }

    fn decode_trunk(&mut self, slot: usize) -> Result<(), String> {
        let Some(trunk) = self.trunks.get_mut(slot) else {
            return Ok(());
        };
        // Decoded in place; what was used is drained once at the end.
        let mut input = std::mem::take(&mut trunk.input);
        let mut at = 0;
        let result = loop {
            match trunk::decode(input.get(at..).unwrap_or_default()) {
                Ok(Some((frame, used))) => {
                    at += used;
                    if let Err(why) = self.on_trunk_frame(slot, frame) {
                        break Err(why);
                    }
                }
                Ok(None) => break Ok(()),
                Err(error) => break Err(format!("bad trunk frame ({error:?})")),
            }
        };
        if let Some(trunk) = self.trunks.get_mut(slot) {
            input.drain(..at);
            trunk.input = input;
        }
        result
    }

    fn on_trunk_frame(&mut self, slot: usize, frame: TrunkFrame) -> Result<(), String> {
        let secret = self.secret.as_deref();
        let me = self.directory.me();
        let Some(trunk) = self.trunks.get_mut(slot) else {
            return Ok(());
        };
        match (trunk.state, frame) {
            (TrunkState::Greeting, TrunkFrame::Hello { node }) => {
                if node == *me {
                    return Err("a node with this node's own id dialled in".to_owned());
                }
                trunk.node = Some(node);
            }
            (TrunkState::Greeting, TrunkFrame::Challenge { nonce }) => {
                let Some(secret) = secret else {
                    return Err(
                        "the other node wants a cluster secret; this one has none".to_owned()
                    );
                };
                let mac = proof(secret, &nonce, me);
                trunk::encode(&TrunkFrame::Proof { mac }, &mut trunk.output);
            }
            (TrunkState::Greeting, TrunkFrame::Proof { mac }) => {
                let (Some(secret), Some(node)) = (secret, trunk.node.clone()) else {
                    return Err("a proof before a hello, or without a secret here".to_owned());
                };
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
                let mut message = trunk.nonce.clone();
                message.extend_from_slice(node.as_str().as_bytes());
                if ring::hmac::verify(&key, &message, &mac).is_err() {
                    return Err(format!("{node} failed the cluster secret's challenge"));
                }
                trunk.proven = true;
            }
            (
                TrunkState::Up,
                TrunkFrame::Media {
                    call_id,
                    first,
                    last,
                    payload,
                },
            ) => {
                let Some(node) = trunk.node.clone() else {
                    return Ok(());
                };
                let whole = match first {
                    Some(_) if last => Some(payload),
                    Some(total) => {
                        let mut started = Vec::with_capacity(total as usize);
                        started.extend_from_slice(&payload);
                        trunk.partial.insert(call_id.clone(), started);
                        None
                    }
                    None => match trunk.partial.get_mut(&call_id) {
                        Some(started) => {
                            started.extend_from_slice(&payload);
                            if last {
                                trunk.partial.remove(&call_id)
                            } else {
                                None
                            }
                        }
                        None => None,
                    },
                };
                if let Some(payload) = whole {
                    self.happened.push(Happened::Frame(
                        node,
                        TrunkFrame::Media {
                            call_id,
                            first: None,
                            last: true,
                            payload,
                        },
                    ));
                }
                return Ok(());
            }
            (
                TrunkState::Up,
                frame @ (TrunkFrame::Event(_)
                | TrunkFrame::FileStart { .. }
                | TrunkFrame::FileData { .. }
                | TrunkFrame::FileCredit { .. }
                | TrunkFrame::FileEnd { .. }
                | TrunkFrame::FileAbort { .. }),
            ) => {
                if let Some(node) = trunk.node.clone() {
                    self.happened.push(Happened::Frame(node, frame));
                }
                return Ok(());
            }
            (state, frame) => {
                return Err(format!("unexpected {frame:?} on a trunk that is {state:?}"));
            }
        }
        // Greeting: up once the other node is known (and proven).
        if let (true, Some(node)) = (trunk.proven, trunk.node.clone()) {
            trunk.state = TrunkState::Up;
            info!("cluster: trunk to {node} up");
            self.dial_backoff.remove(&node);
            self.happened.push(Happened::TrunkUp(node.clone()));
            if let Some((_, queued)) = self.pending.remove(&node) {
                for bytes in queued {
                    trunk.output.extend_from_slice(&bytes);
                }
            }
            self.by_node.insert(node, slot);
        }
        Ok(())
    }

    /// Writes a trunk's output until done or the socket is full.
    pub fn flush_trunk(&mut self, slot: usize, registry: &Registry) {
        let Some(trunk) = self.trunks.get_mut(slot) else {
            return;
        };
        if trunk.state == TrunkState::Connecting {
            return;
        }
        while trunk.sent < trunk.output.len() {
            match trunk.stream.write(&trunk.output[trunk.sent..]) {
                Ok(0) => return self.close_trunk(slot, "write returned 0", registry),
                Ok(count) => trunk.sent += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return self.close_trunk(slot, &format!("write failed: {error}"), registry);
                }
            }
        }
        if trunk.sent == trunk.output.len() {
            trunk.output.clear();
            trunk.sent = 0;
        } else if trunk.sent > 1 << 20 {
            trunk.output.drain(..trunk.sent);
            trunk.sent = 0;
        }
        if trunk.unsent() > TRUNK_HARD_LIMIT {
            self.close_trunk(slot, "the other node does not read", registry);
        }
    }

    /// Flushes every trunk (after a turn's frames were appended).
    pub fn flush_trunks(&mut self, registry: &Registry) {
        let slots: Vec<usize> = self
            .trunks
            .iter()
            .filter(|(_, t)| t.unsent() > 0)
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            self.flush_trunk(slot, registry);
        }
    }

    fn close_trunk(&mut self, slot: usize, why: &str, registry: &Registry) {
        if !self.trunks.contains(slot) {
            return;
        }
        let mut trunk = self.trunks.remove(slot);
        let _ = registry.deregister(&mut trunk.stream);
        let node = trunk.node.clone();
        let shown = node
            .as_ref()
            .map(NodeId::to_string)
            .unwrap_or_else(|| "?".to_owned());
        if trunk.state == TrunkState::Up {
            warn!("cluster: trunk to {shown} closed: {why}");
        } else {
            warn!("cluster: trunk to {shown} failed before it was up: {why}");
        }
        if let Some(node) = node.as_ref()
            && self.by_node.get(node) == Some(&slot)
        {
            self.by_node.remove(node);
            self.happened.push(Happened::TrunkDown(node.clone()));
        }
        if let Some(node) = node
            && trunk.state != TrunkState::Up
        {
            // Not dialled again at once (a node that refuses would be
            // dialled every tick); what waited for it is undeliverable.
            let backoff = self
                .dial_backoff
                .get(&node)
                .map_or(DIAL_BACKOFF, |(_, b)| (*b * 2).min(MAX_DIAL_BACKOFF));
            self.dial_backoff
                .insert(node.clone(), (Instant::now() + backoff, backoff));
            self.refuse_pending(&node);
        }
    }

    /// What waits for `node` cannot be delivered: dropped, and a call that
    /// was to ring there is refused as to an offline user.
    fn refuse_pending(&mut self, node: &NodeId) {
        for bytes in self
            .pending
            .remove(node)
            .map(|(_, queued)| queued)
            .unwrap_or_default()
        {
            if let Ok(Some((TrunkFrame::Event(NodeEvent::Ring { call_id, .. }), _))) =
                trunk::decode(&bytes)
            {
                let reason = crate::protocol::qdatastream::QString::from_str("offline");
                let refused = NodeEvent::Reject { call_id, reason };
                self.happened
                    .push(Happened::Frame(node.clone(), TrunkFrame::Event(refused)));
            }
        }
    }

    /// Closes the trunk to `node` (it is gone).
    pub fn drop_node(&mut self, node: &NodeId, registry: &Registry) {
        self.pending.remove(node);
        let slots: Vec<usize> = self
            .trunks
            .iter()
            .filter(|(_, t)| t.node.as_ref() == Some(node))
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            self.close_trunk(slot, "the node is gone", registry);
        }
    }

    // ----- Redis -------------------------------------------------------------

    /// Housekeeping: (re)connect Redis, heartbeat, time commands out, dial
    /// the trunks this node owes.
    pub fn tick(&mut self, now: Instant, registry: &Registry) {
        for which in [REDIS_COMMANDS, REDIS_EVENTS] {
            let timed_out = self
                .redis_mut(which)
                .pending
                .front()
                .is_some_and(|(_, since)| now.duration_since(*since) > COMMAND_TIMEOUT);
            if timed_out {
                self.redis_down(which, "a command got no answer within 3 s", registry);
            }
            self.connect_redis(which, now, registry);
        }
        if now >= self.next_heartbeat && matches!(self.commands.state, RedisState::Up(_)) {
            self.next_heartbeat = now + Duration::from_millis(directory::HEARTBEAT_MS);
            self.heartbeat();
            let nodes = self.keys.nodes.clone();
            send_command(
                &mut self.commands,
                &[b"HGETALL", nodes.as_bytes()],
                Pending::NodeTable,
            );
        }
        if self.refresh_nodes && matches!(self.commands.state, RedisState::Up(_)) {
            self.refresh_nodes = false;
            let nodes = self.keys.nodes.clone();
            send_command(
                &mut self.commands,
                &[b"HGETALL", nodes.as_bytes()],
                Pending::NodeTable,
            );
        }
        self.dial_owed(registry);
        self.flush_redis(REDIS_COMMANDS, registry);
        self.flush_redis(REDIS_EVENTS, registry);
    }

    /// Dials the live nodes this node owes a trunk, and those it has
    /// something queued for.
    fn dial_owed(&mut self, registry: &Registry) {
        let mut wanted = self.directory.to_dial();
        for node in self.pending.keys() {
            if let Some(addr) = self.directory.trunk_addr(node) {
                wanted.push((node.clone(), addr));
            }
        }
        let now = Instant::now();
        for (node, addr) in wanted {
            let waiting = self
                .dial_backoff
                .get(&node)
                .is_some_and(|(at, _)| now < *at);
            if !waiting && !self.by_node.contains_key(&node) && !self.dialling(&node) {
                self.dial(node, addr, registry);
            }
        }
    }

    /// This node's entry in the nodes hash: its trunk address, now.
    fn heartbeat(&mut self) {
        let me = self.directory.me().to_string();
        let value = format!("{} {}", self.options.trunk_advertise, unix_ms());
        let nodes = &self.keys.nodes;
        send_command(
            &mut self.commands,
            &[b"HSET", nodes.as_bytes(), me.as_bytes(), value.as_bytes()],
            Pending::Ignore,
        );
    }

    fn redis_mut(&mut self, which: Token) -> &mut RedisConn {
        if which == REDIS_COMMANDS {
            &mut self.commands
        } else {
            &mut self.events
        }
    }

    fn connect_redis(&mut self, which: Token, now: Instant, registry: &Registry) {
        let addr = self.options.redis;
        let redis = self.redis_mut(which);
        let RedisState::Down { retry_at } = redis.state else {
            return;
        };
        if now < retry_at {
            return;
        }
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if registry
                    .register(&mut stream, redis.token, interest)
                    .is_ok()
                {
                    let _ = stream.set_nodelay(true);
                    redis.state = RedisState::Connecting(stream);
                }
            }
            Err(error) => {
                debug!("cluster: Redis {addr}: {error}");
                redis.state = RedisState::Down {
                    retry_at: now + redis.backoff,
                };
                redis.backoff = (redis.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn redis_down(&mut self, which: Token, why: &str, registry: &Registry) {
        let addr = self.options.redis;
        let was_up = matches!(self.redis_mut(which).state, RedisState::Up(_));
        let redis = self.redis_mut(which);
        if let RedisState::Up(stream) | RedisState::Connecting(stream) = &mut redis.state {
            let _ = registry.deregister(stream);
        }
        redis.state = RedisState::Down {
            retry_at: Instant::now() + redis.backoff,
        };
        redis.backoff = (redis.backoff * 2).min(MAX_BACKOFF);
        redis.input.clear();
        redis.output.clear();
        redis.pending.clear();
        if was_up {
            let name = if which == REDIS_COMMANDS {
                "commands"
            } else {
                "events"
            };
            warn!(
                "cluster: Redis {addr} lost ({name} connection: {why}); local users are still served, calls to users on other nodes that are not known are refused offline until it is back"
            );
        }
        if which == REDIS_EVENTS {
            self.loading = None;
        }
    }

    /// A Redis connection is ready.
    pub fn redis_event(&mut self, which: Token, registry: &Registry) {
        let db = self.options.redis_db;
        let redis = self.redis_mut(which);
        if let RedisState::Connecting(stream) = &redis.state {
            match stream.peer_addr() {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => return self.redis_down(which, "connect failed", registry),
            }
            let RedisState::Connecting(stream) = std::mem::replace(
                &mut redis.state,
                RedisState::Down {
                    retry_at: Instant::now(),
                },
            ) else {
                return;
            };
            redis.state = RedisState::Up(stream);
            redis.backoff = Duration::from_millis(100);
            if db != 0 {
                let db = db.to_string();
                send_command(redis, &[b"SELECT", db.as_bytes()], Pending::Ignore);
            }
            self.on_redis_up(which);
        }
        if let Err(why) = self.read_redis(which) {
            return self.redis_down(which, &why, registry);
        }
        self.flush_redis(which, registry);
    }

    fn on_redis_up(&mut self, which: Token) {
        info!(
            "cluster: Redis {} reached ({})",
            self.options.redis,
            if which == REDIS_COMMANDS {
                "commands"
            } else {
                "events"
            }
        );
        if which == REDIS_COMMANDS {
            // The node's entry first: anyone who hears of its users finds
            // its trunk address (commands run in order).
            self.heartbeat();
            self.next_heartbeat = Instant::now();
            // Redis may have come back empty: every local user again.
            let node_users = self.keys.node_users(self.directory.me());
            for (user, value) in self.directory.local_values() {
                self.script(directory::REPUBLISH, &node_users, &[user.as_str(), &value]);
            }
        } else {
            let events = self.keys.events.clone();
            send_command(
                &mut self.events,
                &[b"SUBSCRIBE", events.as_bytes()],
                Pending::Subscribed,
            );
        }
    }

    fn read_redis(&mut self, which: Token) -> Result<(), String> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let redis = self.redis_mut(which);
            let RedisState::Up(stream) = &mut redis.state else {
                return Ok(());
            };
            match stream.read(&mut buf) {
                Ok(0) => return Err("closed by Redis".to_owned()),
                Ok(count) => redis.input.extend_from_slice(&buf[..count]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("read failed: {error}")),
            }
            loop {
                let redis = self.redis_mut(which);
                let (reply, used) = match resp::reply(&redis.input)? {
                    Some(decoded) => decoded,
                    None => break,
                };
                redis.input.drain(..used);
                self.on_reply(which, reply);
            }
        }
    }

    fn on_reply(&mut self, which: Token, reply: Reply) {
        if which == REDIS_EVENTS {
            let items = resp::items(&reply);
            if resp::bytes(items.first().unwrap_or(&Reply::Null)) == Some(b"message") {
                if let Some(event) = items
                    .get(2)
                    .and_then(resp::bytes)
                    .and_then(directory::parse_event)
                {
                    match self.loading.as_mut() {
                        Some(buffered) => buffered.push(event),
                        None => {
                            if let Event::Registered { node, .. } = &event
                                && node != self.directory.me()
                                && !self.directory.is_alive(node)
                            {
                                self.refresh_nodes = true;
                            }
                            let effects = self.directory.on_event(event);
                            self.happened
                                .extend(effects.into_iter().map(Happened::Directory));
                        }
                    }
                }
                return;
            }
            if let Some((Pending::Subscribed, _)) = self.events.pending.pop_front() {
                // Subscribed: load the users hash; events meanwhile wait.
                self.loading = Some(Vec::new());
                let users = self.keys.users.clone();
                send_command(
                    &mut self.commands,
                    &[b"HGETALL", users.as_bytes()],
                    Pending::UsersLoad,
                );
            }
            return;
        }
        let Some((pending, asked)) = self.commands.pending.pop_front() else {
            return;
        };
        if let Some(error) = resp::error(&reply) {
            warn!("cluster: Redis refused a command ({pending:?}): {error}");
            return;
        }
        match pending {
            Pending::Ignore | Pending::Subscribed => {}
            Pending::NodeTable => {
                let entries = pairs(&reply)
                    .filter_map(|(node, value)| {
                        let node = NodeId::new(std::str::from_utf8(node).ok()?)?;
                        let (addr, seen) = directory::parse_node(value)?;
                        Some((node, addr, seen))
                    })
                    .collect();
                let dead = self.directory.node_table(entries, unix_ms());
                // Nodes not in a table read after frames began to wait for
                // them (dead, or never there) get nothing of those frames.
                let unknown: Vec<NodeId> = self
                    .pending
                    .iter()
                    .filter(|(node, (since, _))| *since < asked && !self.directory.is_alive(node))
                    .map(|(node, _)| node.clone())
                    .collect();
                for node in unknown {
                    self.refuse_pending(&node);
                }
                for dead in dead {
                    warn!("cluster: node {dead} missed its heartbeats; removing it and its users");
                    let dead_users = self.keys.node_users(&dead);
                    let keys = [
                        self.keys.users.as_str(),
                        self.keys.events.as_str(),
                        dead_users.as_str(),
                        self.keys.nodes.as_str(),
                    ];
                    eval(&mut self.commands, directory::REAP, &keys, &[dead.as_str()]);
                }
            }
            Pending::UsersLoad => {
                let entries = pairs(&reply)
                    .filter_map(|(user, value)| {
                        let user =
                            crate::ids::UserId::from_utf8(user, crate::ids::USER_ID_MAX_BYTES)
                                .ok()?;
                        let (node, stamp) = directory::parse_holder(value)?;
                        Some((user, node, stamp))
                    })
                    .collect();
                let mut effects = self.directory.load(entries);
                for event in self.loading.take().unwrap_or_default() {
                    effects.extend(self.directory.on_event(event));
                }
                info!(
                    "cluster: directory loaded ({} users on other nodes)",
                    effects
                        .iter()
                        .filter(|e| matches!(e, Effect::Remote(_, Some(_))))
                        .count()
                );
                self.happened
                    .extend(effects.into_iter().map(Happened::Directory));
            }
        }
    }

    fn flush_redis(&mut self, which: Token, registry: &Registry) {
        let redis = self.redis_mut(which);
        let RedisState::Up(stream) = &mut redis.state else {
            return;
        };
        while !redis.output.is_empty() {
            match stream.write(&redis.output) {
                Ok(0) => break,
                Ok(count) => {
                    redis.output.drain(..count);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let why = format!("write failed: {error}");
                    return self.redis_down(which, &why, registry);
                }
            }
        }
    }

    /// Flushes both Redis connections.
    pub fn flush_all(&mut self, registry: &Registry) {
        self.flush_redis(REDIS_COMMANDS, registry);
        self.flush_redis(REDIS_EVENTS, registry);
        self.flush_trunks(registry);
    }
}

/// Queues a command (only on a connection that is up: the others are
/// brought up to date when they come back).
fn send_command(redis: &mut RedisConn, args: &[&[u8]], pending: Pending) {
    if !matches!(redis.state, RedisState::Up(_)) {
        return;
    }
    resp::command(args, &mut redis.output);
    redis.pending.push_back((pending, Instant::now()));
}

/// `EVAL script numkeys keys... args...` (its reply is not needed).
fn eval(redis: &mut RedisConn, script: &str, keys: &[&str], args: &[&str]) {
    let count = keys.len().to_string();
    let mut argv: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), count.as_bytes()];
    argv.extend(keys.iter().chain(args).map(|arg| arg.as_bytes()));
    send_command(redis, &argv, Pending::Ignore);
}

/// An HGETALL reply's (field, value) pairs.
fn pairs(reply: &Reply) -> impl Iterator<Item = (&[u8], &[u8])> {
    resp::items(reply)
        .chunks(2)
        .filter_map(|pair| Some((resp::bytes(pair.first()?)?, resp::bytes(pair.get(1)?)?)))
}

/// HMAC-SHA256(secret, nonce || prover's node id).
fn proof(secret: &[u8], nonce: &[u8], prover: &NodeId) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut message = nonce.to_vec();
    message.extend_from_slice(prover.as_str().as_bytes());
    ring::hmac::sign(&key, &message).as_ref().to_vec()
}
