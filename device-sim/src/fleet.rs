//! What the device tasks, the observer, the controller and the runner share: per-device records of
//! telemetry in flight and desired changes not yet applied, counters, and the latency histograms.
//!
//! How delivery and latency are measured: when a device's firmware core accepts a sample
//! (`publish_sample` returns `Ok`, which is the moment its bytes are queued for the socket), the
//! device task records the sample's `seq`, temperature and humidity with the send time. The observer,
//! an MQTT client subscribed to `dt/+/telemetry`, looks each message up by those three values; the
//! time between the two is the end-to-end latency (device core, TCP, gateway, observer). A sample not
//! seen within `telemetry.loss_timeout_ms` counts as lost. Matching on the values as well as `seq`
//! keeps a rebooted device (whose `seq` starts again at 1) from being matched with its previous life.
//!
//! How shadow convergence is measured: the controller puts its send time into each request's
//! `clientToken`. The observer also follows `$aws/things/+/shadow/update/documents`: a document
//! carrying a controller token opens a pending change for that thing; the first document whose
//! reported state holds every desired field closes all of the thing's pending changes, each with its
//! own time from request to applied-and-reported.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::actuator::SimPin;

/// Which phase the run is in; device tasks publish telemetry only while measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Devices are starting and connecting; nothing is measured.
    Warmup = 0,
    /// Telemetry, desired changes and chaos are measured.
    Measure = 1,
    /// No new telemetry or changes; in-flight work is collected and devices catch up.
    Settle = 2,
}

/// One telemetry sample awaiting the observer.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u32,
    temp_mc: i32,
    rh_mpct: i32,
    sent_at: Instant,
}

/// What the fleet knows about one device.
#[derive(Debug, Default)]
pub struct DeviceRecord {
    /// The relay pin the firmware drives.
    pub relay: SimPin,
    /// Whether the firmware's session is up (subscribed).
    pub connected: AtomicBool,
    /// Whether the device ever connected.
    pub ever_connected: AtomicBool,
    /// Whether the shadow's reported state held its desired state in the last document the observer
    /// saw (true before any document: nothing is desired yet).
    shadow_holds: AtomicBool,
    /// Whether the observer has seen any document of this shadow (the boot report makes one).
    shadow_seen: AtomicBool,
    /// Telemetry sent and not yet seen, oldest first.
    in_flight: Mutex<VecDeque<InFlight>>,
    /// Send times of desired changes not yet reported applied.
    pending_changes: Mutex<Vec<Instant>>,
}

/// Counters; every field is a running total.
#[derive(Debug, Default)]
pub struct Counters {
    /// Samples the firmware accepted for sending.
    pub sent: AtomicU64,
    /// Samples seen by the observer in time.
    pub delivered: AtomicU64,
    /// Samples not seen within the loss timeout.
    pub lost: AtomicU64,
    /// Telemetry messages that matched no sample in flight (late after being counted lost, or
    /// duplicated).
    pub unmatched: AtomicU64,
    /// Samples due while the device had no session (the firmware does not queue telemetry).
    pub skipped_offline: AtomicU64,
    /// Samples the firmware refused because its transmit buffer was full or, at QoS 1, the previous
    /// sample still awaited its PUBACK.
    pub backpressure: AtomicU64,
    /// Measurements the driver reported as failed (injected CRC faults).
    pub sensor_errors: AtomicU64,
    /// Sessions established (CONNACK and SUBACK received).
    pub connects: AtomicU64,
    /// Sessions established after the device's first.
    pub reconnects: AtomicU64,
    /// Sessions lost, for any reason (a chaos reboot's as reason `Reboot`).
    pub disconnects: AtomicU64,
    /// TCP connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Disconnects caused by chaos (single and storm).
    pub chaos_disconnects: AtomicU64,
    /// Reboots caused by chaos.
    pub reboots: AtomicU64,
    /// Desired changes the firmware applied (its `Applied` event).
    pub applied: AtomicU64,
    /// Desired changes the firmware refused.
    pub refused: AtomicU64,
    /// Shadow requests of the devices that the gateway rejected.
    pub device_shadow_rejected: AtomicU64,
    /// Desired-state updates the controller sent.
    pub desired_sent: AtomicU64,
    /// ... that the gateway accepted.
    pub desired_accepted: AtomicU64,
    /// ... that the gateway rejected (any code).
    pub desired_rejected: AtomicU64,
    /// ... that got no answer in time.
    pub desired_unanswered: AtomicU64,
    /// Desired changes seen reported as applied.
    pub converged: AtomicU64,
}

