//! The Grafana dashboard (docs/grafana-dashboard.json, issue 12) is valid
//! JSON and every metric it queries exists in a live scrape of the real
//! binary (in cluster mode too, so the per-node panels have data).

mod common;

use std::process::Command;

use common::RelayProcess;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json");

/// Every `callrelay_*` metric name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("callrelay_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_scraped() {
    let status = Command::new("python3")
        .args(["-m", "json.tool", DASHBOARD])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 checks the JSON");
    assert!(
        status.success(),
        "docs/grafana-dashboard.json is not valid JSON"
    );
    let dashboard = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    let names = metric_names(&dashboard);
    assert!(names.len() >= 15, "only {names:?}");
    // Redis is never reached (nothing listens there): the cluster gauges
    // are exported all the same.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let redis = format!("redis://127.0.0.1:{port}");
    for args in [
        vec!["--metrics-listen", "127.0.0.1:0"],
        vec![
            "--metrics-listen",
            "127.0.0.1:0",
            "--cluster",
            &redis,
            "--trunk-listen",
            "127.0.0.1:0",
        ],
    ] {
        let relay = RelayProcess::start(&args);
        let scrape = common::scrape(relay.metrics_addr());
        for name in &names {
            let sampled = scrape.lines().any(|line| {
                line.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            });
            assert!(
                sampled,
                "{name} (queried by the dashboard) is not in the scrape {args:?}:\n{scrape}"
            );
        }
    }
}
