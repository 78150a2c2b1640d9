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
    let mut relay_args = pki.relay_args();
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

/// A CA and a certificate for 127.0.0.1 signed by it, in a fresh folder
/// (the approach of tests/tls.rs), removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("callrelay-qt-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pki = Pki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=callrelay test CA",
        ]);
        pki.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            pki.path("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("ext");
        pki.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run openssl (make test installs it)");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Relay options for the server certificate.
    fn relay_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("server.pem").display().to_string(),
            "--tls-key".into(),
            self.path("server.key").display().to_string(),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let relay_args = relay_pki.relay_args();
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
