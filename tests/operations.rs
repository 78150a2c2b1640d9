//! Operating the relay, against the real binary: graceful shutdown on
//! SIGTERM/SIGINT (and the forced exit on a second signal), the Prometheus
//! `/metrics` endpoint (checked with Python's `prometheus_client` parser),
//! the connection limits (`--max-connections`, `--max-per-ip`,
//! `--max-unregistered`) and surviving a process out of file descriptors.
//!
//! Nothing is synchronised with sleeps: every wait is for bytes, EOF, a log
//! line, a metric value or the exit status, against a deadline. The one
//! fixed interval is the window over which the relay's CPU time is
//! observed in the file-descriptor test.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing::{self, LengthPrefixed, Seed};
use callrelay::protocol::frame::ClientMessage;
use common::{
    Client, RelayProcess, WAIT, accepted_call, encode_in, expect_ended, media_both_ways,
    relay_with_call, relay_with_pair, seed_safe_payload,
};

// ----- helpers ----------------------------------------------------------------

/// Sends `signal` (e.g. `-TERM`) to the relay with kill(1).
#[track_caller]
fn send_signal(relay: &RelayProcess, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed: {status}");
}

/// Waits for the relay to exit and returns its exit code.
#[track_caller]
fn exit_code(relay: &mut RelayProcess, within: Duration) -> Option<i32> {
    let status = relay
        .wait_exit(within)
        .unwrap_or_else(|| panic!("the relay did not exit within {within:?}"));
    status.code()
}

/// The peer closes `stream` (EOF) within `within`, without sending a byte.
#[track_caller]
fn expect_eof_without_bytes(stream: &mut TcpStream, within: Duration) {
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "connection not closed within {within:?}");
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(count) => panic!(
                "expected EOF without bytes, got {:02x?}",
                &chunk[..count.min(32)]
            ),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("expected EOF, the read failed: {error}"),
        }
    }
}

/// Sends `request` to an HTTP server and reads the response to EOF (the
/// server must close); returns the head and the body.
#[track_caller]
fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.write_all(request).expect("send the request");
    let deadline = Instant::now() + WAIT;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the metrics server did not close after {} bytes: {:?}",
            response.len(),
            String::from_utf8_lossy(&response)
        );
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => response.extend_from_slice(&chunk[..count]),
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(error) => panic!("reading the HTTP response failed: {error}"),
        }
    }
    let text = String::from_utf8(response).expect("the response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the response head in {text:?}"));
    (head.to_owned(), body.to_owned())
}

/// `GET /metrics`: asserts 200 and the Prometheus content type; the body.
#[track_caller]
fn scrape(addr: SocketAddr) -> String {
    let (head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "status: {head}");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Content-Type in {head}"));
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "Content-Type: {content_type}"
    );
    body
}

/// The value of the sample written exactly as `series` (`name` or
/// `name{labels}` as the relay writes it) in Prometheus text, read by hand.
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const PARSER: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(sample.labels.items()))
        name = sample.name + ("{" + labels + "}" if labels else "")
        print(name, repr(float(sample.value)))
"#;

const PARSER_HINT: &str = "this test needs python3 with prometheus_client \
     (`make test` installs it: .ci/install-deps runs `python3 -m pip install prometheus-client`)";

/// Parses Prometheus text with Python's `prometheus_client` parser; returns
/// `(series, value)` with labels sorted by name. Fails (never skips) when
/// the parser is missing.
#[track_caller]
fn parse_with_prometheus_client(text: &str) -> Vec<(String, f64)> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run python3 ({error}): {PARSER_HINT}"));
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = text.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("wait for python3");
    writer.join().expect("stdin writer");
    assert!(
        output.status.success(),
        "the prometheus_client parser failed ({}): {}\n{PARSER_HINT}\nmetrics text:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("parser output is UTF-8")
        .lines()
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("a float value"))
        })
        .collect()
}

/// The parsed value of `series`; fails if the parser did not report it.
#[track_caller]
fn parsed(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(name, _)| name == series)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("no sample {series} in {samples:?}"))
}

/// A client whose socket is bound to `local_ip` before connecting.
fn connect_from(local_ip: &str, relay: &RelayProcess, framing: Framing) -> Client {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("create a socket");
    let local: SocketAddr = format!("{local_ip}:0").parse().expect("local address");
    socket
        .bind(&SockAddr::from(local))
        .unwrap_or_else(|error| panic!("bind to {local}: {error}"));
    socket
        .connect(&SockAddr::from(relay.addr()))
        .expect("connect to the relay");
    Client::from_stream(socket.into(), framing)
}

