//! Issue 14's restart figure: 10,000 persistent sessions holding 100 queued QoS 1 messages each
//! (a million distinct messages of 64-256 B, as sensors publish: no message shared between
//! sessions, the costly case) restored after a restart in under a second. Measured from a closed
//! database to a router holding every session: open the store, `load_sessions` (one scan per
//! table), `Router::restore`. `cargo bench -p grove-broker --bench sessions`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use grove_broker::sessions::SessionQueries;
use grove_router::{
    Config, Instant, Message, MessageProperties, QoS, Router, StorageWrite, SubOptions, Version,
};
use grove_store::Store;

const SESSIONS: u64 = 10_000;
const MESSAGES: u64 = 100;
/// Wall-clock Unix milliseconds of the restart.
const NOW: Instant = Instant(1_765_000_000_000);

/// The writes the router makes for one offline session of a sensor fleet's command consumer and
/// the messages queued for it while it was away.
fn session_writes(i: u64, next_id: &mut u64, seed: &mut u64) -> Vec<StorageWrite> {
    let client_id: Arc<str> = format!("device-{i:05}").into();
    let topic: Arc<str> = format!("devices/{i:05}/cmd").into();
    let mut w = vec![
        StorageWrite::Session {
            client_id: client_id.clone(),
            version: Version::V5,
            expiry_interval: 86_400,
        },
        StorageWrite::Subscribed {
            client_id: client_id.clone(),
            filter: topic.clone(),
            options: SubOptions::qos(QoS::AtLeastOnce),
            id: None,
        },
        StorageWrite::Disconnected {
            client_id: client_id.clone(),
            at: Instant(NOW.0 - 60_000),
            will: None,
        },
    ];
    for _ in 0..MESSAGES {
        // A small LCG: payload sizes spread over 64-256 B, the same every run.
        *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = 64 + (*seed >> 33) as usize % 193;
        let message = Arc::new(Message {
            id: *next_id,
            topic: topic.clone(),
            payload: Bytes::from(vec![b'7'; len]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: "gateway".into(),
        });
        *next_id += 1;
        w.push(StorageWrite::Enqueued {
            client_id: client_id.clone(),
            message,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
        });
    }
    w
}

fn restore(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let (store, thread) = Store::open(dir.path()).expect("open");
        let (mut next_id, mut seed) = (1, 1);
        for chunk in 0..SESSIONS / 100 {
            let writes = (chunk * 100..(chunk + 1) * 100)
                .flat_map(|i| session_writes(i, &mut next_id, &mut seed))
                .collect();
            store.persist(writes).await.expect("persist");
        }
        thread.close().await;
    });
    // Phases of one restart, wall clock and the process's CPU time (utime + stime, all threads:
    // the store's owner thread reads SQLite), printed once: on a shared machine the CPU time says
    // what a quiet one would see.
    for _ in 0..3 {
        let cpu = || {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Duration::from_millis((ticks(11) + ticks(12)) * 10)
        };
        let (t0, c0) = (std::time::Instant::now(), cpu());
        let loaded = rt.block_on(async {
            let (store, thread) = Store::open(dir.path()).expect("open");
            let loaded = store.load_sessions().await.expect("load");
            thread.close().await;
            loaded
        });
        let (t1, c1) = (std::time::Instant::now(), cpu());
        let mut router = Router::new(Config::default());
        router.restore(NOW, loaded.0, loaded.1);
        let (t2, c2) = (std::time::Instant::now(), cpu());
        eprintln!(
            "open+load {:?} (cpu {:?}), restore {:?} (cpu {:?})",
            t1 - t0,
            c1 - c0,
            t2 - t1,
            c2 - c1
        );
        drop(router);
    }
    let mut g = c.benchmark_group("sessions");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("restart_10k_sessions_x_100_messages", |b| {
        b.iter_with_large_drop(|| {
            rt.block_on(async {
                let (store, thread) = Store::open(dir.path()).expect("open");
                let (sessions, retained) = store.load_sessions().await.expect("load");
                thread.close().await;
                let mut router = Router::new(Config::default());
                router.restore(NOW, sessions, retained);
                assert_eq!(router.gauges().sessions, SESSIONS as usize);
                assert_eq!(
                    router.gauges().queued_messages,
                    (SESSIONS * MESSAGES) as usize
                );
                router
            })
        })
    });
    g.finish();
}

criterion_group!(benches, restore);
criterion_main!(benches);
