"""Will Delay Interval (MQTT 5 §3.1.3.2.2): the will of a connection that ends without DISCONNECT
is published once the delay has passed (or the session ended, if sooner), and not at all if the
client reconnects to its session within the delay ([MQTT-3.1.3-9]).

"w" subscribes to will/#. Clients "a" and "c" connect with session expiry 300 and a will on will/a
(delay A_DELAY) and will/c (delay C_DELAY, a second longer). "a", then "c", lose their connections
(no DISCONNECT); "a" reconnects to its session at once. "c"'s will is the fact that "a"'s delay has
passed too (the gateway publishes due wills in time order, and "a"'s was due a second earlier); "w"
then publishes a marker on will/end, which arrives after anything published before it. Facts:
{"received": payloads "w" got up to the marker, "c_after": seconds from "c"'s loss to its will's
arrival, "c_delay", "a_session_present": whether "a"'s reconnection found its session}."""

import time

from pahotest import Client, PacketTypes, emit, main_args, props

A_DELAY, C_DELAY = 2, 3

port, version, _ = main_args()
w = Client(port, version, "will-w")
w.subscribe("will/#", 1)


def with_will(name, delay):
    will = (f"will/{name}", name, 1, props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay))
    return Client(port, version, f"will-{name}", session_expiry=300, will=will)


a, c = with_will("a", A_DELAY), with_will("c", C_DELAY)
a.vanish()
c_lost = c.vanish()
a = Client(port, version, "will-a", clean=False, session_expiry=300)
first = w.next_message("c's will")
c_after = time.monotonic() - c_lost
w.publish("will/end", "end")
received = [first["payload"]] + [m["payload"] for m in w.until("end")]
emit({"received": received, "c_after": c_after, "c_delay": C_DELAY, "a_session_present": a.session_present})
