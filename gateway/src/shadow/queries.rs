//! The shadow service's table (`shadows`) and its queries, run by the store's owner thread (see
//! `crate::store`).

use rusqlite::{params, Connection};

use crate::store::{ShadowKey, Store, StoreError, StoredShadow};

impl Store {
    /// Durably writes shadows, all or none. Returns after the commit.
    pub async fn write_shadows(&self, shadows: Vec<StoredShadow>) -> Result<(), StoreError> {
        self.transact(move |c| shadows.iter().try_for_each(|s| write_shadow(c, s)))
            .await
    }

    /// One shadow, if stored.
    pub async fn load_shadow(&self, key: ShadowKey) -> Result<Option<StoredShadow>, StoreError> {
        self.transact(move |c| load_shadow(c, key)).await
    }

    /// Durably forgets the tombstones of shadows deleted before `deleted_before` (epoch seconds).
    /// The shadow module decides the cut-off: a tombstone may go once no re-created shadow would
    /// continue its version.
    pub async fn drop_tombstones(&self, deleted_before: u64) -> Result<(), StoreError> {
        self.transact(move |c| {
            c.prepare_cached("DELETE FROM shadows WHERE deleted_at < ?1")?
                .execute(params![deleted_before as i64])
                .map(drop)
        })
        .await
    }

    /// Every live shadow's key and version (tombstones of deleted shadows left out), ordered by
    /// thing then name.
    pub async fn list_shadows(&self) -> Result<Vec<(ShadowKey, u64)>, StoreError> {
        self.transact(list_shadows).await
    }
}

fn write_shadow(c: &Connection, s: &StoredShadow) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO shadows (thing, name, version, deleted_at, document) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (thing, name) DO UPDATE SET version = excluded.version,
           deleted_at = excluded.deleted_at, document = excluded.document",
    )?
    .execute(params![
        s.key.thing,
        s.key.name.as_deref().unwrap_or(""),
        s.version as i64,
        s.deleted_at.map(|at| at as i64),
        s.document
    ])?;
    Ok(())
}

fn load_shadow(c: &Connection, key: ShadowKey) -> rusqlite::Result<Option<StoredShadow>> {
    let mut stmt = c.prepare_cached(
        "SELECT version, deleted_at, document FROM shadows WHERE thing = ?1 AND name = ?2",
    )?;
    let mut rows = stmt.query(params![key.thing, key.name.as_deref().unwrap_or("")])?;
    match rows.next()? {
        None => Ok(None),
        Some(row) => Ok(Some(StoredShadow {
            version: row.get::<_, i64>(0)? as u64,
            deleted_at: row.get::<_, Option<i64>>(1)?.map(|at| at as u64),
            document: row.get(2)?,
            key,
        })),
    }
}

fn list_shadows(c: &Connection) -> rusqlite::Result<Vec<(ShadowKey, u64)>> {
    let mut stmt = c.prepare_cached(
        "SELECT thing, name, version FROM shadows WHERE deleted_at IS NULL ORDER BY thing, name",
    )?;
    let rows = stmt.query_map([], |r| {
        let name: String = r.get(1)?;
        Ok((
            ShadowKey {
                thing: r.get(0)?,
                name: (!name.is_empty()).then_some(name),
            },
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    rows.collect()
}
