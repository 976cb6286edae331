//! The connections registry: every authenticated connection from its CONNACK until its relay has
//! ended, for the two things that look at all of them from outside their tasks.
//!
//! * Operators (the console's devices page): client id, address, protocol version, since when,
//!   messages each way, and an operator's disconnect ([`Clients`]).
//! * The keep-alive sweep ([`sweep_keep_alives`]): once a second it ends the connections whose
//!   client has been silent for one and a half keep-alive periods (3.1.2.10; MQTT 5 3.1.2.11).
//!
//! Why one sweep rather than a timer in every connection: an idle connection's task holds every
//! future it waits on, and a tokio timer is 112 B of it (more, with the 128-byte steps in which
//! tokio sizes a task); the sweep costs each connection an 8-byte clock reading here instead, and
//! the gateway one wake-up a second. A client is then closed between 1.5 keep-alive periods and a
//! second after, as mosquitto (which checks keep-alives once a second too) does.
//!
//! What a connection costs here: one slab slot (8 B, with the slab's room), and its [`Listing`]
//! and [`Presence`] inside its router writer (an allocation every connection has anyway, shared
//! with the router task). Reading the list takes the registry's lock once; nothing is copied
//! until an operator looks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use slab::Slab;
use tokio::sync::watch;

use super::connection::ConnectionSlot;
use super::router_task::Nudge;
use super::Shared;

/// How often the keep-alive sweep looks at every connection.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_secs(1);

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

/// What a connection is, fixed at its CONNACK (kept in its router writer: [`Nudge::listing`]).
#[derive(Debug)]
pub(crate) struct Listing {
    pub(crate) client_id: Arc<str>,
    pub(crate) peer: SocketAddr,
    /// The MQTT protocol level: 4 or 5.
    pub(crate) protocol: u8,
    pub(crate) since: SystemTime,
    /// One and a half keep-alive periods, in ms; 0: no keep-alive.
    pub(crate) silence_limit_ms: u64,
}

/// What changes while a connection lives, written by its relay (counts, when it last heard the
/// client) or by whoever asks it to end (an operator, the keep-alive sweep); kept in its router
/// writer.
#[derive(Default)]
pub(crate) struct Presence {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    /// When the client was last heard from (or last not read, while flow control held it), in
    /// ms on [`Table::clock_ms`].
    pub(crate) heard_ms: AtomicU64,
    /// An operator asked for the connection to end (see [`Clients::disconnect`]).
    pub(crate) kicked: AtomicBool,
}

/// Whether a client last heard at `heard_ms` has been silent too long at `now_ms`
/// (`silence_limit_ms` 0: never). The sweep decides with it, and the relay decides again when the
/// sweep wakes it, with the reading it took itself (a packet may have arrived meanwhile).
pub(crate) fn silent_too_long(now_ms: u64, heard_ms: u64, silence_limit_ms: u64) -> bool {
    silence_limit_ms > 0 && now_ms.saturating_sub(heard_ms) >= silence_limit_ms
}

/// The registry of connections: each one's writer, by slot.
pub(crate) struct Table {
    open: Mutex<Slab<Nudge>>,
    /// Bumped whenever a listed connection has ended.
    ended: watch::Sender<u64>,
    /// The keep-alive clock's zero.
    epoch: Instant,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            open: Mutex::default(),
            ended: watch::Sender::default(),
            epoch: Instant::now(),
        }
    }
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Nudge>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The keep-alive clock: ms since the broker started (monotonic).
    pub(crate) fn clock_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A connection's place in the registry, removed when dropped (with the relay, after `finish`),
/// and then its one of `max_connections` given back.
pub(crate) struct Listed {
    slot: ConnectionSlot,
    key: usize,
}

impl Listed {
    /// Lists a connection whose CONNACK went out, holding `slot`: `listing` says what it is;
    /// `nudge` is its writer, which holds the listing from now on.
    pub(crate) fn register(slot: ConnectionSlot, listing: Listing, nudge: Nudge) -> Listed {
        let table = &slot.shared().clients;
        nudge
            .presence()
            .heard_ms
            .store(table.clock_ms(), Ordering::Relaxed);
        // Set once, here, before anyone can find the writer in the registry.
        let _ = nudge.listing_cell().set(listing);
        let key = table.lock().insert(nudge);
        Listed { slot, key }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let table = &self.slot.shared().clients;
        table.lock().try_remove(self.key);
        table.ended.send_modify(|n| *n += 1);
    }
}

/// Until shutdown, once every [`KEEP_ALIVE_SWEEP`], wakes the connections whose client has been
/// silent for longer than its keep-alive allows; each looks again and ends
/// (`relay::End::KeepAliveTimeout`).
pub(crate) async fn sweep_keep_alives(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(KEEP_ALIVE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                let table = &shared.clients;
                let now = table.clock_ms();
                for (_, writer) in table.lock().iter() {
                    let Some(listing) = writer.listing() else { continue };
                    let heard = writer.presence().heard_ms.load(Ordering::Relaxed);
                    if silent_too_long(now, heard, listing.silence_limit_ms) {
                        writer.nudge();
                    }
                }
            }
        }
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
            .iter()
            .filter_map(|(_, writer)| {
                let l = writer.listing()?;
                let presence = writer.presence();
                Some(ConnectedClient {
                    client_id: l.client_id.to_string(),
                    peer: l.peer,
                    protocol: l.protocol,
                    since: l.since,
                    received: presence.received.load(Ordering::Relaxed),
                    sent: presence.sent.load(Ordering::Relaxed),
                })
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
        let of_client =
            |writer: &Nudge| writer.listing().is_some_and(|l| &*l.client_id == client_id);
        let open = |table: &Table| table.lock().iter().filter(|(_, w)| of_client(w)).count();
        let kicked = {
            let open = table.lock();
            let mut n = 0;
            for (_, writer) in open.iter().filter(|(_, w)| of_client(w)) {
                writer.presence().kicked.store(true, Ordering::Relaxed);
                writer.nudge();
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

#[cfg(test)]
mod tests {
    use super::silent_too_long;

    /// 3.1.2.10: closed once nothing was heard for one and a half keep-alive periods, not
    /// before; a client without a keep-alive never.
    #[test]
    fn a_client_is_silent_too_long_from_one_and_a_half_keep_alive_periods() {
        // Keep-alive 10 s: the limit is 15,000 ms.
        assert!(!silent_too_long(20_000, 5_001, 15_000));
        assert!(silent_too_long(20_000, 5_000, 15_000));
        assert!(silent_too_long(60_000, 5_000, 15_000));
        // Heard after the sweep read its clock: not silent.
        assert!(!silent_too_long(20_000, 20_500, 15_000));
        assert!(!silent_too_long(u64::MAX, 0, 0));
    }
}
