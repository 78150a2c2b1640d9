//! CI smoke test of the bundled load tool, `callrelay-load`: every mode runs
//! for about a second against a live relay (or, for `--target direct`,
//! `--target pipe` and `sink`, without one) and its `--json` result must be
//! sane: frames sent are all delivered, nothing lost, no errors, latencies
//! recorded, the server's CPU and memory read with `--server-pid`. Bad use
//! must exit 2 with a message, a run against a port where nothing listens
//! must exit 1 at once, and `--help` must name every option.
//!
//! The JSON is read with a tiny extractor (the tool writes flat objects of
//! numbers and strings, with one level of nested objects). Every run of the
//! tool is bounded: it is killed and the test fails after [`LIMIT`].

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Pki, RelayProcess, assert_mentions_every, read_all_in_background};

const LOAD: &str = env!("CARGO_BIN_EXE_callrelay-load");

/// The longest any single run of the tool may take.
const LIMIT: Duration = Duration::from_secs(15);

// ----- running the tool ------------------------------------------------------

/// A running `callrelay-load`; killed on drop.
struct Running {
    child: Child,
    args: Vec<String>,
    started: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr_lines: Receiver<String>,
    stderr: Vec<String>,
}

/// What a finished run printed.
struct Finished {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Finished {
    /// Fails unless the run exited 0; returns its JSON line.
    #[track_caller]
    fn json(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self}");
        let json = self.stdout.trim();
        assert!(
            json.starts_with('{') && json.ends_with('}') && !json.contains('\n'),
            "stdout is not one JSON object: {self}"
        );
        json
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "callrelay-load {:?}: exit {:?} after {:?}\nstdout: {}\nstderr: {}",
            self.args, self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

fn spawn(args: &[&str]) -> Running {
    let mut child = Command::new(LOAD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start callrelay-load");
    let stdout = read_all_in_background(child.stdout.take().expect("stdout piped"));
    let stderr = child.stderr.take().expect("stderr piped");
    let (sender, stderr_lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        started: Instant::now(),
        stdout: Some(stdout),
        stderr_lines,
        stderr: Vec::new(),
    }
}

impl Running {
    /// Waits for a stderr line containing `needle` and returns it.
    #[track_caller]
    fn wait_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "callrelay-load {:?} printed no line with {needle:?}; stderr:\n{}",
                    self.args,
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Waits for the run to end (its stderr closes when it exits).
    #[track_caller]
    fn finish(mut self) -> Finished {
        let deadline = self.started + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => self.stderr.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "callrelay-load {:?} still running after {LIMIT:?}; stderr:\n{}",
                    self.args,
                    self.stderr.join("\n")
                ),
            }
        }
        let status = self.child.wait().expect("wait for callrelay-load");
        let elapsed = self.started.elapsed();
        let stdout = self
            .stdout
            .take()
            .expect("stdout reader")
            .join()
            .expect("stdout reader thread");
        Finished {
            args: std::mem::take(&mut self.args),
            code: status.code(),
            stdout,
            stderr: self.stderr.join("\n"),
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the tool to completion.
#[track_caller]
fn run(args: &[&str]) -> Finished {
    spawn(args).finish()
}

/// The arguments written in `line`, separated by white space (none of
/// them contains any).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Runs the tool with the arguments written in `line`.
#[track_caller]
fn run_line(line: &str) -> Finished {
    run(&words(line))
}

/// Runs the tool with the arguments written in `line` against `addr`, with
/// `--json --quiet` added.
#[track_caller]
fn run_at(addr: SocketAddr, line: &str) -> Finished {
    run_line(&format!("{line} --addr {addr} --json --quiet"))
}

/// Starts a relay, runs the tool with the arguments in `line` against it
/// ([`run_at`]) and returns the JSON of the run, which must exit 0.
#[track_caller]
fn json_from_a_new_relay(line: &str) -> String {
    let relay = RelayProcess::start(&[]);
    run_at(relay.addr(), line).json().to_owned()
}

// ----- reading the JSON ------------------------------------------------------

/// The top level of a JSON object: nested objects are left out, so a key
/// found here is not one of a nested object's.
fn top_level(json: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::new();
    for ch in json.chars() {
        match ch {
            '{' => {
                depth += 1;
                if depth == 1 {
                    out.push(ch);
                }
            }
            '}' => {
                if depth == 1 {
                    out.push(ch);
                }
                depth = depth.saturating_sub(1);
            }
            _ if depth <= 1 => out.push(ch),
            _ => {}
        }
    }
    out
}

/// The number after `"key":` in `text` (which must not hold nested objects).
#[track_caller]
fn number_in(text: &str, key: &str, whole: &str) -> f64 {
    let needle = format!("\"{key}\":");
    let at = text
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key:?} in {whole}"))
        + needle.len();
    let rest = &text[at..];
    let end = rest
        .find(|ch: char| !(ch.is_ascii_digit() || matches!(ch, '-' | '+' | '.' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key:?} is not a number ({:?}) in {whole}", &rest[..end]))
}

/// A top-level number.
#[track_caller]
fn num(json: &str, key: &str) -> f64 {
    number_in(&top_level(json), key, json)
}

/// The text of the nested object `"key":{...}` (its values are flat).
#[track_caller]
fn object<'a>(json: &'a str, key: &str) -> &'a str {
    let needle = format!("\"{key}\":{{");
    let at = json
        .find(&needle)
        .unwrap_or_else(|| panic!("no object {key:?} in {json}"))
        + needle.len()
        - 1;
    let end = json[at..]
        .find('}')
        .unwrap_or_else(|| panic!("object {key:?} is not closed in {json}"));
    &json[at..=at + end]
}

/// A number inside the nested object `outer`.
#[track_caller]
fn nested(json: &str, outer: &str, key: &str) -> f64 {
    number_in(object(json, outer), key, json)
}

/// A top-level string value.
#[track_caller]
fn string(json: &str, key: &str) -> String {
    let top = top_level(json);
    let needle = format!("\"{key}\":\"");
    let at = top
        .find(&needle)
        .unwrap_or_else(|| panic!("no string {key:?} in {json}"))
        + needle.len();
    let end = top[at..]
        .find('"')
        .unwrap_or_else(|| panic!("string {key:?} is not closed in {json}"));
    top[at..at + end].to_owned()
}

#[test]
fn extractor_reads_top_level_and_nested_numbers() {
    let json =
        r#"{"mode":"media","count":7,"latency_us":{"count":3,"p99":12.5},"errors":0,"x":-1.5e3}"#;
    assert_eq!(num(json, "count"), 7.0);
    assert_eq!(nested(json, "latency_us", "count"), 3.0);
    assert_eq!(nested(json, "latency_us", "p99"), 12.5);
    assert_eq!(num(json, "errors"), 0.0);
    assert_eq!(num(json, "x"), -1500.0);
    assert_eq!(string(json, "mode"), "media");
}

// ----- media -----------------------------------------------------------------

/// Every frame sent in the window was delivered, none lost, none out of
/// order, no errors, and every delivered frame has a latency sample.
#[track_caller]
fn assert_media_clean(json: &str) {
    assert_eq!(string(json, "mode"), "media", "{json}");
    let sent = num(json, "frames_sent");
    assert!(sent > 0.0, "no frames sent: {json}");
    assert_eq!(num(json, "frames_delivered"), sent, "{json}");
    assert_eq!(num(json, "frames_lost"), 0.0, "{json}");
    assert_eq!(num(json, "frames_out_of_order"), 0.0, "{json}");
    assert_eq!(num(json, "errors"), 0.0, "{json}");
    assert_eq!(
        num(json, "bytes_delivered"),
        num(json, "bytes_sent"),
        "{json}"
    );
    assert_eq!(
        num(json, "bytes_sent"),
        sent * num(json, "size"),
        "bytes are frames times size: {json}"
    );
    assert_eq!(nested(json, "latency_us", "count"), sent, "{json}");
    assert!(nested(json, "latency_us", "p99") > 0.0, "{json}");
    assert!(
        nested(json, "latency_us", "max") >= nested(json, "latency_us", "p50"),
        "{json}"
    );
}

/// [`assert_media_clean`] for a flat-out run through `target`, which
/// delivered something.
#[track_caller]
fn assert_flat_out_clean(json: &str, target: &str) {
    assert_media_clean(json);
    assert_eq!(string(json, "target"), target, "{json}");
    assert!(num(json, "delivered_mibps") > 0.0, "{json}");
}

/// 3 pairs at 100 frames/s for 1 s: about 300 frames, all delivered.
#[track_caller]
fn paced_media(framing: &str) {
    let json = &json_from_a_new_relay(&format!(
        "media --pairs 3 --rate 100 --size 200 --duration 1 --warmup 0.3 --framing {framing}"
    ));
    assert_media_clean(json);
    assert_eq!(string(json, "framing"), framing, "{json}");
    assert_eq!(string(json, "target"), "relay", "{json}");
    assert_eq!(num(json, "streams"), 3.0, "{json}");
    let sent = num(json, "frames_sent");
    assert!(
        (150.0..=450.0).contains(&sent),
        "3 streams at 100 frames/s for 1 s sent {sent} frames: {json}"
    );
    // The charts' series: latency per second of the window, and the CDF.
    assert!(json.contains("\"seconds\":[{\"start_s\":0,"), "{json}");
    assert!(json.contains("\"latency_cdf_us\":[{\"q\":0.01"), "{json}");
    assert!(json.contains("{\"q\":1,\"us\":"), "{json}");
}

#[test]
fn media_paced_framed_delivers_every_frame() {
    paced_media("framed");
}

#[test]
fn media_paced_seed_delivers_every_frame() {
    paced_media("seed");
}

#[test]
fn media_both_directions_flat_out_loses_nothing() {
    let json = &json_from_a_new_relay("media --both --pairs 2 --duration 1 --warmup 0.3");
    assert_media_clean(json);
    assert_eq!(num(json, "streams"), 4.0, "{json}");
    assert!(num(json, "delivered_mibps") > 0.0, "{json}");
}

#[test]
fn media_direct_needs_no_relay() {
    let run = run_line("media --target direct --pairs 2 --duration 1 --warmup 0.3 --json --quiet");
    assert_flat_out_clean(run.json(), "direct");
}

/// A free loopback address (bound, then released).
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// A byte pipe like HAProxy in mode tcp: accepts up to `connections`
/// connections, one at a time, and forwards the bytes of each (one
/// direction: media without `--both`) to a new connection to `sink`.
/// Detached threads: they never keep the test from ending, and a copy ends
/// when the tool closes its side or after [`LIMIT`] of silence.
fn byte_pipe(sink: SocketAddr, connections: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the pipe");
    let addr = listener.local_addr().expect("pipe address");
    std::thread::spawn(move || {
        for from in listener.incoming().take(connections) {
            let Ok(mut from) = from else { return };
            let Ok(mut to) = TcpStream::connect_timeout(&sink, LIMIT) else {
                return;
            };
            let _ = from.set_read_timeout(Some(LIMIT));
            let _ = to.set_write_timeout(Some(LIMIT));
            let _ = to.set_nodelay(true);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
            });
        }
    });
    addr
}

