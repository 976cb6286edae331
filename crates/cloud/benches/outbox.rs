//! The cloud outbox's append path: messages per second committed to SQLite (`synchronous=FULL`,
//! one transaction per batch, as the cloud component writes a bus batch), the read-back of a page
//! for sending plus the delete of acknowledged messages, and the pure admission policy.
//! `cargo bench -p grove-cloud --bench outbox`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use grove_cloud::outbox::{FullPolicy, Limits, Queue};
use grove_cloud::queries::CloudQueries;
use grove_store::{OutboxMessage, Store};
use std::hint::black_box;

/// Messages per appended batch (a busy bus batch).
const BATCH: u64 = 1000;

fn messages(first: u64) -> Vec<OutboxMessage> {
    (first..first + BATCH)
        .map(|seq| OutboxMessage {
            seq,
            topic: format!("site-1/sensors/d{}/telemetry", seq % 100),
            payload: Bytes::from(vec![b'x'; 100]),
            enqueued_ms: 0,
            retain: false,
            user_properties: Vec::new(),
            batch: None,
        })
        .collect()
}

fn outbox(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, thread) = Store::open(dir.path()).expect("store");
    let mut g = c.benchmark_group("outbox");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(BATCH));
    let mut next = 1u64;
    g.bench_function("append 1000 x 100 B, one commit", |b| {
        b.iter_batched(
            || {
                let batch = messages(next);
                next += BATCH;
                batch
            },
            |batch| {
                rt.block_on(store.outbox_write(batch, Vec::new()))
                    .expect("append")
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("load 1000 + delete 1000 (send and ack)", |b| {
        b.iter_batched(
            || {
                let first = next;
                next += BATCH;
                rt.block_on(store.outbox_write(messages(first), Vec::new()))
                    .expect("append");
                first
            },
            |first| {
                rt.block_on(async {
                    let page = store
                        .outbox_load(first - 1, BATCH as usize)
                        .await
                        .expect("load");
                    let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
                    assert_eq!(seqs.len() as u64, BATCH);
                    store.outbox_write(Vec::new(), seqs).await.expect("delete");
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("admit 1000 (pure policy, full, drop-oldest)", |b| {
        let limits = Limits {
            max_messages: 10_000,
            max_bytes: 1 << 30,
        };
        let mut q = Queue::new(limits, FullPolicy::DropOldest, Vec::new());
        let sizes = vec![130u64; BATCH as usize];
        b.iter(|| black_box(q.admit(black_box(&sizes), 0)))
    });
    g.finish();
    rt.block_on(thread.close());
}

criterion_group!(benches, outbox);
criterion_main!(benches);
