//! The rules engine in process (`grove-testkit`: a real store, a real broker bus, the real shadow
//! service where a test needs it; no binary). Where nothing but tokio's timers decide (a shadow
//! action's answer timeout), on tokio's paused clock, so the 10 s pass in virtual time.

use grove_rules_engine::engine::{Reload, RulesEngine, SHADOW_ANSWER};
use grove_rules_engine::metrics::RulesMetrics;
use grove_rules_engine::{RawAction, RawRule, RuleConfig};
use grove_shadow::config::RawShadow;
use grove_shadow::metrics::ShadowMetrics;
use grove_shadow::service::ShadowService;
use grove_testkit::{when, Harness, Peer};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A rule on `in/+` updating the shadow of the thing named by the topic's second level, with an
/// error action republishing on `errors`.
fn shadow_rule() -> RuleConfig {
    RawRule {
        name: "to-shadow".to_owned(),
        sql: "SELECT * FROM 'in/+'".to_owned(),
        enabled: true,
        actions: vec![RawAction::Shadow {
            thing: "${topic(2)}".to_owned(),
            name: None,
        }],
        error_action: Some(RawAction::Republish {
            topic: "errors".to_owned(),
            qos: 1,
            retain: false,
        }),
    }
    .compile()
    .expect("the rule compiles")
}

/// Starts the engine on `rules` as `grove run` does (no reload file, no functions component).
async fn start_engine(h: &Harness, rules: &[RuleConfig], metrics: &RulesMetrics) {
    let engine = RulesEngine::start(h.buses(), None, rules, metrics.clone(), None)
        .await
        .expect("the engine starts");
    let (_reloads, reloads_rx) = mpsc::channel::<Reload>(1);
    tokio::spawn(engine.run(reloads_rx, h.shutdown_signal()));
}

async fn next_json(peer: &mut Peer) -> Value {
    serde_json::from_slice(&peer.next().await.payload).expect("a JSON message")
}

fn failures(metrics: &RulesMetrics) -> u64 {
    metrics.counter(&metrics.action_failures, "to-shadow").get()
}

#[tokio::test(start_paused = true)]
async fn a_shadow_update_nobody_answers_fails_into_the_error_action_after_the_answer_timeout() {
    // No shadow service runs: the update is sent and never answered.
    let h = Harness::start().await;
    let metrics = RulesMetrics::default();
    start_engine(&h, &[shadow_rule()], &metrics).await;
    let mut errors = h.peer("test-errors", &["errors"]).await;
    let mut device = h.peer("test-device", &[]).await;

    let sent = Instant::now();
    device
        .publish("in/dev-1", r#"{"state":{"reported":{"t":1}}}"#)
        .await;
    let failed = when(|| failures(&metrics) >= 1).await;
    let error = next_json(&mut errors).await;

    assert_eq!(error["ruleName"], "to-shadow");
    assert_eq!(error["topic"], "in/dev-1");
    assert_eq!(error["failures"][0]["failedAction"], "IotShadowAction");
    assert_eq!(error["failures"][0]["failedResource"], "dev-1");
    assert_eq!(
        error["failures"][0]["errorMessage"],
        "the shadow service did not answer in time"
    );
    // No sooner than the timeout (virtual time: a lower bound is what it can show).
    assert!(failed - sent >= SHADOW_ANSWER, "{:?}", failed - sent);
    h.stop().await;
}

/// On the real clock: the shadow service answers after its store commit, on the store's thread,
/// and while a task waits for another thread a paused clock can jump past the answer's deadline.
#[tokio::test]
async fn the_shadow_services_rejection_goes_to_the_error_action_and_an_accepted_update_does_not() {
    let h = Harness::start().await;
    let r = grove_config::Resolver::new("", None);
    let config = grove_shadow::config::resolve(&r, RawShadow::default(), 128 * 1024)
        .expect("the built-in [shadow]");
    let shadow_bus = h.buses().bus("shadow").await.expect("a bus link");
    let service = ShadowService::new(shadow_bus, h.store(), &config, ShadowMetrics::default())
        .await
        .expect("the shadow service starts");
    tokio::spawn(service.run(h.shutdown_signal()));
    let metrics = RulesMetrics::default();
    start_engine(&h, &[shadow_rule()], &metrics).await;
    let mut errors = h.peer("test-errors", &["errors"]).await;
    let mut accepted = h
        .peer("test-accepted", &["$aws/things/+/shadow/update/accepted"])
        .await;
    let mut device = h.peer("test-device", &[]).await;

    device
        .publish("in/dev-1", r#"{"state":{"reported":{"t":1}}}"#)
        .await;
    let doc = next_json(&mut accepted).await;
    assert_eq!(doc["state"]["reported"]["t"], 1);
    // AWS's Device Shadow service: "Reported node must be an object" (400).
    device
        .publish("in/dev-1", r#"{"state":{"reported":5}}"#)
        .await;
    let error = next_json(&mut errors).await;

    assert_eq!(error["failures"][0]["failedResource"], "dev-1");
    assert_eq!(
        error["failures"][0]["errorMessage"],
        "the shadow service rejected the update: 400 Reported node must be an object"
    );
    // Only the rejected update failed.
    assert_eq!(failures(&metrics), 1);
    h.stop().await;
}
