//! End-to-end tests of deployments (issue 19, local part): the real `grove` binary, documents
//! applied with `grove deploy`, functions invoked with `grove fn`, events from mosquitto_pub, and
//! kill -9 at the steps of applying, each step known from the `grove_deploy_*` metrics.

use std::path::Path;

use sha2::{Digest, Sha256};

use grove_tests::functions::{guest, path, Fixture, ECHO};
use grove_tests::{mosquitto_pub, MosquittoSub};

/// Fails every invocation (the payload as its error).
const FAIL: &str = "(drop (call $output (local.get $pp) (local.get $pl))) (i32.const 1)";

/// The manifest of `f`: triggered by `sensors/+`, events going to alias `live`.
const MANIFEST: &str = "name = \"f\"\ntriggers = [\"sensors/+\"]\ntrigger_qualifier = \"live\"\n";

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `wasm` as a file beside the test and a document deploying it as `f` (alias `live` at
/// 100%) with `extra` top-level keys; returns the document's path.
fn document(f: &Fixture, id: &str, wasm: &[u8], sha256: &str, extra: &str) -> String {
    let module = f.files.path().join(format!("{id}.wasm"));
    std::fs::write(&module, wasm).unwrap();
    document_at(f, id, &module, sha256, extra)
}

/// A document deploying the module at `module` as `f` (see [`document`]).
fn document_at(f: &Fixture, id: &str, module: &Path, sha256: &str, extra: &str) -> String {
    let doc = serde_json::json!({
        "format": 1,
        "id": id,
        "functions": [{
            "name": "f",
            "manifest": MANIFEST,
            "module": {"sha256": sha256, "file": path(module)},
            "aliases": {"live": 100},
        }],
    });
    let mut text = doc.to_string();
    if !extra.is_empty() {
        text.pop();
        text = format!("{text}, {extra}}}");
    }
    let file = f.files.path().join(format!("{id}.json"));
    std::fs::write(&file, text).unwrap();
    path(&file)
}

/// Runs `grove deploy ARGS --config <the gateway's>`; returns (exit code, output).
fn deploy(f: &Fixture, args: &[&str]) -> (i32, String) {
    let config = path(&f.g.config_path());
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", &config]);
    grove_tests::grove(&all, f.files.path())
}

/// Applies `doc` and waits for its end; asserts it was committed.
fn committed(f: &Fixture, doc: &str) {
    let (code, out) = deploy(f, &["apply", doc]);
    assert_eq!(code, 0, "{out}\n{}", f.g.log());
    assert!(out.contains("committed"), "{out}");
}

/// What `f:live` answers `{"n":1}` with: the payload (the echo) or the exit code of the failure.
fn live(f: &Fixture) -> Result<String, i32> {
    let (code, out) = f.cli(&[
        "invoke",
        "f",
        "--qualifier",
        "live",
        "--payload",
        r#"{"n":1}"#,
    ]);
    if code == 0 {
        Ok(out.trim().to_owned())
    } else {
        Err(code)
    }
}

/// The version alias `live` of `f` points at (`grove fn list`).
fn live_version(f: &Fixture) -> u64 {
    let (code, out) = f.cli(&["list", "--json"]);
    assert_eq!(code, 0, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list[0]["aliases"]["live"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("{out}"))
}

#[test]
fn a_healthy_deployment_is_committed_and_serves() {
    let f = Fixture::start("");
    let echo = guest(ECHO, "");
    let doc = document(
        &f,
        "d1",
        &echo,
        &hex(&echo),
        r#""rules": [{"name": "fwd", "sql": "SELECT * FROM 'in/+'",
                      "actions": [{"republish": {"topic": "out/fwd"}}]}],
           "health": {"soak_s": 1}"#,
    );
    committed(&f, &doc);
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
    let (code, status) = deploy(&f, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("committed: d1"), "{status}");
    assert_eq!(f.metric(r#"grove_deploy_committed{deployment="d1"}"#), 1.0);
    assert_eq!(
        f.metric(r#"grove_deploy_last{deployment="d1",phase="committed"}"#),
        1.0
    );
    // The deployed rule runs: what comes in on in/+ goes out on out/fwd.
    let port = f.g.mqtt_port.to_string();
    let sub = MosquittoSub::start(&["-p", &port, "-t", "out/fwd", "-C", "1", "-W", "20"]);
    mosquitto_pub(f.g.mqtt_port, &["-q", "1", "-t", "in/a", "-m", "hello"]);
    let (messages, ok) = sub.finish();
    assert!(ok, "mosquitto_sub timed out: {messages:?}");
    assert_eq!(messages, ["hello"]);
    // The same id again is refused: ids are unique in the history.
    let (code, out) = deploy(&f, &["apply", &doc]);
    assert_eq!(code, 1);
    assert!(out.contains("already in the history"), "{out}");
}

/// Commits `d1` (the echo function behind `live`), then applies `d2` (a function that fails every
/// event, with a long soak) and returns once `d2` is soaking.
fn soaking_a_failing_d2_over_a_good_d1(f: &Fixture) {
    let echo = guest(ECHO, "");
    committed(
        f,
        &document(f, "d1", &echo, &hex(&echo), r#""health": {"soak_s": 0}"#),
    );
    let fail = guest(FAIL, "");
    let d2 = document(f, "d2", &fail, &hex(&fail), r#""health": {"soak_s": 600}"#);
    let (code, out) = deploy(f, &["apply", &d2, "--no-wait"]);
    assert_eq!(code, 0, "{out}");
    f.g.wait_metric(
        r#"grove_deploy_applying{deployment="d2",phase="soaking"}"#,
        |v| v == 1.0,
    );
}

#[test]
fn a_function_failing_its_soak_rolls_back_to_the_previous_deployment() {
    let f = Fixture::start("");
    soaking_a_failing_d2_over_a_good_d1(&f);
    // A device's event reaches the new version through `live`, which fails it.
    mosquitto_pub(f.g.mqtt_port, &["-q", "1", "-t", "sensors/s1", "-m", "{}"]);
    f.g.wait_metric(
        r#"grove_deploy_last{deployment="d2",phase="rolled_back"}"#,
        |v| v == 1.0,
    );
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
    let (_, status) = deploy(&f, &["status"]);
    assert!(status.contains("committed: d1"), "{status}");
    assert!(
        status.contains("last: d2 rolled_back")
            && status.contains("function errors rose by")
            && status.contains("during the soak"),
        "{status}"
    );
    let (_, history) = deploy(&f, &["history"]);
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("d2 rolled_back"), "{history}");
    assert_eq!(lines[1], "d1 committed", "{history}");
}

#[test]
fn a_bad_artifact_hash_is_refused() {
    let f = Fixture::start("");
    let echo = guest(ECHO, "");
    let wrong = hex(b"something else");
    let (code, out) = deploy(&f, &["apply", &document(&f, "d1", &echo, &wrong, "")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("d1 failed") && out.contains("artifact hash mismatch"),
        "{out}"
    );
    // Nothing was registered: the function does not exist.
    let (code, list) = f.cli(&["list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(list.trim(), "[]");
    assert_eq!(
        f.metric(r#"grove_deploy_results_total{result="failed"}"#),
        1.0,
        "{}",
        f.g.log()
    );
}

#[test]
fn a_document_with_an_error_is_refused_naming_the_field() {
    let f = Fixture::start("");
    let file = f.files.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"format": 1, "id": "d1", "rules": [{"sql": "SELECT"}]}"#,
    )
    .unwrap();
    let (code, out) = deploy(&f, &["apply", &path(&file)]);
    assert_eq!(code, 1);
    assert!(out.contains("rules[0].name"), "{out}");
}

#[test]
fn kill_9_during_the_soak_then_restart_ends_on_the_previous_deployment() {
    let mut f = Fixture::start("");
    soaking_a_failing_d2_over_a_good_d1(&f);
    // The switch is done: live points at the new version (version 2; not invoked, which would
    // fail it and end the soak before the kill).
    assert_eq!(live_version(&f), 2);
    f.g.kill_and_restart();
    f.g.wait_metric(
        r#"grove_deploy_last{deployment="d2",phase="rolled_back"}"#,
        |v| v == 1.0,
    );
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
    let (_, status) = deploy(&f, &["status"]);
    assert!(
        status.contains("committed: d1") && status.contains("restarted during the soaking step"),
        "{status}"
    );
}

/// Commits `d1` (the echo function behind `live`), then `d2` (a function that fails every event;
/// no soak, so nothing invokes it before the commit).
fn committed_d1_then_a_failing_d2(f: &Fixture) {
    let echo = guest(ECHO, "");
    committed(
        f,
        &document(f, "d1", &echo, &hex(&echo), r#""health": {"soak_s": 0}"#),
    );
    let fail = guest(FAIL, "");
    committed(
        f,
        &document(f, "d2", &fail, &hex(&fail), r#""health": {"soak_s": 0}"#),
    );
}

#[test]
fn kill_9_after_the_commit_then_restart_ends_on_the_new_deployment() {
    let mut f = Fixture::start("");
    committed_d1_then_a_failing_d2(&f);
    f.g.kill_and_restart();
    f.g.wait_metric(r#"grove_deploy_committed{deployment="d2"}"#, |v| v == 1.0);
    assert_eq!(live(&f), Err(1));
    let (_, status) = deploy(&f, &["status"]);
    assert!(status.contains("committed: d2"), "{status}");
    assert!(!status.contains("applying"), "{status}");
}

#[test]
fn rollback_reverts_the_committed_deployment_to_the_one_before() {
    let f = Fixture::start("");
    committed_d1_then_a_failing_d2(&f);
    let (code, out) = deploy(&f, &["rollback"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "reverting d2");
    f.g.wait_metric(r#"grove_deploy_committed{deployment="d1"}"#, |v| v == 1.0);
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
}

#[test]
fn rules_that_do_not_compile_or_need_a_missing_section_roll_back_and_the_rules_before_run() {
    let mut f = Fixture::start("");
    let write = |id: &str, rules: &str| {
        let file = f.files.path().join(format!("{id}.json"));
        let text = format!(
            r#"{{"format": 1, "id": "{id}", "health": {{"soak_s": 0}}, "rules": {rules}}}"#
        );
        std::fs::write(&file, text).unwrap();
        path(&file)
    };
    committed(
        &f,
        &write(
            "d1",
            r#"[{"name": "fwd", "sql": "SELECT * FROM 'in/+'",
                 "actions": [{"republish": {"topic": "out/fwd"}}]}]"#,
        ),
    );
    let cases = [
        (
            "d2",
            r#"[{"name": "bad", "sql": "SELECT FROM"}]"#,
            "staging failed: rule `bad`",
        ),
        (
            "d3",
            r#"[{"name": "up", "sql": "SELECT * FROM 'in/+'", "actions": [{"cloud": {"topic": "x"}}]}]"#,
            "rule `up` has a cloud action, but [cloud] is not configured",
        ),
    ];
    for (id, rules, why) in cases {
        let (code, out) = deploy(&f, &["apply", &write(id, rules)]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("{id} rolled_back")) && out.contains(why),
            "{out}"
        );
    }
    // d1's rule runs, and after a restart too (grove.toml has no rules: the committed
    // deployment's are the gateway's).
    for round in ["before", "after"] {
        let port = f.g.mqtt_port.to_string();
        let sub = MosquittoSub::start(&["-p", &port, "-t", "out/fwd", "-C", "1", "-W", "20"]);
        mosquitto_pub(f.g.mqtt_port, &["-q", "1", "-t", "in/a", "-m", round]);
        let (messages, ok) = sub.finish();
        assert!(ok, "mosquitto_sub timed out: {messages:?}");
        assert_eq!(messages, [round]);
        if round == "before" {
            f.g.restart();
        }
    }
}

#[test]
fn kill_9_while_fetching_then_restart_resumes_the_fetch_and_commits() {
    let mut f = Fixture::start("");
    let echo = guest(ECHO, "");
    committed(
        &f,
        &document(&f, "d1", &echo, &hex(&echo), r#""health": {"soak_s": 0}"#),
    );
    // The module is a named pipe: fetching it waits until the test writes it, so the deployment
    // is known to be in its fetching step when the gateway is killed.
    let fifo = f.files.path().join("d2.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let v2 = guest(ECHO, "v2");
    let d2 = document_at(&f, "d2", &fifo, &hex(&v2), r#""health": {"soak_s": 0}"#);
    let (code, out) = deploy(&f, &["apply", &d2, "--no-wait"]);
    assert_eq!(code, 0, "{out}");
    let fetching = r#"grove_deploy_applying{deployment="d2",phase="fetching"}"#;
    f.g.wait_metric(fetching, |v| v == 1.0);
    f.g.kill_and_restart();
    // It takes the fetch up again; meanwhile d1 serves.
    f.g.wait_metric(fetching, |v| v == 1.0);
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
    assert_eq!(live_version(&f), 1);
    // Opening the pipe for writing waits for the gateway's reader.
    std::fs::write(&fifo, &v2).unwrap();
    f.g.wait_metric(r#"grove_deploy_committed{deployment="d2"}"#, |v| v == 1.0);
    assert_eq!(live_version(&f), 2);
    let (_, history) = deploy(&f, &["history"]);
    assert!(history.starts_with("d2 committed\n"), "{history}");
}
