//! Deadlines for the poll loop: a min-heap of (instant, key) with lazy
//! cancellation. A key that is stale when it fires (its connection is gone,
//! its call already answered) is ignored by whoever handles it, so nothing
//! is ever searched or removed from the middle of the heap, and no wakeup
//! scans the connections.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A deadline in the heap.
struct Entry<K> {
    at: Instant,
    sequence: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}

impl<K> Eq for Entry<K> {}

impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

/// Pending deadlines, earliest first; equal deadlines fire in arming order.
pub struct Timers<K> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    sequence: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            sequence: 0,
        }
    }
}

impl<K> Timers<K> {
    /// Arms `key` to fire at `at`.
    pub fn arm(&mut self, at: Instant, key: K) {
        self.sequence += 1;
        self.heap.push(Reverse(Entry {
            at,
            sequence: self.sequence,
            key,
        }));
    }

    /// How long poll may sleep: until the earliest deadline, or forever.
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse(entry)| entry.at.saturating_duration_since(now))
    }

    /// Removes and returns the earliest key whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry.key)
    }

    /// Drops every pending deadline whose key `keep` rejects. Lazy
    /// cancellation leaves stale keys behind (a ring timer of a call that
    /// was answered, the registration timer of a connection that
    /// registered); the owner calls this when they outnumber the live ones,
    /// so memory stays bounded under churn.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .filter(|Reverse(entry)| keep(&entry.key))
            .collect();
    }

    /// How many deadlines are pending (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_then_arming_order() {
        let base = Instant::now();
        let mut timers = Timers::default();
        timers.arm(base + Duration::from_secs(2), "late");
        timers.arm(base + Duration::from_secs(1), "first");
        timers.arm(base + Duration::from_secs(1), "second");
        assert_eq!(timers.poll_timeout(base), Some(Duration::from_secs(1)));
        assert_eq!(timers.pop_expired(base), None);
        let at = base + Duration::from_secs(1);
        assert_eq!(timers.pop_expired(at), Some("first"));
        assert_eq!(timers.pop_expired(at), Some("second"));
        assert_eq!(timers.pop_expired(at), None);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn retain_drops_stale_keys_and_keeps_order() {
        let base = Instant::now();
        let mut timers = Timers::default();
        for index in 0..10u32 {
            timers.arm(base + Duration::from_secs(u64::from(10 - index)), index);
        }
        timers.retain(|key| key % 2 == 0);
        assert_eq!(timers.len(), 5);
        let later = base + Duration::from_secs(100);
        let fired: Vec<u32> = std::iter::from_fn(|| timers.pop_expired(later)).collect();
        assert_eq!(fired, [8, 6, 4, 2, 0]);
    }
}
