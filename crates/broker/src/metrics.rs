//! The broker's counters (`grove_broker_*`), registered by [`BrokerMetrics::register`] into the
//! registry the binary exports.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why the broker refused a packet or a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `payload_too_large`, `malformed`, `protocol`, `max_connections`, `connect_timeout`,
    /// `identifier_rejected`, `store_failed`, `tls_handshake`, `bad_credentials`,
    /// `identity_mismatch`, `unknown_certificate`, `not_authorized`, `pending_limit` (too many
    /// unauthenticated connections on the listener or from the address), `connect_too_large` or
    /// `auth_busy` (the password-check queue was full).
    pub reason: &'static str,
}

/// How a password check ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PasswordCheckLabels {
    /// `verified` (argon2 said yes), `remembered` (a recent login with the same password: no
    /// argon2), `rejected` or `busy` (the queue was full: not checked).
    pub outcome: &'static str,
}

/// What a policy refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    /// `publish`, `subscribe` or `receive`.
    pub action: &'static str,
}

/// Why the router dropped a message for a subscriber.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` (the session's queue limit), `too_large` (over the client's Maximum Packet
    /// Size), `expired` (Message Expiry Interval) or `offline_qos0` (a QoS 0 message for an
    /// offline session).
    pub reason: &'static str,
}

/// The broker's counters.
#[derive(Clone, Debug, Default)]
pub struct BrokerMetrics {
    /// Clients connected now.
    pub connected_clients: Gauge,
    /// Connections accepted (MQTT CONNECT answered with success) since start.
    pub connections: Counter,
    /// PUBLISH packets received from clients.
    pub messages_received: Counter,
    /// PUBLISH packets sent to clients.
    pub messages_sent: Counter,
    /// Payload bytes received in PUBLISH packets.
    pub bytes_received: Counter,
    /// Payload bytes sent in PUBLISH packets.
    pub bytes_sent: Counter,
    /// Refused packets and connections, by reason.
    pub refused: Family<RefusalLabels, Counter>,
    /// Retained messages restored from the store at startup.
    pub retained_restored: Counter,
    /// Actions refused by a policy.
    pub denied: Family<DeniedLabels, Counter>,
    /// Times a publishing connection stopped reading because the router's read pressure (bytes
    /// queued for subscribers that wait only for the gateway's writes) was over its limit.
    pub holds: Counter,
    /// Publisher acks held for subscribers over their backpressure mark.
    pub acks_backpressured: Counter,
    /// Subscribers found stalled by backpressure (still congested when a hold ran out).
    pub backpressure_stalls: Counter,
    /// Connections accepted that have not authenticated yet (TLS handshake, CONNECT, password
    /// check), on all listeners.
    pub pending_connections: Gauge,
    /// Password logins checked, by outcome.
    pub password_checks: Family<PasswordCheckLabels, Counter>,
    /// Messages the router dropped for a subscriber, by reason (never silent).
    pub dropped: Family<DropLabels, Counter>,
    /// Sessions taken over by a reconnecting client (MQTT 5 DISCONNECT 0x8E to the old one).
    pub sessions_taken_over: Counter,
    /// Will messages published.
    pub wills_published: Counter,
    /// Sessions ended by their Session Expiry Interval (MQTT 5) after their client left.
    pub sessions_expired: Counter,
}

