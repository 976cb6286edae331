//! One simulated device: the firmware's own device core ([`grove_firmware::Device`]) in a tokio task,
//! over a real TCP connection, with the simulated SHT4x read by the firmware's real driver and the
//! simulated pin switched by the firmware's real `Relay`.
//!
//! The task is the sans-IO core's shell, as `firmware/README.md` describes it: it feeds received bytes
//! to `handle_input`, writes what `poll_transmit` gives, sleeps until `poll_timeout`, and acts on the
//! core's events (open or close the connection, take a sample). It also obeys the chaos task: drop the
//! connection without DISCONNECT, or reboot (a fresh core: relay off, session and `seq` lost).
//!
//! A slow link delays every read and every burst of writes by the scenario's `slow_delay_ms`; since
//! the shell does both in one loop, a slow device also acknowledges late, as a device on a congested
//! cellular link does.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::device::PublishError;
use grove_firmware::sht4x::{Address, Precision, Sht4x};
use grove_firmware::{Config, Device, Event, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let mut connection: Option<TcpStream> = None;
    // The firmware numbers samples per boot; this mirrors its counter (see `sample`).
    let mut seq: u32 = 0;
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
                            connection = Some(stream);
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
                        sample(
                            &mut device,
                            &mut driver,
                            &clock,
                            &fleet,
                            index,
                            &mut seq,
                            now(),
                        );
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

        if let Some(stream) = connection.as_mut() {
            let mut burst = true;
            let mut failed = false;
            while let Some(n) = device.poll_transmit(&mut tx) {
                if let (Some(delay), true) = (slow, burst) {
                    tokio::time::sleep(delay).await;
                }
                burst = false;
                if stream.write_all(&tx[..n]).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed {
                connection = None;
                device.transport_closed(now());
                continue;
            }
        }

        let deadline = fleet.origin
            + Duration::from_millis(device.poll_timeout().as_millis())
                .min(Duration::from_secs(86_400 * 365));
        tokio::select! {
            result = async {
                match connection.as_mut() {
                    Some(stream) => stream.read(&mut rx).await,
                    None => std::future::pending().await,
                }
            } => match result {
                Ok(0) | Err(_) => {
                    connection = None;
                    device.transport_closed(now());
                }
                Ok(n) => {
                    if let Some(delay) = slow {
                        tokio::time::sleep(delay).await;
                    }
                    device.handle_input(&rx[..n], now());
                }
            },
            () = tokio::time::sleep_until(deadline.into()) => device.handle_timeout(now()),
            command = chaos.recv() => match command {
                Some(Chaos::Disconnect) => {
                    if connection.take().is_some() {
                        fleet.counters.chaos_disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    device.transport_closed(now());
                }
                Some(Chaos::Reboot(downtime)) => {
                    connection = None;
                    record.connected.store(false, Ordering::Relaxed);
                    fleet.counters.reboots.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(downtime).await;
                    device = boot(now());
                    seq = 0;
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
    seq: &mut u32,
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
    // The firmware numbers a sample once it has a session, even when its transmit buffer then
    // refuses it; the core has no accessor for that number (see the report), so the shell counts
    // the same way to know which `seq` the observer will see.
    match device.publish_sample(measurement, now) {
        Ok(()) => {
            *seq = seq.wrapping_add(1);
            fleet.sample_sent(
                index,
                *seq,
                measurement.temperature_milli_c,
                measurement.humidity_milli_pct,
            );
        }
        Err(PublishError::Backpressure) => {
            *seq = seq.wrapping_add(1);
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
