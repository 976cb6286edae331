//! `grove-bench functions`: MQTT event -> WASM function -> publish, end to end, against the same
//! load through a `[[rules]]` republish in the same gateway (the gateway's other path from a message
//! to a message), for the ratio.
//!
//! The example functions (`functions/build.sh`) are deployed with the gateway's own CLI (`grove fn
//! deploy ... --ops`) on a gateway whose ops endpoint listens on a free loopback port:
//! - `echo` (WAT): trigger `echo/in`, publishes the payload unchanged on `echo/out` (QoS 0);
//! - `enricher` (Rust + serde_json): trigger `sensors/+/telemetry`, publishes the reading plus
//!   `temperature_f`, `device` and `gateway_ms` on `enriched/{id}` (QoS 1).
//!
//! Inputs are QoS 1 JSON readings with the stamp in fields (see [`crate::payload::encode_json`]);
//! each trigger message is committed to SQLite before its PUBACK, so "inputs acked/s" is the
//! durable event rate. A full function queue (`[functions] queue_bound`) dead-letters events on
//! `$grove/functions/{name}/dlq`; they are counted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::QoS;

use crate::flow::{self, Encoding, FlowRow, Publishers, Subscriber};
use crate::load::{Pace, Stop};
use crate::peer;

/// Publishers per scenario.
const PUBLISHERS: u32 = 4;

/// Events per second in the latency scenarios, over all publishers.
const RATE: u32 = 1_000;

/// The baseline: the same readings republished by a rule, no function involved.
const BASELINE_RULE: &str = r#"[[rules]]
name = "bench-baseline"
sql = "SELECT * FROM 'rule/+/in'"
actions = [{ republish = { topic = "rule/${topic(2)}/out", qos = 1 } }]
"#;

/// The dead-letter topics of every function.
const DEAD_LETTERS: &str = "$grove/functions/+/dlq";

/// One path under test: where publisher `p` publishes, and what the output filter is.
struct Route {
    /// Row label.
    label: &'static str,
    /// Input topic of publisher `p`.
    topic: fn(u32) -> String,
    /// Output filter.
    output: &'static str,
}

const ROUTES: [Route; 3] = [
    Route {
        label: "function echo (WAT)",
        topic: |_| "echo/in".to_owned(),
        output: "echo/out",
    },
    Route {
        label: "function enricher (Rust, serde_json)",
        topic: |p| format!("sensors/d{p}/telemetry"),
        output: "enriched/+",
    },
    Route {
        label: "rule republish (baseline)",
        topic: |p| format!("rule/d{p}/in"),
        output: "rule/+/out",
    },
];

/// The default functions directory: `<repo>/target/functions`, where `functions/build.sh` writes.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("functions")
}

