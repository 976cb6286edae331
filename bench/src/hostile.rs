//! `grove-bench hostile`: what the attacks of issue 15 on the functions host cost the gateway in
//! memory, time and log volume, with the bounds in place (the end-to-end tests in
//! `tests/tests/hostile_functions.rs` assert the bounds; this measures the figures).
//!
//! One gateway (default config plus its ops endpoint and one `SELECT *` republish rule), then in
//! turn, each measured as resident memory before, right after and `settle` later, its duration,
//! and the growth of the gateway's log (at the default level):
//! - `flood`: 200 QoS 1 publishes of ~1 MB through the rule (until their 200 PUBACKs);
//! - `compile`: `grove fn deploy` of a module near the limits (9,990 functions, ~3.3 MB);
//! - `log flood`: one invocation logging 210 lines of 8 MiB, then `grove fn logs`;
//! - `denied flood`: one invocation making 20,000 publishes to a 60,000-byte topic it has no
//!   grant for.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{Event, Packet, QoS};
use serde::Serialize;

use crate::flow::{self, mib};
use crate::peer::{self, RunningPeer};

/// The rule the flood goes through.
const RULE: &str = r#"[[rules]]
name = "flood"
sql = "SELECT * FROM 'flood/in'"
actions = [{ republish = { topic = "flood/out", qos = 1 } }]
"#;

/// One attack's cost.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    /// The attack.
    pub attack: &'static str,
    /// How long the attack's own operation took (publishing, deploying, invoking).
    pub seconds: f64,
    /// VmRSS before (KiB).
    pub before_kib: u64,
    /// VmRSS right after (KiB).
    pub after_kib: u64,
    /// VmRSS `settle` later (KiB).
    pub settled_kib: u64,
    /// Bytes the gateway wrote to its log meanwhile.
    pub log_bytes: u64,
    /// What else was measured.
    pub note: String,
}

/// The guest's exports around a handler `body` (memory 1 page, imports `log` and `publish`).
fn guest(body: &str, extra: &str) -> anyhow::Result<Vec<u8>> {
    let text = format!(
        r#"(module
  (import "grove" "log" (func $log (param i32 i32 i32)))
  (import "grove" "publish" (func $publish (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "grove_abi_version") (result i32) (i32.const 1))
  (func (export "grove_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "grove_handle") (param i32 i32 i32 i32) (result i32) (local $n i32)
    {body})
  {extra})"#
    );
    wat::parse_str(&text).context("the benchmark's WAT")
}

/// Runs `grove fn ARGS --ops ...`; returns its stdout and how long it took.
async fn cli(grove: &Path, ops_port: u16, args: Vec<String>) -> anyhow::Result<(String, f64)> {
    let mut command = Command::new(grove);
    command
        .arg("fn")
        .args(&args)
        .args(["--ops", &format!("127.0.0.1:{ops_port}")]);
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        output.status.success(),
        "`grove fn {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        seconds,
    ))
}

/// Deploys `wasm` as `name` with `manifest` (the name line is added).
async fn deploy(
    grove: &Path,
    ops_port: u16,
    dir: &Path,
    name: &str,
    wasm: &[u8],
    manifest: &str,
) -> anyhow::Result<f64> {
    let module = dir.join(format!("{name}.wasm"));
    let toml = dir.join(format!("{name}.toml"));
    std::fs::write(&module, wasm)?;
    std::fs::write(&toml, format!("name = \"{name}\"\n{manifest}"))?;
    let args = vec![
        "deploy".to_owned(),
        module.display().to_string(),
        "--manifest".to_owned(),
        toml.display().to_string(),
    ];
    Ok(cli(grove, ops_port, args).await?.1)
}

/// Measures one attack: `attack` returns its duration and a note.
async fn measure<F>(
    gateway: &RunningPeer,
    settle: Duration,
    name: &'static str,
    attack: F,
) -> anyhow::Result<Cost>
where
    F: std::future::Future<Output = anyhow::Result<(f64, String)>>,
{
    let before_kib = gateway.memory()?.rss_kb;
    let log_before = gateway.log_bytes();
    let (seconds, note) = attack.await.with_context(|| format!("attack {name}"))?;
    let after_kib = gateway.memory()?.rss_kb;
    tokio::time::sleep(settle).await;
    let cost = Cost {
        attack: name,
        seconds,
        before_kib,
        after_kib,
        settled_kib: gateway.memory()?.rss_kb,
        log_bytes: gateway.log_bytes().saturating_sub(log_before),
        note,
    };
    eprintln!("hostile: {cost:?}");
    Ok(cost)
}

