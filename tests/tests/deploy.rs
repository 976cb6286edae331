//! End-to-end tests of deployments (issue 19): the real `grove` binary, documents applied with
//! `grove deploy` or taken from AWS IoT Jobs, functions invoked with `grove fn`, events from
//! mosquitto_pub, and kill -9 at the steps of applying, each step known from the
//! `grove_deploy_*` metrics, the gateway's log or the artifact server.
//!
//! For jobs the cloud side is a mosquitto plus `grove_tests::AwsJobs`, a Jobs service written in
//! the harness from AWS's documentation of the Jobs MQTT API (not Grove's own Jobs client), and
//! the artifacts come from `grove_tests::Artifacts`, an HTTPS server on loopback with its own test
//! CA, by presigned-URL placeholders as AWS IoT Jobs hands them out (`grove_tests::jobs_cloud`).
//! The fleet test runs 100 gateways against one job with a rollout rate and an abort threshold.

use std::path::Path;

use serde_json::{json, Value};

use grove_tests::aws_jobs::{Abort, Rollout};
use grove_tests::functions::{guest, padded, path, Fixture, ECHO};
use grove_tests::jobs_cloud::{placeholder, sha256_hex as hex, JobsCloud as Cloud, THING};
use grove_tests::{grove, mosquitto_pub, MosquittoSub};

/// Fails every invocation (the payload as its error).
const FAIL: &str = "(drop (call $output (local.get $pp) (local.get $pl))) (i32.const 1)";

/// The manifest of `f`: triggered by `sensors/+`, events going to alias `live`.
const MANIFEST: &str = "name = \"f\"\ntriggers = [\"sensors/+\"]\ntrigger_qualifier = \"live\"\n";

/// Writes `wasm` as a file beside the test and a document deploying it as `f` (alias `live` at
/// 100%) with `extra` top-level keys; returns the document's path.
fn document(f: &Fixture, id: &str, wasm: &[u8], sha256: &str, extra: &str) -> String {
    let module = f.files.path().join(format!("{id}.wasm"));
    std::fs::write(&module, wasm).unwrap();
    document_at(f, id, &module, sha256, extra)
}

/// A document deploying the module at `module` as `f` (see [`document`]).
fn document_at(f: &Fixture, id: &str, module: &Path, sha256: &str, extra: &str) -> String {
    let text = deployment(id, json!({"sha256": sha256, "file": path(module)}), extra);
    let file = f.files.path().join(format!("{id}.json"));
    std::fs::write(&file, text).unwrap();
    path(&file)
}

