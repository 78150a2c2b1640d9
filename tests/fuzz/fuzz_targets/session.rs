//! Fuzz target: several connections' parsers feeding one relay, driven by a
//! script (feed bytes to a connection, close it, reconnect it, let time
//! pass). Nothing may panic, and the relay's call state must stay
//! consistent: media links are symmetric, nobody is linked to itself, and
//! no action targets a connection that is gone. (The socket layer itself is
//! covered by tests/hostile.rs over real sockets.)
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use callrelay::ids::{ConnId, UserId};
use callrelay::protocol::Limits;
use callrelay::protocol::frame::ClientFrame;
use callrelay::protocol::parser::{FrameParser, ParseContext, Parsed, SeedPhase};
use callrelay::relay::{Action, Relay, RelayTimer};
use libfuzzer_sys::fuzz_target;

const CONNS: usize = 4;

struct Conn {
    id: ConnId,
    parser: FrameParser,
    buffer: Vec<u8>,
    user: Vec<u8>,
    open: bool,
}

struct World {
    relay: Relay,
    conns: Vec<Conn>,
    links: HashMap<ConnId, ConnId>,
    timers: Vec<(Instant, RelayTimer)>,
    now: Instant,
    generation: u32,
    limits: Limits,
}

impl World {
    fn new() -> World {
        let mut world = World {
            relay: Relay::new(Duration::from_secs(30), 16),
            conns: Vec::new(),
            links: HashMap::new(),
            timers: Vec::new(),
            now: Instant::now(),
            generation: 0,
            limits: Limits { max_user_id: 16, max_field: 64, max_text: 256, max_file: 4096, max_media: 4096 },
        };
        for slot in 0..CONNS {
            let id = world.fresh_id(slot);
            world.conns.push(Conn { id, parser: FrameParser::new(), buffer: Vec::new(), user: Vec::new(), open: true });
        }
        world
    }

    fn fresh_id(&mut self, slot: usize) -> ConnId {
        self.generation += 1;
        ConnId { slot: slot as u32, generation: self.generation }
    }

    fn live(&self) -> HashSet<ConnId> {
        self.conns.iter().filter(|c| c.open).map(|c| c.id).collect()
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let live = self.live();
        let mut queue = actions;
        while !queue.is_empty() {
            for action in std::mem::take(&mut queue) {
                match action {
                    Action::Send { to, ref frame } => assert!(live.contains(&to), "send to a gone connection {to}: {frame:?}"),
                    Action::Notify { to, .. } => assert!(live.contains(&to), "notify to a gone connection {to}"),
                    Action::Close { conn, .. } => {
                        let mut more = Vec::new();
                        self.close(conn, &mut more);
                        queue.extend(more);
                    }
                    Action::Link { conn, peer, .. } => {
                        assert_ne!(conn, peer, "linked to itself");
                        self.links.insert(conn, peer);
                    }
                    Action::Unlink { conn } => {
                        self.links.remove(&conn);
                    }
                    Action::ArmTimer { at, timer } => self.timers.push((at, timer)),
                }
            }
        }
        for (a, b) in &self.links {
            assert_eq!(self.links.get(b), Some(a), "links are not symmetric");
        }
    }

    fn close(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if let Some(conn) = self.conns.iter_mut().find(|c| c.id == id && c.open) {
            conn.open = false;
            self.relay.leave(id, out);
            self.links.remove(&id);
        }
    }

    fn feed(&mut self, slot: usize, bytes: &[u8]) {
        let limits = self.limits;
        let now = self.now;
        if !self.conns[slot].open {
            return;
        }
        self.conns[slot].buffer.extend_from_slice(bytes);
        let mut actions = Vec::new();
        let mut failed = false;
        loop {
            let conn = &mut self.conns[slot];
            let relay = &mut self.relay;
            let context = ParseContext { limits: &limits, user_id: &conn.user, seed_phase: SeedPhase::Normal };
            let consumed = match conn.parser.parse(&conn.buffer, &context) {
                Err(_) => {
                    failed = true;
                    break;
                }
                Ok(Parsed::NeedMore) => break,
                Ok(Parsed::Frame { frame: ClientFrame::Register { user, .. }, consumed }) => {
                    let Ok(user_id) = UserId::from_utf8(user, 16) else {
                        failed = true;
                        break;
                    };
                    let user = user.to_vec();
                    relay.register(conn.id, user_id, &mut actions);
                    conn.user = user;
                    consumed
                }
                Ok(Parsed::Frame { frame: ClientFrame::FileStart { to, .. }, consumed }) => {
                    let _ = relay.route_file(conn.id, to);
                    consumed
                }
                Ok(Parsed::Frame { frame, consumed }) => {
                    relay.on_frame(conn.id, &frame, now, &mut actions);
                    consumed
                }
                Ok(Parsed::Media { header, in_hand, .. }) => header + in_hand,
                Ok(Parsed::Body { len, .. }) => len,
                Ok(Parsed::Stale { consumed }) => consumed,
            };
            conn.buffer.drain(..consumed);
        }
        // Actions are applied in order: those from frames before a protocol
        // error, then those of the close it causes.
        self.apply(actions);
        if failed {
            let id = self.conns[slot].id;
            let mut closing = Vec::new();
            self.close(id, &mut closing);
            self.apply(closing);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut world = World::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let slot = usize::from(op) % CONNS;
        match (op >> 2) % 4 {
            0 | 1 => {
                let len = usize::from(rest.first().copied().unwrap_or(0)) % 64;
                let take = len.min(rest.len().saturating_sub(1));
                let bytes = rest.get(1..1 + take).unwrap_or_default().to_vec();
                rest = rest.get(1 + take..).unwrap_or_default();
                world.feed(slot, &bytes);
            }
            2 => {
                let mut actions = Vec::new();
                let id = world.conns[slot].id;
                world.close(id, &mut actions);
                world.apply(actions);
                let fresh = world.fresh_id(slot);
                world.conns[slot] = Conn { id: fresh, parser: FrameParser::new(), buffer: Vec::new(), user: Vec::new(), open: true };
            }
            _ => {
                world.now += Duration::from_secs(u64::from(op >> 4) * 4);
                let (due, pending): (Vec<_>, Vec<_>) = world.timers.drain(..).partition(|(at, _)| *at <= world.now);
                world.timers = pending;
                for (_, timer) in due {
                    let mut actions = Vec::new();
                    world.relay.on_timer(&timer, world.now, &mut actions);
                    world.apply(actions);
                }
            }
        }
    }
});
