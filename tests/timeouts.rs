//! The registration and idle timeouts of PROTOCOL.md sections 3 and 7
//! against the real binary, started with short timeouts.
//!
//! Time is only ever waited for through the socket (read timeouts against
//! an `Instant` deadline) or the relay's log, never with sleeps.

mod common;

use std::time::{Duration, Instant};

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::{ClientMessage, ServerMessage};
use common::{Client, RelayProcess, WAIT, accept_ringing, ring};

const IDLE: Duration = Duration::from_millis(500);
const REGISTER: Duration = Duration::from_millis(300);
/// Slack for timer rounding when checking that a timeout did not fire early.
const EARLY: Duration = Duration::from_millis(10);

/// Sends a heartbeat, alternating between the bare `7` and `7` + the
/// registration suffix.
fn heartbeat(client: &mut Client, count: u32) {
    let suffix = (count % 2 == 1).then(|| client.user.clone());
    client.send(&ClientMessage::Heartbeat { suffix });
}

/// At least the timeout `timeout` (less [`EARLY`]) has passed since `since`
/// (`what` happened after that).
#[track_caller]
fn assert_not_early(since: Instant, timeout: Duration, what: &str) {
    assert!(
        since.elapsed() >= timeout - EARLY,
        "{what} after {:?}",
        since.elapsed()
    );
}

/// The relay logged a timeout close for `client`.
#[track_caller]
fn expect_timeout_logged(relay: &RelayProcess, client: &Client) {
    let id = relay.conn_id_of(client.local_addr());
    relay.expect_log(&[&format!("{id} ("), "closed: timeout"]);
}

#[test]
fn unregistered_connections_are_closed_at_the_registration_timeout() {
    // A long idle timeout: the registered control client must only be
    // exposed to the registration timeout here.
    let relay = RelayProcess::start(&["--register-timeout", "0.3", "--idle-timeout", "5"]);
    let started = Instant::now();
    // Three bytes or more: the framing is chosen, so ERROR then EOF.
    let mut seed = relay.connect(Seed);
    seed.send_raw(&[7, 0, 5, b'a', b'l']);
    let mut framed = relay.connect(LengthPrefixed);
    framed.send_raw(&[0, 0, 0, 8, 7, 0]);
    // Fewer than three bytes, or none: only EOF.
    let mut short = relay.connect(Seed);
    short.send_raw(&[7, 0]);
    let mut silent = relay.connect(Seed);
    let mut control = relay.client("control", Seed);

    seed.expect_error("timeout");
    seed.expect_closed();
    assert_not_early(started, REGISTER, "closed");
    framed.expect_error("timeout");
    framed.expect_closed();
    short.expect_closed();
    silent.expect_closed();
    for client in [&seed, &framed, &short, &silent] {
        expect_timeout_logged(&relay, client);
    }
    // The registered connection is not subject to the registration timeout.
    control.barrier();
}

/// `idle` stops sending after accepting a call from `peer`, who keeps
/// itself alive with heartbeats: `idle` gets ERROR timeout and EOF, `peer`
/// gets CALL_END and stays online.
fn idle_party_of_a_call_times_out(idle_framing: Framing, peer_framing: Framing) {
    // Without a resume window (PROTOCOL.md 8.3) the idle party's call ends
    // at once; tests/resume.rs has the call waiting for it.
    let relay = RelayProcess::start(&[
        "--register-timeout",
        "0.3",
        "--idle-timeout",
        "0.5",
        "--resume-window",
        "0",
    ]);
    let mut peer = relay.client("peer", peer_framing);
    let mut idle = relay.client("idle", idle_framing);
    let call_id = ring(&mut peer, &mut idle, true);
    let accepted_at = Instant::now();
    accept_ringing(&mut peer, &mut idle, &call_id, &call_id);

    // The peer heartbeats every quarter of the idle timeout until CALL_END.
    let deadline = Instant::now() + WAIT;
    let (mut sent, mut answered) = (0u32, 0u32);
    let mut next_heartbeat = Instant::now();
    loop {
        assert!(Instant::now() < deadline, "no CALL_END for the peer");
        if Instant::now() >= next_heartbeat {
            heartbeat(&mut peer, sent);
            sent += 1;
            next_heartbeat = Instant::now() + IDLE / 4;
        }
        match peer.recv_before(next_heartbeat.min(deadline)) {
            None => {}
            Some(ServerMessage::Heartbeat) if peer_framing == LengthPrefixed => answered += 1,
            Some(ServerMessage::CallEnd { call_id: ended }) => {
                assert_eq!(ended, call_id);
                break;
            }
            Some(other) => panic!("peer got {other:?}"),
        }
    }
    assert_not_early(accepted_at, IDLE, "idle close");
    // ERROR before the close, in either framing.
    idle.expect_error("timeout");
    idle.expect_closed();
    expect_timeout_logged(&relay, &idle);
    // The peer is still online: its outstanding heartbeat answers, then the
    // barrier.
    if peer_framing == LengthPrefixed {
        for _ in answered..sent {
            assert_eq!(peer.recv(), ServerMessage::Heartbeat);
        }
    }
    peer.barrier();
}

#[test]
fn idle_framed_party_times_out_and_its_seed_peer_gets_call_end() {
    idle_party_of_a_call_times_out(LengthPrefixed, Seed);
}

#[test]
fn idle_seed_party_times_out_and_its_framed_peer_gets_call_end() {
    idle_party_of_a_call_times_out(Seed, LengthPrefixed);
}

/// `alive` heartbeats whenever half the idle timeout has passed, for about
/// three idle timeouts, and stays online; `lazy`, registered at the same
/// time, does not and is closed.
fn heartbeats_keep_a_connection_alive(framing: Framing) {
    let relay = RelayProcess::start(&["--register-timeout", "0.3", "--idle-timeout", "0.5"]);
    let mut alive = relay.client("alive", framing);
    let mut lazy = relay.client("lazy", framing);
    let started = Instant::now();
    let mut last_heartbeat = started;
    let (mut sent, mut answered) = (0u32, 0u32);
    while started.elapsed() < IDLE * 3 {
        match alive.recv_before(last_heartbeat + IDLE / 2) {
            None => {
                heartbeat(&mut alive, sent);
                sent += 1;
                last_heartbeat = Instant::now();
            }
            Some(ServerMessage::Heartbeat) if framing == LengthPrefixed => answered += 1,
            Some(other) => panic!("alive got {other:?}"),
        }
    }
    assert!(
        sent >= 5,
        "only {sent} heartbeats in {:?}",
        started.elapsed()
    );
    if framing == LengthPrefixed {
        for _ in answered..sent {
            assert_eq!(alive.recv(), ServerMessage::Heartbeat);
        }
    }
    alive.barrier();
    // The control: without heartbeats the same relay closes it.
    lazy.expect_error("timeout");
    lazy.expect_closed();
    expect_timeout_logged(&relay, &lazy);
}

#[test]
fn heartbeats_keep_a_seed_connection_alive() {
    heartbeats_keep_a_connection_alive(Seed);
}

#[test]
fn heartbeats_keep_a_framed_connection_alive() {
    heartbeats_keep_a_connection_alive(LengthPrefixed);
}
