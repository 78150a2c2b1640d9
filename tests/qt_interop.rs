//! The real Qt 5 client (tests/qt, built by `make qt`) against the relay:
//! each scenario runs the guide's client code in a Qt program, which checks
//! what QDataStream itself decoded and exits 0 only if everything matched.
//!
//! The `qt_tls_*` tests run the same scenarios over TLS: the relay gets a
//! certificate for 127.0.0.1 signed by a throwaway CA that the `openssl`
//! command makes at test time, and the Qt client (`--tls CA.pem`) connects
//! with QSslSocket::connectToHostEncrypted, trusting only that CA.
//!
//! These tests fail (they do not skip) when the Qt client is not built:
//! `make test` installs Qt and builds it first. The TLS ones also fail, with
//! Qt's reason, when Qt cannot load libssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Pki, RelayProcess};

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
    run_scenario(name, args, None);
}

#[track_caller]
fn tls_scenario(name: &str) {
    tls_scenario_with(name, &[]);
}

/// Runs scenario `name` over TLS against a relay started with `args` and a
/// fresh test certificate; the Qt client trusts only the test CA.
fn tls_scenario_with(name: &str, args: &[&str]) {
    let pki = Pki::new(name);
    let mut relay_args = pki.args("server");
    relay_args.extend(args.iter().map(|arg| (*arg).to_owned()));
    let relay_args: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    run_scenario(name, &relay_args, Some(&pki.path("ca.pem")));
}

/// Runs scenario `name` against a relay started with `args`, over TLS with
/// `ca` as the only trusted CA when given.
fn run_scenario(name: &str, args: &[&str], ca: Option<&Path>) {
    let relay = RelayProcess::start(args);
    let output = run_qt_client(name, &relay, ca);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("PASS {name}")),
        "Qt scenario {name} failed ({}):\n{stdout}{stderr}",
        output.status
    );
}

/// Runs `qtclient scenario NAME 127.0.0.1 PORT [--tls CA]` against `relay`.
fn run_qt_client(name: &str, relay: &RelayProcess, ca: Option<&Path>) -> Output {
    let mut command = Command::new(qt_client());
    command
        .args(["scenario", name, "127.0.0.1"])
        .arg(relay.addr().port().to_string());
    if let Some(ca) = ca {
        command.arg("--tls").arg(ca);
    }
    command.output().expect("run the Qt client")
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

#[test]
fn qt_tls_call_accept_media_both_ways_end() {
    tls_scenario("call");
}

#[test]
fn qt_tls_seed_and_length_prefixed_clients_talk_to_each_other() {
    tls_scenario("mixed");
}

#[test]
fn qt_tls_reject_with_a_reason() {
    tls_scenario("reject");
}

#[test]
fn qt_tls_call_to_an_offline_user() {
    tls_scenario("offline");
}

#[test]
fn qt_tls_call_to_a_busy_user() {
    tls_scenario("busy");
}

#[test]
fn qt_tls_cancel_while_ringing() {
    tls_scenario("cancel");
}

#[test]
fn qt_tls_peer_disconnect_mid_call() {
    tls_scenario_with("disconnect", &["--resume-window", "0"]);
}

#[test]
fn qt_tls_call_survives_a_reconnect() {
    tls_scenario("resume");
}

#[test]
fn qt_tls_text_and_a_1_mib_file() {
    tls_scenario("text_file");
}

#[test]
fn qt_tls_length_prefixed_client_with_a_1_mib_media_frame() {
    tls_scenario("framed_media");
}

// Peer verification is on: a relay whose certificate comes from another CA
// fails the handshake, so the scenario cannot register at all.
#[test]
fn qt_tls_refuses_a_certificate_from_another_ca() {
    let (relay_pki, other) = (Pki::new("relay-ca"), Pki::new("other-ca"));
    let relay_args = relay_pki.args("server");
    let relay_args: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    let relay = RelayProcess::start(&relay_args);
    let output = run_qt_client("offline", &relay, Some(&other.path("ca.pem")));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stdout.contains("FAIL offline")
            && stderr.contains("TLS verification error"),
        "the Qt client trusted a certificate it should not ({}):\n{stdout}{stderr}",
        output.status
    );
}
