//! The cluster (PROTOCOL.md section 11) against the real binary: two and
//! three nodes on loopback sharing a real `redis-server` that each test
//! starts on a free port and stops (installed by .ci/install-deps).
//!
//! A registration reaches the other nodes through Redis asynchronously, so
//! tests wait for it as a client would notice: a TEXT from the other node
//! that is refused `offline` until the directory knows the user, retried
//! with a deadline (`wait_reachable`).

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callrelay::protocol::Framing;
use callrelay::protocol::frame::ServerMessage;
use common::{Client, RelayProcess, WAIT, accept_ringing, expect_ended, q, ring};

/// A `redis-server` on a free loopback port, without persistence; killed
/// on drop.
struct Redis {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by .ci/install-deps)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node of the cluster on `redis`, with extra options.
fn node(redis: &Redis, id: &str, extra: &[&str]) -> RelayProcess {
    let url = redis.url();
    let mut args = vec![
        "--cluster",
        &url,
        "--node-id",
        id,
        "--trunk-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let relay = RelayProcess::start(&args);
    relay.expect_log(&["cluster: directory loaded"]);
    relay
}

/// Waits until `from` (framed) can reach `to` on another node: a TEXT is
/// refused `offline` until the directory of `from`'s node knows `to`.
#[track_caller]
fn wait_reachable(from: &mut Client, to: &mut Client) {
    let deadline = Instant::now() + WAIT;
    let me = from.user.clone();
    let target = to.user.clone();
    for attempt in 0.. {
        let ping = format!("reach-{attempt}");
        from.text(&target, &ping);
        from.text(&me, "sync");
        match from.recv() {
            ServerMessage::Error { code, .. } if code == "offline" => {
                from.expect_text(&me, "sync");
                assert!(
                    Instant::now() < deadline,
                    "{target} never became reachable from {me}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            ServerMessage::Text { text, .. } if text == q("sync") => {
                to.expect_text(&me, &ping);
                return;
            }
            other => panic!("{me} reaching {target}: got {other:?}"),
        }
    }
}

const FRAMED: Framing = Framing::LengthPrefixed;

/// Waits until `relay` has one connection whose reading is paused (a FILE
/// sender out of its stream's credit), polling its metrics.
#[track_caller]
fn wait_until_one_paused(relay: &RelayProcess) {
    let deadline = Instant::now() + WAIT;
    let paused = || {
        common::sample(
            &common::scrape(relay.metrics_addr()),
            "callrelay_connections_paused",
        )
    };
    while paused() != 1 {
        assert!(Instant::now() < deadline, "no sender was paused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_call_across_nodes_carries_media_both_ways_in_both_framings() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    for (caller_framing, callee_framing) in [
        (FRAMED, FRAMED),
        (Framing::Seed, FRAMED),
        (FRAMED, Framing::Seed),
    ] {
        let tag = format!("{caller_framing:?}-{callee_framing:?}");
        let mut bob = b.client(&format!("bob-{tag}"), callee_framing);
        let mut probe = a.client(&format!("probe-{tag}"), FRAMED);
        wait_reachable(&mut probe, &mut bob);
        let mut alice = a.client(&format!("alice-{tag}"), caller_framing);
        let call_id = ring(&mut alice, &mut bob, true);
        accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
        common::media_both_ways(&mut alice, &mut bob, b"audio from alice", b"video from bob");
        alice.end(&call_id);
        expect_ended(&mut alice, &mut bob, &call_id);
    }
    // A 4 MiB framed frame arrives byte-exact.
    let mut bob = b.client("bob-big", FRAMED);
    let mut alice = a.client("alice-big", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    let call_id = ring(&mut alice, &mut bob, false);
    accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    alice.media(&big);
    bob.expect_media(&big);
    a.expect_log(&["trunk to node-b up"]);
}

#[test]
fn text_goes_across_nodes_with_the_server_set_sender() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", Framing::Seed);
    let mut bob_probe = b.client("bob-probe", FRAMED);
    wait_reachable(&mut bob_probe, &mut alice);
    bob.text("alice", "hello across 😀");
    alice.expect_text("bob", "hello across 😀");
}

#[test]
fn refusals_and_the_ring_timeout_hold_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &["--ring-timeout", "1"]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", FRAMED);
    let mut carol = b.client("carol", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    // Offline: nobody has that id anywhere.
    alice.call("nobody", false);
    alice.expect_reject("offline");
    // Busy: bob is ringing with carol (on bob's node) first.
    let local = ring(&mut carol, &mut bob, false);
    alice.call("bob", false);
    alice.expect_reject("busy");
    carol.end(&local);
    expect_ended(&mut carol, &mut bob, &local);
    // Rejected by the callee, with its reason.
    let call_id = ring(&mut alice, &mut bob, false);
    bob.reject(&call_id, "not now");
    assert_eq!(bob.expect_reject("not now"), call_id);
    assert_eq!(alice.expect_reject("not now"), call_id);
    // Nobody answers: the caller's node times it out (1 s here).
    let call_id = ring(&mut alice, &mut bob, false);
    assert_eq!(alice.expect_reject("timeout"), call_id);
    bob.expect_end(&call_id);
    // The caller cancels a ringing call across nodes.
    let call_id = ring(&mut alice, &mut bob, false);
    alice.reject(&call_id, "");
    expect_ended(&mut alice, &mut bob, &call_id);
}

#[test]
fn the_newest_registration_wins_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let mut old = a.client("dave", FRAMED);
    let mut probe = b.client("probe", FRAMED);
    wait_reachable(&mut probe, &mut old);
    let mut new = b.client("dave", FRAMED);
    old.expect_error("replaced");
    old.expect_closed();
    // Callers on the old node now reach the new connection.
    let mut erin = a.client("erin", FRAMED);
    let deadline = Instant::now() + WAIT;
    loop {
        erin.text("dave", "to the newest");
        erin.text("erin", "sync");
        match erin.recv() {
            ServerMessage::Text { text, .. } if text == q("sync") => break,
            ServerMessage::Error { .. } => erin.expect_text("erin", "sync"),
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "dave never reachable on node-b");
        std::thread::sleep(Duration::from_millis(20));
    }
    new.expect_text("erin", "to the newest");
}

#[test]
fn call_ids_are_unique_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    let mut seen = std::collections::HashSet::new();
    for round in 0..1000 {
        let (caller, callee) = if round % 2 == 0 {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let call_id = ring(caller, callee, false);
        assert!(seen.insert(call_id.clone()), "call id {call_id} came twice");
        callee.reject(&call_id, "no");
        callee.expect_reject("no");
        caller.expect_reject("no");
    }
}

#[test]
fn a_node_killed_leaves_its_peer_a_call_end_at_the_windows_end_and_its_users_offline() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &["--resume-window", "1"]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    let call_id = ring(&mut alice, &mut bob, false);
    accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
    let pid = b.pid();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    a.expect_log(&["trunk to node-b closed"]);
    alice.expect_end(&call_id);
    // Within 10 s bob is gone from the directory: a call to him is refused
    // offline (the node is reaped once its heartbeats are stale).
    a.expect_log(&["node node-b missed its heartbeats"]);
    alice.call("bob", false);
    alice.expect_reject("offline");
}

#[test]
fn redis_restarted_empty_gets_every_user_again_and_cross_node_calls_work() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", FRAMED);
    let mut carol = a.client("carol", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    let port = redis.stop();
    a.expect_log(&["Redis", "lost"]);
    // Local service goes on without Redis.
    let call_id = ring(&mut alice, &mut carol, false);
    accept_ringing(&mut alice, &mut carol, &call_id, &call_id);
    common::media_both_ways(&mut alice, &mut carol, b"local", b"still");
    alice.end(&call_id);
    expect_ended(&mut alice, &mut carol, &call_id);
    // Back, empty: both nodes publish their users again.
    let _redis = Redis::start_on(port);
    let mut dan = a.client("dan", FRAMED);
    wait_reachable(&mut dan, &mut bob);
    let call_id = ring(&mut dan, &mut bob, false);
    accept_ringing(&mut dan, &mut bob, &call_id, &call_id);
}

#[test]
fn two_nodes_share_one_port_with_reuse_port() {
    let redis = Redis::start();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let on_port = |id: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_callrelay"));
        command.args([
            "--listen",
            &listen,
            "--reuse-port",
            "--cluster",
            &redis.url(),
        ]);
        command.args(["--node-id", id, "--trunk-listen", "127.0.0.1:0"]);
        let relay = RelayProcess::spawn_command(command);
        relay.expect_log(&["cluster: directory loaded"]);
        relay
    };
    let a = on_port("node-a");
    let b = on_port("node-b");
    assert_eq!(a.addr(), b.addr());
    // Clients land on either; each can reach the other wherever it is.
    let mut first = a.client("first", FRAMED);
    let mut second = b.client("second", FRAMED);
    wait_reachable(&mut first, &mut second);
    wait_reachable(&mut second, &mut first);
}

