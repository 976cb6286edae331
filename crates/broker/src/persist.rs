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
//! `router-durable` adds with its migration: its `sessions::apply` and `sessions::load` have the
//! signatures of [`apply`] and [`load_state`] here and replace them. Until it is merged, those
//! writes are acknowledged without being stored, so persistent sessions live in memory only (they
//! survive reconnects, not a restart).

use std::sync::Arc;

use grove_router::{Message, MessageProperties, QoS, RestoredSession, StorageWrite};
use grove_store::{RetainedMessage, Store, StoreError};
use rusqlite::Connection;

use crate::queries::{apply_retain, load_retained};

/// What [`load`] gives: the sessions and retained messages for `Router::restore`.
pub(crate) type Loaded = (Vec<RestoredSession>, Vec<Arc<Message>>);

/// Commits `writes` (in order) in one `Store::transact` unit and returns the highest write
/// number, for `Router::storage_committed`.
pub(crate) async fn commit(
    store: &Store,
    writes: Vec<(u64, StorageWrite)>,
) -> Result<u64, StoreError> {
    let Some(&(last, _)) = writes.last() else {
        return Ok(0);
    };
    let writes: Vec<StorageWrite> = writes.into_iter().map(|(_, w)| w).collect();
    store.transact(move |c| apply(c, &writes)).await?;
    Ok(last)
}

/// The stored state, for `Router::restore`.
pub(crate) async fn load(store: &Store) -> Result<Loaded, StoreError> {
    store.transact(load_state).await
}

/// Applies the writes this branch stores (retained messages); the same signature as
/// `sessions::apply` of branch `router-durable`, which takes its place.
fn apply(c: &Connection, writes: &[StorageWrite]) -> rusqlite::Result<()> {
    for w in writes {
        let m = match w {
            StorageWrite::Retained { message } => RetainedMessage {
                topic: message.topic.to_string(),
                payload: message.payload.clone(),
                qos: message.qos as u8,
            },
            StorageWrite::RetainedDeleted { topic } => RetainedMessage {
                topic: topic.to_string(),
                payload: bytes::Bytes::new(),
                qos: 0,
            },
            _ => continue,
        };
        apply_retain(c, &m)?;
    }
    Ok(())
}

/// The retained messages (no sessions are stored yet); the same signature as `sessions::load` of
/// branch `router-durable`, which takes its place.
fn load_state(c: &Connection) -> rusqlite::Result<Loaded> {
    let publisher: Arc<str> = Arc::from("");
    let retained = load_retained(c)?
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
                expires_at: None,
                publisher: publisher.clone(),
            })
        })
        .collect();
    Ok((Vec::new(), retained))
}
