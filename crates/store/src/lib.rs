//! The durable store: one SQLite database in the data directory, owned by one thread.
//!
//! This module is the generic part: opening, migrations, and the owner thread with group commit.
//! Every read and write goes through [`Store::transact`], a unit of work that the owner thread runs
//! on its connection. The thread takes whatever units are waiting, runs each under a savepoint of
//! its own inside one transaction, and commits once (group commit); then it answers each caller.
//! A caller is told "done" (and gets what it read) only after that commit returned, with
//! `synchronous=FULL`, so what Grove acknowledges survives a power cut and nothing is read that a
//! failed commit then took back; and because units that arrive during a commit share the next
//! one, durability does not cap throughput. A unit that fails fails alone: its savepoint is rolled
//! back, its caller gets its own error at once, and the rest of the batch commits.
//!
//! Each component's queries live with the component, as an extension trait on [`Store`] in its
//! crate (`grove-broker`'s `sessions.rs`: the router's persistent sessions and retained messages;
//! `grove-shadow`'s `queries.rs`: shadows;
//! `grove-functions-host`: versions, aliases, key-value state, async events; `grove-cloud`: the
//! outbox and sync states; `grove-deploy`: deployments; `grove-jobs`: jobs and their executions), run through [`Store::transact`]. The schema's migrations are listed
//! here, in the one order they run (`user_version` counts them across components, so the list
//! cannot be split without making that order implicit), with the row types of those tables.
//!
//! Architecture invariant: this crate depends on nothing of Grove's. rusqlite types leave it only
//! through [`Store::transact`], for the components' `queries.rs` (which depend on rusqlite
//! themselves); the rest of the gateway sees the components' typed queries, the stored types below
//! and [`StoreError`]. rusqlite is not re-exported.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bytes::Bytes;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// The database file inside the data directory.
pub const DB_FILE: &str = "grove.db";

