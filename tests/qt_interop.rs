//! The real Qt 5 client (tests/qt, built by `make qt`) against the relay:
//! each scenario runs the guide's client code in a Qt program, which checks
//! what QDataStream itself decoded and exits 0 only if everything matched.
//!
//! These tests fail (they do not skip) when the Qt client is not built:
//! `make test` installs Qt and builds it first.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::RelayProcess;

/// The Qt client binary: `$CALLRELAY_QT_CLIENT`, or `target/qt/qtclient`.
pub fn qt_client() -> PathBuf {
    let path = std::env::var_os("CALLRELAY_QT_CLIENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/qt/qtclient"));
    assert!(
        path.is_file(),
        "the Qt client {} is missing: run `make qt` (make test builds it)",
        path.display()
    );
    path
}

#[track_caller]
fn scenario(name: &str) {
    scenario_with(name, &[]);
}

/// Runs scenario `name` against a relay started with `args`.
fn scenario_with(name: &str, args: &[&str]) {
    let relay = RelayProcess::start(args);
    let output = Command::new(qt_client())
        .args(["scenario", name, "127.0.0.1"])
        .arg(relay.addr().port().to_string())
        .output()
        .expect("run the Qt client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("PASS {name}")),
        "Qt scenario {name} failed ({}):\n{stdout}{stderr}",
        output.status
    );
}

#[test]
fn qt_call_accept_media_both_ways_end() {
    scenario("call");
}

#[test]
fn qt_seed_and_length_prefixed_clients_talk_to_each_other() {
    scenario("mixed");
}

#[test]
fn qt_reject_with_a_reason() {
    scenario("reject");
}

#[test]
fn qt_call_to_an_offline_user() {
    scenario("offline");
}

#[test]
fn qt_call_to_a_busy_user() {
    scenario("busy");
}

#[test]
fn qt_cancel_while_ringing() {
    scenario("cancel");
}

#[test]
fn qt_peer_disconnect_mid_call() {
    // Without a resume window the call ends when a party vanishes.
    scenario_with("disconnect", &["--resume-window", "0"]);
}

#[test]
fn qt_call_survives_a_reconnect() {
    scenario("resume");
}

#[test]
fn qt_text_and_a_1_mib_file() {
    scenario("text_file");
}

#[test]
fn qt_length_prefixed_client_with_a_1_mib_media_frame() {
    scenario("framed_media");
}
