//! Router configuration (what CONNACK declares, and the budgets) and the counters it keeps.

use crate::packet::QoS;

/// What to do when a session's queue is full (message or byte limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropPolicy {
    /// Drop the arriving message (the queue keeps the oldest; order of what is kept is intact).
    DropNewest,
    /// Drop queued messages from the front (oldest first) until the new one fits.
    DropOldest,
}

/// Router configuration. Every limit's over-limit outcome is counted in [`Stats`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Maximum QoS the server supports (CONNACK Maximum QoS, 3.2.2.3.4).
    pub maximum_qos: QoS,
    /// Server Receive Maximum: QoS 1/2 PUBLISH a client may have unacknowledged (3.2.2.3.3).
    pub receive_maximum: u16,
    /// Server Maximum Packet Size, declared in CONNACK; the shell's codec enforces it inbound.
    pub maximum_packet_size: Option<u32>,
    /// Server Topic Alias Maximum (inbound aliases a client may use) (3.2.2.3.8).
    pub topic_alias_maximum: u16,
    /// Retain Available.
    pub retain_available: bool,
    /// Wildcard Subscription Available.
    pub wildcard_subscription_available: bool,
    /// Shared Subscription Available.
    pub shared_subscription_available: bool,
    /// Subscription Identifiers Available.
    pub subscription_identifiers_available: bool,
    /// Server Keep Alive to declare (the shell enforces keep alive).
    pub server_keep_alive: Option<u16>,
    /// Highest Session Expiry Interval granted (seconds; `u32::MAX` = never expires).
    pub maximum_session_expiry: u32,
    /// Deliveries in flight to one client at most (sent, not yet acknowledged), whatever its
    /// Receive Maximum: MQTT 3.1.1 declares none, and an MQTT 5 client that omits it allows
    /// 65,535 (3.1.2.11.3). Without this bound a client that reads but never acknowledges made
    /// the gateway hold up to 65,535 deliveries beside its queue, and every packet scanned them
    /// (BENCHMARKS.md, issue 14). mosquitto's `max_inflight_messages` is the same bound (20 there).
    pub max_inflight_out: u16,
    /// Messages a session may queue behind its inflight window.
    pub queue_max_messages: usize,
    /// Bytes (topic + payload) a session may hold: queued behind its inflight window and in it.
    pub queue_max_bytes: usize,
    /// Backpressure: a connected session with this many messages queued is congested, and the
    /// publisher of a message that reaches it is held until its queue is down to half of this:
    /// its acks wait and the shell stops reading it (`Router::poll_hold`), so it goes at the speed
    /// of its slowest subscriber (every client library bounds what it has in flight) instead of
    /// filling that subscriber's queue until messages are dropped.
    pub backpressure_messages: usize,
    /// Backpressure: the same, in queued bytes (topic + payload).
    pub backpressure_bytes: usize,
    /// Backpressure: the longest a publisher's acknowledgements are held for congested sessions.
    /// A session still congested then is stalled (stuck, not slow): it holds nobody back until
    /// its queue is down to half the mark, and fills up to its bounds instead (drops counted). So
    /// one stuck subscriber delays the publishers of its topics once, by this much, and never
    /// stalls them.
    pub backpressure_max_hold_ms: u64,
    /// What a full queue does.
    pub drop_policy: DropPolicy,
    /// Whether QoS 0 messages are queued for a disconnected persistent session (4.1: MAY).
    pub queue_qos0_offline: bool,
    /// Read pressure (bytes queued for connected subscribers that wait only for the shell's
    /// writes) above which [`crate::Router::reading_paused`] says to stop reading.
    pub pause_reading_above_bytes: usize,
    /// The most one session adds to the read pressure, so one slow subscriber cannot pause all.
    pub pressure_share_bytes: usize,
    /// Retained messages kept at most.
    pub retained_max_messages: usize,
    /// Retained bytes (topic + payload) kept at most.
    pub retained_max_bytes: usize,
    /// Subscriptions per client at most.
    pub max_subscriptions_per_client: usize,
    /// Topic name / filter length in bytes at most.
    pub max_topic_length: usize,
    /// Topic levels at most.
    pub max_topic_levels: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            maximum_qos: QoS::ExactlyOnce,
            receive_maximum: 100,
            maximum_packet_size: Some(1 << 20),
            topic_alias_maximum: 64,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
            server_keep_alive: None,
            maximum_session_expiry: u32::MAX,
            max_inflight_out: 100,
            queue_max_messages: 10_000,
            queue_max_bytes: 16 << 20,
            backpressure_messages: 1_000,
            backpressure_bytes: 4 << 20,
            backpressure_max_hold_ms: 1_000,
            drop_policy: DropPolicy::DropNewest,
            queue_qos0_offline: false,
            pause_reading_above_bytes: 4 << 20,
            pressure_share_bytes: 256 << 10,
            retained_max_messages: 100_000,
            retained_max_bytes: 64 << 20,
            max_subscriptions_per_client: 1_000,
            max_topic_length: 1024,
            max_topic_levels: 32,
        }
    }
}

/// Counters the shell exports as metrics. Every drop, refusal and limit hit is here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// PUBLISH packets routed (wills included; resent QoS 2 duplicates not).
    pub published: u64,
    /// Deliveries handed to the shell (first sends; resends not).
    pub delivered: u64,
    /// Messages dropped because a session queue was full (message or byte limit).
    pub dropped_queue_full: u64,
    /// Deliveries discarded as larger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    pub dropped_too_large: u64,
    /// Messages that expired before delivery, queued or retained (3.3.2.3.3).
    pub expired: u64,
    /// QoS 0 messages not queued for an offline session (`queue_qos0_offline` off).
    pub qos0_offline_skipped: u64,
    /// Deliveries the shell's delivery filter refused.
    pub filtered: u64,
    /// Retained messages not stored: the retained store was full.
    pub retained_rejected: u64,
    /// Subscriptions refused: the per-client limit (0x97).
    pub subscriptions_rejected: u64,
    /// Topic names or filters refused as invalid or over the length/level budget.
    pub topics_rejected: u64,
    /// QoS 2 PUBLISH resent before PUBREL, not routed again (4.3.3).
    pub qos2_duplicates: u64,
    /// Connections closed for a protocol violation (DISCONNECT 0x82, 0x93, 0x94, ...).
    pub protocol_errors: u64,
    /// Sessions taken over by a new connection (0x8E).
    pub sessions_taken_over: u64,
    /// Sessions ended by expiry.
    pub sessions_expired: u64,
    /// Will messages published.
    pub wills_published: u64,
    /// Publisher acknowledgements held until storage commit.
    pub acks_held: u64,
    /// Publisher acknowledgements held for congested subscribers (backpressure).
    pub acks_backpressured: u64,
    /// Congested sessions found stalled: still congested when a publisher's hold ran out.
    pub backpressure_stalls: u64,
}
