//! Cloud sync's tables (`cloud_outbox`, `cloud_shadow_sync`) and their queries, run by the
//! store's owner thread (see `grove_store`).

use std::future::Future;

use bytes::Bytes;
use rusqlite::{params, Connection};

use crate::outbox::Entry;
use grove_store::{OutboxMessage, ShadowKey, Store, StoreError, SyncState};

/// Cloud sync's queries: the outbox and shadow sync states.
pub trait CloudQueries {
    /// Durably appends messages to the cloud outbox and deletes others (acknowledged or dropped),
    /// all in one transaction. Returns after the commit.
    fn outbox_write(
        &self,
        append: Vec<OutboxMessage>,
        delete: Vec<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The outbox's index (sequence number, topic plus payload size, append time), in order.
    fn outbox_index(&self) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send;

    /// Up to `limit` outbox messages with a sequence number above `after`, in order.
    fn outbox_load(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>, StoreError>> + Send;

    /// Every shadow's cloud sync state.
    fn load_sync_states(&self) -> impl Future<Output = Result<Vec<SyncState>, StoreError>> + Send;

    /// Durably records a shadow's cloud sync state. Returns after the commit.
    fn write_sync_state(
        &self,
        state: SyncState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl CloudQueries for Store {
    async fn outbox_write(
        &self,
        append: Vec<OutboxMessage>,
        delete: Vec<u64>,
    ) -> Result<(), StoreError> {
        self.transact(move |c| outbox_write(c, &append, &delete))
            .await
    }

    async fn outbox_index(&self) -> Result<Vec<Entry>, StoreError> {
        self.transact(outbox_index).await
    }

    async fn outbox_load(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        self.transact(move |c| outbox_load(c, after, limit)).await
    }

    async fn load_sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
        self.transact(load_sync_states).await
    }

    async fn write_sync_state(&self, state: SyncState) -> Result<(), StoreError> {
        self.transact(move |c| write_sync_state(c, &state)).await
    }
}

fn outbox_write(c: &Connection, append: &[OutboxMessage], delete: &[u64]) -> rusqlite::Result<()> {
    let mut insert = c.prepare_cached(
        "INSERT INTO cloud_outbox (seq, topic, payload, enqueued_ms, retain, user_properties, batch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for m in append {
        let properties = (!m.user_properties.is_empty())
            .then(|| serde_json::to_string(&m.user_properties).unwrap_or_default());
        insert.execute(params![
            m.seq as i64,
            m.topic,
            m.payload.as_ref(),
            m.enqueued_ms as i64,
            m.retain,
            properties,
            m.batch,
        ])?;
    }
    let mut remove = c.prepare_cached("DELETE FROM cloud_outbox WHERE seq = ?1")?;
    for seq in delete {
        remove.execute(params![*seq as i64])?;
    }
    Ok(())
}

fn outbox_index(c: &Connection) -> rusqlite::Result<Vec<Entry>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, length(CAST(topic AS BLOB)) + length(payload), enqueued_ms FROM cloud_outbox ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Entry {
            seq: r.get::<_, i64>(0)? as u64,
            size: r.get::<_, i64>(1)? as u64,
            enqueued_ms: r.get::<_, i64>(2)? as u64,
        })
    })?;
    rows.collect()
}

fn outbox_load(c: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<OutboxMessage>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, topic, payload, enqueued_ms, retain, user_properties, batch FROM cloud_outbox
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
        // Written by `outbox_write` from a list of pairs: unreadable only if someone else wrote
        // it, and then the message still goes up, without them.
        let properties: Option<String> = r.get(5)?;
        Ok(OutboxMessage {
            seq: r.get::<_, i64>(0)? as u64,
            topic: r.get(1)?,
            payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
            enqueued_ms: r.get::<_, i64>(3)? as u64,
            retain: r.get(4)?,
            user_properties: properties
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or_default(),
            batch: r.get(6)?,
        })
    })?;
    rows.collect()
}

fn load_sync_states(c: &Connection) -> rusqlite::Result<Vec<SyncState>> {
    let mut stmt = c.prepare_cached(
        "SELECT thing, name, base, local_version, cloud_version FROM cloud_shadow_sync ORDER BY thing, name",
    )?;
    let rows = stmt.query_map([], |r| {
        let name: String = r.get(1)?;
        Ok(SyncState {
            key: ShadowKey {
                thing: r.get(0)?,
                name: (!name.is_empty()).then_some(name),
            },
            base: r.get(2)?,
            local_version: r.get::<_, i64>(3)? as u64,
            cloud_version: r.get::<_, i64>(4)? as u64,
        })
    })?;
    rows.collect()
}

fn write_sync_state(c: &Connection, s: &SyncState) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO cloud_shadow_sync (thing, name, base, local_version, cloud_version)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (thing, name) DO UPDATE SET base = excluded.base,
           local_version = excluded.local_version, cloud_version = excluded.cloud_version",
    )?
    .execute(params![
        s.key.thing,
        s.key.name.as_deref().unwrap_or(""),
        s.base,
        s.local_version as i64,
        s.cloud_version as i64
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_outbox_keeps_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let m = |seq: u64| OutboxMessage {
            seq,
            topic: format!("t/{seq}"),
            payload: Bytes::from(vec![b'x'; seq as usize]),
            enqueued_ms: 100 + seq,
            retain: seq == 4,
            user_properties: if seq == 5 {
                vec![("k".into(), "v".into()), ("k".into(), "w".into())]
            } else {
                Vec::new()
            },
            batch: (seq == 6).then(|| "b/all".to_owned()),
        };
        store
            .outbox_write((1..=5).map(m).collect(), vec![])
            .await
            .unwrap();
        store.outbox_write(vec![m(6)], vec![1, 3]).await.unwrap();
        thread.close().await;
        let (store, thread) = Store::open(dir.path()).unwrap();
        let index = store.outbox_index().await.unwrap();
        let seqs: Vec<u64> = index.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 4, 5, 6]);
        assert_eq!((index[0].size, index[0].enqueued_ms), (3 + 2, 102));
        let page = store.outbox_load(2, 3).await.unwrap();
        assert_eq!(
            page,
            vec![m(4), m(5), m(6)],
            "with retain, properties and batch"
        );
        thread.close().await;
    }
}
