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

use crate::flow::{self, event_loop, options, Cost, Encoding, FlowRow, Publishers, Subscriber};
use crate::libmosq::{self, Routing};
use crate::load::{LoadSpec, Pace, Stop};
use crate::peer::{PeerKind, PeerSpec, RunningPeer};
use crate::report::Client;
use crate::stats::{LatencyRecorder, LatencySummary};

/// Both load client libraries, in the order every scenario runs them.
pub const CLIENTS: [Client; 2] = [Client::Rumqttc, Client::Libmosquitto];

/// Updates a shadow client keeps unanswered: AWS's limit per connection.
const SHADOW_WINDOW: usize = 10;

/// One measured shadow scenario.
#[derive(Debug, serde::Serialize)]
pub struct GatewayResult {
    /// What was measured.
    pub scenario: String,
    /// The load clients' library.
    pub client: Client,
    /// Requests completed per second.
    pub per_second: f64,
    /// Completed in the measured window.
    pub completed: u64,
    /// Refused (shadow 429s / rejections).
    pub rejected: u64,
    /// Latency from publish to answer or republished message.
    pub latency: LatencySummary,
    /// Gateway CPU per accepted update in the window, the clients' per answer over the scenario.
    pub cost: Cost,
    /// Gateway resident memory after the scenario (KiB).
    pub rss_kib: Option<u64>,
}

/// What shadow clients saw: latencies of the updates sent in the window and accepted in it, those
/// accepted and rejected in the window, and every answer matched.
struct ShadowTally<L> {
    latency: L,
    ok: u64,
    rejected: u64,
    answers: u64,
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
) -> anyhow::Result<ShadowTally<LatencyRecorder>> {
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
    let (mut latency, mut ok, mut rejected, mut answers) = (LatencyRecorder::new(), 0u64, 0u64, 0);
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
            answers += 1;
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
    Ok(ShadowTally {
        latency,
        ok,
        rejected,
        answers,
    })
}

/// Runs the shadow scenarios against a fresh gateway each, with each client library.
pub async fn shadow(
    grove: &Path,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<Vec<GatewayResult>> {
    let scenarios: Vec<(&str, usize, usize, Option<f64>)> = vec![
        // (name, clients, things per client (0: one shared thing), rate per client)
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
        for client in CLIENTS {
            let peer = start(grove, extra)?;
            let warmup = Instant::now() + Duration::from_secs(1);
            let until = warmup + Duration::from_secs(seconds);
            let (tally, clients_cpu, gateway_cpu) = match client {
                Client::Rumqttc => {
                    let before = flow::own_cpu();
                    let cpu = flow::cpu_between(&peer, warmup, until);
                    let tally =
                        shadow_rumqttc(&peer, clients, per_client, rate, warmup, until).await?;
                    let clients_cpu = flow::own_cpu().zip(before).map(|(a, b)| a - b);
                    (tally, clients_cpu, cpu.await?)
                }
                Client::Libmosquitto => {
                    let mut cpu = None;
                    let tally =
                        shadow_libmosquitto(&peer, clients, per_client, rate, seconds, || {
                            let start = Instant::now() + Duration::from_secs(1);
                            cpu = Some(flow::cpu_between(
                                &peer,
                                start,
                                start + Duration::from_secs(seconds),
                            ));
                        })
                        .await?;
                    let cpu = match cpu {
                        Some(task) => task.await?,
                        None => None,
                    };
                    (tally.0, Some(tally.1), cpu)
                }
            };
            let rss_kib = peer.memory().ok().map(|m| m.rss_kb);
            eprintln!(
                "shadow: {name}, {}: {:.0} accepted/s",
                client.name(),
                tally.ok as f64 / seconds as f64
            );
            results.push(GatewayResult {
                scenario: name.to_owned(),
                client,
                per_second: tally.ok as f64 / seconds as f64,
                completed: tally.ok,
                rejected: tally.rejected,
                latency: tally.latency,
                cost: Cost::new(gateway_cpu, tally.ok, clients_cpu, tally.answers),
                rss_kib,
            });
            peer.stop()?;
        }
    }
    Ok(results)
}

/// The things of shadow client `c`: `per_client` of its own, or the one shared thing.
fn things_of(c: usize, per_client: usize) -> Vec<String> {
    if per_client == 0 {
        vec!["hot-thing".to_owned()]
    } else {
        (0..per_client).map(|k| format!("t{c}x{k}")).collect()
    }
}

/// A shadow scenario with rumqttc clients, tasks of this process.
async fn shadow_rumqttc(
    peer: &RunningPeer,
    clients: usize,
    per_client: usize,
    rate: Option<f64>,
    warmup: Instant,
    until: Instant,
) -> anyhow::Result<ShadowTally<LatencySummary>> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(shadow_client(
            peer.port(),
            c,
            things_of(c, per_client),
            SHADOW_WINDOW,
            rate,
            until,
            warmup,
        )));
    }
    let mut all = ShadowTally {
        latency: LatencyRecorder::new(),
        ok: 0,
        rejected: 0,
        answers: 0,
    };
    for t in tasks {
        let one = t.await??;
        all.latency.merge(&one.latency);
        all.ok += one.ok;
        all.rejected += one.rejected;
        all.answers += one.answers;
    }
    Ok(ShadowTally {
        latency: all.latency.summary(),
        ok: all.ok,
        rejected: all.rejected,
        answers: all.answers,
    })
}

