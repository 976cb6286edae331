//! The durable store: one SQLite database in the data directory, owned by one thread.
//!
//! Every write goes through [`Store`], a cheap cloneable handle that sends commands to the owner
//! thread. The thread takes whatever commands are waiting, applies them in one transaction and
//! commits once (group commit), then answers each caller. A caller is told "done" only after the
//! commit returned, with `synchronous=FULL`, so what Grove acknowledges survives a power cut; and
//! because commands that arrive during a commit share the next one, durability does not cap
//! throughput.
//!
//! Architecture invariant: rusqlite types never leave this module; the rest of the gateway sees
//! [`Store`], [`RetainedMessage`] and [`StoreError`].

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bytes::Bytes;
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

/// The database file inside the data directory.
pub const DB_FILE: &str = "grove.db";

/// Most commands applied in one transaction; bounds the latency of the first one in a burst.
const MAX_BATCH: usize = 1024;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
///
/// They are hand-written rather than taken from a crate such as `rusqlite_migration`: the whole
/// mechanism is this list of SQL scripts plus the dozen lines of [`migrate`] (read `user_version`,
/// refuse a database from a newer Grove, run the missing scripts and bump `user_version` in one
/// exclusive transaction), which is exactly what that crate does for plain SQL migrations; a
/// dependency would add an API to learn and nothing this list needs. Migrations are append-only:
/// a released script is never edited, a change is a new script.
const MIGRATIONS: &[&str] = &[
    // 1: retained MQTT messages, which rumqttd keeps only in memory.
    "CREATE TABLE retained (
        topic   TEXT PRIMARY KEY NOT NULL,
        payload BLOB NOT NULL,
        qos     INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: device shadows; `name` is '' for a thing's classic shadow. `document` is the shadow
    // module's own JSON (state, metadata, version, tombstone); `version` is kept beside it for
    // listing without parsing.
    "CREATE TABLE shadows (
        thing    TEXT NOT NULL,
        name     TEXT NOT NULL,
        version  INTEGER NOT NULL,
        document TEXT NOT NULL,
        PRIMARY KEY (thing, name)
    ) WITHOUT ROWID;",
    // 3: local functions: immutable versions (the module bytes are a file in the data directory,
    // named here), aliases with an optional weighted second version, and each function's
    // key-value namespace.
    "CREATE TABLE function_versions (
        name       TEXT NOT NULL,
        version    INTEGER NOT NULL,
        manifest   TEXT NOT NULL,
        module     TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    ) WITHOUT ROWID;
    CREATE TABLE function_aliases (
        name           TEXT NOT NULL,
        alias          TEXT NOT NULL,
        version        INTEGER NOT NULL,
        weight_version INTEGER,
        weight_percent INTEGER,
        PRIMARY KEY (name, alias)
    ) WITHOUT ROWID;
    CREATE TABLE function_kv (
        name  TEXT NOT NULL,
        key   TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (name, key)
    ) WITHOUT ROWID;",
    // 4: cloud sync. `cloud_outbox` holds every message bound for the cloud until its PUBACK, in
    // append order (`seq`); `cloud_shadow_sync` holds, per synced shadow, the last state both
    // sides agreed on and the version of each side at that moment.
    "CREATE TABLE cloud_outbox (
        seq         INTEGER PRIMARY KEY NOT NULL,
        topic       TEXT NOT NULL,
        payload     BLOB NOT NULL,
        enqueued_ms INTEGER NOT NULL
    );
    CREATE TABLE cloud_shadow_sync (
        thing         TEXT NOT NULL,
        name          TEXT NOT NULL,
        base          TEXT NOT NULL,
        local_version INTEGER NOT NULL,
        cloud_version INTEGER NOT NULL,
        PRIMARY KEY (thing, name)
    ) WITHOUT ROWID;",
    // 5: functions' async events, committed before the message that raised them is
    // acknowledged (the durable tap) and deleted when the event is done (success or dead letter).
    "CREATE TABLE function_events (
        id        INTEGER PRIMARY KEY NOT NULL,
        name      TEXT NOT NULL,
        qualifier TEXT NOT NULL,
        topic     TEXT NOT NULL,
        payload   BLOB NOT NULL,
        hops      INTEGER NOT NULL
    );",
    // 6: a deleted shadow (a tombstone, which keeps its version for 48 hours) is marked in its own
    // column, so listing skips tombstones and expired ones are dropped without parsing documents.
    // Rows written before this migration get it from their document (`deletedAt`); a document that
    // is not JSON stays a live row, and the shadow service reports it as unreadable as before.
    "ALTER TABLE shadows ADD COLUMN deleted_at INTEGER;
    UPDATE shadows SET deleted_at = json_extract(document, '$.deletedAt')
        WHERE json_valid(document);",
];

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or prepared.
    #[error("cannot open the database {}: {message}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's or the file system's message.
        message: String,
    },
    /// The database's schema is newer than this build knows: a newer Grove created or upgraded it.
    /// Opening it anyway could misread or damage data that build wrote, so it is refused.
    #[error("the database {} has schema version {found} but this Grove knows only up to {known}: it was created by a newer Grove; run that version (or a newer one) on this data directory", path.display())]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: usize,
        /// The number of migrations this build has.
        known: usize,
    },
    /// Another process holds the database.
    #[error("the database {} is in use by another process (is another grove running on this data directory?)", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// A statement or commit failed; nothing of that transaction was kept.
    #[error("database error: {0}")]
    Sqlite(String),
    /// The store has shut down.
    #[error("the store is closed")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

