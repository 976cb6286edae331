"""Message Expiry Interval (MQTT 5 §3.3.2.3.3): a message whose interval has passed while it waited
for an offline session is not delivered ([MQTT-3.3.2-5]); one still valid is delivered with the
interval less the time it waited ([MQTT-3.3.2-6]).

"s" (session expiry 300) subscribes to me/t and disconnects. The publisher sends "short" (expiry
1 s) and "long" (expiry 300 s) to me/t, then a retained "probe" (expiry 1 s) on me/probe. It then
polls until the gateway no longer sends the probe to a new subscription: the probe expired, so
"short", published before it with the same interval, expired too, and "long", published before
it, has waited at least a second (the gateway rounds the remaining interval up: a message that
waited less than a second may keep its whole interval). Each poll
subscribes again (Retain Handling 0 re-sends retained messages) and publishes a marker: a probe
not received before the marker was not sent. Then "s" comes back. Facts: {"received": payloads
"s" got up to "long", "long_expiry": the interval "long" arrived with, "polls"}."""

import time

from pahotest import Client, PacketTypes, emit, main_args, props

POLL = 0.05  # the pause between polls: the poll interval, not what the script relies on

port, version, _ = main_args()
s = Client(port, version, "me-s", session_expiry=300)
s.subscribe("me/t", 1)
s.disconnect()

pub = Client(port, version, "me-pub")
short = props(PacketTypes.PUBLISH, MessageExpiryInterval=1)
pub.publish("me/t", "short", properties=short)
pub.publish("me/t", "long", properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=300))
pub.publish("me/probe", "probe", retain=True, properties=short)
polls = 0
while True:
    polls += 1
    pub.subscribe("me/probe", 1)
    marker = f"marker {polls}"
    pub.publish("me/probe", marker)
    if "probe" not in [m["payload"] for m in pub.until(marker)]:
        break
    time.sleep(POLL)

s = Client(port, version, "me-s", clean=False, session_expiry=300)
got = s.until("long")
emit({
    "received": [m["payload"] for m in got],
    "long_expiry": got[-1]["props"].get("MessageExpiryInterval"),
    "session_present": s.session_present,
    "polls": polls,
})