// ----- graceful shutdown ----------------------------------------------------------

#[test]
fn sigterm_ends_calls_says_shutting_down_closes_everyone_and_exits_0() {
    let (mut relay, mut alice, mut bob) = relay_with_pair(&[], Seed, LengthPrefixed);
    let mut carol = relay.client("carol", LengthPrefixed);
    let call_id = accepted_call(&mut alice, &mut bob);
    // Media both ways, completely received before the signal.
    let (from_alice, from_bob) = (seed_safe_payload(3000, 1), seed_safe_payload(2000, 2));
    media_both_ways(&mut alice, &mut bob, &from_alice, &from_bob);
    bob.barrier();
    carol.barrier();

    send_signal(&relay, "-TERM");
    relay.expect_log(&["signal received: shutting down", "3 connections", "1 calls"]);
    for party in [&mut alice, &mut bob] {
        party.expect_end(&call_id);
        party.expect_error("shutting_down");
        party.expect_closed();
    }
    carol.expect_error("shutting_down");
    carol.expect_closed();
    drop((alice, bob, carol));
    assert_eq!(exit_code(&mut relay, WAIT), Some(0), "graceful exit status");
    relay.expect_log(&["shutdown complete (0 connections left)"]);
}

#[test]
fn sigint_shuts_down_gracefully_too() {
    let mut relay = RelayProcess::start(&[]);
    let mut seed = relay.client("seed", Seed);
    let mut framed = relay.client("framed", LengthPrefixed);
    send_signal(&relay, "-INT");
    for client in [&mut seed, &mut framed] {
        client.expect_error("shutting_down");
        client.expect_closed();
    }
    drop((seed, framed));
    assert_eq!(exit_code(&mut relay, WAIT), Some(0), "graceful exit status");
}

