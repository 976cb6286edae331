"""Shared subscriptions (MQTT 5 §4.8.2): each message published to a filter that a group shares
goes to exactly one member of the group ($share/{group}/{filter}), while an ordinary subscription
to the same filter gets every one. Two members share "sh/t" in group g; "all" subscribes to it
plainly. After N messages on sh/t the publisher sends "end" on sh/end, to which both members also
subscribe (plainly): deliveries to one session keep their order, so each member has received its
share of the N by the time "end" arrives. Facts: {"a", "b": payloads each member received before
"end", "all": what the plain subscriber received, "n"}."""

from pahotest import Client, emit, main_args

N = 20

port, version, _ = main_args()
members = {}
for name in ("a", "b"):
    c = Client(port, version, f"sh-{name}")
    c.subscribe("$share/g/sh/t", 1)
    c.subscribe("sh/end", 1)
    members[name] = c
everyone = Client(port, version, "sh-all")
everyone.subscribe("sh/t", 1)
pub = Client(port, version, "sh-pub")
for i in range(N):
    pub.publish("sh/t", str(i))
pub.publish("sh/end", "end")
facts = {name: [m["payload"] for m in c.until("end")][:-1] for name, c in members.items()}
facts["all"] = [m["payload"] for m in everyone.until(str(N - 1))]
facts["n"] = N
emit(facts)
