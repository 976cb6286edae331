//! Durable taps: messages a component must have committed before the gateway acknowledges them.
//!
//! The router acknowledges a device's QoS 1 PUBLISH as soon as it has the message in memory, and a
//! component reading the bus sees it only later; a power cut in between would lose a message the
//! device was told was delivered. For the cloud outbox and for functions' async events that is not
//! good enough ("nothing is lost when power fails"), so those components install a tap each: the
//! connection layer, the bus and the will path hand every message whose topic matches one of a
//! tap's routes to that tap's owner and wait until it says the message is committed; only then does
//! the router (and so the PUBACK, or the delivery to local subscribers) see it. A slow disk
//! therefore slows the publishers of tapped topics instead of losing their messages.
//!
//! Architecture invariant: taps are installed before the listeners open (their routes may change
//! later, e.g. when a function with new triggers is deployed); a message is offered to each tap at
//! most once, at the place it enters the router (a device's connection, a component's bus, a will),
//! so an owner never needs to deduplicate. An owner may publish on a bus that bypasses its own
//! tap (the cloud does: what came down from the cloud must not go back up), never the others'.

use std::sync::RwLock;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Where a tapped topic goes: local topics matching `filter` are taken, with `strip` removed from
/// the front and `prefix` put in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The local (wire) topic filter.
    pub filter: String,
    /// Removed from the front of the local topic.
    pub strip: String,
    /// Put in front of what remains.
    pub prefix: String,
}

/// A message as it is offered to the taps, where it enters the router.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    /// The local (wire) topic.
    pub topic: &'a str,
    /// The payload.
    pub payload: &'a Bytes,
    /// Rule and function republish hops that led to it (0 for a device's own message).
    pub hops: u32,
    /// The publisher's retain flag.
    pub retain: bool,
    /// The publisher's MQTT 5 user properties (none from MQTT 3.1.1 publishers and Grove's
    /// components; Grove's own `$grove-hops` is never among them: it travels as `hops`).
    pub user_properties: &'a [(String, String)],
}

impl<'a> Offered<'a> {
    /// A message without retain flag or user properties.
    pub fn plain(topic: &'a str, payload: &'a Bytes, hops: u32) -> Offered<'a> {
        Offered {
            topic,
            payload,
            hops,
            retain: false,
            user_properties: &[],
        }
    }
}

/// One message a tap took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tapped {
    /// The target topic (the route's rewrite of the local topic).
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Rule and function republish hops that led to it (0 for a device's own message).
    pub hops: u32,
    /// Which of the tap's routes took it (its index in the routes given to [`Tap::new`] or
    /// [`Tap::set_routes`]): an owner may treat its routes differently (the cloud batches some).
    pub route: usize,
    /// The publisher's retain flag (the cloud carries it upward).
    pub retain: bool,
    /// The publisher's MQTT 5 user properties (the cloud carries them upward on MQTT 5).
    pub user_properties: Vec<(String, String)>,
}

/// Messages offered together, with the channel on which the owner says they are committed.
#[derive(Debug)]
pub struct Offer {
    /// In the order they were published.
    pub messages: Vec<Tapped>,
    /// Answered once the messages are durable (or counted as dropped by the owner's policy).
    pub done: oneshot::Sender<()>,
}

/// The tap's owner has stopped (the gateway is shutting down): the messages were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the durable tap's owner has stopped")]
pub struct TapClosed;

/// The routes and the channel to the owner; installed in the broker by
/// [`crate::BusMaker::add_tap`].
#[derive(Debug)]
pub struct Tap {
    routes: RwLock<Vec<Route>>,
    tx: mpsc::Sender<Offer>,
}

impl Tap {
    /// A tap taking what `routes` select; the owner receives [`Offer`]s on the other end of `tx`.
    pub fn new(routes: Vec<Route>, tx: mpsc::Sender<Offer>) -> Tap {
        Tap {
            routes: RwLock::new(routes),
            tx,
        }
    }

    /// Replaces the routes; messages offered from now on follow the new ones.
    pub fn set_routes(&self, routes: Vec<Route>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    /// Whether a route takes `topic` (as [`Tap::target`], without building the target).
    pub fn takes(&self, topic: &str) -> bool {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| grove_rules::topic_matches(&r.filter, topic))
    }

