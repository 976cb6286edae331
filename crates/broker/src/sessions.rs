//! The router's persistent sessions in SQLite (issue 14): what `grove_router`'s storage writes
//! mean, as tables (migration 7 in `grove_store`), and the state loaded back at startup.
//!
//! # What is durable, and when
//!
//! The router core numbers its [`StorageWrite`]s; the shell drains them (`poll_storage`), hands
//! them to `apply` inside one [`Store::transact`] unit (so they share the store's next group
//! commit with whatever else is waiting: one `fsync` for all), and only when that commit returned
//! calls `storage_committed` with the highest number. The core holds back what must not go out
//! before its write is durable: a publisher's PUBACK/PUBREC until the messages it queued for
//! persistent sessions (and a retained message) are committed, PUBCOMP until the release of its
//! packet id is, the first PUBLISH of a stored QoS 2 delivery until its packet id is, and the
//! PUBREL after a PUBREC until that PUBREC is. After kill -9 the database holds a prefix of the
//! writes, so `load` gives a state the router really was in, and `Router::restore` continues
//! from it: nothing acknowledged is lost and nothing QoS 2 is delivered twice.
//!
//! # Tables
//!
//! `sessions` (one row per client id; `sid` keys the others), `session_subscriptions`,
//! `session_messages` (a message queued for many sessions is stored once), `session_queue` (one
//! row per session and message, in queue order; a message row goes with its last reference),
//! `session_qos2_received`, and `retained`, the broker's table from migration 1 with the router's
//! message columns added (rows from before keep loading: they get fresh message ids and an empty
//! publisher). Times are the shell's `Instant`s, wall-clock Unix milliseconds.
//!
//! The shell calls [`SessionQueries::persist`] (a unit of its own in the next group commit) or,
//! to put the router's writes in one unit with other work, `apply` inside its own
//! [`Store::transact`]; at startup [`SessionQueries::load_sessions`]. rusqlite's types stay in
//! this module.
//!
//! The write path prepares every statement once per connection (`prepare_cached`) and writes a
//! message that many sessions queue in one batch once. The load reads each table in one scan (no
//! query per session) on the store's thread while another thread builds the messages and the
//! sessions' queues from the rows read. 10,000 sessions holding 100 distinct messages each take
//! about 6.6 billion instructions to load and restore, three quarters of them SQLite's stepping
//! and column reads through rusqlite (~560 instructions per row and ~310 per column read, 15
//! columns per queued message): a leaner row format is what would make it cheaper
//! (BENCHMARKS.md, "Persistent sessions: restart").

use std::collections::HashSet;
use std::future::Future;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use grove_router::{
    Instant, Message, MessageProperties, QoS, RestoredMessage, RestoredSession, RetainHandling,
    StorageWrite, SubOptions, Version, Will,
};
use grove_store::{Store, StoreError};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

/// What `load` gives: the sessions and the retained messages, as `Router::restore` takes them.
pub type Loaded = (Vec<RestoredSession>, Vec<Arc<Message>>);

/// The router's persistent state through the store's owner thread.
pub trait SessionQueries {
    /// Applies the router's writes in one unit of the next group commit; returns after the commit
    /// (then the shell calls `storage_committed` with the number of the last one).
    ///
    /// The database must hold a prefix of the router's writes, so the shell keeps one call in
    /// flight at a time (what the router writes meanwhile goes in the next call: that is the
    /// group commit). On an error nothing of the call was kept (its savepoint rolled back): the
    /// shell retries the same writes, or stops, but never sends later ones first.
    fn persist(
        &self,
        writes: Vec<StorageWrite>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Everything stored, for `Router::restore` at startup.
    fn load_sessions(&self) -> impl Future<Output = Result<Loaded, StoreError>> + Send;
}

impl SessionQueries for Store {
    async fn persist(&self, writes: Vec<StorageWrite>) -> Result<(), StoreError> {
        self.transact(move |c| apply(c, &writes)).await
    }

