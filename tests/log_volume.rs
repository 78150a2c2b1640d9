//! Logging under abuse (PROTOCOL.md section 8.5), against the real binary at
//! the default log level: a flood of bad connections (wrong registrations,
//! garbage after a registration, connections refused by a limit) writes at
//! most about 20 lines a second in all; what is held back is summed up by
//! code in one line from a timer, after the flood too.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::RelayProcess;

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(3);
/// The most connections it opens.
const MOST_CONNECTIONS: u32 = 15_000;

#[test]
fn a_flood_of_bad_connections_writes_about_twenty_lines_a_second() {
    let relay = RelayProcess::start_under(&["env", "RUST_LOG=info"], &["--max-unregistered", "20"]);
    let before = relay.log_snapshot().len();
    let start = Instant::now();
    let mut opened = 0u32;
    while start.elapsed() < FLOOD && opened < MOST_CONNECTIONS {
        let Ok(mut stream) = TcpStream::connect(relay.addr()) else {
            continue;
        };
        opened += 1;
        let bytes: Vec<u8> = if opened.is_multiple_of(2) {
            // A seed registration with an empty id: bad_user_id.
            vec![7, 0, 0]
        } else {
            // A valid length-prefixed registration, then an unknown type.
            let user = format!("u{opened}");
            let mut bytes = (3 + user.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&[7, 0, user.len() as u8]);
            bytes.extend_from_slice(user.as_bytes());
            bytes.extend_from_slice(&[0, 0, 0, 1, 0x55]);
            bytes
        };
        let _ = stream.write_all(&bytes);
    }
    let flood_secs = start.elapsed().as_secs_f64();
    assert!(
        opened > 1000,
        "only {opened} connections in {flood_secs:.1} s"
    );
    // The timer sums up what was held back, after the flood too.
    relay.expect_log(&["log line(s) held back"]);
    let log = relay.log_snapshot();
    let flood_lines: Vec<&String> = log[before..]
        .iter()
        .filter(|line| !line.contains("held back"))
        .collect();
    let bound = (20.0 * (flood_secs + 2.0)) as usize;
    assert!(
        flood_lines.len() <= bound,
        "{} lines for {opened} bad connections in {flood_secs:.1} s (bound {bound}); first: {:?}",
        flood_lines.len(),
        flood_lines.iter().take(5).collect::<Vec<_>>()
    );
    let summary = log
        .iter()
        .find(|line| line.contains("held back"))
        .expect("the summary line");
    assert!(
        summary.contains("unknown_type"),
        "the summary names its codes: {summary}"
    );
}
