"""No Local (MQTT 5 §3.8.3.1, [MQTT-3.8.3-3]): a message is not forwarded to the connection that
published it when its matching subscription has No Local set. "me" subscribes with No Local and
publishes "mine"; "other", subscribed without it, publishes "theirs" once it has received "mine"
(so "mine" was routed first). Facts: {"me": payloads "me" received up to "theirs", "other":
payloads "other" received up to "mine"}."""

from pahotest import Client, SubscribeOptions, emit, main_args

port, version, _ = main_args()
me = Client(port, version, "nl-me")
other = Client(port, version, "nl-other")
me.subscribe("nl/t", options=SubscribeOptions(qos=1, noLocal=True))
other.subscribe("nl/t", 1)
me.publish("nl/t", "mine")
other_got = [m["payload"] for m in other.until("mine")]
other.publish("nl/t", "theirs")
emit({"me": [m["payload"] for m in me.until("theirs")], "other": other_got})
