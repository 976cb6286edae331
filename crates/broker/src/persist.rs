//! The router's storage seam: the one place where the core's numbered [`StorageWrite`]s go to the
//! store, and where the state to restore at startup comes from.
//!
//! [`commit`] hands one batch (everything `Router::poll_storage` gave since the previous commit)
//! to [`SessionQueries::persist`] as one `grove_store::Store::transact` unit, so one fsync covers
//! the batch (group commit), and returns the highest write number for `Router::storage_committed`.
//! [`load`] gives what `Router::restore` takes. The tables and what is durable when are
//! `sessions.rs`'s (persistent sessions, their subscriptions and queues, inbound QoS 2 ids,
//! outbound packet ids and PUBREC state, pending wills, disconnect times, retained messages).
//! The router task keeps one commit in flight at a time, so the database always holds a prefix of
//! the core's writes.

use grove_router::StorageWrite;
use grove_store::{Store, StoreError};

use crate::sessions::{Loaded, SessionQueries};

/// Commits `writes` (in order) in one `Store::transact` unit and returns the highest write
/// number, for `Router::storage_committed`.
pub(crate) async fn commit(
    store: &Store,
    writes: Vec<(u64, StorageWrite)>,
) -> Result<u64, StoreError> {
    let Some(&(last, _)) = writes.last() else {
        return Ok(0);
    };
    store
        .persist(writes.into_iter().map(|(_, w)| w).collect())
        .await?;
    Ok(last)
}

/// The stored state, for `Router::restore`.
pub(crate) async fn load(store: &Store) -> Result<Loaded, StoreError> {
    store.load_sessions().await
}