    async fn load_sessions(&self) -> Result<Loaded, StoreError> {
        // Reading (SQLite, on the store's thread) and building (a million `Arc<Message>`s and
        // the sessions' queues for a large restore) overlap, the building on a blocking thread of
        // tokio's: the load's wall time is then about SQLite's part alone.
        let (to, rows) = sync_channel(READ_AHEAD);
        let built = tokio::task::spawn_blocking(move || build(rows));
        let read = self.transact(move |c| load(c, &to)).await;
        let built = match built.await {
            Ok(built) => built,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => return Err(StoreError::Closed),
        };
        read.map(|()| built)
    }
}

/// The sid of a client's session, as a sub-select.
const SID: &str = "(SELECT sid FROM sessions WHERE client_id = ?1)";

/// Applies `writes` in order on `c` (inside the caller's transaction: run it in
/// [`Store::transact`]). Writes about a session that is not stored are ignored, as
/// [`grove_router::MemoryStore`] ignores them.
pub(crate) fn apply(c: &Connection, writes: &[StorageWrite]) -> rusqlite::Result<()> {
    // Messages written in this batch (a fan-out to many sessions binds its payload once), and
    // messages that lost a reference (deleted at the end if it was their last).
    let mut written: HashSet<u64> = HashSet::new();
    let mut unreferenced: HashSet<u64> = HashSet::new();
    for w in writes {
        match w {
            StorageWrite::Session {
                client_id,
                version,
                expiry_interval,
            } => {
                c.prepare_cached(
                    "INSERT INTO sessions (client_id, version, expiry_interval) VALUES (?1, ?2, ?3)
                     ON CONFLICT (client_id) DO UPDATE SET version = excluded.version,
                        expiry_interval = excluded.expiry_interval, disconnected_at = NULL,
                        will_at = NULL, will_topic = NULL, will_payload = NULL, will_qos = NULL,
                        will_retain = NULL, will_delay = NULL, will_properties = NULL",
                )?
                .execute(params![
                    &**client_id,
                    version_code(*version),
                    expiry_interval
                ])?;
            }
            StorageWrite::Disconnected {
                client_id,
                at,
                will,
            } => {
                let will = will.as_ref();
                c.prepare_cached(
                    "UPDATE sessions SET disconnected_at = ?2, will_at = ?3, will_topic = ?4,
                        will_payload = ?5, will_qos = ?6, will_retain = ?7, will_delay = ?8,
                        will_properties = ?9
                     WHERE client_id = ?1",
                )?
                .execute(params![
                    &**client_id,
                    millis(*at),
                    will.map(|(at, _)| millis(*at)),
                    will.map(|(_, w)| &*w.topic),
                    will.map(|(_, w)| w.payload.as_ref()),
                    will.map(|(_, w)| w.qos as u8),
                    will.map(|(_, w)| w.retain),
                    will.map(|(_, w)| w.delay_interval),
                    will.and_then(|(_, w)| encode_properties(&w.properties)),
                ])?;
            }
            StorageWrite::WillDone { client_id } => {
                c.prepare_cached(
                    "UPDATE sessions SET will_at = NULL, will_topic = NULL, will_payload = NULL,
                        will_qos = NULL, will_retain = NULL, will_delay = NULL,
                        will_properties = NULL
                     WHERE client_id = ?1",
                )?
                .execute(params![&**client_id])?;
            }
            StorageWrite::SessionDeleted { client_id } => {
                let sid: Option<i64> = c
                    .prepare_cached("SELECT sid FROM sessions WHERE client_id = ?1")?
                    .query_row(params![&**client_id], |r| r.get(0))
                    .optional()?;
                let Some(sid) = sid else { continue };
                let mut ids =
                    c.prepare_cached("SELECT message_id FROM session_queue WHERE sid = ?1")?;
                for id in ids.query_map(params![sid], |r| r.get::<_, i64>(0))? {
                    unreferenced.insert(id? as u64);
                }
                for sql in [
                    "DELETE FROM session_queue WHERE sid = ?1",
                    "DELETE FROM session_subscriptions WHERE sid = ?1",
                    "DELETE FROM session_qos2_received WHERE sid = ?1",
                    "DELETE FROM sessions WHERE sid = ?1",
                ] {
                    c.prepare_cached(sql)?.execute(params![sid])?;
                }
            }
            StorageWrite::Subscribed {
                client_id,
                filter,
                options,
                id,
            } => {
                c.prepare_cached(
                    "INSERT INTO session_subscriptions (sid, filter, options, sub_id)
                     SELECT sid, ?2, ?3, ?4 FROM sessions WHERE client_id = ?1
                     ON CONFLICT (sid, filter) DO UPDATE SET options = excluded.options,
                        sub_id = excluded.sub_id",
                )?
                .execute(params![
                    &**client_id,
                    &**filter,
                    options_byte(options),
                    id
                ])?;
            }
            StorageWrite::Unsubscribed { client_id, filter } => {
                c.prepare_cached(&format!(
                    "DELETE FROM session_subscriptions WHERE sid = {SID} AND filter = ?2"
                ))?
                .execute(params![&**client_id, &**filter])?;
            }
            StorageWrite::Enqueued {
                client_id,
                message,
                qos,
                retain,
                subscription_ids,
            } => {
                let queued = c
                    .prepare_cached(
                        "INSERT INTO session_queue (sid, message_id, qos, retain, sub_ids)
                         SELECT sid, ?2, ?3, ?4, ?5 FROM sessions WHERE client_id = ?1",
                    )?
                    .execute(params![
                        &**client_id,
                        message.id as i64,
                        *qos as u8,
                        retain,
                        encode_sub_ids(subscription_ids),
                    ])?;
                if queued == 1 && written.insert(message.id) {
                    insert_message(c, message)?;
                }
            }
            StorageWrite::PacketId {
                client_id,
                message_id,
                pkid,
            } => {
                c.prepare_cached(&format!(
                    "UPDATE session_queue SET pkid = ?3 WHERE seq = (SELECT seq FROM session_queue
                        WHERE sid = {SID} AND message_id = ?2 AND pkid IS NULL ORDER BY seq LIMIT 1)"
                ))?
                .execute(params![&**client_id, *message_id as i64, pkid])?;
            }
            StorageWrite::PubRecReceived {
                client_id,
                message_id,
                pkid,
            } => {
                c.prepare_cached(&format!(
                    "UPDATE session_queue SET released = 1 WHERE seq = (SELECT seq FROM session_queue
                        WHERE sid = {SID} AND message_id = ?2 AND pkid = ?3 ORDER BY seq LIMIT 1)"
                ))?
                .execute(params![&**client_id, *message_id as i64, pkid])?;
            }
            StorageWrite::Dequeued {
                client_id,
                message_id,
            } => {
                c.prepare_cached(&format!(
                    "DELETE FROM session_queue WHERE seq = (SELECT seq FROM session_queue
                        WHERE sid = {SID} AND message_id = ?2 ORDER BY seq LIMIT 1)"
                ))?
                .execute(params![&**client_id, *message_id as i64])?;
                unreferenced.insert(*message_id);
            }
            StorageWrite::Qos2Received { client_id, pkid } => {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO session_qos2_received (sid, pkid)
                     SELECT sid, ?2 FROM sessions WHERE client_id = ?1",
                )?
                .execute(params![&**client_id, pkid])?;
            }
            StorageWrite::Qos2Released { client_id, pkid } => {
                c.prepare_cached(&format!(
                    "DELETE FROM session_qos2_received WHERE sid = {SID} AND pkid = ?2"
                ))?
                .execute(params![&**client_id, pkid])?;
            }
            StorageWrite::Retained { message } => {
                c.prepare_cached(
                    "INSERT INTO retained (topic, payload, qos, id, expires_at, publisher, properties)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload,
                        qos = excluded.qos, id = excluded.id, expires_at = excluded.expires_at,
                        publisher = excluded.publisher, properties = excluded.properties",
                )?
                .execute(params![
                    &*message.topic,
                    message.payload.as_ref(),
                    message.qos as u8,
                    message.id as i64,
                    message.expires_at.map(millis),
                    &*message.publisher,
                    encode_properties(&message.properties),
                ])?;
            }
            StorageWrite::RetainedDeleted { topic } => {
                c.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                    .execute(params![&**topic])?;
            }
        }
    }
    let mut orphan = c.prepare_cached(
        "DELETE FROM session_messages WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM session_queue WHERE message_id = ?1)",
    )?;
    for id in unreferenced {
        orphan.execute(params![id as i64])?;
    }
    Ok(())
}

