//! One simulated device: the firmware's own device core ([`grove_firmware::Device`]) in a tokio task,
//! over a real TCP connection, with the simulated SHT4x read by the firmware's real driver and the
//! simulated pin switched by the firmware's real `Relay`.
//!
//! The task is the sans-IO core's shell, and it moves bytes and time with the firmware's own async
//! shell, `grove_firmware::transport::asynch`, over the TCP stream as an `embedded-io-async`
//! transport (tokio through `embedded-io-adapters`): `transmit` writes what the core queued, `wait`
//! parks the task until bytes arrive or the core's next timer is due. Around that the task acts on the
//! core's events (open or close the connection, take a sample) and obeys the chaos task: drop the
//! connection without DISCONNECT, or reboot (a fresh core: relay off, session and `seq` lost).
//!
//! A slow link ([`Link`]) delays every read and every burst of writes by the scenario's
//! `slow_delay_ms`; since the shell does both in one loop, a slow device also acknowledges late, as a
//! device on a congested cellular link does.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::device::PublishError;
use grove_firmware::sht4x::{Address, Precision, Sht4x};
use grove_firmware::transport::asynch;
use grove_firmware::{Config, Device, Event, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::actuator::SimPin;
use crate::fleet::{Fleet, Phase};
use crate::sensor::{SensorClock, SimDelay, SimSht4x};

/// What the chaos task can do to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chaos {
    /// Drop the TCP connection without DISCONNECT.
    Disconnect,
    /// Power-cycle: drop the connection, stay down this long, start a fresh device core.
    Reboot(Duration),
}

/// Everything one device task needs.
pub struct DeviceSetup {
    /// The device's index in the fleet.
    pub index: usize,
    /// The firmware configuration (thing name, timing, interval).
    pub config: Config,
    /// The gateway's MQTT address.
    pub target: SocketAddr,
    /// The sensor (its signal continues across reboots: the room does not reboot).
    pub sensor: SimSht4x,
    /// The sensor's clock, shared with the sensor.
    pub clock: SensorClock,
    /// Extra delay of a slow link, if this device is on one.
    pub slow: Option<Duration>,
    /// How long a TCP connect may take (the firmware's acknowledgement timeout).
    pub connect_timeout: Duration,
}

type Firmware = Device<Relay<SimPin>>;
type Driver = Sht4x<SimSht4x, SimDelay>;