/// The same shadow scenario with the libmosquitto client (its shadow mode: the same things, update
/// documents, client tokens and window; see bench/c/mqtt_load.c), and the client's CPU time.
async fn shadow_libmosquitto(
    peer: &RunningPeer,
    clients: usize,
    per_client: usize,
    rate: Option<f64>,
    seconds: u64,
    started: impl FnOnce(),
) -> anyhow::Result<(ShadowTally<LatencySummary>, Duration)> {
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs(seconds);
    let spec = LoadSpec {
        publishers: u32::try_from(clients)?,
        subscribers: 0,
        qos: QoS::AtMostOnce,
        payload: 64,
        pace: rate.map_or(Pace::FlatOut, |r| Pace::PerSecond(r as u32)),
        stop: Stop::Duration(warmup + measured),
        publish_limit: warmup + measured + Duration::from_secs(60),
    };
    let routing = Routing {
        shadow_things: Some(u32::try_from(per_client)?),
        window: Some(SHADOW_WINDOW),
        window_after_start: Some(warmup..warmup + measured),
        ..Routing::default()
    };
    let phase = libmosq::run_phase_with(peer.port(), "shadow", &spec, &routing, started).await?;
    let tally = ShadowTally {
        ok: phase.in_window,
        rejected: phase.rejected,
        answers: phase.outcome.acked + phase.rejected,
        latency: phase.outcome.latency,
    };
    Ok((tally, phase.cpu))
}

/// The rule the rules benchmark runs: AWS's typical example.
const RULE: &str = r#"[[rules]]
name = "bench"
sql = "SELECT temperature, publisher, seq, sent_ns, topic(2) AS id FROM 'sensors/+/t' WHERE temperature > 30"
actions = [{ republish = { topic = "alerts/${topic(2)}" } }]
"#;

/// Runs the rules scenarios: through a rule vs published straight to the subscriber of a gateway
/// without rules, with each client library.
pub async fn rules(grove: &Path, seconds: u64, extra: &[&str]) -> anyhow::Result<Vec<FlowRow>> {
    let mut rows = Vec::new();
    // A flat-out variant is not measured here: with QoS 0 and no flow control, publishers that
    // outrun the subscriber only measure how far behind it falls (see the broker benchmark).
    let (scenario, rate) = ("10,000 msg/s (10 publishers x 1,000/s)", 1000);
    for client in CLIENTS {
        for (path, via_rule) in [
            ("through the rule", true),
            ("plain pub/sub, no rule (baseline)", false),
        ] {
            let config: Vec<&str> = via_rule
                .then_some(RULE)
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            let peer = start(grove, &config)?;
            let publishers = Publishers {
                port: peer.port(),
                topics: (0..10).map(|p| format!("sensors/d{p}/t")).collect(),
                qos: QoS::AtMostOnce,
                pace: Pace::PerSecond(rate),
                stop: Stop::Duration(Duration::from_secs(seconds + 1)),
                encoding: Encoding::Json,
                id: "rules-bench".to_owned(),
            };
            let subscriber = Subscriber {
                port: peer.port(),
                filters: vec![if via_rule { "alerts/#" } else { "sensors/#" }.to_owned()],
                dead_letters: None,
                encoding: Encoding::Json,
                batch_topic: None,
            };
            let (outcome, cost) =
                flow::measure(&peer, &publishers, &subscriber, seconds, client).await?;
            eprintln!(
                "rules: {path}, {}: p99 {}",
                client.name(),
                flow::ms(outcome.latency.p99_us)
            );
            rows.push(FlowRow {
                scenario: scenario.to_owned(),
                path: path.to_owned(),
                client,
                outcome,
                cost,
                rss_kib: peer.memory().ok().map(|m| m.rss_kb),
            });
            peer.stop()?;
        }
    }
    Ok(rows)
}

/// The rules' table, then the rule against the plain path per client library.
pub fn rules_markdown(rows: &[FlowRow]) -> String {
    let mut out = flow::markdown(rows);
    out.push_str(
        "\n| client | p50 rule / plain | p99 rule / plain | gateway CPU per message rule / plain |\n|---|---:|---:|---:|\n",
    );
    for pair in rows.chunks(2) {
        let [rule, plain] = pair else { continue };
        let (a, b) = (&rule.outcome.latency, &plain.outcome.latency);
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            rule.client.name(),
            flow::ratio(a.p50_us as f64, b.p50_us as f64),
            flow::ratio(a.p99_us as f64, b.p99_us as f64),
            match (rule.cost.gateway_us, plain.cost.gateway_us) {
                (Some(a), Some(b)) => flow::ratio(a, b),
                _ => "-".to_owned(),
            },
        ));
    }
    out
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

/// A Markdown table of the shadow results.
pub fn markdown(results: &[GatewayResult]) -> String {
    let mut out = String::from("| scenario | client | accepted/s | accepted | rejected | p50 | p99 | p999 | max | gateway CPU µs/update | clients' CPU µs/answer | gateway RSS |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let l = &r.latency;
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.client.name(),
            r.per_second,
            r.completed,
            r.rejected,
            flow::ms(l.p50_us),
            flow::ms(l.p99_us),
            flow::ms(l.p999_us),
            flow::ms(l.max_us),
            flow::micros(r.cost.gateway_us),
            flow::micros(r.cost.client_us),
            flow::mib(r.rss_kib),
        ));
    }
    out
}
