//! Runs the real `grove-bench` binary from the outside: a tiny broker benchmark against a real mosquitto,
//! and the command-line errors.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_grove-bench");

/// Fails the test (never skips it) when mosquitto is missing.
fn require_mosquitto() {
    match Command::new("mosquitto").arg("-h").output() {
        Ok(_) => {}
        Err(error) => panic!(
            "mosquitto is not on PATH ({error}); this test needs a real mosquitto: \
             install it with `sudo apt-get install mosquitto` (the project's test command does so)"
        ),
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("grove-bench runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn number(value: &Value, path: &str) -> u64 {
    value
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {path} in {value}"))
}

#[test]
fn tiny_load_against_mosquitto() {
    require_mosquitto();
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("results.json");
    let json_arg = json_path.to_str().expect("utf-8 temp path");
    let output = run(&[
        "broker",
        "--publishers",
        "2",
        "--subscribers",
        "3",
        "--messages",
        "40",
        "--rate-messages",
        "40",
        "--mosquitto-conf",
        "max_inflight_messages 20",
        "--qos",
        "0,1",
        "--payload",
        "64",
        "--mode",
        "max,rate",
        "--rate",
        "400",
        "--startup-runs",
        "2",
        "--idle-clients",
        "5",
        "--json",
        json_arg,
    ]);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "grove-bench failed:\n{stderr}\n{stdout}"
    );

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&json_path)).expect("JSON written"),
    )
    .expect("valid JSON");
    assert_eq!(report["qos1_losses"], Value::Array(Vec::new()));
    let peers = report["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1, "only mosquitto without --grove");
    let peer = &peers[0];
    assert_eq!(peer["peer"], "mosquitto");
    assert_eq!(peer["startup_ms"].as_array().map(Vec::len), Some(2));
    assert!(peer["startup_median_ms"]
        .as_f64()
        .is_some_and(|ms| ms > 0.0));
    assert!(number(peer, "/rss_idle_kb") > 0);
    assert!(number(peer, "/rss_peak_kb") >= number(peer, "/rss_idle_kb"));

    let phases = peer["phases"].as_array().expect("phases");
    let scenarios: Vec<(String, u64)> = phases
        .iter()
        .map(|p| {
            (
                p["scenario"]["mode"].as_str().unwrap_or("?").to_owned(),
                number(p, "/scenario/qos"),
            )
        })
        .collect();
    assert_eq!(
        scenarios,
        [
            ("max".into(), 0),
            ("max".into(), 1),
            ("rate".into(), 0),
            ("rate".into(), 1)
        ]
    );
    for phase in phases {
        // 2 publishers x 40 messages, each delivered to 3 subscribers; loopback loses nothing, even at QoS 0.
        assert_eq!(number(phase, "/outcome/sent"), 80, "{phase}");
        assert_eq!(number(phase, "/outcome/tally/expected"), 240, "{phase}");
        assert_eq!(number(phase, "/outcome/delivered"), 240, "{phase}");
        assert_eq!(number(phase, "/outcome/tally/lost"), 0, "{phase}");
        assert_eq!(number(phase, "/outcome/tally/duplicates"), 0, "{phase}");
        assert_eq!(number(phase, "/outcome/latency/samples"), 240, "{phase}");
        let p50 = number(phase, "/outcome/latency/p50_us");
        let p99 = number(phase, "/outcome/latency/p99_us");
        let max = number(phase, "/outcome/latency/max_us");
        assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{phase}");
        if number(phase, "/scenario/qos") == 1 {
            assert_eq!(number(phase, "/outcome/acked"), 80, "{phase}");
        }
    }

    assert!(stdout.contains("- Command: `"), "{stdout}");
    assert!(
        stdout.contains("| mosquitto | rate  | 1   | 64        | 80   | 240       |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| mosquitto | mosquitto version"),
        "{stdout}"
    );
}

/// Runs grove-bench with bad arguments and expects a failure whose stderr names the problem.
fn check_refused(args: &[&str], code: i32, message: &str) {
    let output = run(args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}:\n{stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: expected `{message}` in:\n{stderr}"
    );
}

#[test]
fn bad_arguments_are_refused_clearly() {
    check_refused(
        &["broker", "--payload", "10"],
        2,
        "payload must be 24..=1048576 bytes",
    );
    check_refused(
        &["broker", "--payload", "big"],
        2,
        "`big` is not a size in bytes",
    );
    check_refused(&["broker", "--qos", "2"], 2, "2 is not in 0..=1");
    check_refused(
        &["broker", "--mode", "fast"],
        2,
        "invalid value 'fast' for '--mode <LIST>'",
    );
    check_refused(
        &["broker", "--messages", "5", "--duration", "1"],
        2,
        "cannot be used with",
    );
    check_refused(
        &["broker", "--duration", "0"],
        2,
        "duration must be more than 0",
    );
    check_refused(&["broker", "--publishers", "0"], 2, "0 is not in 1..=1000");
    check_refused(
        &["broker", "--grove-conf", "broker.x ="],
        2,
        "not a TOML snippet",
    );
    check_refused(&["broker", "--no-mosquitto"], 2, "--grove <PATH>");
    check_refused(
        &[
            "broker",
            "--mosquitto",
            "/nonexistent/mosquitto",
            "--startup-runs",
            "1",
        ],
        1,
        "apt-get install mosquitto",
    );
    check_refused(
        &["broker", "--no-mosquitto", "--grove", "/nonexistent/grove"],
        1,
        "cannot run grove binary `/nonexistent/grove`",
    );
}

#[test]
fn a_broker_that_fails_to_start_is_reported_with_its_stderr() {
    require_mosquitto();
    check_refused(
        &[
            "broker",
            "--mosquitto-conf",
            "bogus_option 1",
            "--startup-runs",
            "1",
        ],
        1,
        "mosquitto exited with exit status: 3 before accepting a connection; its stderr ends with:",
    );
    check_refused(
        &[
            "broker",
            "--mosquitto-conf",
            "bogus_option 1",
            "--startup-runs",
            "1",
        ],
        1,
        "Unknown configuration variable \"bogus_option\"",
    );
}

#[test]
fn a_refused_client_is_named_in_the_error() {
    require_mosquitto();
    // mosquitto closes connections over its limit, so some benchmark client cannot connect.
    check_refused(
        &[
            "broker",
            "--mosquitto-conf",
            "max_connections 1",
            "--publishers",
            "2",
            "--subscribers",
            "2",
            "--idle-clients",
            "0",
            "--startup-runs",
            "1",
            "--mode",
            "max",
            "--qos",
            "0",
            "--payload",
            "64",
        ],
        1,
        "against mosquitto: client gb-mosquitto-0-max-q0-64-",
    );
}
