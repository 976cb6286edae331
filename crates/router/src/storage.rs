//! The storage boundary: writes the core emits and what the shell gives back at startup.
//!
//! Durable is everything a session that outlives its connection needs after kill -9: the session
//! record (with the time its connection ended and the will waiting for its delay), its
//! subscriptions, the QoS 1/2 messages queued or inflight for it (with the packet id each was sent
//! with and whether the client's PUBREC came), the inbound QoS 2 packet ids it has not released;
//! and the retained messages. The core numbers writes; the shell commits them in order (a group
//! commit per batch it drains) and reports the highest committed number with `storage_committed`.
//! A crash therefore loses a suffix of the writes, never a write in the middle.
//!
//! What waits for a commit, and why:
//!
//! * a publisher's PUBACK or PUBREC waits for the writes its message caused (`Enqueued`,
//!   `Retained`, `Qos2Received`): nothing acknowledged is lost;
//! * PUBCOMP to a publisher waits for its `Qos2Released`: a restart still knows the id is free;
//! * the first PUBLISH of a stored QoS 2 message waits for its `PacketId`, and the PUBREL after
//!   the client's PUBREC waits for `PubRecReceived`: after kill -9 the message is resent with its
//!   original packet id and DUP, or continued with PUBREL, never sent as a new message, so a
//!   client holding the packet id (4.3.3, method B) never delivers it twice ([MQTT-4.4.0-1]).
//!
//! The rest holds nothing back. `Dequeued`, `Unsubscribed`, ... lost in a crash mean a
//! redelivery, never a loss. A QoS 1 message's `PacketId` lost in a crash means it is resent as a
//! new PUBLISH with a new packet id: a duplicate, which QoS 1 allows (4.3.2).
//!
//! Times in writes (`Disconnected::at`, a pending will's due time, message expiry) are the shell's
//! [`Instant`]s, which must be wall-clock Unix milliseconds for the shell that persists sessions
//! (see [`Instant`]): stored as they are, they keep their meaning across a restart, so a session
//! whose expiry ran out while the gateway was down is not restored and the others expire on time.
use crate::packet::{Instant, Message, QoS, SubOptions, Version, Will};
use std::sync::Arc;

