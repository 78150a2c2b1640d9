//! The cluster in the loop (PROTOCOL.md section 11): readiness of the Redis
//! connections and trunks, the housekeeping tick, and what their news
//! means for connections: directory changes to the relay, events from
//! other nodes to the relay, media from other nodes to the party here, and
//! media of a party here to its trunk.

use super::*;
use crate::cluster::directory::Effect;
use crate::cluster::trunk::{self, TrunkFrame};
use crate::config::ClusterOptions;
use crate::ids::{CallId, NodeId};
use crate::relay::NodeEvent;
use crate::server::buffer::PieceKind;
use crate::server::cluster::{
    ClusterIo, Happened, REDIS_COMMANDS, REDIS_EVENTS, TICK, TRUNK_BASE, TRUNK_LISTENER,
};

impl Server {
    /// Joins the cluster: binds the trunk listener; Redis is reached from
    /// the loop (and reached again whenever it is lost).
    pub fn join_cluster(
        &mut self,
        options: ClusterOptions,
        secret: Option<Vec<u8>>,
    ) -> io::Result<()> {
        let cluster = ClusterIo::new(options, secret, self.poll.registry())?;
        self.cluster = Some(Box::new(cluster));
        self.timers.arm(Instant::now(), TimerKey::ClusterTick);
        Ok(())
    }

    /// True for a token of the cluster's sockets; handles its event.
    pub(super) fn cluster_event(&mut self, token: Token) -> bool {
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        let registry = self.poll.registry();
        match token {
            REDIS_COMMANDS | REDIS_EVENTS => cluster.redis_event(token, registry),
            TRUNK_LISTENER => cluster.accept(registry),
            Token(slot) if (TRUNK_BASE..METRICS_BASE).contains(&slot) => {
                cluster.trunk_event(slot - TRUNK_BASE, registry)
            }
            _ => return false,
        }
        self.cluster_happened();
        true
    }

