//! The outbox's policy and ordering (pure: no IO, no clock; time comes in as `now_ms`).
//!
//! Every message bound for the cloud is appended to the durable outbox (`store.rs`, table
//! `cloud_outbox`) before anything else happens to it, and it leaves the outbox only when the cloud
//! broker has acknowledged it (PUBACK) or when the full policy drops it. [`Queue`] is the in-memory
//! index of what the table holds (sequence number, size, age, whether it is in flight): it decides
//! admission when the outbox is full, which messages to send next, and what a reconnect resends.
//! The payloads themselves stay in SQLite and are read back in pages when they are sent.
//!
//! Order: messages are claimed for sending in sequence order, one session at a time; a new
//! session starts again at the oldest unacknowledged message. Claimed messages go up in that
//! order, except that a forward route that batches holds its messages for a while
//! ([`crate::batch`]): order is kept per route (so per topic), not between routes. The only
//! duplicates are the publishes that were in flight when a session ended: at most `inflight`
//! per reconnect (a batch counts as one publish).
//!
//! [`PacketIds`] maps rumqttc's packet ids back to the sequence numbers a publish carries (one, or
//! a batch's): rumqttc chooses the packet id when it writes a PUBLISH and reports it as
//! `Outgoing::Publish(pkid)`, in the order the publishes were handed to it.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

/// What to do with a new message when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Delete the oldest messages to make room (fresh data matters more than old).
    DropOldest,
    /// Keep what is queued and refuse the new message.
    RefuseNewest,
}

/// The outbox's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages held.
    pub max_messages: usize,
    /// Most bytes held (topic plus payload of every message).
    pub max_bytes: u64,
}

/// Where a queued message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet read for sending in this session.
    Waiting,
    /// Read for sending, waiting for its batch to close or for room in the window.
    Claimed,
    /// Handed to the link, no PUBACK yet.
    InFlight,
}

/// One queued message, as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number (the table's key; append order).
    pub seq: u64,
    /// Topic plus payload bytes.
    pub size: u64,
    /// When it was appended (ms since the epoch).
    pub enqueued_ms: u64,
}

/// What [`Queue::admit`] decided for a batch of new messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Input index and assigned sequence number of each accepted message, in order.
    pub accepted: Vec<(usize, u64)>,
    /// Older messages to delete to make room (drop-oldest), in order.
    pub dropped_oldest: Vec<u64>,
    /// Messages of this batch that later ones of the same batch pushed out (drop-oldest): never
    /// stored, but dropped all the same.
    pub dropped_unstored: usize,
    /// New messages refused because the outbox was full (refuse-newest).
    pub refused: usize,
    /// New messages refused because one alone exceeds `max_bytes`.
    pub too_large: usize,
}

/// The in-memory index of the outbox.
#[derive(Debug)]
pub struct Queue {
    entries: VecDeque<(Entry, State)>,
    bytes: u64,
    next_seq: u64,
    /// The highest sequence number claimed in this session.
    cursor: u64,
    /// Messages handed to the link and not acknowledged.
    inflight: usize,
    limits: Limits,
    policy: FullPolicy,
}

impl Queue {
    /// An index of `stored` (what the table holds after a restart, in any order).
    pub fn new(limits: Limits, policy: FullPolicy, stored: Vec<Entry>) -> Queue {
        let mut stored = stored;
        stored.sort_by_key(|e| e.seq);
        let bytes = stored.iter().map(|e| e.size).sum();
        let next_seq = stored.last().map_or(1, |e| e.seq + 1);
        Queue {
            entries: stored.into_iter().map(|e| (e, State::Waiting)).collect(),
            bytes,
            next_seq,
            cursor: 0,
            inflight: 0,
            limits,
            policy,
        }
    }

    /// Messages queued.
    pub fn depth(&self) -> usize {
        self.entries.len()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Messages handed to the link and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// When the oldest queued message was appended.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.enqueued_ms)
    }