fn insert_message(c: &Connection, m: &Message) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO session_messages
            (id, topic, payload, qos, retain, expires_at, publisher, properties)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        m.id as i64,
        &*m.topic,
        m.payload.as_ref(),
        m.qos as u8,
        m.retain,
        m.expires_at.map(millis),
        &*m.publisher,
        encode_properties(&m.properties),
    ])?;
    Ok(())
}

/// Reads everything stored, one scan per table, and hands the rows to [`build`] as they come
/// (on `rows`; a closed channel stops the reading). Sessions come in creation order, subscriptions
/// in filter order, queue entries in queue order, retained messages in topic order.
fn load(c: &Connection, rows: &SyncSender<Rows>) -> rusqlite::Result<()> {
    // The load reads every page of the router's tables once. Mapped, SQLite reads them in the
    // kernel's page cache instead of copying each into its own cache with a `pread` (~10% of a
    // large restore). Only for the load: with mmap an I/O error is a SIGBUS rather than an error
    // SQLite can return, which a gateway that runs for months should not risk, while at startup it
    // ends the start as an error would.
    c.pragma_update(None, "mmap_size", LOAD_MMAP_BYTES)?;
    let read = read(c, rows);
    c.pragma_update(None, "mmap_size", 0)?;
    read
}

/// How much of the database the load maps (SQLite caps it at its compile-time maximum, 2 GiB on
/// 64-bit Linux; pages beyond are read as usual).
const LOAD_MMAP_BYTES: i64 = 1 << 31;

/// Rows read, on their way from the store's thread to [`build`].
enum Rows {
    Sessions(Vec<(i64, RestoredSession)>),
    Subscriptions(Vec<(i64, Subscription)>),
    Qos2(Vec<(i64, u16)>),
    Messages(Vec<(i64, Message)>),
    Queue(Vec<QueueRow>),
    /// With their message id; `None` for rows from before migration 7.
    Retained(Vec<(Option<i64>, Message)>),
}

/// A `session_subscriptions` row as [`RestoredSession::subscriptions`] holds it: the filter, its
/// options and its subscription identifier.
type Subscription = (Arc<str>, SubOptions, Option<u32>);

/// A `session_queue` row.
struct QueueRow {
    sid: i64,
    message_id: i64,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
    pkid: Option<u16>,
    released: bool,
}

/// Rows handed over at a time (one channel operation per chunk, not per row).
const CHUNK_ROWS: usize = 1024;

/// Chunks the reading may be ahead of the building.
const READ_AHEAD: usize = 8;

/// One table's rows on their way to [`build`], [`CHUNK_ROWS`] at a time.
struct Chunks<'a, T> {
    to: &'a SyncSender<Rows>,
    wrap: fn(Vec<T>) -> Rows,
    rows: Vec<T>,
}

impl<'a, T> Chunks<'a, T> {
    fn new(to: &'a SyncSender<Rows>, wrap: fn(Vec<T>) -> Rows) -> Self {
        Chunks {
            to,
            wrap,
            rows: Vec::with_capacity(CHUNK_ROWS),
        }
    }

    /// Adds a row; false if `build` is gone (then reading stops).
    fn push(&mut self, row: T) -> bool {
        self.rows.push(row);
        self.rows.len() < CHUNK_ROWS || self.send()
    }

    /// Hands over what is left; false if `build` is gone.
    fn send(&mut self) -> bool {
        let rows = std::mem::replace(&mut self.rows, Vec::with_capacity(CHUNK_ROWS));
        rows.is_empty() || self.to.send((self.wrap)(rows)).is_ok()
    }
}

