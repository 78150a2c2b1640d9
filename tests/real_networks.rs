//! Calls on real networks (PROTOCOL.md sections 8.1, 8.2 and 8.4), against
//! the real binary over real sockets: listeners are not idle while their
//! output flows, a receiver that takes nothing is closed in about the idle
//! timeout, a slow receiver's media delay stays bounded while about half of
//! it arrives, and a FILE whose receiver vanishes is discarded with its
//! sender told how much arrived. Slow links are readers that read at a fixed
//! rate through a small `SO_RCVBUF` (the pacing sleeps are the link, not
//! synchronisation).

mod common;

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::ServerMessage;
use common::{Client, RelayProcess, WAIT, accepted_call, file_frame_bytes, file_message, pattern};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const BOTH: [Framing; 2] = [Seed, LengthPrefixed];

/// A client whose socket has a receive buffer of `rcvbuf` bytes, set before
/// connecting so the window is small from the start.
fn slow_client(relay: &RelayProcess, user: &str, framing: Framing, rcvbuf: usize) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    socket.connect(&relay.addr().into()).expect("connect");
    let mut client = Client::from_stream(socket.into(), framing);
    client.register(user);
    client.barrier();
    client
}

// 8.1: a callee that only listens is kept for several idle timeouts while
// media flows to it, in both framings; the call then ends normally.
#[test]
fn a_listen_only_callee_is_not_idle_while_media_flows() {
    for framing in BOTH {
        let relay = RelayProcess::start(&["--idle-timeout", "0.5"]);
        let mut alice = relay.client("alice", LengthPrefixed);
        let mut bob = relay.client("bob", framing);
        let call_id = accepted_call(&mut alice, &mut bob);
        let until = Instant::now() + Duration::from_millis(2000);
        let mut sent = 0u32;
        while Instant::now() < until {
            let payload = format!("frame {sent:05}").into_bytes();
            alice.media(&payload);
            bob.expect_media_chunks(&payload);
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(sent >= 15);
        alice.end(&call_id);
        alice.expect_end(&call_id);
        bob.expect_end(&call_id);
    }
}

// 8.1: a FILE that takes several idle timeouts to reach a slow receiver
// arrives byte-exact; neither side is closed as idle. (The sender has sent
// its last byte when the receiver's queue still holds up to the soft limit
// and one read: a small soft limit keeps that tail shorter than the idle
// timeout, since a sender with nothing left to send is idle.)
#[test]
fn a_file_slower_than_the_idle_timeout_arrives_whole() {
    let relay = RelayProcess::start(&["--idle-timeout", "1", "--output-soft", "16K"]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = slow_client(&relay, "bob", LengthPrefixed, 16 * 1024);
    let data = pattern(1 << 20);
    let expected = file_frame_bytes(LengthPrefixed, "alice", "slow.bin", &data);
    let writer = alice.send_in_background(file_message(LengthPrefixed, "bob", "slow.bin", &data));
    // About 320 KiB/s: more than three seconds, three idle timeouts.
    let started = Instant::now();
    let mut got = Vec::with_capacity(expected.len());
    while got.len() < expected.len() {
        let want = (expected.len() - got.len()).min(32 * 1024);
        got.extend_from_slice(&bob.read_exact_bytes(want));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    assert!(got == expected, "the FILE arrived changed");
    writer.join().expect("alice's writer");
    alice.barrier();
    bob.barrier();
}

// 8.1: a receiver that takes nothing (it never reads) is closed in about the
// idle timeout after its socket stopped taking bytes, although output is
// queued for it; its call ends (no resume window here).
#[test]
fn a_receiver_that_never_reads_is_closed_in_about_the_idle_timeout() {
    let relay = RelayProcess::start(&["--idle-timeout", "1", "--resume-window", "0"]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = slow_client(&relay, "bob", LengthPrefixed, 4096);
    let call_id = accepted_call(&mut alice, &mut bob);
    let started = Instant::now();
    let payload = vec![0x41u8; 8 * 1024];
    // Media at 400 KiB/s until the call ends; bob reads nothing.
    loop {
        alice.media(&payload);
        if let Some(message) = alice.recv_before(Instant::now() + Duration::from_millis(20)) {
            assert_eq!(
                message,
                ServerMessage::CallEnd {
                    call_id: call_id.clone()
                }
            );
            break;
        }
        assert!(started.elapsed() < WAIT, "bob was never closed");
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed before the idle timeout: {closed_after:?}"
    );
    // Closed as idle, or (the kernel's TCP_USER_TIMEOUT) as failed.
    relay.expect_log(&["(bob) closed"]);
}

/// A frame's send time, carried in its first 8 bytes (µs since `epoch`).
fn stamped(epoch: Instant, len: usize, seq: u32) -> Vec<u8> {
    let mut payload = vec![0x55u8; len];
    let micros = epoch.elapsed().as_micros() as u64;
    payload[..8].copy_from_slice(&micros.to_be_bytes());
    payload[8..12].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// The 99th percentile of `delays`.
fn p99(delays: &mut [Duration]) -> Duration {
    delays.sort();
    delays[(delays.len() * 99 / 100).min(delays.len() - 1)]
}

// 8.2: 1200-byte frames at 100 a second (120 KB/s) to a receiver that reads
// 60 KB/s through a 4 KiB receive buffer: about half of the frames arrive,
// and their one-way delay stays bounded, the second 3 s slice no worse than
// the first (without the bound it grows by about half a second a second).
#[test]
fn a_slow_receivers_media_delay_stays_bounded() {
    let relay = RelayProcess::start(&[]);
    let mut alice = relay.client("alice", LengthPrefixed);
    let bob = slow_client(&relay, "bob", LengthPrefixed, 4096);
    let mut bob = bob;
    accepted_call(&mut alice, &mut bob);
    let epoch = Instant::now();
    let slice = Duration::from_secs(3);
    let sender = {
        let mut stream = alice.stream_clone();
        std::thread::spawn(move || {
            let mut seq = 0u32;
            let start = Instant::now();
            while start.elapsed() < 2 * slice {
                let frame = common::media_frame_bytes(LengthPrefixed, &stamped(epoch, 1200, seq));
                std::io::Write::write_all(&mut stream, &frame).expect("alice sends");
                seq += 1;
                let next = start + Duration::from_millis(10) * seq;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            seq
        })
    };
    // bob: 6000 bytes every 100 ms.
    let mut stream = bob.stream_clone();
    let mut pending = Vec::new();
    let mut slices: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut buf = [0u8; 6000];
    let read_until = epoch + 2 * slice;
    while Instant::now() < read_until {
        let tick = Instant::now();
        // Up to 6000 bytes this tick, as the 4 KiB window refills.
        let mut taken = 0;
        while taken < buf.len() && tick.elapsed() < Duration::from_millis(50) {
            stream
                .set_read_timeout(Some(Duration::from_millis(10)))
                .expect("timeout");
            match stream.read(&mut buf[taken..]) {
                Ok(0) => panic!("the relay closed bob"),
                Ok(count) => taken += count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
                Err(error) => panic!("bob's read: {error}"),
            }
        }
        pending.extend_from_slice(&buf[..taken]);
        while pending.len() >= 4 {
            let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
            if pending.len() < 4 + len {
                break;
            }
            let frame: Vec<u8> = pending.drain(..4 + len).collect();
            assert_eq!(frame[4], 6, "only media reaches bob");
            let sent = u64::from_be_bytes(frame[5..13].try_into().expect("8 bytes"));
            let now = epoch.elapsed();
            let delay = now.saturating_sub(Duration::from_micros(sent));
            slices[usize::from(now >= slice)].push(delay);
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
    }
    let sent = sender.join().expect("alice's sender");
    let got = slices[0].len() + slices[1].len();
    let share = got as f64 / f64::from(sent);
    assert!(
        (0.3..0.8).contains(&share),
        "bob got {got} of {sent} frames ({share:.2})"
    );
    let (first, second) = (p99(&mut slices[0]), p99(&mut slices[1]));
    eprintln!(
        "slow receiver: {got} of {sent} frames ({share:.2}), p99 delay {first:?} then {second:?}"
    );
    assert!(
        second < Duration::from_millis(1500),
        "p99 delay {second:?} in the second slice"
    );
    assert!(
        second < first + Duration::from_millis(300),
        "delay grew: p99 {first:?} then {second:?}"
    );
    let _ = stream.shutdown(Shutdown::Both);
}

// 8.4: the receiver of a FILE resets mid-file: the rest is read from the
// sender and discarded (its write completes), a length-prefixed sender gets
// ERROR offline saying how much arrived, and stays connected; a seed sender
// gets nothing and stays connected.
#[test]
fn a_file_whose_receiver_resets_mid_file_is_discarded_and_reported() {
    for framing in BOTH {
        let relay = RelayProcess::start(&[]);
        let mut alice = relay.client("alice", framing);
        let mut bob = slow_client(&relay, "bob", LengthPrefixed, 4096);
        let data = pattern(4 << 20);
        let writer = alice.send_in_background(file_message(framing, "bob", "gone.bin", &data));
        let _first = bob.read_exact_bytes(64 * 1024);
        SockRef::from(&bob.stream_clone())
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(bob);
        writer.join().expect("alice's write completes");
        if framing == LengthPrefixed {
            match alice.recv() {
                ServerMessage::Error { code, detail } => {
                    assert_eq!(code, "offline");
                    assert!(
                        detail.contains(&format!("of {} data bytes delivered", data.len())),
                        "ERROR detail {detail:?}"
                    );
                }
                other => panic!("expected ERROR offline, got {other:?}"),
            }
        }
        relay.expect_log(&["FILE receiver went away"]);
        alice.barrier();
    }
}

/// A clone of the stream under `client` (for a second thread or socket
/// options).
trait StreamClone {
    fn stream_clone(&self) -> TcpStream;
}

impl StreamClone for Client {
    fn stream_clone(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the stream")
    }
}
