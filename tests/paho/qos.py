"""The QoS of a delivery is the lower of the published QoS and the subscription's granted QoS
(MQTT 3.1.1 [MQTT-3.8.4-6], MQTT 5 [MQTT-3.8.4-8]). A subscriber holds three subscriptions, granted
QoS 0, 1 and 2; a publisher sends one message at each QoS to each. Facts: {"granted": [...],
"deliveries": [[subscription QoS, published QoS, delivered QoS], ...]} in arrival order."""

from pahotest import Client, emit, main_args

port, version, _ = main_args()
sub = Client(port, version, f"qos-sub-{version}")
granted = [sub.subscribe(f"qos/{version}/sub{q}", q) for q in (0, 1, 2)]
pub = Client(port, version, f"qos-pub-{version}")
for s in (0, 1, 2):
    for p in (0, 1, 2):
        pub.publish(f"qos/{version}/sub{s}", f"{s}{p}", qos=p)
# One publisher's messages are routed in the order sent, and one session's deliveries keep that
# order: "22", sent last, arrives last.
deliveries = []
for m in sub.until("22"):
    deliveries.append([int(m["payload"][0]), int(m["payload"][1]), m["qos"]])
emit({"granted": granted, "deliveries": deliveries})
