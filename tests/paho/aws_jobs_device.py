#!/usr/bin/env python3
"""A device that runs AWS IoT Jobs, written with Eclipse paho-mqtt (not Grove's code), following the
AWS IoT Developer Guide's "Jobs device MQTT API operations" and the device workflow of "Devices and
jobs": subscribe to notify-next and to the answers of its own requests, ask `jobs/get` on connect (to
catch up on jobs created while it was offline), start the next pending execution with `start-next`,
report IN_PROGRESS then its outcome with `{jobId}/update` and `expectedVersion`, and start the next one
when `notify-next` announces it.

Every message it receives is printed as one JSON line {"topic": ..., "payload": ...}; its own steps as
"READY", "DONE <jobId> <status>", "SUBACK <codes>". The end-to-end tests read these lines.
"""
import argparse
import json
import sys
import threading

import paho.mqtt.client as mqtt


def say(line):
    print(line, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--thing", required=True)
    p.add_argument("--password", help="log in as the thing with this password")
    p.add_argument("--outcome", default="SUCCEEDED", choices=["SUCCEEDED", "FAILED", "REJECTED"])
    p.add_argument("--jobs", type=int, default=1, help="exit after this many jobs ended")
    p.add_argument("--stop-after-in-progress", action="store_true",
                   help="exit once IN_PROGRESS is accepted (a device that loses power mid-job)")
    p.add_argument("--stale-update", action="store_true",
                   help="first send an update with an outdated expectedVersion")
    p.add_argument("--spy", help="only try to subscribe to this other thing's jobs topics, print the SUBACK, exit")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()

    thing = args.thing
    base = f"$aws/things/{thing}/jobs"
    state = {"done": 0, "stale_sent": False, "busy": None}
    finished = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=thing, protocol=mqtt.MQTTv311)
    if args.password is not None:
        client.username_pw_set(thing, args.password)

    def publish(topic, doc):
        client.publish(topic, json.dumps(doc), qos=1)

    def start_next():
        publish(f"{base}/start-next", {"clientToken": f"{thing}-start"})

    def update(job_id, status, version, token):
        publish(f"{base}/{job_id}/update", {
            "status": status,
            "expectedVersion": version,
            "statusDetails": {"step": status.lower()},
            "includeJobExecutionState": True,
            "clientToken": token,
        })

    def on_connect(c, userdata, flags, reason_code, properties):
        if args.spy:
            other = f"$aws/things/{args.spy}/jobs"
            c.subscribe([(f"{other}/notify-next", 1), (f"{other}/get/accepted", 1), (f"{base}/notify-next", 1)])
            return
        c.subscribe([
            (f"{base}/notify-next", 1),
            (f"{base}/get/accepted", 1),
            (f"{base}/start-next/accepted", 1),
            (f"{base}/start-next/rejected", 1),
            (f"{base}/+/update/accepted", 1),
            (f"{base}/+/update/rejected", 1),
        ])

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        codes = [rc.value for rc in reason_codes]
        say("SUBACK " + " ".join(str(x) for x in codes))
        if args.spy:
            finished.set()
            return
        say("READY")
        # Catch up on what was queued while this device was offline.
        publish(f"{base}/get", {"clientToken": f"{thing}-get"})

    def on_message(c, userdata, msg):
        doc = json.loads(msg.payload or b"{}")
        say(json.dumps({"topic": msg.topic, "payload": doc}))
        t = msg.topic
        if t == f"{base}/get/accepted":
            if (doc.get("inProgressJobs") or doc.get("queuedJobs")) and state["busy"] is None:
                start_next()
        elif t == f"{base}/notify-next":
            if "execution" in doc and state["busy"] is None:
                start_next()
        elif t == f"{base}/start-next/accepted":
            execution = doc.get("execution")
            if execution is None or state["busy"] is not None:
                return
            job_id = execution["jobId"]
            version = execution["versionNumber"]
            state["busy"] = job_id
            if args.stale_update and not state["stale_sent"]:
                state["stale_sent"] = True
                update(job_id, "IN_PROGRESS", version - 1, f"{thing}-stale")
            update(job_id, "IN_PROGRESS", version, f"{thing}-progress")
        elif t.endswith("/update/accepted"):
            job_id = t.split("/")[4]
            status = doc["executionState"]["status"]
            version = doc["executionState"]["versionNumber"]
            if status == "IN_PROGRESS":
                if args.stop_after_in_progress:
                    say(f"STOPPED {job_id} IN_PROGRESS {version}")
                    finished.set()
                    return
                update(job_id, args.outcome, version, f"{thing}-outcome")
            else:
                say(f"DONE {job_id} {status}")
                state["busy"] = None
                state["done"] += 1
                if state["done"] >= args.jobs:
                    finished.set()
                else:
                    start_next()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    ended = finished.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    if not ended:
        say("TIMEOUT")
        sys.exit(1)


if __name__ == "__main__":
    main()
