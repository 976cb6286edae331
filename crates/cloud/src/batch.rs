//! Batching (pure: no IO, no clock; time comes in as `now_ms`): the small messages of a forward
//! route sent as one publish, a JSON array, because clouds bill and throttle per publish (AWS IoT
//! Core: 100 publishes per second per connection, messages metered in 5 KB steps).
//!
//! A route with `batch = { topic, max_messages, max_bytes, max_delay_ms }` is a *lane*. The
//! shell claims messages from the outbox in order and [`Batcher::push`]es each with its lane; the
//! lane's open batch closes when one more would pass `max_messages` or `max_bytes` (the array's
//! size, brackets and commas included), or when its oldest message has waited `max_delay_ms`
//! since it was appended and nothing more is there to read ([`Batcher::poll_publish`]). Then
//! [`Batcher::poll_publish`] hands out what is ready, in order: a message of a route without a
//! lane as itself, a batch as its sequence numbers.
//!
//! A message that carries what only a PUBLISH can carry (a retain flag, MQTT 5 user properties),
//! or whose element alone would pass `max_bytes`, goes up as itself on its own topic ([`Shape`]);
//! the lane's open batch closes first, so the route's order holds.
//!
//! The durable semantics do not change: a message leaves the outbox only when the publish
//! carrying it (its batch) is acknowledged. The window counts publishes, so after a crash or a
//! link drop at most `inflight` publishes go up twice: at most `inflight × max_messages`
//! messages of batched routes. A message sent again is the same element (its `ts` is when it was
//! appended, not when it was sent), so the cloud can recognise it, though the batch around it
//! may differ.
//!
//! The array's elements ([`element`]) are `{"topic": T, "ts": MS, "payload": P}`: `T` the cloud
//! topic the message would have had unbatched, `MS` when the gateway took it (ms since the
//! epoch), `P` the payload itself when it is JSON, otherwise `"payload_base64"` with its base64.
//! Why this shape, for a user of AWS IoT rules: the rule on the batch topic sees one schema
//! whatever the route's filter, each element stands alone (the actions that split an array into
//! records, Firehose's and IoT Analytics' `batchMode`, keep `topic` and `ts` with each record,
//! while `topic()` and `timestamp()` in the rule would only see the batch), and JSON payloads
//! stay JSON, so `SELECT` can reach into them; a bare array of payloads would lose which device
//! (a wildcard route) and when (a batch waits up to `max_delay_ms`, an outage much longer).

use std::collections::VecDeque;
use std::io::Write as _;

use base64::Engine as _;

/// One lane's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages in one batch.
    pub max_messages: usize,
    /// Most bytes of one batch's payload (the JSON array).
    pub max_bytes: usize,
    /// Longest wait of a batch's first message since it was appended.
    pub max_delay_ms: u64,
}

/// How a claimed message of a lane goes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// As an element of `len` bytes of the lane's array.
    Element(usize),
    /// As itself (a retain flag or user properties only a PUBLISH of its own can carry).
    Alone,
}

/// What to publish next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// One message, as itself.
    Single(u64),
    /// Messages of lane `lane`, in order, as one JSON array on the lane's topic.
    Batch {
        /// The lane.
        lane: usize,
        /// The messages, in order.
        seqs: Vec<u64>,
    },
}

#[derive(Debug)]
struct Lane {
    limits: Limits,
    open: Vec<u64>,
    /// The open array's size: brackets, elements, commas.
    bytes: usize,
    /// When the open batch must go (its first message's append time plus the delay).
    due_ms: Option<u64>,
}

impl Lane {
    /// Empties the lane: its open batch's messages, if any.
    fn close(&mut self) -> Option<Vec<u64>> {
        self.bytes = 0;
        self.due_ms = None;
        (!self.open.is_empty()).then(|| std::mem::take(&mut self.open))
    }
}

/// The batches being filled and the publishes ready to go.
#[derive(Debug)]
pub struct Batcher {
    lanes: Vec<Lane>,
    ready: VecDeque<Publish>,
}

impl Batcher {
    /// A batcher for lanes with these bounds (lane `i` is `lanes[i]`).
    pub fn new(lanes: &[Limits]) -> Batcher {
        Batcher {
            lanes: lanes
                .iter()
                .map(|&limits| Lane {
                    limits,
                    open: Vec::new(),
                    bytes: 0,
                    due_ms: None,
                })
                .collect(),
            ready: VecDeque::new(),
        }
    }

    /// A claimed message, in sequence order: `lane` is its route's lane (`None`: the route does
    /// not batch), `enqueued_ms` when it was appended.
    pub fn push(&mut self, lane: Option<usize>, seq: u64, shape: Shape, enqueued_ms: u64) {
        let Some(l) = lane.filter(|l| *l < self.lanes.len()) else {
            self.ready.push_back(Publish::Single(seq));
            return;
        };
        let limits = self.lanes[l].limits;
        let len = match shape {
            Shape::Element(len) if len + 2 <= limits.max_bytes => len,
            // Alone, after what the lane holds.
            _ => {
                self.close(l);
                self.ready.push_back(Publish::Single(seq));
                return;
            }
        };
        let lane = &self.lanes[l];
        if !lane.open.is_empty()
            && (lane.open.len() >= limits.max_messages || lane.bytes + 1 + len > limits.max_bytes)
        {
            self.close(l);
        }
        let lane = &mut self.lanes[l];
        lane.bytes += if lane.open.is_empty() {
            2 + len
        } else {
            1 + len
        };
        lane.open.push(seq);
        lane.due_ms
            .get_or_insert(enqueued_ms.saturating_add(limits.max_delay_ms));
        if lane.open.len() >= limits.max_messages {
            self.close(l);
        }
    }

