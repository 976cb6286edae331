//! Criterion benchmarks for grove-rules: compiling, evaluating the issue's typical rule, windows, and
//! topic matching for 1 to 1,000 rules (with a linear scan beside the index for comparison).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-rules cargo bench -p grove-rules --bench rules`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use grove_rules::{topic_matches, Context, Message, Rule, RuleIndex};

const TYPICAL: &str = "SELECT temp, topic(2) AS id FROM 'sensors/+/t' WHERE temp > 30";
const COMPLEX: &str = "SELECT *, upper(status) AS s, {'lat': get(pos, 0), 'lon': get(pos, 1)} AS geo, \
    CASE level WHEN 1 THEN 'low' WHEN 2 THEN 'mid' ELSE 'high' END AS band, \
    round((temp - 32) * 5 / 9) AS celsius FROM 'sensors/+/t' WHERE temp > 30 AND startswith(topic(2), 'dev')";
const PAYLOAD: &[u8] =
    br#"{"temp": 35.5, "status": "ok", "pos": [47.6, -122.3], "level": 2, "fw": "1.2.3"}"#;

fn uuid() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.throughput(Throughput::Elements(1));
    g.bench_function("typical", |b| b.iter(|| Rule::compile(black_box(TYPICAL))));
    g.bench_function("complex", |b| b.iter(|| Rule::compile(black_box(COMPLEX))));
    g.finish();
}

fn evaluate(c: &mut Criterion) {
    let typical = Rule::compile(TYPICAL).expect("compiles");
    let complex = Rule::compile(COMPLEX).expect("compiles");
    let msg = Message::new("sensors/dev7/t", "dev7", PAYLOAD.to_vec());
    let cold = Message::new("sensors/dev7/t", "dev7", br#"{"temp": 20}"#.to_vec());
    let ctx = Context::new(1_700_000_000_000, &uuid);
    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("typical", |b| {
        b.iter(|| typical.evaluate(black_box(&msg), &ctx))
    });
    g.bench_function("typical_where_false", |b| {
        b.iter(|| typical.evaluate(black_box(&cold), &ctx))
    });
    g.bench_function("typical_with_payload_parse", |b| {
        b.iter(|| {
            let m = Message::new("sensors/dev7/t", "dev7", black_box(PAYLOAD).to_vec());
            typical.evaluate(&m, &ctx)
        })
    });
    g.bench_function("complex", |b| {
        b.iter(|| complex.evaluate(black_box(&msg), &ctx))
    });
    g.finish();
}

fn window(c: &mut Criterion) {
    let rule = Rule::compile(
        "SELECT avg(temp) AS t, max(temp) AS tmax, count(*) AS n, topic(2) AS device \
         FROM 'sensors/+/t' GROUP BY TUMBLINGWINDOW(ss, 60), topic(2)",
    )
    .expect("compiles");
    let msgs: Vec<Message> = (0..16)
        .map(|i| Message::new(format!("sensors/dev{i}/t"), "d", PAYLOAD.to_vec()))
        .collect();
    let mut g = c.benchmark_group("window");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tumbling_on_message_16_groups", |b| {
        let mut w = rule.window().expect("windowed");
        let mut now = 0i64;
        let mut i = 0usize;
        b.iter(|| {
            // One message per millisecond: a window closes (and emits 16 rows) every 60,000 messages.
            now += 1;
            i = (i + 1) % msgs.len();
            w.on_message(&msgs[i], &Context::new(now, &uuid))
        })
    });
    g.finish();
}

/// `n` rules with distinct per-device filters plus a few wildcard ones, as a fleet's rules look.
fn filters(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("sensors/dev{i}/t"),
            1 => format!("sensors/dev{i}/#"),
            2 => format!("site{i}/+/t"),
            _ => format!("$aws/things/dev{i}/shadow/update/#"),
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let topic = "sensors/dev8/t";
    let mut g = c.benchmark_group("match");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 10, 100, 1000] {
        let fs = filters(n);
        let mut index = RuleIndex::new();
        for (id, f) in fs.iter().enumerate() {
            index.insert(f, id).expect("valid filter");
        }
        index.insert("sensors/+/t", n).expect("valid filter");
        g.bench_with_input(BenchmarkId::new("index", n), &n, |b, _| {
            b.iter(|| {
                let mut hits = 0usize;
                index.for_each_match(black_box(topic), |_| hits += 1);
                hits
            })
        });
        g.bench_with_input(BenchmarkId::new("linear_scan", n), &n, |b, _| {
            b.iter(|| {
                fs.iter()
                    .filter(|f| topic_matches(f, black_box(topic)))
                    .count()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, compile, evaluate, window, matching);
criterion_main!(benches);
