//! Benchmark (issue 19's figure): the time from an AWS IoT job's notification to the new version
//! of a function serving events, for a 1 MiB module; the goal is under 1 s on the project's
//! machine (Greengrass users report 2-3 minutes).
//!
//! It lives in the end-to-end tests' package because it runs their cloud stand-ins (the Jobs
//! service and the HTTPS artifact server, `grove_tests::jobs_cloud`) against the real binary,
//! while `grove-bench` depends on nothing of Grove's. Run it against a release gateway:
//!
//! ```sh
//! cargo build --release -p grove-gateway --bin grove
//! GROVE_BIN=$PWD/target/release/grove cargo bench -p grove-tests --bench deploy
//! # options after `--`: --rounds N (10), --kind padded|code (both)
//! ```
//!
//! Each round creates a job for a new 1 MiB module whose function publishes each event it gets to
//! `bench/out/{round}`; a device (rumqttc) publishes one event at a time on the trigger topic and
//! the next once the previous one's output has come (closed loop: no backlog, a resolution of
//! one event's round trip), until an output of the new version arrives. The time is from the
//! Jobs service's `notify-next` (just before `create_job`) to that output; it is split at the
//! gateway's `start-next` and its artifact request, as the cloud side saw them, and the time of
//! each step (fetching, staging, switching) is read from the gateway's log. Two kinds of
//! module: 1 MiB of function code, which the runtime compiles, and 64 KiB of code with 1 MiB of
//! custom section (names, debug information), which it skips. The peer in the same run: the same
//! kind of module deployed locally with `grove fn deploy --alias live` (no cloud, no HTTPS, no
//! state machine), timed from the command's start to the new version's first output.
//!
//! Devices are served throughout: a probe client makes a QoS 1 round trip through the gateway
//! (publish, receive its own message) every 10 ms, 500 times before any deployment and then
//! during the job rounds; the two sets of round trips are reported side by side.

use std::time::{Duration, Instant, SystemTime};

use rumqttc::QoS;

use grove_tests::functions::{guest_with, padded, Fixture};
use grove_tests::jobs_cloud::{deployment, JobsCloud, THING};
use grove_tests::Client;

/// The module's size.
const SIZE: usize = 1 << 20;
/// The function's manifest (name `b`).
const MANIFEST: &str = "name = \"b\"\ntriggers = [\"bench/in\"]\ntrigger_qualifier = \"live\"\n[grants]\npublish = [\"bench/out/#\"]\n";

/// Publishes the payload to the topic at 96.
fn forward(topic: &str) -> String {
    format!(
        "(drop (call $publish (i32.const 96) (i32.const {}) (local.get $pp) (local.get $pl) (i32.const 0))) (i32.const 0)",
        topic.len()
    )
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// 1 MiB of function code.
    Code,
    /// 64 KiB of code and a custom section up to 1 MiB.
    Padded,
}

/// Unused functions of about `bytes` of code in all, each different (nothing to share).
fn code(bytes: usize, seed: usize) -> String {
    // One `i32.const K` (3 bytes for K < 2^14) and one `i32.add` per step: 4 bytes.
    const STEPS: usize = 100;
    let functions = bytes / (STEPS * 4 + 8);
    let mut text = String::with_capacity(functions * STEPS * 24);
    for f in 0..functions {
        text.push_str("(func (param i32) (result i32) (local.get 0)");
        for k in 0..STEPS {
            let value = (seed * 31 + f * STEPS + k) % 8000 + 64;
            text.push_str(&format!(" (i32.const {value}) (i32.add)"));
        }
        text.push_str(")\n");
    }
    text
}

/// A module of about [`SIZE`] bytes of `kind` whose handler publishes to `bench/out/{n}`.
fn module(kind: Kind, n: usize) -> Vec<u8> {
    let topic = format!("bench/out/{n}");
    match kind {
        Kind::Code => guest_with(&forward(&topic), &topic, &code(SIZE, n)),
        Kind::Padded => padded(
            guest_with(&forward(&topic), &topic, &code(64 << 10, n)),
            SIZE,
        ),
    }
}

/// Publishes events until an output of `bench/out/{n}` arrives; returns when it did.
async fn served(device: &mut Client, n: usize) -> Instant {
    let want = format!("bench/out/{n}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no output on {want} within 60 s");
        device
            .publish("bench/in", QoS::AtMostOnce, false, "e")
            .await;
        // The old version's output answers too; the loop goes on until the new one's.
        while let Some(p) = device.recv(Duration::from_millis(200)).await {
            if p.topic == want {
                return Instant::now();
            }
            if p.topic.starts_with("bench/out/") {
                break;
            }
        }
    }
}

/// Milliseconds, one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// min / median / max.
fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{} / {} / {}",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cores} cores")
}

/// Round trips of a probe client (publish QoS 1 to `probe/rt`, receive it), one every 10 ms,
/// `most` of them or until `stop`, as client `id`; returns their durations.
async fn probe(
    id: &'static str,
    port: u16,
    most: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let mut c = Client::connect(id, port).await;
    c.subscribe("probe/rt", QoS::AtLeastOnce).await;
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut samples = Vec::new();
    while !*stop.borrow() && samples.len() < most {
        pace.tick().await;
        let t = Instant::now();
        c.publish("probe/rt", QoS::AtLeastOnce, false, "p").await;
        if c.recv(Duration::from_secs(5)).await.is_some() {
            samples.push(t.elapsed());
        }
    }
    samples
}

