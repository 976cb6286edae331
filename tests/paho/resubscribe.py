"""MQTT 3.1.1 [MQTT-3.8.4-3]: a SUBSCRIBE whose filter equals an existing subscription's replaces
it, and the retained messages matching it are re-sent. A retained "kept" is on rs/t; the client
subscribes twice, and after each SUBACK publishes a live marker (see retain.py for why it proves
what was not sent). Facts: {"first", "again": [[payload, retain flag], ...] up to each marker}."""

from pahotest import Client, emit, main_args

port, version, _ = main_args()
c = Client(port, version, "rs-sub")
c.publish("rs/t", "kept", retain=True)
facts = {}
for round in ("first", "again"):
    c.subscribe("rs/t", 1)
    c.publish("rs/t", round)
    facts[round] = [[m["payload"], m["retain"]] for m in c.until(round)]
emit(facts)
c.disconnect()
