//! The shadow service's table (`shadows`) and its queries, run by the store's owner thread (see
//! `grove_store`).

use std::future::Future;

use rusqlite::{params, Connection};

use grove_store::{ShadowKey, Store, StoreError, StoredShadow};

/// The shadow service's queries: shadow documents and tombstones.
pub trait ShadowQueries {
    /// Durably writes shadows, all or none. Returns after the commit.
    fn write_shadows(
        &self,
        shadows: Vec<StoredShadow>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One shadow, if stored.
    fn load_shadow(
        &self,
        key: ShadowKey,
    ) -> impl Future<Output = Result<Option<StoredShadow>, StoreError>> + Send;

    /// Durably forgets the tombstones of shadows deleted before `deleted_before` (epoch seconds).
    /// The shadow module decides the cut-off: a tombstone may go once no re-created shadow would
    /// continue its version.
    fn drop_tombstones(
        &self,
        deleted_before: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every live shadow's key and version (tombstones of deleted shadows left out), ordered by
    /// thing then name.
    fn list_shadows(
        &self,
    ) -> impl Future<Output = Result<Vec<(ShadowKey, u64)>, StoreError>> + Send;
}

impl ShadowQueries for Store {
    async fn write_shadows(&self, shadows: Vec<StoredShadow>) -> Result<(), StoreError> {
        self.transact(move |c| shadows.iter().try_for_each(|s| write_shadow(c, s)))
            .await
    }

    async fn load_shadow(&self, key: ShadowKey) -> Result<Option<StoredShadow>, StoreError> {
        self.transact(move |c| load_shadow(c, key)).await
    }

    async fn drop_tombstones(&self, deleted_before: u64) -> Result<(), StoreError> {
        self.transact(move |c| {
            c.prepare_cached("DELETE FROM shadows WHERE deleted_at < ?1")?
                .execute(params![deleted_before as i64])
                .map(drop)
        })
        .await
    }

    async fn list_shadows(&self) -> Result<Vec<(ShadowKey, u64)>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shadows_are_written_together_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let key = |thing: &str, name: Option<&str>| ShadowKey {
            thing: thing.into(),
            name: name.map(Into::into),
        };
        let shadow = |k: ShadowKey, v: u64| StoredShadow {
            key: k,
            version: v,
            deleted_at: None,
            document: format!("{{\"v\":{v}}}"),
        };
        store
            .write_shadows(vec![
                shadow(key("b", None), 1),
                shadow(key("a", Some("x")), 2),
            ])
            .await
            .unwrap();
        store
            .write_shadows(vec![shadow(key("b", None), 3)])
            .await
            .unwrap();
        thread.close().await;
        let (store, thread) = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.list_shadows().await.unwrap(),
            vec![(key("a", Some("x")), 2), (key("b", None), 3)]
        );
        let b = store.load_shadow(key("b", None)).await.unwrap().unwrap();
        assert_eq!(b.document, "{\"v\":3}");
        assert_eq!(store.load_shadow(key("c", None)).await.unwrap(), None);
        thread.close().await;
    }

    fn key(thing: &str, name: Option<&str>) -> ShadowKey {
        ShadowKey {
            thing: thing.into(),
            name: name.map(Into::into),
        }
    }

    /// A shadow row; `deleted_at` makes it a tombstone.
    fn row(thing: &str, version: u64, deleted_at: Option<u64>) -> StoredShadow {
        StoredShadow {
            key: key(thing, None),
            version,
            deleted_at,
            document: format!("{{\"version\":{version}}}"),
        }
    }

    #[tokio::test]
    async fn tombstones_are_not_listed_and_only_those_deleted_before_the_cut_off_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        store
            .write_shadows(vec![
                row("live", 3, None),
                row("old-tombstone", 5, Some(100)),
                row("new-tombstone", 7, Some(200)),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.list_shadows().await.unwrap(),
            vec![(key("live", None), 3)]
        );
        store.drop_tombstones(200).await.unwrap();
        let load = |thing: &str| store.load_shadow(key(thing, None));
        assert_eq!(load("old-tombstone").await.unwrap(), None);
        // Deleted at the cut-off itself: still protects its version, so it stays.
        assert_eq!(
            load("new-tombstone").await.unwrap(),
            Some(row("new-tombstone", 7, Some(200)))
        );
        assert_eq!(load("live").await.unwrap(), Some(row("live", 3, None)));
        // A re-created shadow is live again and listed.
        store
            .write_shadows(vec![row("new-tombstone", 8, None)])
            .await
            .unwrap();
        assert_eq!(
            store.list_shadows().await.unwrap(),
            vec![(key("live", None), 3), (key("new-tombstone", None), 8)]
        );
        thread.close().await;
    }
}
