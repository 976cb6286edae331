//! Cloud sync's counters (`grove_cloud_*`), registered by [`CloudMetrics::register`] into the
//! registry the binary exports.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every reason the outbox drops a message for (`refused_by_cloud`: an MQTT 5 PUBACK with a
/// failure reason; the last three: over a quota of the cloud's, `quota.rs`, to the dead
/// letters); [`CloudMetrics::drop`] takes no other (checked in debug builds, so the tests catch a
/// new reason missing here).
pub const DROP_REASONS: [&str; 8] = [
    "full_drop_oldest",
    "full_refuse_newest",
    "too_large",
    "store_failed",
    "refused_by_cloud",
    "payload_too_large",
    "topic_too_long",
    "topic_too_deep",
];

/// Why the outbox dropped a message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// One of [`DROP_REASONS`].
    pub reason: &'static str,
}

/// Which way a shadow sync update went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// `to_cloud` or `to_edge`.
    pub direction: &'static str,
}

/// The cloud link's, the outbox's and shadow sync's counters.
#[derive(Clone, Debug)]
pub struct CloudMetrics {
    /// Time from the append to the outbox to the cloud's PUBACK (the gateway's share of the
    /// end-to-end latency, including any time offline).
    pub delivery_seconds: Histogram,
    /// 1 while the link to the cloud broker is up.
    pub link_up: Gauge,
    /// Successful connections to the cloud broker.
    pub connects: Counter,
    /// Messages in the outbox now.
    pub outbox_messages: Gauge,
    /// Bytes (topic plus payload) in the outbox now.
    pub outbox_bytes: Gauge,
    /// Messages appended to the outbox.
    pub appended: Counter,
    /// Publishes handed to the link (first sends and resends; a batch is one).
    pub sent: Counter,
    /// Of these, batches (JSON arrays of a batching forward route).
    pub batches: Counter,
    /// Messages that went up in batches.
    pub batched: Counter,
    /// Messages acknowledged by the cloud and removed from the outbox.
    pub acked: Counter,
    /// Messages dropped, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Messages sent again after a reconnect because their PUBACK had not arrived (the cloud may
    /// see them twice).
    pub resent: Counter,
    /// Messages brought down from the cloud onto local topics.
    pub downlinked: Counter,
    /// Shadow updates made by sync, by direction.
    pub sync_updates: Family<SyncLabels, Counter>,
    /// Version conflicts met by sync (each resolved by a fresh read and merge).
    pub sync_conflicts: Counter,
    /// Sync rounds that gave up (after bounded retries or a timeout) until the next trigger.
    pub sync_failures: Counter,
}

impl Default for CloudMetrics {
    fn default() -> Self {
        CloudMetrics {
            // 1 ms to ~9 hours, quadrupling: online delivery and days offline on one scale.
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 13)),
            link_up: Gauge::default(),
            connects: Counter::default(),
            outbox_messages: Gauge::default(),
            outbox_bytes: Gauge::default(),
            appended: Counter::default(),
            sent: Counter::default(),
            batches: Counter::default(),
            batched: Counter::default(),
            acked: Counter::default(),
            dropped: Family::default(),
            resent: Counter::default(),
            downlinked: Counter::default(),
            sync_updates: Family::default(),
            sync_conflicts: Counter::default(),
            sync_failures: Counter::default(),
        }
    }
}

impl CloudMetrics {
    /// Registers the counters under `cloud_` in `registry` (the binary's, prefixed `grove`).
    pub fn register(&self, registry: &mut Registry) {
        let c = registry.sub_registry_with_prefix("cloud");
        c.register(
            "link_up",
            "1 while the link to the cloud broker is up",
            self.link_up.clone(),
        );
        c.register(
            "connects",
            "Successful connections to the cloud broker",
            self.connects.clone(),
        );
        c.register(
            "outbox_messages",
            "Messages in the cloud outbox",
            self.outbox_messages.clone(),
        );
        c.register(
            "outbox_bytes",
            "Bytes (topic + payload) in the cloud outbox",
            self.outbox_bytes.clone(),
        );
        c.register(
            "appended",
            "Messages appended to the cloud outbox",
            self.appended.clone(),
        );
        c.register(
            "sent",
            "Publishes handed to the cloud link (sends and resends; a batch is one)",
            self.sent.clone(),
        );
        c.register(
            "batches",
            "Publishes that carried a batch (a JSON array of a batching forward route)",
            self.batches.clone(),
        );
        c.register(
            "batched",
            "Messages that went up in batches",
            self.batched.clone(),
        );
        c.register(
            "acked",
            "Messages acknowledged by the cloud (PUBACK) and removed from the outbox",
            self.acked.clone(),
        );
        c.register(
            "dropped",
            "Messages the outbox dropped, by reason",
            self.dropped.clone(),
        );
        c.register(
            "delivery_seconds",
            "Time from the append to the cloud outbox to the cloud's PUBACK",
            self.delivery_seconds.clone(),
        );
        c.register("resent", "Messages resent after a reconnect because their PUBACK was missing (possible duplicates)", self.resent.clone());
        c.register(
            "downlinked",
            "Messages brought down from the cloud onto local topics",
            self.downlinked.clone(),
        );
        c.register(
            "sync_updates",
            "Shadow updates made by sync, by direction",
            self.sync_updates.clone(),
        );
        c.register(
            "sync_conflicts",
            "Shadow version conflicts met by sync, each resolved by a fresh read and merge",
            self.sync_conflicts.clone(),
        );
        c.register(
            "sync_failures",
            "Shadow sync rounds that gave up until the next trigger",
            self.sync_failures.clone(),
        );
    }

    /// Counts `n` dropped messages, for one of [`DROP_REASONS`].
    pub fn drop(&self, reason: &'static str, n: u64) {
        debug_assert!(
            DROP_REASONS.contains(&reason),
            "an unlisted drop reason: {reason}"
        );
        if n > 0 {
            self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
        }
    }

    /// The messages dropped so far, by reason (those with none left out).
    pub fn dropped_by_reason(&self) -> Vec<(&'static str, u64)> {
        DROP_REASONS
            .iter()
            .filter_map(|&reason| {
                let n = self
                    .dropped
                    .get(&DropLabels { reason })
                    .map_or(0, |c| c.get());
                (n > 0).then_some((reason, n))
            })
            .collect()
    }

    /// Counts a sync update.
    pub fn synced(&self, direction: &'static str) {
        self.sync_updates
            .get_or_create(&SyncLabels { direction })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_listed_by_reason_and_only_those_with_some() {
        let m = CloudMetrics::default();
        assert!(m.dropped_by_reason().is_empty());
        m.drop("too_large", 3);
        m.drop("full_drop_oldest", 0);
        m.drop("refused_by_cloud", 1);
        m.drop("too_large", 2);
        assert_eq!(
            m.dropped_by_reason(),
            vec![("too_large", 5), ("refused_by_cloud", 1)]
        );
    }
}
