//! Regression tests for the loop's own bookkeeping, driven over real
//! loopback sockets one `turn` at a time so that private state (the ready
//! queue, the admission counters) can be checked between turns.

use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::time::{Duration, Instant};

use super::*;

/// A relay on a free loopback port whose loop wakes at least every 50 ms
/// (the stats timer), so a turn never sleeps long on an idle poll.
fn server() -> Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        timeouts: crate::config::Timeouts {
            stats_interval: Duration::from_millis(50),
            ..Default::default()
        },
        ..Config::default()
    };
    Server::bind(config).expect("bind on loopback")
}

/// Turns the loop until `done` holds, at most 5 s.
#[track_caller]
fn turn_until(server: &mut Server, mut done: impl FnMut(&mut Server) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(server) {
        assert!(
            Instant::now() < deadline,
            "condition not reached within 5 s"
        );
        let _ = server.turn().expect("poll");
    }
}

fn seed_registration(user: &str) -> Vec<u8> {
    let mut bytes = vec![7];
    bytes.extend_from_slice(&(user.len() as u16).to_be_bytes());
    bytes.extend_from_slice(user.as_bytes());
    bytes
}

/// A seed TEXT frame to a user nobody registered (dropped after parsing).
fn seed_text_to_nobody(text_units: usize) -> Vec<u8> {
    let mut bytes = vec![0];
    let to: Vec<u8> = "nobody".encode_utf16().flat_map(u16::to_be_bytes).collect();
    bytes.extend_from_slice(&(to.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&to);
    bytes.extend_from_slice(&((2 * text_units) as u32).to_be_bytes());
    bytes.extend(std::iter::repeat_n([0u8, b'a'], text_units).flatten());
    bytes
}

/// A connection with more input than one turn's reads is requeued; an
/// event for it in the next poll must not queue it a second time (it
/// would then get more than its reads per turn).
#[test]
fn a_connection_is_never_on_the_ready_queue_twice() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};
    let mut server = server();
    let mut client = StdStream::connect(server.local_addr()).expect("connect");
    client
        .write_all(&seed_registration("flood"))
        .expect("register");
    turn_until(&mut server, |s| s.relay.online() == 1);
    // A receive buffer that holds more than one turn's reads, so every
    // read of the first turn is a full one.
    let (_, conn) = server.conns.iter().next().expect("one connection");
    socket2::SockRef::from(conn.transport.tcp())
        .set_recv_buffer_size(4 << 20)
        .expect("SO_RCVBUF");
    let frame = seed_text_to_nobody(16 * 1024);
    let stop = Arc::new(AtomicBool::new(false));
    let (prefilled, wait_prefilled) = mpsc::channel();
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // 2 MiB first (more than 16 reads of 64 KiB), then a trickle
            // that keeps bringing readable events while the loop turns.
            for _ in 0..64 {
                client.write_all(&frame).expect("prefill");
            }
            prefilled.send(()).expect("signal");
            while !stop.load(Ordering::Relaxed) {
                if client.write_all(&frame).is_err() {
                    break;
                }
            }
        })
    };
    wait_prefilled.recv().expect("prefilled");
    let mut requeued_turns = 0;
    for _ in 0..50 {
        let _ = server.turn().expect("poll");
        let mut seen = server.ready.iter().copied().collect::<Vec<_>>();
        let queued = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            queued,
            "a connection is queued twice: {:?}",
            server.ready
        );
        requeued_turns += usize::from(queued > 0);
    }
    stop.store(true, Ordering::Relaxed);
    drop(server);
    writer.join().expect("writer");
    assert!(
        requeued_turns > 0,
        "the input never outlasted one turn's reads"
    );
}

