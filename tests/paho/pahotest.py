"""What every paho-mqtt conformance script shares (tests/tests/paho_conformance.rs runs them).

Each script is a short program written with paho-mqtt, the Eclipse Foundation's Python client (a
client Grove did not write), run against a `grove` gateway the Rust test started. It prints one
JSON object of facts on its last line of output (what arrived, reason codes, CONNACK properties);
the Rust test asserts on them. A script waits only on facts: a callback (CONNACK, SUBACK, PUBACK,
UNSUBACK, DISCONNECT) or a message's arrival, each within `WAIT` seconds. Where a test needs to know
that something was not sent, it waits for a later message that the gateway must send after it (a
marker published on the same session's subscriptions): deliveries to one session keep their order,
so the marker arriving first proves the other was not sent. A missing fact raises `Timeout`, which
ends the script with a non-zero exit and the reason on stderr.

Connections are made from and to 127.0.0.1 only. Usage: `script.py PORT VERSION [ARGS...]`, VERSION
being 311 or 5.
"""

import json
import queue
import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

# How long a fact may take: generous, the test command runs on a loaded 2-core machine.
WAIT = 20.0

__all__ = [
    "Client", "PacketTypes", "Properties", "SubscribeOptions", "Timeout", "WAIT", "emit", "main_args",
    "props",
]


class Timeout(Exception):
    """A fact the script waited for did not come within WAIT seconds."""


def main_args(extra=0):
    """(port, version, extra arguments) from the command line."""
    if len(sys.argv) < 3 + extra:
        sys.exit(f"usage: {sys.argv[0]} PORT VERSION(311|5) + {extra} more")
    version = int(sys.argv[2])
    if version not in (311, 5):
        sys.exit(f"VERSION must be 311 or 5, not {version}")
    return int(sys.argv[1]), version, sys.argv[3:]


def emit(facts):
    """Prints the script's facts: one JSON object, the last line of output."""
    print(json.dumps(facts, sort_keys=True), flush=True)