#[test]
fn media_through_a_byte_pipe() {
    let sink = free_addr();
    let pipe = byte_pipe(sink, 2);
    let run = run_at(
        pipe,
        &format!("media --target pipe --sink {sink} --pairs 2 --duration 1 --warmup 0.3"),
    );
    assert_flat_out_clean(run.json(), "pipe");
}

#[test]
fn server_pid_adds_the_servers_cpu_and_memory() {
    let relay = RelayProcess::start(&[]);
    let pid = relay.pid();
    let media = run_at(
        relay.addr(),
        &format!("media --rate 100 --size 200 --duration 1 --warmup 0.2 --server-pid {pid}"),
    );
    let json = media.json();
    assert_media_clean(json);
    assert!(nested(json, "server", "cpu_s") >= 0.0, "{json}");
    assert!(nested(json, "server", "peak_rss_kib") > 0.0, "{json}");

    let calls = run_at(
        relay.addr(),
        &format!("calls --pairs 1 --duration 0.5 --warmup 0.2 --server-pid {pid}"),
    );
    let json = calls.json();
    assert!(nested(json, "server", "cpu_s") >= 0.0, "{json}");
    assert!(nested(json, "server", "peak_rss_kib") > 0.0, "{json}");

    // Without --server-pid there is no server object.
    let plain = run_at(
        relay.addr(),
        "media --rate 100 --size 200 --duration 0.3 --warmup 0",
    );
    let json = plain.json();
    assert!(!json.contains("\"server\""), "{json}");
}