    /// The next publish that may go at `now_ms`: what is ready, in order; else, when nothing more
    /// is there to read (`more_to_read` false, which could still join a batch), the batch that
    /// has waited longest, if it is due.
    pub fn poll_publish(&mut self, now_ms: u64, more_to_read: bool) -> Option<Publish> {
        if let Some(p) = self.ready.pop_front() {
            return Some(p);
        }
        if more_to_read {
            return None;
        }
        let (l, _) = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| lane.due_ms.map(|due| (i, due)))
            .filter(|(_, due)| *due <= now_ms)
            .min_by_key(|(_, due)| *due)?;
        self.close(l);
        self.ready.pop_front()
    }

    /// Most messages one publish carries: the largest lane's `max_messages` (1 without lanes).
    pub fn max_messages(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| l.limits.max_messages)
            .max()
            .unwrap_or(1)
    }

    /// When the next open batch is due (ms since the epoch), if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.lanes.iter().filter_map(|l| l.due_ms).min()
    }

    /// The session ended: everything held is read again, in order, in the next one.
    pub fn clear(&mut self) {
        self.ready.clear();
        for lane in &mut self.lanes {
            lane.close();
        }
    }

    fn close(&mut self, l: usize) {
        if let Some(seqs) = self.lanes[l].close() {
            self.ready.push_back(Publish::Batch { lane: l, seqs });
        }
    }
}

/// One message as an element of a batch (see the module doc for the shape and why):
/// `{"topic":…,"ts":…,"payload":…}` or `{"topic":…,"ts":…,"payload_base64":"…"}`.
pub fn element(topic: &str, payload: &[u8], ts_ms: u64) -> Vec<u8> {
    let json = serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok();
    let mut out = Vec::with_capacity(topic.len() + payload.len() + 48);
    out.extend_from_slice(b"{\"topic\":");
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, topic);
    let _ = write!(out, ",\"ts\":{ts_ms}");
    if json {
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(payload.trim_ascii());
    } else {
        out.extend_from_slice(b",\"payload_base64\":\"");
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(payload)
                .as_bytes(),
        );
        out.push(b'"');
    }
    out.push(b'}');
    out
}

