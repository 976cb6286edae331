"""QoS 2 exactly once (MQTT 3.1.1 §4.3.3, MQTT 5 §4.3.3, [MQTT-4.4.0-1]), across a lost connection.

A subscriber with a persistent session (MQTT 5 session expiry 300; 3.1.1 Clean Session 0) and
manual acknowledgements subscribes at QoS 2. A publisher sends N messages at QoS 2, each exchange
completed (PUBCOMP). paho hands a QoS 2 message over when the PUBREL arrives (after its PUBREC),
and with manual acks withholds the PUBCOMP: the subscriber takes all N, then loses its connection
with every PUBCOMP unsent. The gateway must then finish those exchanges with PUBREL on reconnect,
not send the messages again. The publisher sends "end" at QoS 2; the subscriber reconnects (no
manual acks now) and receives up to "end". Facts: {"first": payloads and QoS of the first
connection, "second": of the second, "session_present"}."""

from pahotest import Client, emit, main_args

N = 10

port, version, _ = main_args()
sub = Client(port, version, "q2-sub", clean=version == 5, session_expiry=300, manual_ack=True)
sub.subscribe("q2/t", 2)
pub = Client(port, version, "q2-pub")
for i in range(N):
    pub.publish("q2/t", str(i), qos=2)
first = [[m["payload"], m["qos"]] for m in sub.until(str(N - 1))]
sub.vanish()
pub.publish("q2/t", "end", qos=2)
sub = Client(port, version, "q2-sub", clean=False, session_expiry=300)
second = [[m["payload"], m["qos"]] for m in sub.until("end")]
emit({"first": first, "second": second, "session_present": sub.session_present})
sub.disconnect()