/// The reading half of [`load`]: each table in one scan, in key order.
fn read(c: &Connection, to: &SyncSender<Rows>) -> rusqlite::Result<()> {
    let mut names = Names::default();
    let mut chunks = Chunks::new(to, Rows::Sessions);
    let mut stmt = c.prepare_cached(
        "SELECT sid, client_id, version, expiry_interval, disconnected_at, will_at, will_topic,
            will_payload, will_qos, will_retain, will_delay, will_properties
         FROM sessions ORDER BY sid",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let will = match r.get::<_, Option<i64>>(5)? {
            None => None,
            Some(at) => Some((
                instant(at),
                Will {
                    topic: names.topics.get(r, 6)?,
                    payload: names.payloads.copy(r.get_ref(7)?.as_blob()?),
                    qos: qos(r, 8)?,
                    retain: r.get(9)?,
                    delay_interval: r.get(10)?,
                    properties: properties(r, 11)?,
                },
            )),
        };
        let session = RestoredSession {
            client_id: r.get_ref(1)?.as_str()?.into(),
            version: match r.get::<_, u8>(2)? {
                4 => Version::V311,
                5 => Version::V5,
                other => return Err(out_of_range(2, other.into())),
            },
            expiry_interval: r.get(3)?,
            disconnected_at: r.get::<_, Option<i64>>(4)?.map(instant),
            will,
            subscriptions: Vec::new(),
            messages: Vec::new(),
            incoming_qos2: Vec::new(),
        };
        if !chunks.push((r.get(0)?, session)) {
            return Ok(());
        }
    }
    if !chunks.send() {
        return Ok(());
    }
    let mut chunks = Chunks::new(to, Rows::Subscriptions);
    let mut stmt = c.prepare_cached(
        "SELECT sid, filter, options, sub_id FROM session_subscriptions ORDER BY sid, filter",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let options = options_from_byte(r.get(2)?).ok_or_else(|| out_of_range(2, 0))?;
        let subscription = (r.get_ref(1)?.as_str()?.into(), options, r.get(3)?);
        if !chunks.push((r.get(0)?, subscription)) {
            return Ok(());
        }
    }
    if !chunks.send() {
        return Ok(());
    }
    let mut chunks = Chunks::new(to, Rows::Qos2);
    let mut stmt =
        c.prepare_cached("SELECT sid, pkid FROM session_qos2_received ORDER BY sid, pkid")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        if !chunks.push((r.get(0)?, r.get(1)?)) {
            return Ok(());
        }
    }
    if !chunks.send() {
        return Ok(());
    }
    let mut chunks = Chunks::new(to, Rows::Messages);
    let mut stmt = c.prepare_cached(
        "SELECT id, topic, payload, qos, retain, expires_at, publisher, properties
         FROM session_messages ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        if !chunks.push((id, message(r, id as u64, &mut names)?)) {
            return Ok(());
        }
    }
    if !chunks.send() {
        return Ok(());
    }
    let mut chunks = Chunks::new(to, Rows::Queue);
    let mut stmt = c.prepare_cached(
        "SELECT sid, message_id, qos, retain, sub_ids, pkid, released
         FROM session_queue ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let row = QueueRow {
            sid: r.get(0)?,
            message_id: r.get(1)?,
            qos: qos(r, 2)?,
            retain: r.get(3)?,
            subscription_ids: decode_sub_ids(r.get_ref(4)?.as_blob_or_null()?),
            pkid: r.get(5)?,
            released: r.get(6)?,
        };
        if !chunks.push(row) {
            return Ok(());
        }
    }
    if !chunks.send() {
        return Ok(());
    }
    let mut chunks = Chunks::new(to, Rows::Retained);
    let mut stmt = c.prepare_cached(
        "SELECT id, topic, payload, qos, 1, expires_at, publisher, properties
         FROM retained ORDER BY topic",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: Option<i64> = r.get(0)?;
        if !chunks.push((id, message(r, id.unwrap_or(0) as u64, &mut names)?)) {
            return Ok(());
        }
    }
    chunks.send();
    Ok(())
}

