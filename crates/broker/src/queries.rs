//! The broker's tables: retained messages, which rumqttd keeps only in memory (table `retained`).
//! Its queries, run by the store's owner thread (see `grove_store`).

use std::future::Future;

use bytes::Bytes;
use rusqlite::{params, Connection};

use grove_store::{RetainedMessage, Store, StoreError};

/// The broker's queries: retained messages.
pub trait RetainedQueries {
    /// Durably records the retained message of a topic (an empty payload deletes it). Returns
    /// after the commit.
    fn retain(
        &self,
        message: RetainedMessage,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every stored retained message, in topic order.
    fn load_retained(
        &self,
    ) -> impl Future<Output = Result<Vec<RetainedMessage>, StoreError>> + Send;
}

impl RetainedQueries for Store {
    async fn retain(&self, message: RetainedMessage) -> Result<(), StoreError> {
        self.transact(move |c| apply_retain(c, &message)).await
    }

    async fn load_retained(&self) -> Result<Vec<RetainedMessage>, StoreError> {
        self.transact(load_retained).await
    }
}

fn apply_retain(c: &Connection, m: &RetainedMessage) -> rusqlite::Result<()> {
    if m.payload.is_empty() {
        c.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
            .execute(params![m.topic])?;
    } else {
        c.prepare_cached(
            "INSERT INTO retained (topic, payload, qos) VALUES (?1, ?2, ?3)
             ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos",
        )?
        .execute(params![m.topic, m.payload.as_ref(), m.qos])?;
    }
    Ok(())
}

fn load_retained(c: &Connection) -> rusqlite::Result<Vec<RetainedMessage>> {
    let mut stmt = c.prepare_cached("SELECT topic, payload, qos FROM retained ORDER BY topic")?;
    let rows = stmt.query_map([], |r| {
        Ok(RetainedMessage {
            topic: r.get(0)?,
            payload: Bytes::from(r.get::<_, Vec<u8>>(1)?),
            qos: r.get(2)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static [u8]) -> RetainedMessage {
        RetainedMessage {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: 1,
        }
    }

    #[tokio::test]
    async fn retained_survive_reopen_and_empty_payload_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        store.retain(msg("a/b", b"1")).await.unwrap();
        store.retain(msg("a/c", b"2")).await.unwrap();
        store.retain(msg("a/b", b"3")).await.unwrap();
        store.retain(msg("a/c", b"")).await.unwrap();
        thread.close().await;

        let (store, thread) = Store::open(dir.path()).unwrap();
        assert_eq!(store.load_retained().await.unwrap(), vec![msg("a/b", b"3")]);
        thread.close().await;
    }

    #[tokio::test]
    async fn concurrent_writers_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .retain(RetainedMessage {
                        topic: format!("t/{i:03}"),
                        payload: Bytes::from(vec![b'x'; i + 1]),
                        qos: 0,
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let all = store.load_retained().await.unwrap();
        assert_eq!(all.len(), 200);
        assert_eq!(all[199].payload.len(), 200);
        thread.close().await;
    }
}