/// Most units of work in one transaction; bounds the latency of the first one in a burst.
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
    // 7: the MQTT router's persistent sessions (grove-broker's `sessions.rs`, issue 14): a session
    // per client id (`sid` keys the rest; `disconnected_at` NULL while connected; the will waiting
    // for its delay), its subscriptions (`options`: the SUBSCRIBE options byte, MQTT 5 3.8.3.1),
    // the queued QoS 1/2 messages (stored once in `session_messages`, referenced by one
    // `session_queue` row per session in queue order `seq`, with the packet id of its first
    // PUBLISH and whether the PUBREC came; a message goes with its last reference) and the
    // inbound QoS 2 packet ids not yet released. Times are Unix milliseconds. Retained messages
    // keep their table (rows written before this migration keep working: no id, publisher ''),
    // with the columns the router's messages have besides.
    "CREATE TABLE sessions (
        sid             INTEGER PRIMARY KEY NOT NULL,
        client_id       TEXT NOT NULL UNIQUE,
        version         INTEGER NOT NULL,
        expiry_interval INTEGER NOT NULL,
        disconnected_at INTEGER,
        will_at         INTEGER,
        will_topic      TEXT,
        will_payload    BLOB,
        will_qos        INTEGER,
        will_retain     INTEGER,
        will_delay      INTEGER,
        will_properties TEXT
    );
    CREATE TABLE session_subscriptions (
        sid     INTEGER NOT NULL,
        filter  TEXT NOT NULL,
        options INTEGER NOT NULL,
        sub_id  INTEGER,
        PRIMARY KEY (sid, filter)
    ) WITHOUT ROWID;
    CREATE TABLE session_messages (
        id         INTEGER PRIMARY KEY NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        retain     INTEGER NOT NULL,
        expires_at INTEGER,
        publisher  TEXT NOT NULL,
        properties TEXT
    );
    CREATE TABLE session_queue (
        seq        INTEGER PRIMARY KEY NOT NULL,
        sid        INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        qos        INTEGER NOT NULL,
        retain     INTEGER NOT NULL,
        sub_ids    BLOB,
        pkid       INTEGER,
        released   INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX session_queue_by_session ON session_queue (sid, message_id);
    CREATE INDEX session_queue_by_message ON session_queue (message_id);
    CREATE TABLE session_qos2_received (
        sid  INTEGER NOT NULL,
        pkid INTEGER NOT NULL,
        PRIMARY KEY (sid, pkid)
    ) WITHOUT ROWID;
    ALTER TABLE retained ADD COLUMN id INTEGER;
    ALTER TABLE retained ADD COLUMN expires_at INTEGER;
    ALTER TABLE retained ADD COLUMN publisher TEXT NOT NULL DEFAULT '';
    ALTER TABLE retained ADD COLUMN properties TEXT;",
    // 8: deployments (grove-deploy): each document as received, the step it is at (written before
    // the step is done: what a restart finds is the step that was in progress), and what its
    // switch replaced (`snapshot`, written before staging), which its rollback restores. `seq`
    // orders the history.
    "CREATE TABLE deployments (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        document    TEXT NOT NULL,
        phase       TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        reason      TEXT,
        snapshot    TEXT,
        received_ms INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL
    );",
    // 9: what a cloud-bound message carries besides topic and payload (issue 16): the publisher's
    // retain flag, its MQTT 5 user properties (a JSON array of [name, value] pairs; NULL for
    // none) and, for a forward route that batches, the batch topic its array goes up on (NULL:
    // sent as itself). Rows written before this migration go up as they always did.
    "ALTER TABLE cloud_outbox ADD COLUMN retain INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cloud_outbox ADD COLUMN user_properties TEXT;
    ALTER TABLE cloud_outbox ADD COLUMN batch TEXT;",
    // 10: the AWS IoT job a deployment came from (grove-deploy's `jobs`; NULL: `grove deploy`), so
    // a job taken again after a restart finds its deployment, and a document reused by another
    // job is refused.
    "ALTER TABLE deployments ADD COLUMN job TEXT;",
    // 11: taken by work on another branch (issue 20's OTA); an empty step until it lands, so that
    // 12 keeps its number (a database migrated without it is a development one).
    "",
    // 12: local jobs (grove-jobs, issue 20): each job (the operator's spec as JSON: document,
    // targets, rollout, abort, timeout; its status and why it was canceled) and each execution of
    // a job on a thing (AWS's status, or WAITING while the rollout holds it; the device's status
    // details as JSON; version; when it was queued, started, last changed; its step timer's
    // deadline). `seq` is creation order, which decides the next pending execution. Times are Unix
    // milliseconds.
    "CREATE TABLE jobs (
        id         TEXT PRIMARY KEY NOT NULL,
        seq        INTEGER NOT NULL,
        spec       TEXT NOT NULL,
        status     TEXT NOT NULL,
        reason     TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE job_executions (
        thing            TEXT NOT NULL,
        job              TEXT NOT NULL,
        seq              INTEGER NOT NULL,
        status           TEXT NOT NULL,
        details          TEXT NOT NULL,
        version          INTEGER NOT NULL,
        queued_ms        INTEGER,
        started_ms       INTEGER,
        updated_ms       INTEGER NOT NULL,
        step_deadline_ms INTEGER,
        PRIMARY KEY (thing, job)
    ) WITHOUT ROWID;",
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

impl StoreError {
    fn from_sqlite(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
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
    /// The publisher's retain flag, carried upward.
    pub retain: bool,
    /// The publisher's MQTT 5 user properties, carried upward on an MQTT 5 link.
    pub user_properties: Vec<(String, String)>,
    /// The batch topic of the forward route that took it, when that route batches.
    pub batch: Option<String>,
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

/// A unit of work for the owner thread: run on the batch's transaction (or told why there is
/// none), it returns what to tell its caller once the commit's outcome is known.
type Job = Box<dyn FnOnce(Result<&mut rusqlite::Transaction<'_>, &str>) -> Reply + Send>;

/// Answers a caller with the batch's commit outcome (`Err`: why it failed).
type Reply = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// What the owner thread is sent.
enum Request {
    /// Run this in the next group commit.
    Job(Job),
    /// Finish what is queued before this, then stop.
    Close,
}

/// Handle to the store; clone it freely.
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::Sender<Request>,
}

/// Owns the store's thread; [`StoreThread::close`] waits until the last commit is done.
#[derive(Debug)]
pub struct StoreThread {
    tx: mpsc::Sender<Request>,
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
        // `temp_store = MEMORY` keeps the statement journals of the units' savepoints in memory:
        // on a file, every page a unit changes was first written to a temporary file (one
        // `pwrite` per page, as many as the WAL's own), for a journal only a failing unit reads.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA temp_store = MEMORY;",
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

    /// Runs `work` on the database in the next group commit, under a savepoint of its own, and
    /// returns what it returned once that commit is done. If `work` fails, only its own changes
    /// are rolled back and its error is returned at once; the rest of the batch goes on. If the
    /// commit fails, every unit of the batch gets that error (none of it was kept).
    pub async fn transact<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.enqueue(work).await?.await
    }

    /// Hands `work` to the owner thread as [`Store::transact`] does, but returns once it is
    /// queued: the returned [`Queued`] resolves to its outcome. Units run in the order they were
    /// queued, so a caller can queue a unit that builds on an earlier one before that one has
    /// committed (both may share a commit), and go on working meanwhile.
    pub async fn enqueue<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<Queued<T>, StoreError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Request::Job(job(work, done)))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Queued { answer })
    }
}