/// The building half of [`load`]: the sessions with their subscriptions, inbound QoS 2 ids and
/// queues, and the retained messages, from the rows `read` hands over (in its order).
fn build(rows: Receiver<Rows>) -> Loaded {
    let mut sessions = Vec::new();
    // Rows come in key order, so lookups are binary searches in sorted vectors: no hashing, and
    // a queue in message order reads the messages' vector nearly in order (a million-entry hash
    // map was a third of the load's time).
    let mut sids: Vec<i64> = Vec::new();
    let mut messages: Vec<(i64, Arc<Message>)> = Vec::new();
    // Queue rows mostly follow message order (messages are queued as they arrive): the entry
    // after the last one found is tried before a search.
    let mut last = 0;
    let mut retained = Vec::new();
    let mut legacy = Vec::new();
    for chunk in rows {
        match chunk {
            Rows::Sessions(rows) => {
                for (sid, session) in rows {
                    sids.push(sid);
                    sessions.push(session);
                }
            }
            Rows::Subscriptions(rows) => {
                for (sid, subscription) in rows {
                    if let Ok(i) = sids.binary_search(&sid) {
                        sessions[i].subscriptions.push(subscription);
                    }
                }
            }
            Rows::Qos2(rows) => {
                for (sid, pkid) in rows {
                    if let Ok(i) = sids.binary_search(&sid) {
                        sessions[i].incoming_qos2.push(pkid);
                    }
                }
            }
            Rows::Messages(rows) => {
                messages.extend(rows.into_iter().map(|(id, m)| (id, Arc::new(m))));
            }
            Rows::Queue(rows) => {
                for q in rows {
                    let Ok(i) = sids.binary_search(&q.sid) else {
                        continue;
                    };
                    let found = match messages.get(last + 1) {
                        Some(m) if m.0 == q.message_id => Ok(last + 1),
                        _ => messages.binary_search_by_key(&q.message_id, |m| m.0),
                    };
                    let Ok(m) = found else { continue };
                    last = m;
                    sessions[i].messages.push(RestoredMessage {
                        message: messages[m].1.clone(),
                        qos: q.qos,
                        retain: q.retain,
                        subscription_ids: q.subscription_ids,
                        pkid: q.pkid,
                        released: q.released,
                    });
                }
            }
            Rows::Retained(rows) => {
                for (id, m) in rows {
                    match id {
                        Some(_) => retained.push(Arc::new(m)),
                        // Written before migration 7 (by the rumqttd broker): numbered after the
                        // others, below.
                        None => legacy.push(m),
                    }
                }
            }
        }
    }
    let next_id = messages
        .last()
        .map(|m| m.0 as u64)
        .into_iter()
        .chain(retained.iter().map(|m| m.id))
        .max()
        .map_or(1, |id| id + 1);
    for (n, mut m) in legacy.into_iter().enumerate() {
        m.id = next_id + n as u64;
        retained.push(Arc::new(m));
    }
    (sessions, retained)
}

/// A message from a row of `id, topic, payload, qos, retain, expires_at, publisher, properties`
/// (`session_messages`, or `retained` with `id` given).
fn message(r: &Row<'_>, id: u64, names: &mut Names) -> rusqlite::Result<Message> {
    Ok(Message {
        id,
        topic: names.topics.get(r, 1)?,
        payload: names.payloads.copy(r.get_ref(2)?.as_blob()?),
        qos: qos(r, 3)?,
        retain: r.get(4)?,
        expires_at: r.get::<_, Option<i64>>(5)?.map(instant),
        publisher: names.clients.get(r, 6)?,
        properties: properties(r, 7)?,
    })
}

/// Names shared by many rows, and the payloads' memory.
#[derive(Default)]
struct Names {
    topics: Interner,
    clients: Interner,
    payloads: Payloads,
}

/// Payloads loaded at startup, copied into shared chunks of [`PAYLOAD_CHUNK`] bytes: a million
/// queued messages take a few thousand allocations instead of a million (allocating, and the
/// page faults of fresh memory, were a quarter of a large restore's time). A chunk is freed with
/// the last of its messages, so what the restore holds is never more than the payloads it loaded.
#[derive(Default)]
struct Payloads(BytesMut);

/// Size of a payload chunk; a payload above a quarter of it gets an allocation of its own.
const PAYLOAD_CHUNK: usize = 16 * 1024;

impl Payloads {
    fn copy(&mut self, payload: &[u8]) -> Bytes {
        if payload.len() > PAYLOAD_CHUNK / 4 {
            return Bytes::copy_from_slice(payload);
        }
        if self.0.capacity() - self.0.len() < payload.len() {
            self.0 = BytesMut::with_capacity(PAYLOAD_CHUNK);
        }
        self.0.extend_from_slice(payload);
        self.0.split().freeze()
    }
}

/// One `Arc<str>` per distinct topic or client id loaded (a session's 100 messages on one topic
/// share it), so a large restore allocates per name, not per row. Consecutive rows often repeat
/// a name: the last one is compared (as bytes, before any UTF-8 check) before the set.
#[derive(Default)]
struct Interner(HashSet<Arc<str>>, Option<Arc<str>>);

impl Interner {
    /// The text of column `column` of `r`, interned.
    fn get(&mut self, r: &Row<'_>, column: usize) -> rusqlite::Result<Arc<str>> {
        let bytes = r.get_ref(column)?.as_bytes()?;
        if let Some(a) = self.1.as_ref().filter(|a| a.as_bytes() == bytes) {
            return Ok(a.clone());
        }
        let s = std::str::from_utf8(bytes).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
        })?;
        let a = match self.0.get(s) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = s.into();
                self.0.insert(a.clone());
                a
            }
        };
        self.1 = Some(a.clone());
        Ok(a)
    }
}

fn out_of_range(column: usize, value: i64) -> rusqlite::Error {
    rusqlite::Error::IntegralValueOutOfRange(column, value)
}

fn qos(r: &Row<'_>, column: usize) -> rusqlite::Result<QoS> {
    match r.get::<_, u8>(column)? {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(out_of_range(column, other.into())),
    }
}

fn version_code(v: Version) -> u8 {
    match v {
        Version::V311 => 4,
        Version::V5 => 5,
    }
}

/// Instants are the shell's wall-clock Unix milliseconds; SQLite integers are signed.
fn millis(t: Instant) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn instant(ms: i64) -> Instant {
    Instant(u64::try_from(ms).unwrap_or(0))
}

