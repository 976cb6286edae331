//! Grove's MQTT router core (issue 14): a pure state machine in the quinn-proto manner.
//!
//! # Model
//!
//! The shell (the gateway's connection layer) owns sockets, codecs, the clock, authentication,
//! authorisation and SQLite. It feeds the [`Router`] what happened and drains what to do:
//!
//! * in: [`Router::connect`] (an authenticated CONNECT), [`Router::handle`] (any other packet but
//!   PINGREQ), [`Router::connection_lost`], [`Router::handle_timeout`] (at the instant
//!   [`Router::poll_timeout`] asked for), [`Router::storage_committed`], and at startup
//!   [`Router::restore`];
//! * out: [`Router::poll_ready`] names connections with something to send and
//!   [`Router::poll_transmit`] gives their packets (a `Disconnect` is the last: close after it);
//!   [`Router::poll_storage`] gives numbered storage writes; [`Router::reading_paused`] says
//!   whether to stop reading sockets for now; [`Router::stats`] and [`Router::gauges`] feed
//!   metrics.
//!
//! The shell drives it like this (one task, or the router behind a mutex):
//!
//! * on CONNECT (after authentication): `connect(now, conn, connect)`; an `Err(connack)` is
//!   sent and the socket closed;
//! * on every other packet: `handle(now, conn, packet)` (PINGREQ is answered by the shell);
//! * on a socket error or keep-alive timeout: `connection_lost(now, conn)`;
//! * then `while let Some(conn) = poll_ready()` drain `poll_transmit(now, conn)` into that
//!   connection's writer while it has room (and again when it becomes writable);
//! * `while let Some((n, write)) = poll_storage()` add to the current SQLite transaction; after
//!   the commit, `storage_committed(n)` with the highest `n` (group commit: one transaction for
//!   whatever accumulated while the previous one was committing);
//! * sleep until `poll_timeout()` and call `handle_timeout(now)`;
//! * at startup, before the first connection: `restore(now, sessions, retained)` from SQLite
//!   ([`MemoryStore`] shows what the writes mean), then drain `poll_storage` as above (the
//!   restore writes too: sessions that expired while the gateway was down, wills that fell due).
//!
//! Time is an [`Instant`] the shell passes in (milliseconds); nothing in the crate reads a clock,
//! so tests run on a virtual clock. A shell that persists sessions passes wall-clock Unix
//! milliseconds, so that the times in its stored state (disconnects, wills, message expiry) keep
//! their meaning across a restart.
//!
//! ```
//! use grove_router::*;
//! let mut r = Router::new(Config::default());
//! let now = Instant(0);
//! let connect = |id: &str| Connect::new(id, Version::V5);
//! r.connect(now, ConnId(1), connect("sub")).unwrap();
//! r.handle(now, ConnId(1), Inbound::Subscribe(Subscribe {
//!     pkid: 1,
//!     filters: vec![("a/+".into(), SubOptions::qos(QoS::AtLeastOnce))],
//!     subscription_id: None,
//! }));
//! r.connect(now, ConnId(2), connect("pub")).unwrap();
//! r.handle(now, ConnId(2), Inbound::Publish(Publish {
//!     topic: "a/b".into(), payload: "hi".into(), qos: QoS::AtLeastOnce, retain: false,
//!     dup: false, pkid: 7, topic_alias: None, properties: Default::default(),
//! }));
//! // The shell's write loop: a ready connection, then its packets (CONNACK, SUBACK, ...).
//! let mut sent = Vec::new();
//! while let Some(conn) = r.poll_ready() {
//!     while let Some(packet) = r.poll_transmit(now, conn) { sent.push((conn, packet)); }
//! }
//! assert!(sent.iter().any(|(c, p)| {
//!     *c == ConnId(1) && matches!(p, Outbound::Publish(d) if d.qos == QoS::AtLeastOnce)
//! }));
//! assert!(sent.iter().any(|(c, p)| {
//!     *c == ConnId(2) && matches!(p, Outbound::PubAck(a) if a.pkid == 7)
//! }));
//! // The storage loop (nothing here is persistent): commit what poll_storage gives, then report.
//! while let Some((seq, _write)) = r.poll_storage() { r.storage_committed(seq); }
//! ```
//!
//! # Rules implemented (MQTT 5.0 and 3.1.1 section numbers)
//!
//! * Topic trie with `+`/`#` (4.7), `$` topics not matched by leading wildcards [MQTT-4.7.2-1].
//! * Overlapping subscriptions: one delivery per client at the highest QoS of its matching
//!   subscriptions [MQTT-3.3.4-2] (5.0; 3.1.1 [MQTT-3.3.5-1] says the same), carrying every
//!   matching subscription identifier [MQTT-3.3.4-4]. One copy rather than one per subscription
//!   (which 5.0 also allows): the same rule for both versions, less traffic, and one place in the
//!   window per message. Retain As Published on any matching subscription keeps the flag.
//! * Delivery QoS = min(published QoS, granted QoS) (3.1.1 [MQTT-3.8.4-6], 5.0 [MQTT-3.8.4-8]).
//! * Shared subscriptions `$share/{group}/{filter}` (4.8.2): one member per group per message,
//!   round robin preferring connected members with an empty queue; not-yet-sent deliveries of a
//!   member whose connection goes are handed to another member, and its unacknowledged ones when
//!   its session ends; no retained messages on a shared subscribe; No Local on a shared
//!   subscription is a protocol error [MQTT-3.8.3-4].
//! * No Local [MQTT-3.8.3-3], Retain As Published (3.8.3.1, [MQTT-3.3.1-12/13]; 3.1.1 clears the
//!   flag on live deliveries [MQTT-3.3.1-9]), Retain Handling 0/1/2 (3.8.3.1), retained messages
//!   re-sent on every 3.1.1 SUBSCRIBE [MQTT-3.8.4-3], empty retained payload deletes
//!   (3.1.1 [MQTT-3.3.1-10/11], 5.0 [MQTT-3.3.1-6/7]).
//! * Message expiry (3.3.2.3.3): expired queued and retained messages are not delivered; the
//!   remaining interval is sent [MQTT-3.3.2-6].
//! * Topic aliases (3.3.2.3.4): inbound up to the server's maximum (0 or above: 0x94; unknown:
//!   0x82); outbound up to the client's maximum, first come first served, never re-mapped.
//! * Will with delay (3.1.3.2.2): published at the earlier of the delay and the session's end,
//!   not on DISCONNECT 0x00 [MQTT-3.1.2-10], yes on 0x04 and on protocol errors [MQTT-3.1.2-8];
//!   cancelled by a reconnection within the delay [MQTT-3.1.3-9].
//! * Sessions: Clean Start / Clean Session (3.1.2.4), Session Expiry (3.1.2.11.2) changeable at
//!   DISCONNECT but not from 0 (3.14.2.2.2), takeover with DISCONNECT 0x8E [MQTT-3.1.4-3],
//!   session present (3.2.2.1.1), resend of unacknowledged PUBLISH (DUP) and PUBREL on reconnect
//!   [MQTT-4.4.0-1].
//! * Flow: an inflight window per session sized by the client's Receive Maximum (3.3.4), a queue
//!   behind it bounded by [`Config::queue_max_messages`] and [`Config::queue_max_bytes`], with a
//!   [`DropPolicy`] whose drops are counted ([`Stats::dropped_queue_full`]) and logged (a warning
//!   when a session starts dropping, a line with the count when its queue drains). The server's
//!   Receive Maximum is enforced on v5 publishers (0x93).
//! * Maximum Packet Size: a delivery larger than the client's maximum is discarded as if sent
//!   [MQTT-3.1.2-25] and counted ([`Stats::dropped_too_large`]).
//! * QoS 2 both ways (4.3.3): inbound packet ids kept until PUBREL, so a resent PUBLISH is not
//!   routed twice; outbound PUBLISH → PUBREC → PUBREL → PUBCOMP with the window held to PUBCOMP.
//! * CONNACK declares Maximum QoS, Receive Maximum, Maximum Packet Size, Topic Alias Maximum,
//!   Retain/Wildcard/Shared/Subscription-Identifier Available, Server Keep Alive, the granted
//!   Session Expiry and an Assigned Client Identifier (3.2.2.3).
//!
//! # Flow control
//!
//! Deliveries stay in the subscriber's bounded session queue until the shell asks for them with
//! `poll_transmit`, which it does when that socket can take more: a slow or stuck subscriber fills
//! only its own queue (then drops, counted) and never stalls the publisher or other subscribers.
//! A client has at most [`Config::max_inflight_out`] deliveries in flight whatever its Receive
//! Maximum (3.1.1 declares none), and a session's byte bound counts them with its queue.
//! Publishers are slowed at the source four ways:
//!
//! * Backpressure ([`Config::backpressure_messages`], `_bytes`): a connected session with that
//!   much queued is congested, and the publisher of a message that reaches it is held until it
//!   has caught up to half the mark: its PUBACK/PUBREC waits (with every later ack of that
//!   connection, in order), and the shell stops reading it ([`Router::poll_hold`]; QoS 0 has no
//!   ack to hold). Every client library bounds what it has in flight, so a publisher then goes at
//!   the pace of its slowest subscriber instead of filling that queue until messages are
//!   dropped; publishers of other topics are not held. A hold lasts
//!   [`Config::backpressure_max_hold_ms`] at most: a session still congested then is stalled
//!   (stuck, not slow) and holds nobody until it has caught up, so one stuck subscriber delays
//!   its publishers once and never stalls them. A publisher that does not wait for its acks
//!   (more held than the server's Receive Maximum) ends its hold at once the same way, so what is
//!   held for it stays bounded.
//! * [`Router::reading_paused`]: the shell stops reading sockets while the bytes queued for
//!   connected subscribers that wait only for its writes exceed
//!   [`Config::pause_reading_above_bytes`]. A session counts at most
//!   [`Config::pressure_share_bytes`], and not at all while its window is full (it waits for its
//!   client's acks, not for the shell): one stuck or slow subscriber cannot pause the others, and
//!   since writing alone drains the count, pausing reads cannot deadlock. This is the brake for
//!   QoS 0 publishers, and keeps acknowledged messages from becoming seconds of internal queue.
//! * A v5 publisher may have at most the server's Receive Maximum QoS 1/2 messages
//!   unacknowledged (3.3.4, DISCONNECT 0x93 beyond).
//! * Its acknowledgements wait for the storage commit of what its message caused, so a publisher
//!   to persistent sessions cannot outrun the disk.
//!
//! # What is durable
//!
//! See [`storage`]: sessions that outlive their connection (v5 Session Expiry > 0, 3.1.1 Clean
//! Session 0) with their subscriptions, queued and inflight QoS 1/2 deliveries (with the packet id
//! each was sent with and whether the client's PUBREC came), inbound QoS 2 packet ids not yet
//! released, the time the connection ended and the will waiting for its delay; and retained
//! messages. A publisher's PUBACK/PUBREC waits until every write its message caused is committed
//! ([`Router::storage_committed`]); a message that reaches only non-persistent sessions (from a
//! non-persistent publisher) is acked at once. The first PUBLISH of a stored QoS 2 delivery waits
//! for its packet id to be committed, and the PUBREL after its PUBREC for that PUBREC, so after
//! kill -9 a QoS 2 delivery is resent with its packet id and DUP or continued with PUBREL, never
//! delivered twice. Removals (acknowledged, expired, dropped) are written too but hold nothing
//! back: a crash before they commit means a redelivery, never a loss. After a restart a session
//! expires its interval after its disconnect (downtime included), and a pending will is published
//! at its time. Not durable: QoS 0 deliveries, and the will of a client connected at the crash.
//!
//! # Left to the shell
//!
//! Sockets, the v4/v5 codecs and their malformed-packet handling (0x81), the server's Maximum
//! Packet Size on input, keep alive and PINGREQ, authentication (CONNECT reaches the core only when
//! accepted), authorisation (a SUBSCRIBE reaches the core with only the filters the shell allowed;
//! per-delivery checks through [`Router::set_delivery_filter`]), AUTH packets, SQLite and its group
//! commit, metrics export of [`Stats`]. Components (shadows, rules, functions, cloud) connect as
//! ordinary clients through the shell: the core gives no client id or topic prefix any meaning.
//!
//! Architecture invariant: this crate depends on nothing of Grove's, does no IO and never reads
//! the clock (time comes in as [`Instant`]); `grove-broker`'s router task is its shell, and
//! `grove-broker`'s `sessions.rs` stores its writes in SQLite.
#![forbid(unsafe_code)]

pub mod config;
pub mod packet;
pub mod router;
pub mod storage;
pub mod topic;

#[cfg(test)]
mod tests;

pub use config::{Config, DropPolicy, Stats};
pub use packet::*;
pub use router::{DeliveryFilter, Gauges, Router};
pub use storage::{MemoryStore, RestoredMessage, RestoredSession, StorageWrite};
