//! FILE across nodes (PROTOCOL.md sections 6, 8.4 and 11): a FILE to a user
//! on another node goes over the trunk as a stream (FILE_START, then
//! FILE_DATA within the credit the receiving node grants). The receiving
//! node cuts it through into its receiver like a local FILE, the stream
//! standing for the sender ([`ConnId::trunk_stream`]), and grants more
//! credit as the receiver drains: a slow receiver holds back only its own
//! sender, never the trunk. A receiver that goes away ends the stream
//! (FILE_END: the sender reads and drops the rest and is told how much
//! arrived); a sender that goes away aborts it (FILE_ABORT: the frame is
//! completed with zeros).

use super::*;
use crate::cluster::trunk::{self, TrunkFrame};
use crate::ids::{NodeId, UserId};
use crate::protocol::qdatastream::{ByteArrayLen, QString};
use crate::server::buffer::PieceKind;
use crate::server::cluster::{Incoming, Outgoing};
use crate::server::pipe::decide::Wake;
use crate::server::pipe::state::{CutShort, Outbound};

/// Data bytes a receiving node lets a stream send ahead of its receiver.
const FILE_WINDOW: u64 = 256 * 1024;

impl Server {
    /// A FILE header from `id` to `to` on `node`: the stream starts; its
    /// data follows within credit.
    pub(crate) fn file_to_trunk(
        &mut self,
        id: ConnId,
        node: NodeId,
        from: UserId,
        to: UserId,
        name: QString,
        data: ByteArrayLen,
    ) -> Step {
        let Some(cluster) = self.cluster.as_mut() else {
            return self.file_undeliverable(id, data);
        };
        let stream = cluster.files.next_stream();
        let total = u64::from(data.len);
        let start = TrunkFrame::FileStart {
            stream,
            from,
            to,
            name,
            total,
        };
        if !cluster.send(&node, &start, self.poll.registry()) {
            return self.file_undeliverable(id, data);
        }
        self.relay.note_file(true);
        if total > 0 {
            let outgoing = Outgoing {
                sender: id,
                node,
                total,
                sent: 0,
                granted: 0,
            };
            cluster.files.outgoing.insert(stream, outgoing);
            cluster.files.sending.insert(id, stream);
        }
        Step::Done
    }

    /// The next `len` body bytes of `id`'s FILE, if it goes over a trunk:
    /// sent within the stream's credit, or `id` waits for more credit.
    pub(crate) fn file_body_to_trunk(
        &mut self,
        id: ConnId,
        len: usize,
        last: bool,
    ) -> Option<Step> {
        let cluster = self.cluster.as_mut()?;
        let stream = *cluster.files.sending.get(&id)?;
        let outgoing = cluster.files.outgoing.get_mut(&stream)?;
        if outgoing.sent >= outgoing.granted {
            return Some(Step::Wait {
                on: id,
                at: PausedAt::FrameStart,
            });
        }
        let node = outgoing.node.clone();
        outgoing.sent += len as u64;
        let data = self
            .conns
            .get(id.index())
            .filter(|c| c.id == id)
            .and_then(|c| c.input.data().get(..len))
            .unwrap_or_default();
        for chunk in data.chunks(trunk::MEDIA_CHUNK) {
            let frame = TrunkFrame::FileData {
                stream,
                data: chunk.to_vec(),
            };
            cluster.send(&node, &frame, self.poll.registry());
        }
        if last {
            cluster.files.forget_outgoing(stream);
        }
        Some(Step::Done)
    }

    /// A file frame from `node`'s trunk.
    pub(super) fn file_from_trunk(&mut self, node: NodeId, frame: TrunkFrame) {
        match frame {
            TrunkFrame::FileStart {
                stream,
                from,
                to,
                name,
                total,
            } => self.incoming_file(node, stream, from, to, name, total),
            TrunkFrame::FileData { stream, data } => self.incoming_data(node, stream, &data),
            TrunkFrame::FileCredit { stream, granted } => self.file_credit(stream, granted),
            TrunkFrame::FileEnd { stream, delivered } => self.file_receiver_gone(stream, delivered),
            TrunkFrame::FileAbort { stream } => self.incoming_aborted(&(node, stream)),
            _ => {}
        }
    }

