//! The router's storage seam: the one place where the core's numbered [`StorageWrite`]s become
//! SQLite rows, and where the state to restore at startup comes from.
//!
//! [`commit`] applies one batch (everything `Router::poll_storage` gave since the previous
//! commit) in one `grove_store::Store::transact` unit, so one fsync covers the batch (group
//! commit), and returns the highest write number for `Router::storage_committed`. [`load`] gives
//! what `Router::restore` takes.
//!
//! What is stored today: retained messages (table `retained`, see `queries`), which survive
//! restarts as they always did. The sessions' rows (persistent sessions, their subscriptions,
//! queued QoS 1/2 messages and inbound QoS 2 ids) are written by `sessions.rs`, which the branch
//! `router-durable` adds with its migration; until it is merged, those writes are acknowledged
//! without being stored, so persistent sessions live in memory only (they survive reconnects,
//! not a restart).

use std::sync::Arc;

use grove_router::{Instant, Message, MessageProperties, QoS, RestoredSession, StorageWrite};
use grove_store::{RetainedMessage, Store, StoreError};

use crate::queries::{apply_retain, load_retained};

/// Commits `writes` (in order) in one transaction and returns the highest write number.
pub(crate) async fn commit(
    store: &Store,
    writes: Vec<(u64, StorageWrite)>,
) -> Result<u64, StoreError> {
    let Some(&(last, _)) = writes.last() else {
        return Ok(0);
    };
    let retained: Vec<RetainedMessage> = writes
        .into_iter()
        .filter_map(|(_, w)| match w {
            StorageWrite::Retained { message } => Some(RetainedMessage {
                topic: message.topic.to_string(),
                payload: message.payload.clone(),
                qos: message.qos as u8,
            }),
            StorageWrite::RetainedDeleted { topic } => Some(RetainedMessage {
                topic: topic.to_string(),
                payload: bytes::Bytes::new(),
                qos: 0,
            }),
            _ => None,
        })
        .collect();
    if retained.is_empty() {
        return Ok(last);
    }
    store
        .transact(move |c| retained.iter().try_for_each(|m| apply_retain(c, m)))
        .await?;
    Ok(last)
}

/// The stored sessions and retained messages, for `Router::restore`.
pub(crate) async fn load(
    store: &Store,
) -> Result<(Vec<RestoredSession>, Vec<Arc<Message>>), StoreError> {
    let retained = store.transact(load_retained).await?;
    let publisher: Arc<str> = Arc::from("");
    let retained = retained
        .into_iter()
        .zip(1..)
        .map(|(m, id)| {
            Arc::new(Message {
                id,
                topic: m.topic.into(),
                payload: m.payload,
                qos: if m.qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
                retain: true,
                properties: MessageProperties::default(),
                expires_at: None::<Instant>,
                publisher: publisher.clone(),
            })
        })
        .collect();
    Ok((Vec::new(), retained))
}
