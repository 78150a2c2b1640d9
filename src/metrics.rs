//! Counters of what the server did, owned by the poll loop and passed
//! around as `&mut` (no globals), and their rendering for operators:
//! Prometheus text format (version 0.0.4) and the periodic stats log line.
//! No sockets here: the HTTP responder lives in `server::metrics_http`.

use std::fmt::Write as _;

use crate::protocol::ErrorCode;
use crate::relay::RelayStats;
use crate::relay::calls::EndReason;

/// Server-side counters (the relay keeps its own call and message counts).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Connections accepted and kept.
    pub connections_accepted: u64,
    /// Connections accepted and closed at once (a limit was reached).
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
    /// Media frames dropped whole after waiting longer than
    /// `--media-max-delay` for their receiver.
    pub media_dropped_late: u64,
    /// Media frames dropped because the other party of the call was
    /// detached (its connection lost, the call waiting for it to resume).
    pub media_dropped_detached: u64,
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
    /// FILE frames whose receiver went away before all of it arrived (the
    /// rest was read from the sender and discarded).
    pub files_cut_short: u64,
    /// Registrations refused as unauthorized, by reason (indexed like
    /// [`AUTH_FAILURE_REASONS`]).
    pub auth_failures: [u64; AUTH_FAILURE_REASONS.len()],
    /// Connections refused because their address failed authentication
    /// too often (`--auth-fail-limit`).
    pub auth_refused: u64,
    /// TLS connections accepted (the first bytes were a TLS record).
    pub tls_accepted: u64,
    /// TLS handshakes that failed (bad records, an alert, or the peer
    /// leaving mid-handshake).
    pub tls_handshake_failures: u64,
}

/// The reasons an authentication fails, as metrics labels.
pub const AUTH_FAILURE_REASONS: [&str; 5] = [
    "malformed",
    "unknown_key",
    "bad_signature",
    "expired",
    "bare_id_for_token_user",
];

impl Counters {
    /// Counts a refused authentication.
    pub fn auth_failure(&mut self, refusal: crate::relay::Refusal) {
        use crate::auth::TokenError;
        use crate::relay::Refusal;
        let index = match refusal {
            Refusal::Unauthorized(TokenError::Malformed) => 0,
            Refusal::Unauthorized(TokenError::UnknownKey) => 1,
            Refusal::Unauthorized(TokenError::BadSignature) => 2,
            Refusal::Unauthorized(TokenError::Expired) => 3,
            Refusal::BareIdForTokenUser => 4,
            Refusal::BadUserId(_) => return,
        };
        self.auth_failures[index] += 1;
    }

    /// Counts a protocol error.
    pub fn protocol_error(&mut self, code: ErrorCode) {
        if let Some(index) = ErrorCode::ALL.iter().position(|known| *known == code) {
            self.protocol_errors[index] += 1;
        }
    }

    /// Media frames dropped for any reason.
    pub fn media_dropped(&self) -> u64 {
        self.media_dropped_no_call
            + self.media_dropped_overflow
            + self.media_dropped_stale
            + self.media_dropped_late
            + self.media_dropped_detached
    }
}

/// Everything the metrics show, read at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// Server counters.
    pub counters: &'a Counters,
    /// Relay counters.
    pub relay: &'a RelayStats,
    /// Open connections (closing ones included).
    pub connections: usize,
    /// Connections that have not registered yet.
    pub unregistered: usize,
    /// Users online.
    pub registered: usize,
    /// Calls ringing.
    pub calls_ringing: usize,
    /// Calls accepted.
    pub calls_active: usize,
    /// Connections whose reading is paused (file backpressure).
    pub paused: usize,
    /// Bytes waiting in write queues.
    pub queued_bytes: usize,
    /// Open connections speaking TLS.
    pub tls_connections: usize,
    /// The cluster, if this node is in one.
    pub cluster: Option<ClusterSnapshot>,
}

/// What a cluster node shows of its cluster.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterSnapshot {
    /// Both Redis connections are up.
    pub redis_up: bool,
    /// Trunks carrying traffic.
    pub trunks_up: usize,
    /// Users the directory places on other nodes.
    pub remote_users: usize,
    /// FILE streams over trunks, out and in.
    pub file_streams: usize,
}

struct Writer {
    text: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP callrelay_{name} {help}\n# TYPE callrelay_{name} {kind}"
        );
    }

    fn value(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "callrelay_{name} {value}");
        } else {
            let _ = writeln!(self.text, "callrelay_{name}{{{labels}}} {value}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.value(name, "", value);
    }
}

