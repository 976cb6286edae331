//! Benchmarks of the gateway's own services, driven over MQTT like devices drive them:
//!
//! - `grove-bench shadow`: acknowledged durable shadow updates per second (publish to
//!   `update/accepted`, `synchronous=FULL`) for one hot thing, for 1,000 things, and the latency at
//!   a fixed 1,000 updates/s.
//! - `grove-bench rules`: a device publishes, a rule republishes; messages/s and latency from the
//!   device's publish to the republished message at 10,000 msg/s, against the same load published
//!   straight to the subscriber (no rule) in the same gateway, for the ratio.
//! - `grove-bench rules-startup`: the gateway started on 0, 1, 1,000 and 10,000 rules: time from
//!   spawn to the first CONNACK (the listeners open after the rules run) and resident memory, per
//!   rule against the gateway without rules.
//!
//! There is no peer for these (mosquitto has no shadows or rules); the baseline is the gateway's
//! own plain pub/sub path.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{Event, Packet, QoS};
use tokio::sync::Semaphore;

use crate::flow::{self, event_loop, options, Encoding, Publishers, Subscriber};
use crate::load::{Pace, Stop};
use crate::peer::{PeerKind, PeerSpec, RunningPeer};
use crate::stats::{LatencyRecorder, LatencySummary};

/// One measured shadow or rules scenario.
#[derive(Debug, serde::Serialize)]
pub struct GatewayResult {
    /// What was measured.
    pub scenario: String,
    /// Requests or messages completed per second.
    pub per_second: f64,
    /// Completed in the measured window.
    pub completed: u64,
    /// Refused (shadow 429s / rejections).
    pub rejected: u64,
    /// Latency from publish to answer or republished message.
    pub latency: LatencySummary,
    /// Gateway resident memory after the scenario (KiB).
    pub rss_kib: Option<u64>,
}

/// Starts the gateway with extra TOML.
pub fn start(grove: &Path, extra: &[&str]) -> anyhow::Result<RunningPeer> {
    let spec = PeerSpec {
        kind: PeerKind::Grove,
        binary: grove.to_owned(),
        extra_config: extra.iter().map(|s| s.to_string()).collect(),
    };
    spec.start().context("starting grove")
}

