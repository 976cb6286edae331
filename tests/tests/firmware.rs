//! The firmware's device core (`grove-firmware`, host build over std TCP) against the real `grove`
//! gateway and its shadow service: boot report, a desired change delivered as a delta, applied to
//! the actuator and reported back; then a change made while the device is offline, caught up by
//! the `get` the device sends after it reconnects.

use std::net::TcpStream;
use std::time::{Duration, Instant as WallClock};

use grove_firmware::actuator::Actuator;
use grove_firmware::shadow::State;
use grove_firmware::transport::{self, StdTcp};
use grove_firmware::{Config, Device, Event, Instant};
use grove_tests::{grove, Gateway};
use serde_json::{json, Value};

const THING: &str = "fw-device-1";
const DEADLINE: Duration = Duration::from_secs(20);

/// The relay, as a flag the test can read.
struct Flag(bool);

impl Actuator for Flag {
    type Error = std::convert::Infallible;

    fn set(&mut self, on: bool) -> Result<(), Self::Error> {
        self.0 = on;
        Ok(())
    }
}

/// The device and its shell: the sans-IO core, a TCP transport while connected, and a clock.
struct Shell {
    device: Device<Flag>,
    io: Option<StdTcp>,
    port: u16,
    clock: WallClock,
}

impl Shell {
    fn now(&self) -> Instant {
        Instant::from_millis(self.clock.elapsed().as_millis() as u64)
    }

    /// Runs the device until `done` accepts an event; returns the events seen.
    fn run_until(&mut self, done: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut scratch = [0u8; 512];
        let mut events = Vec::new();
        let start = WallClock::now();
        while start.elapsed() < DEADLINE {
            let now = self.now();
            match &mut self.io {
                Some(io) => {
                    if transport::poll(&mut self.device, io, now, &mut scratch).is_err() {
                        self.io = None;
                    }
                }
                None => self.device.handle_timeout(now),
            }
            while let Some(event) = self.device.poll_event() {
                match event {
                    Event::OpenTransport => match TcpStream::connect(("127.0.0.1", self.port)) {
                        Ok(s) => {
                            s.set_nodelay(true).unwrap();
                            self.io = Some(StdTcp(s));
                            self.device.transport_opened(now);
                        }
                        Err(_) => self.device.transport_closed(now),
                    },
                    Event::Disconnected(_) => self.io = None,
                    _ => {}
                }
                let finished = done(&event);
                events.push(event);
                if finished {
                    return events;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("timed out; events so far: {events:?}");
    }
}

fn set_desired(g: &Gateway, desired: Value) {
    let addr = format!("127.0.0.1:{}", g.mqtt_port);
    let doc = json!({"state": {"desired": desired}}).to_string();
    let (code, out) = grove(
        &["shadow", "--mqtt", &addr, "update", THING, "--json", &doc],
        g.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_firmware_device_core_completes_shadow_round_trips_with_a_real_gateway() {
    let g = Gateway::start("");
    let config = Config::new(THING).unwrap().with_backoff(100, 400);
    let mut shell = Shell {
        device: Device::new(config, Flag(false), Instant::from_millis(0)),
        io: None,
        port: g.mqtt_port,
        clock: WallClock::now(),
    };
    shell.run_until(|e| *e == Event::Connected);

    // The boot report reached the gateway's shadow.
    let doc = g.wait_shadow(THING, |d| d["state"]["reported"]["relay"] == false);
    assert_eq!(
        doc["state"]["reported"],
        json!({"relay": false, "interval_s": 10})
    );

    // An operator wants the relay on: the gateway sends the delta, the device applies and reports.
    set_desired(&g, json!({"relay": true}));
    let events = shell.run_until(|e| matches!(e, Event::Applied(_)));
    assert_eq!(
        events.last(),
        Some(&Event::Applied(State {
            relay: true,
            interval_s: 10
        }))
    );
    assert!(shell.device.actuator().0, "the relay is on");
    let doc = g.wait_shadow(THING, |d| d["state"]["reported"]["relay"] == true);
    assert!(
        doc["state"].get("delta").is_none(),
        "in sync, no delta: {doc}"
    );

    // The device drops off; the operator changes desired state meanwhile.
    shell.io = None;
    shell.device.transport_closed(shell.now());
    set_desired(&g, json!({"relay": false, "interval_s": 30}));
    // It reconnects, sends `get`, and catches up from get/accepted's delta.
    let events = shell.run_until(|e| {
        matches!(
            e,
            Event::Applied(State {
                relay: false,
                interval_s: 30
            })
        )
    });
    assert!(
        events.contains(&Event::Connected),
        "reconnected: {events:?}"
    );
    assert!(!shell.device.actuator().0, "the relay is off again");
    let doc = g.wait_shadow(THING, |d| d["state"]["reported"]["interval_s"] == 30);
    assert_eq!(
        doc["state"]["reported"],
        json!({"relay": false, "interval_s": 30})
    );
    assert!(doc["state"].get("delta").is_none(), "converged: {doc}");
}