    /// The target topic of `topic`, if a route takes it (the first matching route wins).
    pub fn target(&self, topic: &str) -> Option<String> {
        self.route_of(topic).map(|(_, target)| target)
    }

    /// The index of the first route that takes `topic`, and the target topic.
    fn route_of(&self, topic: &str) -> Option<(usize, String)> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .enumerate()
            .find(|(_, r)| grove_rules::topic_matches(&r.filter, topic))
            .map(|(i, r)| {
                let target = format!(
                    "{}{}",
                    r.prefix,
                    topic.strip_prefix(&r.strip).unwrap_or(topic)
                );
                (i, target)
            })
    }

    /// Hands the owner the messages among `messages` that a route takes and waits until they
    /// are committed. Returns at once when none is taken.
    pub async fn offer<'a>(
        &self,
        messages: impl IntoIterator<Item = Offered<'a>>,
    ) -> Result<(), TapClosed> {
        let taken: Vec<Tapped> = messages
            .into_iter()
            .filter_map(|m| {
                let (route, topic) = self.route_of(m.topic)?;
                Some(Tapped {
                    topic,
                    payload: m.payload.clone(),
                    hops: m.hops,
                    route,
                    retain: m.retain,
                    user_properties: m.user_properties.to_vec(),
                })
            })
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        self.tx
            .send(Offer {
                messages: taken,
                done,
            })
            .await
            .map_err(|_| TapClosed)?;
        committed.await.map_err(|_| TapClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(filter: &str, strip: &str, prefix: &str) -> Route {
        Route {
            filter: filter.into(),
            strip: strip.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn targets_follow_the_first_matching_route() {
        let (tx, _rx) = mpsc::channel(1);
        let tap = Tap::new(
            vec![
                route("sensors/#", "", "site-1/"),
                route("$grove/cloud/up/#", "$grove/cloud/up/", ""),
                route("#", "", "other/"),
            ],
            tx,
        );
        let cases = [
            ("sensors/a/t", Some("site-1/sensors/a/t")),
            ("$grove/cloud/up/x/y", Some("x/y")),
            ("plain", Some("other/plain")),
            // `#` never matches a `$` topic.
            ("$aws/things/t/shadow/update", None),
        ];
        for (topic, want) in cases {
            assert_eq!(tap.target(topic).as_deref(), want, "{topic}");
            assert_eq!(tap.takes(topic), want.is_some(), "{topic}");
        }
    }

    #[tokio::test]
    async fn offer_waits_for_the_owner_and_fails_once_it_is_gone() {
        let (tx, mut rx) = mpsc::channel(4);
        let tap = Tap::new(vec![route("z/#", "", ""), route("a/#", "", "")], tx);
        let payload = Bytes::from_static(b"p");
        let properties = [("k".to_owned(), "v".to_owned())];
        let plain = |topic, hops| Offered::plain(topic, &payload, hops);
        let owner = tokio::spawn(async move {
            let offer = rx.recv().await.expect("an offer");
            let want = Tapped {
                topic: "a/1".into(),
                payload: Bytes::from_static(b"p"),
                hops: 2,
                route: 1,
                retain: true,
                user_properties: vec![("k".into(), "v".into())],
            };
            assert_eq!(offer.messages, vec![want]);
            offer.done.send(()).expect("waiting");
            // The owner stops.
        });
        let a1 = Offered {
            retain: true,
            user_properties: &properties,
            ..plain("a/1", 2)
        };
        tap.offer([plain("b/0", 0), a1]).await.expect("committed");
        owner.await.expect("owner");
        // Nothing taken: no round trip, even without an owner.
        tap.offer([plain("b/0", 0)]).await.expect("nothing to take");
        assert_eq!(tap.offer([plain("a/2", 0)]).await, Err(TapClosed));
        // New routes apply to the next offer.
        tap.set_routes(vec![route("c/#", "", "x/")]);
        assert_eq!(tap.target("a/2"), None);
        assert_eq!(tap.target("c/1").as_deref(), Some("x/c/1"));
    }
}