/// A shadow client: `window` updates in flight at most (AWS allows 10 per connection), each
/// measured from publish to its `update/accepted` (matched by client token).
async fn shadow_client(
    port: u16,
    id: usize,
    things: Vec<String>,
    window: usize,
    rate: Option<f64>,
    until: Instant,
    warmup: Instant,
) -> anyhow::Result<(LatencyRecorder, u64, u64)> {
    let (client, mut events) = event_loop(options(&format!("shadow-bench-{id}"), port));
    for t in &things {
        client
            .subscribe(
                format!("$aws/things/{t}/shadow/update/accepted"),
                QoS::AtMostOnce,
            )
            .await?;
        client
            .subscribe(
                format!("$aws/things/{t}/shadow/update/rejected"),
                QoS::AtMostOnce,
            )
            .await?;
    }
    let slots = Arc::new(Semaphore::new(window));
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let counter = Arc::new(AtomicU64::new(0));
    let (mut latency, mut ok, mut rejected) = (LatencyRecorder::new(), 0u64, 0u64);
    // Wait for the SUBACKs before sending.
    let mut subacks = 0;
    while subacks < things.len() * 2 {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            subacks += 1;
        }
    }
    let sender = {
        let (client, slots, sent, counter) =
            (client.clone(), slots.clone(), sent.clone(), counter.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let start = Instant::now();
            while Instant::now() < until {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                permit.forget();
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let thing = &things[(n as usize) % things.len()];
                let token = format!("{id}-{n}");
                let body = format!(
                    "{{\"state\":{{\"reported\":{{\"c{id}\":{n}}}}},\"clientToken\":\"{token}\"}}"
                );
                sent.lock().unwrap().insert(token, Instant::now());
                if client
                    .publish(
                        format!("$aws/things/{thing}/shadow/update"),
                        QoS::AtMostOnce,
                        false,
                        body,
                    )
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let drain_until = until + Duration::from_secs(2);
    while Instant::now() < drain_until {
        let ev = match tokio::time::timeout_at(drain_until.into(), events.poll()).await {
            Ok(ev) => ev?,
            Err(_) => break,
        };
        if let Event::Incoming(Packet::Publish(p)) = ev {
            let doc: serde_json::Value = match serde_json::from_slice(&p.payload) {
                Ok(d) => d,
                Err(_) => continue,
            };
            let Some(token) = doc["clientToken"].as_str() else {
                continue;
            };
            let Some(at) = sent.lock().unwrap().remove(token) else {
                continue;
            };
            slots.add_permits(1);
            let now = Instant::now();
            if p.topic.ends_with("/accepted") {
                if at >= warmup && now <= until {
                    latency.record(now - at);
                    ok += 1;
                }
            } else {
                rejected += 1;
            }
        }
        if sender.is_finished() && sent.lock().unwrap().is_empty() {
            break;
        }
    }
    sender.abort();
    let _ = client.disconnect().await;
    Ok((latency, ok, rejected))
}

/// Runs the shadow scenarios against a fresh gateway each.
pub async fn shadow(
    grove: &Path,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<Vec<GatewayResult>> {
    let scenarios: Vec<(&str, usize, usize, Option<f64>)> = vec![
        // (name, clients, things per client, rate per client)
        (
            "1 thing, 50 clients, 10 in flight each, flat out",
            50,
            0,
            None,
        ),
        (
            "1,000 things, 50 clients (20 each), 10 in flight each, flat out",
            50,
            20,
            None,
        ),
        ("1 client, 1 thing, 10 in flight, flat out", 1, 1, None),
        (
            "1 thing, 5 clients, 10 in flight each, flat out",
            5,
            0,
            None,
        ),
        (
            "1,000 updates/s: 10 clients x 100/s over 1,000 things",
            10,
            100,
            Some(100.0),
        ),
    ];
    let mut results = Vec::new();
    for (name, clients, per_client, rate) in scenarios {
        let peer = start(grove, extra)?;
        let port = peer.port();
        let warmup = Instant::now() + Duration::from_secs(1);
        let until = warmup + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let things: Vec<String> = if per_client == 0 {
                vec!["hot-thing".to_owned()]
            } else {
                (0..per_client).map(|k| format!("t{c}x{k}")).collect()
            };
            tasks.push(tokio::spawn(shadow_client(
                port, c, things, 10, rate, until, warmup,
            )));
        }
        let mut latency = LatencyRecorder::new();
        let (mut ok, mut rejected) = (0, 0);
        for t in tasks {
            let (l, o, r) = t.await??;
            latency.merge(&l);
            ok += o;
            rejected += r;
        }
        let rss_kib = peer.memory().ok().map(|m| m.rss_kb);
        results.push(GatewayResult {
            scenario: name.to_owned(),
            per_second: ok as f64 / seconds as f64,
            completed: ok,
            rejected,
            latency: latency.summary(),
            rss_kib,
        });
        peer.stop()?;
    }
    Ok(results)
}

/// The rule the rules benchmark runs: AWS's typical example.
const RULE: &str = r#"[[rules]]
name = "bench"
sql = "SELECT temperature, publisher, seq, sent_ns, topic(2) AS id FROM 'sensors/+/t' WHERE temperature > 30"
actions = [{ republish = { topic = "alerts/${topic(2)}" } }]
"#;

/// Runs the rules scenarios: through a rule vs published straight to the subscriber.
pub async fn rules(
    grove: &Path,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<Vec<GatewayResult>> {
    let mut results = Vec::new();
    // A flat-out variant is not measured here: with QoS 0 and no flow control, publishers that
    // outrun the subscriber only measure how far behind it falls (see the broker benchmark).
    for (name, rate) in [("10,000 msg/s (10 publishers x 1,000/s)", 1000)] {
        for (path, via_rule) in [
            ("through the rule", true),
            ("plain pub/sub (baseline)", false),
        ] {
            let config: Vec<&str> = std::iter::once(RULE).chain(extra.iter().copied()).collect();
            let peer = start(grove, &config)?;
            let r = rule_load(peer.port(), via_rule, rate, seconds).await?;
            let rss_kib = peer.memory().ok().map(|m| m.rss_kb);
            results.push(GatewayResult {
                scenario: format!("{name}, {path}"),
                rss_kib,
                ..r
            });
            peer.stop()?;
        }
    }
    Ok(results)
}

async fn rule_load(
    port: u16,
    via_rule: bool,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<GatewayResult> {
    let publishers = Publishers {
        port,
        topics: (0..10).map(|p| format!("sensors/d{p}/t")).collect(),
        qos: QoS::AtMostOnce,
        pace: Pace::PerSecond(rate),
        stop: Stop::Duration(Duration::from_secs(seconds + 1)),
        encoding: Encoding::Json,
        id: "rules-bench".to_owned(),
    };
    let subscriber = Subscriber {
        port,
        filters: vec![if via_rule { "alerts/#" } else { "sensors/#" }.to_owned()],
        dead_letters: None,
        encoding: Encoding::Json,
        batch_topic: None,
    };
    let o = flow::run(&publishers, &subscriber, seconds).await?;
    Ok(GatewayResult {
        scenario: String::new(),
        per_second: o.per_second,
        completed: o.completed,
        rejected: 0,
        latency: o.latency,
        rss_kib: None,
    })
}

/// The gateway started on one number of rules.
#[derive(Debug, serde::Serialize)]
pub struct StartupResult {
    /// How many rules.
    pub rules: usize,
    /// Spawn to first CONNACK of each start (ms), in order.
    pub startup_ms: Vec<f64>,
    /// Resident memory right after each start's CONNACK (KiB).
    pub rss_kib: Vec<u64>,
}

impl StartupResult {
    fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.get(v.len() / 2).copied()
    }
}

/// `n` rules like the rules benchmark's (a WHERE and a republish), each on a topic of its own, as
/// one TOML snippet.
fn rule_set(n: usize) -> String {
    let mut toml = String::new();
    for i in 0..n {
        toml.push_str(&format!(
            "[[rules]]\nname = \"rule-{i}\"\n\
             sql = \"SELECT temperature, topic(2) AS id FROM 'sensors/{i}/t' WHERE temperature > 30\"\n\
             actions = [{{ republish = {{ topic = \"alerts/{i}/${{topic(2)}}\" }} }}]\n"
        ));
    }
    toml
}

/// Starts the gateway `runs` times on each number of rules in `counts`.
pub fn rules_startup(
    grove: &Path,
    counts: &[usize],
    runs: u32,
    extra: &[&str],
) -> anyhow::Result<Vec<StartupResult>> {
    let mut results = Vec::new();
    for &n in counts {
        let rules = rule_set(n);
        let config: Vec<&str> = std::iter::once(rules.as_str())
            .filter(|r| !r.is_empty())
            .chain(extra.iter().copied())
            .collect();
        let mut result = StartupResult {
            rules: n,
            startup_ms: Vec::new(),
            rss_kib: Vec::new(),
        };
        for _ in 0..runs {
            let peer = start(grove, &config)?;
            result.startup_ms.push(peer.startup().as_secs_f64() * 1e3);
            result.rss_kib.push(peer.memory()?.rss_kb);
            peer.stop()?;
        }
        eprintln!(
            "{n} rules: {:?} ms, {:?} KiB",
            result.startup_ms, result.rss_kib
        );
        results.push(result);
    }
    Ok(results)
}

/// The startup table: the median start and RSS per number of rules, and per rule against the
/// gateway started with the fewest rules (the first row, 0 by default).
pub fn startup_markdown(results: &[StartupResult]) -> String {
    let mut out = String::from(
        "| rules | spawn -> first CONNACK, median (all) | RSS after start, median | RSS per rule (vs first row) |\n|---:|---:|---:|---:|\n",
    );
    let base = results
        .first()
        .and_then(|r| StartupResult::median(&r.rss_kib));
    for r in results {
        let rss = StartupResult::median(&r.rss_kib);
        let per_rule = match (rss, base, results.first()) {
            (Some(rss), Some(base), Some(first)) if r.rules > first.rules => format!(
                "{:.2} KiB ({:.0} B)",
                (rss as f64 - base as f64) / (r.rules - first.rules) as f64,
                (rss as f64 - base as f64) * 1024.0 / (r.rules - first.rules) as f64
            ),
            _ => "-".to_owned(),
        };
        let all: Vec<String> = r.startup_ms.iter().map(|ms| format!("{ms:.0}")).collect();
        out.push_str(&format!(
            "| {} | {:.0} ms ({}) | {} | {} |\n",
            r.rules,
            StartupResult::median(&r.startup_ms).unwrap_or(0.0),
            all.join(", "),
            flow::mib(rss),
            per_rule,
        ));
    }
    out
}

/// A Markdown table of results.
pub fn markdown(results: &[GatewayResult]) -> String {
    let mut out = String::from("| scenario | per second | completed | rejected | p50 | p99 | p999 | max | gateway RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let l = &r.latency;
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.per_second,
            r.completed,
            r.rejected,
            flow::ms(l.p50_us),
            flow::ms(l.p99_us),
            flow::ms(l.p999_us),
            flow::ms(l.max_us),
            flow::mib(r.rss_kib),
        ));
    }
    out
}
