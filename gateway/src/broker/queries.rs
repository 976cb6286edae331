//! The broker's tables: retained messages, which rumqttd keeps only in memory (table `retained`).
//! Its queries, run by the store's owner thread (see `crate::store`).

use bytes::Bytes;
use rusqlite::{params, Connection};

use crate::store::{RetainedMessage, Store, StoreError};

impl Store {
    /// Durably records the retained message of a topic (an empty payload deletes it). Returns
    /// after the commit.
    pub async fn retain(&self, message: RetainedMessage) -> Result<(), StoreError> {
        self.transact(move |c| apply_retain(c, &message)).await
    }

    /// Every stored retained message, in topic order.
    pub async fn load_retained(&self) -> Result<Vec<RetainedMessage>, StoreError> {
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
