//! The shadow service's table (`shadows`) and its queries, run by the store's owner thread (see
//! `grove_store`).

use std::future::Future;

use rusqlite::{params, Connection};

use grove_store::{Queued, ShadowKey, Store, StoreError, StoredShadow};

/// What a shadow write expects the store to hold before it: the state the new document was computed
/// from. The shadow service queues a batch's writes before the previous batch has committed (see
/// `service`), so a write can build on one that then fails; checked here, such a write fails too
/// instead of storing a document that contains the failed write's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaces {
    /// No row: the shadow was never stored.
    Nothing,
    /// A live shadow at this version.
    Live(u64),
    /// A tombstone at this version, or no row if the tombstone has since expired and been dropped.
    Tombstone(u64),
}

/// One shadow to write, and what it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowWrite {
    /// The new row.
    pub row: StoredShadow,
    /// What the store must hold for the write to go through.
    pub replaces: Replaces,
}

/// The shadow service's queries: shadow documents and tombstones.
pub trait ShadowQueries {
    /// Queues shadow writes, all or none: the returned [`Queued`] resolves after their commit,
    /// or to an error (nothing written) if one of them does not find what it replaces.
    fn write_shadows(
        &self,
        shadows: Vec<ShadowWrite>,
    ) -> impl Future<Output = Result<Queued<()>, StoreError>> + Send;

    /// The stored shadows of `keys` (`None`: not stored), in their order.
    fn load_shadows(
        &self,
        keys: Vec<ShadowKey>,
    ) -> impl Future<Output = Result<Vec<Option<StoredShadow>>, StoreError>> + Send;

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
    async fn write_shadows(&self, shadows: Vec<ShadowWrite>) -> Result<Queued<()>, StoreError> {
        self.enqueue(move |c| shadows.iter().try_for_each(|s| write_shadow(c, s)))
            .await
    }

