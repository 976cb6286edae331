//! The functions component's tables (`function_versions`, `function_aliases`, `function_kv`,
//! `function_events`) and their queries, run by the store's owner thread (see `grove_store`).

use std::future::Future;

use bytes::Bytes;
use rusqlite::{params, Connection};

use grove_store::{
    KvWrite, Store, StoreError, StoredAlias, StoredEvent, StoredFunctionVersion, StoredFunctions,
};

/// The functions component's queries: versions, aliases, key-value state, async events.
pub trait FunctionQueries {
    /// Durably records a function version.
    fn save_function_version(
        &self,
        version: StoredFunctionVersion,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Durably creates or replaces a function alias.
    fn set_function_alias(
        &self,
        alias: StoredAlias,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Durably forgets a function and its key-value state.
    fn remove_function(&self, name: String) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every function version (ordered by name, version) and alias.
    fn load_functions(&self) -> impl Future<Output = Result<StoredFunctions, StoreError>> + Send;

    /// One key of a function's key-value namespace.
    fn kv_get(
        &self,
        name: String,
        key: String,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Durably applies writes to a function's namespace, all or none.
    fn kv_write(
        &self,
        name: String,
        writes: Vec<KvWrite>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Durably records new function events and forgets finished ones. Returns after the commit.
    fn events_write(
        &self,
        append: Vec<StoredEvent>,
        delete: Vec<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every function event not done yet, in arrival order.
    fn load_events(&self) -> impl Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send;
}

impl FunctionQueries for Store {
    async fn save_function_version(
        &self,
        version: StoredFunctionVersion,
    ) -> Result<(), StoreError> {
        self.transact(move |c| {
            c.prepare_cached(
                "INSERT INTO function_versions (name, version, manifest, module, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                version.name,
                version.version as i64,
                version.manifest,
                version.module,
                version.created_ms
            ])
            .map(drop)
        })
        .await
    }

    async fn set_function_alias(&self, alias: StoredAlias) -> Result<(), StoreError> {
        self.transact(move |c| {
            c.prepare_cached(
                "INSERT INTO function_aliases (name, alias, version, weight_version, weight_percent)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version,
                   weight_version = excluded.weight_version, weight_percent = excluded.weight_percent",
            )?
            .execute(params![
                alias.name,
                alias.alias,
                alias.version as i64,
                alias.weight.map(|w| w.0 as i64),
                alias.weight.map(|w| w.1)
            ])
            .map(drop)
        })
        .await
    }

    async fn remove_function(&self, name: String) -> Result<(), StoreError> {
        self.transact(move |c| {
            for table in ["function_versions", "function_aliases", "function_kv"] {
                c.prepare_cached(&format!("DELETE FROM {table} WHERE name = ?1"))?
                    .execute(params![name])?;
            }
            Ok(())
        })
        .await
    }

    async fn load_functions(&self) -> Result<StoredFunctions, StoreError> {
        self.transact(load_functions).await
    }

    async fn kv_get(&self, name: String, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        self.transact(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT value FROM function_kv WHERE name = ?1 AND key = ?2")?;
            let mut rows = stmt.query(params![name, key])?;
            rows.next()?.map(|r| r.get::<_, Vec<u8>>(0)).transpose()
        })
        .await
    }

    async fn kv_write(&self, name: String, writes: Vec<KvWrite>) -> Result<(), StoreError> {
        self.transact(move |c| {
            for (key, value) in &writes {
                match value {
                    Some(v) => c
                        .prepare_cached(
                            "INSERT INTO function_kv (name, key, value) VALUES (?1, ?2, ?3)
                             ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(params![name, key, v])?,
                    None => c
                        .prepare_cached("DELETE FROM function_kv WHERE name = ?1 AND key = ?2")?
                        .execute(params![name, key])?,
                };
            }
            Ok(())
        })
        .await
    }

    async fn events_write(
        &self,
        append: Vec<StoredEvent>,
        delete: Vec<u64>,
    ) -> Result<(), StoreError> {
        self.transact(move |c| events_write(c, &append, &delete))
            .await
    }

    async fn load_events(&self) -> Result<Vec<StoredEvent>, StoreError> {
        self.transact(load_events).await
    }
}

fn events_write(c: &Connection, append: &[StoredEvent], delete: &[u64]) -> rusqlite::Result<()> {
    let mut insert = c.prepare_cached(
        "INSERT INTO function_events (id, name, qualifier, topic, payload, hops)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in append {
        insert.execute(params![
            e.id as i64,
            e.name,
            e.qualifier,
            e.topic,
            e.payload.as_ref(),
            e.hops
        ])?;
    }
    let mut remove = c.prepare_cached("DELETE FROM function_events WHERE id = ?1")?;
    for id in delete {
        remove.execute(params![*id as i64])?;
    }
    Ok(())
}

fn load_events(c: &Connection) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, qualifier, topic, payload, hops FROM function_events ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredEvent {
            id: r.get::<_, i64>(0)? as u64,
            name: r.get(1)?,
            qualifier: r.get(2)?,
            topic: r.get(3)?,
            payload: Bytes::from(r.get::<_, Vec<u8>>(4)?),
            hops: r.get(5)?,
        })
    })?;
    rows.collect()
}

