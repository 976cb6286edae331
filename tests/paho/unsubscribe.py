"""UNSUBSCRIBE of a filter the client never subscribed to is still answered with UNSUBACK (MQTT
3.1.1 [MQTT-3.10.4-5]; MQTT 5 §3.11.3: reason 0x11 No subscription existed), and of one it did,
0x00 on MQTT 5. Facts: {"unknown": reason codes, "known": reason codes} (empty lists on 3.1.1,
whose UNSUBACK carries none: that it arrived is the fact)."""

from pahotest import Client, emit, main_args

port, version, _ = main_args()
c = Client(port, version, f"unsub-{version}")
unknown = c.unsubscribe("never/subscribed")
c.subscribe("unsub/known", 1)
known = c.unsubscribe("unsub/known")
emit({"unknown": unknown, "known": known})
c.disconnect()