/// A retained MQTT message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    /// The topic it was published on.
    pub topic: String,
    /// Its payload (never empty: an empty retained payload deletes the entry).
    pub payload: Bytes,
    /// Its QoS (0 or 1).
    pub qos: u8,
}

/// Identifies a shadow: a thing and, for a named shadow, its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowKey {
    /// The thing name.
    pub thing: String,
    /// The shadow name; `None` for the classic shadow.
    pub name: Option<String>,
}

/// A shadow as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredShadow {
    /// Which shadow.
    pub key: ShadowKey,
    /// Its version, for listings.
    pub version: u64,
    /// For a deleted shadow kept as a tombstone (to continue its version if re-created), when it was
    /// deleted (epoch seconds); `None` for a live shadow. Listing skips tombstones.
    pub deleted_at: Option<u64>,
    /// The shadow module's JSON document.
    pub document: String,
}

/// A deployed function version as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFunctionVersion {
    /// The function's name.
    pub name: String,
    /// The version number (from 1).
    pub version: u64,
    /// The manifest's TOML text, as deployed.
    pub manifest: String,
    /// The module file's name in the functions directory.
    pub module: String,
    /// When it was deployed (ms since the Unix epoch).
    pub created_ms: i64,
}

/// A function alias as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAlias {
    /// The function's name.
    pub name: String,
    /// The alias's name.
    pub alias: String,
    /// The version it points at.
    pub version: u64,
    /// A second version and the percentage of traffic it gets.
    pub weight: Option<(u64, u8)>,
}

/// Every function version and alias, as loaded at startup.
pub type StoredFunctions = (Vec<StoredFunctionVersion>, Vec<StoredAlias>);

/// A key-value write of a function: a value, or `None` to delete.
pub type KvWrite = (String, Option<Vec<u8>>);

/// A message in the cloud outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Its sequence number (append order).
    pub seq: u64,
    /// The cloud topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// When it was appended (ms since the epoch).
    pub enqueued_ms: u64,
}

/// The sync state of one shadow: the last state both sides agreed on, and their versions then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// Which shadow.
    pub key: ShadowKey,
    /// The agreed `{"desired": ..., "reported": ...}` (JSON).
    pub base: String,
    /// The local shadow's version at that agreement.
    pub local_version: u64,
    /// The cloud shadow's version at that agreement.
    pub cloud_version: u64,
}

/// A function's async event that is not done yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its number (arrival order).
    pub id: u64,
    /// The function.
    pub name: String,
    /// The qualifier it invokes (`$LATEST`, a version or an alias), as text.
    pub qualifier: String,
    /// The topic of the message that raised it.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Republish hops that led to it.
    pub hops: u32,
}

