"""A session that outlives its connection (MQTT 5 §3.1.2.11.2 Session Expiry Interval, §3.1.2.4
Clean Start; MQTT 3.1.1 §3.1.2.4 Clean Session 0).

Usage: session.py PORT VERSION ID away EXPIRY TOPIC: connects with Clean Start and the Session
Expiry Interval EXPIRY (MQTT 5; on 3.1.1 with Clean Session 0, EXPIRY unused), subscribes to TOPIC
at QoS 2 and disconnects normally. Facts: {"session_present", "connack"}.

session.py PORT VERSION ID back EXPIRY MARKER: connects again without Clean Start (Clean Session
0), and if the session is present receives every message up to the one whose payload is MARKER
(a publisher sends it last). Facts: {"session_present", "messages": [{"payload", "qos", "props"}]}.
"""

from pahotest import Client, emit, main_args

port, version, rest = main_args(4)
client_id, phase, expiry, arg = rest[0], rest[1], int(rest[2]), rest[3]
c = Client(port, version, client_id, clean=phase == "away" and version == 5, session_expiry=expiry)
if phase == "away":
    c.subscribe(arg, 2)
    emit({"session_present": c.session_present, "connack": c.connack})
else:
    messages = c.until(arg) if c.session_present else []
    emit({
        "session_present": c.session_present,
        "messages": [{k: m[k] for k in ("payload", "qos", "props")} for m in messages],
    })
c.disconnect()