/// Renders the Prometheus text exposition format.
pub fn render_prometheus(snapshot: &Snapshot<'_>) -> String {
    let counters = snapshot.counters;
    let relay = snapshot.relay;
    let mut out = Writer {
        text: String::with_capacity(4096),
    };
    out.single(
        "connections",
        "gauge",
        "Open client connections.",
        snapshot.connections as u64,
    );
    out.single(
        "connections_unregistered",
        "gauge",
        "Connections that have not registered yet.",
        snapshot.unregistered as u64,
    );
    out.single(
        "connections_accepted_total",
        "counter",
        "Connections accepted and kept.",
        counters.connections_accepted,
    );
    out.single(
        "connections_refused_total",
        "counter",
        "Connections closed at once because a connection limit was reached.",
        counters.connections_refused,
    );
    out.single(
        "connections_paused",
        "gauge",
        "Connections whose reading is paused until a receiver drains.",
        snapshot.paused as u64,
    );
    out.single(
        "users_registered",
        "gauge",
        "Users online.",
        snapshot.registered as u64,
    );
    out.family("calls", "gauge", "Live calls by state.");
    out.value("calls", "state=\"ringing\"", snapshot.calls_ringing as u64);
    out.value("calls", "state=\"active\"", snapshot.calls_active as u64);
    out.single(
        "calls_started_total",
        "counter",
        "Calls rung.",
        relay.calls_started,
    );
    out.single(
        "calls_accepted_total",
        "counter",
        "Calls accepted.",
        relay.calls_accepted,
    );
    out.single(
        "calls_refused_total",
        "counter",
        "Call requests refused (invalid, busy, offline).",
        relay.calls_refused,
    );
    out.family("calls_ended_total", "counter", "Calls ended, by reason.");
    for (reason, count) in EndReason::ALL.iter().zip(relay.calls_ended) {
        out.value(
            "calls_ended_total",
            &format!("reason=\"{}\"", reason.as_str()),
            count,
        );
    }
    out.single(
        "media_frames_relayed_total",
        "counter",
        "Media frames relayed to a peer.",
        counters.media_frames_relayed,
    );
    out.single(
        "media_bytes_relayed_total",
        "counter",
        "Media payload bytes relayed to a peer.",
        counters.media_bytes_relayed,
    );
    out.family(
        "media_frames_dropped_total",
        "counter",
        "Media frames dropped, by reason.",
    );
    out.value(
        "media_frames_dropped_total",
        "reason=\"no_call\"",
        counters.media_dropped_no_call,
    );
    out.value(
        "media_frames_dropped_total",
        "reason=\"output_soft_limit\"",
        counters.media_dropped_overflow,
    );
    out.value(
        "media_frames_dropped_total",
        "reason=\"stale_after_call\"",
        counters.media_dropped_stale,
    );
    out.value(
        "media_frames_dropped_total",
        "reason=\"late\"",
        counters.media_dropped_late,
    );
    out.value(
        "media_frames_dropped_total",
        "reason=\"detached\"",
        counters.media_dropped_detached,
    );
    out.family(
        "relayed_bytes_total",
        "counter",
        "Bytes forwarded to peers, by path.",
    );
    out.value(
        "relayed_bytes_total",
        "path=\"zero_copy\"",
        counters.bytes_zero_copy,
    );
    out.value(
        "relayed_bytes_total",
        "path=\"queued\"",
        counters.bytes_queued,
    );
    out.single(
        "output_queued_bytes",
        "gauge",
        "Bytes waiting in write queues.",
        snapshot.queued_bytes as u64,
    );
    out.family(
        "messages_total",
        "counter",
        "TEXT and FILE messages, by kind and outcome.",
    );
    out.value(
        "messages_total",
        "kind=\"text\",outcome=\"relayed\"",
        relay.texts_relayed,
    );
    out.value(
        "messages_total",
        "kind=\"text\",outcome=\"undeliverable\"",
        relay.texts_undeliverable,
    );
    out.value(
        "messages_total",
        "kind=\"file\",outcome=\"relayed\"",
        relay.files_relayed,
    );
    out.value(
        "messages_total",
        "kind=\"file\",outcome=\"undeliverable\"",
        relay.files_undeliverable,
    );
    out.family(
        "protocol_errors_total",
        "counter",
        "Protocol errors, by ERROR code.",
    );
    for (code, count) in ErrorCode::ALL.iter().zip(counters.protocol_errors) {
        out.value(
            "protocol_errors_total",
            &format!("code=\"{}\"", code.as_str()),
            count,
        );
    }
    out.single("errors_unreported_seed_total", "counter", "Notices (offline, no_such_call) not sent because seed clients get no ERROR but a final one.", counters.errors_unreported_seed);
    out.single(
        "output_overflow_closes_total",
        "counter",
        "Connections closed for passing the hard output limit.",
        counters.output_overflow_closes,
    );
    out.family(
        "auth_failures_total",
        "counter",
        "Registrations refused as unauthorized, by reason.",
    );
    for (reason, count) in AUTH_FAILURE_REASONS.iter().zip(counters.auth_failures) {
        out.value(
            "auth_failures_total",
            &format!("reason=\"{reason}\""),
            count,
        );
    }
    out.family(
        "connections_by_transport",
        "gauge",
        "Open connections by transport (undecided: TLS offered, first bytes not in yet).",
    );
    out.value(
        "connections_by_transport",
        "transport=\"tls\"",
        snapshot.tls_connections as u64,
    );
    out.value(
        "connections_by_transport",
        "transport=\"plain\"",
        snapshot
            .connections
            .saturating_sub(snapshot.tls_connections) as u64,
    );
    let cluster = snapshot.cluster.unwrap_or_default();
    out.single(
        "cluster_member",
        "gauge",
        "1 when this node is in a cluster (--cluster).",
        u64::from(snapshot.cluster.is_some()),
    );
    out.single(
        "cluster_redis_up",
        "gauge",
        "1 while both connections to the cluster's Redis are up.",
        u64::from(cluster.redis_up),
    );
    out.single(
        "cluster_trunks_up",
        "gauge",
        "Trunks to other nodes carrying traffic.",
        cluster.trunks_up as u64,
    );
    out.single(
        "cluster_remote_users",
        "gauge",
        "Users the directory places on other nodes.",
        cluster.remote_users as u64,
    );
    out.single(
        "cluster_file_streams",
        "gauge",
        "FILE streams over trunks in progress, out and in.",
        cluster.file_streams as u64,
    );
    out.single(
        "tls_accepted_total",
        "counter",
        "TLS connections accepted.",
        counters.tls_accepted,
    );
    out.single(
        "tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed.",
        counters.tls_handshake_failures,
    );
    out.single(
        "auth_refused_total",
        "counter",
        "Connections closed at once: their address failed authentication too often.",
        counters.auth_refused,
    );
    out.single(
        "files_cut_short_total",
        "counter",
        "FILE frames whose receiver went away mid-frame (the rest was discarded).",
        counters.files_cut_short,
    );
    out.text
}