    /// Decides which of the new messages (their sizes) enter, assigning sequence numbers, and
    /// which older ones leave to make room.
    pub fn admit(&mut self, sizes: &[u64], now_ms: u64) -> Admission {
        let mut out = Admission::default();
        for (i, &size) in sizes.iter().enumerate() {
            if size > self.limits.max_bytes {
                out.too_large += 1;
                continue;
            }
            let full = |q: &Queue| {
                q.entries.len() + 1 > q.limits.max_messages || q.bytes + size > q.limits.max_bytes
            };
            if full(self) && self.policy == FullPolicy::RefuseNewest {
                out.refused += 1;
                continue;
            }
            while full(self) {
                let Some((old, state)) = self.entries.pop_front() else {
                    break;
                };
                self.bytes -= old.size;
                if state == State::InFlight {
                    self.inflight -= 1;
                }
                // A message of this very batch that is dropped again is never written at all.
                if let Some(pos) = out.accepted.iter().position(|&(_, s)| s == old.seq) {
                    out.accepted.remove(pos);
                    out.dropped_unstored += 1;
                } else {
                    out.dropped_oldest.push(old.seq);
                }
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.bytes += size;
            self.entries.push_back((
                Entry {
                    seq,
                    size,
                    enqueued_ms: now_ms,
                },
                State::Waiting,
            ));
            out.accepted.push((i, seq));
        }
        out
    }

    /// Forgets messages whose append failed to commit.
    pub fn forget(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            let _ = self.remove(seq);
        }
    }

    /// Whether messages wait that this session has not claimed yet.
    pub fn has_unclaimed(&self) -> bool {
        self.entries
            .back()
            .is_some_and(|(e, _)| e.seq > self.cursor)
    }

    /// The next messages to read for sending: the sequence number after which to read them and
    /// how many, at most `max_messages` and, after the first, `max_bytes` (topics plus
    /// payloads); `None` when every message is claimed.
    pub fn next_load(&self, max_messages: usize, max_bytes: u64) -> Option<(u64, usize)> {
        let first = self.entries.partition_point(|(e, _)| e.seq <= self.cursor);
        let mut bytes = 0;
        let count = self
            .entries
            .range(first..)
            .take(max_messages.max(1))
            .take_while(|(e, _)| {
                let fits = bytes == 0 || bytes + e.size <= max_bytes;
                bytes += e.size.max(1);
                fits
            })
            .count();
        (count > 0).then_some((self.cursor, count))
    }

    /// Records that message `seq` (read from the table) is claimed for sending; false if it has
    /// left the queue meanwhile (acknowledged or dropped), so it must not be sent.
    pub fn claim(&mut self, seq: u64) -> bool {
        self.cursor = self.cursor.max(seq);
        match self.position(seq) {
            Some(i) if self.entries[i].1 == State::Waiting => {
                self.entries[i].1 = State::Claimed;
                true
            }
            _ => false,
        }
    }

    /// Records that claimed message `seq` is handed to the link; false if it has left the queue
    /// since it was claimed (dropped by the full policy), so it must not be sent.
    pub fn sent(&mut self, seq: u64) -> bool {
        match self.position(seq) {
            Some(i) if self.entries[i].1 == State::Claimed => {
                self.entries[i].1 = State::InFlight;
                self.inflight += 1;
                true
            }
            _ => false,
        }
    }

    /// The cloud acknowledged `seq`: it leaves the queue. `None` if it had already left (dropped
    /// while in flight, or a duplicate acknowledgement).
    pub fn acked(&mut self, seq: u64) -> Option<Entry> {
        self.remove(seq)
    }

    /// The session ended: what was claimed or in flight will be sent again, from the oldest.
    /// Returns how many messages were in flight (the cloud may already have some of them:
    /// possible duplicates).
    pub fn reset_session(&mut self) -> usize {
        let resent = self.inflight;
        for (_, state) in &mut self.entries {
            *state = State::Waiting;
        }
        self.inflight = 0;
        self.cursor = 0;
        resent
    }

    fn position(&self, seq: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&seq, |(e, _)| e.seq).ok()
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let (e, state) = self.entries.remove(self.position(seq)?)?;
        self.bytes -= e.size;
        if state == State::InFlight {
            self.inflight -= 1;
        }
        Some(e)
    }
}

/// Maps rumqttc's packet ids to the outbox sequence numbers of each publish, for one session.
#[derive(Debug, Default)]
pub struct PacketIds {
    /// Handed to rumqttc, packet id not yet known, in order.
    handed: VecDeque<Vec<u64>>,
    /// Written with a packet id, awaiting PUBACK.
    by_pkid: HashMap<u16, Vec<u64>>,
}