#[test]
fn a_trunk_without_the_cluster_secret_is_refused() {
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("callrelay-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret = dir.join("secret");
    let other = dir.join("other");
    std::fs::write(&secret, "a-cluster-secret-of-enough-length\n").expect("write");
    std::fs::write(&other, "another-cluster-secret-entirely\n").expect("write");
    let (secret, other) = (secret.display().to_string(), other.display().to_string());
    let a = node(&redis, "node-a", &["--cluster-secret-file", &secret]);
    let b = node(&redis, "node-b", &["--cluster-secret-file", &secret]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    let c = node(&redis, "node-c", &["--cluster-secret-file", &other]);
    let mut carol = c.client("carol", FRAMED);
    c.expect_log(&["failed the cluster secret's challenge"]);
    carol.call("alice", false);
    carol.expect_reject("offline");
}

// The load tool's two-node mode (the bench's cross-node scenario): callers
// on one node, callees on the other, every frame delivered.
#[test]
fn the_load_tool_puts_callers_and_callees_on_two_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let (first, second) = (a.addr().to_string(), b.addr().to_string());
    let output = Command::new(env!("CARGO_BIN_EXE_callrelay-load"))
        .args([
            "media",
            "--pairs",
            "20",
            "--size",
            "160",
            "--rate",
            "50",
            "--duration",
            "1",
        ])
        .args([
            "--warmup", "0.3", "--quiet", "--json", "--addr", &first, "--addr", &second,
        ])
        .output()
        .expect("run callrelay-load");
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{json} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(json.contains("\"frames_lost\":0,"), "{json}");
    assert!(!json.contains("\"frames_delivered\":0,"), "{json}");
    assert!(json.contains("\"errors\":0"), "{json}");
    b.expect_log(&["trunk to node-a up"]);
}

// Newest wins across nodes moves the call (PROTOCOL.md 8.3): the new
// connection is told `3 callId` and media flows between it and the other
// party, who hears nothing. Both cases: the other party on a third node,
// and on the node the user left.
#[test]
fn a_call_moves_with_its_user_to_another_node() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let c = node(&redis, "node-c", &[]);
    for (old_node, peer_node, new_node, tag) in [(&a, &b, &c, "third"), (&a, &a, &b, "same")] {
        let alice_id = format!("alice-{tag}");
        let mut old = old_node.client(&alice_id, FRAMED);
        let mut bob = peer_node.client(&format!("bob-{tag}"), FRAMED);
        let mut probe = new_node.client(&format!("probe-{tag}"), FRAMED);
        wait_reachable(&mut old, &mut bob);
        wait_reachable(&mut probe, &mut bob);
        let call_id = ring(&mut old, &mut bob, false);
        accept_ringing(&mut old, &mut bob, &call_id, &call_id);
        let mut new = new_node.connect(FRAMED);
        new.register(&alice_id);
        old.expect_error("replaced");
        old.expect_closed();
        new.expect_accept(&call_id);
        common::media_both_ways(&mut new, &mut bob, b"from the new node", b"back to it");
        bob.barrier();
        new.end(&call_id);
        expect_ended(&mut new, &mut bob, &call_id);
    }
}

