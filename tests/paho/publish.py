"""A publisher: sends each PAYLOAD to TOPIC at QOS and waits for each exchange to complete (PUBACK,
PUBCOMP). Usage: publish.py PORT VERSION TOPIC QOS [--retain] [--expiry SECONDS] PAYLOAD...; with
--expiry (MQTT 5) every message carries that Message Expiry Interval. Facts: {"reasons": the
acknowledgements' reason codes}."""

from pahotest import Client, PacketTypes, emit, main_args, props

port, version, rest = main_args(3)
topic, qos, rest = rest[0], int(rest[1]), rest[2:]
retain = "--retain" in rest
rest = [a for a in rest if a != "--retain"]
properties = None
if rest[:1] == ["--expiry"]:
    properties = props(PacketTypes.PUBLISH, MessageExpiryInterval=int(rest[1]))
    rest = rest[2:]
c = Client(port, version, "")
reasons = [c.publish(topic, p, qos, retain, properties) for p in rest]
emit({"reasons": reasons})
c.disconnect()
