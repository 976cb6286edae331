//! A simulated Sensirion SHT4x on the embedded-hal 1.0 traits, so the firmware's real driver
//! ([`grove_firmware::sht4x::Sht4x`]) reads it exactly as it reads the chip.
//!
//! The I2C side follows the datasheet (version 6.5, sections 4.4 to 4.6): a one-byte command, then,
//! once the command's execution time has passed, six bytes (two 16-bit words, each followed by its
//! CRC-8). Read too early, the chip does not acknowledge, and neither does this model; an unknown
//! command or another address is not acknowledged either.
//!
//! Time: the driver waits with `DelayNs`. A real wait would stall the simulator's threads (a fleet of
//! 5,000 devices at 1 sample/s would sleep 41 s per second at high precision), so [`SimDelay`] only
//! advances the sensor's own clock, [`SensorClock`]; the shell sets that clock to the device's time
//! before each sample, so the signal follows the simulation's time and the execution-time check still
//! holds.
//!
//! The signal: `T(t) = mean + offset + swing * sin(2 pi t / period + phase) + drift(t) + noise`, with a
//! per-device offset and phase, a random-walk drift and Gaussian noise; relative humidity follows the
//! opposite cycle (warm air holds more water, so the same air reads drier), with its own drift and
//! noise. Every random draw comes from a ChaCha8 stream chosen by the seed and the device's index, so
//! the same scenario, seed and sample instants give the same readings on every machine.