/// Runs the latency and throughput scenarios on one gateway with both functions deployed.
pub async fn run(
    grove: &Path,
    dir: &Path,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<Vec<FlowRow>> {
    for name in ["echo", "enricher"] {
        for ext in ["wasm", "toml"] {
            let file = dir.join(format!("{name}.{ext}"));
            anyhow::ensure!(
                file.is_file(),
                "{} is missing: build the example functions with `functions/build.sh` \
                 (or pass --functions-dir)",
                file.display()
            );
        }
    }
    let ops_port = peer::free_port().context("finding a free port for the ops endpoint")?;
    let ops = format!("[ops]\nenabled = true\nbind = \"127.0.0.1:{ops_port}\"\n");
    let config: Vec<&str> = [ops.as_str(), BASELINE_RULE]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let gateway = crate::gateway::start(grove, &config)?;
    for name in ["echo", "enricher"] {
        deploy(grove, dir, name, ops_port).await?;
    }
    let per_publisher = RATE / PUBLISHERS;
    let scenarios = [
        (
            format!("{RATE} events/s ({PUBLISHERS} x {per_publisher}/s)"),
            Pace::PerSecond(per_publisher),
        ),
        (format!("flat out ({PUBLISHERS} publishers)"), Pace::FlatOut),
    ];
    let mut rows = Vec::new();
    for client in crate::gateway::CLIENTS {
        for (index, (scenario, pace)) in scenarios.iter().enumerate() {
            for (k, path) in ROUTES.iter().enumerate() {
                let publishers = Publishers {
                    port: gateway.port(),
                    topics: (0..PUBLISHERS).map(path.topic).collect(),
                    qos: QoS::AtLeastOnce,
                    pace: *pace,
                    stop: Stop::Duration(Duration::from_secs(seconds + 1)),
                    encoding: Encoding::Json,
                    id: format!("fn-bench-{}-{index}-{k}", client.name()),
                };
                let subscriber = Subscriber {
                    port: gateway.port(),
                    filters: vec![path.output.to_owned()],
                    dead_letters: Some(DEAD_LETTERS.to_owned()),
                    encoding: Encoding::Json,
                    batch_topic: None,
                };
                let (outcome, cost) =
                    flow::measure(&gateway, &publishers, &subscriber, seconds, client).await?;
                eprintln!(
                    "functions: {scenario}, {}, {}: {:.0} outputs/s",
                    path.label,
                    client.name(),
                    outcome.per_second
                );
                rows.push(FlowRow {
                    scenario: scenario.clone(),
                    path: path.label.to_owned(),
                    client,
                    outcome,
                    cost,
                    rss_kib: gateway.memory().ok().map(|m| m.rss_kb),
                });
                // Let the gateway finish what is queued before the next path is measured.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    gateway.stop()?;
    Ok(rows)
}

/// Deploys `{dir}/{name}.wasm` with its manifest through the gateway's own CLI.
async fn deploy(grove: &Path, dir: &Path, name: &str, ops_port: u16) -> anyhow::Result<()> {
    let mut command = Command::new(grove);
    command
        .args(["fn", "deploy"])
        .arg(dir.join(format!("{name}.wasm")))
        .arg("--manifest")
        .arg(dir.join(format!("{name}.toml")))
        .args(["--ops", &format!("127.0.0.1:{ops_port}")]);
    // The CLI is a short blocking process; it runs off the async threads.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("running `grove fn deploy` for {name}"))?;
    anyhow::ensure!(
        output.status.success(),
        "`grove fn deploy` of {name} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The Markdown section: the table, then each function against the rule per scenario.
pub fn markdown(rows: &[FlowRow]) -> String {
    let mut out = flow::markdown(rows);
    out.push_str(
        "\nTarget (issue): > 100,000 invocations/s on 2 cores, host side; these figures are end to \
         end over MQTT (QoS 1 inputs, each committed to SQLite before its PUBACK), so lower.\n\n\
         | scenario | client | function | outputs/s vs rule | p50 vs rule | p99 vs rule |\n|---|---|---|---:|---:|---:|\n",
    );
    for chunk in rows.chunks(ROUTES.len()) {
        let Some(baseline) = chunk.last() else {
            continue;
        };
        for r in &chunk[..chunk.len() - 1] {
            let (a, b) = (&r.outcome, &baseline.outcome);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.client.name(),
                r.path,
                flow::ratio(a.per_second, b.per_second),
                flow::ratio(a.latency.p50_us as f64, b.latency.p50_us as f64),
                flow::ratio(a.latency.p99_us as f64, b.latency.p99_us as f64),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{DeliveryTally, LatencySummary};

    /// A row with the given outputs/s and p50/p99 in µs.
    fn row(scenario: &str, path: &str, per_second: f64, p50_us: u64, p99_us: u64) -> FlowRow {
        FlowRow {
            scenario: scenario.to_owned(),
            path: path.to_owned(),
            client: crate::report::Client::Rumqttc,
            cost: flow::Cost::default(),
            outcome: flow::FlowOutcome {
                per_second,
                acked_per_second: per_second,
                completed: 0,
                received: 0,
                dead_letters: 0,
                publishes: 0,
                bytes: 0,
                billed: 0,
                latency: LatencySummary {
                    samples: 1,
                    p50_us,
                    p99_us,
                    p999_us: p99_us,
                    max_us: p99_us,
                },
                tally: DeliveryTally::default(),
            },
            rss_kib: None,
        }
    }

    #[test]
    fn each_function_is_compared_with_the_rule_of_its_scenario() {
        let rows = [
            row("slow", "echo", 1000.0, 400, 900),
            row("slow", "enricher", 900.0, 600, 3000),
            row("slow", "rule", 1000.0, 200, 1000),
            row("fast", "echo", 5000.0, 1000, 2000),
            row("fast", "enricher", 0.0, 0, 0),
            row("fast", "rule", 20000.0, 500, 1000),
        ];
        let text = markdown(&rows);
        for line in [
            "| slow | rumqttc | echo | 1.00 | 2.00 | 0.90 |",
            "| slow | rumqttc | enricher | 0.90 | 3.00 | 3.00 |",
            "| fast | rumqttc | echo | 0.25 | 2.00 | 2.00 |",
            "| fast | rumqttc | enricher | 0.00 | 0.00 | 0.00 |",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(!text
            .lines()
            .any(|l| l.starts_with("| slow | rumqttc | rule | 1.00")));
    }
}
