"""Retained messages and the subscription options about them (MQTT 5 §3.8.3.1, §3.3.1.3).

A retained message "stored" is on rh/t before anyone subscribes. Each subscriber then publishes a
live marker on the topic right after its SUBACK: retained messages for a subscription are sent
before anything routed later, so a retained message that was not sent is one that did not arrive
before the marker. Facts, each a list of [payload, retain flag] received up to the marker:

* "rh0_first", "rh0_again": Retain Handling 0, subscribed twice: retained sent each time;
* "rh1_first", "rh1_again": Retain Handling 1: sent only when the subscription is new;
* "rh2": Retain Handling 2: never sent at subscribe;
* "rap", "plain": a retained message published live to a subscription with Retain As Published
  keeps its RETAIN flag ([MQTT-3.3.1-12]); without it the flag is cleared ([MQTT-3.3.1-13]).
"""

from pahotest import Client, SubscribeOptions, emit, main_args

port, version, _ = main_args()
pub = Client(port, version, "rt-pub")
pub.publish("rh/t", "stored", retain=True)
facts = {}


def received(c, marker):
    return [[m["payload"], m["retain"]] for m in c.until(marker)]


def subscribe_then_marker(c, options, marker):
    c.subscribe("rh/t", options=options)
    pub.publish("rh/t", marker)
    return received(c, marker)


for handling in (0, 1):
    c = Client(port, version, f"rt-rh{handling}")
    options = SubscribeOptions(qos=1, retainHandling=handling)
    facts[f"rh{handling}_first"] = subscribe_then_marker(c, options, f"rh{handling} first")
    facts[f"rh{handling}_again"] = subscribe_then_marker(c, options, f"rh{handling} again")
c = Client(port, version, "rt-rh2")
facts["rh2"] = subscribe_then_marker(c, SubscribeOptions(qos=1, retainHandling=2), "rh2")

rap = Client(port, version, "rt-rap")
rap.subscribe("rap/t", options=SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2))
plain = Client(port, version, "rt-plain")
plain.subscribe("rap/t", options=SubscribeOptions(qos=1, retainHandling=2))
pub.publish("rap/t", "flagged", retain=True)
facts["rap"] = received(rap, "flagged")
facts["plain"] = received(plain, "flagged")
emit(facts)
