//! Per-connection byte buffers.
//!
//! - [`ReadBuffer`]: a window (`start..end`) over storage lent by a
//!   [`BufferPool`] while the connection has unparsed input, and handed back
//!   when it is empty, so an idle connection holds no read buffer at all.
//! - [`WriteQueue`]: bytes accepted for a connection that its socket could
//!   not take yet, plus a `held` part for whole frames that must wait until
//!   another sender's cut-through frame into this connection is complete.
//!
//! Neither knows about frames, calls or sockets.

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

/// Output that the socket has not taken yet.
#[derive(Default)]
pub struct WriteQueue {
    bytes: Vec<u8>,
    head: usize,
    held: Vec<u8>,
}

impl WriteQueue {
    /// Bytes waiting to be written (held bytes included).
    pub fn len(&self) -> usize {
        self.bytes.len() - self.head + self.held.len()
    }

    /// Bytes the socket can take now (held bytes excluded): what the
    /// receiver's own reading drains, so what backpressure is decided on.
    pub fn pending_len(&self) -> usize {
        self.bytes.len() - self.head
    }

    /// Bytes held behind another sender's frame in progress.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Drops the held frames (the connection is closing).
    pub fn discard_held(&mut self) {
        self.held = Vec::new();
    }

    /// True when nothing waits for the socket (held bytes may still wait
    /// for another sender's frame to complete).
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == self.head
    }

    /// Appends to the bytes the socket will take next.
    pub fn push(&mut self, parts: &[&[u8]]) {
        if self.head > 0 && self.head >= self.bytes.len() / 2 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
    }

    /// Appends whole frames that must wait until the cut-through frame being
    /// written into this connection is complete.
    pub fn hold(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.held.extend_from_slice(part);
        }
    }

    /// Moves the held frames behind the queued bytes (the frame they waited
    /// for is complete).
    pub fn release_held(&mut self) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.push(&[&held]);
        }
    }

    /// The bytes the socket should take next.
    pub fn pending(&self) -> &[u8] {
        self.bytes.get(self.head..).unwrap_or_default()
    }

    /// Records that the socket took `count` bytes; frees the storage once
    /// everything is written, so an idle connection holds none.
    pub fn advance(&mut self, count: usize) {
        self.head = (self.head + count).min(self.bytes.len());
        if self.head == self.bytes.len() {
            self.bytes = Vec::new();
            self.head = 0;
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

    #[test]
    fn write_queue_keeps_order_and_releases_held_frames_after() {
        let mut queue = WriteQueue::default();
        queue.push(&[b"ab", b"cd"]);
        queue.hold(&[b"HELD"]);
        queue.advance(1);
        queue.push(&[b"ef"]);
        assert_eq!(queue.pending(), b"bcdef");
        queue.release_held();
        assert_eq!(queue.pending(), b"bcdefHELD");
        assert_eq!(queue.len(), 9);
        queue.advance(9);
        assert!(queue.is_empty());
        assert_eq!(queue.len(), 0);
    }
}
