"""Subscription Identifiers (MQTT 5 §3.8.2.1.2, §3.3.4): a delivery carries the identifiers of
every subscription of the client that matched it ([MQTT-3.3.4-4]; Grove sends one copy for
overlapping subscriptions, with all of them, [MQTT-3.3.4-2]); a subscription without one adds
none. Subscriptions: "si/+" with identifier 7, "si/both" with 9, "si/#" with none. Facts:
{payload: the SubscriptionIdentifier list it arrived with, or null} for "both" (on si/both),
"one" (on si/one) and "plain" (on si/x/y, matched by si/# only)."""

from pahotest import Client, emit, main_args

port, version, _ = main_args()
c = Client(port, version, "si-sub")
c.subscribe("si/+", 1, subscription_id=7)
c.subscribe("si/both", 1, subscription_id=9)
c.subscribe("si/#", 1)
pub = Client(port, version, "si-pub")
for topic, payload in (("si/both", "both"), ("si/one", "one"), ("si/x/y", "plain")):
    pub.publish(topic, payload)
got = c.until("plain")
emit({m["payload"]: m["props"].get("SubscriptionIdentifier") for m in got})