// ----- calls and idle --------------------------------------------------------

#[test]
fn calls_complete_without_errors() {
    let json = &json_from_a_new_relay("calls --pairs 2 --duration 1 --warmup 0.2");
    assert_eq!(string(json, "mode"), "calls", "{json}");
    let calls = num(json, "calls");
    assert!(calls > 0.0, "{json}");
    assert_eq!(num(json, "errors"), 0.0, "{json}");
    assert!(num(json, "calls_per_s") > 0.0, "{json}");
    for step in ["ring_us", "accept_us", "end_us"] {
        // Each step is counted if it ended inside the window, so a call
        // straddling either edge of the window may count in one but not
        // the other: at most one per pair at each edge.
        let count = nested(json, step, "count");
        assert!((count - calls).abs() <= 2.0, "{step}: {json}");
        assert!(nested(json, step, "p99") > 0.0, "{step}: {json}");
    }
}

#[test]
fn idle_holds_every_connection() {
    let json = &json_from_a_new_relay("idle --connections 200 --duration 1 --heartbeat 0.2");
    assert_eq!(string(json, "mode"), "idle", "{json}");
    assert_eq!(num(json, "connections_requested"), 200.0, "{json}");
    assert_eq!(num(json, "established"), 200.0, "{json}");
    assert_eq!(num(json, "held"), 200.0, "{json}");
    assert_eq!(num(json, "errors"), 0.0, "{json}");
}