/// A write for the shell's store, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageWrite {
    /// A persistent session exists and is connected (created, reconnected, or its expiry interval
    /// changed): it has no disconnect time and no pending will.
    Session {
        /// Client id.
        client_id: Arc<str>,
        /// Protocol version.
        version: Version,
        /// Session Expiry Interval (seconds; `u32::MAX` never).
        expiry_interval: u32,
    },
    /// A persistent session lost its connection at `at` and lives on (it expires its interval
    /// after `at`). `will`: the will waiting for its delay (3.1.3.2.2) and when it is due.
    Disconnected {
        /// Client id.
        client_id: Arc<str>,
        /// When the connection ended (the shell's clock).
        at: Instant,
        /// The pending will and when it is due.
        will: Option<(Instant, Will)>,
    },
    /// The pending will of a session was published (its delay passed): forget it.
    WillDone {
        /// Client id.
        client_id: Arc<str>,
    },
    /// A persistent session ended: delete it with its subscriptions and queue.
    SessionDeleted {
        /// Client id.
        client_id: Arc<str>,
    },
    /// A subscription was added or replaced.
    Subscribed {
        /// Client id.
        client_id: Arc<str>,
        /// Full filter (with `$share/{group}/` when shared).
        filter: Arc<str>,
        /// Options.
        options: SubOptions,
        /// Subscription identifier.
        id: Option<u32>,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// Client id.
        client_id: Arc<str>,
        /// Full filter.
        filter: Arc<str>,
    },
    /// A QoS 1/2 message was queued for a persistent session. The same `message.id` may be
    /// queued for many sessions: the shell can store the message once and reference it.
    Enqueued {
        /// Client id.
        client_id: Arc<str>,
        /// The message.
        message: Arc<Message>,
        /// Delivery QoS.
        qos: QoS,
        /// Retain flag to deliver with.
        retain: bool,
        /// Subscription identifiers to deliver with.
        subscription_ids: Vec<u32>,
    },
    /// A queued message (the first entry of `message_id` without a packet id) was given packet id
    /// `pkid` for its first PUBLISH; resent after a restart with this id and DUP [MQTT-4.4.0-1].
    PacketId {
        /// Client id.
        client_id: Arc<str>,
        /// Message id.
        message_id: u64,
        /// Packet identifier.
        pkid: u16,
    },
    /// The client answered the QoS 2 delivery of `message_id` (sent as `pkid`) with PUBREC: from
    /// now on it is continued with PUBREL, never resent as PUBLISH (4.3.3).
    PubRecReceived {
        /// Client id.
        client_id: Arc<str>,
        /// Message id.
        message_id: u64,
        /// Packet identifier.
        pkid: u16,
    },
    /// A queued message is done (acknowledged, expired, dropped or discarded): the first entry of
    /// `message_id` in the session's queue goes (the same message can be queued twice for one
    /// session, through a shared and a non-shared subscription).
    Dequeued {
        /// Client id.
        client_id: Arc<str>,
        /// Message id.
        message_id: u64,
    },
    /// A persistent session received a QoS 2 PUBLISH with this packet id (PUBREC waits for it).
    Qos2Received {
        /// Client id.
        client_id: Arc<str>,
        /// Packet identifier.
        pkid: u16,
    },
    /// The client released a QoS 2 packet id with PUBREL (PUBCOMP waits for it).
    Qos2Released {
        /// Client id.
        client_id: Arc<str>,
        /// Packet identifier.
        pkid: u16,
    },
    /// A retained message was set (replaces any on its topic).
    Retained {
        /// The message.
        message: Arc<Message>,
    },
    /// The retained message on a topic was deleted.
    RetainedDeleted {
        /// Topic.
        topic: Arc<str>,
    },
}

/// A queued message of a restored session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredMessage {
    /// The message.
    pub message: Arc<Message>,
    /// Delivery QoS.
    pub qos: QoS,
    /// Retain flag to deliver with.
    pub retain: bool,
    /// Subscription identifiers.
    pub subscription_ids: Vec<u32>,
    /// The packet id it was (maybe) sent with: inflight, resent with this id and DUP.
    pub pkid: Option<u16>,
    /// PUBREC received (QoS 2): PUBREL is resent, not the PUBLISH.
    pub released: bool,
}

/// A persistent session as stored, for [`crate::Router::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredSession {
    /// Client id.
    pub client_id: Arc<str>,
    /// Protocol version.
    pub version: Version,
    /// Session Expiry Interval (seconds; `u32::MAX` never).
    pub expiry_interval: u32,
    /// When its connection ended; `None`: it was connected when the gateway stopped, and its
    /// connection is taken to end at the restore. It expires `expiry_interval` after this.
    pub disconnected_at: Option<Instant>,
    /// The will waiting for its delay, and when it is due (3.1.3.2.2).
    pub will: Option<(Instant, Will)>,
    /// Subscriptions: full filter, options, identifier.
    pub subscriptions: Vec<(Arc<str>, SubOptions, Option<u32>)>,
    /// Queued QoS 1/2 messages in queue order (inflight ones, with a packet id, first).
    pub messages: Vec<RestoredMessage>,
    /// Inbound QoS 2 packet ids received and not yet released (4.3.3).
    pub incoming_qos2: Vec<u16>,
}

/// The storage semantics in memory: applies writes in order and gives what
/// [`crate::Router::restore`] takes. The reference the shell's SQLite store must agree with, and
/// the store of the tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStore {
    /// Persistent sessions in creation order.
    pub sessions: Vec<RestoredSession>,
    /// Retained messages.
    pub retained: Vec<Arc<Message>>,
}

