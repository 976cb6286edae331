//! What device security costs: per message, the checks the connection layer makes on every
//! PUBLISH (`may_publish`) and every delivery (`may_receive`) with the built-in device policy (an
//! allow-all listener makes none); per password CONNECT, one argon2 verification with the
//! parameters `grove device add` hashes with. `cargo bench -p grove-auth --bench policy`.

use criterion::{criterion_group, criterion_main, Criterion};
use grove_auth::policy::device_policy;
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

fn password(c: &mut Criterion) {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let hash = grove_auth::identity::hash_password("correct horse").expect("hash");
    let parsed = PasswordHash::new(&hash).expect("a PHC string");
    let mut g = c.benchmark_group("password");
    g.sample_size(10);
    g.bench_function("argon2 verify (one password CONNECT)", |b| {
        b.iter(|| {
            argon2::Argon2::default()
                .verify_password(black_box(b"correct horse"), &parsed)
                .is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, policy, password);
criterion_main!(benches);