/// The SUBSCRIBE options byte (MQTT 5 3.8.3.1): QoS in bits 0-1, No Local bit 2, Retain As
/// Published bit 3, Retain Handling bits 4-5.
fn options_byte(o: &SubOptions) -> u8 {
    let rh = match o.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    o.qos as u8 | u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | rh << 4
}

fn options_from_byte(b: u8) -> Option<SubOptions> {
    Some(SubOptions {
        qos: match b & 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return None,
        },
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

/// Subscription identifiers as little-endian u32s; NULL when there are none (the common case).
fn encode_sub_ids(ids: &[u32]) -> Option<Vec<u8>> {
    (!ids.is_empty()).then(|| ids.iter().flat_map(|id| id.to_le_bytes()).collect())
}

fn decode_sub_ids(blob: Option<&[u8]>) -> Vec<u32> {
    blob.unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A message's MQTT 5 properties as stored: JSON, NULL when it has none (the common case).
#[derive(Serialize, Deserialize)]
struct StoredProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_format_indicator: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_expiry_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
}

fn encode_properties(p: &MessageProperties) -> Option<String> {
    if *p == MessageProperties::default() {
        return None;
    }
    let stored = StoredProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: p.user_properties.clone(),
    };
    // Serialising a struct of strings, numbers and byte lists cannot fail.
    serde_json::to_string(&stored).ok()
}

fn properties(r: &Row<'_>, column: usize) -> rusqlite::Result<MessageProperties> {
    let json = match r.get_ref(column)? {
        ValueRef::Null => return Ok(MessageProperties::default()),
        v => v.as_str()?,
    };
    let p: StoredProperties = serde_json::from_str(json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(MessageProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data.map(Bytes::from),
        user_properties: p.user_properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use grove_router::MemoryStore;
    use proptest::prelude::*;

    const CLIENTS: [&str; 3] = ["a", "b", "c"];
    const FILTERS: [&str; 3] = ["t/#", "$share/g/t/+", "u"];

    /// The message a router would have with this id: the same id is always the same message.
    fn message(id: u64) -> Arc<Message> {
        let mut properties = MessageProperties::default();
        if id.is_multiple_of(3) {
            properties.content_type = Some("text/plain".into());
            properties.correlation_data = Some(Bytes::from(vec![id as u8; 3]));
            properties.user_properties = vec![("k".into(), format!("v{id}"))];
            properties.message_expiry_interval = Some(60);
        }
        Arc::new(Message {
            id,
            topic: format!("t/{}", id % 4).into(),
            payload: Bytes::from(vec![b'x'; (id % 5) as usize * 40]),
            qos: if id.is_multiple_of(2) {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            },
            retain: id.is_multiple_of(4),
            properties,
            expires_at: (id.is_multiple_of(3)).then_some(Instant(1_700_000_000_000 + id)),
            publisher: CLIENTS[(id % 3) as usize].into(),
        })
    }

    /// A retained message (the router retains only messages published with RETAIN).
    fn retained(id: u64) -> Arc<Message> {
        Arc::new(Message {
            retain: true,
            ..(*message(id)).clone()
        })
    }

    fn will(delay: u32) -> Will {
        Will {
            topic: "will/t".into(),
            payload: Bytes::from_static(b""),
            qos: QoS::AtLeastOnce,
            retain: delay.is_multiple_of(2),
            delay_interval: delay,
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                ..MessageProperties::default()
            },
        }
    }

    fn write() -> impl Strategy<Value = StorageWrite> {
        let client = (0..CLIENTS.len()).prop_map(|c| Arc::<str>::from(CLIENTS[c]));
        let id = 1..12u64;
        let pkid = 1..4u16;
        prop_oneof![
            3 => (client.clone(), any::<bool>(), prop_oneof![Just(10u32), Just(u32::MAX)])
                .prop_map(|(client_id, v5, expiry_interval)| StorageWrite::Session {
                    client_id,
                    version: if v5 { Version::V5 } else { Version::V311 },
                    expiry_interval,
                }),
            1 => (client.clone(), 0..100u64, proptest::option::of((0..100u64, 0..30u32)))
                .prop_map(|(client_id, at, w)| StorageWrite::Disconnected {
                    client_id,
                    at: Instant(at),
                    will: w.map(|(at, delay)| (Instant(at), will(delay))),
                }),
            1 => client.clone().prop_map(|client_id| StorageWrite::WillDone { client_id }),
            1 => client.clone().prop_map(|client_id| StorageWrite::SessionDeleted { client_id }),
            2 => (client.clone(), 0..FILTERS.len(), 0..3u8, any::<bool>(), 0..3u8, proptest::option::of(1..5u32))
                .prop_map(|(client_id, f, q, nl, rh, id)| StorageWrite::Subscribed {
                    client_id,
                    filter: FILTERS[f].into(),
                    options: options_from_byte(q | u8::from(nl) << 2 | u8::from(!nl) << 3 | rh << 4)
                        .expect("valid"),
                    id,
                }),
            1 => (client.clone(), 0..FILTERS.len()).prop_map(|(client_id, f)| {
                StorageWrite::Unsubscribed { client_id, filter: FILTERS[f].into() }
            }),
            6 => (client.clone(), id.clone(), any::<bool>(), proptest::collection::vec(1..9u32, 0..3))
                .prop_map(|(client_id, id, retain, subscription_ids)| {
                    let message = message(id);
                    StorageWrite::Enqueued { client_id, qos: message.qos, message, retain, subscription_ids }
                }),
            3 => (client.clone(), id.clone(), pkid.clone())
                .prop_map(|(client_id, message_id, pkid)| StorageWrite::PacketId { client_id, message_id, pkid }),
            2 => (client.clone(), id.clone(), pkid.clone())
                .prop_map(|(client_id, message_id, pkid)| StorageWrite::PubRecReceived { client_id, message_id, pkid }),
            4 => (client.clone(), id.clone())
                .prop_map(|(client_id, message_id)| StorageWrite::Dequeued { client_id, message_id }),
            1 => (client.clone(), pkid.clone()).prop_map(|(client_id, pkid)| StorageWrite::Qos2Received { client_id, pkid }),
            1 => (client, pkid).prop_map(|(client_id, pkid)| StorageWrite::Qos2Released { client_id, pkid }),
            1 => (20..30u64).prop_map(|id| StorageWrite::Retained { message: retained(id) }),
            1 => (0..4u64).prop_map(|t| StorageWrite::RetainedDeleted { topic: format!("t/{t}").into() }),
        ]
    }

    /// The order the two stores need not share: subscriptions (a map in the router), inbound
    /// QoS 2 ids (a set), retained messages (a tree).
    fn normalise((mut sessions, mut retained): Loaded) -> Loaded {
        for s in &mut sessions {
            s.subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
            s.incoming_qos2.sort_unstable();
        }
        retained.sort_by(|a, b| a.topic.cmp(&b.topic));
        (sessions, retained)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// SQLite means what `MemoryStore`, the router's reference, means: random write
        /// sequences, committed in random batches, load the same sessions (creation order),
        /// subscriptions, queues (queue order, packet ids, PUBRECs), QoS 2 ids, wills,
        /// disconnect times and retained messages; and no message row outlives its last
        /// reference.
        #[test]
        fn sqlite_loads_what_memory_store_holds(
            batches in proptest::collection::vec(proptest::collection::vec(write(), 1..12), 1..8)
        ) {
            let rt = runtime();
            let dir = tempfile::tempdir().unwrap();
            let (store, thread) = Store::open(dir.path()).unwrap();
            let mut memory = MemoryStore::default();
            for batch in batches {
                for w in &batch {
                    memory.apply(w.clone());
                }
                rt.block_on(store.persist(batch)).unwrap();
                let loaded = rt.block_on(store.load_sessions()).unwrap();
                let want = normalise((memory.sessions.clone(), memory.retained.clone()));
                prop_assert_eq!(normalise(loaded), want);
                let orphans: i64 = rt.block_on(store.transact(|c| c.query_row(
                    "SELECT count(*) FROM session_messages m WHERE NOT EXISTS
                        (SELECT 1 FROM session_queue q WHERE q.message_id = m.id)",
                    [],
                    |r| r.get(0),
                ))).unwrap();
                prop_assert_eq!(orphans, 0);
            }
            rt.block_on(thread.close());
        }
    }

    /// The shell's storage loop: the router's writes persisted in one unit, then reported.
    fn commit(rt: &tokio::runtime::Runtime, store: &Store, r: &mut grove_router::Router) {
        let mut writes = Vec::new();
        let mut last = 0;
        while let Some((n, w)) = r.poll_storage() {
            writes.push(w);
            last = n;
        }
        if last > 0 {
            rt.block_on(store.persist(writes)).unwrap();
            r.storage_committed(last);
        }
    }

    /// What the router sends to `conn` now.
    fn sent(
        r: &mut grove_router::Router,
        now: Instant,
        conn: grove_router::ConnId,
    ) -> Vec<grove_router::Outbound> {
        let mut out = Vec::new();
        while let Some(c) = r.poll_ready() {
            while let Some(p) = r.poll_transmit(now, c) {
                if c == conn {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Issue 14 through SQLite: kill -9 with a QoS 2 delivery past PUBREC and a QoS 1 delivery
    /// unacknowledged; after the restart from the database the first is continued with PUBREL
    /// and the second resent with its packet id and DUP [MQTT-4.4.0-1] (MQTT 5 4.3.3).
    #[test]
    fn inflight_deliveries_continue_after_a_restart_from_sqlite() {
        use grove_router::{Ack, ConnId, Connect, Inbound, Outbound, Publish, Router, Subscribe};
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let now = Instant(1_765_000_000_000);
        let persistent = || Connect {
            clean_start: false,
            session_expiry_interval: 100,
            ..Connect::new("s", Version::V5)
        };
        let publish = |payload: &'static str, qos, pkid| {
            Inbound::Publish(Publish {
                topic: "t".into(),
                payload: Bytes::from_static(payload.as_bytes()),
                qos,
                retain: false,
                dup: false,
                pkid,
                topic_alias: None,
                properties: MessageProperties::default(),
            })
        };
        let (released, unacked) = {
            let (store, thread) = Store::open(dir.path()).unwrap();
            let mut r = Router::new(Default::default());
            let (s, p) = (ConnId(1), ConnId(2));
            r.connect(now, s, persistent()).unwrap();
            let filters = vec![("t".into(), SubOptions::qos(QoS::ExactlyOnce))];
            let subscribe = Subscribe {
                pkid: 1,
                filters,
                subscription_id: None,
            };
            r.handle(now, s, Inbound::Subscribe(subscribe));
            r.connect(now, p, Connect::new("p", Version::V5)).unwrap();
            r.handle(now, p, publish("two", QoS::ExactlyOnce, 1));
            r.handle(now, p, publish("one", QoS::AtLeastOnce, 2));
            sent(&mut r, now, s);
            commit(&rt, &store, &mut r);
            let d: Vec<_> = sent(&mut r, now, s)
                .into_iter()
                .filter_map(|o| match o {
                    Outbound::Publish(d) => Some(d),
                    _ => None,
                })
                .collect();
            assert_eq!(d.len(), 2, "sent once their packet ids are stored");
            let rec = Ack {
                pkid: d[0].pkid,
                reason: 0,
            };
            r.handle(now, s, Inbound::PubRec(rec));
            commit(&rt, &store, &mut r);
            assert_eq!(sent(&mut r, now, s), [Outbound::PubRel(rec)]);
            // kill -9: the router is gone with whatever it did not commit.
            drop(r);
            rt.block_on(thread.close());
            (rec, d[1].clone())
        };
        let (store, thread) = Store::open(dir.path()).unwrap();
        let (sessions, retained) = rt.block_on(store.load_sessions()).unwrap();
        let later = now.plus_secs(5);
        let mut r = Router::new(Default::default());
        r.restore(later, sessions, retained);
        let s = ConnId(3);
        r.connect(later, s, persistent()).unwrap();
        commit(&rt, &store, &mut r);
        let out = sent(&mut r, later, s);
        assert!(matches!(&out[0], Outbound::ConnAck(a) if a.session_present));
        assert_eq!(out[1], Outbound::PubRel(released), "PUBREL, not PUBLISH");
        match &out[2] {
            Outbound::Publish(d) => {
                assert!(d.dup && d.pkid == unacked.pkid && d.message.payload == "one");
            }
            other => panic!("expected the resent QoS 1 PUBLISH, got {other:?}"),
        }
        assert_eq!(out.len(), 3);
        rt.block_on(thread.close());
    }

    /// A message queued for many sessions is one row, and goes with its last reference.
    #[test]
    fn a_message_is_stored_once_and_deleted_with_its_last_reference() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let m = message(2);
        let mut writes = Vec::new();
        for c in CLIENTS {
            writes.push(StorageWrite::Session {
                client_id: c.into(),
                version: Version::V5,
                expiry_interval: 100,
            });
            writes.push(StorageWrite::Enqueued {
                client_id: c.into(),
                message: m.clone(),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
            });
        }
        rt.block_on(store.persist(writes)).unwrap();
        let count = |sql: &'static str| {
            rt.block_on(store.transact(move |c| c.query_row(sql, [], |r| r.get::<_, i64>(0))))
                .unwrap()
        };
        assert_eq!(count("SELECT count(*) FROM session_messages"), 1);
        assert_eq!(count("SELECT count(*) FROM session_queue"), 3);
        let dequeue = |c: &str| StorageWrite::Dequeued {
            client_id: c.into(),
            message_id: m.id,
        };
        let deleted = StorageWrite::SessionDeleted {
            client_id: "b".into(),
        };
        rt.block_on(store.persist(vec![dequeue("a"), deleted]))
            .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM session_messages"),
            1,
            "c holds it"
        );
        rt.block_on(store.persist(vec![dequeue("c")])).unwrap();
        assert_eq!(count("SELECT count(*) FROM session_messages"), 0);
        rt.block_on(thread.close());
    }

    /// Retained messages written by the broker before (migration 1's columns only) load after
    /// migration 7, with message ids above every stored message's.
    #[test]
    fn retained_rows_from_before_the_migration_still_load() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        {
            // Rows as the broker wrote them before migration 7 (topic, payload, qos only).
            let (store, thread) = Store::open(dir.path()).unwrap();
            rt.block_on(store.transact(|c| {
                c.execute_batch(
                    "INSERT INTO retained (topic, payload, qos) VALUES ('old/a', x'6869', 1);
                     INSERT INTO retained (topic, payload, qos) VALUES ('old/b', x'21', 0);",
                )
            }))
            .unwrap();
            rt.block_on(store.persist(vec![
                StorageWrite::Retained {
                    message: retained(7),
                },
                StorageWrite::Session {
                    client_id: "a".into(),
                    version: Version::V5,
                    expiry_interval: 10,
                },
                StorageWrite::Enqueued {
                    client_id: "a".into(),
                    message: message(9),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                },
            ]))
            .unwrap();
            rt.block_on(thread.close());
        }
        let (store, thread) = Store::open(dir.path()).unwrap();
        let (_, loaded) = rt.block_on(store.load_sessions()).unwrap();
        let old: Vec<_> = loaded
            .iter()
            .filter(|m| m.topic.starts_with("old/"))
            .map(|m| (&*m.topic, m.payload.as_ref(), m.qos, m.retain, m.id))
            .collect();
        assert_eq!(
            old,
            [
                ("old/a", &b"hi"[..], QoS::AtLeastOnce, true, 10),
                ("old/b", &b"!"[..], QoS::AtMostOnce, true, 11)
            ]
        );
        assert!(loaded.contains(&retained(7)));
        rt.block_on(thread.close());
    }
}
