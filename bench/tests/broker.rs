//! Runs the real `grove-bench` binary from the outside: a tiny broker benchmark against a real mosquitto,
//! and the command-line errors. (Its runs against the gateway are in `tests/tests/benchmarks.rs`,
//! where the harness finds both binaries.)

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

/// Runs `grove-bench broker` with `args` and `--json`, expects success and no QoS 1 loss; returns
/// the JSON report and stdout (the Markdown).
fn run_broker_json(args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("results.json");
    let json_arg = json_path.to_str().expect("utf-8 temp path");
    let output = run(&[args, &["--json", json_arg]].concat());
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
    (report, stdout)
}

#[test]
fn tiny_load_against_mosquitto() {
    require_mosquitto();
    let (report, stdout) = run_broker_json(&[
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
    ]);
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
        stdout.contains("| mosquitto | rumqttc | rate  | 1   | 64        | 80   | 240       |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| mosquitto | mosquitto version"),
        "{stdout}"
    );
}

#[test]
fn both_client_libraries_against_mosquitto() {
    require_mosquitto();
    let (report, stdout) = run_broker_json(&[
        "broker",
        "--client",
        "both",
        "--publishers",
        "2",
        "--subscribers",
        "3",
        "--messages",
        "50",
        "--rate-messages",
        "30",
        "--qos",
        "0,1",
        "--payload",
        "24,200",
        "--mode",
        "max,rate",
        "--rate",
        "300",
        "--startup-runs",
        "1",
        "--idle-clients",
        "0",
    ]);
    let phases = report["peers"][0]["phases"].as_array().expect("phases");
    let clients: Vec<&str> = phases
        .iter()
        .map(|p| p["scenario"]["client"].as_str().unwrap_or("?"))
        .collect();
    // Each scenario with rumqttc, then with libmosquitto: 2 modes x 2 QoS x 2 payloads.
    assert_eq!(clients, ["rumqttc", "libmosquitto"].repeat(8));
    for phase in phases {
        let (sent, delivered) = if phase["scenario"]["mode"] == "max" {
            (100, 300)
        } else {
            (60, 180)
        };
        // Every message of both publishers to each of the 3 subscribers, counted once.
        assert_eq!(number(phase, "/outcome/sent"), sent, "{phase}");
        assert_eq!(
            number(phase, "/outcome/tally/expected"),
            delivered,
            "{phase}"
        );
        assert_eq!(number(phase, "/outcome/delivered"), delivered, "{phase}");
        assert_eq!(number(phase, "/outcome/tally/unique"), delivered, "{phase}");
        assert_eq!(number(phase, "/outcome/tally/lost"), 0, "{phase}");
        assert_eq!(number(phase, "/outcome/tally/duplicates"), 0, "{phase}");
        assert_eq!(number(phase, "/outcome/tally/out_of_order"), 0, "{phase}");
        assert_eq!(number(phase, "/outcome/foreign"), 0, "{phase}");
        assert_eq!(
            number(phase, "/outcome/latency/samples"),
            delivered,
            "{phase}"
        );
        let p50 = number(phase, "/outcome/latency/p50_us");
        let max = number(phase, "/outcome/latency/max_us");
        assert!(p50 > 0 && p50 <= max, "{phase}");
        if number(phase, "/scenario/qos") == 1 {
            assert_eq!(number(phase, "/outcome/acked"), sent, "{phase}");
        }
        // The clients' CPU: the C client's own getrusage, or the harness process for rumqttc.
        let client_cpu = phase["client_cpu_ms"].as_f64();
        assert!(client_cpu.is_some_and(|ms| ms >= 0.0), "{phase}");
        if phase["scenario"]["client"] == "libmosquitto" {
            // getrusage counts µs, and connecting five clients alone takes some.
            assert!(client_cpu.is_some_and(|ms| ms > 0.0), "{phase}");
        }
    }
    assert!(
        stdout
            .contains("| mosquitto | libmosquitto | rate  | 1   | 200       | 60   | 180       |"),
        "{stdout}"
    );
    assert!(stdout.contains("- Load clients: rumqttc ("), "{stdout}");
}

/// Runs the libmosquitto client executable directly with `input` on stdin.
fn run_c_client(input: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("GROVE_BENCH_MQTT_LOAD"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the libmosquitto client runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("phase line written");
    child.wait_with_output().expect("the client exits")
}

#[test]
fn the_c_client_refuses_bad_phases_clearly() {
    for (input, message) in [
        ("", "error no `phase` line on stdin"),
        ("hello\n", "error expected a `phase ...` line first"),
        (
            "phase host=127.0.0.1 port=1 id=x publishers=1 subscribers=1 qos=0 payload=64 speed=9\n",
            "error unknown parameter `speed`",
        ),
        (
            "phase host=127.0.0.1 port=1 id=x publishers=1 subscribers=1 qos=0 payload=10 messages=1\n",
            "error payload of 10 bytes cannot hold the 24-byte header",
        ),
        (
            "phase host=127.0.0.1 port=1 id=x publishers=1 subscribers=1 qos=0 payload=64\n",
            "error exactly one of messages and duration_ms must be set",
        ),
    ] {
        let output = run_c_client(input);
        assert_eq!(output.status.code(), Some(1), "{input:?}");
        let stdout = text(&output.stdout);
        assert_eq!(stdout.trim_end(), message, "{input:?}");
    }
    // Nothing listens on a port just freed: the subscriber's connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let output = run_c_client(&format!(
        "phase host=127.0.0.1 port={port} id=x publishers=1 subscribers=1 qos=0 payload=64 messages=1\n"
    ));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stdout).trim_end(),
        format!("error client gb-x-s0 cannot connect to 127.0.0.1:{port}: Connection refused")
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
        &["broker", "--client", "paho"],
        2,
        "invalid value 'paho' for '--client <LIB>'",
    );
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
    // mosquitto closes connections over its limit, so some benchmark client cannot connect; each
    // client library names the client.
    for (client, message) in [
        (
            "rumqttc",
            "against mosquitto: client gb-mosquitto-0-max-q0-64-",
        ),
        (
            "libmosquitto",
            "against mosquitto: libmosquitto client (exit status: 1): client gb-mosquitto-0-lm-max-q0-64-",
        ),
    ] {
        check_refused(
            &[
                "broker",
                "--client",
                client,
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
            message,
        );
    }
}