/// A deployment document `id` deploying `module` (its `module` object) as `f`, alias `live` at
/// 100%, with `extra` top-level keys.
fn deployment(id: &str, module: Value, extra: &str) -> String {
    grove_tests::jobs_cloud::deployment(id, "f", MANIFEST, module, extra)
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

/// Waits until deployment `id` is soaking.
fn wait_soaking(f: &Fixture, id: &str) {
    f.g.wait_metric(
        &format!(r#"grove_deploy_applying{{deployment="{id}",phase="soaking"}}"#),
        |v| v == 1.0,
    );
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
    wait_soaking(f, "d2");
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

// ---------------------------------------------------------------------------------------------
// From the cloud: AWS IoT Jobs over the cloud link, artifacts by HTTPS.

/// Where the gateway keeps the partial download of `module`.
fn part_file(f: &Fixture, module: &[u8]) -> std::path::PathBuf {
    f.g.data_dir()
        .join("deploy")
        .join(format!("{}.part", hex(module)))
}

/// Waits until the gateway has written `n` bytes of `module`'s download.
fn wait_part(f: &Fixture, module: &[u8], n: u64) {
    let file = part_file(f, module);
    grove_tests::eventually(grove_tests::WAIT, || {
        let len = std::fs::metadata(&file).map_or(0, |m| m.len());
        (len >= n)
            .then_some(())
            .ok_or_else(|| format!("{} has {len} of {n} bytes", file.display()))
    });
}

/// A module of about `size` bytes that echoes.
fn large_echo(size: usize) -> Vec<u8> {
    padded(guest(ECHO, "large"), size)
}

/// Creates job j1 deploying d1: the echo function behind `live`, no soak.
async fn job_d1(c: &Cloud) {
    let echo = guest(ECHO, "");
    let d1 = deployment(
        "d1",
        c.module("d1.wasm", &echo),
        r#""health": {"soak_s": 0}"#,
    );
    c.job("j1", &d1).await;
}

/// Commits d1 (the echo function behind `live`) through job j1.
async fn committed_by_job(c: &Cloud, f: &Fixture) {
    job_d1(c).await;
    c.ended("j1", "SUCCEEDED");
    assert_eq!(live(f), Ok(r#"{"n":1}"#.to_owned()));
}

/// An MQTT round trip through the gateway (mosquitto's own clients): it serves devices.
fn serves_mqtt(f: &Fixture, payload: &str) {
    let port = f.g.mqtt_port.to_string();
    let sub = MosquittoSub::start(&["-p", &port, "-t", "probe/x", "-C", "1", "-W", "20"]);
    mosquitto_pub(f.g.mqtt_port, &["-q", "1", "-t", "probe/x", "-m", payload]);
    let (messages, ok) = sub.finish();
    assert!(ok && messages == [payload], "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deploys_a_function_fetched_by_https_resuming_a_cut_download_and_ends_succeeded() {
    let c = Cloud::start().await;
    let f = c.gateway(&[]);
    let module = large_echo(256 * 1024);
    let url = c.files.put_paused("f.wasm", module.clone(), 100_000);
    let d1 = deployment(
        "d1",
        placeholder(&url, &module),
        r#""health": {"soak_s": 1}"#,
    );
    c.job("j1", &d1).await;
    // The download stops after 100,000 bytes; once the gateway has them on disk the connection
    // is cut mid-body: the gateway goes on from there with a range request.
    wait_part(&f, &module, 100_000);
    grove_tests::eventually(grove_tests::WAIT, || {
        let e = c.jobs.execution("j1", THING);
        e.as_ref()
            .is_some_and(|e| e.history.iter().any(|(_, d)| d["step"] == "fetching"))
            .then_some(())
            .ok_or_else(|| format!("no fetching step reported: {e:?}"))
    });
    c.files.cut("f.wasm");
    let details = c.ended("j1", "SUCCEEDED");
    assert_eq!(details["deployment"], "d1");
    assert_eq!(details["step"], "committed");
    let fetches = c.files.fetches();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert_eq!((fetches[0].from, fetches[1].from), (None, Some(100_000)));
    assert!(
        fetches[0]
            .query
            .as_deref()
            .is_some_and(|q| q.contains("X-Amz-Signature=")),
        "the presigned URL, query and all: {fetches:?}"
    );
    // The steps went up as IN_PROGRESS with their names, then the end.
    let history = c.jobs.execution("j1", THING).unwrap().history;
    let steps: Vec<(&str, &str)> = history
        .iter()
        .map(|(status, d)| (status.name(), d["step"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        steps.first(),
        Some(&("IN_PROGRESS", "fetching")),
        "{steps:?}"
    );
    assert_eq!(steps.last(), Some(&("SUCCEEDED", "committed")), "{steps:?}");
    // The new version serves, the history is the one `grove deploy` shows, the part file is gone.
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
    let (_, history) = deploy(&f, &["history"]);
    assert!(history.starts_with("d1 committed (job j1)"), "{history}");
    assert!(!part_file(&f, &module).exists());
    f.g.wait_metric(
        r#"grove_deploy_job_reports_total{status="SUCCEEDED"}"#,
        |v| v == 1.0,
    );
    // `grove cloud status` shows the deployments and the job.
    let addr = f.g.mqtt_addr().to_string();
    grove_tests::eventually(grove_tests::WAIT, || {
        let (code, status) = grove(&["cloud", "status", "--mqtt", &addr], f.files.path());
        (code == 0
            && status.contains("deployment:    committed d1; last d1 committed")
            && status.contains("job:           none in progress; last j1 SUCCEEDED"))
        .then_some(())
        .ok_or(status)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_part_that_does_not_add_up_is_downloaded_again_whole() {
    let c = Cloud::start().await;
    let f = c.gateway(&[]);
    let echo = large_echo(64 * 1024);
    // What a power cut can leave: a part file whose bytes are not the artifact's.
    std::fs::write(part_file(&f, &echo), vec![0u8; 1000]).unwrap();
    let d1 = deployment(
        "d1",
        c.module("f.wasm", &echo),
        r#""health": {"soak_s": 0}"#,
    );
    c.job("j1", &d1).await;
    c.ended("j1", "SUCCEEDED");
    let from: Vec<Option<u64>> = c.files.fetches().iter().map(|r| r.from).collect();
    assert_eq!(from, [Some(1000), None]);
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_function_fails_its_soak_rolls_back_and_reports_failed_with_the_reason() {
    let c = Cloud::start().await;
    let f = failing_second_job(&c, &[], r#""health": {"soak_s": 600}"#).await;
    wait_soaking(&f, "d2");
    // A device's event reaches the new version through `live`, which fails it.
    mosquitto_pub(f.g.mqtt_port, &["-q", "1", "-t", "sensors/s1", "-m", "{}"]);
    let details = c.ended("j2", "FAILED");
    assert_eq!(details["step"], "rolled_back");
    let reason = details["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("function errors rose by") && reason.contains("during the soak"),
        "{details:?}"
    );
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
    let (_, status) = deploy(&f, &["status"]);
    assert!(status.contains("committed: d1"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_artifacts_fail_the_job_and_documents_that_are_not_deployments_are_rejected() {
    let c = Cloud::start().await;
    let f = c.gateway(&[]);
    let echo = guest(ECHO, "");
    // The hash named is not the bytes'.
    let mut wrong = c.module("a.wasm", &echo);
    wrong["sha256"] = json!(hex(b"something else"));
    c.job("j1", &deployment("d1", wrong, "")).await;
    let details = c.ended("j1", "FAILED");
    assert!(
        details["reason"]
            .as_str()
            .is_some_and(|r| r.contains("artifact hash mismatch")),
        "{details:?}"
    );
    // The server sends more than the document declares: refused, not read on.
    let mut short = c.module("b.wasm", &echo);
    short["size"] = json!(echo.len() - 1);
    c.job("j2", &deployment("d2", short, "")).await;
    let details = c.ended("j2", "FAILED");
    assert!(
        details["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("more than the {} bytes", echo.len() - 1))),
        "{details:?}"
    );
    // Not a deployment document; a deployment id already in the history.
    c.jobs
        .create_job("j3", &[THING], json!({"operation": "reboot"}))
        .await;
    let details = c.ended("j3", "REJECTED");
    assert!(
        details["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the deployment document is not valid")),
        "{details:?}"
    );
    c.job("j4", &deployment("d1", c.module("c.wasm", &echo), ""))
        .await;
    let details = c.ended("j4", "REJECTED");
    assert!(
        details["reason"]
            .as_str()
            .is_some_and(|r| r.contains("already in the history, from job j1")),
        "{details:?}"
    );
    // Nothing was deployed.
    let (code, list) = f.cli(&["list", "--json"]);
    assert_eq!((code, list.trim()), (0, "[]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_created_while_the_gateway_is_stopped_is_taken_when_it_starts() {
    let c = Cloud::start().await;
    // A clean session: nothing is queued for the gateway while it is away, so only its own
    // start-next on connecting can find the job.
    let mut f = Fixture::start(&c.toml("session_expiry_secs = 0"));
    c.jobs.wait_requests(THING, "start-next", 1);
    let (status, _) = f.g.stop_with("TERM");
    assert!(status.success());
    job_d1(&c).await;
    f.g.restart_stopped();
    c.ended("j1", "SUCCEEDED");
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
}

/// Commits d1 through a job, then creates job j2 deploying `module` with `extra`; returns the
/// gateway.
async fn second_job(c: &Cloud, env: &[(&str, &str)], module: Value, extra: &str) -> Fixture {
    let f = c.gateway(env);
    committed_by_job(c, &f).await;
    c.job("j2", &deployment("d2", module, extra)).await;
    f
}

/// [`second_job`] with a function that fails every event (it ends no soak by itself: nothing
/// invokes it).
async fn failing_second_job(c: &Cloud, env: &[(&str, &str)], extra: &str) -> Fixture {
    let fail = guest(FAIL, "");
    let module = c.module("v2.wasm", &fail);
    second_job(c, env, module, extra).await
}

/// After a kill -9 and a restart in d2's step: d2 rolled back, job j2 FAILED with the restart as
/// its reason, d1 serving, and devices served.
fn ends_on_d1(c: &Cloud, f: &mut Fixture, step: &str) {
    f.g.kill_and_restart();
    let details = c.ended("j2", "FAILED");
    assert!(
        details["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("restarted during the {step} step"))),
        "{details:?}"
    );
    assert_eq!(live(f), Ok(r#"{"n":1}"#.to_owned()));
    assert_eq!(live_version(f), 1);
    serves_mqtt(f, step);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_kill_9_while_fetching_then_restart_resumes_the_download_and_succeeds() {
    let c = Cloud::start().await;
    let module = large_echo(128 * 1024);
    let url = c.files.put_paused("v2.wasm", module.clone(), 50_000);
    let mut f = second_job(
        &c,
        &[],
        placeholder(&url, &module),
        r#""health": {"soak_s": 0}"#,
    )
    .await;
    wait_part(&f, &module, 50_000);
    f.g.kill_and_restart();
    // The fetch is taken up where the kept part ends; meanwhile d1 serves.
    let details = c.ended("j2", "SUCCEEDED");
    assert_eq!(details["deployment"], "d2");
    let fetches = c.files.fetches();
    assert_eq!(
        fetches.last().map(|r| r.from),
        Some(Some(50_000)),
        "{fetches:?}"
    );
    assert_eq!(live_version(&f), 2);
    serves_mqtt(&f, "fetching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_kill_9_at_the_end_of_staging_then_restart_ends_on_the_previous_deployment_and_fails() {
    let c = Cloud::start().await;
    let hold = [("GROVE_DEPLOY_TEST_HOLD", "d2:staging")];
    let mut f = failing_second_job(&c, &hold, r#""health": {"soak_s": 0}"#).await;
    // Version 2 is registered; the switch has not begun.
    f.g.wait_log(&["deployment held for a test", "staging"], 1);
    ends_on_d1(&c, &mut f, "staging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_kill_9_in_the_middle_of_the_switch_then_restart_ends_on_the_previous_deployment_and_fails(
) {
    let c = Cloud::start().await;
    let hold = [("GROVE_DEPLOY_TEST_HOLD", "d2:switching")];
    let extra = r#""health": {"soak_s": 0},
        "rules": [{"name": "fwd", "sql": "SELECT * FROM 'in/+'", "actions": [{"republish": {"topic": "out/fwd"}}]}]"#;
    let mut f = failing_second_job(&c, &hold, extra).await;
    // The aliases have moved to version 2; the rules have not.
    f.g.wait_log(&["deployment held for a test", "switching"], 1);
    assert_eq!(live_version(&f), 2);
    ends_on_d1(&c, &mut f, "switching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_kill_9_during_the_soak_then_restart_ends_on_the_previous_deployment_and_fails() {
    let c = Cloud::start().await;
    let mut f = failing_second_job(&c, &[], r#""health": {"soak_s": 600}"#).await;
    wait_soaking(&f, "d2");
    ends_on_d1(&c, &mut f, "soaking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_in_the_cloud_is_let_go_and_its_deployment_ends_by_itself() {
    let c = Cloud::start().await;
    let f = failing_second_job(&c, &[], r#""health": {"soak_s": 600}"#).await;
    wait_soaking(&f, "d2");
    c.jobs.cancel("j2", THING).await;
    // The operator ends the soak: the rollback's update carries the version the gateway knew,
    // the cancellation made a newer one, and the cloud's answer shows it CANCELED.
    let (code, out) = deploy(&f, &["rollback"]);
    assert_eq!((code, out.trim()), (0, "aborting d2"));
    f.g.wait_log(
        &[
            "job j2: no longer followed",
            "the cloud ended it as CANCELED",
        ],
        1,
    );
    f.g.wait_metric(
        r#"grove_deploy_last{deployment="d2",phase="rolled_back"}"#,
        |v| v == 1.0,
    );
    let e = c.jobs.execution("j2", THING).unwrap();
    assert_eq!(e.status.name(), "CANCELED", "{:?}", e.history);
    assert_eq!(live(&f), Ok(r#"{"n":1}"#.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_kill_9_right_after_the_commit_then_restart_ends_on_the_new_deployment_and_succeeds() {
    let c = Cloud::start().await;
    let mut f = failing_second_job(&c, &[], r#""health": {"soak_s": 0}"#).await;
    f.g.wait_metric(r#"grove_deploy_committed{deployment="d2"}"#, |v| v == 1.0);
    // Whether SUCCEEDED went up before the kill or goes up after the restart (start-next hands
    // the job over again), the job ends SUCCEEDED and d2 runs.
    f.g.kill_and_restart();
    let details = c.ended("j2", "SUCCEEDED");
    assert_eq!(details["step"], "committed");
    f.g.wait_metric(r#"grove_deploy_committed{deployment="d2"}"#, |v| v == 1.0);
    assert_eq!(live(&f), Err(1));
    serves_mqtt(&f, "committed");
}

/// Gateways in the fleet test.
const FLEET: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_gateways_take_a_bad_job_at_its_rollout_rate_until_it_trips_the_abort_threshold()
{
    let c = Cloud::start().await;
    let things: Vec<String> = (0..FLEET).map(|i| format!("gw-{i:03}")).collect();
    let configs: Vec<String> = things.iter().map(|t| c.toml_for(t, "")).collect();
    // Processes on loopback, started ten at a time (each start waits for its ports).
    let fleet: Vec<Fixture> = grove_tests::blocking(|| {
        std::thread::scope(|s| {
            let starting: Vec<_> = configs
                .chunks(FLEET / 10)
                .map(|chunk| {
                    s.spawn(move || chunk.iter().map(|c| Fixture::start(c)).collect::<Vec<_>>())
                })
                .collect();
            starting
                .into_iter()
                .flat_map(|t| t.join().expect("a starting thread"))
                .collect()
        })
    });
    for thing in &things {
        c.jobs.wait_requests(thing, "start-next", 1);
    }
    // A bad deployment: its module's hash is not the one named. Two things a second, cancelled
    // once half of at least ten notified things have failed.
    let echo = guest(ECHO, "");
    let mut module = c.module("bad.wasm", &echo);
    module["sha256"] = json!(hex(b"something else"));
    let targets: Vec<&str> = things.iter().map(String::as_str).collect();
    let rollout = Rollout {
        per_minute: Some(120),
        abort: Some(Abort {
            threshold_percentage: 50.0,
            min_executed_things: 10,
        }),
    };
    let doc: Value = serde_json::from_str(&deployment("bad", module, "")).unwrap();
    c.jobs.create_job_with("bad", &targets, doc, rollout).await;
    grove_tests::eventually(grove_tests::WAIT * 3, || {
        c.jobs.aborted("bad").then_some(()).ok_or_else(|| {
            format!(
                "not aborted: {} notified, {} failed",
                c.jobs.notified("bad"),
                c.jobs.count("bad", "FAILED")
            )
        })
    });
    // Every notified gateway ends: FAILED with the reason (in progress at the abort), or
    // CANCELED while still queued; the others were never notified and never applied anything.
    let notified = c.jobs.notified("bad");
    assert!((10..FLEET).contains(&notified), "{notified} notified");
    let ended = grove_tests::eventually(grove_tests::WAIT, || {
        let (failed, canceled) = (
            c.jobs.count("bad", "FAILED"),
            c.jobs.count("bad", "CANCELED"),
        );
        (failed + canceled == notified)
            .then_some(failed)
            .ok_or_else(|| format!("{failed} failed, {canceled} cancelled of {notified}"))
    });
    assert!(
        ended >= 5,
        "{ended} failed: at least half of ten when it was aborted"
    );
    for (thing, f) in things.iter().zip(&fleet) {
        let e = c.jobs.execution("bad", thing);
        match e.as_ref().map(|e| e.status.name()) {
            Some("FAILED") => {
                let reason = e.unwrap().status_details["reason"].clone();
                assert!(
                    reason
                        .as_str()
                        .is_some_and(|r| r.contains("artifact hash mismatch")),
                    "{thing}: {reason}"
                );
            }
            Some("CANCELED") => {}
            None => assert_eq!(
                f.metric(r#"grove_deploy_results_total{result="failed"}"#),
                0.0,
                "{thing} was never notified"
            ),
            other => panic!("{thing}: {other:?}"),
        }
    }
    // Devices are served throughout: the first gateway (notified) and the last (never).
    serves_mqtt(&fleet[0], "first");
    serves_mqtt(&fleet[FLEET - 1], "last");
}
