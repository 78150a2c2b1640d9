//! Per-connection byte buffers.
//!
//! - [`ReadBuffer`]: a window (`start..end`) over storage lent by a
//!   [`BufferPool`] while the connection has unparsed input, and handed back
//!   when it is empty, so an idle connection holds no read buffer at all.
//! - [`WriteQueue`]: bytes accepted for a connection that its socket could
//!   not take yet, in segments that remember what they carry ([`PieceMeta`]:
//!   droppable media or reliable bytes, when they arrived, whether they
//!   begin a frame), so a later policy can drop a whole media frame by age
//!   without touching the rest. The same type holds the frames waiting
//!   behind another sender's cut-through frame (`pipe::Inbound`).
//!
//! Neither knows about calls or sockets.

use std::collections::VecDeque;
use std::time::Instant;

/// Free read buffers, all of one size, kept for reuse.
pub struct BufferPool {
    free: Vec<Vec<u8>>,
    size: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool of `size`-byte buffers that keeps at most `keep` free ones.
    pub fn new(size: usize, keep: usize) -> BufferPool {
        BufferPool {
            free: Vec::new(),
            size,
            keep,
        }
    }

    fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| vec![0; self.size])
    }

    fn give_back(&mut self, buffer: Vec<u8>) {
        if buffer.len() == self.size && self.free.len() < self.keep {
            self.free.push(buffer);
        }
    }

    /// Buffers waiting for reuse.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

/// Unparsed input of one connection.
#[derive(Default)]
pub struct ReadBuffer {
    storage: Vec<u8>,
    start: usize,
    end: usize,
}

/// Why [`ReadBuffer::space`] could not offer room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull;

impl ReadBuffer {
    /// The bytes read and not consumed yet.
    pub fn data(&self) -> &[u8] {
        self.storage.get(self.start..self.end).unwrap_or_default()
    }

    /// How many unconsumed bytes there are.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when every byte read has been consumed.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks the first `count` unconsumed bytes as used.
    pub fn consume(&mut self, count: usize) {
        self.start = (self.start + count).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, borrowing storage from `pool` if there is
    /// none. Unconsumed bytes are moved to the front when that makes room;
    /// the storage grows (doubling, up to `max_len`) only when it is full of
    /// unconsumed bytes, which the parser allows only for a frame that is
    /// still arriving and fits the limits.
    pub fn space(
        &mut self,
        pool: &mut BufferPool,
        max_len: usize,
    ) -> Result<&mut [u8], BufferFull> {
        if self.storage.is_empty() {
            self.storage = pool.take();
        }
        if self.end == self.storage.len() && self.start > 0 {
            self.storage.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.storage.len() {
            if self.storage.len() >= max_len {
                return Err(BufferFull);
            }
            let grown = (self.storage.len() * 2).min(max_len);
            self.storage.resize(grown, 0);
        }
        Ok(self.storage.get_mut(self.end..).unwrap_or_default())
    }

    /// Records that `count` bytes were read into the space.
    pub fn fill(&mut self, count: usize) {
        self.end = (self.end + count).min(self.storage.len());
    }

    /// Hands the storage back to `pool` if nothing is left unconsumed.
    pub fn release_if_empty(&mut self, pool: &mut BufferPool) {
        if self.is_empty() && !self.storage.is_empty() {
            pool.give_back(std::mem::take(&mut self.storage));
        }
    }

    /// Bytes of storage held (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.storage.len()
    }
}

/// What a queued piece of output carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// Media: may be dropped whole (never in part) when it is late.
    Media,
    /// Everything else (signaling, TEXT, FILE, ERROR, padding): never
    /// dropped, kept in order.
    Reliable,
}

/// What the queue remembers of a piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceMeta {
    /// Droppable or not.
    pub kind: PieceKind,
    /// When the relay received it.
    pub arrived: Instant,
    /// The piece begins a frame (otherwise it continues the one before).
    pub starts_frame: bool,
}

/// A run of queued bytes with one [`PieceMeta`].
#[derive(Clone, Copy, Debug)]
struct Segment {
    len: usize,
    meta: PieceMeta,
}