// ----- sink ------------------------------------------------------------------

/// Appends `value` as `digits` letters `A`..`P` (4 bits each), as the
/// tool's payload header writes numbers.
fn put_letters(out: &mut Vec<u8>, value: u64, digits: usize) {
    for index in (0..digits).rev() {
        out.push(b'A' + ((value >> (4 * index)) & 0xF) as u8);
    }
}

/// One framed media frame in the tool's payload format: length, `6`, then
/// `M` + stream (6 letters) + sequence (10) + send time (12, nanoseconds
/// since the epoch modulo 2^48), `Z` filler up to `size` bytes.
fn tool_media_frame(size: usize, stream: u64, sequence: u64) -> Vec<u8> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let stamp = (nanos % (1u128 << 48)) as u64;
    let mut payload = vec![b'M'];
    put_letters(&mut payload, stream, 6);
    put_letters(&mut payload, sequence, 10);
    put_letters(&mut payload, stamp, 12);
    assert_eq!(payload.len(), 29);
    payload.resize(size, b'Z');
    let length = u32::try_from(size + 1).expect("frame fits a u32");
    let mut frame = length.to_be_bytes().to_vec();
    frame.push(6);
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn sink_counts_hand_written_frames() {
    let mut sink = spawn(&words(
        "sink --listen 127.0.0.1:0 --size 64 --duration 1 --json",
    ));
    let line = sink.wait_stderr("sink listening on ");
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let mut bytes = Vec::new();
    for sequence in 0..3 {
        bytes.extend(tool_media_frame(64, 1, sequence));
    }
    let mut stream = TcpStream::connect(addr).expect("connect to the sink");
    stream.write_all(&bytes).expect("write three frames");
    drop(stream);
    let run = sink.finish();
    let json = run.json();
    assert_eq!(string(json, "mode"), "sink", "{json}");
    assert_eq!(num(json, "connections"), 1.0, "{json}");
    assert_eq!(num(json, "frames_delivered"), 3.0, "{json}");
    assert_eq!(num(json, "bytes_delivered"), 3.0 * 64.0, "{json}");
    assert_eq!(num(json, "errors"), 0.0, "{json}");
    assert_eq!(nested(json, "latency_us", "count"), 3.0, "{json}");
    assert!(nested(json, "latency_us", "p99") > 0.0, "{json}");
}

