//! The durable tap: messages a component must have committed before the gateway acknowledges them.
//!
//! The router acknowledges a device's QoS 1 PUBLISH as soon as it has the message in memory, and a
//! component reading the bus sees it only later; a power cut in between would lose a message the
//! device was told was delivered. For the cloud outbox that is not good enough ("nothing is lost
//! while the link is down"), so the cloud component installs a tap: the connection layer, the bus
//! and the will path hand every message whose topic matches one of the tap's routes to the tap's
//! owner and wait until it says the message is committed; only then does the router (and so the
//! PUBACK, or the delivery to local subscribers) see it. A slow disk therefore slows the publishers
//! of tapped topics instead of losing their messages.
//!
//! Architecture invariant: the tap is set once, before the listeners open; a message is offered at
//! most once, at the place it enters the router (a device's connection, a component's bus, a will),
//! so the owner never needs to deduplicate.

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

/// Messages offered together, with the channel on which the owner says they are committed.
#[derive(Debug)]
pub struct Offer {
    /// `(target topic, payload)`, in the order they were published.
    pub messages: Vec<(String, Bytes)>,
    /// Answered once the messages are durable (or counted as dropped by the owner's policy).
    pub done: oneshot::Sender<()>,
}

/// The tap's owner has stopped (the gateway is shutting down): the messages were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the durable tap's owner has stopped")]
pub struct TapClosed;

/// The routes and the channel to the owner; installed in the broker by [`crate::broker::BusMaker::set_tap`].
#[derive(Debug)]
pub struct Tap {
    routes: Vec<Route>,
    tx: mpsc::Sender<Offer>,
}

impl Tap {
    /// A tap taking what `routes` select; the owner receives [`Offer`]s on the other end of `tx`.
    pub fn new(routes: Vec<Route>, tx: mpsc::Sender<Offer>) -> Tap {
        Tap { routes, tx }
    }

    /// The target topic of `topic`, if a route takes it (the first matching route wins).
    pub fn target(&self, topic: &str) -> Option<String> {
        self.routes
            .iter()
            .find(|r| grove_rules::topic_matches(&r.filter, topic))
            .map(|r| {
                format!(
                    "{}{}",
                    r.prefix,
                    topic.strip_prefix(&r.strip).unwrap_or(topic)
                )
            })
    }

    /// Hands the owner the messages among `messages` that a route takes and waits until they are
    /// committed. Returns at once when none is taken.
    pub async fn offer<'a>(
        &self,
        messages: impl IntoIterator<Item = (&'a str, &'a Bytes)>,
    ) -> Result<(), TapClosed> {
        let taken: Vec<(String, Bytes)> = messages
            .into_iter()
            .filter_map(|(topic, payload)| Some((self.target(topic)?, payload.clone())))
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
        }
    }

    #[tokio::test]
    async fn offer_waits_for_the_owner_and_fails_once_it_is_gone() {
        let (tx, mut rx) = mpsc::channel(4);
        let tap = Tap::new(vec![route("a/#", "", "")], tx);
        let payload = Bytes::from_static(b"p");
        let owner = tokio::spawn(async move {
            let offer = rx.recv().await.expect("an offer");
            assert_eq!(
                offer.messages,
                vec![("a/1".to_owned(), Bytes::from_static(b"p"))]
            );
            offer.done.send(()).expect("waiting");
            // The owner stops.
        });
        tap.offer([("b/0", &payload), ("a/1", &payload)])
            .await
            .expect("committed");
        owner.await.expect("owner");
        // Nothing taken: no round trip, even without an owner.
        tap.offer([("b/0", &payload)])
            .await
            .expect("nothing to take");
        assert_eq!(tap.offer([("a/2", &payload)]).await, Err(TapClosed));
    }
}
