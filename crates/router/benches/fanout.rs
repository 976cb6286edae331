//! What the router core costs per message, without sockets or codecs: QoS 0 publishes to 100
//! topics matched by one wildcard filter (`sensors/+/temp`) of 10 subscribers, each publish drained
//! to its 10 deliveries as the shell would. `cargo bench -p grove-router --bench fanout`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use grove_router::{
    ConnId, Connect, Inbound, Instant, MessageProperties, Outbound, Publish, QoS, Router,
    SubOptions, Subscribe, Version,
};

const SUBSCRIBERS: u32 = 10;

/// Sends what is ready and counts the deliveries.
fn drain(r: &mut Router, now: Instant) -> usize {
    let mut delivered = 0;
    while let Some(conn) = r.poll_ready() {
        while let Some(o) = r.poll_transmit(now, conn) {
            delivered += usize::from(matches!(o, Outbound::Publish(_)));
        }
    }
    delivered
}

fn fanout(c: &mut Criterion) {
    let now = Instant(0);
    let mut r = Router::new(Default::default());
    for i in 0..SUBSCRIBERS {
        let conn = ConnId(u64::from(i));
        r.connect(now, conn, Connect::new(format!("s{i}"), Version::V5))
            .expect("accepted");
        r.handle(
            now,
            conn,
            Inbound::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![("sensors/+/temp".into(), SubOptions::qos(QoS::AtMostOnce))],
                subscription_id: None,
            }),
        );
    }
    let publisher = ConnId(u64::from(SUBSCRIBERS));
    r.connect(now, publisher, Connect::new("p", Version::V5))
        .expect("accepted");
    drain(&mut r, now);
    let topics: Vec<Arc<str>> = (0..100)
        .map(|i| format!("sensors/{i}/temp").into())
        .collect();
    let payload = bytes::Bytes::from_static(b"21.5");
    let mut next = 0;
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(u64::from(SUBSCRIBERS)));
    g.bench_function("QoS 0 publish to 10 wildcard subscribers, drained", |b| {
        b.iter(|| {
            next = (next + 1) % topics.len();
            r.handle(
                now,
                publisher,
                Inbound::Publish(Publish {
                    topic: topics[next].clone(),
                    payload: payload.clone(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    dup: false,
                    pkid: 0,
                    topic_alias: None,
                    properties: MessageProperties::default(),
                }),
            );
            let delivered = drain(&mut r, now);
            assert_eq!(delivered, SUBSCRIBERS as usize);
            black_box(delivered)
        })
    });
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