impl MemoryStore {
    fn session(&mut self, client_id: &Arc<str>) -> Option<&mut RestoredSession> {
        self.sessions.iter_mut().find(|s| s.client_id == *client_id)
    }

    /// Applies one write.
    pub fn apply(&mut self, write: StorageWrite) {
        match write {
            StorageWrite::Session {
                client_id,
                version,
                expiry_interval,
            } => match self.session(&client_id) {
                Some(s) => {
                    s.version = version;
                    s.expiry_interval = expiry_interval;
                    s.disconnected_at = None;
                    s.will = None;
                }
                None => self.sessions.push(RestoredSession {
                    client_id,
                    version,
                    expiry_interval,
                    disconnected_at: None,
                    will: None,
                    subscriptions: Vec::new(),
                    messages: Vec::new(),
                    incoming_qos2: Vec::new(),
                }),
            },
            StorageWrite::Disconnected {
                client_id,
                at,
                will,
            } => {
                if let Some(s) = self.session(&client_id) {
                    s.disconnected_at = Some(at);
                    s.will = will;
                }
            }
            StorageWrite::WillDone { client_id } => {
                if let Some(s) = self.session(&client_id) {
                    s.will = None;
                }
            }
            StorageWrite::SessionDeleted { client_id } => {
                self.sessions.retain(|s| s.client_id != client_id)
            }
            StorageWrite::Subscribed {
                client_id,
                filter,
                options,
                id,
            } => {
                if let Some(s) = self.session(&client_id) {
                    s.subscriptions.retain(|(f, _, _)| *f != filter);
                    s.subscriptions.push((filter, options, id));
                }
            }
            StorageWrite::Unsubscribed { client_id, filter } => {
                if let Some(s) = self.session(&client_id) {
                    s.subscriptions.retain(|(f, _, _)| *f != filter);
                }
            }
            StorageWrite::Enqueued {
                client_id,
                message,
                qos,
                retain,
                subscription_ids,
            } => {
                if let Some(s) = self.session(&client_id) {
                    s.messages.push(RestoredMessage {
                        message,
                        qos,
                        retain,
                        subscription_ids,
                        pkid: None,
                        released: false,
                    });
                }
            }
            StorageWrite::PacketId {
                client_id,
                message_id,
                pkid,
            } => {
                let s = self.session(&client_id);
                let m = s.and_then(|s| {
                    s.messages
                        .iter_mut()
                        .find(|m| m.message.id == message_id && m.pkid.is_none())
                });
                if let Some(m) = m {
                    m.pkid = Some(pkid);
                }
            }
            StorageWrite::PubRecReceived {
                client_id,
                message_id,
                pkid,
            } => {
                let s = self.session(&client_id);
                let m = s.and_then(|s| {
                    s.messages
                        .iter_mut()
                        .find(|m| m.message.id == message_id && m.pkid == Some(pkid))
                });
                if let Some(m) = m {
                    m.released = true;
                }
            }
            StorageWrite::Dequeued {
                client_id,
                message_id,
            } => {
                if let Some(s) = self.session(&client_id) {
                    if let Some(i) = s.messages.iter().position(|m| m.message.id == message_id) {
                        s.messages.remove(i);
                    }
                }
            }
            StorageWrite::Qos2Received { client_id, pkid } => {
                if let Some(s) = self.session(&client_id) {
                    s.incoming_qos2.retain(|p| *p != pkid);
                    s.incoming_qos2.push(pkid);
                }
            }
            StorageWrite::Qos2Released { client_id, pkid } => {
                if let Some(s) = self.session(&client_id) {
                    s.incoming_qos2.retain(|p| *p != pkid);
                }
            }
            StorageWrite::Retained { message } => {
                self.retained.retain(|m| m.topic != message.topic);
                self.retained.push(message);
            }
            StorageWrite::RetainedDeleted { topic } => self.retained.retain(|m| m.topic != topic),
        }
    }
}
