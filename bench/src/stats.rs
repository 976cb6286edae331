//! Pure bookkeeping of one phase: end-to-end latency percentiles and per-publisher delivery accounting
//! (losses, duplicates, reordering). No clock and no IO: callers pass durations and stamps in.

use std::ops::AddAssign;
use std::time::Duration;

use fixedbitset::FixedBitSet;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::payload::Stamp;

/// Largest latency the histogram resolves; slower deliveries are clamped to it (and still counted).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Highest sequence number accepted from the wire. No publisher sends this many messages in one bounded
/// phase, and refusing larger values keeps a corrupted stamp from growing a bitset to gigabytes.
const MAX_SEQ: u64 = 1 << 28;

/// Latency samples of one phase, in microseconds, with three significant digits.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts; a failure here is a programming error.
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    /// Records one delivery latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(us);
    }

    /// Adds another recorder's samples (each subscriber keeps its own while the phase runs).
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Both histograms share the same bounds, so addition cannot fail; saturate instead of panicking anyway.
        if self.histogram.add(&other.histogram).is_err() {
            for value in other.histogram.iter_recorded() {
                self.histogram
                    .saturating_record_n(value.value_iterated_to(), value.count_at_value());
            }
        }
    }

    /// The percentiles reported by the benchmark.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let empty = h.is_empty();
        let at = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        LatencySummary {
            samples: h.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: if empty { 0 } else { h.max() },
        }
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency percentiles of one phase, in microseconds (0 when nothing was delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    /// Number of deliveries measured.
    pub samples: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest delivery.
    pub max_us: u64,
}

/// Why a received stamp could not be accounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// The stamp names a publisher this phase does not have.
    #[error("stamp names publisher {publisher}, but the phase has {publishers}")]
    UnknownPublisher {
        /// Publisher index in the stamp.
        publisher: u32,
        /// Publishers in the phase.
        publishers: usize,
    },
    /// The sequence number is beyond anything a bounded phase can send.
    #[error("sequence number {seq} is implausibly large")]
    ImplausibleSeq {
        /// Sequence number in the stamp.
        seq: u64,
    },
}

/// What one subscriber has seen from one publisher.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Sequence numbers received at least once.
    seqs: FixedBitSet,
    /// Highest sequence number received so far, to spot reordering.
    highest: Option<u64>,
    /// Deliveries of a sequence number already seen.
    duplicates: u64,
    /// Deliveries of a new sequence number below the highest seen (MQTT keeps order per topic and QoS).
    out_of_order: u64,
}

/// One subscriber's delivery accounting, per publisher.
#[derive(Debug, Clone)]
pub struct DeliveryTracker {
    seen: Vec<Seen>,
}

impl DeliveryTracker {
    /// A tracker for a phase with `publishers` publishers.
    pub fn new(publishers: usize) -> Self {
        Self {
            seen: vec![Seen::default(); publishers],
        }
    }

    /// Accounts one delivery.
    pub fn observe(&mut self, stamp: &Stamp) -> Result<(), TrackError> {
        let publishers = self.seen.len();
        let seen = usize::try_from(stamp.publisher)
            .ok()
            .and_then(|index| self.seen.get_mut(index))
            .ok_or(TrackError::UnknownPublisher {
                publisher: stamp.publisher,
                publishers,
            })?;
        if stamp.seq > MAX_SEQ {
            return Err(TrackError::ImplausibleSeq { seq: stamp.seq });
        }
        // MAX_SEQ fits in usize on every platform the benchmark runs on (at least 32 bits).
        let bit = stamp.seq as usize;
        if seen.seqs.contains(bit) {
            seen.duplicates += 1;
            return Ok(());
        }
        seen.seqs.grow_and_insert(bit);
        match seen.highest {
            Some(highest) if stamp.seq < highest => seen.out_of_order += 1,
            _ => seen.highest = Some(stamp.seq),
        }
        Ok(())
    }

    /// Compares what was seen with what each publisher sent (`sent[p]` messages numbered `0..sent[p]`).
    pub fn tally(&self, sent: &[u64]) -> DeliveryTally {
        let mut tally = DeliveryTally::default();
        for (index, seen) in self.seen.iter().enumerate() {
            let sent = sent.get(index).copied().unwrap_or(0);
            let unique = seen.seqs.count_ones(..) as u64;
            // Sequence numbers at or above `sent` were never handed to the broker by this run.
            let limit = usize::try_from(sent)
                .unwrap_or(usize::MAX)
                .min(seen.seqs.len());
            let expected_seen = seen.seqs.count_ones(..limit) as u64;
            tally.expected += sent;
            tally.unique += unique;
            tally.lost += sent - expected_seen;
            tally.unexpected += unique - expected_seen;
            tally.duplicates += seen.duplicates;
            tally.out_of_order += seen.out_of_order;
        }
        tally
    }
}

/// Delivery accounting, summed over publishers (and over subscribers with `+=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryTally {
    /// Deliveries the subscribers should have received (messages sent times subscribers).
    pub expected: u64,
    /// Distinct messages received.
    pub unique: u64,
    /// Messages sent but never received.
    pub lost: u64,
    /// Extra deliveries of a message already received.
    pub duplicates: u64,
    /// Messages received after a later one from the same publisher.
    pub out_of_order: u64,
    /// Messages received with a sequence number the publisher never sent.
    pub unexpected: u64,
}

