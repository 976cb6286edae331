//! Local jobs end to end: the real `grove` binary serving the AWS IoT Jobs device API to devices
//! that Grove did not write (`aws_jobs_device.py`, Eclipse paho-mqtt following AWS's Jobs topics),
//! observed with mosquitto's own `mosquitto_sub`, and driven by `grove jobs`.

use std::path::PathBuf;

use grove_tests::{Devices, Gateway, JobsDevice, MosquittoSub};
use serde_json::Value;

/// A job document on disk, as an operator writes one.
fn document(g: &Gateway) -> PathBuf {
    let path = g.dir.path().join("fw.json");
    std::fs::write(
        &path,
        r#"{"operation":"firmware-update","version":"2.1.0","url":"file:///opt/fw/2.1.0.bin"}"#,
    )
    .expect("write the document");
    path
}

/// `grove jobs create` with `args` after the document; checks it succeeded.
fn create(g: &Gateway, args: &[&str]) -> String {
    let doc = document(g);
    let mut all = vec!["create", "--document", doc.to_str().expect("UTF-8")];
    all.extend_from_slice(args);
    let (code, out) = g.jobs(&all);
    assert_eq!(code, 0, "grove jobs create {args:?}: {out}");
    out
}

fn count(job: &Value, status: &str) -> u64 {
    job["counts"][status].as_u64().unwrap_or(0)
}

#[test]
fn three_devices_run_a_job_to_success_and_describe_counts_them() {
    let g = Gateway::start("");
    let port = g.mqtt_port.to_string();
    // mosquitto's own client watches every thing's notify-next: 3 announcements of the job, then
    // 3 of "nothing next" once each device has finished.
    let watch = MosquittoSub::start(&[
        "-p",
        &port,
        "-t",
        "$aws/things/+/jobs/notify-next",
        "-v",
        "-C",
        "6",
        "-W",
        "60",
    ]);
    let things = ["pump-1", "pump-2", "pump-3"];
    let devices: Vec<JobsDevice> = things
        .iter()
        .map(|t| JobsDevice::start(g.mqtt_port, t, &[]))
        .collect();
    for d in &devices {
        d.wait_line("READY");
    }
    let out = create(&g, &["--id", "fw-210", "--targets", "pump-1,pump-2,pump-3"]);
    assert!(out.contains("fw-210 created: QUEUED 3"), "{out}");
    for (thing, d) in things.iter().zip(&devices) {
        d.wait_line("DONE fw-210 SUCCEEDED");
        let next = d.received(&format!("$aws/things/{thing}/jobs/notify-next"));
        let announced = &next[0]["execution"];
        assert_eq!(announced["jobId"], "fw-210");
        assert_eq!(announced["status"], "QUEUED");
        assert_eq!(announced["jobDocument"]["version"], "2.1.0");
        assert_eq!(announced["versionNumber"], 1);
        assert_eq!(announced["executionNumber"], 1);
    }
    let (code, text) = g.jobs(&["describe", "fw-210"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("job fw-210: COMPLETED"), "{text}");
    assert!(text.contains("SUCCEEDED: 3"), "{text}");
    let job = g.job("fw-210");
    for e in job["executions"].as_array().expect("executions") {
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        assert_eq!(e["status_details"]["step"], "succeeded", "{e}");
        assert_eq!(
            e["version"], 4,
            "queued 1, started 2, IN_PROGRESS 3, SUCCEEDED 4: {e}"
        );
    }
    let (seen, ok) = watch.finish();
    assert!(ok, "mosquitto_sub saw {seen:?}");
    for thing in things {
        let topic = format!("$aws/things/{thing}/jobs/notify-next ");
        let mine: Vec<Value> = seen
            .iter()
            .filter_map(|l| l.strip_prefix(&topic))
            .map(|p| serde_json::from_str(p).expect("JSON"))
            .collect();
        assert_eq!(mine.len(), 2, "{thing}: {seen:?}");
        assert_eq!(mine[0]["execution"]["jobId"], "fw-210");
        assert!(mine[1].get("execution").is_none(), "{thing}: {}", mine[1]);
        assert!(mine[1]["timestamp"].as_u64().is_some());
    }
    assert_eq!(
        g.metric("grove_jobs_requests_total{op=\"update\",code=\"accepted\"}"),
        6.0
    );
}

#[test]
fn an_abort_threshold_cancels_the_rest_of_the_job_after_failures() {
    let g = Gateway::start("");
    let failing: Vec<JobsDevice> = ["v-1", "v-2"]
        .iter()
        .map(|t| JobsDevice::start(g.mqtt_port, t, &["--outcome", "FAILED"]))
        .collect();
    for d in &failing {
        d.wait_line("READY");
    }
    create(
        &g,
        &[
            "--id",
            "bad-fw",
            "--targets",
            "v-1,v-2,v-3,v-4",
            "--abort-threshold",
            "50",
            "--abort-min",
            "2",
        ],
    );
    for d in &failing {
        d.wait_line("DONE bad-fw FAILED");
    }
    g.wait_metric("grove_jobs_aborted_total", |v| v == 1.0);
    let job = g.job("bad-fw");
    assert_eq!(job["status"], "CANCELED");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("2 of 2 ended executions failed"),
        "{job}"
    );
    assert_eq!(
        (count(&job, "FAILED"), count(&job, "CANCELED")),
        (2, 2),
        "{job}"
    );
    // A device that comes online now finds nothing to do.
    let late = JobsDevice::start(g.mqtt_port, "v-3", &["--timeout", "30"]);
    late.wait_line("READY");
    let pending = eventually_one(&late, "$aws/things/v-3/jobs/get/accepted");
    assert_eq!(pending["queuedJobs"], Value::Array(vec![]), "{pending}");
    assert_eq!(pending["clientToken"], "v-3-get");
}

