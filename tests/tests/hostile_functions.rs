//! Hostile functions: each attack of issue 15 on the functions host (items 2, 4, 9 and 11), run
//! against the real `grove` binary, with its bound as the assertion.
//!
//! - A module that loops in its ABI check or start function is refused promptly at deploy; one
//!   that starts looping only after its deploy fails to load at the next startup without keeping
//!   the gateway from opening its port or the other functions from running, and is reported.
//! - A function logging huge lines, or refused a host call in a loop with a huge argument, grows
//!   neither the gateway's memory nor its log file beyond their bounds; what is dropped is counted.
//! - A module too large to compile quickly, or that cannot fit its limits, is refused before
//!   compiling (or when loaded) with the real cause, and leaves nothing in the compile cache.
//! - Events for made-up function names cost one metric series and a few log lines.
//! - The memory a flood of large messages through a rule took is given back after it.

use std::time::{Duration, Instant};

use grove_tests::functions::{guest, guest_abi, Fixture, ECHO};
use grove_tests::{eventually, Client};
use rumqttc::QoS;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// `grove_abi_version`'s body that never returns.
const LOOP_FOREVER: &str = "(loop $l (br $l)) (i32.const 1)";

/// Files in the gateway's compile cache.
fn cached_modules(f: &Fixture) -> Vec<String> {
    std::fs::read_dir(f.g.data_dir().join("functions/cache"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_module_that_loops_in_its_abi_check_or_start_function_is_refused_promptly() {
    let f = Fixture::start("");
    // A start function runs at instantiation, before any export is called.
    let start_loop = wat::parse_str(
        r#"(module
          (memory (export "memory") 1)
          (func $spin (loop $l (br $l)))
          (start $spin)
          (func (export "grove_abi_version") (result i32) (i32.const 1))
          (func (export "grove_alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "grove_handle") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    for (name, wasm, says) in [
        (
            "abi-loop",
            guest_abi(ECHO, "", LOOP_FOREVER),
            "grove_abi_version did not return within 1000 ms",
        ),
        (
            "start-loop",
            start_loop,
            "start function did not finish within 1000 ms",
        ),
    ] {
        let started = Instant::now();
        let (code, out) = f.deploy(name, &wasm, "timeout_ms = 900000\n", None);
        // Generous: the check's deadline is 1 s; before the fix this never returned (the CLI
        // gave up after 120 s).
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name}: deploy took {:?}",
            started.elapsed()
        );
        assert_ne!(code, 0, "{name} was deployed: {out}");
        assert!(out.contains(says), "{name}: {out}");
    }
    // Nothing is left spinning or half-deployed: the gateway still deploys and runs functions.
    f.deployed("echo", &guest(ECHO, ""), "");
    let (code, out) = f.cli(&["invoke", "echo", "--payload", "hi"]);
    assert_eq!(code, 0, "{out}");
    let (_, list) = f.cli(&["list"]);
    assert!(
        !list.contains("abi-loop") && !list.contains("start-loop"),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_fails_to_load_after_a_restart_neither_blocks_startup_nor_the_others() {
    let mut f = Fixture::start("");
    f.deployed("good", &guest(ECHO, ""), "");
    f.deployed("bad", &guest(ECHO, ""), "triggers = [\"bad/in\"]\n");
    // The attack: the module's check passes at deploy and loops from some time on. Its file in
    // the function store is replaced by a module that loops, which the restart must load.
    let (status, _) = f.g.stop_with("TERM");
    assert!(status.success());
    std::fs::write(
        f.g.data_dir().join("functions/bad/1.wasm"),
        guest_abi(ECHO, "", LOOP_FOREVER),
    )
    .unwrap();
    // Before the fix the gateway never opened its MQTT port (this panics after 20 s).
    f.g.restart_stopped();

    // The others run.
    let (code, out) = f.cli(&["invoke", "good", "--payload", "still here"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("still here"), "{out}");

    // The bad one is reported: listed as failed, counted, logged.
    f.g.wait_metric(
        "grove_function_load_failures_total{function=\"bad\"}",
        |v| v == 1.0,
    );
    let (_, list) = f.cli(&["list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("bad "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("v1 failed:") && line.contains("did not return within 1000 ms"),
        "{line}"
    );
    assert!(f
        .g
        .log()
        .contains("cannot load a deployed function version"));

    // Its events are dead-lettered with the reason, and a sync invocation gets a clear error.
    let mut watcher = Client::connect("dlq-watch", f.g.mqtt_port).await;
    watcher
        .subscribe("$grove/functions/bad/dlq", QoS::AtLeastOnce)
        .await;
    watcher
        .publish("bad/in", QoS::AtLeastOnce, false, "event")
        .await;
    let dead = watcher.recv(WAIT).await.expect("a dead letter");
    let dead: Value = serde_json::from_slice(&dead.payload).unwrap();
    assert_eq!(dead["error"]["kind"], "load_failed", "{dead}");
    assert_eq!(dead["event"]["payload"], "event", "{dead}");
    let (code, out) = f.cli(&["invoke", "bad", "--payload", "x"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("version 1 of function \"bad\" failed to load"),
        "{out}"
    );
}

#[test]
fn huge_log_lines_are_cut_rate_limited_and_counted_not_kept() {
    let f = Fixture::start("");
    // 210 log lines of 1 MiB each in one invocation (the issue's attack, with 1 MiB lines instead
    // of 8 MiB so that the unfixed gateway does not take this machine's memory).
    let flood = "(drop (memory.grow (i32.const 16)))
        (memory.fill (i32.const 65536) (i32.const 120) (i32.const 1048576))
        (local.set $rc (i32.const 210))
        (loop $l
          (call $log (i32.const 2) (i32.const 65536) (i32.const 1048576))
          (local.set $rc (i32.sub (local.get $rc) (i32.const 1)))
          (br_if $l (local.get $rc)))
        (i32.const 0)";
    f.deployed("flood", &guest(flood, ""), "timeout_ms = 30000\n");
    let log_before = f.g.log().len();
    let rss_before = f.g.rss_kib() << 10;
    let (code, out) = f.cli(&["invoke", "flood"]);
    assert_eq!(code, 0, "{out}");

    let (code, logs) = f.cli(&["logs", "flood"]);
    assert_eq!(code, 0);
    // The ring is bounded in bytes (64 KiB) and each line in length (1 KiB), marked as cut.
    assert!(logs.len() < 100_000, "grove fn logs: {} bytes", logs.len());
    assert!(logs.contains("[truncated: 1048576 bytes]"), "{logs:.2000}");
    // At most 50 lines a second are kept; the rest are counted.
    let dropped = f.metric("grove_function_log_lines_dropped_total{function=\"flood\"}");
    assert!(dropped >= 1.0, "dropped {dropped}");
    // The gateway's log (at debug, as the harness runs it) got the cut lines only: before the
    // fix it got all 210 MiB.
    let logged = f.g.log().len() - log_before;
    assert!(logged < 1 << 20, "the gateway logged {logged} bytes");
    // Generous safety bound: before the fix the ring alone kept 200 MiB.
    let grown = (f.g.rss_kib() << 10).saturating_sub(rss_before);
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
}

#[test]
fn a_host_call_denied_in_a_loop_is_counted_but_not_logged_at_length() {
    let f = Fixture::start("");
    // No grants: 500 publishes to a 60,000-byte topic, each refused.
    let noisy = "(memory.fill (i32.const 1024) (i32.const 97) (i32.const 60000))
        (local.set $rc (i32.const 500))
        (loop $l
          (drop (call $publish (i32.const 1024) (i32.const 60000) (i32.const 0) (i32.const 0) (i32.const 0)))
          (local.set $rc (i32.sub (local.get $rc) (i32.const 1)))
          (br_if $l (local.get $rc)))
        (i32.const 0)";
    f.deployed("noisy", &guest(noisy, ""), "timeout_ms = 30000\n");
    let log_before = f.g.log().len();
    let (code, out) = f.cli(&["invoke", "noisy"]);
    assert_eq!(code, 0, "{out}");
    // Every refusal is counted...
    f.g.wait_metric(
        "grove_function_denied_calls_total{function=\"noisy\",call=\"publish\"}",
        |v| v == 500.0,
    );
    // ...but the gateway's WARN lines are few and short (before the fix: 500 lines of 60 KB).
    let logged = f.g.log().len() - log_before;
    assert!(logged < 256 << 10, "the gateway logged {logged} bytes");
    let suppressed = f.metric("grove_function_log_suppressed_total{function=\"noisy\"}");
    assert!(suppressed >= 400.0, "suppressed {suppressed}");
}

#[test]
fn modules_over_the_limits_are_refused_with_the_real_cause_and_leave_no_cache_file() {
    let f = Fixture::start("");
    let module = |items: &str| {
        wat::parse_str(format!(
            r#"(module {items}
              (func (export "grove_abi_version") (result i32) (i32.const 1))
              (func (export "grove_alloc") (param i32) (result i32) (i32.const 1024))
              (func (export "grove_handle") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"#
        ))
        .unwrap()
    };
    let many_functions = format!(
        "(memory (export \"memory\") 1) {}",
        "(func (result i32) (i32.const 7))".repeat(20_000)
    );
    let big_data = format!(
        "(memory (export \"memory\") 96) (data (i32.const 0) \"{}\")",
        "a".repeat(5 << 20)
    );
    let cases: &[(&str, String, &str, &str)] = &[
        // Initial memory over the manifest's limit (16 MiB by default).
        (
            "mem-manifest",
            "(memory (export \"memory\") 300)".into(),
            "",
            "its initial memory is 18 MiB, more than its memory_limit_mb (16)",
        ),
        // Over the gateway's cap too (64 MiB): before the fix, HTTP 500 "cannot write the
        // compiled module cache".
        (
            "mem-gateway",
            "(memory (export \"memory\") 2000)".into(),
            "memory_limit_mb = 64\n",
            "its initial memory is 125 MiB, more than its memory_limit_mb (64)",
        ),
        (
            "many-functions",
            many_functions,
            "",
            "it defines 20003 functions; the gateway compiles modules of at most 10000",
        ),
        (
            "too-large",
            big_data,
            "memory_limit_mb = 64\n",
            "the gateway compiles modules of at most 4194304 bytes",
        ),
        // Fits the checks made before compiling, but not the engine's instance limits: refused
        // when the compiled module is loaded, with wasmtime's reason.
        (
            "big-table",
            "(memory (export \"memory\") 1) (table 1000000 funcref)".into(),
            "",
            "the module exceeds a limit",
        ),
    ];
    for (name, items, manifest, says) in cases {
        let (code, out) = f.deploy(name, &module(items), manifest, None);
        assert_ne!(code, 0, "{name} was deployed: {out}");
        assert!(out.contains(says), "{name}: {out}");
        assert!(!out.contains("cache"), "{name}: {out}");
    }
    assert_eq!(cached_modules(&f), Vec::<String>::new());
    // The gateway is fine: a good module deploys and is cached.
    f.deployed("echo", &guest(ECHO, ""), "");
    assert_eq!(cached_modules(&f).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_names_that_are_no_function_cost_one_metric_series_and_few_log_lines() {
    let g = grove_tests::Gateway::start("");
    let mut watcher = Client::connect("dlq-watch", g.mqtt_port).await;
    watcher
        .subscribe("$grove/functions/+/dlq", QoS::AtLeastOnce)
        .await;
    let device = Client::connect("device", g.mqtt_port).await;
    let log_before = g.log().len();
    // 100 names a device made up, each 2,000 characters long.
    for n in 0..100 {
        let name = format!("ghost{n:03}{}", "x".repeat(1992));
        device
            .publish(
                &format!("$grove/functions/{name}/event"),
                QoS::AtLeastOnce,
                false,
                "boo",
            )
            .await;
    }
    // Each is dead-lettered (nothing accepted is lost)...
    watcher.recv_n(100, WAIT).await;
    // ...and counted in one series, not one per name.
    assert_eq!(
        g.metric("grove_function_dlq_total{function=\"(unknown)\"}"),
        100.0
    );
    let (_, _, metrics) = g.http_get("/metrics");
    assert!(!metrics.contains("ghost"), "a series per made-up name");
    // The gateway's WARN lines about them are few and cut (before: 100 lines of 4 KB).
    let logged = g.log().len() - log_before;
    assert!(logged < 32 << 10, "the gateway logged {logged} bytes");
    assert!(g.metric("grove_function_log_suppressed_total{function=\"(unknown)\"}") >= 90.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_taken_by_a_flood_of_large_messages_through_a_rule_is_given_back() {
    let g = grove_tests::Gateway::start(
        r#"[[rules]]
name = "flood"
sql = "SELECT * FROM 'flood/in'"
actions = [{ republish = { topic = "flood/out", qos = 1 } }]
"#,
    );
    let mut barrier = Client::connect("flood-barrier", g.mqtt_port).await;
    barrier.subscribe("flood/barrier", QoS::AtLeastOnce).await;
    let publisher = Client::connect("flood-pub", g.mqtt_port).await;
    let idle = g.rss_kib() << 10;
    // 200 messages of ~1 MB (the broker's payload limit is 1 MiB), as JSON so the rule reads them.
    let payload = format!("{{\"d\":\"{}\"}}", "a".repeat(1_000_000));
    for _ in 0..200 {
        publisher
            .publish("flood/in", QoS::AtLeastOnce, false, payload.clone())
            .await;
    }
    // The router handles a client's publishes in order: once the barrier after them is
    // delivered, the flood has been routed (the rule may have skipped some if it fell behind: the
    // broker's log of a filter is bounded, and this flood is larger).
    publisher
        .publish("flood/barrier", QoS::AtLeastOnce, false, "end")
        .await;
    barrier
        .recv(Duration::from_secs(60))
        .await
        .expect("the barrier after the flood");
    let peak = g.rss_kib() << 10;
    // The issue's bound: back within 2x the idle size 30 s after the burst (before the fix it
    // stayed at 450-530 MB for good).
    let now = eventually(Duration::from_secs(30), || {
        let now = g.rss_kib() << 10;
        (now <= 2 * idle).then_some(now).ok_or_else(|| {
            format!(
                "RSS {} MiB 30 s after the flood (idle {} MiB, peak {} MiB)",
                now >> 20,
                idle >> 20,
                peak >> 20
            )
        })
    });
    eprintln!(
        "idle {} MiB, peak {} MiB, after {} MiB",
        idle >> 20,
        peak >> 20,
        now >> 20
    );
}
