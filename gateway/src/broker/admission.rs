//! The pre-authentication budget: how many connections a listener holds, and how many of them one
//! peer address holds, before they have authenticated.
//!
//! A connection takes a ticket when it is accepted (before the TLS handshake, which costs as much
//! as anything after it) and gives it back once it has authenticated or failed; only then does it
//! compete for one of `broker.max_connections`, which therefore counts authenticated sessions. So
//! peers that never authenticate (wrong passwords, silent sockets, half-sent CONNECTs, stalled TLS
//! handshakes) cannot take the slots of devices that do, and each listener has its own budget, so
//! a storm on a network listener cannot lock the operator out of the loopback one. The per-address
//! share keeps one attacker from filling its listener's budget alone (a fleet behind one NAT
//! shares it too, which is why it is a setting).
//!
//! [`Budget`] is the pure accounting; [`PreAuth`] wraps it in a lock and hands out [`Ticket`]s
//! that give their place back when dropped, however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The listener holds `max_pending_connections` unauthenticated connections.
    Listener,
    /// This peer address holds `max_pending_per_address` of them.
    Address,
}

/// Counts of unauthenticated connections, in total and per peer address.
#[derive(Debug)]
pub(crate) struct Budget {
    max_total: usize,
    max_per_address: usize,
    total: usize,
    /// Only addresses with at least one connection: the map never holds more than `max_total`
    /// entries.
    per_address: HashMap<IpAddr, usize>,
}

impl Budget {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Budget {
        Budget {
            max_total,
            max_per_address,
            total: 0,
            per_address: HashMap::new(),
        }
    }

    /// Takes a place for a connection from `ip`, or says which limit is reached.
    pub(crate) fn take(&mut self, ip: IpAddr) -> Result<(), Full> {
        if self.total >= self.max_total {
            return Err(Full::Listener);
        }
        let held = self.per_address.entry(ip).or_insert(0);
        if *held >= self.max_per_address {
            return Err(Full::Address);
        }
        *held += 1;
        self.total += 1;
        Ok(())
    }

    /// Gives back a place taken for `ip`.
    pub(crate) fn give_back(&mut self, ip: IpAddr) {
        if let Some(held) = self.per_address.get_mut(&ip) {
            *held -= 1;
            if *held == 0 {
                self.per_address.remove(&ip);
            }
            self.total -= 1;
        }
    }
}

/// One listener's budget, shared by its accept loop and its connections.
#[derive(Debug)]
pub(crate) struct PreAuth {
    budget: Mutex<Budget>,
    /// `grove_broker_pending_connections`, shared by every listener.
    gauge: Gauge,
}

impl PreAuth {
    pub(crate) fn new(max_total: usize, max_per_address: usize, gauge: Gauge) -> PreAuth {
        PreAuth {
            budget: Mutex::new(Budget::new(max_total, max_per_address)),
            gauge,
        }
    }

    /// A ticket for a connection from `ip`. An IPv4 peer reaching a dual-stack socket counts as
    /// the same address as over IPv4.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Full> {
        let ip = ip.to_canonical();
        self.budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(ip)?;
        self.gauge.inc();
        Ok(Ticket {
            budget: self.clone(),
            ip,
        })
    }
}

/// A place in a listener's pre-authentication budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    budget: Arc<PreAuth>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.budget
            .budget
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
    fn the_budget_has_a_total_and_a_share_per_address() {
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let mut budget = Budget::new(3, 2);
        assert_eq!(budget.take(a), Ok(()));
        assert_eq!(budget.take(a), Ok(()));
        assert_eq!(budget.take(a), Err(Full::Address), "a's share is 2");
        assert_eq!(budget.take(b), Ok(()));
        assert_eq!(budget.take(c), Err(Full::Listener), "3 in total");
        budget.give_back(a);
        assert_eq!(budget.take(c), Ok(()), "a place given back is free again");
        budget.give_back(a);
        budget.give_back(a);
        assert!(
            !budget.per_address.contains_key(&a),
            "no entry for an idle address"
        );
        assert_eq!(budget.total, 2);
    }

    #[test]
    fn tickets_give_their_place_back_when_dropped() {
        let gauge = Gauge::default();
        let budget = Arc::new(PreAuth::new(2, 1, gauge.clone()));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let ticket = budget.admit(v4).unwrap();
        assert_eq!(
            budget.admit(mapped).unwrap_err(),
            Full::Address,
            "a mapped address is the same peer"
        );
        assert_eq!(gauge.get(), 1);
        drop(ticket);
        assert_eq!(gauge.get(), 0);
        assert!(budget.admit(mapped).is_ok());
    }
}
