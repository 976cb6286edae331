//! What a policy costs per message: the checks the connection layer makes on every PUBLISH
//! (`may_publish`) and every delivery (`may_receive`) with the built-in device policy, against
//! the allow-all path (no check at all). `cargo bench -p grove-gateway --bench policy`.

use criterion::{criterion_group, criterion_main, Criterion};
use grove_gateway::auth::policy::device_policy;
use std::hint::black_box;

fn policy(c: &mut Criterion) {
    let p = device_policy().resolve("sensor-0042", "sensor-0042");
    let mut g = c.benchmark_group("policy");
    g.bench_function("may_publish allowed (own telemetry)", |b| {
        b.iter(|| p.may_publish(black_box("dt/sensor-0042/telemetry")))
    });
    g.bench_function("may_publish denied (other device)", |b| {
        b.iter(|| p.may_publish(black_box("devices/sensor-0043/cmd")))
    });
    g.bench_function("may_receive shadow delta", |b| {
        b.iter(|| p.may_receive(black_box("$aws/things/sensor-0042/shadow/update/delta")))
    });
    g.bench_function("may_subscribe", |b| {
        b.iter(|| p.may_subscribe(black_box("$aws/things/sensor-0042/shadow/update/+")))
    });
    g.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
