"""Topic aliases from the client (MQTT 5 §3.3.2.3.4): a PUBLISH with a topic and Topic Alias 1 sets
the alias; later ones with an empty topic and alias 1 are on that topic; a new topic for alias 1
re-maps it. The gateway's CONNACK declares its Topic Alias Maximum. Facts: {"maximum": the
CONNACK's Topic Alias Maximum, "received": [[topic, payload], ...] at a subscriber to ta/#}."""

from pahotest import Client, PacketTypes, emit, main_args, props

port, version, _ = main_args()
sub = Client(port, version, "ta-sub")
sub.subscribe("ta/#", 1)
pub = Client(port, version, "ta-pub")
alias = props(PacketTypes.PUBLISH, TopicAlias=1)
pub.publish("ta/first", "set", properties=alias)
pub.publish("", "by alias", properties=alias)
pub.publish("ta/second", "re-mapped", properties=alias)
pub.publish("", "by alias again", properties=alias)
got = sub.until("by alias again")
emit({"maximum": pub.connack.get("TopicAliasMaximum"), "received": [[m["topic"], m["payload"]] for m in got]})
