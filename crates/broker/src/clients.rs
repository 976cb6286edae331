//! The clients connected now, as operators see them (the console's devices page): client id,
//! address, protocol version, since when, messages each way, and an operator's disconnect.
//!
//! Every authenticated connection is listed from its CONNACK until its relay has ended (like
//! `LiveDevices` for proved devices, which a revocation waits on). A listing costs each connection
//! one entry here (about 100 B with the map's room), 16 B in its relay, and a relaxed atomic add
//! per message on counters kept in its router writer (an allocation it has anyway); the list is
//! read only when an operator looks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::router_task::Nudge;
use super::Shared;

/// A client connected now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedClient {
    /// Its client id (as assigned, when it sent an empty one).
    pub client_id: String,
    /// Where it connects from.
    pub peer: SocketAddr,
    /// The MQTT protocol level: 4 (3.1.1) or 5.
    pub protocol: u8,
    /// When its CONNACK was sent.
    pub since: SystemTime,
    /// PUBLISH packets taken from it.
    pub received: u64,
    /// PUBLISH packets written to it.
    pub sent: u64,
}

/// One connection's counters, written by its relay only (kept in its router writer).
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    /// An operator asked for the connection to end (see [`Clients::disconnect`]).
    pub(crate) kicked: AtomicBool,
}

struct Entry {
    client_id: Arc<str>,
    peer: SocketAddr,
    protocol: u8,
    since: SystemTime,
    /// Wakes the connection, and holds its counts.
    nudge: Nudge,
}

/// The table of connected clients, by connection number.
#[derive(Default)]
pub(crate) struct Table {
    open: Mutex<HashMap<u64, Entry>>,
    /// Bumped whenever a listed connection has ended.
    ended: watch::Sender<u64>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's place in the table, removed when dropped (with the relay, after `finish`).
pub(crate) struct Listed {
    shared: Arc<Shared>,
    id: u64,
}

impl Listed {
    pub(crate) fn register(
        shared: &Arc<Shared>,
        client_id: Arc<str>,
        peer: SocketAddr,
        protocol: u8,
        nudge: Nudge,
    ) -> Listed {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        shared.clients.lock().insert(
            id,
            Entry {
                client_id,
                peer,
                protocol,
                since: SystemTime::now(),
                nudge,
            },
        );
        Listed {
            shared: shared.clone(),
            id,
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.shared.clients.lock().remove(&self.id);
        self.shared.clients.ended.send_modify(|n| *n += 1);
    }
}

/// The operators' handle on the connected clients ([`crate::Broker::clients`]).
#[derive(Clone)]
pub struct Clients {
    pub(super) shared: Arc<Shared>,
}

impl Clients {
    /// The clients connected now, ordered by client id.
    pub fn list(&self) -> Vec<ConnectedClient> {
        let mut list: Vec<ConnectedClient> = self
            .shared
            .clients
            .lock()
            .values()
            .map(|e| ConnectedClient {
                client_id: e.client_id.to_string(),
                peer: e.peer,
                protocol: e.protocol,
                since: e.since,
                received: e.nudge.counts().received.load(Ordering::Relaxed),
                sent: e.nudge.counts().sent.load(Ordering::Relaxed),
            })
            .collect();
        list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        list
    }

    /// Ends the connections of `client_id` (an MQTT 5 client is told "administrative action";
    /// its will is published, as for any connection the server closes) and waits up to `timeout`
    /// for them to end. Returns how many ended, or how many are still open.
    pub async fn disconnect(&self, client_id: &str, timeout: Duration) -> Result<usize, usize> {
        let table = &self.shared.clients;
        let mut ended = table.ended.subscribe();
        let open = |table: &Table| {
            table
                .lock()
                .values()
                .filter(|e| &*e.client_id == client_id)
                .count()
        };
        let kicked = {
            let open = table.lock();
            let mut n = 0;
            for e in open.values().filter(|e| &*e.client_id == client_id) {
                e.nudge.counts().kicked.store(true, Ordering::Relaxed);
                e.nudge.nudge();
                n += 1;
            }
            n
        };
        let wait = async {
            while open(table) > 0 {
                if ended.changed().await.is_err() {
                    break;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(()) => Ok(kicked),
            Err(_) => Err(open(table)),
        }
    }
}