    async fn load_shadows(
        &self,
        keys: Vec<ShadowKey>,
    ) -> Result<Vec<Option<StoredShadow>>, StoreError> {
        self.transact(move |c| keys.into_iter().map(|k| load_shadow(c, k)).collect())
            .await
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

/// Writes one shadow if the store holds what it replaces (one statement per case, so the check and
/// the write are one step: it changes one row, or none when the store holds something else).
fn write_shadow(c: &Connection, w: &ShadowWrite) -> rusqlite::Result<()> {
    let s = &w.row;
    let (sql, expected) = match w.replaces {
        // A row in the way: nothing inserted.
        Replaces::Nothing => (
            "INSERT INTO shadows (thing, name, version, deleted_at, document)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (thing, name) DO NOTHING",
            None,
        ),
        Replaces::Live(version) => (
            "UPDATE shadows SET version = ?3, deleted_at = ?4, document = ?5
             WHERE thing = ?1 AND name = ?2 AND version = ?6 AND deleted_at IS NULL",
            Some(version),
        ),
        Replaces::Tombstone(version) => (
            "INSERT INTO shadows (thing, name, version, deleted_at, document)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (thing, name) DO UPDATE SET version = excluded.version,
               deleted_at = excluded.deleted_at, document = excluded.document
             WHERE shadows.version = ?6 AND shadows.deleted_at IS NOT NULL",
            Some(version),
        ),
    };
    let mut stmt = c.prepare_cached(sql)?;
    let (thing, name) = (&s.key.thing, s.key.name.as_deref().unwrap_or(""));
    let (version, deleted_at) = (s.version as i64, s.deleted_at.map(|at| at as i64));
    let changed = match expected {
        None => stmt.execute(params![thing, name, version, deleted_at, s.document])?,
        Some(v) => stmt.execute(params![
            thing, name, version, deleted_at, s.document, v as i64
        ])?,
    };
    if changed == 1 {
        return Ok(());
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
        Some(format!(
            "shadow {thing}/{name} is not at the version the write replaces ({:?})",
            w.replaces
        )),
    ))
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

    fn key(thing: &str, name: Option<&str>) -> ShadowKey {
        ShadowKey {
            thing: thing.into(),
            name: name.map(Into::into),
        }
    }

    /// A shadow row of the classic shadow of `thing`; `deleted_at` makes it a tombstone.
    fn row(thing: &str, version: u64, deleted_at: Option<u64>) -> StoredShadow {
        StoredShadow {
            key: key(thing, None),
            version,
            deleted_at,
            document: format!("{{\"version\":{version}}}"),
        }
    }

    fn write(row: StoredShadow, replaces: Replaces) -> ShadowWrite {
        ShadowWrite { row, replaces }
    }

    async fn commit(store: &Store, writes: Vec<ShadowWrite>) -> Result<(), StoreError> {
        store.write_shadows(writes).await?.await
    }

    async fn load(store: &Store, thing: &str) -> Option<StoredShadow> {
        let mut rows = store.load_shadows(vec![key(thing, None)]).await.unwrap();
        rows.pop().unwrap()
    }

    #[tokio::test]
    async fn shadows_are_written_together_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let named = StoredShadow {
            key: key("a", Some("x")),
            ..row("a", 2, None)
        };
        // Queued one after the other before either committed: the second builds on the first.
        let first = store
            .write_shadows(vec![
                write(row("b", 1, None), Replaces::Nothing),
                write(named, Replaces::Nothing),
            ])
            .await
            .unwrap();
        let second = store
            .write_shadows(vec![write(row("b", 3, None), Replaces::Live(1))])
            .await
            .unwrap();
        first.await.unwrap();
        second.await.unwrap();
        thread.close().await;
        let (store, thread) = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.list_shadows().await.unwrap(),
            vec![(key("a", Some("x")), 2), (key("b", None), 3)]
        );
        assert_eq!(
            store
                .load_shadows(vec![key("b", None), key("c", None), key("a", Some("x"))])
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.map(|r| r.version))
                .collect::<Vec<_>>(),
            [Some(3), None, Some(2)]
        );
        thread.close().await;
    }

    /// A write that does not find the state it was computed from fails with all of its batch,
    /// whatever else it held.
    #[tokio::test]
    async fn a_write_that_does_not_find_what_it_replaces_fails_with_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        commit(
            &store,
            vec![
                write(row("live", 3, None), Replaces::Nothing),
                write(row("gone", 5, Some(100)), Replaces::Nothing),
            ],
        )
        .await
        .unwrap();
        for wrong in [
            Replaces::Live(2),      // an older version
            Replaces::Nothing,      // believed new, but stored
            Replaces::Tombstone(3), // the right version, but live
        ] {
            let outcome = commit(
                &store,
                vec![
                    write(row("fresh", 1, None), Replaces::Nothing),
                    write(row("live", 4, None), wrong),
                ],
            )
            .await;
            assert!(
                matches!(&outcome, Err(StoreError::Sqlite(e)) if e.contains("not at the version")),
                "{wrong:?}: {outcome:?}"
            );
            assert_eq!(load(&store, "fresh").await, None, "{wrong:?}");
            assert_eq!(load(&store, "live").await, Some(row("live", 3, None)));
        }
        // A live shadow that is not there (its creation failed) is not re-created.
        assert!(commit(
            &store,
            vec![write(row("never", 2, None), Replaces::Live(1))]
        )
        .await
        .is_err());
        assert_eq!(load(&store, "never").await, None);
        // A tombstone may have been dropped meanwhile: its successor is written either way.
        store.drop_tombstones(101).await.unwrap();
        commit(
            &store,
            vec![write(row("gone", 6, None), Replaces::Tombstone(5))],
        )
        .await
        .unwrap();
        assert_eq!(load(&store, "gone").await, Some(row("gone", 6, None)));
        thread.close().await;
    }

    #[tokio::test]
    async fn tombstones_are_not_listed_and_only_those_deleted_before_the_cut_off_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        commit(
            &store,
            vec![
                write(row("live", 3, None), Replaces::Nothing),
                write(row("old-tombstone", 5, Some(100)), Replaces::Nothing),
                write(row("new-tombstone", 7, Some(200)), Replaces::Nothing),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            store.list_shadows().await.unwrap(),
            vec![(key("live", None), 3)]
        );
        store.drop_tombstones(200).await.unwrap();
        assert_eq!(load(&store, "old-tombstone").await, None);
        // Deleted at the cut-off itself: still protects its version, so it stays.
        assert_eq!(
            load(&store, "new-tombstone").await,
            Some(row("new-tombstone", 7, Some(200)))
        );
        assert_eq!(load(&store, "live").await, Some(row("live", 3, None)));
        // A re-created shadow is live again and listed.
        commit(
            &store,
            vec![write(row("new-tombstone", 8, None), Replaces::Tombstone(7))],
        )
        .await
        .unwrap();
        assert_eq!(
            store.list_shadows().await.unwrap(),
            vec![(key("live", None), 3), (key("new-tombstone", None), 8)]
        );
        thread.close().await;
    }
}
