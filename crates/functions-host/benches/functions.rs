//! What a function invocation costs inside the host (wasmtime 48, pooling allocator,
//! copy-on-write images, `InstancePre`, epoch interruption on): cold start from the precompiled
//! cache, a fresh instance per event, a reused instance, and invocations per second on two
//! threads. `cargo bench -p grove-functions-host --bench functions`.
//!
//! The trivial handler is WAT (echo the payload). If the SDK's example functions have been built
//! (`target/functions/*.wasm`, see `functions/`), each is benchmarked too, fresh and reused.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use grove_functions_host::manifest::{InstanceMode, Manifest};
use grove_functions_host::runtime::{Host, HostError, Level, Prepared, Runtime, RuntimeConfig};

/// A host whose effects go nowhere: the benchmark measures the runtime, not the bus.
struct NullHost;

impl Host for NullHost {
    fn publish(&mut self, _: &str, _: &[u8], _: u8) -> Result<(), HostError> {
        Ok(())
    }
    fn shadow_get(&mut self, _: &str, _: Option<&str>, _: Instant) -> Result<Vec<u8>, HostError> {
        Err(HostError::NotFound)
    }
    fn shadow_update(
        &mut self,
        _: &str,
        _: Option<&str>,
        _: &[u8],
        _: Instant,
    ) -> Result<Vec<u8>, HostError> {
        Err(HostError::Unavailable)
    }
    fn kv_get(&mut self, _: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(None)
    }
    fn kv_put(&mut self, _: &str, _: Option<&[u8]>) -> Result<(), HostError> {
        Ok(())
    }
    fn log(&mut self, _: Level, _: &[u8]) {}
    fn denied(&mut self, _: &'static str, _: &str) {}
    fn finish(self: Box<Self>, _: bool) -> Result<(), String> {
        Ok(())
    }
}

const ECHO: &str = r#"(module
  (import "grove" "output" (func $output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "grove_abi_version") (result i32) (i32.const 1))
  (func (export "grove_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "grove_handle") (param i32 i32 i32 i32) (result i32)
    (drop (call $output (local.get 2) (local.get 3))) (i32.const 0)))"#;

const TOPIC: &str = "sensors/s1/telemetry";
const PAYLOAD: &[u8] = br#"{"temperature":21.5,"humidity":40,"ts":1700000000000}"#;

/// The manifest `text` with the instance mode and concurrency under test.
fn manifest(text: &str, instance: InstanceMode, concurrency: u32) -> Arc<Manifest> {
    let mut m = Manifest::parse(text, 64).expect("bench manifest");
    m.instance = instance;
    m.max_concurrency = concurrency;
    Arc::new(m)
}

/// One invocation. An example's handler may answer an error with the no-op host (e.g. no
/// shadow): that is still a full invocation, and the first outcome is printed.
fn invoke(rt: &Runtime, p: &Prepared) -> bool {
    rt.invoke(p, TOPIC, black_box(PAYLOAD), Box::new(NullHost))
        .result
        .is_ok()
}

/// The SDK's built example functions with their manifests, if any (the other half of issue #5).
fn examples() -> Vec<(String, Vec<u8>, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/functions");
    let mut out: Vec<(String, Vec<u8>, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .filter_map(|e| {
            let name = e.path().file_stem()?.to_string_lossy().into_owned();
            let manifest = std::fs::read_to_string(e.path().with_extension("toml")).ok()?;
            Some((name, std::fs::read(e.path()).ok()?, manifest))
        })
        .collect();
    out.sort();
    if out.is_empty() {
        eprintln!(
            "no example functions in {}: only the WAT handler is measured",
            dir.display()
        );
    }
    out
}

/// p50/p99 of single invocations, measured one by one (criterion reports means and medians).
fn percentiles(label: &str, rt: &Runtime, p: &Prepared) {
    let n = 20_000;
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            black_box(invoke(rt, p));
            t.elapsed()
        })
        .collect();
    times.sort();
    eprintln!(
        "{label}: p50 {:?}, p99 {:?} ({n} invocations)",
        times[n / 2],
        times[n * 99 / 100]
    );
}

fn functions(c: &mut Criterion) {
    let cache = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new(&RuntimeConfig {
        max_memory_mb: 64,
        pool_size: 200,
        cache_dir: cache.path().to_owned(),
    });
    let echo = wat::parse_str(ECHO).expect("WAT");
    let mut handlers = vec![(
        "wat-echo".to_owned(),
        echo,
        "name = \"wat-echo\"".to_owned(),
    )];
    handlers.extend(examples());

    let mut g = c.benchmark_group("functions");
    // Every figure is also shown as invocations per second.
    g.throughput(Throughput::Elements(1));
    for (name, wasm, text) in &handlers {
        let fresh = match rt.prepare(wasm, manifest(text, InstanceMode::Fresh, 1)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{name}: not an ABI v1 module ({e}); skipped");
                continue;
            }
        };
        let reuse = rt
            .prepare(wasm, manifest(text, InstanceMode::Reuse, 2))
            .expect("the same module");
        let first = rt.invoke(&fresh, TOPIC, PAYLOAD, Box::new(NullHost));
        eprintln!(
            "{name}: first invocation {:?}",
            first
                .result
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        );
        // Deploy of an already-compiled module (the restart path): map the .cwasm, resolve the
        // imports, check the ABI, then the first invocation.
        g.bench_function(format!("{name}/cold start from cache"), |b| {
            b.iter(|| {
                let p = rt
                    .prepare(wasm, manifest(text, InstanceMode::Fresh, 1))
                    .expect("cached module");
                assert!(p.from_cache);
                invoke(&rt, &p)
            })
        });
        g.bench_function(format!("{name}/fresh instance"), |b| {
            b.iter(|| invoke(&rt, &fresh))
        });
        g.bench_function(format!("{name}/reused instance"), |b| {
            b.iter(|| invoke(&rt, &reuse))
        });
        percentiles(&format!("{name}/fresh instance"), &rt, &fresh);
        percentiles(&format!("{name}/reused instance"), &rt, &reuse);
        // Two threads invoking the same function (max_concurrency 2): invocations per second
        // on the machine's two cores.
        g.bench_function(format!("{name}/reused, 2 threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..2 {
                        s.spawn(|| {
                            for _ in 0..iters.div_ceil(2) {
                                invoke(&rt, &reuse);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, functions);
criterion_main!(benches);