fn eventually_one(d: &JobsDevice, topic: &str) -> Value {
    grove_tests::eventually(grove_tests::WAIT, || {
        d.received(topic)
            .into_iter()
            .next()
            .ok_or_else(|| format!("nothing on {topic}: {:#?}", d.lines()))
    })
}

#[test]
fn a_device_offline_at_creation_gets_the_job_on_connect_and_a_stale_update_is_refused() {
    let g = Gateway::start("");
    create(&g, &["--id", "cfg-7", "--targets", "late-1"]);
    // The device was not connected when the job was created: its `get` on connect finds it.
    let d = JobsDevice::start(g.mqtt_port, "late-1", &["--stale-update"]);
    d.wait_line("DONE cfg-7 SUCCEEDED");
    let pending = eventually_one(&d, "$aws/things/late-1/jobs/get/accepted");
    assert_eq!(pending["queuedJobs"][0]["jobId"], "cfg-7", "{pending}");
    // The update that carried an outdated expectedVersion was refused, with the state as it is.
    let refused = d.received("$aws/things/late-1/jobs/cfg-7/update/rejected");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["code"], "VersionMismatch");
    assert_eq!(refused[0]["clientToken"], "late-1-stale");
    assert_eq!(refused[0]["executionState"]["status"], "IN_PROGRESS");
    assert_eq!(refused[0]["executionState"]["versionNumber"], 2);
    assert_eq!(count(&g.job("cfg-7"), "SUCCEEDED"), 1);
    assert_eq!(
        g.metric("grove_jobs_requests_total{op=\"update\",code=\"VersionMismatch\"}"),
        1.0
    );
}

#[test]
fn a_device_cannot_subscribe_to_another_things_jobs_topics() {
    let devices = Devices::with_ca("");
    for id in ["cam-1", "cam-2"] {
        devices.run(&["add", id, "--password-stdin"], Some("pw-of-a-camera\n"));
    }
    let site = devices.start_site("");
    // cam-1 on the password listener (the built-in `device` policy): its own notify-next is
    // granted, cam-2's topics are refused (SUBACK 0x80 for each).
    let spy = JobsDevice::start(
        site.password_port,
        "cam-1",
        &["--password", "pw-of-a-camera", "--spy", "cam-2"],
    );
    assert_eq!(spy.wait_line("SUBACK"), "SUBACK 128 128 1");
    // The same policy lets cam-2 run its own job: requests, answers and notifications.
    create(&site.gateway, &["--id", "snap", "--targets", "cam-2"]);
    let cam2 = JobsDevice::start(
        site.password_port,
        "cam-2",
        &["--password", "pw-of-a-camera"],
    );
    cam2.wait_line("DONE snap SUCCEEDED");
    assert!(spy.wait().success());
}