/// A batch's payload: its elements as a JSON array.
pub fn array<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, e) in elements.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::{json, Value};

    const LANE: Limits = Limits {
        max_messages: 3,
        max_bytes: 100,
        max_delay_ms: 1000,
    };

    fn drain(b: &mut Batcher, now: u64, more: bool) -> Vec<Publish> {
        std::iter::from_fn(|| b.poll_publish(now, more)).collect()
    }

    fn batch(lane: usize, seqs: &[u64]) -> Publish {
        Publish::Batch {
            lane,
            seqs: seqs.to_vec(),
        }
    }

    #[test]
    fn a_batch_closes_at_its_message_count() {
        let mut b = Batcher::new(&[LANE]);
        for seq in 1..=7 {
            b.push(Some(0), seq, Shape::Element(10), 0);
        }
        assert_eq!(
            drain(&mut b, 0, true),
            [batch(0, &[1, 2, 3]), batch(0, &[4, 5, 6])]
        );
        assert_eq!(drain(&mut b, 999, false), [], "7 is not due before 1000");
        assert_eq!(b.poll_timeout(), Some(1000));
        assert_eq!(drain(&mut b, 1000, false), [batch(0, &[7])]);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_batch_never_passes_its_byte_bound_brackets_and_commas_included() {
        // [e1,e2] with elements of 48 bytes: 2 + 48 + 1 + 48 = 99 <= 100; a third would not fit.
        let mut b = Batcher::new(&[Limits {
            max_messages: 100,
            ..LANE
        }]);
        for seq in 1..=3 {
            b.push(Some(0), seq, Shape::Element(48), 0);
        }
        assert_eq!(drain(&mut b, 0, true), [batch(0, &[1, 2])]);
        // Exactly the bound: [e] with a 98-byte element is 100 bytes.
        let mut b = Batcher::new(&[LANE]);
        b.push(Some(0), 1, Shape::Element(98), 0);
        b.push(Some(0), 2, Shape::Element(1), 0);
        assert_eq!(drain(&mut b, 0, true), [batch(0, &[1])]);
    }

    #[test]
    fn a_message_too_big_for_a_batch_or_carrying_a_retain_flag_goes_alone_after_the_open_batch() {
        let mut b = Batcher::new(&[LANE]);
        b.push(Some(0), 1, Shape::Element(10), 0);
        b.push(Some(0), 2, Shape::Element(99), 0);
        b.push(Some(0), 3, Shape::Element(10), 0);
        b.push(Some(0), 4, Shape::Alone, 0);
        b.push(Some(0), 5, Shape::Alone, 0);
        assert_eq!(
            drain(&mut b, 0, true),
            [
                batch(0, &[1]),
                Publish::Single(2),
                batch(0, &[3]),
                Publish::Single(4),
                Publish::Single(5)
            ]
        );
    }

    #[test]
    fn a_due_batch_waits_while_more_can_be_read_and_lanes_go_oldest_first() {
        let other = Limits {
            max_delay_ms: 100,
            ..LANE
        };
        let mut b = Batcher::new(&[LANE, other]);
        b.push(Some(0), 1, Shape::Element(10), 0);
        b.push(None, 2, Shape::Element(10), 0);
        b.push(Some(1), 3, Shape::Element(10), 500);
        assert_eq!(drain(&mut b, 5000, true), [Publish::Single(2)]);
        // Lane 0 is due at 1000, lane 1 at 600.
        assert_eq!(b.poll_timeout(), Some(600));
        assert_eq!(drain(&mut b, 5000, false), [batch(1, &[3]), batch(0, &[1])]);
    }

    #[test]
    fn a_cleared_batcher_holds_nothing() {
        let mut b = Batcher::new(&[LANE]);
        b.push(Some(0), 1, Shape::Element(10), 0);
        b.push(None, 2, Shape::Element(10), 0);
        b.clear();
        assert_eq!(drain(&mut b, u64::MAX, false), []);
        assert_eq!(b.poll_timeout(), None);
    }

    /// A property of the core, on a virtual clock: whatever arrives, every message goes up
    /// exactly once, each lane's messages in order, and no batch passes its bounds.
    #[test]
    fn every_message_goes_up_once_in_order_within_the_bounds() {
        use proptest::prelude::*;
        let limits = [
            Limits {
                max_messages: 4,
                max_bytes: 64,
                max_delay_ms: 50,
            },
            Limits {
                max_messages: 50,
                max_bytes: 500,
                max_delay_ms: 0,
            },
        ];
        let arrival = (
            proptest::option::of(0..3usize),
            1..80usize,
            0..3u8,
            0..40u64,
        );
        proptest!(|(arrivals in proptest::collection::vec(arrival, 1..200))| {
            let mut b = Batcher::new(&limits);
            let mut now = 0;
            let mut lane_of = Vec::new();
            let mut out = Vec::new();
            let sizes: Vec<usize> = arrivals.iter().map(|a| a.1).collect();
            for (seq, &(lane, len, alone, wait)) in arrivals.iter().enumerate() {
                let shape = if alone == 0 { Shape::Alone } else { Shape::Element(len) };
                b.push(lane, seq as u64, shape, now);
                lane_of.push(lane.filter(|l| *l < limits.len()));
                now += wait;
                out.extend(std::iter::from_fn(|| b.poll_publish(now, true)));
                if wait > 20 {
                    out.extend(std::iter::from_fn(|| b.poll_publish(now, false)));
                }
            }
            out.extend(std::iter::from_fn(|| b.poll_publish(u64::MAX, false)));
            let mut seen = Vec::new();
            for p in &out {
                match p {
                    Publish::Single(s) => seen.push(*s),
                    Publish::Batch { lane, seqs } => {
                        let l = limits[*lane];
                        let bytes: usize = seqs.iter().map(|s| sizes[*s as usize] + 1).sum::<usize>() + 1;
                        prop_assert!(seqs.len() <= l.max_messages && bytes <= l.max_bytes);
                        prop_assert!(seqs.iter().all(|s| lane_of[*s as usize] == Some(*lane)));
                        seen.extend(seqs);
                    }
                }
            }
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..arrivals.len() as u64).collect::<Vec<_>>());
            for lane in [None, Some(0), Some(1)] {
                let order: Vec<u64> = seen.iter().copied().filter(|s| lane_of[*s as usize] == lane).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
            }
        });
    }

    #[test]
    fn elements_keep_json_payloads_as_json_and_others_as_base64() {
        let cases: [(&[u8], Value); 4] = [
            (
                br#"{"t": 21.5}"#,
                json!({"topic": "s/a \"b\"", "ts": 7, "payload": {"t": 21.5}}),
            ),
            (
                b" 42\n",
                json!({"topic": "s/a \"b\"", "ts": 7, "payload": 42}),
            ),
            (
                b"on",
                json!({"topic": "s/a \"b\"", "ts": 7, "payload_base64": "b24="}),
            ),
            (
                &[0xff, 0x00],
                json!({"topic": "s/a \"b\"", "ts": 7, "payload_base64": "/wA="}),
            ),
        ];
        for (payload, want) in cases {
            let e = element("s/a \"b\"", payload, 7);
            let got: Value = serde_json::from_slice(&e).expect("an element is JSON");
            assert_eq!(got, want);
        }
        let a = array([&b"1"[..], &b"{}"[..]]);
        assert_eq!(a, b"[1,{}]");
        assert_eq!(array(std::iter::empty()), b"[]");
    }
}