use std::f64::consts::TAU;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crc::{Crc, CRC_8_NRSC_5};
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{self, ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::scenario::SensorFile;

/// Sensirion's CRC-8 (poly 0x31, init 0xFF), as the datasheet and the firmware's driver define it.
const CRC8: Crc<u8> = Crc::<u8>::new(&CRC_8_NRSC_5);

/// The SHT40-AD1B's address, the one the firmware's `Address::A44` selects.
pub const ADDRESS: u8 = 0x44;

/// A serial number base; each device's is this plus its index, so serials are unique.
const SERIAL_BASE: u32 = 0x5EED_0000;

/// The sensor's time in nanoseconds, shared by the bus model and the delay source.
#[derive(Debug, Clone, Default)]
pub struct SensorClock(Arc<AtomicU64>);

impl SensorClock {
    /// The current sensor time.
    pub fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Moves the clock forward to `ns` (never backward: a delay may already have passed it).
    pub fn advance_to(&self, ns: u64) {
        self.0.fetch_max(ns, Ordering::Relaxed);
    }

    fn add(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The `DelayNs` given to the driver: advances the [`SensorClock`] instead of sleeping.
#[derive(Debug, Clone)]
pub struct SimDelay(pub SensorClock);

impl DelayNs for SimDelay {
    fn delay_ns(&mut self, ns: u32) {
        self.0.add(u64::from(ns));
    }
}

/// An I2C error of the simulated bus, classified as embedded-hal asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusError(ErrorKind);

impl i2c::Error for BusError {
    fn kind(&self) -> ErrorKind {
        self.0
    }
}

/// What the chip is doing.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a command.
    Idle,
    /// Executing `command` until the sensor clock reaches `ready_ns`.
    Busy { command: Command, ready_ns: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Command {
    Measure { noise_scale: f64 },
    Serial,
    Reset,
}

/// The environment one device's sensor sits in.
#[derive(Debug, Clone)]
struct Signal {
    mean_c: f64,
    swing_c: f64,
    period_s: f64,
    phase: f64,
    humidity_pct: f64,
    /// Random-walk state and its step scale (°C per square-root second).
    drift_c: f64,
    drift_rh: f64,
    drift_scale: f64,
    /// When the drift was last advanced, sensor nanoseconds.
    drift_at_ns: u64,
    noise_c: f64,
    noise_rh: f64,
}

/// A simulated SHT4x: the `I2c` the firmware's driver talks to.
pub struct SimSht4x {
    clock: SensorClock,
    rng: ChaCha8Rng,
    signal: Signal,
    phase: Phase,
    serial: u32,
    fault_rate: f64,
    faults: u64,
}

impl SimSht4x {
    /// The sensor of device `index` in a fleet seeded with `seed`.
    pub fn new(settings: &SensorFile, seed: u64, index: u64, clock: SensorClock) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // One independent stream per device; the controller and chaos use streams above u32::MAX.
        rng.set_stream(index);
        let offset = gaussian(&mut rng, settings.temperature_spread_c);
        let signal = Signal {
            mean_c: settings.temperature_c + offset,
            swing_c: settings.swing_c,
            period_s: settings.period_s,
            phase: rng.gen_range(0.0..TAU),
            humidity_pct: settings.humidity_pct
                + gaussian(&mut rng, 2.0 * settings.temperature_spread_c),
            drift_c: 0.0,
            drift_rh: 0.0,
            // A random walk's spread grows with the square root of time: per hour to per sqrt(second).
            drift_scale: settings.drift_c_per_hour / 60.0,
            drift_at_ns: clock.now_ns(),
            noise_c: settings.noise_c,
            noise_rh: settings.humidity_noise_pct,
        };
        Self {
            clock,
            rng,
            signal,
            phase: Phase::Idle,
            serial: SERIAL_BASE.wrapping_add(index as u32),
            fault_rate: settings.fault_rate,
            faults: 0,
        }
    }

    /// How many transfers were corrupted on purpose (`sensor.fault_rate`).
    pub fn faults(&self) -> u64 {
        self.faults
    }

    /// The true temperature and humidity at `ns`, with fresh noise scaled by the precision.
    fn sample(&mut self, ns: u64, noise_scale: f64) -> (f64, f64) {
        let signal = &mut self.signal;
        let dt_s = ns.saturating_sub(signal.drift_at_ns) as f64 / 1e9;
        if dt_s > 0.0 {
            let step = signal.drift_scale * dt_s.sqrt();
            signal.drift_c += gaussian(&mut self.rng, step);
            signal.drift_rh += gaussian(&mut self.rng, 2.0 * step);
            signal.drift_at_ns = ns;
        }
        let t_s = ns as f64 / 1e9;
        let cycle = (TAU * t_s / signal.period_s + signal.phase).sin();
        let temperature = signal.mean_c
            + signal.swing_c * cycle
            + signal.drift_c
            + gaussian(&mut self.rng, signal.noise_c * noise_scale);
        let humidity = signal.humidity_pct - 2.0 * signal.swing_c * cycle
            + signal.drift_rh
            + gaussian(&mut self.rng, signal.noise_rh * noise_scale);
        (temperature, humidity)
    }

    /// The six response bytes of a finished command.
    fn response(&mut self, command: Command, ready_ns: u64) -> [u8; 6] {
        let words = match command {
            Command::Measure { noise_scale } => {
                let (t, rh) = self.sample(ready_ns, noise_scale);
                // The datasheet's conversions inverted: S_T = (T + 45) / 175 * 65535, and
                // S_RH = (RH + 6) / 125 * 65535.
                let raw = |v: f64| v.round().clamp(0.0, 65_535.0) as u16;
                [
                    raw((t + 45.0) / 175.0 * 65_535.0),
                    raw((rh + 6.0) / 125.0 * 65_535.0),
                ]
            }
            Command::Serial => [(self.serial >> 16) as u16, self.serial as u16],
            Command::Reset => [0, 0],
        };
        let mut bytes = [0u8; 6];
        for (chunk, word) in bytes.chunks_exact_mut(3).zip(words) {
            chunk[..2].copy_from_slice(&word.to_be_bytes());
            chunk[2] = CRC8.checksum(&chunk[..2]);
        }
        if self.fault_rate > 0.0 && self.rng.gen_bool(self.fault_rate) {
            // A flipped bit on the wire: the driver's CRC check must catch it.
            self.faults += 1;
            bytes[1] ^= 0x10;
        }
        bytes
    }

    fn write(&mut self, data: &[u8]) -> Result<(), BusError> {
        let now = self.clock.now_ns();
        if let Phase::Busy { ready_ns, .. } = self.phase {
            if now < ready_ns {
                return Err(BusError(ErrorKind::NoAcknowledge(
                    NoAcknowledgeSource::Address,
                )));
            }
        }
        // Execution times are the datasheet's maxima (table 4); repeatability scales the noise.
        let (command, wait_us) = match data {
            [0xFD] => (Command::Measure { noise_scale: 1.0 }, 8_300),
            [0xF6] => (Command::Measure { noise_scale: 1.5 }, 4_500),
            [0xE0] => (Command::Measure { noise_scale: 2.5 }, 1_700),
            [0x89] => (Command::Serial, 1_000),
            [0x94] => (Command::Reset, 1_000),
            _ => {
                return Err(BusError(ErrorKind::NoAcknowledge(
                    NoAcknowledgeSource::Data,
                )))
            }
        };
        self.phase = Phase::Busy {
            command,
            ready_ns: now + wait_us * 1_000,
        };
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), BusError> {
        let nack = BusError(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        match self.phase {
            Phase::Busy { command, ready_ns } if self.clock.now_ns() >= ready_ns => {
                self.phase = Phase::Idle;
                if matches!(command, Command::Reset) {
                    // A reset has no answer; reading afterwards is not acknowledged.
                    return Err(nack);
                }
                let response = self.response(command, ready_ns);
                let n = buf.len().min(response.len());
                buf[..n].copy_from_slice(&response[..n]);
                // Beyond six bytes the chip releases the bus: the master reads 0xFF.
                buf[n..].fill(0xFF);
                Ok(())
            }
            _ => Err(nack),
        }
    }
}

fn gaussian(rng: &mut ChaCha8Rng, sigma: f64) -> f64 {
    match Normal::new(0.0, sigma) {
        Ok(normal) if sigma > 0.0 => normal.sample(rng),
        _ => 0.0,
    }
}

impl ErrorType for SimSht4x {
    type Error = BusError;
}

impl I2c for SimSht4x {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != ADDRESS {
            return Err(BusError(ErrorKind::NoAcknowledge(
                NoAcknowledgeSource::Address,
            )));
        }
        for operation in operations {
            match operation {
                Operation::Write(data) => self.write(data)?,
                Operation::Read(buf) => self.read(buf)?,
            }
        }
        Ok(())
    }
}