#[test]
fn a_second_signal_during_the_shutdown_exits_at_once_with_status_1() {
    let mut relay = RelayProcess::start(&[
        "--shutdown-timeout",
        "30",
        "--linger-timeout",
        "30",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = relay.metrics_addr();
    let mut flooder = relay.client("flooder", LengthPrefixed);
    let mut sleeper = relay.client("sleeper", LengthPrefixed);
    accepted_call(&mut flooder, &mut sleeper);
    // From here on `sleeper` never reads: the flood fills its socket and
    // then its output queue, which stays above the soft limit.
    let stop = Arc::new(AtomicBool::new(false));
    let frame = encode_in(
        &ClientMessage::Media {
            payload: vec![0x5a; 16 * 1024],
        },
        LengthPrefixed,
    );
    let mut stream = flooder.stream.try_clone().expect("clone the socket");
    let flag = Arc::clone(&stop);
    let flood = std::thread::spawn(move || {
        // At most 256 MiB; stops at the flag or when the relay goes away.
        for _ in 0..16 * 1024 {
            if flag.load(Ordering::Relaxed) || stream.write_all(&frame).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(metrics);
        let dropped = sample_value(
            &text,
            "callrelay_media_frames_dropped_total{reason=\"output_soft_limit\"}",
        )
        .expect("the soft-limit drop counter");
        let queued = sample_value(&text, "callrelay_output_queued_bytes").expect("queued bytes");
        if dropped > 0.0 && queued > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sleeper's output never went over the soft limit:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");

    send_signal(&relay, "-TERM");
    relay.expect_log(&["signal received: shutting down"]);
    assert!(
        relay.is_running(),
        "the relay exited although the sleeper's output cannot drain"
    );
    let second = Instant::now();
    send_signal(&relay, "-TERM");
    let code = exit_code(&mut relay, Duration::from_secs(5));
    assert_eq!(code, Some(1), "forced exit status");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "the forced exit took {:?}",
        second.elapsed()
    );
    relay.expect_log(&["second signal: exiting at once"]);
    let log = relay.log_snapshot();
    assert!(
        !log.iter().any(|line| line.contains("shutdown complete")),
        "the graceful shutdown completed, so the second signal proved nothing:\n{}",
        log.join("\n")
    );
    drop(sleeper);
}

// ----- metrics ------------------------------------------------------------------

#[test]
fn metrics_endpoint_serves_prometheus_text_that_prometheus_client_parses() {
    let relay = RelayProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = relay.metrics_addr();

    // An accepted call with media both ways.
    let mut alice = relay.client("alice", LengthPrefixed);
    let mut bob = relay.client("bob", Seed);
    accepted_call(&mut alice, &mut bob);
    let (to_bob, to_alice) = (seed_safe_payload(1500, 3), seed_safe_payload(700, 4));
    media_both_ways(&mut alice, &mut bob, &to_bob, &to_alice);
    // A refused call and a text.
    let mut carol = relay.client("carol", LengthPrefixed);
    carol.call("nobody", false);
    carol.expect_reject("offline");
    carol.text("alice", "hello");
    alice.expect_text("carol", "hello");
    // A protocol error: an unknown type byte (8) from a fourth client.
    let mut dave = relay.client("dave", LengthPrefixed);
    dave.send_raw(&[0, 0, 0, 1, 8]);
    dave.expect_error("unknown_type");
    dave.expect_closed();
    alice.barrier();
    carol.barrier();

    let text = scrape(metrics);
    let samples = parse_with_prometheus_client(&text);
    assert!(samples.len() > 20, "too few samples: {samples:?}");
    assert_eq!(parsed(&samples, "callrelay_calls{state=\"active\"}"), 1.0);
    assert_eq!(parsed(&samples, "callrelay_calls{state=\"ringing\"}"), 0.0);
    assert_eq!(parsed(&samples, "callrelay_users_registered"), 3.0);
    assert!(parsed(&samples, "callrelay_media_frames_relayed_total") >= 2.0);
    assert!(parsed(&samples, "callrelay_media_bytes_relayed_total") >= 2200.0);
    assert_eq!(
        parsed(
            &samples,
            "callrelay_protocol_errors_total{code=\"unknown_type\"}"
        ),
        1.0
    );
    assert!(parsed(&samples, "callrelay_calls_refused_total") >= 1.0);
    assert!(
        parsed(
            &samples,
            "callrelay_messages_total{kind=\"text\",outcome=\"relayed\"}"
        ) >= 1.0
    );
    assert_eq!(parsed(&samples, "callrelay_calls_accepted_total"), 1.0);

    // Anything else: 404, 405, 400, each followed by a close (http() reads
    // to EOF).
    let (head, _) = http(metrics, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "GET /: {head}");
    let (head, _) = http(metrics, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405 "), "POST /metrics: {head}");
    let (head, _) = http(metrics, b"hello\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 "), "garbage: {head}");
    // The relay itself is unaffected.
    alice.barrier();
}

// ----- connection limits --------------------------------------------------------

#[test]
fn max_connections_refuses_the_extra_connection_and_keeps_the_others() {
    let (relay, mut alice, mut bob) =
        relay_with_pair(&["--max-connections", "3"], LengthPrefixed, Seed);
    let mut carol = relay.client("carol", LengthPrefixed);
    let mut fourth = TcpStream::connect(relay.addr()).expect("connect");
    let fourth_addr = fourth.local_addr().expect("local address");
    // Closed at once: well before the registration timeout (10 s) could.
    expect_eof_without_bytes(&mut fourth, Duration::from_secs(3));
    relay.expect_log(&[
        "refused",
        &format!("from {fourth_addr}"),
        "--max-connections",
    ]);
    let call_id = accepted_call(&mut alice, &mut bob);
    let payload = seed_safe_payload(1000, 5);
    media_both_ways(&mut alice, &mut bob, &payload, &payload);
    carol.barrier();
    alice.end(&call_id);
    expect_ended(&mut alice, &mut bob, &call_id);
}

#[test]
fn max_per_ip_refuses_a_third_connection_from_the_same_address_only() {
    let (relay, mut alice, mut bob) =
        relay_with_pair(&["--max-per-ip", "2"], LengthPrefixed, LengthPrefixed);
    let mut third = TcpStream::connect(relay.addr()).expect("connect");
    let third_addr = third.local_addr().expect("local address");
    assert_eq!(third_addr.ip().to_string(), "127.0.0.1");
    expect_eof_without_bytes(&mut third, Duration::from_secs(3));
    relay.expect_log(&["refused", &format!("from {third_addr}"), "--max-per-ip"]);
    // Another address is still welcome.
    let mut carol = connect_from("127.0.0.2", &relay, LengthPrefixed);
    assert_eq!(carol.local_addr().ip().to_string(), "127.0.0.2");
    carol.register("carol");
    carol.barrier();
    carol.text("alice", "from 127.0.0.2");
    alice.expect_text("carol", "from 127.0.0.2");
    bob.barrier();
}

#[test]
fn max_unregistered_refuses_silent_sockets_without_hurting_calls() {
    let (relay, mut alice, mut bob, _) = relay_with_call(
        &["--max-unregistered", "2", "--register-timeout", "1"],
        LengthPrefixed,
        Seed,
    );
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(relay.addr()).expect("connect"))
        .collect();
    for socket in &silent {
        relay.conn_id_of(socket.local_addr().expect("local address"));
    }
    let mut third = TcpStream::connect(relay.addr()).expect("connect");
    let third_addr = third.local_addr().expect("local address");
    expect_eof_without_bytes(&mut third, WAIT);
    relay.expect_log(&[
        "refused",
        &format!("from {third_addr}"),
        "--max-unregistered",
    ]);
    assert!(
        !relay.log_contains(&format!("connected from {third_addr}")),
        "the third silent socket was accepted"
    );
    // The call goes on while the silent sockets are open.
    for round in 0..3 {
        let payload = seed_safe_payload(800, 10 + round);
        media_both_ways(&mut alice, &mut bob, &payload, &payload);
    }
    // The registration timeout closes the silent sockets (no framing: no
    // ERROR), which frees their places.
    for socket in &mut silent {
        expect_eof_without_bytes(socket, WAIT);
    }
    drop(silent);
    let mut carol = relay.client("carol", LengthPrefixed);
    carol.text("alice", "in at last");
    alice.expect_text("carol", "in at last");
}

// ----- out of file descriptors --------------------------------------------------

/// utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after_name = &stat[stat.rfind(')').expect("comm ends with )") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

#[test]
fn out_of_file_descriptors_refuses_without_spinning_and_recovers() {
    let relay = RelayProcess::start_under(
        &["bash", "-c", "ulimit -n 40 && exec \"$0\" \"$@\""],
        // The kept connections must not time out during the test.
        &["--register-timeout", "60"],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.pid()))
        .expect("read /proc limits");
    assert!(
        limits
            .lines()
            .any(|line| line.starts_with("Max open files") && line.contains(" 40 ")),
        "the relay does not run under the fd limit:\n{limits}"
    );
    const EXTRA: usize = 60;
    let mut sockets: Vec<TcpStream> = (0..EXTRA)
        .map(|_| TcpStream::connect(relay.addr()).expect("connect (the backlog takes it)"))
        .collect();
    relay.expect_log(&["refused", "out of file descriptors"]);
    // The last one is certainly beyond the limit; the relay accepts in
    // order, so once it is closed every earlier one was handled.
    expect_eof_without_bytes(sockets.last_mut().expect("sockets"), WAIT);

    // Not spinning: the relay idles while out of descriptors.
    let ticks = clock_ticks_per_second();
    let before = cpu_ticks(relay.pid());
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1)); // observation window, not synchronisation
    let after = cpu_ticks(relay.pid());
    let elapsed = window.elapsed();
    let cpu = (after - before) as f64 / ticks;
    assert!(
        cpu < 0.3,
        "the relay used {cpu:.2} CPU-seconds in {elapsed:?} while out of descriptors"
    );

    // Every connection was either accepted (open, silent, logged) or
    // refused (EOF without bytes).
    let mut accepted = Vec::new();
    let mut refused = 0;
    for socket in &mut sockets {
        socket.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        match socket.read(&mut byte) {
            Ok(0) => refused += 1,
            Ok(_) => panic!("a refused or silent connection got bytes"),
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                let id = relay.conn_id_of(socket.local_addr().expect("local address"));
                accepted.push(id);
            }
            Err(error) => panic!("unexpected read error: {error}"),
        }
    }
    assert!(
        refused >= EXTRA - 40 && !accepted.is_empty(),
        "accepted {}, refused {refused} of {EXTRA}",
        accepted.len()
    );

    // Recovery: close everything, wait until the relay has let go of the
    // kept connections, then a new user gets in.
    drop(sockets);
    for id in &accepted {
        relay.expect_log(&[&format!(" {id} reaped")]);
    }
    let mut late = relay.client("late", LengthPrefixed);
    late.barrier();
    let mut late_seed = relay.client("late-seed", Seed);
    late_seed.text("late", "recovered");
    late.expect_text("late-seed", "recovered");
}