/// A unit of work queued by [`Store::enqueue`]: a future of its outcome, as [`Store::transact`]
/// returns it (after the commit, or at once if the unit failed). Dropping it does not withdraw the
/// unit.
#[derive(Debug)]
pub struct Queued<T> {
    answer: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> std::future::Future for Queued<T> {
    type Output = Result<T, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.map_err(|_| StoreError::Closed)?)
    }
}

impl StoreThread {
    /// Lets queued commands finish, closes the database and waits for the thread.
    pub async fn close(mut self) {
        // If the thread is already gone the send fails, which is fine: there is nothing to flush.
        let _ = self.tx.send(Request::Close).await;
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
fn owner_loop(mut conn: Connection, mut rx: mpsc::Receiver<Request>) {
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

/// Runs a batch in one transaction, each unit under its own savepoint, commits, and answers every
/// caller; returns whether to stop.
fn apply_batch(conn: &mut Connection, batch: &mut Vec<Request>) -> bool {
    let mut close = false;
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut tx = conn.transaction().map_err(|e| e.to_string());
    for request in batch.drain(..) {
        match request {
            Request::Job(job) => replies.push(job(tx.as_mut().map_err(|e| e.as_str()))),
            Request::Close => close = true,
        }
        // A unit whose changes could not be undone ended the transaction (`run_savepoint`):
        // nothing of the batch is committed, and the units after it fail at once.
        if tx.as_ref().is_ok_and(|tx| tx.is_autocommit()) {
            tx = Err(
                "a failed unit's changes could not be undone; the batch was rolled back".into(),
            );
        }
    }
    let outcome = tx.and_then(|tx| tx.commit().map_err(|e| e.to_string()));
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "store commit failed; the batch was rolled back");
    }
    for reply in replies {
        reply(outcome.as_ref().copied().map_err(String::as_str));
    }
    close
}

/// A unit of work that runs `work` under its own savepoint and answers `done`: at once if it
/// failed (nothing of it will be committed), with the commit's outcome otherwise.
fn job<T: Send + 'static>(
    work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    done: oneshot::Sender<Result<T, StoreError>>,
) -> Job {
    Box::new(move |tx| {
        let outcome = tx
            .map_err(|e| StoreError::Sqlite(e.to_owned()))
            .and_then(|tx| run_savepoint(tx, work).map_err(StoreError::from_sqlite));
        match outcome {
            Err(e) => {
                let _ = done.send(Err(e));
                Box::new(|_| {})
            }
            Ok(value) => Box::new(move |commit: Result<(), &str>| {
                let _ = done.send(
                    commit
                        .map(|()| value)
                        .map_err(|e| StoreError::Sqlite(e.to_owned())),
                );
            }),
        }
    })
}