/// The state shared by every part of a run.
pub struct Fleet {
    /// Thing names, by device index.
    pub things: Vec<String>,
    /// Device index by thing name.
    index: HashMap<String, usize>,
    /// Per-device records, by index.
    pub devices: Vec<DeviceRecord>,
    /// Running totals.
    pub counters: Counters,
    /// End-to-end telemetry latency, microseconds.
    latency_us: Mutex<Histogram<u64>>,
    /// Time from a desired change to its report, milliseconds.
    convergence_ms: Mutex<Histogram<u64>>,
    /// Lost sessions by the firmware's reason (`ConnackTimeout`, `PingTimeout`, ...).
    disconnect_reasons: Mutex<BTreeMap<String, u64>>,
    phase: AtomicU8,
    /// The run's time origin: device clocks and controller tokens count from here.
    pub origin: Instant,
    /// After this long a sample in flight counts as lost.
    pub loss_timeout: Duration,
}

impl Fleet {
    /// Shared state for `things`, with the loss timeout for telemetry.
    pub fn new(things: Vec<String>, loss_timeout: Duration) -> Self {
        let index = things
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        let devices = things
            .iter()
            .map(|_| DeviceRecord {
                shadow_holds: AtomicBool::new(true),
                ..DeviceRecord::default()
            })
            .collect();
        Self {
            things,
            index,
            devices,
            counters: Counters::default(),
            // Up to an hour at three significant digits; larger values are clamped, never refused.
            latency_us: Mutex::new(histogram(3_600_000_000)),
            convergence_ms: Mutex::new(histogram(86_400_000)),
            disconnect_reasons: Mutex::default(),
            phase: AtomicU8::new(Phase::Warmup as u8),
            origin: Instant::now(),
            loss_timeout,
        }
    }

    /// The device index of a thing name, if it is one of ours.
    pub fn device(&self, thing: &str) -> Option<usize> {
        self.index.get(thing).copied()
    }

    /// Counts a lost session and its reason.
    pub fn disconnected(&self, device: usize, reason: impl std::fmt::Debug) {
        self.devices[device]
            .connected
            .store(false, Ordering::Relaxed);
        self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        *lock(&self.disconnect_reasons)
            .entry(format!("{reason:?}"))
            .or_default() += 1;
    }