/// The one-line summary logged every `--stats-interval` seconds.
pub fn stats_line(snapshot: &Snapshot<'_>) -> String {
    format!(
        "stats: {} connections ({} unregistered, {} paused), {} users, calls {} ringing {} active, \
         media {} frames {} bytes relayed, {} dropped ({} late, {} over the soft limit, {} detached, \
         {} without a call, {} stale), {} bytes queued, {} protocol errors",
        snapshot.connections,
        snapshot.unregistered,
        snapshot.paused,
        snapshot.registered,
        snapshot.calls_ringing,
        snapshot.calls_active,
        snapshot.counters.media_frames_relayed,
        snapshot.counters.media_bytes_relayed,
        snapshot.counters.media_dropped(),
        snapshot.counters.media_dropped_late,
        snapshot.counters.media_dropped_overflow,
        snapshot.counters.media_dropped_detached,
        snapshot.counters.media_dropped_no_call,
        snapshot.counters.media_dropped_stale,
        snapshot.queued_bytes,
        snapshot.counters.protocol_errors.iter().sum::<u64>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_belongs_to_a_declared_family() {
        let counters = Counters::default();
        let relay = RelayStats::default();
        let text = render_prometheus(&Snapshot {
            counters: &counters,
            relay: &relay,
            connections: 3,
            unregistered: 1,
            registered: 2,
            calls_ringing: 0,
            calls_active: 1,
            paused: 0,
            queued_bytes: 0,
            tls_connections: 1,
            cluster: None,
        });
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split_whitespace().next().expect("name").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                assert!(declared.iter().any(|family| family == name), "{line}");
            }
        }
        assert!(text.contains("callrelay_connections 3\n"));
        assert!(text.contains("callrelay_calls{state=\"active\"} 1\n"));
    }
}