/// One frame of a queue: its first segment's meta and how many segments
/// it spans.
struct FrameSpan {
    meta: PieceMeta,
    segments: usize,
}

/// Output that the socket has not taken yet.
#[derive(Default)]
pub struct WriteQueue {
    bytes: Vec<u8>,
    head: usize,
    segments: VecDeque<Segment>,
    /// Bytes of the front segment already written.
    front_written: usize,
}

impl WriteQueue {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.head
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == self.head
    }

    /// Appends one piece (its parts in order). A piece that continues a
    /// frame joins the segment before it when their kinds agree.
    pub fn push(&mut self, parts: &[&[u8]], meta: PieceMeta) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len == 0 {
            return;
        }
        if self.head > 0 && self.head >= self.bytes.len() / 2 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        match self.segments.back_mut() {
            Some(last) if !meta.starts_frame && last.meta.kind == meta.kind => last.len += len,
            _ => self.segments.push_back(Segment { len, meta }),
        }
    }

    /// Appends the bytes of `parts` (in order) as the frames and frame rests
    /// they are: a frame starts at each offset of `frame_starts` (into the
    /// parts' bytes, ascending); bytes before the first start continue the
    /// frame before. `meta` gives the kind and arrival time.
    pub fn push_frames(&mut self, parts: &[&[u8]], frame_starts: &[usize], meta: PieceMeta) {
        // The common cases, without splitting: one frame, or one frame's rest.
        match frame_starts {
            [] | [0] => {
                let starts_frame = !frame_starts.is_empty();
                return self.push(
                    parts,
                    PieceMeta {
                        starts_frame,
                        ..meta
                    },
                );
            }
            _ => {}
        }
        let total: usize = parts.iter().map(|part| part.len()).sum();
        let mut bounds = Vec::with_capacity(frame_starts.len() + 2);
        bounds.push(0);
        bounds.extend(
            frame_starts
                .iter()
                .copied()
                .filter(|at| *at > 0 && *at < total),
        );
        bounds.push(total);
        for window in bounds.windows(2) {
            let (from, to) = (window[0], window[1]);
            let starts_frame = frame_starts.contains(&from);
            let mut pieces: [&[u8]; 4] = [&[]; 4];
            let mut used = 0;
            let mut offset = 0;
            for part in parts {
                let (start, end) = (offset, offset + part.len());
                offset = end;
                let (lo, hi) = (from.max(start), to.min(end));
                if lo < hi && used < pieces.len() {
                    pieces[used] = part.get(lo - start..hi - start).unwrap_or_default();
                    used += 1;
                }
            }
            self.push(
                &pieces[..used],
                PieceMeta {
                    starts_frame,
                    ..meta
                },
            );
        }
    }

    /// Moves everything in `other` behind this queue's bytes, segments and
    /// all (frames that waited for a cut-through frame to complete).
    pub fn append(&mut self, other: &mut WriteQueue) {
        if other.is_empty() {
            return;
        }
        let mut first = true;
        while let Some(segment) = other.segments.pop_front() {
            let skip = if first { other.front_written } else { 0 };
            first = false;
            let start = other.head;
            let end = start + segment.len - skip;
            let part = other.bytes.get(start..end).unwrap_or_default();
            self.push(&[part], segment.meta);
            other.head = end;
        }
        *other = WriteQueue::default();
    }

    /// The bytes the socket should take next.
    pub fn pending(&self) -> &[u8] {
        self.bytes.get(self.head..).unwrap_or_default()
    }

    /// What the next unwritten byte belongs to, and whether that piece has
    /// begun to go out (a started frame must be finished).
    pub fn front(&self) -> Option<(PieceMeta, bool)> {
        self.segments
            .front()
            .map(|segment| (segment.meta, self.front_written > 0))
    }

    /// Drops every whole media frame that has not begun to go out and
    /// arrived before `cutoff` (PROTOCOL.md 8.2); bytes of other frames
    /// keep their order. `keep_last`: the queue's last frame is still
    /// arriving (a cut-through frame in progress) and stays whatever its
    /// age. Returns the frames dropped.
    pub fn drop_late_media(&mut self, cutoff: Instant, keep_last: bool) -> u64 {
        // A frame is a segment that starts one plus the segments that
        // continue it; find the late ones first, so the common case (none)
        // copies nothing.
        let frames = self.frames();
        let last = frames.len().saturating_sub(1);
        let late = |at: usize, frame: &FrameSpan| {
            frame.meta.kind == PieceKind::Media
                && frame.meta.starts_frame
                && frame.meta.arrived < cutoff
                && !(at == 0 && self.front_written > 0)
                && !(keep_last && at == last)
        };
        if !frames.iter().enumerate().any(|(at, frame)| late(at, frame)) {
            return 0;
        }
        let mut kept = WriteQueue::default();
        let mut dropped = 0;
        let mut offset = self.head;
        let mut segments = std::mem::take(&mut self.segments).into_iter();
        for (at, frame) in frames.iter().enumerate() {
            let drop_it = late(at, frame);
            dropped += u64::from(drop_it);
            for (index, segment) in segments.by_ref().take(frame.segments).enumerate() {
                let skip = if at == 0 && index == 0 {
                    self.front_written
                } else {
                    0
                };
                let len = segment.len - skip;
                if !drop_it {
                    let part = self.bytes.get(offset..offset + len).unwrap_or_default();
                    // The rest of a frame that has begun to go out is kept
                    // as a continuation: it can never be dropped.
                    let meta = PieceMeta {
                        starts_frame: segment.meta.starts_frame && skip == 0,
                        ..segment.meta
                    };
                    kept.push_segment(part, meta);
                }
                offset += len;
            }
        }
        *self = kept;
        dropped
    }

    /// The queue's frames, front first.
    fn frames(&self) -> Vec<FrameSpan> {
        let mut frames: Vec<FrameSpan> = Vec::new();
        for segment in &self.segments {
            match frames.last_mut() {
                Some(frame) if !segment.meta.starts_frame => frame.segments += 1,
                _ => frames.push(FrameSpan {
                    meta: segment.meta,
                    segments: 1,
                }),
            }
        }
        frames
    }

    /// Appends `bytes` as a segment of its own (no merging).
    fn push_segment(&mut self, bytes: &[u8], meta: PieceMeta) {
        if bytes.is_empty() {
            return;
        }
        self.bytes.extend_from_slice(bytes);
        self.segments.push_back(Segment {
            len: bytes.len(),
            meta,
        });
    }

    /// Records that the socket took `count` bytes; frees the storage once
    /// everything is written, so an idle connection holds none.
    pub fn advance(&mut self, count: usize) {
        let count = count.min(self.len());
        self.head += count;
        let mut left = count;
        while left > 0 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let unwritten = front.len - self.front_written;
            if left >= unwritten {
                left -= unwritten;
                self.segments.pop_front();
                self.front_written = 0;
            } else {
                self.front_written += left;
                left = 0;
            }
        }
        if self.is_empty() {
            *self = WriteQueue::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_is_lent_and_returned() {
        let mut pool = BufferPool::new(8, 4);
        let mut buffer = ReadBuffer::default();
        let space = buffer.space(&mut pool, 32).expect("room");
        space[..3].copy_from_slice(b"abc");
        buffer.fill(3);
        assert_eq!(buffer.data(), b"abc");
        buffer.consume(3);
        buffer.release_if_empty(&mut pool);
        assert_eq!(buffer.capacity(), 0);
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn read_buffer_compacts_then_grows_up_to_the_limit() {
        let mut pool = BufferPool::new(4, 4);
        let mut buffer = ReadBuffer::default();
        buffer.space(&mut pool, 8).expect("room")[..4].copy_from_slice(b"wxyz");
        buffer.fill(4);
        buffer.consume(2);
        let space = buffer.space(&mut pool, 8).expect("compacted");
        assert_eq!(space.len(), 2);
        assert_eq!(buffer.data(), b"yz");
        buffer.fill(2);
        assert_eq!(buffer.space(&mut pool, 8).expect("grown").len(), 4);
        buffer.fill(4);
        assert_eq!(buffer.space(&mut pool, 8), Err(BufferFull));
    }

    fn meta(kind: PieceKind, starts_frame: bool) -> PieceMeta {
        PieceMeta {
            kind,
            arrived: Instant::now(),
            starts_frame,
        }
    }

    #[test]
    fn write_queue_keeps_order_and_appends_held_frames_after() {
        let mut queue = WriteQueue::default();
        queue.push(&[b"ab", b"cd"], meta(PieceKind::Media, true));
        let mut held = WriteQueue::default();
        held.push(&[b"HELD"], meta(PieceKind::Reliable, true));
        queue.advance(1);
        queue.push(&[b"ef"], meta(PieceKind::Media, false));
        assert_eq!(queue.pending(), b"bcdef");
        queue.append(&mut held);
        assert!(held.is_empty());
        assert_eq!(queue.pending(), b"bcdefHELD");
        assert_eq!(queue.len(), 9);
        queue.advance(9);
        assert!(queue.is_empty());
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn pushed_frames_get_a_segment_each_and_rests_join_the_frame_before() {
        let old = Instant::now();
        let cutoff = old + std::time::Duration::from_millis(10);
        let media = PieceMeta {
            kind: PieceKind::Media,
            arrived: old,
            starts_frame: true,
        };
        let mut queue = WriteQueue::default();
        // The rest of a frame that began to go out ("ab"), then two frames.
        queue.push_frames(&[b"ab", b"CDEfg"], &[2, 5], media);
        assert_eq!(queue.pending(), b"abCDEfg");
        // The rest cannot be dropped (it has no start); both frames can.
        assert_eq!(queue.drop_late_media(cutoff, false), 2);
        assert_eq!(queue.pending(), b"ab");
    }

    #[test]
    fn late_media_frames_are_dropped_whole_and_nothing_else() {
        let old = Instant::now();
        let cutoff = old + std::time::Duration::from_millis(10);
        let fresh = cutoff + std::time::Duration::from_millis(10);
        let at = |kind, arrived, starts_frame| PieceMeta {
            kind,
            arrived,
            starts_frame,
        };
        let mut queue = WriteQueue::default();
        queue.push(&[b"M1"], at(PieceKind::Media, old, true));
        queue.advance(1); // M1 has started: it is finished.
        queue.push(&[b"T1"], at(PieceKind::Reliable, old, true));
        queue.push(&[b"M2a"], at(PieceKind::Media, old, true));
        queue.push(&[b"M2b"], at(PieceKind::Media, old, false));
        queue.push(&[b"M3"], at(PieceKind::Media, fresh, true));
        queue.push(&[b"M4"], at(PieceKind::Media, old, true));
        queue.push(&[b"+pad"], at(PieceKind::Reliable, old, false));
        queue.push(&[b"M5"], at(PieceKind::Media, old, true));
        // M5 is the frame still arriving: kept.
        assert_eq!(queue.drop_late_media(cutoff, true), 2);
        assert_eq!(queue.pending(), b"1T1M3M5");
        let (front, started) = queue.front().expect("M1's rest");
        assert_eq!((front.kind, started), (PieceKind::Media, false));
        assert_eq!(queue.drop_late_media(cutoff, false), 1, "M5 once complete");
        assert_eq!(queue.pending(), b"1T1M3");
        assert_eq!(queue.drop_late_media(cutoff, false), 0);
        queue.advance(queue.len());
        assert!(queue.is_empty());
    }

    #[test]
    fn write_queue_segments_follow_frame_boundaries() {
        let mut queue = WriteQueue::default();
        let media = meta(PieceKind::Media, true);
        queue.push(&[b"12345"], media);
        queue.push(&[b"678"], meta(PieceKind::Media, false));
        queue.push(&[b"TEXT"], meta(PieceKind::Reliable, true));
        assert_eq!(queue.front(), Some((media, false)));
        queue.advance(3);
        assert_eq!(queue.front(), Some((media, true)), "the frame has started");
        queue.advance(5);
        let (next, started) = queue.front().expect("the TEXT frame");
        assert_eq!((next.kind, started), (PieceKind::Reliable, false));
        queue.advance(4);
        assert_eq!(queue.front(), None);
    }
}