/// Runs the device until `shutdown` turns true.
pub async fn run(
    setup: DeviceSetup,
    fleet: Arc<Fleet>,
    mut chaos: mpsc::Receiver<Chaos>,
    mut shutdown: watch::Receiver<bool>,
) {
    let DeviceSetup {
        index,
        config,
        target,
        sensor,
        clock,
        slow,
        connect_timeout,
    } = setup;
    let record = &fleet.devices[index];
    let now = || Instant::from_millis(fleet.origin.elapsed().as_millis() as u64);
    let boot = |now: Instant| {
        Device::new(
            config.clone(),
            Relay::new(record.relay.clone(), Polarity::ActiveHigh),
            now,
        )
    };
    let mut device: Firmware = boot(now());
    let mut driver: Driver = Sht4x::new(sensor, SimDelay(clock.clone()), Address::A44);
    let mut connection: Option<Link> = None;
    let mut rx = vec![0u8; 2048];
    let mut tx = vec![0u8; grove_firmware::device::TX_CAPACITY];

    loop {
        while let Some(event) = device.poll_event() {
            match event {
                Event::OpenTransport => {
                    let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(target));
                    match connect.await {
                        Ok(Ok(stream)) => {
                            // Small MQTT packets: send each at once rather than waiting for Nagle.
                            let _ = stream.set_nodelay(true);
                            connection = Some(Link::new(stream, slow));
                            device.transport_opened(now());
                        }
                        _ => {
                            fleet
                                .counters
                                .connect_failures
                                .fetch_add(1, Ordering::Relaxed);
                            device.transport_closed(now());
                        }
                    }
                }
                Event::Disconnected(reason) => {
                    connection = None;
                    fleet.disconnected(index, reason);
                }
                Event::Connected => {
                    fleet.counters.connects.fetch_add(1, Ordering::Relaxed);
                    if record.ever_connected.swap(true, Ordering::Relaxed) {
                        fleet.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    record.connected.store(true, Ordering::Relaxed);
                }
                Event::SampleDue => {
                    if fleet.phase() == Phase::Measure {
                        sample(&mut device, &mut driver, &clock, &fleet, index, now());
                    }
                }
                Event::Applied(_) => {
                    fleet.counters.applied.fetch_add(1, Ordering::Relaxed);
                }
                Event::Refused(_) => {
                    fleet.counters.refused.fetch_add(1, Ordering::Relaxed);
                }
                Event::ShadowRejected { .. } => {
                    fleet
                        .counters
                        .device_shadow_rejected
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        if let Some(link) = connection.as_mut() {
            // On failure the core has been told and asks to reconnect after its backoff.
            if asynch::transmit(&mut device, link, now(), &mut tx)
                .await
                .is_err()
            {
                connection = None;
                continue;
            }
        }

        // The core's clock counts milliseconds from the fleet's origin; a timer "never" (far in the
        // future) is capped at a year, which tokio can represent.
        let sleep_until = |at: Instant| {
            let at = Duration::from_millis(at.as_millis()).min(Duration::from_secs(86_400 * 365));
            tokio::time::sleep_until((fleet.origin + at).into())
        };
        tokio::select! {
            result = asynch::wait(&mut device, connection.as_mut(), &mut rx, sleep_until, &now) => {
                // A read error or end of stream: the core has been told.
                if result.is_err() {
                    connection = None;
                }
            }
            command = chaos.recv() => match command {
                Some(Chaos::Disconnect) => {
                    if connection.take().is_some() {
                        fleet.counters.chaos_disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    device.transport_closed(now());
                }
                Some(Chaos::Reboot(downtime)) => {
                    // The old core is dropped without a `Disconnected` event, so a session (or an
                    // attempt at one) lost to the reboot is counted here, as the core would count it.
                    if connection.take().is_some() {
                        // `format_args!` so the reason reads `Reboot`, unquoted, like the core's reasons.
                        fleet.disconnected(index, format_args!("Reboot"));
                    }
                    record.connected.store(false, Ordering::Relaxed);
                    fleet.counters.reboots.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(downtime).await;
                    device = boot(now());
                }
                None => return,
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Reads the sensor through the firmware's driver and hands the measurement to the device core.
fn sample(
    device: &mut Firmware,
    driver: &mut Driver,
    clock: &SensorClock,
    fleet: &Fleet,
    index: usize,
    now: Instant,
) {
    clock.advance_to(now.as_millis().saturating_mul(1_000_000));
    let measurement = match driver.measure(Precision::High) {
        Ok(measurement) => measurement,
        Err(_) => {
            fleet.counters.sensor_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    match device.publish_sample(measurement, now) {
        Ok(()) => {
            fleet.sample_sent(
                index,
                device.seq(),
                measurement.temperature_milli_c,
                measurement.humidity_milli_pct,
            );
        }
        Err(PublishError::Backpressure | PublishError::InflightFull) => {
            fleet.counters.backpressure.fetch_add(1, Ordering::Relaxed);
        }
        Err(PublishError::NotConnected) => {
            fleet
                .counters
                .skipped_offline
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A device's TCP connection as the firmware's `embedded-io-async` transport, with the delays of a
/// slow link.
///
/// Reads are cancel-safe, as `asynch::wait` requires: bytes read from the socket are held here until
/// the link's delay has passed, so a wait cancelled by a chaos command or a timer loses nothing.
pub struct Link {
    io: FromTokio<TcpStream>,
    slow: Option<Slow>,
}

/// The state of a slow link.
struct Slow {
    delay: Duration,
    /// Bytes received and held back, `held` of `buf`, until `due`.
    buf: Box<[u8]>,
    held: std::ops::Range<usize>,
    due: tokio::time::Instant,
    /// Whether the current burst of writes has waited its delay (cleared by `flush`).
    burst_delayed: bool,
}

impl Link {
    /// Wraps a connected stream; `slow` is the extra delay of a slow link, if any.
    pub fn new(stream: TcpStream, slow: Option<Duration>) -> Self {
        Self {
            io: FromTokio::new(stream),
            slow: slow.map(|delay| Slow {
                delay,
                buf: vec![0u8; 2048].into_boxed_slice(),
                held: 0..0,
                due: tokio::time::Instant::now(),
                burst_delayed: false,
            }),
        }
    }
}

impl embedded_io_async::ErrorType for Link {
    type Error = std::io::Error;
}

impl embedded_io_async::Read for Link {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let Some(slow) = self.slow.as_mut() else {
            return self.io.read(buf).await;
        };
        if slow.held.is_empty() {
            let n = self.io.read(&mut slow.buf).await?;
            if n == 0 {
                return Ok(0);
            }
            // No await between the read completing and this: the bytes are never lost.
            slow.held = 0..n;
            slow.due = tokio::time::Instant::now() + slow.delay;
        }
        tokio::time::sleep_until(slow.due).await;
        let n = buf.len().min(slow.held.len());
        buf[..n].copy_from_slice(&slow.buf[slow.held.start..slow.held.start + n]);
        slow.held.start += n;
        Ok(n)
    }
}

impl embedded_io_async::Write for Link {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        if let Some(slow) = self.slow.as_mut() {
            if !slow.burst_delayed {
                tokio::time::sleep(slow.delay).await;
                slow.burst_delayed = true;
            }
        }
        self.io.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        if let Some(slow) = self.slow.as_mut() {
            slow.burst_delayed = false;
        }
        self.io.flush().await
    }
}
