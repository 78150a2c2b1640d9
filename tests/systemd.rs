//! Running under a service manager and a load balancer (issue 12): the
//! systemd notification protocol through a fake `$NOTIFY_SOCKET` (a Unix
//! datagram socket this test reads), and `GET /healthz` / `GET /readyz` on
//! the metrics listener, against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;

use callrelay::protocol::Framing;
use common::{RelayProcess, WAIT};

/// Sends `signal` (e.g. `-HUP`) to `relay`.
fn signal(relay: &RelayProcess, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed");
}

/// The next notification, as text.
#[track_caller]
fn next_state(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let count = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..count]).into_owned()
}

#[test]
fn the_service_manager_hears_ready_reloading_and_stopping() {
    let dir = std::env::temp_dir().join(format!("callrelay-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind the fake NOTIFY_SOCKET");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut command = Command::new(env!("CARGO_BIN_EXE_callrelay"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path);
    let relay = RelayProcess::spawn_command(command);
    let ready = next_state(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains("STATUS=0 connections, 0 users"), "{ready:?}");
    let _client = relay.client("alice", Framing::LengthPrefixed);
    signal(&relay, "-HUP");
    assert!(next_state(&socket).starts_with("RELOADING=1"));
    let again = next_state(&socket);
    assert!(again.starts_with("READY=1\n"), "{again:?}");
    assert!(again.contains("STATUS=1 connections, 1 users"), "{again:?}");
    signal(&relay, "-TERM");
    assert!(next_state(&socket).starts_with("STOPPING=1"));
    let _ = std::fs::remove_file(&path);
}

/// `GET path` on `addr`: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[test]
fn health_is_200_while_serving_and_503_from_the_drain_on() {
    let relay = RelayProcess::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--linger-timeout",
        "10",
        "--shutdown-timeout",
        "10",
    ]);
    let metrics = relay.metrics_addr();
    assert_eq!(
        get(metrics, "/healthz"),
        ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned())
    );
    assert_eq!(
        get(metrics, "/readyz"),
        ("HTTP/1.1 200 OK".to_owned(), "ready\n".to_owned())
    );
    // A client that does not close keeps the drain going.
    let mut client = relay.client("alice", Framing::LengthPrefixed);
    signal(&relay, "-TERM");
    client.expect_error("shutting_down");
    let unavailable = "HTTP/1.1 503 Service Unavailable".to_owned();
    assert_eq!(
        get(metrics, "/healthz"),
        (unavailable.clone(), "draining\n".to_owned())
    );
    assert_eq!(
        get(metrics, "/readyz"),
        (unavailable, "draining\n".to_owned())
    );
}

#[test]
fn a_cluster_node_is_not_ready_while_redis_is_unreachable() {
    // A port nothing listens on: Redis is never reached.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let redis = format!("redis://127.0.0.1:{port}");
    let relay = RelayProcess::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--cluster",
        &redis,
        "--trunk-listen",
        "127.0.0.1:0",
    ]);
    let metrics = relay.metrics_addr();
    assert_eq!(get(metrics, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(
        get(metrics, "/readyz"),
        (
            "HTTP/1.1 503 Service Unavailable".to_owned(),
            "Redis unreachable\n".to_owned()
        )
    );
}

// The shipped unit passes `systemd-analyze verify` (with ExecStart pointed
// at the binary under test: verify checks that it exists).
#[test]
fn the_shipped_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/callrelay.service"
    ))
    .expect("read docs/callrelay.service");
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let unit = unit.replace(
        "/usr/bin/callrelay ",
        &format!("{} ", env!("CARGO_BIN_EXE_callrelay")),
    );
    let dir = std::env::temp_dir().join(format!("callrelay-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("callrelay.service");
    std::fs::write(&path, unit).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (from systemd) is needed for this test");
    assert!(
        output.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
