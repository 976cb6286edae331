"""The client's Maximum Packet Size (MQTT 5 §3.1.2.11.4, [MQTT-3.1.2-25]): the server must not send
a packet larger than it; it discards the message as if it had sent it. The subscriber allows
packets of at most 200 bytes; a publisher sends a 500-byte payload, then "small". Facts:
{"first": the first payload the subscriber received, "reasons": the publisher's acknowledgement
reason codes}."""

from pahotest import Client, emit, main_args

port, version, _ = main_args()
sub = Client(port, version, "mps-sub", maximum_packet_size=200)
sub.subscribe("mps/t", 1)
pub = Client(port, version, "mps-pub")
reasons = [pub.publish("mps/t", "x" * 500), pub.publish("mps/t", "small")]
first = sub.next_message("the first delivery")
emit({"first": first["payload"], "reasons": reasons})