// ----- bad use ---------------------------------------------------------------

/// Exit 2, a message on stderr naming the problem, nothing on stdout.
#[track_caller]
fn assert_bad_use(args: &[&str], mentions: &str) {
    let run = run(args);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains(mentions), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    assert!(run.elapsed < Duration::from_secs(3), "{run}");
}

#[test]
fn bad_use_exits_2_with_a_message() {
    assert_bad_use(&[], "no mode");
    assert_bad_use(&["--json"], "no mode");
    assert_bad_use(&["bogus"], "unknown mode");
    assert_bad_use(&["media", "--framing", "bogus"], "--framing");
    assert_bad_use(&["calls", "--framing", "bogus"], "--framing");
    assert_bad_use(&["media", "--target", "bogus"], "--target");
    assert_bad_use(&["media", "--size", "28"], "--size");
    assert_bad_use(&["media", "--pairs", "0"], "--pairs");
    assert_bad_use(&["media", "--duration", "soon"], "--duration");
    assert_bad_use(&["media", "extra"], "unexpected argument");
    assert_bad_use(&["media", "--no-such-option"], "no-such-option");
    assert_bad_use(&["media", "--server-pid", "4000000000"], "--server-pid");
}

#[test]

fn pipe_without_sink_is_bad_use() {
    assert_bad_use(
        &["media", "--target", "pipe", "--addr", "127.0.0.1:1"],
        "--sink",
    );
}

#[test]

fn flat_out_window_below_one_frame_still_sends_or_is_bad_use() {
    let run =
        run_line("media --target direct --window 100 --duration 0.5 --warmup 0 --json --quiet");
    if run.code == Some(2) {
        assert!(run.stderr.contains("--window"), "{run}");
        return;
    }
    let json = run.json();
    assert!(num(json, "frames_sent") > 0.0, "{json}");
    assert_media_clean(json);
}

#[test]

fn idle_counts_connections_never_established_as_errors() {
    let run = run_at(free_addr(), "idle --connections 5 --duration 0.3");
    assert_eq!(run.code, Some(1), "{run}");
    let json = run.stdout.trim();
    assert_eq!(num(json, "established"), 0.0, "{run}");
    assert_eq!(num(json, "errors"), 5.0, "{run}");
}

// A slow receiver (`--rx-rate`, `--rcvbuf`): the relay delivers about half
// of a 120 KB/s stream to a 60 KB/s reader, and the run reports the share
// and the latency per slice.
#[test]
fn media_with_a_slow_receiver_reports_the_share_and_the_delay_per_slice() {
    let json = json_from_a_new_relay(
        "media --size 1200 --rate 100 --rx-rate 60000 --rcvbuf 4096 --slice 1 --duration 3 --warmup 0.5",
    );
    let share = num(&json, "delivered_share");
    assert!(
        (0.25..0.8).contains(&share),
        "delivered share {share}: {json}"
    );
    assert!(json.contains("\"slices\":[{\"start_s\":0"), "{json}");
    assert_eq!(num(&json, "errors"), 0.0, "{json}");
}

// Against a relay that requires tokens, `--secret-file` signs every
// registration: calls and media run clean; without it the relay refuses.
#[test]
fn the_tool_registers_with_tokens_against_a_secured_relay() {
    let keys = std::env::temp_dir().join(format!("callrelay-load-{}.keys", std::process::id()));
    std::fs::write(&keys, "k1 a-secret-for-the-load-smoke-test\n").expect("write keys");
    let keys = keys.to_str().expect("utf-8 path").to_owned();
    let relay = RelayProcess::start(&["--auth-secret-file", &keys]);
    for mode in ["calls --pairs 2", "media --size 200 --rate 50"] {
        let run = run_at(
            relay.addr(),
            &format!("{mode} --duration 0.5 --warmup 0.2 --secret-file {keys}"),
        );
        assert_eq!(num(run.json(), "errors"), 0.0, "{run}");
    }
    let refused = run_at(relay.addr(), "calls --pairs 1 --duration 0.5 --warmup 0");
    assert_ne!(
        refused.code,
        Some(0),
        "a relay requiring tokens took bare ids: {refused}"
    );
}

