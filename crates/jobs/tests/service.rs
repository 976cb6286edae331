//! The jobs service in process (`grove-testkit`: a real store and router) on tokio's paused clock:
//! minutes of timers and rollout pass in no time. The tests assert lower bounds in virtual time
//! (nothing happened sooner than the job allows), read from the service's own documents
//! (`startedAt`, `queuedAt`, `timestamp`: its clock follows tokio's), so a jump of the paused clock
//! while the test itself waits cannot blur them.

use grove_jobs::machine::{JobSpec, Targets};
use grove_jobs::metrics::JobsMetrics;
use grove_jobs::service::{JobsHandle, JobsService};
use grove_testkit::{Harness, Peer};
use serde_json::{json, Value};

async fn start(h: &Harness) -> JobsHandle {
    let bus = h.buses().bus("jobs").await.expect("a bus link");
    let (service, handle) =
        JobsService::new(bus, h.store(), JobsMetrics::default(), Box::new(Vec::new))
            .await
            .expect("the service starts");
    tokio::spawn(service.run(h.shutdown_signal()));
    handle
}

fn spec(id: &str, things: &[&str]) -> JobSpec {
    JobSpec {
        id: id.into(),
        document: json!({"operation": "reboot"}),
        targets: Targets::Things(things.iter().map(|t| (*t).to_owned()).collect()),
        rollout_per_minute: None,
        abort: None,
        timeout_minutes: None,
    }
}

/// The next message on `topic`, as JSON (others are skipped).
async fn next_on(peer: &mut Peer, topic: &str) -> Value {
    loop {
        let m = peer.next().await;
        if m.topic == topic {
            return serde_json::from_slice(&m.payload).expect("JSON");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_execution_in_progress_times_out_no_sooner_than_its_timeout() {
    let h = Harness::start().await;
    let jobs = start(&h).await;
    let mut device = h.peer("device", &["$aws/things/t1/jobs/#"]).await;
    let mut s = spec("fw", &["t1"]);
    s.timeout_minutes = Some(10);
    jobs.create(s).await.expect("created");
    let next = next_on(&mut device, "$aws/things/t1/jobs/notify-next").await;
    assert_eq!(next["execution"]["status"], "QUEUED");
    device
        .publish("$aws/things/t1/jobs/start-next", r#"{"clientToken":"s1"}"#)
        .await;
    let started = next_on(&mut device, "$aws/things/t1/jobs/start-next/accepted").await;
    assert_eq!(started["clientToken"], "s1");
    assert_eq!(started["execution"]["status"], "IN_PROGRESS");
    assert_eq!(
        started["execution"]["jobDocument"],
        json!({"operation": "reboot"})
    );
    // Timed out: nothing is next any more.
    let next = next_on(&mut device, "$aws/things/t1/jobs/notify-next").await;
    assert!(next.get("execution").is_none(), "{next}");
    let started_at = started["execution"]["startedAt"]
        .as_u64()
        .expect("startedAt");
    let timed_out_at = next["timestamp"].as_u64().expect("timestamp");
    assert!(
        timed_out_at >= started_at + 10 * 60,
        "timed out {} s after the start",
        timed_out_at - started_at
    );
    let job = jobs.describe("fw").await.unwrap().unwrap();
    assert_eq!(job.counts.get("TIMED_OUT"), Some(&1));
    assert_eq!(job.status, "COMPLETED");
    // The device's late report is refused with the state as it is.
    device
        .publish("$aws/things/t1/jobs/fw/update", r#"{"status":"SUCCEEDED"}"#)
        .await;
    let refused = next_on(&mut device, "$aws/things/t1/jobs/fw/update/rejected").await;
    assert_eq!(refused["code"], "InvalidStateTransition");
    assert_eq!(refused["executionState"]["status"], "TIMED_OUT");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_rollout_tells_no_more_things_per_minute_than_its_rate() {
    let h = Harness::start().await;
    let jobs = start(&h).await;
    let mut watcher = h.peer("watcher", &["$aws/things/+/jobs/notify-next"]).await;
    let mut s = spec("fw", &["t1", "t2", "t3", "t4", "t5"]);
    s.rollout_per_minute = Some(2);
    let info = jobs.create(s).await.expect("created");
    assert_eq!(info.counts.get("QUEUED"), Some(&2));
    assert_eq!(info.counts.get("WAITING"), Some(&3));
    let mut told = Vec::new();
    while told.len() < 5 {
        let m = watcher.next().await;
        let doc: Value = serde_json::from_slice(&m.payload).expect("JSON");
        let e = &doc["execution"];
        let queued_at = e["queuedAt"].as_u64().expect("queuedAt");
        told.push((
            e["thingName"].as_str().expect("thingName").to_owned(),
            queued_at,
        ));
    }
    let things: Vec<&str> = told.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(things, ["t1", "t2", "t3", "t4", "t5"], "in target order");
    // Two per minute: the third and fourth no sooner than a minute after the first two, the
    // fifth no sooner than two minutes.
    let first = told[0].1;
    for (i, (thing, queued_at)) in told.iter().enumerate() {
        let earliest = first + 60 * (i as u64 / 2);
        assert!(
            *queued_at >= earliest,
            "{thing} rolled out {} s after the first",
            queued_at - first
        );
    }
    let job = jobs.describe("fw").await.unwrap().unwrap();
    assert_eq!(job.counts.get("QUEUED"), Some(&5));
    h.stop().await;
}