    /// Lost sessions by reason.
    pub fn disconnect_reasons(&self) -> BTreeMap<String, u64> {
        lock(&self.disconnect_reasons).clone()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Warmup,
            1 => Phase::Measure,
            _ => Phase::Settle,
        }
    }

    /// Enters `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// How many devices have a session now.
    pub fn connected(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.connected.load(Ordering::Relaxed))
            .count()
    }

    /// Records a sample the firmware accepted.
    pub fn sample_sent(&self, device: usize, seq: u32, temp_mc: i32, rh_mpct: i32) {
        let record = InFlight {
            seq,
            temp_mc,
            rh_mpct,
            sent_at: Instant::now(),
        };
        lock(&self.devices[device].in_flight).push_back(record);
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// The observer saw a telemetry message; matches it with its sample.
    pub fn sample_seen(&self, device: usize, seq: u32, temp_mc: i32, rh_mpct: i32) {
        let now = Instant::now();
        let found = {
            let mut in_flight = lock(&self.devices[device].in_flight);
            // Newest first: a rebooted device reuses small `seq`s, and its newest sample is the likelier.
            let position = in_flight
                .iter()
                .rposition(|s| s.seq == seq && s.temp_mc == temp_mc && s.rh_mpct == rh_mpct);
            position.and_then(|p| in_flight.remove(p))
        };
        match found {
            Some(sample) => {
                let micros = now.saturating_duration_since(sample.sent_at).as_micros();
                lock(&self.latency_us).saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts samples in flight longer than the loss timeout (all of them with `everything`) as lost.
    pub fn expire(&self, everything: bool) {
        let cutoff = Instant::now().checked_sub(self.loss_timeout);
        let mut lost = 0;
        for device in &self.devices {
            let mut in_flight = lock(&device.in_flight);
            while let Some(front) = in_flight.front() {
                if !everything && cutoff.is_none_or(|c| front.sent_at > c) {
                    break;
                }
                in_flight.pop_front();
                lost += 1;
            }
        }
        self.counters.lost.fetch_add(lost, Ordering::Relaxed);
    }

    /// Samples still awaiting the observer.
    pub fn in_flight(&self) -> usize {
        self.devices.iter().map(|d| lock(&d.in_flight).len()).sum()
    }

    /// The gateway accepted a desired change sent at `sent_at` for `device`.
    pub fn change_opened(&self, device: usize, sent_at: Instant) {
        lock(&self.devices[device].pending_changes).push(sent_at);
    }

    /// `device`'s reported state now holds its desired state: every pending change is applied.
    pub fn changes_applied(&self, device: usize) {
        let now = Instant::now();
        let done = std::mem::take(&mut *lock(&self.devices[device].pending_changes));
        if done.is_empty() {
            return;
        }
        let mut histogram = lock(&self.convergence_ms);
        for sent_at in &done {
            let ms = now.saturating_duration_since(*sent_at).as_millis();
            histogram.saturating_record(u64::try_from(ms).unwrap_or(u64::MAX));
        }
        self.counters
            .converged
            .fetch_add(done.len() as u64, Ordering::Relaxed);
    }

    /// Records whether `device`'s shadow, as last seen, has its desired state reported.
    pub fn set_shadow_holds(&self, device: usize, holds: bool) {
        let record = &self.devices[device];
        record.shadow_holds.store(holds, Ordering::Relaxed);
        record.shadow_seen.store(true, Ordering::Relaxed);
    }

    /// How many shadows the observer has seen a document of.
    pub fn shadows_seen(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.shadow_seen.load(Ordering::Relaxed))
            .count()
    }

    /// How many shadows, as last seen, have their desired state reported.
    pub fn shadows_hold(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.shadow_holds.load(Ordering::Relaxed))
            .count()
    }

    /// Desired changes not yet reported applied, over the fleet.
    pub fn pending_changes(&self) -> usize {
        self.devices
            .iter()
            .map(|d| lock(&d.pending_changes).len())
            .sum()
    }

    /// Percentiles of telemetry latency, milliseconds.
    pub fn latency(&self) -> Percentiles {
        Percentiles::of(&lock(&self.latency_us), 1_000.0)
    }

    /// Percentiles of convergence time, milliseconds.
    pub fn convergence(&self) -> Percentiles {
        Percentiles::of(&lock(&self.convergence_ms), 1.0)
    }

    /// Reads a counter.
    pub fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        counter(&self.counters).load(Ordering::Relaxed)
    }
}

/// Summary statistics of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>, per_ms: f64) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| round3(v as f64 / per_ms);
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
            mean: round3(histogram.mean() / per_ms),
        }
    }
}

/// Rounds to three decimals, so summaries do not show float noise.
pub fn round3(v: f64) -> f64 {
    (v * 1_000.0).round() / 1_000.0
}

fn histogram(high: u64) -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low 1, high > 2, 3 significant figures).
    Histogram::new_with_bounds(1, high, 3).expect("constant histogram bounds are valid")
}

/// Locks a mutex; a panic in another task while holding it leaves plain data that is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