/// p50 / p99 / max of round trips, and how many.
fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    format!(
        "{} / {} / {} ({} round trips)",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0)),
        v.len()
    )
}

/// The gateway's own times of deployment `id`'s steps, from its log lines ("deployment step
/// ... phase=P"): (phase, time), in order.
fn steps(log: &str, id: &str) -> Vec<(String, SystemTime)> {
    let marker = format!("deployment=\"{id}\"");
    log.lines()
        .filter(|l| l.contains("deployment step") && l.contains(&marker))
        .filter_map(|l| {
            let at = humantime::parse_rfc3339(l.split_whitespace().next()?).ok()?;
            let phase = l.split("phase=").nth(1)?.split_whitespace().next()?;
            Some((phase.to_owned(), at))
        })
        .collect()
}

/// How long deployment `id` was in `phase` (to the next step), by the gateway's log.
fn in_phase(log: &str, id: &str, phase: &str) -> Option<Duration> {
    let steps = steps(log, id);
    let i = steps.iter().position(|(p, _)| p == phase)?;
    steps.get(i + 1)?.1.duration_since(steps[i].1).ok()
}

/// The benchmark's options.
#[derive(clap::Parser)]
struct Options {
    /// Rounds per kind of module and path.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Only this kind of module (`padded` or `code`); both by default.
    #[arg(long)]
    kind: Option<String>,
    /// What `cargo bench` passes.
    #[arg(long, hide = true)]
    bench: bool,
}

async fn run(options: Options) {
    let kinds: Vec<Kind> = [Kind::Padded, Kind::Code]
        .into_iter()
        .filter(|k| {
            options
                .kind
                .as_deref()
                .is_none_or(|want| format!("{k:?}").eq_ignore_ascii_case(want))
        })
        .collect();
    let rounds = options.rounds;
    println!("machine: {}; load before: {}", cpu(), loadavg());
    println!();
    println!("| module (1 MiB) | path | rounds | notify -> served, ms (min / median / max) | notify -> start-next | notify -> artifact GET | fetching | staging | switching |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let c = JobsCloud::start().await;
    let f: Fixture = c.gateway(&[]);
    let mut device = Client::connect("bench-device", f.g.mqtt_port).await;
    device.subscribe("bench/out/#", QoS::AtMostOnce).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let idle = probe("probe-idle", f.g.mqtt_port, 500, stopped.clone()).await;
    let during = tokio::spawn(probe("probe-during", f.g.mqtt_port, usize::MAX, stopped));
    let mut n = 0;
    for kind in kinds {
        let (mut total, mut start, mut get, mut ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            n += 1;
            let wasm = module(kind, n);
            let module = c.module(&format!("m{n}.wasm"), &wasm);
            let id = format!("d{n}");
            let doc = deployment(&id, "b", MANIFEST, module, r#""health": {"soak_s": 0}"#);
            let job = format!("j{n}");
            let t0 = Instant::now();
            c.job(&job, &doc).await;
            let at = served(&mut device, n).await;
            c.ended(&job, "SUCCEEDED");
            let started = c
                .jobs
                .requests(THING, "start-next")
                .into_iter()
                .find(|t| *t >= t0)
                .expect("a start-next after the notification");
            let fetched = c.files.fetches().last().expect("an artifact request").at;
            total.push(at - t0);
            start.push(started - t0);
            get.push(fetched - t0);
            ids.push(id);
        }
        let log = f.g.log();
        let phase = |p: &str| {
            spread(
                ids.iter()
                    .map(|id| in_phase(&log, id, p).expect("the step in the log"))
                    .collect(),
            )
        };
        println!(
            "| {kind:?} | AWS IoT job, HTTPS artifact | {rounds} | {} | {} | {} | {} | {} | {} |",
            spread(total),
            spread(start),
            spread(get),
            phase("fetching"),
            phase("staging"),
            phase("switching"),
        );
        let mut local = Vec::new();
        for _ in 0..rounds {
            n += 1;
            let wasm = module(kind, n);
            let t0 = Instant::now();
            let (code, out) = f.deploy(
                "b",
                &wasm,
                MANIFEST.split_once('\n').map_or("", |m| m.1),
                Some("live"),
            );
            assert_eq!(code, 0, "grove fn deploy: {out}");
            local.push(served(&mut device, n).await - t0);
        }
        println!(
            "| {kind:?} | `grove fn deploy --alias live` (local file) | {rounds} | {} | - | - | - | - | - |",
            spread(local)
        );
    }
    stop.send(true).expect("the probe");
    let during = during.await.expect("the probe");
    println!();
    println!("| probe QoS 1 round trip, ms | p50 / p99 / max |");
    println!("|---|---|");
    println!("| no deployment | {} |", percentiles(idle));
    println!("| during the deployments above | {} |", percentiles(during));
    println!();
    println!("load after: {}", loadavg());
}

fn main() {
    let options = <Options as clap::Parser>::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(options));
}
