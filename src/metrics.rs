//! Counters of what the server did, owned by the poll loop and passed
//! around as `&mut` (no globals). Rendering for operators comes with the
//! metrics endpoint.

use crate::protocol::ErrorCode;

/// Server-side counters (the relay keeps its own call and message counts).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Connections accepted and kept.
    pub connections_accepted: u64,
    /// Connections accepted and closed at once (over the connection limit).
    pub connections_refused: u64,
    /// Media frames relayed to a peer.
    pub media_frames_relayed: u64,
    /// Media payload bytes relayed to a peer.
    pub media_bytes_relayed: u64,
    /// Media frames dropped because the sender was in no accepted call.
    pub media_dropped_no_call: u64,
    /// Media frames dropped whole because the receiver was over its soft limit.
    pub media_dropped_overflow: u64,
    /// Stale seed media chunks dropped in the grace period after a call.
    pub media_dropped_stale: u64,
    /// Bytes written straight from a sender's read buffer to a peer socket.
    pub bytes_zero_copy: u64,
    /// Bytes copied into a write queue because the socket could not take them.
    pub bytes_queued: u64,
    /// Protocol errors, by code (indexed like [`ErrorCode::ALL`]).
    pub protocol_errors: [u64; ErrorCode::ALL.len()],
    /// Errors not reported to seed connections (their guide defines none).
    pub errors_unreported_seed: u64,
    /// Connections closed for passing the hard output limit.
    pub output_overflow_closes: u64,
}

impl Counters {
    /// Counts a protocol error.
    pub fn protocol_error(&mut self, code: ErrorCode) {
        if let Some(index) = ErrorCode::ALL.iter().position(|known| *known == code) {
            self.protocol_errors[index] += 1;
        }
    }
}
