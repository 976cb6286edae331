//! The pre-authentication budget: how many connections a listener holds, and how many of them one
//! peer address holds, before they have authenticated.
//!
//! A connection takes a ticket when it is accepted (before the TLS handshake, which costs as much
//! as anything after it) and gives it back once it has authenticated or failed; only then does it
//! compete for one of `broker.max_connections`, which therefore counts authenticated sessions. So
//! peers that never authenticate (wrong passwords, silent sockets, half-sent CONNECTs, stalled TLS
//! handshakes) cannot take the slots of devices that do, and each listener has its own budget, so
//! a storm on a network listener cannot lock the operator out of the loopback one.
//!
//! Two limits, two behaviours:
//! - `max_pending_connections` per listener: when it is reached the listener stops accepting until
//!   a place frees up; further peers wait in the kernel's backlog, holding no gateway memory, so a
//!   burst of legitimate devices is delayed rather than refused.
//! - `max_pending_per_address` (off by default): a peer address over its share is closed at once
//!   and counted (`refused{reason="pending_limit"}`), so that one attacker cannot fill its
//!   listener's budget alone. Off by default because a fleet behind one NAT, or every local
//!   process on a loopback listener, shares one address.
//!
//! [`Shares`] is the pure per-address accounting; [`PreAuth`] adds the listener's semaphore and
//! hands out [`Ticket`]s that give their places back when dropped, however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A peer address holds its whole share of unauthenticated connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverShare;

/// Unauthenticated connections per peer address, against a share (`None`: no share).
#[derive(Debug)]
pub(crate) struct Shares {
    max_per_address: Option<usize>,
    /// Only addresses with at least one connection, so the map is no larger than the listener's
    /// budget.
    held: HashMap<IpAddr, usize>,
}

impl Shares {
    pub(crate) fn new(max_per_address: Option<usize>) -> Shares {
        Shares {
            max_per_address,
            held: HashMap::new(),
        }
    }

    /// Takes a place for a connection from `ip`, unless `ip` holds its share.
    pub(crate) fn take(&mut self, ip: IpAddr) -> Result<(), OverShare> {
        let held = self.held.entry(ip).or_insert(0);
        if self.max_per_address.is_some_and(|max| *held >= max) {
            return Err(OverShare);
        }
        *held += 1;
        Ok(())
    }

    /// Gives back a place taken for `ip`.
    pub(crate) fn give_back(&mut self, ip: IpAddr) {
        if let Some(held) = self.held.get_mut(&ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.held.remove(&ip);
            }
        }
    }
}

/// One listener's budget, shared by its accept loop and its connections.
#[derive(Debug)]
pub(crate) struct PreAuth {
    /// `max_pending_connections` places.
    total: Arc<Semaphore>,
    shares: Mutex<Shares>,
    /// `grove_broker_pending_connections`, shared by every listener.
    gauge: Gauge,
}

impl PreAuth {
    pub(crate) fn new(max_total: usize, max_per_address: Option<usize>, gauge: Gauge) -> PreAuth {
        PreAuth {
            total: Arc::new(Semaphore::new(max_total)),
            shares: Mutex::new(Shares::new(max_per_address)),
            gauge,
        }
    }

    /// Waits for one of the listener's places: called before accepting, so a full listener
    /// leaves new peers in the kernel's backlog.
    pub(crate) async fn place(&self) -> Place {
        // The semaphore is never closed.
        Place {
            _permit: self.total.clone().acquire_owned().await.ok(),
        }
    }

    /// A ticket for a connection from `ip` on `place`. An IPv4 peer reaching a dual-stack socket
    /// counts as the same address as over IPv4.
    pub(crate) fn admit(self: &Arc<Self>, place: Place, ip: IpAddr) -> Result<Ticket, OverShare> {
        let ip = ip.to_canonical();
        self.shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(ip)?;
        self.gauge.inc();
        Ok(Ticket {
            budget: self.clone(),
            ip,
            _place: place,
        })
    }
}

/// One of a listener's `max_pending_connections` places, before its peer's address is known.
#[derive(Debug)]
pub(crate) struct Place {
    /// Held, never read: dropping it gives the place back.
    _permit: Option<OwnedSemaphorePermit>,
}

/// A connection's places in its listener's pre-authentication budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    budget: Arc<PreAuth>,
    ip: IpAddr,
    _place: Place,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.budget
            .shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .give_back(self.ip);
        self.budget.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_share() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut shares = Shares::new(Some(2));
        assert_eq!(shares.take(a), Ok(()));
        assert_eq!(shares.take(a), Ok(()));
        assert_eq!(shares.take(a), Err(OverShare), "a's share is 2");
        assert_eq!(shares.take(b), Ok(()), "b has its own");
        shares.give_back(a);
        assert_eq!(shares.take(a), Ok(()), "a place given back is free again");
        shares.give_back(a);
        shares.give_back(a);
        assert!(
            !shares.held.contains_key(&a),
            "no entry for an idle address"
        );
        let mut unlimited = Shares::new(None);
        for _ in 0..1000 {
            assert_eq!(unlimited.take(a), Ok(()));
        }
    }

    #[tokio::test]
    async fn tickets_give_their_places_back_when_dropped() {
        let gauge = Gauge::default();
        let budget = Arc::new(PreAuth::new(2, Some(1), gauge.clone()));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let ticket = budget.admit(budget.place().await, v4).unwrap();
        assert_eq!(
            budget.admit(budget.place().await, mapped).unwrap_err(),
            OverShare,
            "a mapped address is the same peer"
        );
        assert_eq!(gauge.get(), 1);
        let other = budget.admit(budget.place().await, "10.0.0.1".parse().unwrap());
        assert!(other.is_ok());
        // Both places are taken: the next waits until one is given back.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), budget.place());
        assert!(waiting.await.is_err(), "a full listener waits");
        drop(ticket);
        assert_eq!(gauge.get(), 1);
        assert!(budget.admit(budget.place().await, mapped).is_ok());
    }
}
