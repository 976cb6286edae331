//! The broker's tables: retained messages (table `retained`). Its queries, run by the store's
//! owner thread (see `grove_store`) inside the router's group commits (`persist`).

use bytes::Bytes;
use rusqlite::{params, Connection};

use grove_store::RetainedMessage;

/// Records the retained message of a topic (an empty payload deletes it).
pub(crate) fn apply_retain(c: &Connection, m: &RetainedMessage) -> rusqlite::Result<()> {
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

/// Every stored retained message, in topic order.
pub(crate) fn load_retained(c: &Connection) -> rusqlite::Result<Vec<RetainedMessage>> {
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
    use grove_store::Store;

    async fn retain(store: &Store, m: RetainedMessage) {
        store.transact(move |c| apply_retain(c, &m)).await.unwrap();
    }

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
        retain(&store, msg("a/b", b"1")).await;
        retain(&store, msg("a/c", b"2")).await;
        retain(&store, msg("a/b", b"3")).await;
        retain(&store, msg("a/c", b"")).await;
        thread.close().await;

        let (store, thread) = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.transact(load_retained).await.unwrap(),
            vec![msg("a/b", b"3")]
        );
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
                let m = RetainedMessage {
                    topic: format!("t/{i:03}"),
                    payload: Bytes::from(vec![b'x'; i + 1]),
                    qos: 0,
                };
                store.transact(move |c| apply_retain(c, &m)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let all = store.transact(load_retained).await.unwrap();
        assert_eq!(all.len(), 200);
        assert_eq!(all[199].payload.len(), 200);
        thread.close().await;
    }
}