// `calls --reconnect`: the callee registers again on a new connection
// after every call (the bench's token-cost figure), each registration a
// verified token: the relay accepted a connection for every call.
#[test]
fn calls_reconnect_registers_once_per_call() {
    let keys = std::env::temp_dir().join(format!("callrelay-load-{}.rekeys", std::process::id()));
    std::fs::write(&keys, "k1 a-secret-for-the-load-smoke-test\n").expect("write keys");
    let keys = keys.to_str().expect("utf-8 path").to_owned();
    let relay = RelayProcess::start(&[
        "--auth-secret-file",
        &keys,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let run = run_at(
        relay.addr(),
        &format!("calls --pairs 2 --reconnect --duration 0.5 --warmup 0.2 --secret-file {keys}"),
    );
    let json = run.json();
    assert_eq!(num(json, "errors"), 0.0, "{run}");
    assert!(json.contains("\"reconnect\":true"), "{json}");
    let calls = num(json, "calls") as u64;
    assert!(calls > 0, "{json}");
    let accepted = common::sample(
        &common::scrape(relay.metrics_addr()),
        "callrelay_connections_accepted_total",
    );
    // Two per pair to start with, one more after every call.
    assert!(
        accepted >= 4 + calls,
        "{accepted} connections for {calls} calls: {json}"
    );
}

#[test]
fn help_exits_0_and_names_every_option() {
    for flag in ["--help", "-h"] {
        let run = run(&[flag]);
        assert_eq!(run.code, Some(0), "{run}");
        let modes = ["media", "calls", "idle", "mixed", "sink"];
        assert_mentions_every(&run.stdout, flag, &modes);
        let options = [
            "--addr",
            "--duration",
            "--warmup",
            "--drain",
            "--pairs",
            "--connections",
            "--size",
            "--rate",
            "--both",
            "--reconnect",
            "--window",
            "--rx-rate",
            "--rcvbuf",
            "--slice",
            "--secret-file",
            "--metrics",
            "--framing",
            "--target",
            "--sink",
            "--listen",
            "--heartbeat",
            "--sources",
            "--server-pid",
            "--quiet",
            "--json",
            "--help",
        ];
        assert_mentions_every(&run.stdout, flag, &options);
    }
}

#[test]
fn nothing_listening_exits_1_quickly() {
    // Bound and released: nothing listens there now.
    let dead = free_addr();
    for line in [
        "media --duration 1",
        "media --framing seed --duration 1",
        "calls --duration 1",
        "idle --connections 5 --duration 0.3",
    ] {
        let run = run_at(dead, line);
        assert_eq!(run.code, Some(1), "{run}");
        assert!(run.elapsed < Duration::from_secs(3), "{run}");
        if line.starts_with("idle ") {
            // idle reports its (empty) result rather than failing outright.
            let json = run.stdout.trim();
            assert_eq!(num(json, "established"), 0.0, "{run}");
            assert_eq!(num(json, "held"), 0.0, "{run}");
        } else {
            assert!(run.stderr.contains("failed"), "{run}");
        }
    }
}

// `mixed` (the soak scenario) for a second: rounds complete without
// errors, and after the clients leave the relay's gauges are back to zero.
#[test]
fn mixed_soak_round_trips_and_leaves_nothing_behind() {
    let relay = RelayProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = relay.metrics_addr();
    let pid = relay.pid();
    let run = run_at(
        relay.addr(),
        &format!("mixed --pairs 2 --duration 1 --metrics {metrics} --server-pid {pid}"),
    );
    let json = run.json();
    assert_eq!(string(json, "mode"), "mixed", "{json}");
    assert!(num(json, "rounds") > 0.0, "{json}");
    assert_eq!(num(json, "errors"), 0.0, "{json}");
    assert!(json.contains("\"leak_free\":true"), "{json}");
    assert!(num(json, "rss_peak_kib") > 0.0, "{json}");
}

// `--tls --tls-ca`: paced media and calls run clean against a relay with
// `--tls-cert`; media --target direct runs TLS on both ends flat out
// with `--sink-cert`; a CA that did not sign the relay's certificate fails
// the run; idle (which does not speak TLS) refuses --tls as bad use.
#[test]
fn media_and_calls_speak_tls_to_a_tls_relay() {
    let pki = Pki::new("load");
    for name in ["relay", "sink", "other"] {
        pki.leaf(name);
    }
    let file = |name: &str| pki.path(name).display().to_string();
    let relay = RelayProcess::start(&[
        "--tls-cert",
        &file("relay.pem"),
        "--tls-key",
        &file("relay.key"),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let ca = file("ca.pem");
    let paced = run_at(
        relay.addr(),
        &format!(
            "media --tls --tls-ca {ca} --pairs 2 --rate 100 --size 200 --duration 1 --warmup 0.3"
        ),
    );
    assert_media_clean(paced.json());
    // Flat out through the relay: rustls's buffer fills and empties again
    // and again (a write that found it full and then flushed it once closed
    // the receiver as if it had gone).
    let flood = run_at(
        relay.addr(),
        &format!("media --tls --tls-ca {ca} --pairs 4 --size 1024 --duration 1 --warmup 0.3"),
    );
    assert_flat_out_clean(flood.json(), "relay");
    let calls = run_at(
        relay.addr(),
        &format!("calls --tls --tls-ca {ca} --pairs 2 --duration 0.5 --warmup 0.2"),
    );
    assert_eq!(num(calls.json(), "errors"), 0.0, "{calls}");
    assert!(num(calls.json(), "calls") > 0.0, "{calls}");
    let direct = run_line(&format!(
        "media --target direct --tls --tls-ca {ca} --sink-cert {} --sink-key {} --pairs 2 --duration 1 --warmup 0.3 --json --quiet",
        file("sink.pem"),
        file("sink.key"),
    ));
    assert_flat_out_clean(direct.json(), "direct");
    // The relay's certificate as the only trusted one signs nothing it sends.
    let wrong = run_at(
        relay.addr(),
        &format!(
            "calls --tls-ca {} --pairs 1 --duration 0.5 --warmup 0",
            file("relay.pem")
        ),
    );
    assert_eq!(wrong.code, Some(1), "{wrong}");
    // idle over TLS: while it holds, every connection it holds is a TLS
    // connection at the relay.
    let addr = relay.addr().to_string();
    let mut idle = spawn(&[
        "idle",
        "--addr",
        &addr,
        "--tls-ca",
        &ca,
        "--connections",
        "20",
        "--duration",
        "3",
        "--heartbeat",
        "0.5",
        "--json",
    ]);
    idle.wait_stderr("holding 20 of 20");
    let metrics = common::scrape(relay.metrics_addr());
    let tls = "callrelay_connections_by_transport{transport=\"tls\"}";
    assert_eq!(common::sample(&metrics, tls), 20, "{metrics}");
    let idle = idle.finish();
    assert_eq!(num(idle.json(), "held"), 20.0, "{idle}");
    assert_eq!(num(idle.json(), "errors"), 0.0, "{idle}");
    // mixed over TLS (hostile and silent connections too), and nothing left behind.
    let metrics = relay.metrics_addr();
    let mixed = run_at(
        relay.addr(),
        &format!("mixed --tls-ca {ca} --pairs 2 --duration 1 --metrics {metrics}"),
    );
    assert_eq!(num(mixed.json(), "errors"), 0.0, "{mixed}");
    assert!(num(mixed.json(), "rounds") > 0.0, "{mixed}");
    assert!(mixed.json().contains("\"leak_free\":true"), "{mixed}");
    // sink makes no client connections.
    assert_bad_use(&["sink", "--tls", "--listen", "127.0.0.1:0"], "TLS");
    let help = run(&["--help"]);
    assert_mentions_every(
        &help.stdout,
        "--help",
        &["--tls", "--tls-ca", "--sink-cert", "--sink-key"],
    );
}
