//! The command line of the `callrelay` binary: `--help`, `--version`, bad
//! options, a listen address already in use, and `-p PORT`.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use callrelay::protocol::Framing::LengthPrefixed;
use common::{
    Client, WAIT, assert_mentions_every, read_all, read_all_in_background, spawn_with_stderr_lines,
};

const BIN: &str = env!("CARGO_BIN_EXE_callrelay");

/// What a finished run printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary to completion (killing it and failing if it is still
/// running after [`WAIT`]).
#[track_caller]
fn run(args: &[&str]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start callrelay");
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let out_thread = read_all_in_background(stdout);
    let (sender, done) = channel();
    std::thread::spawn(move || {
        let _ = sender.send(read_all(stderr));
    });
    // Both pipes close when the process exits.
    let Ok(stderr) = done.recv_timeout(WAIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("callrelay {args:?} did not exit within {WAIT:?}");
    };
    let status = child.wait().expect("wait for callrelay");
    let stdout = out_thread.join().expect("stdout reader");
    Run {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn help_exits_0_and_names_every_option() {
    for flag in ["--help", "-h"] {
        let run = run(&[flag]);
        assert_eq!(run.status.code(), Some(0), "{flag}: {}", run.stderr);
        let options = [
            "--listen",
            "--port",
            "--register-timeout",
            "--idle-timeout",
            "--ring-timeout",
            "--media-grace",
            "--linger-timeout",
            "--max-connections",
            "--max-user-id",
            "--max-field",
            "--max-text",
            "--max-file",
            "--max-media",
            "--output-soft",
            "--output-hard",
            "--media-max-delay",
            "--send-lowat",
            "--resume-window",
            "--auth-secret-file",
            "--auth",
            "--auth-fail-limit",
            "--ttl",
            "--version",
            "--help",
        ];
        assert_mentions_every(&run.stdout, flag, &options);
    }
}

#[test]
fn version_exits_0_and_prints_the_version() {
    for flag in ["--version", "-V"] {
        let run = run(&[flag]);
        assert_eq!(run.status.code(), Some(0), "{flag}: {}", run.stderr);
        assert!(
            run.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{flag} printed {:?}",
            run.stdout
        );
    }
}

#[test]
fn bad_options_exit_2_with_a_message() {
    for args in [
        &["--port", "x"][..],
        &["--port", "70000"],
        &["--idle-timeout", "-1"],
        &["--register-timeout", "soon"],
        &["--ring-timeout", "0"],
        &["--max-text", "lots"],
        &["--output-soft", "9M"],
        &["--bogus"],
        &["--port"],
        &["stray"],
        &["--auth", "require"],
        &["--auth", "sometimes", "--auth-secret-file", "/dev/null"],
        &["--auth-secret-file", "/nonexistent/callrelay.keys"],
        &["--auth-secret-file", "/dev/null"],
        &["--auth-fail-limit", "many"],
        &["--send-lowat", "lots"],
        &["--resume-window", "-3"],
        &["token"],
        &["token", "alice"],
        &["token", "alice", "--auth-secret-file", "/dev/null"],
    ] {
        let run = run(args);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.trim().is_empty(), "{args:?}: no message");
        assert!(run.stdout.is_empty(), "{args:?}: stdout {:?}", run.stdout);
    }
}

#[test]
fn address_in_use_exits_2() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let run = run(&["--listen", &addr]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot listen"),
        "stderr: {:?}",
        run.stderr
    );
    drop(taken);
}

/// A relay started in the background with its stderr lines on a channel.
struct Background {
    child: Child,
    lines: Receiver<String>,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Background {
    fn start(args: &[&str]) -> Background {
        let (sender, lines) = channel();
        let child = spawn_with_stderr_lines(
            Command::new(BIN).args(args).env("RUST_LOG", "info"),
            move |line| sender.send(line).is_ok(),
        );
        Background { child, lines }
    }

    /// Waits for a line containing `needle`; `Err` with the lines seen if
    /// the process exits (its stderr closes) first.
    fn wait_for(&self, needle: &str) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(seen),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} within {WAIT:?}; saw {seen:?}")
                }
            }
        }
    }
}

#[test]
fn short_port_option_listens_on_every_interface() {
    // A free port: bind, note it, release it. Another process may grab it
    // in between; then the relay cannot listen and we try another.
    for _attempt in 0..5 {
        let port = {
            // 0.0.0.0: a port free on every address (sockets of other
            // tests may hold a port on 127.0.0.2 that 127.0.0.1 leaves free).
            let probe = TcpListener::bind("0.0.0.0:0").expect("bind");
            probe.local_addr().expect("address").port()
        };
        let port_text = port.to_string();
        let relay = Background::start(&["-p", &port_text]);
        let line = match relay.wait_for("listening on") {
            Ok(line) => line,
            Err(seen) if seen.iter().any(|line| line.contains("cannot listen")) => continue,
            Err(seen) => panic!("relay exited: {seen:?}"),
        };
        assert!(
            line.contains(&format!("listening on 0.0.0.0:{port}")),
            "{line}"
        );
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut client = Client::connect(addr, LengthPrefixed);
        client.register("someone");
        client.barrier();
        return;
    }
    panic!("no free port found in 5 attempts");
}