fn load_functions(c: &Connection) -> rusqlite::Result<StoredFunctions> {
    let mut stmt = c.prepare_cached(
        "SELECT name, version, manifest, module, created_ms FROM function_versions
         ORDER BY name, version",
    )?;
    let versions = stmt
        .query_map([], |r| {
            Ok(StoredFunctionVersion {
                name: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                manifest: r.get(2)?,
                module: r.get(3)?,
                created_ms: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = c.prepare_cached(
        "SELECT name, alias, version, weight_version, weight_percent FROM function_aliases
         ORDER BY name, alias",
    )?;
    let aliases = stmt
        .query_map([], |r| {
            let weight_version: Option<i64> = r.get(3)?;
            let weight_percent: Option<u8> = r.get(4)?;
            Ok(StoredAlias {
                name: r.get(0)?,
                alias: r.get(1)?,
                version: r.get::<_, i64>(2)? as u64,
                weight: weight_version
                    .zip(weight_percent)
                    .map(|(v, p)| (v as u64, p)),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((versions, aliases))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn functions_and_kv_survive_reopen_and_remove_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let version = |v: u64| StoredFunctionVersion {
            name: "f".into(),
            version: v,
            manifest: "name = \"f\"".into(),
            module: format!("f-{v}.wasm"),
            created_ms: 1,
        };
        store.save_function_version(version(1)).await.unwrap();
        store.save_function_version(version(2)).await.unwrap();
        let alias = StoredAlias {
            name: "f".into(),
            alias: "live".into(),
            version: 1,
            weight: Some((2, 10)),
        };
        store.set_function_alias(alias.clone()).await.unwrap();
        store
            .kv_write(
                "f".into(),
                vec![
                    ("a".into(), Some(b"1".to_vec())),
                    ("b".into(), Some(b"2".to_vec())),
                ],
            )
            .await
            .unwrap();
        store
            .kv_write("f".into(), vec![("b".into(), None)])
            .await
            .unwrap();
        thread.close().await;
        let (store, thread) = Store::open(dir.path()).unwrap();
        let (versions, aliases) = store.load_functions().await.unwrap();
        assert_eq!(versions, vec![version(1), version(2)]);
        assert_eq!(aliases, vec![alias]);
        let get = |k: &str| store.kv_get("f".into(), k.into());
        assert_eq!(get("a").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(get("b").await.unwrap(), None);
        store.remove_function("f".into()).await.unwrap();
        assert_eq!(store.load_functions().await.unwrap(), (vec![], vec![]));
        assert_eq!(get("a").await.unwrap(), None);
        thread.close().await;
    }
}