impl BrokerMetrics {
    /// Registers the counters under `broker_` in `registry` (the binary's, prefixed `grove`).
    pub fn register(&self, registry: &mut Registry) {
        let b = registry.sub_registry_with_prefix("broker");
        b.register(
            "connected_clients",
            "MQTT clients connected now",
            self.connected_clients.clone(),
        );
        b.register(
            "connections",
            "MQTT connections accepted since start",
            self.connections.clone(),
        );
        b.register(
            "messages_received",
            "PUBLISH packets received from clients",
            self.messages_received.clone(),
        );
        b.register(
            "messages_sent",
            "PUBLISH packets sent to clients",
            self.messages_sent.clone(),
        );
        b.register(
            "bytes_received",
            "Payload bytes received in PUBLISH packets",
            self.bytes_received.clone(),
        );
        b.register(
            "bytes_sent",
            "Payload bytes sent in PUBLISH packets",
            self.bytes_sent.clone(),
        );
        b.register(
            "refused",
            "Packets and connections refused by the broker, by reason",
            self.refused.clone(),
        );
        b.register(
            "denied",
            "Publishes, subscriptions and deliveries refused by a policy",
            self.denied.clone(),
        );
        b.register(
            "publisher_holds",
            "Times a publishing connection stopped reading (flow control): the router's queued bytes for subscribers were over its limit, or a subscriber of its messages had more queued than its backpressure mark",
            self.holds.clone(),
        );
        b.register(
            "acks_backpressured",
            "Publisher acknowledgements held because a subscriber of the message had more queued than broker.backpressure_messages or _bytes (flow control for QoS 1 and 2)",
            self.acks_backpressured.clone(),
        );
        b.register(
            "backpressure_stalls",
            "Subscribers still over their backpressure mark when a publisher's hold ran out (stuck, not slow): they hold nobody back until they drain",
            self.backpressure_stalls.clone(),
        );
        b.register(
            "dropped",
            "Messages the router dropped for a subscriber, by reason (queue_full: the session's queue limits; too_large: over the client's Maximum Packet Size; expired; offline_qos0)",
            self.dropped.clone(),
        );
        b.register(
            "sessions_taken_over",
            "Sessions taken over by a reconnecting client with the same client id",
            self.sessions_taken_over.clone(),
        );
        b.register(
            "wills_published",
            "Will messages published",
            self.wills_published.clone(),
        );
        b.register(
            "sessions_expired",
            "Sessions ended by their Session Expiry Interval after their client left",
            self.sessions_expired.clone(),
        );
        b.register(
            "retained_restored",
            "Retained messages restored from the store at startup",
            self.retained_restored.clone(),
        );
        b.register(
            "pending_connections",
            "Connections accepted that have not authenticated yet, on all listeners",
            self.pending_connections.clone(),
        );
        b.register(
            "password_checks",
            "Password logins checked, by outcome (remembered: a recent login, no argon2; busy: refused, the queue was full)",
            self.password_checks.clone(),
        );
    }

    /// Adds what the router counted since `last` (and remembers `now` as the new `last`).
    pub(crate) fn router_stats(&self, last: &mut grove_router::Stats, now: &grove_router::Stats) {
        let drops = [
            (
                "queue_full",
                now.dropped_queue_full - last.dropped_queue_full,
            ),
            ("too_large", now.dropped_too_large - last.dropped_too_large),
            ("expired", now.expired - last.expired),
            (
                "offline_qos0",
                now.qos0_offline_skipped - last.qos0_offline_skipped,
            ),
        ];
        for (reason, n) in drops {
            if n > 0 {
                self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
            }
        }
        self.sessions_taken_over
            .inc_by(now.sessions_taken_over - last.sessions_taken_over);
        self.wills_published
            .inc_by(now.wills_published - last.wills_published);
        self.sessions_expired
            .inc_by(now.sessions_expired - last.sessions_expired);
        self.acks_backpressured
            .inc_by(now.acks_backpressured - last.acks_backpressured);
        self.backpressure_stalls
            .inc_by(now.backpressure_stalls - last.backpressure_stalls);
        *last = now.clone();
    }

    /// Counts a policy refusal.
    pub fn deny(&self, action: &'static str) {
        self.denied.get_or_create(&DeniedLabels { action }).inc();
    }

    /// Counts a refusal.
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts a password check's outcome.
    pub fn password_check(&self, outcome: &'static str) {
        self.password_checks
            .get_or_create(&PasswordCheckLabels { outcome })
            .inc();
    }
}
