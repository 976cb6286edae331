//! The firmware's device core (`grove-firmware`, host build) driven as a board's firmware drives
//! it: [`Shell`] over std TCP with the blocking shell, [`TlsDevice`] over TLS with the async shell
//! (tokio through `embedded-io-adapters`, as an embassy task on a board), both taking their identity
//! from a provisioning record (`grove device provision`, through `crate::Provision`).
//! One harness for every test that runs a device against a real broker (Grove or mosquitto).

use std::net::TcpStream;
use std::time::{Duration, Instant as WallClock};

use embedded_io_adapters::tokio_1::FromTokio;
use grove_firmware::actuator::Actuator;
use grove_firmware::provision;
use grove_firmware::transport::tls::{self, Buffers, Session, TlsFailure};
use grove_firmware::transport::{self, asynch, StdTcp};
use grove_firmware::{Config, Device, Event, Instant};
use tokio::sync::mpsc;

use crate::WAIT;

/// The device's configuration from its provisioning record: its thing name and, if the record has
/// them, its credentials, on `base`'s timing (a function of the thing name).
pub fn provisioned_config(record: &[u8], base: impl FnOnce(&str) -> Config) -> Config {
    let record = provision::decode(record).expect("a provisioning record");
    let config = base(record.thing);
    match record.login {
        Some(login) => config.with_credentials(login.credentials().expect("valid credentials")),
        None => config,
    }
}

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

/// What a [`TlsDevice`] reports: its core's events, and each TLS failure (a refused handshake, or a
/// session the gateway ended).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seen {
    /// An event of the device core.
    Event(Event),
    /// A TLS session failed; the device retries after its backoff.
    Tls(TlsFailure),
}

/// A device over TLS 1.3 (the firmware's `transport::tls` on tokio TCP) that runs until dropped, as
/// an embassy task on a board would: the record buffers are the task's, the identity comes from a
/// provisioning record. The task runs on a thread of its own, on a current-thread runtime: a
/// TLS session is not `Send` (nor needs to be on a board's executor).
pub struct TlsDevice {
    seen: mpsc::UnboundedReceiver<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsDevice {
    /// Starts a device provisioned by `record` (which must hold TLS) that connects to
    /// `127.0.0.1:port`, configured by `base` for its thing name (plus the record's credentials).
    pub fn spawn(record: Vec<u8>, port: u16, base: impl FnOnce(&str) -> Config) -> TlsDevice {
        let config = provisioned_config(&record, base);
        let device = Device::new(config, Flag(false), Instant::from_millis(0));
        let (tx, seen) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async {
                tokio::select! {
                    () = run_tls(device, record, port, tx) => {}
                    _ = stopped => {}
                }
            });
        });
        TlsDevice {
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits until `done` accepts something the device reports; returns all it reported until
    /// then. Fails after the harness's wait.
    pub async fn until(&mut self, done: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut seen = Vec::new();
        let outcome = tokio::time::timeout(WAIT, async {
            while let Some(s) = self.seen.recv().await {
                let finished = done(&s);
                seen.push(s);
                if finished {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(outcome, Ok(true), "not seen; seen so far: {seen:?}");
        seen
    }
}

impl Drop for TlsDevice {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The device's task: without a session, the core's timers; on `OpenTransport`, TCP and the TLS
/// handshake; with a session, the async shell (`transmit`, then `tls::wait`) until the session ends.
async fn run_tls(
    mut device: Device<Flag>,
    record: Vec<u8>,
    port: u16,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let identity = provision::decode(&record)
        .expect("a provisioning record")
        .tls
        .expect("TLS in the record");
    // 17 KiB: on the heap here, a `static` on a board.
    let mut buffers = Box::new(Buffers::<{ tls::RECORD_READ }, { tls::RECORD_WRITE }>::new());
    let origin = tokio::time::Instant::now();
    let now = move || {
        Instant::from_millis(u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    };
    // A timer "never" (far in the future) is capped at a day, which tokio can represent.
    let sleep_until = move |at: Instant| {
        tokio::time::sleep_until(
            origin + Duration::from_millis(at.as_millis()).min(Duration::from_secs(86_400)),
        )
    };
    let mut scratch = [0u8; 512];
    let report = |s: Seen| {
        let _ = seen.send(s);
    };
    loop {
        let mut open = false;
        while let Some(event) = device.poll_event() {
            open |= event == Event::OpenTransport;
            report(Seen::Event(event));
        }
        if !open {
            let no_session = None::<&mut Session<'_, FromTokio<tokio::net::TcpStream>>>;
            let _ = tls::wait(&mut device, no_session, &mut scratch, sleep_until, now).await;
            continue;
        }
        let handshake = async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|_| TlsFailure::Closed)?;
            stream.set_nodelay(true).expect("TCP_NODELAY");
            Session::connect(
                FromTokio::new(stream),
                &mut buffers,
                &identity,
                rand_core::OsRng,
            )
            .await
        };
        let mut session = match tokio::time::timeout(WAIT, handshake).await {
            Ok(Ok(session)) => session,
            Ok(Err(failure)) => {
                report(Seen::Tls(failure));
                device.transport_closed(now());
                continue;
            }
            Err(_) => panic!("TLS handshake took longer than {WAIT:?}"),
        };
        device.transport_opened(now());
        loop {
            let mut ended = false;
            while let Some(event) = device.poll_event() {
                ended |= matches!(event, Event::Disconnected(_));
                report(Seen::Event(event));
            }
            if ended {
                break;
            }
            let result =
                match asynch::transmit(&mut device, &mut session, now(), &mut scratch).await {
                    Ok(()) => {
                        tls::wait(
                            &mut device,
                            Some(&mut session),
                            &mut scratch,
                            sleep_until,
                            now,
                        )
                        .await
                    }
                    Err(error) => Err(error),
                };
            if let Err(transport::TransportError::Io(failure)) = result {
                report(Seen::Tls(failure));
            }
        }
    }
}