// A node killed: its user comes back on a third node within the resume
// window and keeps its call.
#[test]
fn a_party_of_a_killed_node_resumes_its_call_on_a_third_node() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let c = node(&redis, "node-c", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    let call_id = ring(&mut alice, &mut bob, false);
    accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
    let status = Command::new("kill")
        .args(["-9", &a.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    b.expect_log(&["trunk to node-a closed"]);
    let mut back = c.connect(FRAMED);
    back.register("alice");
    back.expect_accept(&call_id);
    common::media_both_ways(&mut back, &mut bob, b"alive again", b"welcome back");
    bob.barrier();
}

// A cut trunk (its socket destroyed with `ss -K`, iproute2, as root): the parties across it
// count as detached, the trunk is dialled again, and the call goes on over
// the new trunk; new calls across it work too.
#[test]
fn a_cut_trunk_is_dialled_again_and_its_calls_go_on() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut bob = b.client("bob", FRAMED);
    wait_reachable(&mut alice, &mut bob);
    let call_id = ring(&mut alice, &mut bob, false);
    accept_ringing(&mut alice, &mut bob, &call_id, &call_id);
    let line = b.expect_log(&["cluster: node node-b (trunks on "]);
    let port = line
        .split("trunks on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .expect("node-b's trunk port in its log");
    let status = Command::new("ss")
        .args(["-K", "dst", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .status()
        .expect("run ss");
    assert!(status.success(), "ss -K failed");
    a.expect_log(&["trunk to node-b closed"]);
    a.expect_log(&["bob on node-b is back"]);
    b.expect_log(&["alice on node-a is back"]);
    common::media_both_ways(&mut alice, &mut bob, b"over the new trunk", b"heard");
    bob.barrier();
    alice.end(&call_id);
    expect_ended(&mut alice, &mut bob, &call_id);
}

// An 8 MiB FILE across nodes arrives byte-exact with the server-set
// sender. While its receiver reads nothing, the sender's node pauses the
// sender (per-stream credit), and the trunk still carries everything else.
// A FILE to a user gone from the other node is refused like one to an
// offline user.
#[test]
fn a_file_crosses_nodes_with_backpressure_on_its_stream_only() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &["--metrics-listen", "127.0.0.1:0"]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut carol = b.client("carol", Framing::Seed);
    let mut dave = a.client("dave", FRAMED);
    let mut erin = b.client("erin", FRAMED);
    wait_reachable(&mut alice, &mut erin);
    wait_reachable(&mut dave, &mut erin);
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
    let sending = alice.send_in_background(common::file_message(FRAMED, "carol", "big.bin", &data));
    // carol reads nothing: alice is paused on her stream's credit.
    wait_until_one_paused(&a);
    dave.text("erin", "the trunk is not stalled");
    erin.expect_text("dave", "the trunk is not stalled");
    carol.expect_bytes(&common::file_frame_bytes(
        Framing::Seed,
        "alice",
        "big.bin",
        &data,
    ));
    sending.join().expect("alice sent the whole file");
    carol.barrier();
    // erin leaves node-b: a FILE to her is refused offline, by node-a if
    // it has heard, else by node-b ending the stream (0 bytes delivered).
    drop(erin);
    b.expect_log(&["(erin) closed by peer"]);
    dave.send_file("erin", "late.txt", b"too late");
    dave.expect_error("offline");
}

// PROTOCOL.md 8.4 across nodes: a receiver that goes away mid-FILE leaves
// its sender told how much arrived; a sender that goes away mid-FILE has
// its frame completed with zeros at the receiver.
#[test]
fn a_file_whose_sender_or_receiver_goes_away_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", &["--metrics-listen", "127.0.0.1:0"]);
    let b = node(&redis, "node-b", &[]);
    let mut alice = a.client("alice", FRAMED);
    let mut carol = b.client("carol", FRAMED);
    wait_reachable(&mut alice, &mut carol);
    let data = vec![7u8; 4 << 20];
    let sending = alice.send_in_background(common::file_message(FRAMED, "carol", "a.bin", &data));
    wait_until_one_paused(&a);
    drop(carol);
    sending.join().expect("alice's rest is read and dropped");
    alice.expect_error("offline");
    alice.barrier();
    // The sender leaves after half of its data: the rest arrives as zeros.
    let mut dora = b.client("dora", FRAMED);
    let mut bob = a.client("bob", FRAMED);
    wait_reachable(&mut bob, &mut dora);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let message = common::file_message(FRAMED, "dora", "half.bin", &data);
    let cut = message.len() - 50_000;
    bob.send_raw(&message[..cut]);
    let mut expected = data.clone();
    expected[100_000 - 50_000..].fill(0);
    let expected = common::file_frame_bytes(FRAMED, "bob", "half.bin", &expected);
    let sent_part = expected.len() - 50_000;
    dora.expect_bytes(&expected[..sent_part]);
    drop(bob);
    dora.expect_bytes(&expected[sent_part..]);
    dora.barrier();
}