    /// The housekeeping tick.
    pub(super) fn cluster_tick(&mut self) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.tick(self.now, self.poll.registry());
            self.timers.arm(self.now + TICK, TimerKey::ClusterTick);
        }
        self.cluster_happened();
    }

    /// Writes what the turn queued for Redis and the trunks.
    pub(super) fn flush_cluster(&mut self) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.flush_all(self.poll.registry());
        }
        self.cluster_happened();
    }

    /// A user registered here.
    pub(super) fn cluster_registered(&mut self, user: &crate::ids::UserId) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.registered(user);
        }
    }

    /// A user is no longer registered here.
    pub(super) fn cluster_unregistered(&mut self, user: &crate::ids::UserId) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.unregistered(user);
        }
    }

    /// Acts on what the cluster's I/O brought.
    fn cluster_happened(&mut self) {
        loop {
            let Some(cluster) = self.cluster.as_mut() else {
                return;
            };
            let happened = std::mem::take(&mut cluster.happened);
            if happened.is_empty() {
                return;
            }
            for news in happened {
                match news {
                    Happened::Directory(effect) => self.directory_effect(effect),
                    Happened::Frame(node, TrunkFrame::Event(event)) => {
                        self.relay
                            .on_node_event(&node, event, self.now, &mut self.actions);
                    }
                    Happened::Frame(
                        _,
                        TrunkFrame::Media {
                            call_id, payload, ..
                        },
                    ) => {
                        self.media_from_trunk(&call_id, &payload);
                    }
                    Happened::Frame(node, frame) => self.file_from_trunk(node, frame),
                    Happened::TrunkDown(node) => {
                        self.trunk_files_lost(&node);
                        self.relay.node_lost(&node, self.now, &mut self.actions);
                    }
                    Happened::TrunkUp(node) => self.relay.node_back(&node, &mut self.actions),
                }
            }
            let _ = self.apply_actions();
        }
    }

    fn directory_effect(&mut self, effect: Effect) {
        match effect {
            Effect::Remote(user, node) => {
                if let Some(node) = &node {
                    self.relay.user_moved(&user, node, &mut self.actions);
                }
                self.relay.set_remote(user, node);
            }
            Effect::Replaced(user, node) => {
                if let Some(conn) = self.relay.local_conn(&user) {
                    self.relay.moved(conn, &node, &mut self.actions);
                    let detail = format!("a newer connection registered this user id on {node}");
                    self.begin_close(conn, CloseReason::Error(ErrorCode::Replaced, detail));
                }
            }
            Effect::NodeGone(node) => {
                warn!(
                    "cluster: node {node} is gone; its calls wait for their parties to come back"
                );
                self.relay.node_lost(&node, self.now, &mut self.actions);
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.drop_node(&node, self.poll.registry());
                }
            }
        }
    }

    /// The relay's event for another node.
    pub(super) fn forward(&mut self, node: NodeId, event: NodeEvent) {
        let sent = match self.cluster.as_mut() {
            Some(cluster) => cluster.send(
                &node,
                &TrunkFrame::Event(event.clone()),
                self.poll.registry(),
            ),
            None => false,
        };
        if !sent {
            warn!("cluster: cannot reach node {node}: {event:?} not delivered");
            // A call that cannot ring is refused as to an offline user.
            if let NodeEvent::Ring { call_id, .. } = event {
                let refused = NodeEvent::Reject {
                    call_id,
                    reason: crate::protocol::qdatastream::QString::from_str("offline"),
                };
                self.relay
                    .on_node_event(&node, refused, self.now, &mut self.actions);
            }
        }
    }

    /// A whole media payload from another node for the party of `call_id`
    /// here: queued in the receiver's framing like relayed media, so the
    /// bounded delay of PROTOCOL.md 8.2 applies here too.
    fn media_from_trunk(&mut self, call_id: &CallId, payload: &[u8]) {
        let Some(to) = self.relay.media_receiver(call_id) else {
            self.counters.media_dropped_detached += 1;
            return;
        };
        let Some(view) = self.receiver_view(to) else {
            self.counters.media_dropped_detached += 1;
            return;
        };
        if view.ahead_of(None) > self.config.output_soft {
            self.counters.media_dropped_overflow += 1;
            return;
        }
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        let payload_len = crate::protocol::qdatastream::wire_u32(payload.len());
        encode_server(
            &ServerFrame::MediaHeader { payload_len },
            view.framing,
            &mut bytes,
        );
        bytes.extend_from_slice(payload);
        let _ = self.write_piece(None, to, &bytes, 0..0, PieceKind::Media, &[0]);
        self.scratch = bytes;
        self.counters.media_frames_relayed += 1;
        self.counters.media_bytes_relayed += payload.len() as u64;
    }

    /// Media bytes of `id` (its input `range`) for its peer on `node`:
    /// `first` carries the whole payload's length on a frame's first
    /// piece; `last` ends the frame. A trunk that is backed up drops new
    /// frames (never the rest of one that started).
    pub(crate) fn media_to_trunk(
        &mut self,
        id: ConnId,
        node: &NodeId,
        call_id: &CallId,
        range: std::ops::Range<usize>,
        first: Option<u32>,
        last: bool,
    ) -> bool {
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        if first.is_some() && cluster.media_room(node).is_none() {
            self.counters.media_dropped_overflow += 1;
            return false;
        }
        let Some(conn) = self.conns.get(id.index()).filter(|c| c.id == id) else {
            return false;
        };
        let data = conn.input.data().get(range).unwrap_or_default();
        let mut header = Vec::with_capacity(64);
        let mut chunks = data.chunks(trunk::MEDIA_CHUNK).peekable();
        let mut first = first;
        if chunks.peek().is_none() {
            trunk::encode_media_header(call_id, first, last, 0, &mut header);
            cluster.send_media(node, &header, &[]);
        }
        while let Some(chunk) = chunks.next() {
            header.clear();
            let ends = last && chunks.peek().is_none();
            trunk::encode_media_header(call_id, first.take(), ends, chunk.len(), &mut header);
            cluster.send_media(node, &header, chunk);
        }
        self.counters.media_bytes_relayed += data.len() as u64;
        if last {
            self.counters.media_frames_relayed += 1;
        }
        true
    }
}