/// The flood: 200 publishes of ~1 MB through the rule, until their PUBACKs.
async fn flood(port: u16) -> anyhow::Result<(f64, String)> {
    let (client, mut events) = flow::event_loop(flow::options("hostile-flood", port));
    let payload = format!("{{\"d\":\"{}\"}}", "a".repeat(1_000_000));
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        for _ in 0..200 {
            client
                .publish("flood/in", QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acks = 0;
    while acks < 200 {
        match tokio::time::timeout(Duration::from_secs(120), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acks += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("the flood's connection ended after {acks} PUBACKs: {e}"),
            Err(_) => anyhow::bail!("no PUBACK in 120 s after {acks}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    publisher.await??.disconnect().await?;
    Ok((seconds, "200 x 1 MB acknowledged".to_owned()))
}

/// Runs the attacks on one gateway; `settle` is the wait before the last memory reading.
pub async fn run(grove: &Path, settle: Duration, extra: &[&str]) -> anyhow::Result<Vec<Cost>> {
    let ops_port = peer::free_port().context("finding a free port for the ops endpoint")?;
    let ops = format!("[ops]\nenabled = true\nbind = \"127.0.0.1:{ops_port}\"\n");
    let config: Vec<&str> = [ops.as_str(), RULE]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let gateway = crate::gateway::start(grove, &config)?;
    let files = tempfile::tempdir()?;
    let dir = files.path();
    // Idle: what the others are measured against.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut costs =
        vec![measure(&gateway, settle, "idle", async { Ok((0.0, String::new())) }).await?];

    costs.push(measure(&gateway, settle, "flood", flood(gateway.port())).await?);

    // Near both limits: 9,990 functions of ~330 bytes of code each (~3.3 MB).
    let body = "i32.const 12345 i32.add ".repeat(80);
    let functions: String = (0..9_990)
        .map(|_| format!("(func (param i32) (result i32) local.get 0 {body})"))
        .collect();
    let big = guest("(i32.const 0)", &functions)?;
    costs.push(
        measure(&gateway, settle, "compile", async {
            let seconds = deploy(grove, ops_port, dir, "big", &big, "").await?;
            Ok((seconds, format!("{} bytes, 9,990 functions", big.len())))
        })
        .await?,
    );

    // 210 lines of 8 MiB: memory grown to 9 MiB, the line at 64 KiB.
    let logger = guest(
        "(drop (memory.grow (i32.const 144)))
         (local.set $n (i32.const 210))
         (loop $l
           (call $log (i32.const 2) (i32.const 65536) (i32.const 8388608))
           (local.set $n (i32.sub (local.get $n) (i32.const 1)))
           (br_if $l (local.get $n)))
         (i32.const 0)",
        "",
    )?;
    deploy(
        grove,
        ops_port,
        dir,
        "logger",
        &logger,
        "timeout_ms = 60000\n",
    )
    .await?;
    costs.push(
        measure(&gateway, settle, "log flood", async {
            let (_, seconds) = cli(grove, ops_port, vec!["invoke".into(), "logger".into()]).await?;
            let (logs, read) = cli(grove, ops_port, vec!["logs".into(), "logger".into()]).await?;
            Ok((
                seconds,
                format!(
                    "210 lines of 8 MiB; `grove fn logs`: {} bytes in {:.2} s",
                    logs.len(),
                    read
                ),
            ))
        })
        .await?,
    );

    let denied = guest(
        "(memory.fill (i32.const 1024) (i32.const 97) (i32.const 60000))
         (local.set $n (i32.const 20000))
         (loop $l
           (drop (call $publish (i32.const 1024) (i32.const 60000) (i32.const 0) (i32.const 0) (i32.const 0)))
           (local.set $n (i32.sub (local.get $n) (i32.const 1)))
           (br_if $l (local.get $n)))
         (i32.const 0)",
        "",
    )?;
    deploy(
        grove,
        ops_port,
        dir,
        "denied",
        &denied,
        "timeout_ms = 60000\n",
    )
    .await?;
    costs.push(
        measure(&gateway, settle, "denied flood", async {
            let (_, seconds) = cli(grove, ops_port, vec!["invoke".into(), "denied".into()]).await?;
            Ok((
                seconds,
                "20,000 publishes to a 60,000-byte topic, no grant".into(),
            ))
        })
        .await?,
    );
    gateway.stop()?;
    Ok(costs)
}

/// The table.
pub fn markdown(costs: &[Cost], settle: Duration) -> String {
    let mut out = format!(
        "| attack | took | RSS before | RSS right after | RSS {} s later | gateway log | notes |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
        settle.as_secs()
    );
    for c in costs {
        out.push_str(&format!(
            "| {} | {:.2} s | {} | {} | {} | {} B | {} |\n",
            c.attack,
            c.seconds,
            mib(Some(c.before_kib)),
            mib(Some(c.after_kib)),
            mib(Some(c.settled_kib)),
            c.log_bytes,
            c.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_attack() {
        let cost = Cost {
            attack: "flood",
            seconds: 1.5,
            before_kib: 10 * 1024,
            after_kib: 300 * 1024,
            settled_kib: 12 * 1024,
            log_bytes: 42,
            note: "n".into(),
        };
        let table = markdown(&[cost], Duration::from_secs(30));
        assert!(
            table.starts_with("| attack | took | RSS before | RSS right after | RSS 30 s later")
        );
        assert_eq!(
            table.lines().nth(2),
            Some("| flood | 1.50 s | 10.0 MiB | 300.0 MiB | 12.0 MiB | 42 B | n |")
        );
    }
}
