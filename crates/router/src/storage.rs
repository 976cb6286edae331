//! The storage boundary: writes the core emits and what the shell gives back at startup.
//!
//! Durable is everything a session that outlives its connection needs after kill -9: the session
//! record, its subscriptions, the QoS 1/2 messages queued or inflight for it and the inbound QoS 2
//! packet ids it has not released; and the retained messages. The core numbers writes; the shell commits them in order (a group commit per batch it
//! drains) and reports the highest committed number with `storage_committed`. A publisher's PUBACK
//! or PUBREC waits for the writes its message caused. Removals (`Dequeued`, `Unsubscribed`, ...)
//! hold nothing back: losing one in a crash means a redelivery, never a loss.

use crate::packet::{Message, QoS, SubOptions, Version};
use std::sync::Arc;

/// A write for the shell's store, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageWrite {
    /// A persistent session exists (or its expiry interval changed).
    Session {
        /// Client id.
        client_id: Arc<str>,
        /// Protocol version.
        version: Version,
        /// Session Expiry Interval (seconds; `u32::MAX` never).
        expiry_interval: u32,
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
    /// A queued message is done (acknowledged, expired, dropped or discarded).
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
}

/// A persistent session as stored, for [`crate::Router::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredSession {
    /// Client id.
    pub client_id: Arc<str>,
    /// Protocol version.
    pub version: Version,
    /// Session Expiry Interval; the session expires this long after the restore unless its
    /// client reconnects (the disconnect time is not stored: the conservative choice).
    pub expiry_interval: u32,
    /// Subscriptions: full filter, options, identifier.
    pub subscriptions: Vec<(Arc<str>, SubOptions, Option<u32>)>,
    /// Queued QoS 1/2 messages in queue order (inflight ones first, resent on reconnect).
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
                }
                None => self.sessions.push(RestoredSession {
                    client_id,
                    version,
                    expiry_interval,
                    subscriptions: Vec::new(),
                    messages: Vec::new(),
                    incoming_qos2: Vec::new(),
                }),
            },
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
                    });
                }
            }
            StorageWrite::Dequeued {
                client_id,
                message_id,
            } => {
                if let Some(s) = self.session(&client_id) {
                    s.messages.retain(|m| m.message.id != message_id);
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