def props(packet_type, **values):
    """MQTT 5 properties for `packet_type`, e.g. props(PacketTypes.PUBLISH, MessageExpiryInterval=5)."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def _props_dict(p):
    return p.json() if p is not None else {}


class _Waiter:
    """Results of callbacks keyed by what they answer (a packet id), each awaited once."""

    def __init__(self):
        self._cond = threading.Condition()
        self._done = {}

    def put(self, key, value):
        with self._cond:
            self._done[key] = value
            self._cond.notify_all()

    def take(self, key, what):
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._done, WAIT):
                raise Timeout(f"no {what} within {WAIT} s")
            return self._done.pop(key)


class Client:
    """One paho-mqtt client, connected when constructed (CONNACK received and recorded).

    clean: MQTT 5 Clean Start or MQTT 3.1.1 Clean Session. The keyword arguments named like
    MQTT 5 CONNECT properties (session_expiry, receive_maximum, maximum_packet_size) set them;
    will=(topic, payload, qos, will properties or None) sets a will; manual_ack withholds
    acknowledgements until `ack`.
    """

    def __init__(self, port, version, client_id, clean=True, session_expiry=None,
                 receive_maximum=None, maximum_packet_size=None, will=None, manual_ack=False):
        self.v5 = version == 5
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else clean,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        # Messages as they arrive, with the paho message kept for `ack`.
        self.messages = queue.Queue()
        self._acks = _Waiter()
        self._connected = queue.Queue()
        self._disconnected = threading.Event()
        self.disconnect_reason = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda c, u, mid, codes, p: self._acks.put(("sub", mid), [rc.value for rc in codes])
        self.c.on_unsubscribe = lambda c, u, mid, codes, p: self._acks.put(("unsub", mid), [rc.value for rc in codes])
        self.c.on_publish = lambda c, u, mid, rc, p: self._acks.put(("pub", mid), rc.value)
        self.c.on_disconnect = self._on_disconnect
        if will is not None:
            topic, payload, qos, will_props = will
            self.c.will_set(topic, payload, qos, properties=will_props)
        properties = None
        if self.v5:
            values = {
                "SessionExpiryInterval": session_expiry,
                "ReceiveMaximum": receive_maximum,
                "MaximumPacketSize": maximum_packet_size,
            }
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                properties = props(PacketTypes.CONNECT, **values)
        self.c.connect(
            "127.0.0.1", port, keepalive=30, bind_address="127.0.0.1",
            clean_start=clean if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.c.loop_start()
        try:
            flags, reason, connack_props = self._connected.get(timeout=WAIT)
        except queue.Empty:
            raise Timeout(f"{client_id}: no CONNACK within {WAIT} s") from None
        self.session_present = bool(flags.session_present)
        self.reason = reason.value
        self.connack = _props_dict(connack_props)
        if self.reason != 0:
            raise RuntimeError(f"{client_id}: CONNACK refused with {reason}")

    def _on_connect(self, client, userdata, flags, reason, properties):
        self._connected.put((flags, reason, properties))

    def _on_message(self, client, userdata, m):
        self.messages.put({
            "topic": m.topic,
            "payload": m.payload.decode(),
            "qos": m.qos,
            "retain": bool(m.retain),
            "props": _props_dict(m.properties) if self.v5 else {},
            "paho": m,
        })

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.disconnect_reason = reason.value
        self._disconnected.set()

    def subscribe(self, topic, qos=1, options=None, subscription_id=None):
        """Subscribes to one filter; returns the SUBACK's reason code (the granted QoS or a
        failure code). MQTT 5 `options` are a SubscribeOptions (its QoS wins over `qos`)."""
        properties = None
        if subscription_id is not None:
            properties = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=subscription_id)
        rc, mid = self.c.subscribe(topic, options=options, properties=properties) if options \
            else self.c.subscribe(topic, qos, properties=properties)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"subscribe {topic}: {rc}")
        return self._acks.take(("sub", mid), f"SUBACK for {topic}")[0]

    def unsubscribe(self, topic):
        """Unsubscribes; returns the UNSUBACK's reason codes (MQTT 3.1.1's UNSUBACK has none)."""
        rc, mid = self.c.unsubscribe(topic)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"unsubscribe {topic}: {rc}")
        return self._acks.take(("unsub", mid), f"UNSUBACK for {topic}")

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes and waits until the exchange is complete (QoS 0: written; QoS 1: PUBACK;
        QoS 2: PUBCOMP); returns the acknowledgement's reason code (0 on MQTT 3.1.1)."""
        info = self.c.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish {topic}: {info.rc}")
        return self._acks.take(("pub", info.mid), f"acknowledgement of {topic}")

    def next_message(self, what="a message"):
        """The next message received, waiting for it."""
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            raise Timeout(f"{what}: none within {WAIT} s") from None

    def until(self, payload):
        """Every message received up to and including the one with `payload` (a marker)."""
        got = []
        while not got or got[-1]["payload"] != payload:
            got.append(self.next_message(f"waiting for {payload!r} after {len(got)} messages"))
        return got

    def ack(self, message):
        """Acknowledges a message received with manual_ack (PUBACK; for QoS 2, PUBCOMP)."""
        m = message["paho"]
        self.c.ack(m.mid, m.qos)

    def disconnect(self, session_expiry=None):
        """DISCONNECT (reason 0x00, so no will), optionally changing the Session Expiry
        Interval (MQTT 5 §3.14.2.2.2), and waits for the connection to end."""
        properties = None
        if session_expiry is not None:
            properties = props(PacketTypes.DISCONNECT, SessionExpiryInterval=session_expiry)
        self.c.disconnect(properties=properties)
        self._wait_closed()

    def vanish(self):
        """Ends the connection without DISCONNECT, as a device losing power: TCP closes, the
        will becomes due. Returns the monotonic time just before the socket was shut down (the
        gateway cannot have seen the loss earlier)."""
        sock = self.c.socket()
        at = time.monotonic()
        sock.shutdown(socket.SHUT_RDWR)
        self._wait_closed()
        return at

    def _wait_closed(self):
        if not self._disconnected.wait(WAIT):
            raise Timeout(f"connection not closed within {WAIT} s")
        self.c.loop_stop()
