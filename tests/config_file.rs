//! `--config FILE` and `--check-config` (issue 12) against the real binary:
//! the file's options apply, the command line wins, and a bad line is an
//! exit-2 error that names the file and the line.

mod common;

use std::process::Command;

use callrelay::protocol::Framing;
use common::RelayProcess;

fn write(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("callrelay-{}-{name}.conf", std::process::id()));
    std::fs::write(&path, text).expect("write the config file");
    path.display().to_string()
}

fn callrelay(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_callrelay"))
        .args(args)
        .output()
        .expect("run callrelay");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_file_and_command_line_merged() {
    let path = write(
        "merged",
        "# the relay\nlisten = 127.0.0.1:7001\nring-timeout = 7\nrequire-tls = false\nmax-connections = 500\n",
    );
    let (code, stdout, stderr) = callrelay(&[
        "--config",
        &path,
        "--max-connections",
        "600",
        "--check-config",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("the configuration is valid"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:7001"), "{stdout}");
    assert!(stdout.contains("ring: 7s"), "{stdout}");
    assert!(
        stdout.contains("max_connections: 600"),
        "the command line wins: {stdout}"
    );
}

#[test]
fn a_bad_line_is_an_error_naming_file_and_line() {
    for (name, text, needle) in [
        (
            "unknown",
            "ring-timeout = 5\nbogus-option = 1\n",
            ":2: unknown option \"bogus-option\"",
        ),
        (
            "value",
            "listen = 127.0.0.1:1\nring-timeout = soon\n",
            ":2: --ring-timeout",
        ),
        ("needs", "node-id = a\n", ":1: --node-id needs --cluster"),
    ] {
        let path = write(name, text);
        let (code, stdout, stderr) = callrelay(&["--config", &path, "--check-config"]);
        assert_eq!(code, Some(2), "{name}: {stdout} {stderr}");
        assert!(
            stderr.contains(&format!("{path}{needle}")),
            "{name}: {stderr}"
        );
    }
    let (code, _, stderr) = callrelay(&["--config", "/nonexistent/callrelay.conf"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent/callrelay.conf"), "{stderr}");
}

// The relay runs with the file's options: its ring timeout of 1 s refuses
// an unanswered call with "timeout".
#[test]
fn the_relay_serves_with_the_files_options() {
    let path = write("serve", "ring-timeout = 1\nmetrics-listen = 127.0.0.1:0\n");
    let relay = RelayProcess::start(&["--config", &path]);
    let mut alice = relay.client("alice", Framing::LengthPrefixed);
    let mut bob = relay.client("bob", Framing::LengthPrefixed);
    let call_id = common::ring(&mut alice, &mut bob, false);
    assert_eq!(alice.expect_reject("timeout"), call_id);
    bob.expect_end(&call_id);
    relay.metrics_addr();
}

// docs/callrelay.conf (the Debian package's /etc/callrelay/callrelay.conf)
// shows every option of --help, commented out, and is valid as it stands.
#[test]
fn the_shipped_config_file_names_every_option_and_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/callrelay.conf");
    let text = std::fs::read_to_string(path).expect("read docs/callrelay.conf");
    let (_, help, _) = callrelay(&["--help"]);
    let command_line_only = ["config", "check-config", "help", "version", "port", "ttl"];
    let mut names = 0;
    for word in help.split_whitespace() {
        let Some(name) = word.strip_prefix("--") else {
            continue;
        };
        let name = name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
        if name.is_empty()
            || command_line_only.contains(&name)
            || !help.contains(&format!("    --{name}"))
        {
            continue;
        }
        names += 1;
        assert!(
            text.contains(&format!("\n# {name} = ")),
            "docs/callrelay.conf lacks {name}"
        );
    }
    assert!(names > 30, "only {names} options found in --help");
    let (code, stdout, stderr) = callrelay(&["--config", path, "--check-config"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

// SIGHUP reads the config file again: a new ring timeout applies to calls
// from then on and is logged; a new user id limit is reported as needing
// a restart (the running value stays).
#[test]
fn sighup_rereads_the_file_and_applies_what_can_change() {
    let path = write("reload", "ring-timeout = 30\nlog-level = info\n");
    let relay = RelayProcess::start(&["--config", &path]);
    std::fs::write(
        &path,
        "ring-timeout = 1\nlog-level = info\nmax-user-id = 64\n",
    )
    .expect("rewrite");
    let status = Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    relay.expect_log(&["SIGHUP: ring: 30s -> ring: 1s"]);
    relay.expect_log(&["SIGHUP: max-user-id changed in the configuration: it takes a restart"]);
    let mut alice = relay.client("alice", Framing::LengthPrefixed);
    let mut bob = relay.client("bob", Framing::LengthPrefixed);
    let call_id = common::ring(&mut alice, &mut bob, false);
    assert_eq!(alice.expect_reject("timeout"), call_id);
    // A file that no longer parses keeps the configuration in use.
    std::fs::write(&path, "ring-timeout = never\n").expect("rewrite");
    let status = Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    relay.expect_log(&[
        "SIGHUP:",
        ":1: --ring-timeout",
        "the configuration in use stays",
    ]);
}