#[test]
fn jobs_survive_a_kill_between_an_update_and_describe() {
    let mut g = Gateway::start("");
    create(
        &g,
        &[
            "--id",
            "ota",
            "--targets",
            "s-1,s-2",
            "--timeout-minutes",
            "30",
        ],
    );
    let done = JobsDevice::start(g.mqtt_port, "s-1", &[]);
    done.wait_line("DONE ota SUCCEEDED");
    // s-2 reports IN_PROGRESS and loses power.
    let cut = JobsDevice::start(g.mqtt_port, "s-2", &["--stop-after-in-progress"]);
    cut.wait_line("STOPPED ota IN_PROGRESS 3");
    g.kill_and_restart();
    let job = g.job("ota");
    assert_eq!(job["status"], "IN_PROGRESS");
    assert_eq!(
        (count(&job, "SUCCEEDED"), count(&job, "IN_PROGRESS")),
        (1, 1),
        "{job}"
    );
    let s2 = &job["executions"][1];
    assert_eq!(
        (s2["thing"].as_str(), s2["version"].as_u64()),
        (Some("s-2"), Some(3))
    );
    // After the restart s-2 finds its execution in progress and finishes it.
    let resumed = JobsDevice::start(g.mqtt_port, "s-2", &[]);
    resumed.wait_line("DONE ota SUCCEEDED");
    let pending = eventually_one(&resumed, "$aws/things/s-2/jobs/get/accepted");
    assert_eq!(pending["inProgressJobs"][0]["jobId"], "ota", "{pending}");
    let job = g.job("ota");
    assert_eq!(
        (job["status"].as_str(), count(&job, "SUCCEEDED")),
        (Some("COMPLETED"), 2)
    );
}

#[test]
fn a_pattern_job_reaches_a_matching_thing_the_gateway_had_never_seen() {
    let g = Gateway::start("");
    let out = create(&g, &["--id", "cal", "--thing-pattern", "sensor-*"]);
    assert!(out.contains("cal created: no executions"), "{out}");
    let sensor = JobsDevice::start(g.mqtt_port, "sensor-9", &[]);
    sensor.wait_line("DONE cal SUCCEEDED");
    // A thing that does not match asks too and finds nothing.
    let pump = JobsDevice::start(g.mqtt_port, "pump-9", &["--timeout", "30"]);
    let pending = eventually_one(&pump, "$aws/things/pump-9/jobs/get/accepted");
    assert_eq!(pending["queuedJobs"], Value::Array(vec![]), "{pending}");
    let job = g.job("cal");
    assert_eq!(job["status"], "IN_PROGRESS", "a pattern job goes on: {job}");
    assert_eq!(count(&job, "SUCCEEDED"), 1, "{job}");
    assert_eq!(job["executions"].as_array().map(Vec::len), Some(1), "{job}");
}

#[test]
fn grove_jobs_refuses_bad_input_with_the_reason() {
    let g = Gateway::start("");
    create(&g, &["--id", "one", "--targets", "a"]);
    let doc = document(&g);
    let doc = doc.to_str().expect("UTF-8");
    // One case per line: the arguments after `create --document FILE` and the reason printed.
    for (args, reason) in [
        (
            &["--id", "one", "--targets", "b"][..],
            "a job `one` exists already",
        ),
        (&["--id", "two", "--targets", "a/b"], "target \"a/b\""),
        (&["--id", "bad id", "--targets", "a"], "job id \"bad id\""),
        (&["--id", "two", "--thing-pattern", "x["], "thing pattern"),
        (
            &["--id", "two", "--targets", "a", "--rollout-per-minute", "0"],
            "rollout per minute 0",
        ),
        (
            &[
                "--id",
                "two",
                "--targets",
                "a",
                "--timeout-minutes",
                "20000",
            ],
            "timeout 20000 minutes",
        ),
    ] {
        let mut all = vec!["create", "--document", doc];
        all.extend_from_slice(args);
        let (code, out) = g.jobs(&all);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(reason), "{args:?}: {out}");
    }
    let not_json = g.dir.path().join("not.json");
    std::fs::write(&not_json, "firmware please").unwrap();
    let (code, out) = g.jobs(&[
        "create",
        "--document",
        not_json.to_str().unwrap(),
        "--targets",
        "a",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is not JSON"), "{out}");
    let (code, out) = g.jobs(&["describe", "nope"]);
    assert_eq!((code, out.contains("no job `nope`")), (1, true), "{out}");
    let (code, out) = g.jobs(&["cancel", "one"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = g.jobs(&["cancel", "one"]);
    assert_eq!(
        (code, out.contains("is CANCELED already")),
        (1, true),
        "{out}"
    );
    let (_, list) = g.jobs(&["list"]);
    assert!(list.contains("one CANCELED: CANCELED 1"), "{list}");
}
