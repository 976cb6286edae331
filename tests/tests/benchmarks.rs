//! The benchmarks' own runs against the real gateway: `grove-bench` (a binary of the workspace that
//! depends on nothing of Grove's) driving the debug `grove`, so a benchmark that cannot complete is
//! found by the test command rather than on the day figures are wanted.

use grove_tests::workspace_bin;
use serde_json::Value;

/// The shadow benchmark, one second per scenario: every scenario completes with both client
/// libraries, each with answers measured. In shadow mode the libmosquitto client's own clients
/// receive the answers; its results once lacked their lines, and grove-bench refused them ("lack
/// subscriber 0").
#[test]
fn shadow_benchmark_completes_with_both_clients() {
    let grove = workspace_bin("grove");
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("shadow.json");
    let output = std::process::Command::new(workspace_bin("grove-bench"))
        .arg("shadow")
        .arg("--grove")
        .arg(&grove)
        .args(["--seconds", "1", "--json"])
        .arg(&json_path)
        .output()
        .expect("grove-bench runs");
    assert!(
        output.status.success(),
        "grove-bench shadow failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON written"))
            .expect("valid JSON");
    let rows = report.as_array().expect("a list of results");
    let clients: Vec<&str> = rows.iter().filter_map(|r| r["client"].as_str()).collect();
    // Five scenarios, each with rumqttc, then with libmosquitto.
    assert_eq!(clients, ["rumqttc", "libmosquitto"].repeat(5));
    for row in rows {
        for path in ["/completed", "/latency/samples"] {
            let n = row.pointer(path).and_then(Value::as_u64);
            assert!(n.is_some_and(|n| n > 0), "no {path} in {row}");
        }
    }
}
