//! Call id generation: UUID-formatted, unpredictable ids drawn from the OS
//! CSPRNG through `getrandom` (no hand-rolled randomness). Random bytes are
//! fetched in batches so a call costs no system call of its own.

use crate::ids::CallId;

/// How many ids one batch of OS randomness yields.
const IDS_PER_BATCH: usize = 64;

/// Hands out call ids from batches of OS randomness.
pub struct CallIdSource {
    batch: [u8; 16 * IDS_PER_BATCH],
    used: usize,
}

impl CallIdSource {
    /// A source that fetches its first batch on first use.
    pub fn new() -> CallIdSource {
        CallIdSource {
            batch: [0; 16 * IDS_PER_BATCH],
            used: IDS_PER_BATCH,
        }
    }

    /// The next id. Ids carry 122 random bits, so they are unique for the
    /// life of the process with overwhelming probability; the relay also
    /// refuses to reuse an id that is live.
    pub fn next_id(&mut self) -> CallId {
        if self.used == IDS_PER_BATCH {
            // invariant: getrandom(2) on Linux only fails before the kernel's
            // pool is initialised at boot or on a kernel without the syscall
            // and /dev/urandom; a relay cannot hand out ids without it.
            getrandom::fill(&mut self.batch).expect("the OS random source is unavailable");
            self.used = 0;
        }
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.batch[16 * self.used..16 * (self.used + 1)]);
        self.batch[16 * self.used..16 * (self.used + 1)].fill(0);
        self.used += 1;
        CallId::from_random(bytes)
    }
}

impl Default for CallIdSource {
    fn default() -> CallIdSource {
        CallIdSource::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_distinct_across_batches() {
        let mut source = CallIdSource::new();
        let ids: HashSet<CallId> = (0..IDS_PER_BATCH * 3).map(|_| source.next_id()).collect();
        assert_eq!(ids.len(), IDS_PER_BATCH * 3);
        assert!(ids.iter().all(|id| id.as_str().len() == 36));
    }
}