impl PacketIds {
    /// A publish carrying `seqs` (one message, or a batch's) was handed to rumqttc, after every
    /// earlier one.
    pub fn handed(&mut self, seqs: Vec<u64>) {
        self.handed.push_back(seqs);
    }

    /// rumqttc wrote the next handed QoS 1 publish with packet id `pkid`.
    pub fn written(&mut self, pkid: u16) {
        if let Some(seqs) = self.handed.pop_front() {
            self.by_pkid.insert(pkid, seqs);
        }
    }

    /// The PUBACK for `pkid` arrived: the sequence numbers it acknowledges.
    pub fn acked(&mut self, pkid: u16) -> Option<Vec<u64>> {
        self.by_pkid.remove(&pkid)
    }

    /// Publishes handed to rumqttc and not answered yet (the link's window).
    pub fn in_flight(&self) -> usize {
        self.handed.len() + self.by_pkid.len()
    }

    /// The session ended: nothing of it will be acknowledged.
    pub fn clear(&mut self) {
        self.handed.clear();
        self.by_pkid.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_messages: usize, max_bytes: u64, policy: FullPolicy) -> Queue {
        Queue::new(
            Limits {
                max_messages,
                max_bytes,
            },
            policy,
            Vec::new(),
        )
    }

    /// One case per line: limits, policy, the sizes admitted in one batch each, and the expected
    /// (accepted sequence numbers, dropped, refused, too large) of the last batch plus the depth.
    #[test]
    fn admission_follows_the_limits_and_the_policy() {
        type Case = (
            usize,
            u64,
            FullPolicy,
            &'static [&'static [u64]],
            &'static [u64],
            &'static [u64],
            usize,
            usize,
            usize,
        );
        let cases: &[Case] = &[
            (
                3,
                100,
                FullPolicy::DropOldest,
                &[&[10, 10, 10]],
                &[1, 2, 3],
                &[],
                0,
                0,
                3,
            ),
            (
                3,
                100,
                FullPolicy::DropOldest,
                &[&[10, 10, 10], &[10]],
                &[4],
                &[1],
                0,
                0,
                3,
            ),
            (
                3,
                100,
                FullPolicy::RefuseNewest,
                &[&[10, 10, 10], &[10, 10]],
                &[],
                &[],
                2,
                0,
                3,
            ),
            (
                10,
                30,
                FullPolicy::DropOldest,
                &[&[10, 10, 10], &[25]],
                &[4],
                &[1, 2, 3],
                0,
                0,
                1,
            ),
            (
                10,
                30,
                FullPolicy::RefuseNewest,
                &[&[10, 10], &[10, 5]],
                &[3],
                &[],
                1,
                0,
                3,
            ),
            (
                10,
                30,
                FullPolicy::DropOldest,
                &[&[31, 5]],
                &[1],
                &[],
                0,
                1,
                1,
            ),
            // A batch larger than the outbox keeps its newest messages; the dropped ones of the
            // batch itself were never stored, so there is nothing to delete.
            (
                2,
                100,
                FullPolicy::DropOldest,
                &[&[1, 1, 1, 1]],
                &[3, 4],
                &[],
                0,
                0,
                2,
            ),
        ];
        for (
            i,
            &(max_m, max_b, policy, batches, want_acc, want_drop, want_ref, want_big, want_depth),
        ) in cases.iter().enumerate()
        {
            let mut q = queue(max_m, max_b, policy);
            let mut last = Admission::default();
            for b in batches {
                last = q.admit(b, 0);
            }
            let acc: Vec<u64> = last.accepted.iter().map(|a| a.1).collect();
            assert_eq!(acc, want_acc, "case {i}: accepted");
            assert_eq!(last.dropped_oldest, want_drop, "case {i}: dropped");
            assert_eq!(last.refused, want_ref, "case {i}: refused");
            assert_eq!(last.too_large, want_big, "case {i}: too large");
            assert_eq!(q.depth(), want_depth, "case {i}: depth");
            assert!(q.bytes() <= max_b && q.depth() <= max_m, "case {i}: bounds");
        }
    }

    #[test]
    fn a_new_session_resends_from_the_oldest_unacknowledged() {
        let mut q = queue(100, 10_000, FullPolicy::DropOldest);
        q.admit(&[1; 6], 5);
        assert_eq!(q.next_load(4, 1000), Some((0, 4)));
        for s in 1..=4 {
            assert!(q.claim(s) && q.sent(s));
        }
        assert_eq!(q.next_load(4, 1000), Some((4, 2)));
        assert_eq!(q.acked(1).map(|e| e.enqueued_ms), Some(5));
        assert!(q.acked(2).is_some());
        assert!(q.claim(5) && q.sent(5));
        assert!(q.claim(6), "claimed, not sent: held for a batch");
        assert!(!q.has_unclaimed());
        assert_eq!(q.next_load(10, 1000), None);
        // The link drops: 3, 4, 5 were in flight (6 only claimed) and go again, first.
        assert_eq!(q.reset_session(), 3);
        assert!(q.has_unclaimed());
        assert_eq!(q.next_load(10, 1000), Some((0, 4)));
        assert!(!q.claim(1), "acknowledged messages are not sent again");
        assert!(q.claim(3) && q.sent(3));
        assert!(!q.sent(3), "sent once per session");
        assert_eq!(q.acked(1), None, "a second ack is not counted");
        assert_eq!(q.depth(), 4);
        assert_eq!(q.oldest_ms(), Some(5));
    }

    #[test]
    fn a_load_stops_at_its_byte_budget_but_takes_at_least_one() {
        let mut q = queue(100, 10_000, FullPolicy::DropOldest);
        q.admit(&[400, 400, 400, 5000, 1], 0);
        assert_eq!(q.next_load(10, 1000), Some((0, 2)));
        for s in 1..=3 {
            assert!(q.claim(s));
        }
        assert_eq!(
            q.next_load(10, 1000),
            Some((3, 1)),
            "one over the budget alone"
        );
        assert!(q.claim(4));
        assert_eq!(q.next_load(10, 1000), Some((4, 1)));
        assert_eq!(q.next_load(0, 1000), Some((4, 1)), "at least one");
    }

    #[test]
    fn dropping_an_in_flight_message_frees_its_window_slot() {
        let mut q = queue(2, 10_000, FullPolicy::DropOldest);
        q.admit(&[1, 1], 0);
        assert!(q.claim(1) && q.sent(1));
        assert!(q.claim(2));
        let a = q.admit(&[1], 0);
        assert_eq!(a.dropped_oldest, vec![1]);
        assert_eq!(q.inflight(), 0);
        assert_eq!(q.acked(1), None, "its late PUBACK finds nothing");
        // A claimed message dropped before its batch goes up is not sent.
        q.admit(&[1], 0);
        assert!(!q.sent(2));
    }

    #[test]
    fn restored_entries_continue_the_sequence() {
        let stored = vec![
            Entry {
                seq: 9,
                size: 3,
                enqueued_ms: 2,
            },
            Entry {
                seq: 7,
                size: 4,
                enqueued_ms: 1,
            },
        ];
        let mut q = Queue::new(
            Limits {
                max_messages: 10,
                max_bytes: 100,
            },
            FullPolicy::DropOldest,
            stored,
        );
        assert_eq!((q.depth(), q.bytes(), q.oldest_ms()), (2, 7, Some(1)));
        assert_eq!(q.admit(&[1], 3).accepted, vec![(0, 10)]);
    }

    #[test]
    fn a_batch_larger_than_the_outbox_counts_what_it_pushed_out() {
        let mut q = queue(2, 100, FullPolicy::DropOldest);
        assert_eq!(q.admit(&[1, 1, 1, 1], 0).dropped_unstored, 2);
    }

    #[test]
    fn packet_ids_map_in_handing_order_and_acks_in_any_order() {
        let mut p = PacketIds::default();
        for s in [vec![10], vec![11, 12, 13], vec![14]] {
            p.handed(s);
        }
        p.written(1);
        p.written(2);
        assert_eq!(p.in_flight(), 3);
        p.written(3);
        assert_eq!(p.acked(2), Some(vec![11, 12, 13]));
        assert_eq!(p.acked(1), Some(vec![10]));
        assert_eq!(p.acked(1), None);
        assert_eq!(p.in_flight(), 1);
        p.clear();
        assert_eq!(p.acked(3), None);
    }
}
