//! Flow control towards subscribers and back to publishers: the bound on deliveries in flight,
//! and backpressure (a congested subscriber holds its publishers' acks; a stuck one does so once,
//! for the hold, and then never). Issue 14: "flow control that slows publishers at the source
//! without turning acknowledged messages into seconds of internal queue, and without letting one
//! stuck subscriber stall or starve the others".

use super::*;

/// Packet ids of the PUBACKs `conn` has received, in order.
fn pubacks(h: &mut H, conn: ConnId) -> Vec<u16> {
    h.take(conn)
        .into_iter()
        .filter_map(|p| match p {
            Outbound::PubAck(a) => Some(a.pkid),
            _ => None,
        })
        .collect()
}

/// A subscriber "s" to "t" at QoS 1 that takes one delivery at a time (Receive Maximum 1),
/// connected as `c` says, and a publisher "p".
fn one_at_a_time(h: &mut H, c: Connect) -> (ConnId, ConnId) {
    h.subscriber_and_publisher(
        Connect {
            receive_maximum: Some(1),
            ..c
        },
        Q1,
    )
}

/// Publishes "0", "1", ... (`range`) from `p` on "t" at QoS 1; their packet ids.
fn publish_range(h: &mut H, p: ConnId, range: std::ops::Range<u32>) -> Vec<u16> {
    range.map(|i| h.pub_(p, "t", &i.to_string(), Q1)).collect()
}

/// Backpressure at 4 queued messages, a hold of at most 1 s.
fn congestible() -> Config {
    Config {
        backpressure_messages: 4,
        backpressure_max_hold_ms: 1_000,
        ..Config::default()
    }
}

/// A 3.1.1 client declares no Receive Maximum; it gets `max_inflight_out` deliveries in flight
/// at most, and the rest waits in its bounded queue (before: up to 65,535 in flight, outside the
/// queue's bounds).
#[test]
fn deliveries_in_flight_are_bounded_for_a_client_without_receive_maximum() {
    let mut h = H::with(Config {
        max_inflight_out: 5,
        ..Config::default()
    });
    let (s, _) = h.connect(c3("s", true));
    h.sub(s, "t", opts(Q1), None);
    let (p, _) = h.connect(c5("p"));
    for i in 0..20 {
        h.pub_(p, "t", &i.to_string(), Q1);
    }
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["0", "1", "2", "3", "4"]);
    assert_eq!(h.r.session_backlog("s"), Some((15, 5)));
    // Each ack makes room for exactly one more, in order.
    h.ack(s, &d[0]);
    assert_eq!(payloads(&h.deliveries(s)), ["5"]);
}

/// The same bound caps an MQTT 5 client's Receive Maximum (3.1.2.11.3 lets a server send fewer).
#[test]
fn max_inflight_out_caps_a_larger_receive_maximum() {
    let mut h = H::with(Config {
        max_inflight_out: 3,
        ..Config::default()
    });
    let (s, p) = h.subscriber_and_publisher(
        Connect {
            receive_maximum: Some(1000),
            ..c5("s")
        },
        Q1,
    );
    for i in 0..10 {
        h.pub_(p, "t", &i.to_string(), Q1);
    }
    assert_eq!(h.deliveries(s).len(), 3);
}

/// A subscriber over its backpressure mark holds the acks of the publishers whose QoS 1
/// messages reach it, in order [MQTT-4.6.0-2], until it has caught up to half the mark; then they
/// all go at once. Nothing is dropped.
#[test]
fn a_congested_subscriber_holds_its_publishers_acks_until_it_catches_up() {
    let mut h = H::with(congestible());
    let (s, p) = one_at_a_time(&mut h, c5("s"));
    let ids = publish_range(&mut h, p, 0..8);
    // The 4th message makes the queue 4 long: its ack and every later one wait.
    assert_eq!(pubacks(&mut h, p), ids[..3]);
    assert_eq!(h.r.gauges().publishers_held, 1);
    let mut got = Vec::new();
    while got.len() < 8 {
        let d = h.deliveries(s);
        assert_eq!(d.len(), 1, "one in flight at a time");
        h.ack(s, &d[0]);
        got.extend(payloads(&d));
        let acks = pubacks(&mut h, p);
        // Acknowledging one sends the next: with 5 acknowledged, 6 were sent and the queue is
        // down to half the mark (2).
        match got.len() {
            1..=4 => assert!(acks.is_empty(), "held at {}", got.len()),
            5 => assert_eq!(acks, ids[3..]),
            _ => assert!(acks.is_empty()),
        }
    }
    assert_eq!(got, ["0", "1", "2", "3", "4", "5", "6", "7"]);
    assert_eq!(h.r.stats().acks_backpressured, 5);
    assert_eq!(h.r.stats().dropped_queue_full, 0);
    assert_eq!(h.r.gauges().publishers_held, 0);
}