/// The bytes of a turn's last read are handled in that turn: a short last
/// read leaves no readiness behind, so nothing would bring the connection
/// back for them. 15 full reads of 64 KiB then 1000 bytes, all framed
/// heartbeats: every one of them is answered.
#[test]
fn the_last_read_of_a_turn_is_handled_in_that_turn() {
    // The loop wakes at least every 50 ms, so a lost wakeup shows as a
    // missing answer rather than a hang.
    let mut server = server();
    let mut client = StdStream::connect(server.local_addr()).expect("connect");
    let mut registration = vec![0, 0, 0, 8, 7, 0, 5];
    registration.extend_from_slice(b"reads");
    client.write_all(&registration).expect("register");
    turn_until(&mut server, |s| s.relay.online() == 1);
    let (_, conn) = server.conns.iter().next().expect("one connection");
    socket2::SockRef::from(conn.transport.tcp())
        .set_recv_buffer_size(4 << 20)
        .expect("SO_RCVBUF");
    const HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 7];
    let count = (15 * READ_BUFFER_SIZE + 1000) / HEARTBEAT.len();
    let input: Vec<u8> = HEARTBEAT.iter().copied().cycle().take(count * 5).collect();
    // Everything is in the relay's receive buffer before the loop reads.
    client.write_all(&input).expect("heartbeats");
    client.set_nonblocking(true).expect("nonblocking");
    let expected = count * HEARTBEAT.len();
    let mut answered = 0;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(3);
    while answered < expected && Instant::now() < deadline {
        let _ = server.turn().expect("poll");
        loop {
            match client.read(&mut buf) {
                Ok(0) => panic!("the relay closed the connection"),
                Ok(count) => answered += count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("read: {error}"),
            }
        }
    }
    assert_eq!(answered, expected, "heartbeats left unanswered");
}

/// An accepted socket that cannot be registered with the poll gives back
/// what admission counted for it (per address, unregistered).
#[test]
fn a_failed_poll_registration_undoes_the_admission_counters() {
    let mut server = server();
    let _client = StdStream::connect(server.local_addr()).expect("connect");
    turn_until(&mut server, |s| {
        s.accept_all();
        !s.accepted.is_empty()
    });
    assert_eq!(server.unregistered, 1);
    // Registering the socket once already makes the loop's own
    // registration fail.
    let (stream, _) = server.accepted.first_mut().expect("accepted");
    server
        .poll
        .registry()
        .register(stream, Token(12345), Interest::READABLE)
        .expect("first registration");
    server.insert_accepted();
    assert!(server.conns.is_empty(), "the socket was inserted anyway");
    assert_eq!(server.unregistered, 0, "unregistered count leaked");
    assert!(
        server.per_ip.is_empty(),
        "per-address count leaked: {:?}",
        server.per_ip
    );
}

/// `Action::Close` sends the ERROR detail it carries, not a fixed text.
#[test]
fn a_close_action_sends_its_own_detail() {
    let mut server = server();
    let mut client = StdStream::connect(server.local_addr()).expect("connect");
    client
        .write_all(&seed_registration("target"))
        .expect("register");
    turn_until(&mut server, |s| s.relay.online() == 1);
    let (_, conn) = server.conns.iter().next().expect("one connection");
    let id = conn.id;
    server.actions.push(Action::Close {
        conn: id,
        code: ErrorCode::Timeout,
        detail: "a test's own detail".to_owned(),
    });
    let _ = server.apply_actions();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let _ = server.turn().expect("poll");
        client.set_nonblocking(true).expect("nonblocking");
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(count) => received.extend_from_slice(&buf[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("read: {error}"),
        }
    }
    assert!(
        contains_utf16(&received, "timeout"),
        "no ERROR timeout in {received:?}"
    );
    assert!(
        !contains_utf16(&received, "newer connection"),
        "a timeout close claims a newer registration: {received:?}"
    );
    assert!(
        contains_utf16(&received, "a test's own detail"),
        "the close action's detail is not in {received:?}"
    );
}

/// True if `bytes` hold `text` in UTF-16BE (as a QString carries it).
fn contains_utf16(bytes: &[u8], text: &str) -> bool {
    let wire: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    bytes
        .windows(wire.len())
        .any(|window| window == wire.as_slice())
}
