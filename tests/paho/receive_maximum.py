"""The client's Receive Maximum (MQTT 5 §3.3.4, [MQTT-3.3.4-9]): the server sends no more QoS 1
and 2 PUBLISH packets than the client's Receive Maximum before they are acknowledged.

The subscriber connects with Receive Maximum 2 and manual acknowledgements (paho's manual_ack:
PUBACK only when the script says). A publisher sends 6 QoS 1 messages, each accepted (PUBACK)
before the next, so all 6 are routed before the subscriber acknowledges anything. The
subscriber then holds its window full: each time 2 are unacknowledged it waits QUIET seconds for
a third (that must not come), then acknowledges the oldest. This is the one wait in these scripts
on something that must not happen: nothing the gateway sends can mark the absence of a PUBLISH it
withholds (a marker would be withheld too). Facts: {"payloads": in arrival order,
"max_unacked": the most received and not acknowledged at once, "granted"}."""

import queue

from pahotest import WAIT, Client, Timeout, emit, main_args

QUIET = 0.5
N = 6

port, version, _ = main_args()
sub = Client(port, version, "rm-sub", receive_maximum=2, manual_ack=True)
granted = sub.subscribe("rm/t", 1)
pub = Client(port, version, "rm-pub")
for i in range(N):
    pub.publish("rm/t", str(i))

unacked, payloads, max_unacked = [], [], 0
while len(payloads) < N:
    full = len(unacked) >= 2
    try:
        m = sub.messages.get(timeout=QUIET if full else WAIT)
    except queue.Empty:
        if not full:
            raise Timeout(f"{len(payloads)} of {N} messages within {WAIT} s") from None
        sub.ack(unacked.pop(0))
        continue
    unacked.append(m)
    payloads.append(m["payload"])
    max_unacked = max(max_unacked, len(unacked))
emit({"payloads": payloads, "max_unacked": max_unacked, "granted": granted})