/// A subscriber that never acknowledges holds its publishers once, for the hold
/// (`backpressure_max_hold_ms`); it is then stalled: later publishes are acknowledged at once
/// and its queue fills to its bound (drops counted) instead of stalling the site.
#[test]
fn a_stuck_subscriber_holds_publishers_once_for_the_hold_and_then_never() {
    let mut h = H::with(Config {
        queue_max_messages: 10,
        ..congestible()
    });
    let (s, p) = one_at_a_time(&mut h, c5("s"));
    let ids = publish_range(&mut h, p, 0..6);
    assert_eq!(h.deliveries(s).len(), 1);
    assert_eq!(pubacks(&mut h, p), ids[..3]);
    // Not yet: 999 ms.
    h.now = h.now.plus_millis(999);
    h.r.handle_timeout(h.now);
    assert!(pubacks(&mut h, p).is_empty());
    h.advance(1);
    assert_eq!(pubacks(&mut h, p), ids[3..]);
    assert_eq!(h.r.stats().backpressure_stalls, 1);
    let later = publish_range(&mut h, p, 6..20);
    assert_eq!(
        pubacks(&mut h, p),
        later,
        "a stalled subscriber holds nobody"
    );
    assert_eq!(h.r.stats().dropped_queue_full, 20 - 1 - 10);
    assert_eq!(h.r.stats().backpressure_stalls, 1);
}

/// Only the publishers whose messages reach the congested subscriber wait: a publisher on
/// another topic, and a QoS 0 subscription to the same topic, hold nobody.
#[test]
fn backpressure_holds_only_the_publishers_of_the_congested_subscriber() {
    let mut h = H::with(congestible());
    let (s, p) = one_at_a_time(&mut h, c5("s"));
    let (other, _) = h.connect(c5("other"));
    h.sub(other, "u", opts(Q1), None);
    let (lazy, _) = h.connect(c5("lazy"));
    h.sub(lazy, "u", opts(Q0), None);
    let (q, _) = h.connect(c5("q"));
    for i in 0..6 {
        h.pub_(p, "t", &i.to_string(), Q1);
    }
    assert_eq!(h.r.gauges().publishers_held, 1);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(h.pub_(q, "u", &i.to_string(), Q1));
        for d in h.deliveries(other) {
            h.ack(other, &d);
        }
    }
    assert_eq!(pubacks(&mut h, q), ids);
    assert_eq!(h.deliveries(lazy).len(), 20);
    assert_eq!(h.r.gauges().publishers_held, 1);
    let _ = h.deliveries(s);
}

/// The session that held a publisher goes offline: an offline session holds nobody back, so the
/// held acks go at once.
#[test]
fn a_congested_subscriber_that_disconnects_releases_its_publishers() {
    let mut h = H::with(congestible());
    let (s, p) = one_at_a_time(&mut h, persistent("s", 600));
    let ids = publish_range(&mut h, p, 0..6);
    h.commit_all();
    assert_eq!(pubacks(&mut h, p), ids[..3]);
    h.disconnect(s, reason::SUCCESS, None);
    h.commit_all();
    assert_eq!(pubacks(&mut h, p), ids[3..]);
    assert_eq!(h.r.gauges().publishers_held, 0);
}

/// A publisher that does not wait for its acks (MQTT 3.1.1 declares no limit) is not slowed by
/// holding them: beyond the server's Receive Maximum of held acks its hold ends, so what the gateway
/// holds for it stays bounded, and the subscriber counts as stalled.
#[test]
fn held_acks_of_a_publisher_that_does_not_wait_for_them_are_bounded() {
    let mut h = H::with(Config {
        receive_maximum: 10,
        ..congestible()
    });
    let (s, _) = h.connect(Connect {
        receive_maximum: Some(1),
        ..c5("s")
    });
    h.sub(s, "t", opts(Q1), None);
    let (p, _) = h.connect(c3("p", true));
    let ids = publish_range(&mut h, p, 0..20);
    // 3 acked at once, then 11 held and released together; the rest at once (stalled).
    assert_eq!(pubacks(&mut h, p), ids);
    assert_eq!(h.r.stats().acks_backpressured, 11);
    assert_eq!(h.r.stats().backpressure_stalls, 1);
}

/// Holds the shell has been told of for `conn`, in order.
fn holds(h: &mut H, conn: ConnId) -> Vec<bool> {
    std::iter::from_fn(|| h.r.poll_hold())
        .filter(|(c, _)| *c == conn)
        .map(|(_, held)| held)
        .collect()
}

/// QoS 0 has no ack to hold: a QoS 0 publisher to a congested subscriber is held by the shell
/// not reading it (`poll_hold`) until the subscriber has caught up.
#[test]
fn a_congested_subscriber_holds_its_qos_0_publisher_from_being_read() {
    let mut h = H::with(congestible());
    let (s, p) = h.subscriber_and_publisher(c5("s"), Q0);
    for i in 0..3 {
        h.pub_(p, "t", &i.to_string(), Q0);
    }
    assert!(holds(&mut h, p).is_empty(), "3 queued: below the mark");
    h.pub_(p, "t", "3", Q0);
    assert_eq!(holds(&mut h, p), [true]);
    assert_eq!(h.deliveries(s).len(), 4);
    assert_eq!(holds(&mut h, p), [false]);
}

/// A QoS 0 subscriber whose queue does not drain (its socket takes nothing) is stalled after the
/// hold, and the publisher is read again.
#[test]
fn a_stuck_qos_0_subscriber_holds_its_publisher_once_for_the_hold() {
    let mut h = H::with(congestible());
    let (_s, p) = h.subscriber_and_publisher(c5("s"), Q0);
    for i in 0..4 {
        h.pub_(p, "t", &i.to_string(), Q0);
    }
    assert_eq!(holds(&mut h, p), [true]);
    h.advance(1);
    assert_eq!(holds(&mut h, p), [false]);
    assert_eq!(h.r.stats().backpressure_stalls, 1);
    for i in 4..20 {
        h.pub_(p, "t", &i.to_string(), Q0);
    }
    assert!(
        holds(&mut h, p).is_empty(),
        "a stalled subscriber holds nobody"
    );
}
