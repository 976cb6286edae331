//! `grove-testkit`: the in-process harness for component tests that do not need the `grove`
//! binary.
//!
//! [`Harness::start`] opens a real store (SQLite in a temporary directory, its owner thread) and
//! starts a real broker (Grove's router and its bus, with no listener: nothing outside the
//! process can connect) in the test's own tokio runtime. A component under test starts on
//! [`Harness::buses`] and [`Harness::store`] exactly as `grove run` starts it, and a [`Peer`] (a
//! bus link of the test's own) publishes to it and receives what it publishes. No mock: the
//! component meets the same store and router as in the gateway.
//!
//! Because everything runs in the test's runtime, a test can pause tokio's clock
//! (`#[tokio::test(start_paused = true)]`): a component's `tokio::time::sleep` and timeouts then
//! take no wall-clock time, and the clock jumps to the next timer whenever every task waits. Two
//! consequences for the tests written with it:
//! - what a test may assert about time is a lower bound in virtual time (a retry came no sooner
//!   than its backoff), never an upper one: while a task waits for the router's or the store's
//!   thread the clock can jump to any pending timer (the broker's own 1 s tick included);
//! - a test waits for facts with [`Peer::next`] or [`when`], with no timeout of its own (a timeout
//!   would fire at the first idle moment); the test runner's own timeout catches a hang. [`when`]
//!   also keeps the clock from jumping more than 1 ms at a time while it waits, so the instant it
//!   returns is within 1 ms of the fact, and a "no sooner than" check can fail.
//!
//! - a test in which a component waits, with a deadline, for another thread's answer (the shadow
//!   service answers after its store commit; the router's thread) runs on the real clock
//!   (`#[tokio::test]`): paused, the clock can jump past that deadline while the thread works.
//!
//! Architecture invariant: only tests depend on this crate (it is a `[dev-dependencies]` entry
//! only), so `tokio`'s `test-util` never reaches the binary.

use std::collections::VecDeque;
use std::path::Path;

use bytes::Bytes;
use grove_auth::identity::Identities;
use grove_broker::bus::{Bus, Message, Outgoing};
use grove_broker::config::{resolve, resolve_policies, RawBroker};
use grove_broker::metrics::BrokerMetrics;
use grove_broker::{Broker, BusMaker};
use grove_config::Resolver;
use grove_store::{Store, StoreThread};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

/// A store and a broker for one test; [`Harness::stop`] shuts them down in the gateway's order.
pub struct Harness {
    dir: tempfile::TempDir,
    store: Store,
    store_thread: StoreThread,
    broker: Broker,
}

impl Harness {
    /// Opens a store in a fresh temporary directory and starts a broker on it with the built-in
    /// `[broker]` defaults and no listener.
    pub async fn start() -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (store, store_thread) = Store::open(dir.path()).expect("the store opens");
        let r = Resolver::new("", None);
        let policies = resolve_policies(&r, Vec::new()).expect("the built-in policies");
        let mut config =
            resolve(&r, RawBroker::default(), &policies).expect("the built-in [broker]");
        // The harness never calls `listen`: no socket is opened.
        config.listeners.clear();
        let identities =
            Identities::open(dir.path().join("devices.toml")).expect("no devices file yet");
        let broker = Broker::start(config, store.clone(), identities, BrokerMetrics::default())
            .await
            .expect("the broker starts");
        Harness {
            dir,
            store,
            store_thread,
            broker,
        }
    }

    /// The data directory (a temporary one, removed when the harness is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The store.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// What components make their bus links with.
    pub fn buses(&self) -> BusMaker {
        self.broker.bus_maker()
    }

    /// The signal the components watch for shutdown (set by [`Harness::stop`]).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.broker.shutdown_signal()
    }

    /// A link of the test's own, subscribed to `filters` (the router has confirmed them when this
    /// returns, so nothing published afterwards is missed).
    pub async fn peer(&self, name: &str, filters: &[&str]) -> Peer {
        let mut bus = self.broker.bus(name).await.expect("a bus link");
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        if !filters.is_empty() {
            bus.subscribe_confirmed(&filters)
                .await
                .expect("the subscription is confirmed");
        }
        Peer {
            bus,
            received: VecDeque::new(),
        }
    }

    /// Stops the broker (and with it every component watching its shutdown signal), then the
    /// store after its last commit.
    pub async fn stop(self) {
        self.broker.shutdown().await;
        self.store_thread.close().await;
    }
}

/// The test's own bus link: what it publishes goes through the router (and the components'
/// durable taps) as a component's publish does.
pub struct Peer {
    bus: Bus,
    received: VecDeque<Message>,
}

impl Peer {
    /// Publishes `payload` on `topic` (QoS 1, not retained, a device's message: hop 0).
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) {
        let mut message = Outgoing::new(topic.to_owned(), payload.into());
        message.qos = 1;
        self.bus
            .publish(vec![message])
            .await
            .expect("the router takes the publish");
    }

    /// The next message on the peer's subscriptions, waiting as long as it takes.
    pub async fn next(&mut self) -> Message {
        loop {
            if let Some(m) = self.received.pop_front() {
                return m;
            }
            let mut batch = Vec::new();
            self.bus
                .recv_batch(&mut batch)
                .await
                .expect("the link stays up");
            self.received.extend(batch);
        }
    }
}

/// Checks `fact` every millisecond (of tokio's clock, paused or not) and returns the instant it
/// first held. The facts are metric counters, which cannot be awaited, so this polls; on the
/// paused clock the 1 ms step is the point: each step advances virtual time by 1 ms at most, so
/// the instant returned is within 1 ms of the fact.
pub async fn when(fact: impl Fn() -> bool) -> Instant {
    loop {
        if fact() {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