/// Runs `work` under a savepoint: kept (released into the transaction) if it succeeds, rolled
/// back if it fails.
///
/// The savepoint statements are prepared once and reused (`prepare_cached`) rather than taken from
/// rusqlite's `Savepoint`, which parses its `SAVEPOINT`/`RELEASE` text anew for every unit: with a
/// unit or two per commit under load, that parsing was a third of the owner thread's own CPU.
/// Units never nest (each runs alone in the batch's transaction), so one name serves them all.
fn run_savepoint<T>(
    tx: &mut rusqlite::Transaction<'_>,
    work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    tx.prepare_cached("SAVEPOINT unit")?.execute([])?;
    match work(tx) {
        Ok(value) => {
            tx.prepare_cached("RELEASE unit")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            // Undo the unit's changes, then leave the savepoint. If that fails, what the
            // transaction holds is unknown: it is rolled back whole, and `apply_batch` sees it
            // gone and fails the batch.
            let undone = tx
                .prepare_cached("ROLLBACK TO unit")
                .and_then(|mut s| s.execute([]))
                .and_then(|_| tx.prepare_cached("RELEASE unit"))
                .and_then(|mut s| s.execute([]));
            if undone.is_err() {
                let _ = tx.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One batch, as the owner thread gets it when units arrive during a commit: a unit that fails
    /// half-way has none of its changes kept and gets its own error, while the units around it
    /// (and a read of what they wrote) commit as if it had not been there.
    #[test]
    fn a_failing_unit_fails_alone_with_its_own_error_and_the_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        fn insert(topic: &'static str) -> impl Fn(&Connection) -> rusqlite::Result<()> {
            move |c: &Connection| {
                c.execute(
                    "INSERT INTO retained (topic, payload, qos) VALUES (?1, x'01', 0)",
                    [topic],
                )
                .map(drop)
            }
        }
        fn topics(c: &Connection) -> rusqlite::Result<Vec<String>> {
            c.prepare("SELECT topic FROM retained ORDER BY topic")?
                .query_map([], |r| r.get(0))?
                .collect()
        }
        let (a, mut a_done) = oneshot::channel();
        let (bad, mut bad_done) = oneshot::channel();
        let (b, mut b_done) = oneshot::channel();
        let (read, mut read_done) = oneshot::channel();
        let mut batch = vec![
            Request::Job(job(insert("a"), a)),
            Request::Job(job(
                |c: &Connection| {
                    insert("half")(c)?;
                    // NOT NULL payload: fails after the first insert went in.
                    c.execute("INSERT INTO retained (topic, qos) VALUES ('bad', 0)", [])
                        .map(drop)
                },
                bad,
            )),
            Request::Job(job(insert("b"), b)),
            Request::Job(job(topics, read)),
        ];
        assert!(!apply_batch(&mut conn, &mut batch));
        assert!(matches!(a_done.try_recv(), Ok(Ok(()))));
        assert!(matches!(b_done.try_recv(), Ok(Ok(()))));
        match bad_done.try_recv() {
            Ok(Err(StoreError::Sqlite(e))) => assert!(e.contains("NOT NULL"), "{e}"),
            other => panic!("its own error, got {other:?}"),
        }
        assert_eq!(read_done.try_recv().unwrap().unwrap(), ["a", "b"]);
        assert_eq!(
            topics(&conn).unwrap(),
            ["a", "b"],
            "committed, without `half`"
        );
    }

    /// Units queued one after the other without waiting run in that order: the second sees the
    /// first's write, and both are answered once committed.
    #[tokio::test]
    async fn queued_units_run_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let first = store
            .enqueue(|c| {
                c.execute(
                    "INSERT INTO retained (topic, payload, qos) VALUES ('t', x'01', 0)",
                    [],
                )
            })
            .await
            .unwrap();
        let second = store
            .enqueue(|c| c.query_row("SELECT count(*) FROM retained", [], |r| r.get::<_, u32>(0)))
            .await
            .unwrap();
        assert_eq!(second.await.unwrap(), 1);
        assert_eq!(first.await.unwrap(), 1);
        thread.close().await;
    }

    /// Checked with SQL of its own: the components' queries live in their crates, above this one.
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
        let retained = store
            .transact(|c| {
                c.query_row("SELECT topic, payload, qos FROM retained", [], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, u8>(2)?,
                    ))
                })
            })
            .await
            .unwrap();
        assert_eq!(retained, ("a/b".to_owned(), b"1".to_vec(), 1));
        // The tombstone was recognised from its document by the new migration.
        let shadows = store
            .transact(|c| {
                c.prepare("SELECT thing, name, version, deleted_at FROM shadows ORDER BY thing")?
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, u64>(2)?,
                            r.get::<_, Option<u64>>(3)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .unwrap();
        let row = |thing: &str, name: &str, version, deleted_at| {
            (thing.to_owned(), name.to_owned(), version, deleted_at)
        };
        assert_eq!(
            shadows,
            [
                row("broken", "", 1, None),
                row("gone", "cfg", 9, Some(1000)),
                row("lamp", "", 4, None)
            ]
        );
        // Later migrations' tables exist and work.
        store
            .transact(|c| c.execute("INSERT INTO function_kv VALUES ('f', 'k', x'76')", []))
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
    async fn a_second_opener_is_refused_while_the_first_holds_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, thread) = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        thread.close().await;
    }
}
