//! The firmware's device core (`grove-firmware`, host build) driven over std TCP, as a board's
//! firmware drives it: one shell for every test that runs a device against a real broker (Grove
//! or mosquitto).

use std::net::TcpStream;
use std::time::{Duration, Instant as WallClock};

use grove_firmware::actuator::Actuator;
use grove_firmware::transport::{self, StdTcp};
use grove_firmware::{Config, Device, Event, Instant};

use crate::WAIT;

/// The relay, as a flag the test can read.
pub struct Flag(pub bool);

impl Actuator for Flag {
    type Error = std::convert::Infallible;

    fn set(&mut self, on: bool) -> Result<(), Self::Error> {
        self.0 = on;
        Ok(())
    }
}

/// A device and its shell: the sans-IO core, a TCP transport to a loopback port while connected,
/// and a wall clock (the core's time is milliseconds since the shell started).
pub struct Shell {
    /// The device core; its actuator is the relay flag.
    pub device: Device<Flag>,
    io: Option<StdTcp>,
    port: u16,
    clock: WallClock,
}

impl Shell {
    /// A device configured by `config`, relay at `relay`, that connects to `127.0.0.1:port`
    /// whenever its core asks for a transport.
    pub fn new(config: Config, relay: bool, port: u16) -> Shell {
        Shell {
            device: Device::new(config, Flag(relay), Instant::from_millis(0)),
            io: None,
            port,
            clock: WallClock::now(),
        }
    }

    /// The core's clock now.
    pub fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Drops the connection without DISCONNECT, as a device that loses power or network does (its
    /// will is due), and tells the core.
    pub fn vanish(&mut self) {
        self.io = None;
        let now = self.now();
        self.device.transport_closed(now);
    }

    /// Waits until the device has something to do, at most until `deadline`: bytes (or the end
    /// of the stream) on its socket, or its next timer ([`Device::poll_timeout`]). A board's
    /// main loop sleeps the same way, until an interrupt or a timer.
    fn wait(&mut self, deadline: WallClock) {
        let due = self.device.poll_timeout().as_millis();
        let left = Duration::from_millis(due.saturating_sub(self.now().as_millis()))
            .min(deadline.saturating_duration_since(WallClock::now()));
        if left.is_zero() {
            return;
        }
        match &self.io {
            // A read timeout ends the wait; any other error is the next poll's to report.
            Some(StdTcp(socket)) => {
                if socket.set_read_timeout(Some(left)).is_ok() {
                    let _ = socket.peek(&mut [0u8; 1]);
                    let _ = socket.set_read_timeout(None);
                }
            }
            // Without a connection only a timer can give the device work: sleep until it is due.
            None => std::thread::sleep(left),
        }
    }

    /// Runs the device until `done` accepts an event; returns the events seen. Fails after the
    /// harness's wait.
    pub fn run_until(&mut self, done: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut scratch = [0u8; 512];
        let mut events = Vec::new();
        let start = WallClock::now();
        while start.elapsed() < WAIT {
            let now = self.now();
            match &mut self.io {
                Some(io) => {
                    if transport::poll(&mut self.device, io, now, &mut scratch).is_err() {
                        self.io = None;
                    }
                }
                None => self.device.handle_timeout(now),
            }
            // An event can give the core output (a new connection's CONNECT): poll again before
            // waiting.
            let mut busy = false;
            while let Some(event) = self.device.poll_event() {
                busy = true;
                match event {
                    Event::OpenTransport => match TcpStream::connect(("127.0.0.1", self.port)) {
                        Ok(s) => {
                            s.set_nodelay(true).expect("TCP_NODELAY");
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
            if !busy {
                self.wait(start + WAIT);
            }
        }
        panic!("timed out; events so far: {events:?}");
    }
}
