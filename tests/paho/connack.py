"""CONNACK: the return code, Session Present and (MQTT 5, §3.2.2.3) every property the gateway
declares. Facts: {"reason", "session_present", "props"}."""

from pahotest import Client, emit, main_args

port, version, _ = main_args()
c = Client(port, version, f"connack-{version}")
emit({"reason": c.reason, "session_present": c.session_present, "props": c.connack})
c.disconnect()