impl AddAssign for DeliveryTally {
    fn add_assign(&mut self, other: Self) {
        self.expected += other.expected;
        self.unique += other.unique;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
    }
}

/// Median of a list of durations in milliseconds (mean of the two middle values for an even count).
pub fn median_ms(samples: &[Duration]) -> Option<f64> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    Some(if ms.len().is_multiple_of(2) {
        (ms[mid - 1] + ms[mid]) / 2.0
    } else {
        ms[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records latencies given in microseconds and expects (p50, p99, p999, max).
    fn check_percentiles(latencies_us: &[u64], expected: (u64, u64, u64, u64)) {
        let mut recorder = LatencyRecorder::new();
        for &us in latencies_us {
            recorder.record(Duration::from_micros(us));
        }
        let s = recorder.summary();
        assert_eq!(s.samples, latencies_us.len() as u64);
        assert_eq!(
            (s.p50_us, s.p99_us, s.p999_us, s.max_us),
            expected,
            "percentiles of {} samples",
            latencies_us.len()
        );
    }

    #[test]
    fn percentiles() {
        let one_to_thousand: Vec<u64> = (1..=1000).collect();
        let mostly_fast: Vec<u64> = std::iter::repeat_n(100, 990)
            .chain(std::iter::repeat_n(5_000, 9))
            .chain([90_000])
            .collect();
        check_percentiles(&[], (0, 0, 0, 0));
        check_percentiles(&[42], (42, 42, 42, 42));
        check_percentiles(&one_to_thousand, (500, 990, 999, 1000));
        check_percentiles(&mostly_fast, (100, 100, 5_003, 90_047));
        // Beyond the histogram's range: clamped, still counted.
        check_percentiles(
            &[120_000_000],
            (60_030_975, 60_030_975, 60_030_975, 60_030_975),
        );
    }

    #[test]
    fn merging_recorders_adds_samples() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        (1..=500).for_each(|us| a.record(Duration::from_micros(us)));
        (501..=1000).for_each(|us| b.record(Duration::from_micros(us)));
        a.merge(&b);
        let s = a.summary();
        assert_eq!((s.samples, s.p50_us, s.max_us), (1000, 500, 1000));
    }

    fn stamp(publisher: u32, seq: u64) -> Stamp {
        Stamp {
            publisher,
            seq,
            sent_ns: 0,
        }
    }

    /// Feeds (publisher, seq) deliveries to a tracker of two publishers, tallies against `sent`.
    fn check_tally(deliveries: &[(u32, u64)], sent: [u64; 2], expected: DeliveryTally) {
        let mut tracker = DeliveryTracker::new(2);
        for &(publisher, seq) in deliveries {
            tracker
                .observe(&stamp(publisher, seq))
                .expect("known publisher");
        }
        assert_eq!(tracker.tally(&sent), expected, "deliveries {deliveries:?}");
    }

    fn tally(
        expected: u64,
        unique: u64,
        lost: u64,
        dup: u64,
        ooo: u64,
        unexp: u64,
    ) -> DeliveryTally {
        DeliveryTally {
            expected,
            unique,
            lost,
            duplicates: dup,
            out_of_order: ooo,
            unexpected: unexp,
        }
    }

    #[test]
    fn delivery_accounting() {
        // deliveries                                  sent     expected unique lost dup ooo unexpected
        check_tally(&[], [0, 0], tally(0, 0, 0, 0, 0, 0));
        check_tally(&[(0, 0), (0, 1), (1, 0)], [2, 1], tally(3, 3, 0, 0, 0, 0));
        check_tally(&[(0, 0), (0, 2)], [3, 0], tally(3, 2, 1, 0, 0, 0));
        check_tally(
            &[(0, 0), (0, 0), (0, 1), (0, 1)],
            [2, 0],
            tally(2, 2, 0, 2, 0, 0),
        );
        check_tally(&[(1, 1), (1, 0), (1, 2)], [0, 3], tally(3, 3, 0, 0, 1, 0));
        check_tally(&[(0, 0), (0, 5)], [1, 0], tally(1, 2, 0, 0, 0, 1));
        check_tally(&[], [4, 2], tally(6, 0, 6, 0, 0, 0));
    }

    #[test]
    fn tallies_add_up_over_subscribers() {
        let mut total = tally(10, 9, 1, 0, 0, 0);
        total += tally(10, 10, 0, 2, 1, 0);
        assert_eq!(total, tally(20, 19, 1, 2, 1, 0));
    }

    #[test]
    fn rejects_foreign_stamps() {
        let mut tracker = DeliveryTracker::new(2);
        assert_eq!(
            tracker.observe(&stamp(2, 0)),
            Err(TrackError::UnknownPublisher {
                publisher: 2,
                publishers: 2
            })
        );
        assert_eq!(
            tracker.observe(&stamp(0, u64::MAX)),
            Err(TrackError::ImplausibleSeq { seq: u64::MAX })
        );
    }

    /// Median of samples given in milliseconds.
    fn check_median(ms: &[u64], expected: Option<f64>) {
        let samples: Vec<Duration> = ms.iter().map(|&m| Duration::from_millis(m)).collect();
        assert_eq!(median_ms(&samples), expected, "median of {ms:?}");
    }

    #[test]
    fn medians() {
        check_median(&[], None);
        check_median(&[7], Some(7.0));
        check_median(&[9, 1, 5], Some(5.0));
        check_median(&[4, 1, 3, 2], Some(2.5));
    }
}