/// A write or read for the owner thread.
enum Command {
    /// Record new function events and forget finished ones, in one transaction.
    EventsWrite {
        append: Vec<StoredEvent>,
        delete: Vec<u64>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Every function event not done yet, in arrival order.
    LoadEvents {
        done: oneshot::Sender<Result<Vec<StoredEvent>, StoreError>>,
    },
    /// Append to and delete from the cloud outbox, in one transaction.
    OutboxWrite {
        append: Vec<OutboxMessage>,
        delete: Vec<u64>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The outbox's index: every message's sequence number, size and age.
    OutboxIndex {
        done: oneshot::Sender<Result<Vec<crate::cloud::outbox::Entry>, StoreError>>,
    },
    /// Up to `limit` outbox messages after sequence number `after`, in order.
    OutboxLoad {
        after: u64,
        limit: usize,
        done: oneshot::Sender<Result<Vec<OutboxMessage>, StoreError>>,
    },
    /// Every shadow's sync state.
    LoadSyncStates {
        done: oneshot::Sender<Result<Vec<SyncState>, StoreError>>,
    },
    /// Record a shadow's sync state.
    WriteSyncState {
        state: SyncState,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Record a new function version.
    SaveFunctionVersion {
        version: StoredFunctionVersion,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Create or replace an alias.
    SetFunctionAlias {
        alias: StoredAlias,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Forget a function: versions, aliases, key-value state.
    RemoveFunction {
        name: String,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Every version and alias.
    LoadFunctions {
        done: oneshot::Sender<Result<StoredFunctions, StoreError>>,
    },
    /// One key of a function's namespace.
    KvGet {
        name: String,
        key: String,
        done: oneshot::Sender<Result<Option<Vec<u8>>, StoreError>>,
    },
    /// Writes to a function's namespace, all in one transaction.
    KvWrite {
        name: String,
        writes: Vec<KvWrite>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Write shadows (all in the same transaction).
    WriteShadows {
        shadows: Vec<StoredShadow>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Read one shadow.
    LoadShadow {
        key: ShadowKey,
        done: oneshot::Sender<Result<Option<StoredShadow>, StoreError>>,
    },
    /// Forget the tombstones of shadows deleted before a time.
    DropTombstones {
        deleted_before: u64,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// List every live shadow (without documents).
    ListShadows {
        done: oneshot::Sender<Result<Vec<(ShadowKey, u64)>, StoreError>>,
    },
    /// Store (or, with an empty payload, delete) the retained message of a topic.
    Retain {
        message: RetainedMessage,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Read every retained message.
    LoadRetained {
        done: oneshot::Sender<Result<Vec<RetainedMessage>, StoreError>>,
    },
    /// Finish what is queued before this, then stop.
    Close,
}

/// Handle to the store; clone it freely.
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::Sender<Command>,
}

/// Owns the store's thread; [`StoreThread::close`] waits until the last commit is done.
#[derive(Debug)]
pub struct StoreThread {
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, runs migrations and starts the owner
    /// thread.
    pub fn open(data_dir: &Path) -> Result<(Store, StoreThread), StoreError> {
        let path = data_dir.join(DB_FILE);
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_err(&e))?;
        let mut conn = Connection::open(&path).map_err(|e| open_err(&e))?;
        // Exclusive locking keeps a second gateway from writing the same database behind this
        // one's back; with WAL it also lets SQLite skip shared-memory locking.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;",
        )
        .map_err(|e| classify_open_error(&path, e))?;
        migrate(&mut conn, &path)?;

        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let thread = std::thread::Builder::new()
            .name("grove-store".into())
            .spawn(move || owner_loop(conn, rx))
            .map_err(|e| open_err(&e))?;
        Ok((
            Store { tx: tx.clone() },
            StoreThread {
                tx,
                thread: Some(thread),
            },
        ))
    }

    /// Durably records the retained message of a topic (an empty payload deletes it). Returns
    /// after the commit.
    pub async fn retain(&self, message: RetainedMessage) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Retain { message, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Every stored retained message, in topic order.
    pub async fn load_retained(&self) -> Result<Vec<RetainedMessage>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::LoadRetained { done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably writes shadows, all or none. Returns after the commit.
    pub async fn write_shadows(&self, shadows: Vec<StoredShadow>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::WriteShadows { shadows, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// One shadow, if stored.
    pub async fn load_shadow(&self, key: ShadowKey) -> Result<Option<StoredShadow>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::LoadShadow { key, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably forgets the tombstones of shadows deleted before `deleted_before` (epoch seconds).
    /// The shadow module decides the cut-off: a tombstone may go once no re-created shadow would
    /// continue its version.
    pub async fn drop_tombstones(&self, deleted_before: u64) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::DropTombstones {
            deleted_before,
            done,
        })
        .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Every live shadow's key and version (tombstones of deleted shadows left out), ordered by
    /// thing then name.
    pub async fn list_shadows(&self) -> Result<Vec<(ShadowKey, u64)>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::ListShadows { done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably records a function version.
    pub async fn save_function_version(
        &self,
        version: StoredFunctionVersion,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::SaveFunctionVersion { version, done })
            .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably creates or replaces a function alias.
    pub async fn set_function_alias(&self, alias: StoredAlias) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::SetFunctionAlias { alias, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably forgets a function and its key-value state.
    pub async fn remove_function(&self, name: String) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::RemoveFunction { name, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Every function version (ordered by name, version) and alias.
    pub async fn load_functions(&self) -> Result<StoredFunctions, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::LoadFunctions { done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// One key of a function's key-value namespace.
    pub async fn kv_get(&self, name: String, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::KvGet { name, key, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably applies writes to a function's namespace, all or none.
    pub async fn kv_write(&self, name: String, writes: Vec<KvWrite>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::KvWrite { name, writes, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably records new function events and forgets finished ones. Returns after the commit.
    pub async fn events_write(
        &self,
        append: Vec<StoredEvent>,
        delete: Vec<u64>,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::EventsWrite {
            append,
            delete,
            done,
        })
        .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Every function event not done yet, in arrival order.
    pub async fn load_events(&self) -> Result<Vec<StoredEvent>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::LoadEvents { done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably appends messages to the cloud outbox and deletes others (acknowledged or dropped),
    /// all in one transaction. Returns after the commit.
    pub async fn outbox_write(
        &self,
        append: Vec<OutboxMessage>,
        delete: Vec<u64>,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::OutboxWrite {
            append,
            delete,
            done,
        })
        .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// The outbox's index (sequence number, topic plus payload size, append time), in order.
    pub async fn outbox_index(&self) -> Result<Vec<crate::cloud::outbox::Entry>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::OutboxIndex { done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Up to `limit` outbox messages with a sequence number above `after`, in order.
    pub async fn outbox_load(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::OutboxLoad { after, limit, done })
            .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Every shadow's cloud sync state.
    pub async fn load_sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::LoadSyncStates { done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably records a shadow's cloud sync state. Returns after the commit.
    pub async fn write_sync_state(&self, state: SyncState) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::WriteSyncState { state, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.tx.send(command).await.map_err(|_| StoreError::Closed)
    }
}

impl StoreThread {
    /// Lets queued commands finish, closes the database and waits for the thread.
    pub async fn close(mut self) {
        // If the thread is already gone the send fails, which is fine: there is nothing to flush.
        let _ = self.tx.send(Command::Close).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn classify_open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        _ => StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        },
    }
}

/// Brings the schema up to date: runs the migrations the database has not had, all in one
/// exclusive transaction (so a crash mid-way leaves the old schema), and refuses a database that a
/// newer Grove has migrated further than this build knows.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sqlite = |e| classify_open_error(path, e);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .map_err(sqlite)?;
    let done: usize = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite)?;
    if done > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: done,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.execute_batch(sql).map_err(sqlite)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(sqlite)?;
    }
    tx.commit().map_err(sqlite)
}

/// The owner thread: batch, apply, commit, answer.
fn owner_loop(mut conn: Connection, mut rx: mpsc::Receiver<Command>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let close = apply_batch(&mut conn, &mut batch);
        if close {
            break;
        }
    }
    if let Err(e) = conn.close() {
        tracing::error!(error = %e.1, "closing the database failed");
    }
}

/// Applies a batch in one transaction and answers each command; returns whether to stop.
fn apply_batch(conn: &mut Connection, batch: &mut Vec<Command>) -> bool {
    let mut close = false;
    let mut acks = Vec::new();
    let result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        for command in batch.drain(..) {
            match command {
                Command::Retain { message, done } => {
                    apply_retain(&tx, &message)?;
                    acks.push(done);
                }
                Command::LoadRetained { done } => {
                    let _ = done.send(load_retained(&tx).map_err(StoreError::from));
                }
                Command::WriteShadows { shadows, done } => {
                    for shadow in &shadows {
                        write_shadow(&tx, shadow)?;
                    }
                    acks.push(done);
                }
                Command::LoadShadow { key, done } => {
                    let _ = done.send(load_shadow(&tx, key).map_err(StoreError::from));
                }
                Command::DropTombstones {
                    deleted_before,
                    done,
                } => {
                    tx.prepare_cached("DELETE FROM shadows WHERE deleted_at < ?1")?
                        .execute(params![deleted_before as i64])?;
                    acks.push(done);
                }
                Command::ListShadows { done } => {
                    let _ = done.send(list_shadows(&tx).map_err(StoreError::from));
                }
                Command::SaveFunctionVersion { version, done } => {
                    tx.prepare_cached(
                        "INSERT INTO function_versions (name, version, manifest, module, created_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        version.name,
                        version.version as i64,
                        version.manifest,
                        version.module,
                        version.created_ms
                    ])?;
                    acks.push(done);
                }
                Command::SetFunctionAlias { alias, done } => {
                    tx.prepare_cached(
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
                    ])?;
                    acks.push(done);
                }
                Command::RemoveFunction { name, done } => {
                    for table in ["function_versions", "function_aliases", "function_kv"] {
                        tx.prepare_cached(&format!("DELETE FROM {table} WHERE name = ?1"))?
                            .execute(params![name])?;
                    }
                    acks.push(done);
                }
                Command::LoadFunctions { done } => {
                    let _ = done.send(load_functions(&tx).map_err(StoreError::from));
                }
                Command::KvGet { name, key, done } => {
                    let value = tx
                        .prepare_cached(
                            "SELECT value FROM function_kv WHERE name = ?1 AND key = ?2",
                        )
                        .and_then(|mut s| {
                            let mut rows = s.query(params![name, key])?;
                            rows.next()?.map(|r| r.get::<_, Vec<u8>>(0)).transpose()
                        });
                    let _ = done.send(value.map_err(StoreError::from));
                }
                Command::KvWrite { name, writes, done } => {
                    for (key, value) in &writes {
                        match value {
                            Some(v) => tx
                                .prepare_cached(
                                    "INSERT INTO function_kv (name, key, value) VALUES (?1, ?2, ?3)
                                     ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                                )?
                                .execute(params![name, key, v])?,
                            None => tx
                                .prepare_cached(
                                    "DELETE FROM function_kv WHERE name = ?1 AND key = ?2",
                                )?
                                .execute(params![name, key])?,
                        };
                    }
                    acks.push(done);
                }
                Command::EventsWrite {
                    append,
                    delete,
                    done,
                } => {
                    events_write(&tx, &append, &delete)?;
                    acks.push(done);
                }
                Command::LoadEvents { done } => {
                    let _ = done.send(load_events(&tx).map_err(StoreError::from));
                }
                Command::OutboxWrite {
                    append,
                    delete,
                    done,
                } => {
                    outbox_write(&tx, &append, &delete)?;
                    acks.push(done);
                }
                Command::OutboxIndex { done } => {
                    let _ = done.send(outbox_index(&tx).map_err(StoreError::from));
                }
                Command::OutboxLoad { after, limit, done } => {
                    let _ = done.send(outbox_load(&tx, after, limit).map_err(StoreError::from));
                }
                Command::LoadSyncStates { done } => {
                    let _ = done.send(load_sync_states(&tx).map_err(StoreError::from));
                }
                Command::WriteSyncState { state, done } => {
                    write_sync_state(&tx, &state)?;
                    acks.push(done);
                }
                Command::Close => close = true,
            }
        }
        tx.commit()
    })();
    match result {
        Ok(()) => acks.into_iter().for_each(|a| {
            let _ = a.send(Ok(()));
        }),
        Err(e) => {
            tracing::error!(error = %e, "store commit failed; the batch was rolled back");
            for a in acks {
                let _ = a.send(Err(StoreError::Sqlite(e.to_string())));
            }
        }
    }
    close
}

fn apply_retain(tx: &rusqlite::Transaction<'_>, m: &RetainedMessage) -> rusqlite::Result<()> {
    if m.payload.is_empty() {
        tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
            .execute(params![m.topic])?;
    } else {
        tx.prepare_cached(
            "INSERT INTO retained (topic, payload, qos) VALUES (?1, ?2, ?3)
             ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos",
        )?
        .execute(params![m.topic, m.payload.as_ref(), m.qos])?;
    }
    Ok(())
}

fn write_shadow(tx: &rusqlite::Transaction<'_>, s: &StoredShadow) -> rusqlite::Result<()> {
    tx.prepare_cached(
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

fn load_shadow(
    tx: &rusqlite::Transaction<'_>,
    key: ShadowKey,
) -> rusqlite::Result<Option<StoredShadow>> {
    let mut stmt = tx.prepare_cached(
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

fn list_shadows(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<(ShadowKey, u64)>> {
    let mut stmt = tx.prepare_cached(
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

fn events_write(
    tx: &rusqlite::Transaction<'_>,
    append: &[StoredEvent],
    delete: &[u64],
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
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
    let mut remove = tx.prepare_cached("DELETE FROM function_events WHERE id = ?1")?;
    for id in delete {
        remove.execute(params![*id as i64])?;
    }
    Ok(())
}

fn load_events(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = tx.prepare_cached(
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

fn load_functions(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<StoredFunctions> {
    let mut stmt = tx.prepare_cached(
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
    let mut stmt = tx.prepare_cached(
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

fn outbox_write(
    tx: &rusqlite::Transaction<'_>,
    append: &[OutboxMessage],
    delete: &[u64],
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO cloud_outbox (seq, topic, payload, enqueued_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for m in append {
        insert.execute(params![
            m.seq as i64,
            m.topic,
            m.payload.as_ref(),
            m.enqueued_ms as i64
        ])?;
    }
    let mut remove = tx.prepare_cached("DELETE FROM cloud_outbox WHERE seq = ?1")?;
    for seq in delete {
        remove.execute(params![*seq as i64])?;
    }
    Ok(())
}

fn outbox_index(
    tx: &rusqlite::Transaction<'_>,
) -> rusqlite::Result<Vec<crate::cloud::outbox::Entry>> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, length(CAST(topic AS BLOB)) + length(payload), enqueued_ms FROM cloud_outbox ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(crate::cloud::outbox::Entry {
            seq: r.get::<_, i64>(0)? as u64,
            size: r.get::<_, i64>(1)? as u64,
            enqueued_ms: r.get::<_, i64>(2)? as u64,
        })
    })?;
    rows.collect()
}

fn outbox_load(
    tx: &rusqlite::Transaction<'_>,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxMessage>> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, topic, payload, enqueued_ms FROM cloud_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
        Ok(OutboxMessage {
            seq: r.get::<_, i64>(0)? as u64,
            topic: r.get(1)?,
            payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
            enqueued_ms: r.get::<_, i64>(3)? as u64,
        })
    })?;
    rows.collect()
}

fn load_sync_states(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<SyncState>> {
    let mut stmt = tx.prepare_cached(
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

fn write_sync_state(tx: &rusqlite::Transaction<'_>, s: &SyncState) -> rusqlite::Result<()> {
    tx.prepare_cached(
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

fn load_retained(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<RetainedMessage>> {
    let mut stmt = tx.prepare_cached("SELECT topic, payload, qos FROM retained ORDER BY topic")?;
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

    #[tokio::test]
    async fn an_older_database_is_upgraded_with_its_rows_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A database as a Grove with only the first two migrations left it.
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                r#"PRAGMA user_version = 2;
                INSERT INTO retained VALUES ('a/b', X'31', 1);
                INSERT INTO shadows VALUES ('lamp', '', 4, '{"version":4}');
                INSERT INTO shadows VALUES ('gone', 'cfg', 9, '{"version":9,"deletedAt":1000}');
                INSERT INTO shadows VALUES ('broken', '', 1, 'not json');"#,
            )
            .unwrap();
        }
        let (store, thread) = Store::open(dir.path()).unwrap();
        assert_eq!(store.load_retained().await.unwrap(), vec![msg("a/b", b"1")]);
        // The tombstone was recognised from its document by the new migration.
        assert_eq!(
            store.list_shadows().await.unwrap(),
            vec![(key("broken", None), 1), (key("lamp", None), 4)]
        );
        let gone = store.load_shadow(key("gone", Some("cfg"))).await.unwrap();
        assert_eq!(
            gone.map(|s| (s.version, s.deleted_at)),
            Some((9, Some(1000)))
        );
        // Later migrations' tables exist and work.
        store
            .kv_write("f".into(), vec![("k".into(), Some(b"v".to_vec()))])
            .await
            .unwrap();
        thread.close().await;
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
    }

    #[tokio::test]
    async fn a_database_from_a_newer_grove_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, thread) = Store::open(dir.path()).unwrap();
        thread.close().await;
        let newer = MIGRATIONS.len() + 1;
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {newer}"))
            .unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found, known, .. } if found == newer && known == MIGRATIONS.len()),
            "{err}"
        );
        assert!(
            err.to_string().contains("created by a newer Grove"),
            "{err}"
        );
    }

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

    #[tokio::test]
    async fn the_outbox_keeps_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let m = |seq: u64| OutboxMessage {
            seq,
            topic: format!("t/{seq}"),
            payload: Bytes::from(vec![b'x'; seq as usize]),
            enqueued_ms: 100 + seq,
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
        let page = store.outbox_load(2, 2).await.unwrap();
        assert_eq!(page, vec![m(4), m(5)]);
        thread.close().await;
    }

    #[tokio::test]
    async fn a_second_opener_is_refused_while_the_first_holds_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, thread) = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
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