    fn incoming_file(
        &mut self,
        node: NodeId,
        stream: u32,
        from: UserId,
        to: UserId,
        name: QString,
        total: u64,
    ) {
        let receiver = self.relay.local_conn(&to);
        let view = receiver.and_then(|conn| self.receiver_view(conn));
        let (Some(receiver), Some(view), Ok(len)) = (receiver, view, u32::try_from(total)) else {
            debug!("FILE from {from} on {node} to {to}: not online here");
            self.send_to_node(
                &node,
                TrunkFrame::FileEnd {
                    stream,
                    delivered: 0,
                },
            );
            return;
        };
        let mut header = Vec::new();
        let data = ByteArrayLen { len, null: false };
        encode_server(
            &ServerFrame::FileHeader { from, name, data },
            view.framing,
            &mut header,
        );
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let key = (node, stream);
        let incoming = Incoming {
            to: receiver,
            as_sender: ConnId::trunk_stream(stream),
            header: Some(header),
            total,
            received: 0,
            granted: 0,
        };
        cluster.files.incoming.insert(key.clone(), incoming);
        cluster
            .files
            .receiving
            .entry(receiver)
            .or_default()
            .push(key);
        self.start_incoming(receiver);
    }

    /// The first stream waiting for `receiver` starts once nothing else is
    /// being cut through into it: its header goes out, then credit.
    fn start_incoming(&mut self, receiver: ConnId) {
        let Some(key) = self.waiting_stream(receiver) else {
            return;
        };
        let idle = self
            .conn(receiver)
            .is_some_and(|c| c.inbound.owner().is_none() && !c.is_closing());
        if !idle {
            return;
        }
        let Some(incoming) = self
            .cluster
            .as_mut()
            .and_then(|c| c.files.incoming.get_mut(&key))
        else {
            return;
        };
        let (as_sender, total) = (incoming.as_sender, incoming.total);
        let header = incoming.header.take().unwrap_or_default();
        if total > 0 {
            self.start_inbound(receiver, as_sender);
        }
        let _ = self.write_piece(
            Some(as_sender),
            receiver,
            &header,
            0..0,
            PieceKind::Reliable,
            &[0],
        );
        if total == 0 {
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.files.forget_incoming(&key);
            }
            return self.start_incoming(receiver);
        }
        self.grant(&key);
    }

    /// The stream first in line for `receiver`, if it has not started.
    fn waiting_stream(&self, receiver: ConnId) -> Option<(NodeId, u32)> {
        let files = &self.cluster.as_ref()?.files;
        let key = files.receiving.get(&receiver)?.first()?;
        files.incoming.get(key)?.header.as_ref()?;
        Some(key.clone())
    }

    /// More credit for stream `key` while its receiver is under the soft
    /// limit (granted in steps of a quarter window, not per piece).
    fn grant(&mut self, key: &(NodeId, u32)) {
        let soft = self.config.output_soft;
        let Some(incoming) = self
            .cluster
            .as_ref()
            .and_then(|c| c.files.incoming.get(key))
        else {
            return;
        };
        let (to, as_sender) = (incoming.to, incoming.as_sender);
        let room = self
            .receiver_view(to)
            .is_some_and(|view| view.ahead_of(Some(as_sender)) < soft);
        let want = (incoming.received + FILE_WINDOW).min(incoming.total);
        if !room
            || incoming.header.is_some()
            || want < incoming.granted + FILE_WINDOW / 4 && want < incoming.total
        {
            return;
        }
        if want <= incoming.granted {
            return;
        }
        if let Some(incoming) = self
            .cluster
            .as_mut()
            .and_then(|c| c.files.incoming.get_mut(key))
        {
            incoming.granted = want;
        }
        let (node, stream) = key.clone();
        self.send_to_node(
            &node,
            TrunkFrame::FileCredit {
                stream,
                granted: want,
            },
        );
    }

    fn incoming_data(&mut self, node: NodeId, stream: u32, data: &[u8]) {
        let key = (node, stream);
        let Some(incoming) = self
            .cluster
            .as_mut()
            .and_then(|c| c.files.incoming.get_mut(&key))
        else {
            return;
        };
        incoming.received += data.len() as u64;
        let (to, as_sender, done) = (
            incoming.to,
            incoming.as_sender,
            incoming.received >= incoming.total,
        );
        let _ = self.write_piece(Some(as_sender), to, data, 0..0, PieceKind::Reliable, &[]);
        if done {
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.files.forget_incoming(&key);
            }
            if self.conn(to).and_then(|c| c.inbound.owner()) == Some(as_sender) {
                self.end_inbound(to);
            }
            self.start_incoming(to);
        } else {
            self.grant(&key);
        }
    }

    /// The sender of `key` is gone: its frame is completed with zeros.
    fn incoming_aborted(&mut self, key: &(NodeId, u32)) {
        let Some(incoming) = self
            .cluster
            .as_mut()
            .and_then(|c| c.files.forget_incoming(key))
        else {
            return;
        };
        if incoming.header.is_none() {
            let remaining = incoming.total - incoming.received;
            self.pad_frame(incoming.as_sender, incoming.to, remaining);
        }
        self.start_incoming(incoming.to);
    }

    fn file_credit(&mut self, stream: u32, granted: u64) {
        let Some(outgoing) = self
            .cluster
            .as_mut()
            .and_then(|c| c.files.outgoing.get_mut(&stream))
        else {
            return;
        };
        outgoing.granted = outgoing.granted.max(granted);
        let sender = outgoing.sender;
        self.wake(sender, Wake::Owner(sender));
    }

    /// The receiving node says the receiver of `stream` is gone: the
    /// sender reads and drops the rest, and is told how much arrived.
    fn file_receiver_gone(&mut self, stream: u32, delivered: u64) {
        let Some(outgoing) = self
            .cluster
            .as_mut()
            .and_then(|c| c.files.forget_outgoing(stream))
        else {
            return;
        };
        let cut_short = CutShort {
            delivered,
            total: outgoing.total,
        };
        let sender = outgoing.sender;
        if outgoing.sent >= outgoing.total {
            self.file_cut_short(sender, cut_short);
            return;
        }
        self.wake(sender, Wake::Owner(sender));
        self.set_outbound(
            sender,
            Outbound::Discard {
                cut_short: Some(cut_short),
            },
        );
        self.mark_ready(sender);
    }

    /// `dest` drained some output: streams into it may go on.
    pub(crate) fn trunk_file_drained(&mut self, dest: ConnId) {
        let Some(keys) = self
            .cluster
            .as_ref()
            .and_then(|c| c.files.receiving.get(&dest))
        else {
            return;
        };
        let first = keys.first().cloned();
        self.start_incoming(dest);
        if let Some(key) = first {
            self.grant(&key);
        }
    }

    /// Frames wait behind stream `as_sender` into `to`, and it does not
    /// move: it is completed with zeros and its sender told to stop.
    pub(crate) fn trunk_file_stalled(&mut self, as_sender: ConnId, to: ConnId) {
        let key = self.cluster.as_ref().and_then(|c| {
            c.files
                .receiving
                .get(&to)?
                .iter()
                .find(|key| {
                    c.files
                        .incoming
                        .get(key)
                        .is_some_and(|i| i.as_sender == as_sender)
                })
                .cloned()
        });
        let Some(key) = key else {
            return;
        };
        let Some(incoming) = self
            .cluster
            .as_mut()
            .and_then(|c| c.files.forget_incoming(&key))
        else {
            return;
        };
        warn!(
            "{to}: a FILE from {} stalled while other frames waited; completed with zeros",
            key.0
        );
        self.pad_frame(as_sender, to, incoming.total - incoming.received);
        let (node, stream) = key;
        let delivered = incoming.received;
        self.send_to_node(&node, TrunkFrame::FileEnd { stream, delivered });
    }

    /// `id` is closing: a stream it sends is aborted, streams to it end.
    pub(super) fn trunk_files_left(&mut self, id: ConnId) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if let Some(stream) = cluster.files.sending.get(&id).copied()
            && let Some(outgoing) = cluster.files.forget_outgoing(stream)
        {
            self.send_to_node(&outgoing.node, TrunkFrame::FileAbort { stream });
        }
        let keys = self
            .cluster
            .as_ref()
            .and_then(|c| c.files.receiving.get(&id).cloned())
            .unwrap_or_default();
        for key in keys {
            let Some(incoming) = self
                .cluster
                .as_mut()
                .and_then(|c| c.files.forget_incoming(&key))
            else {
                continue;
            };
            let (node, stream) = key;
            let delivered = incoming.received;
            self.send_to_node(&node, TrunkFrame::FileEnd { stream, delivered });
        }
    }

    /// The trunk to `node` is down: streams to it end for their senders
    /// (told how much was sent), streams from it are completed with zeros.
    pub(super) fn trunk_files_lost(&mut self, node: &NodeId) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let outgoing: Vec<(u32, u64)> = cluster
            .files
            .outgoing
            .iter()
            .filter(|(_, o)| o.node == *node)
            .map(|(stream, o)| (*stream, o.sent.min(o.granted)))
            .collect();
        let incoming: Vec<(NodeId, u32)> = cluster
            .files
            .incoming
            .keys()
            .filter(|(on, _)| on == node)
            .cloned()
            .collect();
        for (stream, delivered) in outgoing {
            self.file_receiver_gone(stream, delivered);
        }
        for key in incoming {
            self.incoming_aborted(&key);
        }
    }

    fn send_to_node(&mut self, node: &NodeId, frame: TrunkFrame) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.send(node, &frame, self.poll.registry());
        }
    }
}
